"""fastMRI single-coil knee: ``FastMRIDataModule`` over fastmri's ``SliceDataset``.

Works around fastmri 0.3's rough edges: its ``SliceDataset`` opens every entry of the folder
(crashing on stray non-HDF5 files), writes ``dataset_cache.pkl`` into the working directory, and
its ``sample_rate`` shuffles slices with the global RNG (a different subset on every DDP rank).
Here stray entries are skipped with one logged warning (count and names), the metadata cache
lives in the data directory, subsampling is by volume and seeded, and every file is checked for
the keys, shapes and dtypes the transform needs and a usable ``max`` attribute, with errors naming
the file (broken links and file names that are not UTF-8 included); string attributes stored as
bytes are decoded. Each slice's k-space is checked when it is loaded (see ``MriSliceTransform``).
"""

from __future__ import annotations

import xml.etree.ElementTree as etree
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
from fastmri.data import SliceDataset

from equinet.data.base import ReconDataModule
from equinet.data.common import (
    DataFormatError,
    broken_link_error,
    check_file_name,
    check_max_value,
    data_dir,
    describe_paths,
    is_broken_link,
    log,
)
from equinet.data.mri import MriSliceTransform, make_mask_func
from equinet.data.synthetic import KNEE_ACQUISITIONS, KNEE_DATA_VERSION, write_knee_dataset

# fastMRI knee acquisitions -> the group names of the APS-U paper's Table 1
ACQUISITION_GROUPS = {"CORPD_FBK": "PD", "CORPDFS_FBK": "PDFS"}


class CheckedSliceDataset(SliceDataset):
    """fastmri's ``SliceDataset`` that skips stray entries (counted) and validates each file."""

    def __init__(self, root: Path, challenge: str, transform, crop_size: int, **kwargs) -> None:
        self._skipped: List[str] = []
        self._crop_size = crop_size
        self._challenge = challenge
        self._recons_key = "reconstruction_esc" if challenge == "singlecoil" else "reconstruction_rss"
        super().__init__(root=root, challenge=challenge, transform=transform, **kwargs)
        if self._skipped:
            log.warning(
                "skipped %d entries in %s that are not .h5 files: %s",
                len(self._skipped),
                root,
                describe_paths(self._skipped),
            )

    @property
    def skipped(self) -> List[str]:
        return list(self._skipped)

    def _retrieve_metadata(self, fname):
        fname = Path(fname)
        if fname.suffix == ".h5" and not fname.name.startswith("."):
            if is_broken_link(fname):
                raise broken_link_error(fname)
            check_file_name(fname)
        if not fname.is_file() or fname.suffix != ".h5" or fname.name.startswith("."):
            self._skipped.append(fname.name + (" (broken symbolic link)" if is_broken_link(fname) else ""))
            return {}, 0
        try:
            handle = h5py.File(fname, "r")
        except OSError as err:
            raise DataFormatError(
                f"{fname}: cannot be read as HDF5 ({err}); the file is truncated or corrupt - re-download or remove it"
            ) from None
        with handle as hf:
            for key in ("kspace", "ismrmrd_header", self._recons_key):
                if key not in hf:
                    hint = (
                        " (the fastMRI challenge test set has no targets; use test_split='val')"
                        if key == self._recons_key
                        else ""
                    )
                    raise DataFormatError(
                        f"{fname}: missing dataset {key!r}{hint}; found keys {sorted(hf.keys())}"
                    )
            for key in ("kspace", self._recons_key):
                if not isinstance(hf[key], h5py.Dataset):
                    raise DataFormatError(
                        f"{fname}: {key!r} is an HDF5 {type(hf[key]).__name__.lower()}, not a dataset; "
                        f"fastMRI files hold {key!r} as an array of slices"
                    )
            kspace, target = hf["kspace"], hf[self._recons_key]
            expected_ndim = 3 if self._challenge == "singlecoil" else 4
            if kspace.ndim != expected_ndim or kspace.dtype.kind != "c":
                raise DataFormatError(
                    f"{fname}: 'kspace' must be complex with {expected_ndim} dims (slices, rows, cols) "
                    f"for {self._challenge}, got {kspace.dtype} {kspace.shape}"
                )
            if target.ndim != 3 or target.dtype.kind != "f" or target.shape[0] != kspace.shape[0]:
                raise DataFormatError(
                    f"{fname}: {self._recons_key!r} must be float (slices, H, W) with as many slices as kspace "
                    f"{kspace.shape[0]}, got {target.dtype} {target.shape}"
                )
            if min(target.shape[1:]) < self._crop_size:
                raise DataFormatError(
                    f"{fname}: {self._recons_key!r} is {target.shape[1]}x{target.shape[2]}, smaller than "
                    f"crop_size={self._crop_size}; use crop_size <= {min(target.shape[1:])}"
                )
            if "max" not in hf.attrs:
                raise DataFormatError(f"{fname}: missing attribute 'max' (data range used for PSNR/SSIM)")
            check_max_value(hf.attrs["max"], str(fname))
        try:
            metadata, num_slices = super()._retrieve_metadata(fname)
        except (RuntimeError, etree.ParseError, ValueError) as err:
            raise DataFormatError(
                f"{fname}: cannot parse 'ismrmrd_header' ({err}); fastMRI needs encodedSpace/reconSpace matrixSize "
                "and encodingLimits/kspace_encoding_step_1 in the ISMRMRD namespace"
            ) from None
        return {key: decoded(value) for key, value in metadata.items()}, num_slices


