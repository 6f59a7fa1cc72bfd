"""Every typical mistake ends ``equinet`` with a non-zero exit and one line naming the
fix -- no traceback (``EQUINET_DEBUG=1`` brings it back) -- and the ones a config shows fail before
anything is built: no run folder, no generated dataset, no network.
"""

from __future__ import annotations

import subprocess

import pytest
import yaml
from _lightning_helpers import REPO, cli_env, equinet_cmd, restored_globals
from test_sweep import render

from equinet.cli import main

CONFIGS = REPO / "experiments" / "configs"
SYNTHETIC = str(CONFIGS / "synthetic" / "maxpool.yaml")
FASTMRI = str(CONFIGS / "fastmri" / "aps.yaml")


@pytest.fixture(autouse=True)
def _restored_globals():
    with restored_globals():  # the console entry point runs in this process
        yield


@pytest.fixture
def quiet_run(tmp_path, monkeypatch):
    """Arguments that keep a run small and inside tmp_path; the data cache is tmp_path/data."""
    monkeypatch.setenv("EQUINET_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("EQUINET_DEBUG", raising=False)
    return [
        "--trainer.default_root_dir",
        str(tmp_path / "runs"),
        "--trainer.max_steps",
        "1",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.enable_model_summary",
        "false",
        "--trainer.callbacks",
        "[]",
    ]


def one_line_error(capsys, *argv: str, code: int = 1) -> str:
    """Run ``equinet argv``; it must exit with ``code`` (a SystemExit: no exception escapes, so no
    traceback) after writing exactly one error line, which is returned."""
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    err = capsys.readouterr().err
    assert exc.value.code == code, err
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err
    assert errors[0].startswith(f"equinet {argv[0]}: error: ")
    return errors[0]


def nothing_built(tmp_path):
    runs = tmp_path / "runs"
    assert not runs.exists() or not list(runs.iterdir()), "a refused command must not leave a run folder"
    assert not (tmp_path / "data").exists(), "a refused command must not generate data"


# --- real data need a root; synthetic data only when asked for -------------------------------
def test_real_data_config_without_root_fails_before_building_anything(capsys, tmp_path, quiet_run):
    line = one_line_error(capsys, "fit", "--config", FASTMRI, *quiet_run)
    assert "FastMRIDataModule needs its dataset folder" in line
    assert "--data.root" in line and "--data.synthetic true" in line
    nothing_built(tmp_path)


@pytest.mark.parametrize("dataset", ["fastmri", "lodopab"])
def test_every_real_data_config_requires_a_root_and_only_synthetic_ones_generate_data(dataset):
    for path in sorted((CONFIGS / dataset).glob("*.yaml")):
        args = yaml.safe_load(path.read_text())["data"]["init_args"]
        assert args.get("root") is None and not args.get("synthetic"), path
    for path in sorted((CONFIGS / "synthetic").glob("*.yaml")):
        assert yaml.safe_load(path.read_text())["data"]["init_args"]["synthetic"] is True, path


def test_root_and_synthetic_exclude_each_other(capsys, tmp_path, quiet_run):
    line = one_line_error(capsys, "fit", "--config", SYNTHETIC, "--data.root", str(tmp_path), *quiet_run)
    assert "synthetic=True exclude each other" in line


def test_missing_root_names_the_folder(capsys, tmp_path, quiet_run):
    line = one_line_error(
        capsys, "fit", "--config", FASTMRI, "--data.root", str(tmp_path / "knee"), *quiet_run
    )
    assert f"root {tmp_path / 'knee'} does not exist" in line and "singlecoil_train/" in line
    nothing_built(tmp_path)


def test_sweep_with_an_unset_data_root_variable_names_the_variable(capsys, tmp_path, quiet_run, monkeypatch):
    """W&B renders `${envvar:EQUINET_DATA_ROOT}` as the bare name when the variable is unset."""
    monkeypatch.delenv("EQUINET_DATA_ROOT", raising=False)
    sweep = yaml.safe_load((REPO / "experiments" / "sweeps" / "fastmri_strategy_filter_lr.yaml").read_text())
    argv = render(sweep, {k: v["values"][0] for k, v in sweep["parameters"].items()})
    assert "--data.root=EQUINET_DATA_ROOT" in argv  # what an agent runs
    line = one_line_error(capsys, *argv[2:], *quiet_run)
    assert "'EQUINET_DATA_ROOT', the name of an environment variable that is not set" in line
    assert "export EQUINET_DATA_ROOT=/path/to/data" in line
    nothing_built(tmp_path)


# --- checkpoints -----------------------------------------------------------------------------
@pytest.mark.parametrize("sub", ["test", "validate"])
def test_evaluating_last_without_a_checkpoint(capsys, tmp_path, quiet_run, sub):
    line = one_line_error(capsys, sub, "--config", SYNTHETIC, "--ckpt_path", "last", *quiet_run)
    assert f"no last.ckpt in {tmp_path / 'runs' / 'latest'}" in line and "train first" in line
    nothing_built(tmp_path)


# --- strategies, sizes, crops ----------------------------------------------------------------
def test_unknown_sampling_strategy_lists_the_known_ones(capsys, tmp_path, quiet_run):
    line = one_line_error(
        capsys, "fit", "--config", SYNTHETIC, "--model.network.init_args.sampling", "apss", *quiet_run
    )
    assert "unknown sampling strategy 'apss'; choose one of" in line
    assert all(name in line for name in ("aps", "blur", "lps", "maxpool", "orthogonal"))
    nothing_built(tmp_path)


def test_unknown_trainer_strategy_lists_the_known_ones(capsys, tmp_path, quiet_run):
    line = one_line_error(capsys, "fit", "--config", SYNTHETIC, "--trainer.strategy", "dpp", *quiet_run)
    assert "'dpp' is not a Lightning strategy (did you mean 'ddp'?); known: auto, ddp," in line
    nothing_built(tmp_path)


def test_size_not_divisible_by_two_to_the_depth_fails_before_the_data_are_generated(
    capsys, tmp_path, quiet_run
):
    line = one_line_error(
        capsys,
        "fit",
        "--config",
        SYNTHETIC,
        "--data.init_args.crop_size",
        "40",
        "--data.init_args.synthetic_size",
        "40",
        *quiet_run,
    )
    assert "crop_size=40 does not suit the network: UNet needs sizes divisible by 16" in line
    assert "--data.init_args.crop_size 32 or 48" in line
    assert not (tmp_path / "data").exists()


def lifted_iunet_config(tmp_path) -> str:
    """The synthetic config with a small LiftediUNet (depth 2: sizes divisible by 4) for the U-Net."""
    config = yaml.safe_load((CONFIGS / "synthetic" / "maxpool.yaml").read_text())
    config["model"]["network"] = {
        "class_path": "equinet.models.LiftediUNet",
        "init_args": {"in_channels": 1, "out_channels": 1, "channels": 4, "depth": 2, "architecture": 1},
    }
    path = tmp_path / "lifted_iunet.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_crop_a_lifted_iunet_cannot_take_fails_before_the_data_are_generated(capsys, tmp_path, quiet_run):
    """The same pre-check as the U-Net's: the iUNet states its divisibility as ``size_multiple`` too."""
    line = one_line_error(
        capsys,
        "fit",
        "--config",
        lifted_iunet_config(tmp_path),
        "--data.init_args.crop_size",
        "30",
        "--data.init_args.synthetic_size",
        "30",
        *quiet_run,
    )
    assert "crop_size=30 does not suit the network: LiftediUNet needs sizes divisible by 4" in line
    assert "--data.init_args.crop_size 28 or 32" in line
    nothing_built(tmp_path)


def test_crop_a_lifted_iunet_can_take_passes_the_pre_check_and_trains(tmp_path, quiet_run):
    config = lifted_iunet_config(tmp_path)
    main(["fit", "--config", config, "--data.init_args.crop_size", "32", "--data.init_args.synthetic_size",
          "32", "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "1", *quiet_run,
          "--trainer.max_steps", "-1", "--trainer.limit_train_batches", "1"])
    assert (tmp_path / "data").exists(), "a crop the network can take goes on to generate the data"
    assert list((tmp_path / "runs").rglob("config.yaml")), "the run went past the pre-check and started"
    assert list((tmp_path / "runs").rglob("*.ckpt")), "and trained its one step"


def test_crop_larger_than_the_synthetic_data(capsys, tmp_path, quiet_run):
    line = one_line_error(
        capsys, "fit", "--config", SYNTHETIC, "--data.init_args.crop_size", "80", *quiet_run
    )
    assert "crop_size=80 is larger than the synthetic images" in line and "use crop_size <= 64" in line
    nothing_built(tmp_path)


def test_crop_larger_than_the_real_data(capsys, tmp_path, quiet_run, knee):
    """The knee fixture's images are 32x32."""
    line = one_line_error(
        capsys,
        "fit",
        "--config",
        SYNTHETIC,
        "--data.init_args.synthetic",
        "false",
        "--data.root",
        str(knee),
        "--data.init_args.crop_size",
        "48",
        *quiet_run,
    )
    assert "smaller than crop_size=48; use crop_size <= 32" in line


# --- options and config keys -----------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, expected",
    [
        (
            ["--trainer.max_epoch", "1"],
            "unrecognized arguments: --trainer.max_epoch 1 (did you mean --trainer.max_epochs?)",
        ),
        (["--trainer.max_epoch=1"], "(did you mean --trainer.max_epochs?)"),
        (["--model.bogus", "1"], "unrecognized arguments: --model.bogus 1"),
        (
            ["--model.loss", "huber"],
            "Parser key \"model.loss\": Expected a typing.Literal['mse', 'l1', 'ssim']. Got value: huber",
        ),
    ],
)
def test_unknown_options_and_abbreviations_are_one_line_errors(capsys, tmp_path, quiet_run, argv, expected):
    line = one_line_error(capsys, "fit", "--config", SYNTHETIC, *argv, *quiet_run, "--print_config", code=2)
    assert expected in line and line.endswith("`equinet fit --help` lists the options")
    nothing_built(tmp_path)


