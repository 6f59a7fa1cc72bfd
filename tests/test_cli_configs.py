"""experiments/configs: in sync with their generator, the papers' hyper-parameters, every config
parses with overrides, and ``equinet fit`` then ``equinet test`` on each synthetic
config writes the metrics summary with the equivariance numbers.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from _lightning_helpers import REPO, run_cli

CONFIGS = REPO / "experiments" / "configs"
_spec = importlib.util.spec_from_file_location("equinet_configs_generate", CONFIGS / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)

ALL = sorted(CONFIGS.glob("*/*.yaml"))
SYNTHETIC = sorted(p.stem for p in (CONFIGS / "synthetic").glob("*.yaml"))
# exactly shift-equivariant with circular padding (eval mode): APS and LPS; the others are not
EQUIVARIANT = {"aps", "aps-3", "lps"}


def _strategy_available(name: str) -> bool:
    from equinet.sampling import list_strategies

    return generate.STRATEGIES[name]["sampling"] in list_strategies()


def test_configs_are_generated_and_in_sync():
    expected = generate.expected_files()
    assert sorted(expected) == ALL, "stray or missing config files: run experiments/configs/generate.py"
    for path, text in expected.items():
        assert path.read_text() == text, f"{path} is stale: run python experiments/configs/generate.py"
    assert len(ALL) == 18 and {p.parent.name for p in ALL} == {"synthetic", "fastmri", "lodopab"}
    assert SYNTHETIC == sorted(["maxpool", "lpf-3", "aps", "aps-3", "lps", "orthogonal"])


def _load(dataset, strategy):
    return yaml.safe_load((CONFIGS / dataset / f"{strategy}.yaml").read_text())


@pytest.mark.parametrize("strategy", SYNTHETIC)
def test_paper_hyperparameters(strategy):
    for dataset, lr, gamma, epochs, batch, crop in (("fastmri", 1e-3, 0.5, 50, 16, 320),
                                                   ("lodopab", 1e-2, 0.1, 20, 8, 352)):
        cfg = _load(dataset, strategy)
        model = cfg["model"]
        assert model["optimizer"] == {"class_path": "torch.optim.Adam", "init_args": {"lr": lr}}
        assert model["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.StepLR"
        assert model["lr_scheduler"]["init_args"] == {"step_size": 5, "gamma": gamma}
        assert model["loss"] == "mse"
        assert cfg["trainer"]["max_epochs"] == epochs
        assert cfg["data"]["init_args"]["batch_size"] == batch and cfg["data"]["init_args"]["crop_size"] == crop
        net = model["network"]
        assert net["class_path"] == "equinet.models.UNet"
        # 64, 128, 256, 512, 1024 channels: 64 doubled over 4 downsamplings
        assert net["init_args"]["channels"] == 64 and net["init_args"]["depth"] == 4
        assert net["init_args"]["padding_mode"] == "circular"
    expected = {"maxpool": ("maxpool", None), "lpf-3": ("blur", {"filter_size": 3}), "aps": ("aps", {"filter_size": 1}),
                "aps-3": ("aps", {"filter_size": 3}), "lps": ("lps", None), "orthogonal": ("orthogonal", None)}
    sampling, kwargs = expected[strategy]
    args = _load("fastmri", strategy)["model"]["network"]["init_args"]
    assert args["sampling"] == sampling
    if kwargs:
        assert args["sampling_kwargs"] == kwargs


@pytest.mark.parametrize("config", ALL, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_parses_with_overrides(capsys, config, tmp_path):
    with pytest.raises(SystemExit) as exc:
        run_cli("fit", "--config", str(config), "--trainer.max_steps", "2", "--data.root", str(tmp_path),
                "--print_config")
    assert exc.value.code == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["trainer"]["max_steps"] == 2 and cfg["data"]["init_args"]["root"] == str(tmp_path)


# published training-set sizes: fastMRI single-coil knee train slices, LoDoPaB-CT train samples
TRAIN_SAMPLES = {"fastmri": 34742, "lodopab": 35820}


@pytest.mark.parametrize("config", ALL, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_logs_train_loss_within_its_first_epoch(config):
    """``log_every_n_steps`` at most the optimiser steps of one epoch, even on 8 GPUs (real data)."""
    cfg = yaml.safe_load(config.read_text())
    args = cfg["data"]["init_args"]
    if config.parent.name == "synthetic":
        steps = -(-args["synthetic_volumes"] * args["synthetic_slices"] // args["batch_size"])
    else:
        steps = TRAIN_SAMPLES[config.parent.name] // (args["batch_size"] * 8)
    assert cfg["trainer"]["log_every_n_steps"] <= steps, (cfg["trainer"]["log_every_n_steps"], steps)


# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One synthetic dataset cache for all end-to-end runs of this module."""
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("equinet_data")
        mp.setenv("EQUINET_DATA_DIR", str(path))
        yield path


