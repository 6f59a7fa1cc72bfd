"""``--trainer.strategy ddp --trainer.devices 2`` on CPU (gloo) gives the same
per-volume metrics as one process -- no volume dropped, no padded duplicate counted twice.

7 validation slices over 2 ranks: Lightning's DistributedSampler pads rank 1 with a repeat of
the first slice, which a plain ``sync_dist`` mean would count twice.
"""

from __future__ import annotations

import csv
import subprocess
import textwrap

import pytest
from _lightning_helpers import REPO, cli_env, equinet_cmd, run_cli

CONFIG = textwrap.dedent("""
    seed_everything: 3
    trainer:
      accelerator: cpu
      strategy: ddp
      devices: 2
      max_epochs: 1
      enable_progress_bar: false
      enable_model_summary: false
      log_every_n_steps: 1
    model:
      network:
        class_path: equinet.models.UNet
        init_args: {channels: 4, depth: 2, sampling: maxpool, padding_mode: circular}
    data:
      class_path: _lightning_helpers.ToyReconData
      init_args: {train_slices: [3, 3, 2], val_slices: [3, 2, 2], size: 32, batch_size: 2}
    equivariance: {num_dpsnr_shifts: 2}
    images: {num_images: 1}
""")

SINGLE = ["--trainer.strategy", "auto", "--trainer.devices", "1"]


def _rows(path):
    with open(path) as f:
        return {r["fname"]: r for r in csv.DictReader(f)}