def test_unknown_config_file_key_suggests_the_right_one(capsys, tmp_path, quiet_run):
    config = tmp_path / "typo.yaml"
    config.write_text((CONFIGS / "synthetic" / "maxpool.yaml").read_text() + "modle: {loss: mse}\n")
    line = one_line_error(capsys, "fit", "--config", str(config), *quiet_run, code=2)
    assert "'modle.loss'" in line and "(did you mean --model.loss?)" in line


# --- the debug switch and the real console entry point ---------------------------------------
def test_equinet_debug_shows_the_traceback(tmp_path, quiet_run, monkeypatch):
    monkeypatch.setenv("EQUINET_DEBUG", "1")
    with pytest.raises(ValueError, match="FastMRIDataModule needs its dataset folder"):
        main(["fit", "--config", FASTMRI, *quiet_run])


def test_console_command_prints_one_line_and_exits_non_zero(tmp_path):
    proc = subprocess.run(
        equinet_cmd("fit", "--config", FASTMRI, "--trainer.default_root_dir", str(tmp_path)),
        cwd=tmp_path,
        env=cli_env(EQUINET_DATA_DIR=str(tmp_path / "data")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("equinet fit: error: FastMRIDataModule needs its dataset folder")
    assert last.endswith("(EQUINET_DEBUG=1 shows the traceback)")
    assert list(tmp_path.iterdir()) == []


def test_sync_batchnorm_on_cpu_ddp_says_how_to_turn_it_off(capsys, tmp_path, quiet_run):
    """The real-data configs sync BatchNorm (right on GPUs); torch has no CPU kernel for it."""
    line = one_line_error(
        capsys,
        "fit",
        "--config",
        SYNTHETIC,
        "--trainer.accelerator",
        "cpu",
        "--trainer.strategy",
        "ddp",
        "--trainer.devices",
        "2",
        "--trainer.sync_batchnorm",
        "true",
        *quiet_run,
    )
    assert "pass --trainer.sync_batchnorm false" in line
    nothing_built(tmp_path)


def test_a_logger_without_save_dir_says_what_to_add(capsys, tmp_path, quiet_run):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", SYNTHETIC, *quiet_run, "--trainer.logger", "CSVLogger"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert (
        "trainer.logger: pytorch_lightning.loggers.CSVLogger: the following arguments are required: save_dir"
        in err[0]
    )
    assert "(add --trainer.logger.save_dir . : '.' means the run folder)" in err[0]
