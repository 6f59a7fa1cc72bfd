"""Small importable helpers for the Lightning/CLI tests (no tests here).

Subprocess CLI runs reach them by class path (``_lightning_helpers.ToyReconData``) with
the tests folder on ``PYTHONPATH``; see :func:`cli_env`.
"""

from __future__ import annotations

import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from equinet.data.types import ReconSample

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def cli_env(**extra: str) -> dict:
    """Environment for ``python -m equinet`` subprocesses: this checkout and tests/ importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("WANDB_MODE", "offline")
    env.setdefault("WANDB_SILENT", "true")
    env["PYTHONWARNINGS"] = "ignore"  # subprocess output is asserted on, not its warnings
    # tiny networks: one thread each (several intra-op threads on a busy 2-core box run ~100x slower)
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


def equinet_cmd(*args: str) -> List[str]:
    return [sys.executable, "-m", "equinet", *args]


@contextmanager
def restored_globals():
    """Undo what an in-process ``equinet`` run changes globally: ``sys.argv`` (LightningCLI warns
    if it holds arguments too), torch's deterministic-algorithms flags (``trainer.deterministic``),
    ``CUBLAS_WORKSPACE_CONFIG`` and the intra-op thread count (1 thread: tiny networks on a busy
    2-core machine run ~100x slower with more)."""
    saved = (sys.argv, torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_num_threads(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    sys.argv = ["equinet"]
    torch.set_num_threads(1)
    try:
        yield
    finally:
        sys.argv = saved[0]
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.set_num_threads(saved[3])
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def run_cli(*argv: str):
    """``equinet <argv>`` in this process (no 10 s of imports per run), returning the CLI object.

    Uses the same entry points as the console script (Lightning subcommands without its one-line
    error handling, so tests see the exceptions), inside :func:`restored_globals`.
    """
    from equinet.cli import main
    from equinet.lightning.cli import lightning_main

    with restored_globals():
        if argv and argv[0] in ("fit", "validate", "test", "predict"):
            return lightning_main(list(argv))
        return main(list(argv))


class ToyVolumes(Dataset):
    """Deterministic volumes of smooth random images; input = target blurred + noise.

    ``slices`` lists the slice count of each volume; (fname, slice_num) is unique. Each
    slice is normalised by its input's mean/std like fastMRI; max_value is the volume max.
    """

    def __init__(self, slices: List[int], size: int = 32, seed: int = 0, prefix: str = "vol") -> None:
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for v, n in enumerate(slices):
            fname = f"{prefix}{v:03d}.h5"
            base = torch.rand(1, 1, size // 4, size // 4, generator=g)
            vol = []
            for s in range(n):
                coarse = base + 0.3 * torch.rand(1, 1, size // 4, size // 4, generator=g)
                target = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear",
                                                         align_corners=False)[0]
                noisy = target + 0.1 * torch.randn(target.shape, generator=g)
                vol.append((target, noisy))
            max_value = float(torch.stack([t for t, _ in vol]).max())
            for s, (target, noisy) in enumerate(vol):
                mean, std = float(noisy.mean()), float(noisy.std())
                self.items.append(ReconSample((noisy - mean) / std, (target - mean) / std, mean, std, max_value,
                                              fname, s))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> ReconSample:
        return self.items[i]


class ToyReconData(pl.LightningDataModule):
    """A LightningDataModule over :class:`ToyVolumes` (train shuffled; val/test fixed)."""

    def __init__(self, train_slices: List[int] = (3, 3, 2), val_slices: List[int] = (3, 2, 2),
                 size: int = 32, batch_size: int = 2, num_workers: int = 0) -> None:
        super().__init__()
        self.train_slices, self.val_slices = list(train_slices), list(val_slices)
        self.size, self.batch_size, self.num_workers = size, batch_size, num_workers

    def setup(self, stage: Optional[str] = None) -> None:
        self.train_set = ToyVolumes(self.train_slices, self.size, seed=1, prefix="train")
        self.val_set = ToyVolumes(self.val_slices, self.size, seed=2, prefix="val")

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)


class TinyNet(nn.Module):
    """Stand-in network: circular 3x3 convs, optionally a max-pool/nearest-upsample bottleneck.

    Without pooling it is exactly equivariant to circular shifts; with pooling it is not --
    enough to show the equivariance metrics can tell the two apart.
    """

    def __init__(self, channels: int = 4, pool: bool = True) -> None:
        super().__init__()
        self.pool = pool
        def conv(i: int, o: int) -> nn.Conv2d:
            return nn.Conv2d(i, o, 3, padding=1, padding_mode="circular")

        self.enc = nn.Sequential(conv(1, channels), nn.BatchNorm2d(channels), nn.ReLU())
        self.dec = nn.Sequential(conv(channels, channels), nn.ReLU(), nn.Conv2d(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(x)
        if self.pool:
            h = nn.functional.interpolate(nn.functional.max_pool2d(h, 2), scale_factor=2, mode="nearest")
        return x + self.dec(h)


class KillAfterEpoch(pl.Callback):
    """SIGKILLs its own process in the middle of epoch ``epoch`` (after that epoch's first batch).

    Used to simulate a crash after a checkpoint was written: no cleanup, no final save.
    """

    def __init__(self, epoch: int = 1, batch: int = 1) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def state_arrays(ckpt_path: Path) -> dict:
    """The model weights of a checkpoint as numpy arrays (loaded with weights_only=True)."""
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    return {k: v.numpy().copy() for k, v in ckpt["state_dict"].items()}


__all__ = [
    "KillAfterEpoch",
    "TinyNet",
    "ToyReconData",
    "ToyVolumes",
    "cli_env",
    "equinet_cmd",
    "restored_globals",
    "run_cli",
    "state_arrays",
]
