"""Every file a run writes -- config, checkpoints, logs, image panels, reports, CSVs,
predictions, and the cached synthetic dataset -- has the mode the umask gives (0644 files, 0755
folders under 022), so a team sharing a disk can read each other's runs.
"""

from __future__ import annotations

import os
import stat

import pytest
from _lightning_helpers import REPO, run_cli

CONFIG = str(REPO / "experiments" / "configs" / "synthetic" / "maxpool.yaml")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def modes(root):
    """``{relative path: mode}`` of every file and folder under ``root`` (links not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode):
                out[os.path.relpath(path, root)] = (stat.S_ISDIR(st.st_mode), stat.S_IMODE(st.st_mode))
    return out


@pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*"
)
def test_everything_a_run_writes_follows_the_umask(tmp_path, monkeypatch, umask_022):
    monkeypatch.setenv("EQUINET_DATA_DIR", str(tmp_path / "data"))
    group = tmp_path / "runs"
    common = [
        "--config",
        CONFIG,
        "--trainer.default_root_dir",
        str(group),
        "--trainer.enable_progress_bar",
        "false",
        "--equivariance.num_dpsnr_shifts",
        "1",
        "--trainer.limit_train_batches",
        "2",
        "--trainer.max_epochs",
        "1",
    ]
    run_cli("fit", *common, "--run.name", "tb")  # TensorBoard: the default logger
    run_cli(
        "fit",
        *common,
        "--run.name",
        "csv",
        "--trainer.logger",
        "CSVLogger",  # CSV + PNG panels
        "--trainer.logger.save_dir",
        ".",
    )  # "." (or none, for W&B): the run folder
    for run in ("tb", "csv"):
        run_cli("test", *common, "--run.name", run, "--ckpt_path", "last")
        run_cli("predict", *common, "--run.name", run, "--ckpt_path", "best")

    written = {
        **{f"runs/{k}": v for k, v in modes(group).items()},
        **{f"data/{k}": v for k, v in modes(tmp_path / "data").items()},
    }
    names = "\n".join(written)
    for expected in (
        "config.yaml",
        "test_config.yaml",
        "checkpoints/last.ckpt",
        "checkpoints/best-",
        "events.out",
        "metrics.csv",
        "hparams.yaml",
        "images/val_",
        ".png",
        "val_summary.md",
        "test_volumes.csv",
        "test_images.csv",
        "reconstructions/",
        "data/synthetic/fastmri-knee",
        "singlecoil_train/",
    ):
        assert expected in names, expected  # the walk saw every kind of output
    wrong = {
        path: oct(mode) for path, (is_dir, mode) in written.items() if mode != (0o755 if is_dir else 0o644)
    }
    assert not wrong, wrong
