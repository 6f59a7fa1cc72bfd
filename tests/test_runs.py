"""One folder per run: repeated, parallel and sweep runs never share a folder; `last` finds the run."""

from __future__ import annotations

import os
import subprocess
import textwrap

import pytest
import torch
from _lightning_helpers import REPO, cli_env, equinet_cmd, run_cli

from equinet.lightning.runs import RunFolderError, resolve_run, shared_run_id

CONFIG = textwrap.dedent("""
    seed_everything: 0
    trainer: {accelerator: cpu, devices: 1, max_epochs: 1, enable_progress_bar: false, log_every_n_steps: 1,
              enable_model_summary: false}
    model:
      network:
        class_path: _lightning_helpers.TinyNet
        init_args: {channels: 4}
    data:
      class_path: _lightning_helpers.ToyReconData
      init_args: {train_slices: [2, 2], val_slices: [2, 1], size: 32, batch_size: 2}
    equivariance: {num_dpsnr_shifts: 1}
    images: {num_images: 0}
""")

quiet = pytest.mark.filterwarnings("ignore:.*does not have many workers.*",
                                   "ignore:.*smaller than the logging interval.*")


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(CONFIG)
    return str(path)


def runs_in(group):
    return sorted(p.name for p in group.iterdir() if p.name != "latest")


def step_of(run):
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]


@quiet
def test_repeated_fits_get_their_own_folders_and_last_resumes_the_latest(config, tmp_path):
    group = tmp_path / "runs"
    args = ("--config", config, "--trainer.default_root_dir", str(group))
    run_cli("fit", *args)
    first = runs_in(group)
    run_cli("fit", *args, "--model.optimizer.init_args.lr", "0.01")
    assert len(first) == 1 and len(runs_in(group)) == 2
    # two fits in the same second get names that need not sort in time order: name them by run
    names = first + [n for n in runs_in(group) if n != first[0]]
    assert (group / "latest").resolve().name == names[1]
    for name in names:  # everything about a run is in its folder
        run = group / name
        assert {"config.yaml", "checkpoints", "val_summary.md", "lightning_logs"} <= {p.name for p in run.iterdir()}
        assert step_of(run) == 2
    assert "lr: 0.01" in (group / names[1] / "config.yaml").read_text()
    assert "lr: 0.01" not in (group / names[0] / "config.yaml").read_text()

    # --ckpt_path last continues the latest run in its own folder
    run_cli("fit", *args, "--trainer.max_epochs", "2", "--ckpt_path", "last")
    assert runs_in(group) == sorted(names) and step_of(group / names[1]) == 4 and step_of(group / names[0]) == 2
    # ... or a named one; test writes its reports into the run it evaluates
    run_cli("test", *args, "--run.name", names[0], "--ckpt_path", "last")
    assert (group / names[0] / "test_summary.md").exists() and not (group / names[1] / "test_summary.md").exists()
    assert "last.ckpt" in (group / names[0] / "test_summary.md").read_text()
    # a second evaluation of the same run under a tag keeps the first one and the training config
    run_cli("test", *args, "--run.name", names[0], "--ckpt_path", "best", "--run.tag", "ood")
    files = {p.name for p in (group / names[0]).iterdir()}
    assert {"test_summary.md", "test_config.yaml", "test-ood_summary.md", "test-ood_volumes.csv",
            "test-ood_config.yaml", "config.yaml"} <= files
    assert "best-" in (group / names[0] / "test-ood_summary.md").read_text()