def _ddp(*argv):
    proc = subprocess.run(equinet_cmd(*argv), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=600, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "distributed_backend=gloo" in out and "Starting with 2 processes" in out
    return out


def _assert_same_volumes(ddp_csv, single_csv, columns):
    ddp, single = _rows(ddp_csv), _rows(single_csv)
    assert sorted(ddp) == sorted(single) == ["val000.h5", "val001.h5", "val002.h5"]  # nothing dropped
    for fname in ddp:
        assert ddp[fname]["slices"] == single[fname]["slices"]  # nothing counted twice
        for col in columns:
            # same weights and inputs; only the batch composition differs (float32 rounding, which
            # moves a PSNR *difference* of float32 forward passes by ~1e-7 dB)
            abs_tol = 1e-5 if "dpsnr" in col else 1e-12
            assert float(ddp[fname][col]) == pytest.approx(float(single[fname][col]), rel=1e-6, abs=abs_tol), col


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
def test_ddp_fit_validation_equals_single_process(tmp_path):
    config = tmp_path / "ddp.yaml"
    config.write_text(CONFIG)
    group = tmp_path / "ddp"
    _ddp("fit", "--config", str(config), "--trainer.default_root_dir", str(group))
    # both ranks chose the same new run folder (rank 1 inherits rank 0's EQUINET_RUN_ID)
    assert [p.name for p in group.iterdir() if p.name != "latest"] == [group.joinpath("latest").resolve().name]
    run = group / "latest"
    summary = (run / "val_summary.md").read_text()
    assert "- world size: 2" in summary and "- slices: 7" in summary
    assert "- duplicate slices dropped (distributed sampler padding): 1" in summary  # the sampler did pad

    single = tmp_path / "single"
    run_cli("validate", "--config", str(config), *SINGLE, "--trainer.default_root_dir", str(tmp_path), "--run.name",
            "single", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert "- duplicate slices dropped (distributed sampler padding): 0" in (single / "val_summary.md").read_text()
    _assert_same_volumes(run / "val_volumes.csv", single / "val_volumes.csv", ["nmse", "psnr", "ssim", "loss"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
def test_ddp_test_stage_with_equivariance_equals_single_process(tmp_path):
    """`equinet test` under DDP: reconstruction and equivariance metrics as in one process."""
    config = tmp_path / "ddp.yaml"
    config.write_text(CONFIG)
    fit = tmp_path / "fit"
    run_cli("fit", "--config", str(config), *SINGLE, "--trainer.default_root_dir", str(tmp_path), "--run.name", "fit")
    ckpt = str(fit / "checkpoints" / "last.ckpt")
    _ddp("test", "--config", str(config), "--trainer.default_root_dir", str(tmp_path), "--run.name", "ddp",
         "--ckpt_path", ckpt)
    run_cli("test", "--config", str(config), *SINGLE, "--trainer.default_root_dir", str(tmp_path), "--run.name",
            "single", "--ckpt_path", ckpt)
    assert "dropped (distributed sampler padding): 1" in (tmp_path / "ddp" / "test_summary.md").read_text()
    _assert_same_volumes(tmp_path / "ddp" / "test_volumes.csv", tmp_path / "single" / "test_volumes.csv",
                         ["nmse", "psnr", "ssim", "equivariance_nmse", "equivariance_ssim",
                          "worst_dpsnr_image", "worst_dpsnr_volume"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*")
def test_ddp_on_the_synthetic_fastmri_config(tmp_path):
    """The shipped synthetic config through the real fastMRI loader: 3 volumes x 3 slices."""
    config = REPO / "experiments" / "configs" / "synthetic" / "aps.yaml"
    sizes = ["--data.init_args.synthetic_volumes", "12", "--data.init_args.synthetic_slices", "3"]
    env = {"EQUINET_DATA_DIR": str(tmp_path / "data")}
    run = tmp_path / "ddp"
    proc = subprocess.run(equinet_cmd("fit", "--config", str(config), *sizes, "--trainer.accelerator", "cpu",
                                      "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs",
                                      "1", "--trainer.default_root_dir", str(tmp_path), "--run.name", "ddp",
                                      "--trainer.callbacks", "[]",
                                      "--trainer.enable_progress_bar", "false"),
                          cwd=REPO, env=cli_env(**env), capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = (run / "val_summary.md").read_text()
    assert "- world size: 2" in summary and "- slices: 9" in summary and "padding): 1" in summary
    single = tmp_path / "single"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EQUINET_DATA_DIR", env["EQUINET_DATA_DIR"])
        run_cli("validate", "--config", str(config), *sizes, "--trainer.accelerator", "cpu", *SINGLE,
                "--trainer.default_root_dir", str(tmp_path), "--run.name", "single", "--ckpt_path",
                str(run / "checkpoints" / "last.ckpt"))
    ddp, one = _rows(run / "val_volumes.csv"), _rows(single / "val_volumes.csv")
    assert sorted(ddp) == sorted(one) and len(ddp) == 3
    for fname in ddp:
        assert ddp[fname]["slices"] == one[fname]["slices"] == "3"
        for col in ("nmse", "psnr", "ssim"):
            assert float(ddp[fname][col]) == pytest.approx(float(one[fname][col]), rel=1e-6), col


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*does not have many workers.*")
def test_ddp_predict_writes_the_files_one_process_writes(tmp_path):
    """`equinet predict` under DDP: each rank streams its part, rank 0 merges them; the sampler's
    padded repeat is dropped, so every volume holds each slice once, in order, as in one process."""
    import h5py
    import numpy as np

    config = tmp_path / "ddp.yaml"
    config.write_text(CONFIG)
    run_cli("fit", "--config", str(config), *SINGLE, "--trainer.default_root_dir", str(tmp_path), "--run.name", "a")
    _ddp("predict", "--config", str(config), "--trainer.default_root_dir", str(tmp_path), "--run.name", "a",
         "--ckpt_path", "last", "--run.tag", "ddp")
    run_cli("predict", "--config", str(config), *SINGLE, "--trainer.default_root_dir", str(tmp_path), "--run.name",
            "a", "--ckpt_path", "last", "--run.tag", "single")
    ddp, single = tmp_path / "a" / "reconstructions-ddp", tmp_path / "a" / "reconstructions-single"
    names = sorted(p.name for p in ddp.iterdir())
    assert names == sorted(p.name for p in single.iterdir()) == ["val000.h5", "val001.h5", "val002.h5"]
    assert not list(tmp_path.joinpath("a").glob(".*parts*"))  # the ranks' part files are gone
    for name in names:
        with h5py.File(ddp / name, "r") as a, h5py.File(single / name, "r") as b:
            assert a["reconstruction"].shape == b["reconstruction"].shape == (
                {"val000.h5": 3, "val001.h5": 2, "val002.h5": 2}[name], 32, 32)
            np.testing.assert_allclose(a["reconstruction"][()], b["reconstruction"][()], rtol=1e-5, atol=1e-6)
