"""LoDoPaB-CT: ``LoDoPaBDataModule`` over ``{ground_truth,observation}_{part}_NNN.hdf5`` files.

Layout (Leuschner et al., Sci. Data 2021): key ``data``, 128 samples per file, the last file of
each part zero-padded; the true counts are 35820 / 3522 / 3553 (train / validation / test). File
``k`` of a part therefore holds ``clamp(total - 128 k, 0, 128)`` real samples: padding rows are
never indexed. A row whose ground truth or observation is all zero is never a sample either,
whatever the counts say: it is skipped with a counted warning.

Geometry: real LoDoPaB has 362 x 362 images and 1000 x 513 sinograms (angles x detector bins).
Anything else must be declared, in the manifest ``equinet_lodopab.json`` (written by
:mod:`equinet.data.synthetic`, or by hand) or with the ``geometry`` argument, and every file
must match the declaration; nothing is inferred from the file shapes. The manifest may also state
the sample counts and rows per file of a dataset that is not the published one.

Each file pair is checked once (every row finite, ground truth in [0, 1], all-zero rows found,
a checksum of the observation rows taken); the result is remembered beside the FBP cache and
redone only when a file changes.

Input = FBP (Hann) of the observation, computed once per observation file and cached next to the
data (``<root>/fbp_cache/...``; under the data directory if the root is read-only), keyed on the
observation rows' checksum, checked before reuse, resumable and written atomically, with a
progress bar and a per-image time / backend report.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset

from equinet.data import ct
from equinet.data.base import ReconDataModule
from equinet.data.common import (
    DataFormatError,
    broken_link_error,
    center_crop_2d,
    check_finite,
    check_finite_rows,
    data_dir,
    describe_paths,
    is_broken_link,
    log,
    make_sample,
    normalize_pair,
    shown,
    stable_hash,
)
from equinet.data.fbp_cache import (
    CACHE_CHANGED,
    CacheReport,
    FBPStack,
    build_fbp_stacks,
    fbp_device,
    remembered,
)
from equinet.data.synthetic import LODOPAB_MANIFEST, write_lodopab_dataset
from equinet.data.types import ReconSample

LODOPAB_NUM_SAMPLES = {"train": 35820, "validation": 3522, "test": 3553}
LODOPAB_SAMPLES_PER_FILE = 128
SPLIT_TO_PART = {"train": "train", "val": "validation", "test": "test"}
FILE_PATTERN = re.compile(r"^(ground_truth|observation)_(train|validation|test)_(\d{3})\.hdf5$")
CACHE_FOLDER = "fbp_cache"
CHECKED_FOLDER = "checked"  # inside the cache root: what each file pair's one-time check found
GROUND_TRUTH_TOLERANCE = 1e-6  # ground truth must lie in [-tol, 1 + tol]
GEOMETRY_HINT = (
    "for data in another geometry declare it: LoDoPaBDataModule(geometry=(image_size, num_angles, "
    f'num_detectors)), or a "geometry" entry in {LODOPAB_MANIFEST}'
)


def valid_rows(total: int, samples_per_file: int, file_index: int) -> int:
    """Real (non-padding) rows in file ``file_index`` of a part with ``total`` samples."""
    return int(min(samples_per_file, max(0, total - samples_per_file * file_index)))


@dataclass
class LoDoPaBFile:
    """One ground-truth/observation file pair: ``num_valid`` rows the sample counts allow; set by
    the content check: ``rows``, those of them served (all-zero rows left out), and ``checksum``,
    the SHA-256 of the observation's ``num_valid`` rows (the FBP cache's key)."""

    part: str
    index: int
    ground_truth: Path
    observation: Path
    num_valid: int
    rows: Optional[List[int]] = None
    checksum: Optional[str] = None


@dataclass
class LoDoPaBLayout:
    """What a LoDoPaB root holds: the file pairs per part and the geometry of the data.

    ``synthetic``: the root has a manifest (``equinet_lodopab.json``) stating counts/geometry.
    """

    root: Path
    files: Dict[str, List[LoDoPaBFile]]
    geometry: ct.ParallelBeamGeometry
    samples_per_file: int
    totals: Dict[str, int]
    synthetic: bool


@dataclass
class LoDoPaBManifest:
    """The parts of ``equinet_lodopab.json`` that were given (``None``: not stated)."""

    path: Path
    samples_per_file: Optional[int] = None
    totals: Optional[Dict[str, int]] = None
    geometry: Optional[ct.ParallelBeamGeometry] = None


def _integer(value, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DataFormatError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def read_manifest(path: Path) -> LoDoPaBManifest:
    """Parse and check ``equinet_lodopab.json``: optional ``samples_per_file`` (>= 1),
    ``num_samples`` (``{part: count >= 0}``) and ``geometry`` (``image_size``, ``num_angles``,
    ``num_detectors`` >= 2, optional ``image_half_width``/``detector_half_width`` in metres)."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataFormatError(
            f"{path}: unreadable manifest ({err}); it must be a JSON object with samples_per_file, "
            "num_samples per part and geometry"
        ) from None
    if not isinstance(manifest, dict):
        raise DataFormatError(
            f"{path}: unreadable manifest: expected a JSON object, got {type(manifest).__name__}"
        )
    result = LoDoPaBManifest(path)
    if "samples_per_file" in manifest:
        result.samples_per_file = _integer(manifest["samples_per_file"], f"{path}: samples_per_file", 1)
    if "num_samples" in manifest:
        counts = manifest["num_samples"]
        if not isinstance(counts, dict) or not set(counts) <= set(LODOPAB_NUM_SAMPLES):
            raise DataFormatError(
                f"{path}: num_samples must map parts {sorted(LODOPAB_NUM_SAMPLES)} to sample counts, "
                f"got {counts!r}"
            )
        result.totals = {
            part: _integer(count, f"{path}: num_samples.{part}", 0) for part, count in counts.items()
        }
    if "geometry" in manifest:
        g = manifest["geometry"]
        sizes = ("image_size", "num_angles", "num_detectors")
        if not isinstance(g, dict) or not set(sizes) <= set(g):
            raise DataFormatError(f"{path}: geometry must be an object with {', '.join(sizes)}, got {g!r}")
        kwargs = {name: _integer(g[name], f"{path}: geometry.{name}", 2) for name in sizes}
        for name in ("image_half_width", "detector_half_width"):
            if name in g:
                value = g[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                    raise DataFormatError(
                        f"{path}: geometry.{name} must be a positive number (metres), got {value!r}"
                    )
                kwargs[name] = float(value)
        result.geometry = ct.ParallelBeamGeometry(**kwargs)
    return result


def declared_geometry(
    argument: Optional[ct.ParallelBeamGeometry], manifest: Optional[LoDoPaBManifest]
) -> Tuple[ct.ParallelBeamGeometry, str]:
    """The geometry the files must have and where that comes from: the ``geometry`` argument, the
    manifest (both: they must agree), else LoDoPaB-CT's published one (its source then ends with
    :data:`GEOMETRY_HINT`, how to declare another)."""
    stated = manifest.geometry if manifest is not None else None
    if argument is not None and stated is not None and argument != stated:
        raise DataFormatError(
            f"the geometry argument ({argument.describe()}) contradicts {manifest.path} "
            f"({stated.describe()}); "
            "give one of them, or make them agree"
        )
    if argument is not None:
        return argument, "the geometry argument"
    if stated is not None:
        return stated, f"the geometry declared in {manifest.path}"
    return ct.ParallelBeamGeometry.lodopab(), f"LoDoPaB-CT (no other geometry declared); {GEOMETRY_HINT}"


def _check_shapes(
    gt_path: Path, gt_shape: Sequence[int], obs_path: Path, obs_shape: Sequence[int],
    geometry: ct.ParallelBeamGeometry, source: str,
) -> None:  # fmt: skip
    """File shapes must be the declared geometry's: never reconstruct in a guessed geometry."""
    n = geometry.image_size
    if tuple(gt_shape) != (n, n):
        raise DataFormatError(
            f"{gt_path}: ground-truth images are {gt_shape[0]}x{gt_shape[1]}, expected {n}x{n} from {source}"
        )
    angles, bins = geometry.num_angles, geometry.num_detectors
    if tuple(obs_shape) == (angles, bins):
        return
    if tuple(obs_shape) == (bins, angles):
        raise DataFormatError(
            f"{obs_path}: sinograms are stored transposed, {obs_shape[0]}x{obs_shape[1]} "
            "(detector bins x angles, "
            f"the layout skimage.transform.radon returns); LoDoPaB stores (angles x bins) = {angles}x{bins}: "
            "write data.transpose(0, 2, 1)"
        )
    raise DataFormatError(
        f"{obs_path}: sinograms are {obs_shape[0]}x{obs_shape[1]}, expected {angles}x{bins} "
        "(angles x detector "
        f"bins) for {n}x{n} images from {source}"
    )


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
    if not isinstance(data, h5py.Dataset):
        raise DataFormatError(
            f"{path}: 'data' is an HDF5 {type(data).__name__.lower()}, not a dataset; LoDoPaB files hold a "
            "float (samples, H, W) dataset named 'data'"
        )
    if data.ndim != 3 or data.dtype.kind != "f":
        raise DataFormatError(
            f"{path}: 'data' must be a float (samples, H, W) array, got {data.dtype} {data.shape}"
        )
    return data


def scan_lodopab(root: Path, geometry: Optional[ct.ParallelBeamGeometry] = None) -> LoDoPaBLayout:
    """Find, pair and check the files of a LoDoPaB root against the declared geometry (headers
    only; cheap). ``geometry``: an explicit declaration (see :func:`declared_geometry`)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(
            f"LoDoPaB root {root} does not exist; it should hold ground_truth_{{train,validation,test}}_NNN.hdf5 and observation_..._NNN.hdf5"
        )
    manifest_path = root / LODOPAB_MANIFEST
    manifest = read_manifest(manifest_path) if manifest_path.is_file() else None
    totals = dict(LODOPAB_NUM_SAMPLES)
    samples_per_file = LODOPAB_SAMPLES_PER_FILE
    if manifest is not None:
        totals.update(manifest.totals or {})
        samples_per_file = manifest.samples_per_file or samples_per_file
    geometry, source = declared_geometry(geometry, manifest)
    found: Dict[Tuple[str, str], Dict[int, Path]] = {}
    stray = []
    for entry in sorted(root.iterdir()):
        match = FILE_PATTERN.match(entry.name)
        if match and is_broken_link(entry):
            raise broken_link_error(entry)
        if match and entry.is_file():
            kind, part, index = match.groups()
            found.setdefault((kind, part), {})[int(index)] = entry
        elif entry.name not in (LODOPAB_MANIFEST, CACHE_FOLDER) and not entry.name.startswith("."):
            stray.append(entry.name + (" (broken symbolic link)" if is_broken_link(entry) else ""))
    if stray:
        log.warning(
            "skipped %d entries in %s that are not LoDoPaB files: %s", len(stray), root, describe_paths(stray)
        )
    if not found:
        raise DataFormatError(
            f"{root} holds no LoDoPaB files (ground_truth_<part>_NNN.hdf5 / observation_<part>_NNN.hdf5)"
        )
    files: Dict[str, List[LoDoPaBFile]] = {part: [] for part in LODOPAB_NUM_SAMPLES}
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
                _check_shapes(gt_path, gt.shape[1:], obs_path, obs.shape[1:], geometry, source)
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
    return LoDoPaBLayout(root, files, geometry, samples_per_file, totals, manifest is not None)


def check_pair(info: LoDoPaBFile, chunk: int = 16) -> Dict:
    """Read a file pair once: every row the counts allow must be finite, ground truth in [0, 1];
    returns the all-zero rows of either file and the SHA-256 of the observation rows."""
    zero_rows: List[int] = []
    with _open(info.ground_truth) as g, _open(info.observation) as o:
        truth_data, obs_data = _dataset(g, info.ground_truth), _dataset(o, info.observation)
        digest = hashlib.sha256(repr((info.num_valid, *obs_data.shape[1:])).encode())
        for i in range(0, info.num_valid, chunk):
            j = min(info.num_valid, i + chunk)
            truth = np.asarray(truth_data[i:j], dtype=np.float32)
            check_finite_rows(truth, str(info.ground_truth), first_row=i)
            low, high = truth.min(axis=(1, 2)), truth.max(axis=(1, 2))
            outside = (low < -GROUND_TRUTH_TOLERANCE) | (high > 1 + GROUND_TRUTH_TOLERANCE)
            if outside.any():
                rows = (np.flatnonzero(outside) + i).tolist()
                raise DataFormatError(
                    f"{info.ground_truth} row(s) {rows}: values in [{low.min():.4g}, {high.max():.4g}], "
                    "outside [0, 1]; LoDoPaB ground truth is the attenuation divided by MU_MAX = "
                    f"{ct.MU_MAX} /m, so it lies in [0, 1] (Hounsfield units must be converted: "
                    "mu = mu_water (1 + HU / 1000) / MU_MAX, clipped to [0, 1])"
                )
            observation = np.ascontiguousarray(obs_data[i:j], dtype="<f4")
            check_finite_rows(observation, str(info.observation), first_row=i)
            digest.update(observation.data)
            empty = ~truth.reshape(len(truth), -1).any(axis=1) | ~observation.reshape(len(truth), -1).any(
                axis=1
            )
            zero_rows += (np.flatnonzero(empty) + i).tolist()
    return {"checksum": digest.hexdigest(), "zero_rows": zero_rows}


def _row_ranges(rows: Sequence[int]) -> str:
    """``[3, 4, 5, 9]`` -> ``"3-5, 9"``."""
    spans: List[List[int]] = []
    for r in rows:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


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
    """Samples of one part: ``(FBP input, ground truth)`` pairs; only the checked ``rows`` of each
    file are indexed (no padding, no all-zero rows).

    ``fname`` is ``"<ground-truth file stem>:<row>"`` (each image its own volume) and ``slice_num``
    is 0; ``max_value`` is the ground truth's ``max - min`` (its data range, as LoDoPaB's PSNR).
    Each sample's ground truth and FBP are checked to be finite (:meth:`check`; cheap; the files
    were checked as a whole before, this guards against them changing underneath).
    """

    def __init__(
        self, files: List[LoDoPaBFile], fbp_files: List[Path], crop_size: int, normalize: bool = True
    ) -> None:
        if len(files) != len(fbp_files):
            raise ValueError("one FBP cache file per LoDoPaB file is needed")
        if any(f.rows is None for f in files):
            raise ValueError("the files' contents must be checked first (LoDoPaBDataModule.build_fbp_cache)")
        self.files, self.fbp_files = files, fbp_files
        self.crop_size, self.normalize = crop_size, normalize
        self.offsets = np.cumsum([0] + [len(f.rows) for f in files]).tolist()
        self._handles = _HandleCache()

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> Tuple[int, int]:
        """``(file number, row in that file)`` of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, self.files[k].rows[index - self.offsets[k]]

    def check(self, truth: np.ndarray, recon: np.ndarray, k: int, row: int) -> None:
        """The per-sample checks (cheap, always on): ground truth and FBP finite."""
        check_finite(truth, f"{self.files[k].ground_truth} row {row}")
        check_finite(recon, f"FBP cache {self.fbp_files[k]} row {row}", CACHE_CHANGED)

    def __getitem__(self, index: int) -> ReconSample:
        k, row = self.locate(index)
        info = self.files[k]
        truth = np.asarray(self._handles.get(info.ground_truth)["data"][row], dtype=np.float32)
        recon = np.asarray(self._handles.get(self.fbp_files[k])["data"][row], dtype=np.float32)
        self.check(truth, recon, k, row)
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
        geometry: ``(image_size, num_angles, num_detectors)`` of data that is not in LoDoPaB's
            geometry (362, 1000, 513), with LoDoPaB's physical extents; ``None``: the manifest's
            declaration, else LoDoPaB's. The files must match it.
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
        data_dir: where synthetic data and caches go; default ``$EQUINET_DATA_DIR`` or the user
            cache folder (``~/.cache/equinet`` on Linux).
        synthetic: instead of a ``root``, generate a small synthetic dataset in the LoDoPaB format
            once under ``data_dir`` and use it (phantoms; for trying things out, never a fallback).
        synthetic_num: training samples of the synthetic default (validation/test get ``max(1, N // 4)``).
        synthetic_size: image size of the synthetic data (362 = LoDoPaB's geometry: 1000 angles x
            513 bins; smaller sizes scale detectors and angles in proportion and are declared in
            the synthetic set's manifest). Must be >= ``crop_size``.
        synthetic_samples_per_file: rows per synthetic file (LoDoPaB: 128; last file padded).
    """

    def __init__(
        self,
        root: Optional[str] = None,
        crop_size: int = 352,
        geometry: Optional[Tuple[int, int, int]] = None,
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
        if synthetic and synthetic_size < crop_size:
            raise ValueError(f"crop_size={crop_size} is larger than the synthetic images (synthetic_size="
                             f"{synthetic_size}); use crop_size <= {synthetic_size} or synthetic_size >= {crop_size}")
        if geometry is not None and len(geometry) != 3:
            raise ValueError(f"geometry must be (image_size, num_angles, num_detectors), got {geometry!r}")
        self.save_hyperparameters()
        self.root = self.check_source(root, synthetic)
        self.crop_size = crop_size
        self.geometry = ct.ParallelBeamGeometry(*(int(v) for v in geometry)) if geometry is not None else None
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
        self._ready_parts: set = set()  # parts checked and cached by this process (setup reuses them)
        self._backend: Optional[str] = None

    # -- data location -------------------------------------------------------------------------
    synthetic_kind = "lodopab"
    synthetic_what = "LoDoPaB-CT"
    root_holds = "ground_truth_<part>_NNN.hdf5 and observation_<part>_NNN.hdf5 files"

    def synthetic_label(self) -> str:
        s = self.synthetic
        return f"lodopab-s{s['size']}-n{s['num_train']}"

    def write_synthetic(self, out: Path) -> None:
        write_lodopab_dataset(out, **self.synthetic, progress=self.progress)

    def cache_root(self) -> Path:
        """``<root>/fbp_cache`` (or under the data directory if the root is not writable)."""
        if self.fbp_cache_dir is not None:
            return self.fbp_cache_dir
        root = self.resolved_root()
        preferred = root / CACHE_FOLDER
        if os.access(preferred if preferred.is_dir() else root, os.W_OK):
            return preferred
        fallback = data_dir(self.data_dir) / CACHE_FOLDER / stable_hash(str(root.resolve()))
        log.info("%s is not writable; caching FBPs in %s", root, fallback)
        return fallback

    def cache_folder(self, backend: str) -> Path:
        """``<cache root>/<filter>-f<scaling>-<backend>``: the FBPs of one setting."""
        return self.cache_root() / f"{self.fbp_filter}-f{self.fbp_frequency_scaling:g}-{backend}"

    def _torch_device(self) -> torch.device:
        return fbp_device(self.fbp_device)

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

    def scan(self) -> LoDoPaBLayout:
        """The root's layout, scanned once per process (headers only)."""
        if self.layout is None:
            self.layout = scan_lodopab(self.resolved_root(), self.geometry)
        return self.layout

    def prepare_data(self) -> None:
        """Generate the synthetic default (if ``root=None``), check the files and build the FBP
        cache of the parts the running Trainer stage needs (all parts when used without a
        Trainer), once."""
        self.ensure_synthetic()
        self.build_fbp_cache(self._parts_for(None))

    def check_contents(self, files: List[LoDoPaBFile], checked: Path) -> None:
        """Check each file pair once (remembered in ``checked``) and set the rows it serves; all-zero
        rows are skipped with one counted warning."""
        skipped = []
        for info in files:
            found = remembered(
                checked / f"{info.ground_truth.stem}.json",
                [info.ground_truth, info.observation],
                lambda: check_pair(info),
                key=info.num_valid,
            )
            zero = set(found["zero_rows"])
            info.rows = [r for r in range(info.num_valid) if r not in zero]
            info.checksum = found["checksum"]
            if zero:
                skipped.append(f"{shown(info.ground_truth.name)} rows {_row_ranges(sorted(zero))}")
        if skipped:
            count = sum(f.num_valid - len(f.rows) for f in files)
            log.warning(
                "skipped %d all-zero rows (ground truth or observation) that the sample counts would have "
                "served; an all-zero row is padding or a failed copy, never a sample: %s",
                count,
                "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more files" if len(skipped) > 5 else ""),
            )

    def build_fbp_cache(
        self,
        parts: Optional[List[str]] = None,
        log_summary: bool = True,
    ) -> CacheReport:
        """Check the files of ``parts`` (default: all present) and FBP every served observation row
        into the cache (resumable, keyed on the rows' checksum); report time and backend."""
        layout = self.scan()
        backend = self._backend = ct.resolve_fbp_backend(self.fbp_backend)
        if parts is None:
            parts = [p for p in LODOPAB_NUM_SAMPLES if layout.files[p]]
        parts = [p for p in parts if layout.files[p]]
        files = [f for p in parts for f in layout.files[p]]
        folder = self.cache_folder(backend)
        self.check_contents(files, folder.parent / CHECKED_FOLDER)
        geometry = layout.geometry
        device = self._torch_device()

        def stacks():
            for info in files:
                if not info.rows:
                    continue
                num_rows = info.rows[-1] + 1  # trailing all-zero rows are not reconstructed
                key = {
                    "source": info.observation.name,
                    "source_sha256": info.checksum,
                    "num_rows": num_rows,
                    "filter": self.fbp_filter,
                    "frequency_scaling": float(self.fbp_frequency_scaling),
                    "geometry": geometry.describe(),
                    "fbp_backend": backend,
                }
                with _open(info.observation) as handle:
                    observations = _dataset(handle, info.observation)

                    def compute(i: int, j: int) -> np.ndarray:
                        sino_t = torch.from_numpy(np.asarray(observations[i:j], dtype=np.float32))
                        if backend == "torch":
                            sino_t = sino_t.to(device)
                        recon = ct.fbp(sino_t, geometry, backend, self.fbp_filter, self.fbp_frequency_scaling)
                        return recon.cpu().numpy()

                    yield FBPStack(
                        folder / f"{info.observation.stem}.hdf5",
                        num_rows,
                        (geometry.image_size, geometry.image_size),
                        compute,
                        key,
                    )

        total = sum(len(f.rows) and f.rows[-1] + 1 for f in files)
        report = build_fbp_stacks(stacks(), backend, total, f"FBP cache ({backend})", self.progress)
        if log_summary:
            log.info("%s, %s", report.summary(), folder)
        self._ready_parts.update(parts)
        self.cache_report = report
        return report

    def setup(self, stage: Optional[str] = None) -> None:
        self.ensure_synthetic()
        layout = self.scan()
        size = layout.geometry.image_size
        if self.crop_size > size:
            raise DataFormatError(
                f"crop_size={self.crop_size} exceeds the {size}x{size} images in {layout.root}; use crop_size <= {size}"
            )
        parts = self._parts_for(stage)
        parts = [p for p in (parts or LODOPAB_NUM_SAMPLES) if layout.files[p]]
        missing = [p for p in parts if p not in self._ready_parts]
        if missing:  # not yet done by prepare_data in this process (other DDP ranks: reuses its cache)
            self.build_fbp_cache(missing)
        if stage in (None, "fit"):
            self.train_set = self.make_dataset("train")
        if stage in (None, "fit", "validate"):
            self.val_set = self.make_dataset("val")
        if stage in (None, "test", "predict"):
            self.test_set = self.make_dataset("test")

    def make_dataset(self, split: str) -> LoDoPaBDataset:
        part = SPLIT_TO_PART[split]
        layout = self.scan()
        files = layout.files[part]
        if not files:
            raise DataFormatError(
                f"{layout.root}: no ground_truth_{part}_NNN.hdf5 files for the {split} split"
            )
        assert part in self._ready_parts and self._backend is not None
        files = [f for f in files if f.rows]
        if not files:
            raise DataFormatError(
                f"{layout.root}: every {part} row is all zero (padding or a failed copy); no {split} samples"
            )
        folder = self.cache_folder(self._backend)
        dataset = LoDoPaBDataset(
            files, [folder / f"{f.observation.stem}.hdf5" for f in files], self.crop_size, self.normalize
        )
        log.info("LoDoPaB %s: %d samples from %d files", split, len(dataset), len(files))
        return dataset
