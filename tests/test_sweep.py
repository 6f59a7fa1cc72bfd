"""Each W&B sweep's command, rendered exactly as ``wandb agent`` renders
it, parses through the ``equinet`` CLI; the synthetic sweep's command trains a step with
``WandbLogger`` in offline mode and logs the sweep's metric.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml
from _lightning_helpers import REPO, run_cli

# `equinet fit` sweeps (the study sweeps, study_*.yaml, one variant per agent: test_study_sweeps.py)
SWEEPS = sorted(p for p in (REPO / "experiments" / "sweeps").glob("*.yaml") if not p.stem.startswith("study"))


def render(sweep: dict, values: dict) -> list:
    """The argv ``wandb agent`` runs for one set of parameter values.

    Uses W&B's own helpers and mirrors ``wandb.wandb_agent.Agent._command_run``'s macro
    substitution (``${env}``, ``${args}``, ...), so the test sees what an agent would run.
    """
    from wandb.sdk.launch.sweeps import utils

    command = utils.create_sweep_command(list(sweep["command"]))
    sweep_vars = utils.create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    sweep_vars.update(interpreter=["python"], program=[sweep["program"]], env=["/usr/bin/env"])
    argv = []
    for c in map(str, command):
        argv += (sweep_vars.get(c[2:-1]) or []) if c.startswith("${") and c.endswith("}") else [c]
    return argv


def grid(sweep: dict):
    params = sweep["parameters"]
    keys = list(params)
    for combo in itertools.product(*(params[k]["values"] for k in keys)):
        yield dict(zip(keys, combo))


def covering(sweep: dict):
    """A few grid points in which every value of every parameter occurs at least once."""
    values = [sweep["parameters"][k]["values"] for k in sweep["parameters"]]
    for i in range(max(map(len, values))):
        yield dict(zip(sweep["parameters"], (v[i % len(v)] for v in values)))


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_well_formed(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["method"] in ("grid", "random", "bayes")
    assert sweep["metric"]["name"] in ("val/ssim", "val/psnr", "val/nmse", "val/loss")
    cmd = sweep["command"]
    assert cmd[:3] == ["${env}", "equinet", "fit"] and cmd[-1] == "${args}"  # overrides come last
    config = cmd[cmd.index("--config") + 1]
    assert (REPO / config).is_file()
    assert len(list(grid(sweep))) > 1
    # a group of its own (not the config's runs/<dataset>/<strategy>, which its blur runs would share
    # with aps runs and plain fits); each run's folder in it is named by its W&B run id
    assert f"--trainer.default_root_dir=runs/sweeps/{path.stem}" in cmd


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_rendered_sweep_commands_parse_through_the_cli(path, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("EQUINET_DATA_ROOT", str(tmp_path))
    sweep = yaml.safe_load(path.read_text())
    for values in covering(sweep):
        argv = render(sweep, values)
        assert argv[:3] == ["/usr/bin/env", "equinet", "fit"]
        with pytest.raises(SystemExit) as exc:
            run_cli(*argv[2:], "--print_config")
        assert exc.value.code == 0
        cfg = yaml.safe_load(capsys.readouterr().out)
        net = cfg["model"]["network"]["init_args"]
        assert net["sampling"] == values["model.network.init_args.sampling"]
        assert net["sampling_kwargs"]["filter_size"] == values["model.network.init_args.sampling_kwargs.filter_size"]
        assert cfg["model"]["optimizer"]["init_args"]["lr"] == values["model.optimizer.init_args.lr"]
        assert cfg["trainer"]["logger"]["class_path"] == "pytorch_lightning.loggers.WandbLogger"
        if "${envvar:EQUINET_DATA_ROOT}" in " ".join(sweep["command"]):
            assert cfg["data"]["init_args"]["root"] == str(tmp_path)


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*")
def test_synthetic_sweep_runs_one_offline_step_with_wandb(monkeypatch, tmp_path):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("EQUINET_DATA_DIR", str(tmp_path / "data"))
    sweep = yaml.safe_load((REPO / "experiments" / "sweeps" / "synthetic_strategy_filter_lr.yaml").read_text())
    values = next(grid(sweep))
    argv = render(sweep, values)
    cli = None
    try:
        cli = run_cli(*argv[2:], "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                      "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=1",
                      f"--trainer.default_root_dir={tmp_path / 'run'}",
                      f"--trainer.logger.save_dir={tmp_path}", "--trainer.callbacks=[]")
        assert isinstance(cli.trainer.logger, WandbLogger)
    finally:  # flush the offline run (a `wandb agent` child process does this at exit)
        if cli is not None:
            cli.trainer.logger.experiment.finish()
        wandb.teardown()  # waits for the W&B service to write the offline run to disk
    runs = list(Path(tmp_path, "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    data = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"val/ssim" in data and b"train/loss" in data  # the sweep's metric was logged
    # the run's config records the swept values (the U-Net's sampling and filter size)
    sampling = values["model.network.init_args.sampling"]
    filter_size = values["model.network.init_args.sampling_kwargs.filter_size"]
    assert f'"sampling":"{sampling}","sampling_kwargs":{{"filter_size":{filter_size}}}'.encode() in data
    assert (tmp_path / "run" / "latest" / "checkpoints" / "last.ckpt").exists()
