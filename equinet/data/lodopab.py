"""LoDoPaB-CT: ``LoDoPaBDataModule`` over ``{ground_truth,observation}_{part}_NNN.hdf5`` files.

Layout (Leuschner et al., Sci. Data 2021): key ``data``, 128 samples per file, the last file of
each part zero-padded; the true counts are 35820 / 3522 / 3553 (train / validation / test). File
``k`` of a part therefore holds ``clamp(total - 128 k, 0, 128)`` real samples: padding rows are
never indexed. Synthetic datasets written by :mod:`equinet.data.synthetic` state their totals and
rows per file in ``equinet_lodopab.json`` and go through the same rule. The geometry is derived
from the file shapes (362^2 images, 1000 x 513 sinograms for the real data).

Input = FBP (Hann) of the observation, computed once per observation file and cached next to the
data (``<root>/fbp_cache/...``; under the data directory if the root is read-only), resumable
and written atomically, with a progress bar and a per-image time / backend report.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from equinet.data import ct
from equinet.data.base import ReconDataModule
from equinet.data.common import (
    DataFormatError,
    center_crop_2d,
    check_finite,
    check_finite_rows,
    data_dir,
    describe_paths,
    log,
    make_sample,
    normalize_pair,
    stable_hash,
)
from equinet.data.fbp_cache import CacheReport, build_cached_stack
from equinet.data.synthetic import LODOPAB_MANIFEST, write_lodopab_dataset
from equinet.data.types import ReconSample

LODOPAB_NUM_SAMPLES = {"train": 35820, "validation": 3522, "test": 3553}
LODOPAB_SAMPLES_PER_FILE = 128
SPLIT_TO_PART = {"train": "train", "val": "validation", "test": "test"}
FILE_PATTERN = re.compile(r"^(ground_truth|observation)_(train|validation|test)_(\d{3})\.hdf5$")
CACHE_FOLDER = "fbp_cache"


def valid_rows(total: int, samples_per_file: int, file_index: int) -> int:
    """Real (non-padding) rows in file ``file_index`` of a part with ``total`` samples."""
    return int(min(samples_per_file, max(0, total - samples_per_file * file_index)))


@dataclass
class LoDoPaBFile:
    """One ground-truth/observation file pair and how many of its rows are real samples."""

    part: str
    index: int
    ground_truth: Path
    observation: Path
    num_valid: int


@dataclass
class LoDoPaBLayout:
    """What a LoDoPaB root holds: the file pairs per part and the geometry of the data."""

    root: Path
    files: Dict[str, List[LoDoPaBFile]]
    geometry: ct.ParallelBeamGeometry
    samples_per_file: int
    totals: Dict[str, int]
    synthetic: bool


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataFormatError(
            f"{path}: cannot be read as HDF5 ({err}); the file is truncated or corrupt - re-download or remove it"
        ) from None


def _dataset(handle: h5py.File, path: Path) -> h5py.Dataset:
    if "data" not in handle:
        raise DataFormatError(
            f"{path}: missing dataset 'data' (LoDoPaB files store their samples under 'data'); found keys {sorted(handle.keys())}"
        )
    data = handle["data"]
    if data.ndim != 3 or data.dtype.kind != "f":
        raise DataFormatError(
            f"{path}: 'data' must be a float (samples, H, W) array, got {data.dtype} {data.shape}"
        )
    return data


def scan_lodopab(root: Path) -> LoDoPaBLayout:
    """Find, pair and check the files of a LoDoPaB root (headers only; cheap)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(
            f"LoDoPaB root {root} does not exist; it should hold ground_truth_{{train,validation,test}}_NNN.hdf5 and observation_..._NNN.hdf5"
        )
    manifest_path = root / LODOPAB_MANIFEST
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text())
            totals = {part: int(manifest["num_samples"][part]) for part in LODOPAB_NUM_SAMPLES}
            samples_per_file = int(manifest["samples_per_file"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataFormatError(
                f"{manifest_path}: unreadable manifest ({err!r}); it needs samples_per_file and num_samples per part"
            ) from None
        synthetic = True
    else:
        totals, samples_per_file, synthetic = dict(LODOPAB_NUM_SAMPLES), LODOPAB_SAMPLES_PER_FILE, False
    found: Dict[Tuple[str, str], Dict[int, Path]] = {}
    stray = []
    for entry in sorted(root.iterdir()):
        match = FILE_PATTERN.match(entry.name)
        if match and entry.is_file():
            kind, part, index = match.groups()
            found.setdefault((kind, part), {})[int(index)] = entry
        elif entry.name not in (LODOPAB_MANIFEST, CACHE_FOLDER) and not entry.name.startswith("."):
            stray.append(entry.name)
    if stray:
        log.warning(
            "skipped %d entries in %s that are not LoDoPaB files: %s", len(stray), root, describe_paths(stray)
        )
    if not found:
        raise DataFormatError(
            f"{root} holds no LoDoPaB files (ground_truth_<part>_NNN.hdf5 / observation_<part>_NNN.hdf5)"
        )
    files: Dict[str, List[LoDoPaBFile]] = {part: [] for part in LODOPAB_NUM_SAMPLES}
    shapes = None
    for part in LODOPAB_NUM_SAMPLES:
        truths = found.get(("ground_truth", part), {})
        observations = found.get(("observation", part), {})
        for index in sorted(set(observations) - set(truths)):
            log.warning("%s has no ground_truth_%s_%03d.hdf5; ignored", observations[index], part, index)
        beyond = []
        for index, gt_path in sorted(truths.items()):
            if index not in observations:
                raise DataFormatError(
                    f"{gt_path}: its observation file observation_{part}_{index:03d}.hdf5 is missing from {root}"
                )
            obs_path = observations[index]
            with _open(gt_path) as g, _open(obs_path) as o:
                gt, obs = _dataset(g, gt_path), _dataset(o, obs_path)
                if gt.shape[1] != gt.shape[2]:
                    raise DataFormatError(
                        f"{gt_path}: ground-truth images must be square, got shape {gt.shape}"
                    )
                if gt.shape[0] != obs.shape[0]:
                    raise DataFormatError(
                        f"{gt_path} has {gt.shape[0]} rows but {obs_path} has {obs.shape[0]}; the pair must match"
                    )
                if gt.shape[0] != samples_per_file:
                    raise DataFormatError(
                        f"{gt_path}: {gt.shape[0]} rows, expected {samples_per_file} per file (the last file is zero-padded "
                        "to full length); the file is truncated or not a LoDoPaB file"
                    )
                file_shapes = (gt.shape[1:], obs.shape[1:])
            if shapes is None:
                shapes = file_shapes
            elif file_shapes != shapes:
                raise DataFormatError(
                    f"{gt_path}/{obs_path}: shapes {file_shapes} differ from the other files' {shapes}"
                )
            num_valid = valid_rows(totals[part], samples_per_file, index)
            if num_valid == 0:
                beyond.append(gt_path.name)
                continue
            files[part].append(LoDoPaBFile(part, index, gt_path, obs_path, num_valid))
        if beyond:
            log.warning(
                "ignored %d %s files beyond the %d samples of that part: %s",
                len(beyond),
                part,
                totals[part],
                describe_paths(beyond),
            )
        expected_files = math.ceil(totals[part] / samples_per_file)
        if files[part] and len(files[part]) < expected_files:
            log.info("LoDoPaB %s: using %d of %d files", part, len(files[part]), expected_files)
    assert shapes is not None
    geometry = ct.ParallelBeamGeometry.from_shapes(shapes[0], shapes[1])
    return LoDoPaBLayout(root, files, geometry, samples_per_file, totals, synthetic)


class _HandleCache:
    """Per-process open HDF5 handles (h5py handles must not cross a fork)."""

    def __init__(self) -> None:
        self._pid = -1
        self._handles: Dict[Path, h5py.File] = {}

    def get(self, path: Path) -> h5py.File:
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = _open(path)
        return handle

    def __getstate__(self):
        return {}

    def __setstate__(self, state) -> None:
        self.__init__()


class LoDoPaBDataset(Dataset):
    """Samples of one part: ``(FBP input, ground truth)`` pairs; padding rows are not indexed.

    ``fname`` is ``"<ground-truth file stem>:<row>"`` (each image its own volume) and ``slice_num``
    is 0; ``max_value`` is the ground truth's ``max - min`` (its data range, as LoDoPaB's PSNR).
    """

    def __init__(
        self, files: List[LoDoPaBFile], fbp_files: List[Path], crop_size: int, normalize: bool = True
    ) -> None:
        if len(files) != len(fbp_files):
            raise ValueError("one FBP cache file per LoDoPaB file is needed")
        self.files, self.fbp_files = files, fbp_files
        self.crop_size, self.normalize = crop_size, normalize
        self.offsets = np.cumsum([0] + [f.num_valid for f in files]).tolist()
        self._handles = _HandleCache()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> Tuple[int, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - self.offsets[k]

    def __getitem__(self, index: int) -> ReconSample:
        k, row = self.locate(index)
        info = self.files[k]
        truth = np.asarray(self._handles.get(info.ground_truth)["data"][row], dtype=np.float32)
        check_finite(truth, f"{info.ground_truth} row {row}")
        recon = np.asarray(self._handles.get(self.fbp_files[k])["data"][row], dtype=np.float32)
        target = torch.from_numpy(truth)
        data_range = float(truth.max() - truth.min())
        image = torch.from_numpy(recon)
        target = center_crop_2d(target, self.crop_size, str(info.ground_truth))
        image = center_crop_2d(image, self.crop_size, str(self.fbp_files[k]))
        image, target, mean, std = normalize_pair(image, target, self.normalize)
        return make_sample(
            image,
            target,
            mean,
            std,
            data_range if data_range > 0 else 1.0,
            f"{info.ground_truth.stem}:{row}",
            0,
        )


class LoDoPaBDataModule(ReconDataModule):
    """LoDoPaB-CT: input = FBP (Hann) of the post-log observation, target = ground truth in [0, 1],
    both centre-cropped and normalised with the input's mean/std (``normalize=True``).

    Args:
        root: folder with ``ground_truth_{train,validation,test}_NNN.hdf5`` and
            ``observation_..._NNN.hdf5``. Required unless ``synthetic``.
        crop_size: side of the centre crop (352 of LoDoPaB's 362, divisible by 32).
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        fbp: FBP backend, ``auto`` (astra-toolbox if it has CUDA, else torch), ``astra``,
            ``torch`` or ``skimage``.
        fbp_filter: ``hann`` (default) or ``ramp``.
        fbp_frequency_scaling: Hann cut-off as a fraction of Nyquist (1.0 = full band).
        fbp_device: device of the torch FBP backend; ``None`` = CUDA if available, else CPU.
        fbp_cache_dir: where the FBP cache goes; ``None`` = ``<root>/fbp_cache`` (or, if the root
            is read-only, ``<data_dir>/fbp_cache/<hash of root>``).
        normalize: instance-normalise (fastMRI style); ``False`` gives mean 0, std 1.
        progress: show a tqdm bar while building the FBP cache.
        pin_memory: DataLoader ``pin_memory``.
        data_dir: where synthetic data and caches go; default ``$EQUINET_DATA_DIR`` or ``~/.cache/equinet``.
        synthetic: instead of a ``root``, generate a small synthetic dataset in the LoDoPaB format
            once under ``data_dir`` and use it (phantoms; for trying things out, never a fallback).
        synthetic_num: training samples of the synthetic default (validation/test get ``max(1, N // 4)``).
        synthetic_size: image size of the synthetic data (362 = LoDoPaB's geometry: 1000 angles x
            513 bins; smaller sizes scale detectors and angles in proportion). Must be >= ``crop_size``.
        synthetic_samples_per_file: rows per synthetic file (LoDoPaB: 128; last file padded).
    """

    def __init__(
        self,
        root: Optional[str] = None,
        crop_size: int = 352,
        batch_size: int = 1,
        num_workers: int = 0,
        fbp: str = "auto",
        fbp_filter: str = "hann",
        fbp_frequency_scaling: float = 1.0,
        fbp_device: Optional[str] = None,
        fbp_cache_dir: Optional[str] = None,
        normalize: bool = True,
        progress: bool = True,
        pin_memory: bool = False,
        data_dir: Optional[str] = None,
        synthetic: bool = False,
        synthetic_num: int = 32,
        synthetic_size: int = ct.LODOPAB_IMAGE_SIZE,
        synthetic_samples_per_file: int = 32,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if fbp not in ct.FBP_BACKENDS:
            raise ValueError(f"fbp must be one of {ct.FBP_BACKENDS}, got {fbp!r}")
        if fbp_filter not in ct.FBP_FILTERS:
            raise ValueError(f"fbp_filter must be one of {ct.FBP_FILTERS}, got {fbp_filter!r}")
        if root is None and synthetic_size < crop_size:
            raise ValueError(f"crop_size={crop_size} is larger than the synthetic images (synthetic_size="
                             f"{synthetic_size}); use crop_size <= {synthetic_size} or synthetic_size >= {crop_size}")
        self.save_hyperparameters()
        self.root = self.check_source(root, synthetic)
        self.crop_size = crop_size
        self.fbp_backend = fbp
        self.fbp_filter = fbp_filter
        self.fbp_frequency_scaling = fbp_frequency_scaling
        self.fbp_device = fbp_device
        self.fbp_cache_dir = Path(fbp_cache_dir).expanduser() if fbp_cache_dir else None
        self.normalize = normalize
        self.progress = progress
        self.data_dir = data_dir
        self.synthetic = dict(
            num_train=synthetic_num, size=synthetic_size, samples_per_file=synthetic_samples_per_file
        )
        self.layout: Optional[LoDoPaBLayout] = None
        self.cache_report: Optional[CacheReport] = None

    # -- data location -------------------------------------------------------------------------
    synthetic_kind = "lodopab"
    synthetic_what = "LoDoPaB-CT"
    root_holds = "ground_truth_<part>_NNN.hdf5 and observation_<part>_NNN.hdf5 files"

    def synthetic_label(self) -> str:
        s = self.synthetic
        return f"lodopab-s{s['size']}-n{s['num_train']}"

    def write_synthetic(self, out: Path) -> None:
        write_lodopab_dataset(out, **self.synthetic)

    def cache_folder(self, backend: str) -> Path:
        """``<root>/fbp_cache/<filter>-<backend>`` (or under the data directory if not writable)."""
        name = f"{self.fbp_filter}-f{self.fbp_frequency_scaling:g}-{backend}"
        if self.fbp_cache_dir is not None:
            return self.fbp_cache_dir / name
        root = self.resolved_root()
        preferred = root / CACHE_FOLDER
        if os.access(preferred if preferred.is_dir() else root, os.W_OK):
            return preferred / name
        fallback = data_dir(self.data_dir) / CACHE_FOLDER / stable_hash(str(root.resolve())) / name
        log.info("%s is not writable; caching FBPs in %s", root, fallback)
        return fallback

    def _torch_device(self) -> torch.device:
        if self.fbp_device is not None:
            return torch.device(self.fbp_device)
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # -- preparation ---------------------------------------------------------------------------
    def _parts_for(self, stage: Optional[str]) -> Optional[List[str]]:
        """LoDoPaB parts a stage reads (``None``: all), so ``trainer.test`` does not FBP the 35820
        training samples first."""
        if stage is None and self.trainer is not None and self.trainer.state.fn is not None:
            stage = str(getattr(self.trainer.state.fn, "value", self.trainer.state.fn))
        parts = {
            "fit": ["train", "validation"],
            "validate": ["validation"],
            "test": ["test"],
            "predict": ["test"],
        }
        return parts.get(stage) if stage else None

    def prepare_data(self) -> None:
        """Generate the synthetic default (if ``root=None``) and build the FBP cache of the parts
        the running Trainer stage needs (all parts when used without a Trainer), once."""
        self.ensure_synthetic()
        layout = scan_lodopab(self.resolved_root())
        parts = self._parts_for(None)
        self.build_fbp_cache([p for p in parts if layout.files[p]] if parts else None, layout=layout)

    def build_fbp_cache(
        self, parts: Optional[List[str]] = None, layout: Optional[LoDoPaBLayout] = None
    ) -> CacheReport:
        """FBP every real observation row into the cache (resumable); report time and backend."""
        layout = self.layout = layout or scan_lodopab(self.resolved_root())
        backend = ct.resolve_fbp_backend(self.fbp_backend)
        if parts is None:
            parts = [p for p in LODOPAB_NUM_SAMPLES if layout.files[p]]
        files = [f for p in parts for f in layout.files[p]]
        folder = self.cache_folder(backend)
        geometry = layout.geometry
        device = self._torch_device()
        chunk = 8 if backend == "torch" else 1
        report = CacheReport(backend=backend)
        total = sum(f.num_valid for f in files)
        bar = tqdm(
            total=total, desc=f"FBP cache ({backend})", unit="img", disable=not self.progress, leave=False
        )
        try:
            for info in files:
                stat = info.observation.stat()
                key = {
                    "source": info.observation.name,
                    "source_size": int(stat.st_size),
                    "source_mtime_ns": int(stat.st_mtime_ns),
                    "num_rows": info.num_valid,
                    "filter": self.fbp_filter,
                    "frequency_scaling": float(self.fbp_frequency_scaling),
                    "geometry": geometry.describe(),
                    "fbp_backend": backend,
                }
                with _open(info.observation) as handle:
                    observations = _dataset(handle, info.observation)

                    def compute(i: int, j: int) -> np.ndarray:
                        sino = np.asarray(observations[i:j], dtype=np.float32)
                        check_finite_rows(sino, str(info.observation), first_row=i)
                        sino_t = torch.from_numpy(sino)
                        if backend == "torch":
                            sino_t = sino_t.to(device)
                        recon = ct.fbp(sino_t, geometry, backend, self.fbp_filter, self.fbp_frequency_scaling)
                        return recon.cpu().numpy()

                    part_report = build_cached_stack(
                        folder / f"{info.observation.stem}.hdf5",
                        info.num_valid,
                        (geometry.image_size, geometry.image_size),
                        compute,
                        key,
                        backend,
                        chunk=chunk,
                        progress=bar.update,
                    )
                report.merge(part_report)
                if report.computed:
                    bar.set_postfix_str(f"{report.per_image_ms:.0f} ms/img")
        finally:
            bar.close()
            ct.release_fbp_memory()
        log.info("%s, %s", report.summary(), folder)
        self.cache_report = report
        return report

    def setup(self, stage: Optional[str] = None) -> None:
        self.ensure_synthetic()
        layout = scan_lodopab(self.resolved_root())
        size = layout.geometry.image_size
        if self.crop_size > size:
            raise DataFormatError(
                f"crop_size={self.crop_size} exceeds the {size}x{size} images in {layout.root}; use crop_size <= {size}"
            )
        parts = self._parts_for(stage)
        # reuses what prepare_data built (rank 0 under DDP); a missing part is an error below
        self.build_fbp_cache([p for p in parts if layout.files[p]] if parts else None, layout=layout)
        if stage in (None, "fit"):
            self.train_set = self.make_dataset("train")
        if stage in (None, "fit", "validate"):
            self.val_set = self.make_dataset("val")
        if stage in (None, "test", "predict"):
            self.test_set = self.make_dataset("test")

    def make_dataset(self, split: str) -> LoDoPaBDataset:
        assert self.layout is not None and self.cache_report is not None
        part = SPLIT_TO_PART[split]
        files = self.layout.files[part]
        if not files:
            raise DataFormatError(
                f"{self.layout.root}: no ground_truth_{part}_NNN.hdf5 files for the {split} split"
            )
        folder = self.cache_folder(self.cache_report.backend)
        dataset = LoDoPaBDataset(
            files, [folder / f"{f.observation.stem}.hdf5" for f in files], self.crop_size, self.normalize
        )
        log.info("LoDoPaB %s: %d samples from %d files", split, len(dataset), len(files))
        return dataset