@quiet
def test_parallel_fits_never_share_a_folder(config, tmp_path):
    group = tmp_path / "runs"
    cmd = equinet_cmd("fit", "--config", config, "--trainer.default_root_dir", str(group))
    procs = [subprocess.Popen(cmd, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    names = runs_in(group)
    assert len(names) == 2
    for name in names:
        assert step_of(group / name) == 2 and (group / name / "config.yaml").exists()


@quiet
def test_sweep_run_folder_is_the_wandb_run_id_and_nothing_lands_in_the_working_directory(config, tmp_path,
                                                                                          monkeypatch):
    import wandb

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_RUN_ID", "sweeprun1")  # what `wandb agent` sets for each run
    group = tmp_path / "runs"
    cli = None
    try:
        cli = run_cli("fit", "--config", config, "--trainer.default_root_dir", str(group),
                      "--trainer.logger", "WandbLogger")
        assert cli.trainer.logger.experiment.id == "sweeprun1"
    finally:
        if cli is not None:
            cli.trainer.logger.experiment.finish()
        wandb.teardown()
    assert runs_in(group) == ["sweeprun1"]
    run = group / "sweeprun1"
    assert (run / "wandb").is_dir() and (run / "config.yaml").exists() and step_of(run) == 2
    assert list(work.iterdir()) == []  # no ./wandb, no ./config.yaml, no ./lightning_logs


@quiet
def test_evaluating_last_without_a_checkpoint_fails_naming_where_it_looked(config, tmp_path):
    group = tmp_path / "runs"
    for sub in ("test", "validate", "predict"):
        with pytest.raises(RunFolderError, match=f"no last.ckpt in {group / 'latest'}"):
            run_cli(sub, "--config", config, "--trainer.default_root_dir", str(group), "--ckpt_path", "last")
        with pytest.raises(RunFolderError, match=f"no last.ckpt in {group / 'x' / 'checkpoints'}"):
            run_cli(sub, "--config", config, "--trainer.default_root_dir", str(group), "--run.name", "x",
                    "--ckpt_path", "last")
    assert not group.exists()  # a refused command leaves no empty run folder behind
    # fit: nothing to resume is fine, it starts fresh
    run_cli("fit", "--config", config, "--trainer.default_root_dir", str(group), "--ckpt_path", "last")
    assert len(runs_in(group)) == 1 and step_of(group / "latest") == 2


def test_ranks_of_one_launch_agree_on_the_folder(tmp_path):
    assert shared_run_id({}) is None
    torchrun = {"WORLD_SIZE": "4", "TORCHELASTIC_RUN_ID": "abc", "LOCAL_RANK": "3", "RANK": "3"}
    assert shared_run_id(torchrun) == "torchrun-abc"
    assert shared_run_id({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"}) == "slurm-77-0"
    assert shared_run_id({"SLURM_NTASKS": "1", "SLURM_JOB_ID": "77"}) is None  # one task: runs stay separate
    spawned = {"LOCAL_RANK": "1", "WORLD_SIZE": "2", "EQUINET_RUN_ID": "20261130-101010-abcd"}
    assert shared_run_id(spawned) == "20261130-101010-abcd"
    assert shared_run_id({**spawned, "LOCAL_RANK": "0"}) is None  # rank 0 itself chooses a new one
    run, ckpt, wandb_id = resolve_run(tmp_path, None, "fit", None, spawned)
    assert run == tmp_path / "20261130-101010-abcd" and ckpt is None and not wandb_id
    run, _, wandb_id = resolve_run(tmp_path, None, "fit", None, {})
    assert wandb_id and run.parent == tmp_path and run.is_dir()  # new and unique: fit to be the W&B id
    for bad in ("latest", "../x", ".hidden", "a/b", ""):
        with pytest.raises(RunFolderError, match="not a usable run folder name"):
            resolve_run(tmp_path, bad, "fit", None, {})


def test_an_explicit_checkpoint_is_evaluated_into_its_run(tmp_path):
    ckpt = tmp_path / "runs" / "a" / "checkpoints" / "best-epoch000-step0000002.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"")
    run, path, _ = resolve_run(tmp_path / "runs", None, "test", str(ckpt), {})
    assert run == tmp_path / "runs" / "a" and path == str(ckpt)
    # fit from another run's checkpoint (fine-tuning) starts a new run instead
    run, _, _ = resolve_run(tmp_path / "runs", None, "fit", str(ckpt), {})
    assert run.parent == tmp_path / "runs" and run.name != "a"
    assert os.path.isdir(run)
