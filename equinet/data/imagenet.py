"""ImageNet shift test: ``ImageNetShiftDataModule`` over a folder of ImageNet validation JPEGs.

The first ``num_images`` images (sorted by file name) of a flat folder
(``ILSVRC2012_val_XXXXXXXX.JPEG``) or a class-folder tree are made grayscale (RGB, grayscale and
CMYK JPEGs alike), centre-cropped, scaled to [0, 1] and pushed through the training data's
forward model: ``mri`` (k-space, the fastMRI mask seeded per file, zero-filled magnitude),
``ct`` (LoDoPaB's geometry on a ``ct_image_size`` crop, Poisson noise with N0 = 4096, FBP; the
FBPs are cached once like LoDoPaB's) or ``none`` (input = target). Used as an out-of-distribution
test of shift equivariance; evaluation only (val/test/predict loaders).

An image is identified by its file name (unique in ImageNet), not by its place in the folder
tree: the sample's ``fname``, the MRI mask seed and the CT noise seed are the file name, so a flat
folder and a class-folder tree give identical samples. EXIF orientation tags are ignored, as in
torchvision's ``ImageFolder``/``read_image`` and the usual ImageNet pipelines: pixels are used
as stored.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple

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
    check_file_name,
    check_finite,
    data_dir,
    describe_paths,
    is_broken_link,
    log,
    make_sample,
    normalize_pair,
    stable_hash,
    stable_seed,
)
from equinet.data.fbp_cache import (
    CACHE_CHANGED,
    CacheReport,
    FBPStack,
    build_fbp_stacks,
    fbp_device,
    remembered,
)
from equinet.data.mri import FASTMRI_CLAMP, file_seed, make_mask_func, mri_forward
from equinet.data.synthetic import write_imagenet_folder
from equinet.data.types import ReconSample

if TYPE_CHECKING:  # pragma: no cover
    from PIL import Image

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
FORWARD_MODELS = ("mri", "ct", "none")
SMALL_IMAGE_POLICIES = ("skip", "error", "resize")


def list_images(root: Path) -> List[Path]:
    """Image files under ``root`` (recursively), sorted by file name; other files are skipped
    with one logged warning. File names must be unique UTF-8 names (they identify the images)."""
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError(
            f"ImageNet root {root} does not exist; it should hold ILSVRC2012_val_*.JPEG files (flat or in class folders)"
        )
    images, stray = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = Path(dirpath) / name
            if name.startswith("."):
                continue
            is_image = path.suffix.lower() in IMAGE_EXTENSIONS
            if is_image and is_broken_link(path):
                raise broken_link_error(path)
            if is_image:
                check_file_name(path)
            (images if is_image else stray).append(path)
    if stray:
        log.warning(
            "skipped %d files in %s that are not images (%s): %s",
            len(stray),
            root,
            "/".join(IMAGE_EXTENSIONS),
            describe_paths([p.relative_to(root) for p in stray]),
        )
    if not images:
        raise DataFormatError(f"{root} holds no images ({'/'.join(IMAGE_EXTENSIONS)} files)")
    images.sort(key=lambda p: (p.name, str(p.relative_to(root))))
    for first, second in zip(images, images[1:]):
        if first.name == second.name:
            raise DataFormatError(
                f"{root}: the image name {first.name} occurs twice ({first.relative_to(root)} and "
                f"{second.relative_to(root)}); images are identified by file name (sample names, mask "
                "and noise seeds), so each name must occur once - remove the duplicate"
            )
    return images


@contextmanager
def open_image(path: Path) -> Iterator["Image.Image"]:
    """``PIL.Image.open`` that refuses images beyond PIL's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, 89 megapixels) and names the file in every error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DataFormatError(
            f"{path}: refused, the image is too large ({err}); ImageNet photos have a few megapixels, so the "
            "file is damaged or not one of them - remove it (or raise PIL.Image.MAX_IMAGE_PIXELS if it is "
            "genuine)"
        ) from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataFormatError(f"{path}: not a readable image ({err}); remove or replace it") from None
    with image:
        yield image


def image_size(path: Path) -> Tuple[int, int]:
    """``(height, width)`` from the header; a clear error if the file is not a readable image."""
    with open_image(path) as image:
        width, height = image.size
    return height, width


