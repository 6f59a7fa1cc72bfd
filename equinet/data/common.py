"""Shared pieces of the data package: data directory, atomic writes, errors, file-name checks,
normalisation.

Kept free of Lightning and fastmri imports so ``equinet data synth`` starts quickly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple, Union

import numpy as np
import platformdirs
import torch

from equinet.data.types import ReconSample
from equinet.files import atomic_directory, atomic_write_text  # noqa: F401 (re-exported)

log = logging.getLogger("equinet.data")

DATA_DIR_ENV = "EQUINET_DATA_DIR"
PathLike = Union[str, os.PathLike]


class DataFormatError(ValueError):
    """A data file or folder does not have the expected format; the message names it."""


def default_data_dir() -> Path:
    """The platform's user cache folder for equinet (``platformdirs``): ``$XDG_CACHE_HOME/equinet``
    or ``~/.cache/equinet`` on Linux, ``~/Library/Caches/equinet`` on macOS, ``%LOCALAPPDATA%``
    on Windows."""
    return Path(platformdirs.user_cache_dir("equinet", appauthor=False))


def data_dir(override: Optional[PathLike] = None) -> Path:
    """Where synthetic datasets and caches live: ``override``, else ``$EQUINET_DATA_DIR``, else
    :func:`default_data_dir`."""
    chosen = override if override is not None else os.environ.get(DATA_DIR_ENV)
    return Path(chosen).expanduser() if chosen else default_data_dir()


def shown(path: PathLike) -> str:
    """``path`` as text that can always be printed and logged: a name that is not valid UTF-8 (held
    by Python as lone surrogates) is shown with its raw bytes escaped, e.g. ``caf\\xe9.h5``."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text).decode("utf-8", errors="backslashreplace")


def check_file_name(path: Path) -> None:
    """A data file's name must be UTF-8 text: sample names travel into metrics tables, logs and
    image captions, which cannot hold raw bytes."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataFormatError(
            f"{shown(path)}: the file name is not valid UTF-8; rename it to a UTF-8 name "
            "(e.g. with convmv) - sample names are written to metrics tables and logs"
        ) from None


def is_broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def broken_link_error(path: Path) -> DataFormatError:
    return DataFormatError(
        f"{shown(path)} is a broken symbolic link (its target {shown(os.readlink(path))} does not exist); "
        "mount or copy the data it points to, or remove the link"
    )


def stable_hash(*parts: object, length: int = 12) -> str:
    """Short hex digest of ``parts`` (JSON-encoded), stable across processes and runs."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (file names, indices), the same in every process."""
    return int(stable_hash(*parts, length=15), 16)


def check_finite(
    array: np.ndarray,
    what: str,
    cause: str = "the file is corrupt or was written incompletely",
    if_all_zero: Optional[str] = None,
) -> None:
    """Raise :class:`DataFormatError` naming ``what`` (and the likely ``cause``) if ``array``
    holds NaN or inf, and, given ``if_all_zero`` (what to say then), if it is all zeros.

    Cheap enough for every sample: one BLAS pass computes the sum of squares, which is finite
    only if every value is, and zero only if every value is; the exact (slower) tests run only
    when it says something may be wrong (or it overflowed or underflowed)."""
    values = np.asarray(array)
    if values.dtype.kind == "c":
        values = values.view(values.real.dtype)
    values = values.reshape(-1)
    with np.errstate(all="ignore"):  # overflow is handled below
        energy = float(np.dot(values, values))
    if not math.isfinite(energy):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise DataFormatError(f"{what} contains {bad} NaN/inf values; {cause}")
    elif energy == 0 and if_all_zero is not None and not values.any():
        raise DataFormatError(f"{what} is all zeros {if_all_zero}")


def check_finite_rows(array: np.ndarray, what: str, first_row: int = 0) -> None:
    """Like :func:`check_finite` for a stack of rows; the error lists the offending row numbers."""
    finite = np.isfinite(array).reshape(len(array), -1).all(axis=1)
    if not finite.all():
        rows = (np.flatnonzero(~finite) + first_row).tolist()
        count = int((~np.isfinite(array)).sum())
        raise DataFormatError(
            f"{what} row(s) {rows} contain {count} NaN/inf values; the file is corrupt or was written incompletely"
        )


def check_max_value(value, where: str) -> float:
    """The ``max`` attribute is the data range of PSNR/SSIM: it must be a finite number > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        value = value.item() if isinstance(value, np.generic) else value  # 'nan', not 'np.float64(nan)'
        raise DataFormatError(
            f"{where}: attribute 'max' is {value!r}; it must be a finite number > 0 (the maximum of the "
            "volume's target, used as PSNR/SSIM data range) - rewrite it as reconstruction_esc.max()"
        )
    return number


def describe_paths(paths: Sequence[PathLike], limit: int = 5) -> str:
    names = [shown(p) for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def normalize_pair(
    image: torch.Tensor,
    target: torch.Tensor,
    normalize: bool = True,
    clamp: Optional[float] = None,
    eps: float = 1e-11,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """fastMRI's instance normalisation: ``(x - mean) / (std + eps)`` with the input's mean and
    std applied to both input and target (so ``target = normalised * (std + eps) + mean``; the
    returned ``std`` already includes ``eps``). ``clamp`` bounds the *input* only (fastMRI uses 6);
    the target is not clamped so it maps back to the original values exactly.
    """
    image = image.to(torch.float32)
    target = target.to(torch.float32)
    if normalize:
        mean = image.mean()
        std = image.std() + eps
    else:
        mean = torch.zeros((), dtype=torch.float32)
        std = torch.ones((), dtype=torch.float32)
    image = (image - mean) / std
    if clamp is not None:
        image = image.clamp(-clamp, clamp)
    target = (target - mean) / std
    return image, target, mean, std


def make_sample(
    image: torch.Tensor,
    target: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    max_value: float,
    fname: str,
    slice_num: int,
) -> ReconSample:
    """A :class:`ReconSample` with ``(1, H, W)`` float32 images and 0-d float32 statistics."""
    return ReconSample(
        input=image.reshape(1, *image.shape[-2:]).contiguous(),
        target=target.reshape(1, *target.shape[-2:]).contiguous(),
        mean=torch.as_tensor(mean, dtype=torch.float32).reshape(()),
        std=torch.as_tensor(std, dtype=torch.float32).reshape(()),
        max_value=torch.as_tensor(float(max_value), dtype=torch.float32),
        fname=str(fname),
        slice_num=int(slice_num),
    )


def center_crop_2d(image: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """Centre crop of the last two axes to ``size x size``; a clear error if the image is smaller."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise DataFormatError(
            f"{what}: image of size {h}x{w} is smaller than crop_size={size}; use a smaller crop_size"
        )
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size]


def ensure_dataset(path: Path, build: Callable[[Path], None], what: str) -> Path:
    """Build a dataset into ``path`` once (atomically); reuse it afterwards."""
    if path.is_dir():
        return path
    log.info("generating synthetic %s dataset in %s (once; cached)", what, path)
    with atomic_directory(path) as tmp:
        build(tmp)
    return path


# Show equinet.data's INFO lines (cache reports, dataset sizes) the way Lightning shows its own,
# unless the application configured logging (or this logger's level) itself.
if log.level == logging.NOTSET:
    log.setLevel(logging.INFO)
if not logging.getLogger().hasHandlers() and not log.handlers:
    log.addHandler(logging.StreamHandler())
