"""Reconstruction metrics over numpy volumes, with fastMRI's conventions (``fastmri.evaluate``).

A *volume* is ``(slices, H, W)``; metrics are computed per volume and then averaged over volumes,
as the fastMRI and APS-U papers report them. ``maxval`` defaults to ``gt.max()`` (fastMRI's
choice); pass the dataset's data range (e.g. the file's ``max`` attribute) for exact parity.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from fastmri import evaluate as _fastmri_evaluate


def _as_volume(name: str, a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"{name} must be a (slices, H, W) volume or an (H, W) image, got shape {a.shape}")
    return a


def _check_pair(gt: np.ndarray, pred: np.ndarray):
    gt, pred = _as_volume("gt", gt), _as_volume("pred", pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {gt.shape} vs {pred.shape}")
    return gt, pred


def nmse(gt: np.ndarray, pred: np.ndarray) -> float:
    """Normalised MSE ``||gt - pred||^2 / ||gt||^2`` over the whole volume, in float64."""
    gt, pred = _check_pair(gt, pred)
    return float(_fastmri_evaluate.nmse(gt, pred))


def psnr(gt: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None) -> float:
    """PSNR of the whole volume with data range ``maxval`` (default ``gt.max()``), in dB."""
    gt, pred = _check_pair(gt, pred)
    if np.array_equal(gt, pred):
        return float("inf")
    return float(_fastmri_evaluate.psnr(gt, pred, maxval=None if maxval is None else float(maxval)))


def ssim(gt: np.ndarray, pred: np.ndarray, maxval: Optional[float] = None) -> float:
    """Mean over slices of scikit-image SSIM (7x7 window) with data range ``maxval``."""
    gt, pred = _check_pair(gt, pred)
    return float(_fastmri_evaluate.ssim(gt, pred, maxval=None if maxval is None else float(maxval))[0])