def _fit_then_test(config: Path, run_dir: Path, *extra: str):
    common = ["--config", str(config), "--trainer.default_root_dir", str(run_dir.parent), "--run.name", run_dir.name,
              "--trainer.enable_progress_bar",
              "false", "--trainer.logger", "pytorch_lightning.loggers.CSVLogger", "--trainer.logger.save_dir",
              str(run_dir), *extra]
    run_cli("fit", *common, "--trainer.max_epochs", "1", "--trainer.callbacks", "[]")  # one epoch as shipped
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    cli = run_cli("test", *common, "--ckpt_path", "last")
    return cli


def _summary_rows(run_dir: Path):
    with open(run_dir / "test_volumes.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*")
@pytest.mark.parametrize("strategy", SYNTHETIC)
def test_synthetic_config_fit_then_test_writes_equivariance_summary(strategy, data_dir, tmp_path):
    if not _strategy_available(strategy):
        pytest.skip(f"sampling strategy of {strategy!r} is not registered on this branch yet")
    run_dir = tmp_path / strategy
    _fit_then_test(CONFIGS / "synthetic" / f"{strategy}.yaml", run_dir)
    summary = (run_dir / "test_summary.md").read_text()
    for key in ("| nmse |", "| psnr |", "| ssim |", "| equivariance_nmse |", "| equivariance_ssim |",
                "| worst_dpsnr_image |", "| worst_dpsnr_volume |"):
        assert key in summary, key
    assert "last.ckpt" in summary and "global step: 4" in summary  # 4 volumes x 4 slices / batch 4
    # the report says which data it ran on, and the shipped log interval logs train/loss
    assert "- data: synthetic fastMRI knee in the real file format (generated)" in summary
    with open(next(run_dir.rglob("metrics.csv"))) as f:
        assert [r for r in csv.DictReader(f) if r.get("train/loss")], "train/loss was never logged"
    rows = _summary_rows(run_dir)
    assert rows and all(int(r["slices"]) > 0 for r in rows)
    eq_nmse = max(float(r["equivariance_nmse"]) for r in rows)
    worst = max(float(r["worst_dpsnr_image"]) for r in rows)
    if strategy in EQUIVARIANT:  # exact up to float32 rounding: the APS-U paper's claim
        assert eq_nmse < 1e-12 and worst < 1e-6, (eq_nmse, worst)
    else:  # the metric does see the broken equivariance (so the check above can fail)
        assert eq_nmse > 1e-12 and worst > 1e-9, (eq_nmse, worst)


# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_format_roots(tmp_path_factory):
    """Tiny fastMRI-knee and LoDoPaB datasets in the real formats, at the real image sizes."""
    base = tmp_path_factory.mktemp("real_format")
    run_cli("data", "synth", "--kind", "knee", "--out", str(base / "knee"), "--num", "2", "--slices", "2")
    run_cli("data", "synth", "--kind", "lodopab", "--out", str(base / "lodopab"), "--num", "4")
    return {"fastmri": base / "knee", "lodopab": base / "lodopab"}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*")
@pytest.mark.parametrize("config", [p for p in ALL if p.parent.name != "synthetic"],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_real_data_config_runs_with_max_steps_and_root_overrides(config, real_format_roots, tmp_path):
    """The paper configs, unchanged but for --data.root/--trainer.max_steps (and a thin network
    so that a 320x320 / 352x352 step is quick on a CPU), train a step and validate."""
    if not _strategy_available(config.stem):
        pytest.skip(f"sampling strategy of {config.stem!r} is not registered on this branch yet")
    run_dir = tmp_path / "run"
    run_cli("fit", "--config", str(config), "--data.root", str(real_format_roots[config.parent.name]),
            "--trainer.max_steps", "1", "--model.network.init_args.channels", "4", "--data.init_args.num_workers",
            "0", "--trainer.default_root_dir", str(tmp_path), "--run.name", "run", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks", "[]")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 1
    assert "| ssim |" in (run_dir / "val_summary.md").read_text()


def test_gpu_configs_pin_memory_and_cpu_configs_do_not():
    """The fastMRI/LoDoPaB (GPU) configs load batches into pinned memory (asynchronous host-to-device
    copies); the synthetic (laptop CPU) configs leave it off. A CPU-only machine never pins."""
    for strategy in SYNTHETIC:
        for dataset in ("fastmri", "lodopab"):
            assert _load(dataset, strategy)["data"]["init_args"]["pin_memory"] is True, (dataset, strategy)
        assert "pin_memory" not in _load("synthetic", strategy)["data"]["init_args"]


def test_pinned_loader_is_unpinned_without_cuda(monkeypatch):
    from equinet.data.base import ReconDataModule

    dm = ReconDataModule(batch_size=2, pin_memory=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dm._loader(list(range(4)), "train", shuffle=False).pin_memory is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dm._loader(list(range(4)), "train", shuffle=False).pin_memory is True