def load_grayscale(path: Path, size: int, small_images: str = "error") -> np.ndarray:
    """Grayscale float32 in [0, 1] (ITU-R 601 luma for RGB and CMYK), centre-cropped to ``size``;
    with ``small_images="resize"`` the shorter side is first scaled up to ``size`` (bicubic).
    EXIF orientation is ignored (pixels as stored, as torchvision reads ImageNet)."""
    from PIL import Image

    try:
        with open_image(path) as image:
            image.load()
            if image.mode in ("I;16", "I;16B", "I;16L"):
                gray = np.asarray(image, dtype=np.float32) / 65535.0
            else:
                gray = np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except OSError as err:
        raise DataFormatError(
            f"{path}: cannot decode the image ({err}); the file is truncated or corrupt"
        ) from None
    height, width = gray.shape
    if min(height, width) < size:
        if small_images != "resize":
            raise DataFormatError(
                f"{path}: image of size {height}x{width} is smaller than the {size}x{size} crop"
            )
        scale = size / min(height, width)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        gray = np.asarray(Image.fromarray(gray).resize(new, Image.Resampling.BICUBIC), dtype=np.float32)
        gray = np.clip(gray, 0.0, 1.0)
    return center_crop_2d(torch.from_numpy(np.ascontiguousarray(gray)), size, str(path)).numpy()


class ImageNetShiftDataset(Dataset):
    """One sample per image: ``fname`` = the image's file name (its identity, whatever the folder
    layout), ``slice_num`` = 0, ``max_value`` = data range (max - min) of the image fed to the
    forward model."""

    def __init__(
        self,
        root: Path,
        paths: List[Path],
        crop_size: int,
        forward_model: str,
        source_size: int,
        small_images: str,
        mask_func=None,
        fbp_cache: Optional[Path] = None,
        normalize: bool = True,
    ) -> None:
        self.root, self.paths = root, paths
        self.crop_size, self.forward_model = crop_size, forward_model
        self.source_size, self.small_images = source_size, small_images
        self.mask_func, self.fbp_cache, self.normalize = mask_func, fbp_cache, normalize
        self._cache_handle: Optional[h5py.File] = None
        self._cache_pid = -1

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return self.paths[index].name

    def source(self, index: int) -> np.ndarray:
        return load_grayscale(self.paths[index], self.source_size, self.small_images)

    def _cached_fbp(self, index: int) -> np.ndarray:
        if self._cache_handle is None or self._cache_pid != os.getpid():
            self._cache_handle, self._cache_pid = h5py.File(self.fbp_cache, "r"), os.getpid()
        recon = np.asarray(self._cache_handle["data"][index], dtype=np.float32)
        check_finite(recon, f"FBP cache {self.fbp_cache} row {index}", CACHE_CHANGED)
        return recon

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache_handle"], state["_cache_pid"] = None, -1
        return state

    def __getitem__(self, index: int) -> ReconSample:
        name = self.name(index)
        truth = torch.from_numpy(self.source(index))
        data_range = float(truth.max() - truth.min()) or 1.0
        clamp = None
        if self.forward_model == "mri":
            image = mri_forward(truth, self.mask_func, seed=file_seed(name))
            clamp = FASTMRI_CLAMP
        elif self.forward_model == "ct":
            image = torch.from_numpy(self._cached_fbp(index))
        else:
            image = truth.clone()
        target = center_crop_2d(truth, self.crop_size, name)
        image = center_crop_2d(image, self.crop_size, name)
        image, target, mean, std = normalize_pair(image, target, self.normalize, clamp=clamp)
        return make_sample(image, target, mean, std, data_range, name, 0)


