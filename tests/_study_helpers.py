"""Helpers for the study tests: a tiny study config on the session datasets, and a callback that
kills its process once (reachable by class path from study subprocesses, tests/ on PYTHONPATH)."""

from __future__ import annotations

import copy
import os
import signal
import sys
from pathlib import Path
from typing import Any, Dict, Sequence

import pytorch_lightning as pl
import yaml

TIMING = ("train_minutes", "step_time_ratio")  # measured, not reproducible to the bit


def tiny_study(
    knee: Path,
    imagenet: Path,
    variants: Sequence[str] = ("baseline", "APS"),
    steps: int = 3,
    callbacks: Sequence[Dict[str, Any]] = (),
) -> Dict[str, Any]:
    """A study of U-Nets with 4 channels on the 32x32 session knee data, a few steps each."""
    trainer = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": steps,
        "logger": False,
        "deterministic": True,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
    }
    if callbacks:
        trainer["callbacks"] = list(callbacks)
    return {
        "name": "tiny",
        "threads": 1,
        "run": {
            "seed_everything": 0,
            "trainer": trainer,
            "model": {
                "network": {
                    "class_path": "equinet.models.UNet",
                    "init_args": {
                        "in_channels": 1,
                        "out_channels": 1,
                        "channels": 4,
                        "depth": 2,
                        "sampling": "maxpool",
                        "padding_mode": "circular",
                    },
                },
                "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 0.003}},
            },
            "data": {
                "class_path": "equinet.data.FastMRIDataModule",
                "init_args": {"root": str(knee), "crop_size": 32, "batch_size": 4},
            },
            "equivariance": {"max_shift": 16, "num_dpsnr_shifts": 3, "seed": 0},
            "images": {"num_images": 0},
        },
        "variants": list(variants),
        "ood": {
            "data": {
                "class_path": "equinet.data.ImageNetShiftDataModule",
                "init_args": {
                    "root": str(imagenet),
                    "num_images": 4,
                    "crop_size": 32,
                    "batch_size": 4,
                    "progress": False,
                },
            },
            "num_dpsnr_shifts": 0,
        },
        "cost": {"reference": "baseline", "repeats": 1, "warmup": 0},
    }


def write_config(path: Path, config: Dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(copy.deepcopy(config), sort_keys=False))
    return path


def read_results(folder: Path, drop: Sequence[str] = TIMING) -> Dict[str, Dict[str, str]]:
    import csv

    with open(folder / "results.csv") as f:
        return {r["variant"]: {k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)}


class KillOnce(pl.Callback):
    """SIGKILLs its process in epoch ``epoch`` of the run whose folder is named ``variant``, once:
    ``marker`` is created first, so the re-run (same config) goes through."""

    def __init__(self, variant: str, marker: str, epoch: int = 1) -> None:
        self.variant, self.marker, self.epoch = variant, marker, epoch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        where = [Path(trainer.default_root_dir)]
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            where.append(Path(trainer.checkpoint_callback.dirpath))
        if (
            any(self.variant in p.parts for p in where)
            and trainer.current_epoch == self.epoch
            and not os.path.exists(self.marker)
        ):
            Path(self.marker).write_text("killed")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