def decoded(value):
    """An HDF5 string attribute as ``str`` whether it was stored as text or as bytes."""
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    return value


class FastMRIDataModule(ReconDataModule):
    """fastMRI knee (single-coil) slices: input = zero-filled recon of masked k-space, target =
    ``reconstruction_esc``, both centre-cropped and normalised with the input's mean/std.

    Args:
        root: folder holding ``singlecoil_train/``, ``singlecoil_val/`` (and optionally
            ``singlecoil_test/``) with fastMRI ``.h5`` files. Required unless ``synthetic``.
        challenge: ``"singlecoil"`` (the only one supported).
        mask_type: fastMRI mask (``random``, ``equispaced``, ``equispaced_fraction``, ``magic``,
            ``magic_fraction``).
        center_fractions: fraction of fully sampled central k-space columns (one per acceleration).
        accelerations: undersampling factors; one (fraction, acceleration) pair is drawn per sample.
        crop_size: side of the centre crop of input and target (at most the 320 of the targets).
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        sample_rate: fraction of *volumes* kept in every split (seeded by ``seed``; ``None`` = all).
        acquisition: keep only ``"CORPD_FBK"`` (PD) or ``"CORPDFS_FBK"`` (PDFS) volumes; ``None`` = both.
        test_split: ``"test"`` (``singlecoil_test/``, needs targets), ``"val"``, or ``"auto"``
            (test if the folder exists, else val).
        seed: seed of the volume subsampling.
        use_dataset_cache: cache fastmri's per-file metadata in ``data_dir`` (faster restarts).
        pin_memory: DataLoader ``pin_memory``.
        data_dir: where synthetic data and caches go; default ``$EQUINET_DATA_DIR`` or the user
            cache folder (``~/.cache/equinet`` on Linux).
        synthetic: instead of a ``root``, generate a small synthetic dataset in the fastMRI format
            once under ``data_dir`` and use it (phantoms; for trying things out, never a fallback).
        synthetic_volumes: training volumes of the synthetic default (val/test get ``max(2, N // 4)``).
        synthetic_slices: slices per synthetic volume.
        synthetic_size: reconstruction size of the synthetic data (320 = real fastMRI; k-space is
            ``2 S x 1.15 S``). Must be >= ``crop_size``.
    """

    def __init__(
        self,
        root: Optional[str] = None,
        challenge: str = "singlecoil",
        mask_type: str = "random",
        center_fractions: Tuple[float, ...] = (0.08,),
        accelerations: Tuple[int, ...] = (4,),
        crop_size: int = 320,
        batch_size: int = 1,
        num_workers: int = 0,
        sample_rate: Optional[float] = None,
        acquisition: Optional[str] = None,
        test_split: str = "auto",
        seed: int = 0,
        use_dataset_cache: bool = False,
        pin_memory: bool = False,
        data_dir: Optional[str] = None,
        synthetic: bool = False,
        synthetic_volumes: int = 8,
        synthetic_slices: int = 8,
        synthetic_size: int = 320,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if challenge != "singlecoil":
            raise ValueError(
                f"challenge={challenge!r} is not supported; FastMRIDataModule reads single-coil data only"
            )
        if acquisition is not None and acquisition not in KNEE_ACQUISITIONS:
            raise ValueError(f"acquisition must be None or one of {KNEE_ACQUISITIONS}, got {acquisition!r}")
        if sample_rate is not None and not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if test_split not in ("auto", "test", "val"):
            raise ValueError(f"test_split must be 'auto', 'test' or 'val', got {test_split!r}")
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if synthetic and synthetic_size < crop_size:
            raise ValueError(f"crop_size={crop_size} is larger than the synthetic images (synthetic_size="
                             f"{synthetic_size}); use crop_size <= {synthetic_size} or synthetic_size >= {crop_size}")
        self.mask_func = make_mask_func(mask_type, center_fractions, accelerations)
        self.save_hyperparameters()
        self.root = self.check_source(root, synthetic)
        self.challenge = challenge
        self.crop_size = crop_size
        self.sample_rate = sample_rate
        self.acquisition = acquisition
        self.test_split = test_split
        self.seed = seed
        self.use_dataset_cache = use_dataset_cache
        self.data_dir = data_dir
        self.synthetic = dict(num_volumes=synthetic_volumes, num_slices=synthetic_slices, size=synthetic_size)

    # -- data location -------------------------------------------------------------------------
    synthetic_kind = "knee"
    synthetic_what = "fastMRI knee"
    root_holds = "singlecoil_train/ and singlecoil_val/ with fastMRI .h5 files"

    def synthetic_label(self) -> str:
        s = self.synthetic
        return f"fastmri-knee-{KNEE_DATA_VERSION}-s{s['size']}-{s['num_volumes']}x{s['num_slices']}"

    def write_synthetic(self, out: Path) -> None:
        write_knee_dataset(out, **self.synthetic)

    def prepare_data(self) -> None:
        """Generate the synthetic default once (Lightning calls this on one process only)."""
        self.ensure_synthetic()

    # -- datasets ------------------------------------------------------------------------------
    def split_folder(self, split: str) -> Path:
        root = self.resolved_root()
        if split == "test":
            if self.test_split == "val" or (
                self.test_split == "auto" and not (root / f"{self.challenge}_test").is_dir()
            ):
                split = "val"
        return root / f"{self.challenge}_{split}"

    def make_dataset(self, split: str) -> CheckedSliceDataset:
        """The checked, filtered, subsampled ``SliceDataset`` of one split."""
        root = self.resolved_root()
        if not root.is_dir():
            raise DataFormatError(
                f"fastMRI root {root} does not exist; it should hold {self.challenge}_train/ and {self.challenge}_val/"
            )
        folder = self.split_folder(split)
        if not folder.is_dir():
            raise DataFormatError(
                f"{folder} does not exist; a fastMRI root holds {self.challenge}_train/, {self.challenge}_val/ (and optionally {self.challenge}_test/)"
            )
        transform = MriSliceTransform(self.mask_func, self.crop_size, deterministic=split != "train")
        cache_file = data_dir(self.data_dir) / "fastmri_dataset_cache.pkl"
        if self.use_dataset_cache:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
        dataset = CheckedSliceDataset(
            folder,
            self.challenge,
            transform,
            self.crop_size,
            use_dataset_cache=self.use_dataset_cache,
            dataset_cache_file=cache_file,
        )
        if not dataset.raw_samples:
            raise DataFormatError(
                f"{folder} holds no fastMRI .h5 volumes"
                + (f" (skipped: {describe_paths(dataset.skipped)})" if dataset.skipped else "")
            )
        samples = dataset.raw_samples
        if self.acquisition is not None:
            found = Counter(str(s.metadata.get("acquisition", "(none)")) for s in samples)
            samples = [s for s in samples if s.metadata.get("acquisition") == self.acquisition]
            if not samples:
                raise DataFormatError(
                    f"{folder}: no volume has acquisition {self.acquisition!r}; the files' 'acquisition' "
                    f"attributes are (slices): {dict(found)}"
                )
        if self.sample_rate is not None and self.sample_rate < 1:
            volumes = sorted({s.fname.name for s in samples})
            keep_count = max(1, round(len(volumes) * self.sample_rate))
            rng = np.random.default_rng(self.seed)
            keep = set(rng.choice(volumes, size=keep_count, replace=False).tolist())
            samples = [s for s in samples if s.fname.name in keep]
        dataset.raw_samples = samples
        log.info(
            "fastMRI %s: %d slices from %d volumes in %s",
            split,
            len(samples),
            len({s.fname for s in samples}),
            folder,
        )
        return dataset

    def volume_groups(self, stage: str) -> Dict[str, str]:
        """``{volume file name: "PD" | "PDFS"}`` of the ``stage``'s split, from each file's
        ``acquisition`` attribute (``CORPD_FBK`` / ``CORPDFS_FBK``), for the per-acquisition
        metrics of the APS-U paper's Table 1; volumes with another acquisition are left out."""
        dataset = {"val": self.val_set, "validate": self.val_set, "test": self.test_set}.get(stage)
        if dataset is None:
            return {}
        return {s.fname.name: ACQUISITION_GROUPS[s.metadata.get("acquisition")] for s in dataset.raw_samples
                if s.metadata.get("acquisition") in ACQUISITION_GROUPS}

    def setup(self, stage: Optional[str] = None) -> None:
        if self.root is None:
            self.prepare_data()
        if stage in (None, "fit"):
            self.train_set = self.make_dataset("train")
        if stage in (None, "fit", "validate"):
            self.val_set = self.make_dataset("val")
        if stage in (None, "test", "predict"):
            self.test_set = self.make_dataset("test")