class ImageNetShiftDataModule(ReconDataModule):
    """Out-of-distribution shift test on ImageNet validation images (evaluation only).

    Args:
        root: folder of ImageNet val JPEGs (flat, or class folders). Required unless ``synthetic``.
        num_images: use the first N images sorted by file name (``None`` = all).
        crop_size: side of the centre crop of input and target.
        forward_model: ``mri`` (as FastMRIDataModule), ``ct`` (as LoDoPaBDataModule) or ``none``.
        mask_type: fastMRI mask type for ``mri``.
        center_fractions: fully sampled centre fraction(s) for ``mri``.
        accelerations: acceleration(s) for ``mri``.
        ct_image_size: side of the image crop that is projected for ``ct`` (the FOV is LoDoPaB's
            0.26 m); ``None`` = 362 (LoDoPaB) or ``crop_size`` if larger. Input/target are then
            centre-cropped to ``crop_size`` as for LoDoPaB.
        ct_num_angles: projection angles for ``ct``; ``None`` = LoDoPaB's 1000 per 362 pixels.
        photons_per_pixel: N0 of the Poisson noise for ``ct`` (LoDoPaB: 4096).
        fbp: FBP backend for ``ct`` (``auto``, ``astra``, ``torch``, ``skimage``).
        fbp_device: device of the torch FBP/projection; ``None`` = CUDA if available, else CPU.
        small_images: images smaller than the crop: ``skip`` (logged with a count; the next
            images are used instead), ``error``, or ``resize`` (shorter side up to the crop).
        normalize: instance-normalise (fastMRI style); ``False`` gives mean 0, std 1.
        seed: seed of the CT noise (combined with each file name).
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``.
        progress: show a progress bar while building the CT cache.
        data_dir: where synthetic data and caches go; default ``$EQUINET_DATA_DIR`` or the user
            cache folder (``~/.cache/equinet`` on Linux).
        synthetic: instead of a ``root``, generate a folder of such JPEGs from scikit-image's bundled
            natural images once under ``data_dir`` and use it (never a fallback).
        synthetic_num: images in the synthetic default folder.
        synthetic_size: shorter side of the synthetic JPEGs (375 as most ImageNet images).
    """

    def __init__(
        self,
        root: Optional[str] = None,
        num_images: Optional[int] = 1000,
        crop_size: int = 320,
        forward_model: str = "mri",
        mask_type: str = "random",
        center_fractions: Tuple[float, ...] = (0.08,),
        accelerations: Tuple[int, ...] = (4,),
        ct_image_size: Optional[int] = None,
        ct_num_angles: Optional[int] = None,
        photons_per_pixel: float = ct.PHOTONS_PER_PIXEL,
        fbp: str = "auto",
        fbp_device: Optional[str] = None,
        small_images: str = "skip",
        normalize: bool = True,
        seed: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        progress: bool = True,
        data_dir: Optional[str] = None,
        synthetic: bool = False,
        synthetic_num: int = 64,
        synthetic_size: int = 375,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        if forward_model not in FORWARD_MODELS:
            raise ValueError(f"forward_model must be one of {FORWARD_MODELS}, got {forward_model!r}")
        if small_images not in SMALL_IMAGE_POLICIES:
            raise ValueError(f"small_images must be one of {SMALL_IMAGE_POLICIES}, got {small_images!r}")
        if fbp not in ct.FBP_BACKENDS:
            raise ValueError(f"fbp must be one of {ct.FBP_BACKENDS}, got {fbp!r}")
        if num_images is not None and num_images < 1:
            raise ValueError(f"num_images must be >= 1 or None, got {num_images}")
        self.save_hyperparameters()
        self.root = self.check_source(root, synthetic)
        self.num_images = num_images
        self.crop_size = crop_size
        self.forward_model = forward_model
        self.mask_func = (
            make_mask_func(mask_type, center_fractions, accelerations) if forward_model == "mri" else None
        )
        if ct_image_size is None:
            ct_image_size = max(crop_size, ct.LODOPAB_IMAGE_SIZE)
        if ct_image_size < crop_size:
            raise ValueError(f"ct_image_size={ct_image_size} is smaller than crop_size={crop_size}")
        self.source_size = ct_image_size if forward_model == "ct" else crop_size
        self.geometry = (
            ct.ParallelBeamGeometry.for_image_size(ct_image_size, ct_num_angles)
            if forward_model == "ct"
            else None
        )
        self.photons_per_pixel = photons_per_pixel
        self.fbp_backend = fbp
        self.fbp_device = fbp_device
        self.small_images = small_images
        self.normalize = normalize
        self.seed = seed
        self.progress = progress
        self.data_dir = data_dir
        self.synthetic = dict(num_images=synthetic_num, size=synthetic_size)
        if root is None and synthetic_size < self.source_size:
            raise ValueError(
                f"synthetic_size={synthetic_size} is smaller than the {self.source_size} pixels the {forward_model} forward model needs"
            )
        self.paths: List[Path] = []
        self.cache_report: Optional[CacheReport] = None
        self._cache: Optional[Tuple[List[Path], Path]] = None  # (images, FBP cache) built by this process

    synthetic_kind = "imagenet"
    synthetic_what = "ImageNet val"
    root_holds = "ImageNet validation JPEGs (flat or in class folders)"

    def synthetic_label(self) -> str:
        s = self.synthetic
        return f"imagenet-val-s{s['size']}-n{s['num_images']}"

    def write_synthetic(self, out: Path) -> None:
        write_imagenet_folder(out, **self.synthetic)

    def prepare_data(self) -> None:
        """Generate the synthetic default (if ``root=None``) and, for ``ct``, the FBP cache."""
        self.ensure_synthetic()
        if self.forward_model == "ct":
            self.build_fbp_cache(self.select_images())

    def select_images(self) -> List[Path]:
        """The first ``num_images`` usable images, sorted by name (smaller ones per ``small_images``)."""
        root = self.resolved_root()
        chosen, small = [], []
        for path in list_images(root):
            if self.num_images is not None and len(chosen) == self.num_images:
                break
            height, width = image_size(path)
            if min(height, width) < self.source_size and self.small_images != "resize":
                if self.small_images == "error":
                    raise DataFormatError(
                        f"{path}: image of size {height}x{width} is smaller than the {self.source_size}x{self.source_size} crop; "
                        "use small_images='skip' or 'resize', or a smaller crop"
                    )
                small.append(path.relative_to(root))
                continue
            chosen.append(path)
        if small:
            log.warning(
                "skipped %d images smaller than %dx%d in %s: %s",
                len(small),
                self.source_size,
                self.source_size,
                root,
                describe_paths(small),
            )
        if not chosen:
            raise DataFormatError(f"{root}: no image is at least {self.source_size}x{self.source_size}")
        if self.num_images is not None and len(chosen) < self.num_images:
            level = log.info if self.root is None else log.warning
            level("using %d images, fewer than num_images=%d, from %s", len(chosen), self.num_images, root)
        return chosen

    def cache_path(self, paths: List[Path], backend: str) -> Path:
        """The CT cache of these images, keyed on their names and contents (SHA-256 of each file).

        The digests are remembered beside the cache for the files' fingerprints (path, size,
        times, inode), so a later run, rank or study variant reads each image again only if it
        changed."""
        folder = data_dir(self.data_dir) / "fbp_cache"
        memo = folder / f"imagenet-digests-{stable_hash([str(p.resolve()) for p in paths])}.json"
        folder.mkdir(parents=True, exist_ok=True)
        entries = remembered(
            memo, paths, lambda: [(p.name, hashlib.sha256(p.read_bytes()).hexdigest()) for p in paths]
        )
        assert self.geometry is not None
        key = stable_hash(
            entries,
            self.geometry.__dict__,
            self.photons_per_pixel,
            self.seed,
            self.small_images,
            backend,
            "v2",
        )
        return data_dir(self.data_dir) / "fbp_cache" / f"imagenet-ct-{len(paths)}-{key}.hdf5"

    def build_fbp_cache(self, paths: List[Path]) -> CacheReport:
        """Project, add noise and FBP every selected image once (resumable, atomic)."""
        if self._cache is not None and self._cache[0] == paths:  # built and checked by this process
            return self.cache_report
        geometry = self.geometry
        assert geometry is not None
        backend = ct.resolve_fbp_backend(self.fbp_backend)
        device = fbp_device(self.fbp_device)
        dataset = self._dataset(paths, None)

        def compute(i: int, j: int) -> np.ndarray:
            truths = torch.from_numpy(np.stack([dataset.source(k) for k in range(i, j)])).to(device)
            sinos = ct.ray_transform(truths, geometry)
            noisy = torch.stack(
                [
                    ct.simulate_observation(
                        s.cpu(),
                        self.photons_per_pixel,
                        generator=torch.Generator().manual_seed(
                            stable_seed("imagenet-ct", self.seed, paths[i + r].name)
                        ),
                    )
                    for r, s in enumerate(sinos)
                ]
            )
            if backend == "torch":
                noisy = noisy.to(device)
            return ct.fbp(noisy, geometry, backend).cpu().numpy()

        path = self.cache_path(paths, backend)
        key = {
            "num_images": len(paths),
            "geometry": geometry.describe(),
            "fbp_backend": backend,
            "photons_per_pixel": float(self.photons_per_pixel),
        }
        stack = FBPStack(path, len(paths), (geometry.image_size, geometry.image_size), compute, key)
        report = build_fbp_stacks([stack], backend, len(paths), f"ImageNet CT cache ({backend})", self.progress)
        log.info("%s, %s", report.summary(), path)
        self.cache_report, self._cache = report, (paths, path)
        return report

    def _dataset(self, paths: List[Path], fbp_cache: Optional[Path]) -> ImageNetShiftDataset:
        return ImageNetShiftDataset(
            self.resolved_root(),
            paths,
            self.crop_size,
            self.forward_model,
            self.source_size,
            self.small_images,
            self.mask_func,
            fbp_cache,
            self.normalize,
        )

    def setup(self, stage: Optional[str] = None) -> None:
        self.ensure_synthetic()
        self.paths = self.select_images()
        cache = None
        if self.forward_model == "ct":
            self.build_fbp_cache(self.paths)
            cache = self._cache[1]
        dataset = self._dataset(self.paths, cache)
        self.val_set = self.test_set = dataset
        log.info(
            "ImageNet shift test: %d images from %s (forward model %s)",
            len(dataset),
            self.resolved_root(),
            self.forward_model,
        )

    def train_dataloader(self):
        raise RuntimeError(
            "ImageNetShiftDataModule is an evaluation set (out-of-distribution shift test): use it with "
            "validate/test/predict, and train on FastMRIDataModule or LoDoPaBDataModule"
        )
