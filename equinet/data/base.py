"""The LightningDataModule base shared by the DataModules (loader plumbing only)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from equinet.data.common import DataFormatError, data_dir, ensure_dataset, stable_hash

# what `${envvar:NAME}` of a W&B sweep command becomes when NAME is unset: the bare name
_ENV_VAR_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


class ReconDataModule(pl.LightningDataModule):
    """Loader plumbing shared by the DataModules: train shuffles, val/test/predict never shuffle
    and keep the last partial batch (every sample evaluated; DDP padding duplicates are
    identified downstream by ``(fname, slice_num)``)."""

    def __init__(self, batch_size: int = 1, num_workers: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Optional[Dataset] = None
        self.val_set: Optional[Dataset] = None
        self.test_set: Optional[Dataset] = None
        # set by subclasses: the user's dataset root (None: the synthetic dataset, asked for with
        # synthetic=True), where the synthetic dataset is cached, and its parameters
        self.root: Optional[Path] = None
        self.data_dir: Optional[str] = None
        self.synthetic: Dict[str, Any] = {}

    # -- where the data come from: the user's root, or the synthetic dataset if asked for ----
    synthetic_kind: str = ""  # hash namespace of the synthetic dataset
    synthetic_what: str = ""  # human name for the log line and the reports
    root_holds: str = "the dataset"  # what a root folder holds, for error messages

    @classmethod
    def check_source(cls, root: Optional[str], synthetic: bool) -> Optional[Path]:
        """The dataset root (``None`` with ``synthetic=True``), checked before anything is built.

        Real data need a ``root`` that exists; the synthetic dataset is used only when asked for
        (``synthetic=True``), never as a silent fallback for a forgotten root. A root that is the
        NAME of an unset environment variable is what a W&B sweep's ``${envvar:NAME}`` becomes.
        """
        name = cls.__name__
        if root is None or str(root) == "":
            if synthetic:
                return None
            raise ValueError(
                f"{name} needs its dataset folder: root=/path/to/data (--data.root), holding "
                f"{cls.root_holds}; or synthetic=True (--data.synthetic true) for a small generated "
                f"{cls.synthetic_what} dataset in the same format"
            )
        if synthetic:
            raise ValueError(f"{name}: root={str(root)!r} and synthetic=True exclude each other; drop one")
        path = Path(root).expanduser()
        if not path.exists():
            if _ENV_VAR_NAME.fullmatch(str(root)) and str(root) not in os.environ:
                raise DataFormatError(
                    f"{name}: root is {str(root)!r}, the name of an environment variable that is not set "
                    f"(a W&B sweep's ${{envvar:{root}}} becomes the bare name); export {root}=/path/to/data "
                    "before starting the agent"
                )
            raise DataFormatError(f"{name}: root {path} does not exist; it should hold {cls.root_holds}")
        return path

    def data_description(self) -> str:
        """Which data a run used, for its reports: the root, or the generated synthetic dataset."""
        if self.root is not None:
            return f"{type(self).__name__}, root {self.root}"
        return f"synthetic {self.synthetic_what} in the real file format (generated), {self.synthetic_root()}"

    def synthetic_label(self) -> str:
        """Readable prefix of the synthetic dataset's folder name."""
        raise NotImplementedError

    def write_synthetic(self, out: Path) -> None:
        """Write the synthetic default dataset into ``out`` (in the real file format)."""
        raise NotImplementedError

    def synthetic_root(self) -> Path:
        key = stable_hash(self.synthetic_kind, self.synthetic, "v1")
        return data_dir(self.data_dir) / "synthetic" / f"{self.synthetic_label()}-{key}"

    def resolved_root(self) -> Path:
        """The dataset root: the user's ``root``, else the cached synthetic default."""
        return self.root if self.root is not None else self.synthetic_root()

    def ensure_synthetic(self) -> None:
        """With ``root=None``, generate the synthetic default once (atomically) and reuse it."""
        if self.root is None:
            ensure_dataset(self.synthetic_root(), self.write_synthetic, self.synthetic_what)

    def _loader(self, dataset: Optional[Dataset], split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(
                f"{type(self).__name__}: no {split} set; call setup() first (Lightning does this for you)"
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            # the GPU configs ask for pinned batches; a machine without CUDA has nothing to pin for
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            drop_last=False,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
