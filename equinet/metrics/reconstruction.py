"""Reconstruction metrics with fastMRI's conventions (``fastmri.evaluate``), in torch on any device.

A *volume* is ``(slices, H, W)``; metrics are computed per volume and then averaged over volumes,
as the fastMRI and APS-U papers report them. ``maxval`` defaults to ``gt.max()`` (fastMRI's
choice); pass the dataset's data range (e.g. the file's ``max`` attribute) for exact parity.

Everything is computed in float64 on the tensors' own device (numpy inputs: on the CPU), so an
evaluation on a GPU sends only per-slice scalars to the host. The per-slice *terms*
(:func:`slice_terms`: squared error, reference energy, pixel count, SSIM) add up over any split
of a volume into batches, which is how :mod:`equinet.lightning.evaluation` gets exact volume
metrics under DDP; :func:`nmse`, :func:`psnr` and :func:`ssim` are the same terms over one volume.
SSIM is scikit-image's ``structural_similarity`` as fastMRI calls it (7x7 uniform window, sample
covariance, K1=0.01, K2=0.03, ``data_range=maxval``; with ``gaussian_weights=True`` its Gaussian
window, sigma 1.5 truncated at 3.5 sigma) -- equal to it to rounding (about 1e-15).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import numpy as np
import torch

Array = Union[np.ndarray, torch.Tensor]
Scalar = Union[float, torch.Tensor]

# scikit-image's structural_similarity defaults (fastMRI uses them unchanged)
SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_SIGMA, SSIM_TRUNCATE = 1.5, 3.5


def metric_tensor(a: Array, device: Optional[torch.device] = None) -> torch.Tensor:
    """``a`` as a float64 tensor on its own device (numpy: the CPU; MPS has no float64: the CPU)."""
    if isinstance(a, torch.Tensor):
        t = a.detach()
    elif isinstance(a, np.ndarray):
        t = torch.from_numpy(a)
    else:  # python numbers and sequences: float64 from the start (as_tensor would round to float32)
        t = torch.as_tensor(a, dtype=torch.float64)
    if device is not None:
        t = t.to(device)
    if t.device.type == "mps":
        t = t.cpu()
    return t.to(torch.float64)


def _as_volume(name: str, a: Array) -> torch.Tensor:
    t = metric_tensor(a)
    if t.dim() == 2:
        t = t[None]
    if t.dim() != 3:
        raise ValueError(f"{name} must be a (slices, H, W) volume or an (H, W) image, got shape {tuple(t.shape)}")
    return t


def _check_pair(gt: Array, pred: Array):
    gt, pred = _as_volume("gt", gt), _as_volume("pred", pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {tuple(gt.shape)} vs {tuple(pred.shape)}")
    return gt, pred.to(gt.device)


# --------------------------------------------------------------------------------------------
# SSIM (scikit-image's structural_similarity, batched over slices)
# --------------------------------------------------------------------------------------------
def _window(win_size: int, gaussian_weights: bool, device: torch.device) -> torch.Tensor:
    """The 1D window (normalised): uniform of ``win_size`` or scipy's truncated Gaussian."""
    if not gaussian_weights:
        return torch.full((win_size,), 1.0 / win_size, dtype=torch.float64, device=device)
    radius = (win_size - 1) // 2
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    phi = torch.exp(-0.5 / SSIM_SIGMA**2 * x**2)
    return phi / phi.sum()


def ssim_per_slice(
    gt: Array,
    pred: Array,
    maxval: Union[Scalar, Array],
    gaussian_weights: bool = False,
    win_size: Optional[int] = None,
) -> torch.Tensor:
    """SSIM of every slice of ``gt``/``pred`` ``(S, H, W)`` (float64 ``(S,)`` on ``gt``'s device).

    ``maxval``: the data range, one for all slices or one per slice ``(S,)``. Equals
    ``skimage.metrics.structural_similarity(gt[i], pred[i], data_range=maxval[i],
    gaussian_weights=...)``: filtered moments, sample covariance, the mean over the pixels whose
    window lies inside the image (scikit-image crops the filter's border, so no padding enters).
    """
    gt, pred = _check_pair(gt, pred)
    if win_size is None:
        win_size = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1 if gaussian_weights else SSIM_WINDOW
    if win_size % 2 != 1:
        raise ValueError(f"SSIM window size must be odd, got {win_size}")
    if min(gt.shape[-2:]) < win_size:
        raise ValueError(f"SSIM needs images of at least {win_size}x{win_size}, got {tuple(gt.shape[-2:])}")
    S = gt.shape[0]
    data_range = metric_tensor(maxval, gt.device).reshape(-1)
    if data_range.numel() not in (1, S):
        raise ValueError(f"maxval must be one value or one per slice ({S}), got {data_range.numel()}")
    R = data_range.expand(S)
    if gt.device.type == "cpu" and S > 1:  # a few slices at a time keep the CPU's temporaries in cache
        step = max(1, CPU_CHUNK_PIXELS // (gt.shape[-1] * gt.shape[-2]))
        return torch.cat([_ssim_maps(gt[i:i + step], pred[i:i + step], R[i:i + step], win_size, gaussian_weights)
                          for i in range(0, S, step)])
    return _ssim_maps(gt, pred, R, win_size, gaussian_weights)


CPU_CHUNK_PIXELS = 1 << 18


def _ssim_maps(gt: torch.Tensor, pred: torch.Tensor, data_range: torch.Tensor, win_size: int,
               gaussian_weights: bool) -> torch.Tensor:
    # the five moments of the window, filtered separably over the valid region (= scikit-image's
    # crop of its filtered maps: no padding enters); sums of unfolded windows beat a float64 conv
    maps = torch.stack([gt, pred, gt * gt, pred * pred, gt * pred], dim=1)  # (S, 5, H, W)
    w = _window(win_size, gaussian_weights, gt.device)
    for dim in (-1, -2):
        windows = maps.unfold(dim, win_size, 1)
        maps = (windows * w).sum(dim=-1) if gaussian_weights else windows.sum(dim=-1) / win_size
    ux, uy, uxx, uyy, uxy = maps.unbind(dim=1)
    NP = win_size**2
    cov_norm = NP / (NP - 1)  # sample covariance (scikit-image's default)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    R = data_range.view(-1, 1, 1)
    C1, C2 = (SSIM_K1 * R) ** 2, (SSIM_K2 * R) ** 2
    A1, A2 = 2 * ux * uy + C1, 2 * vxy + C2
    B1, B2 = ux**2 + uy**2 + C1, vx + vy + C2
    return ((A1 * A2) / (B1 * B2)).flatten(1).mean(dim=1)


# --------------------------------------------------------------------------------------------
# per-slice terms and the volume metrics made from them
# --------------------------------------------------------------------------------------------
def slice_terms(gt: Array, pred: Array, maxval: Union[Scalar, Array], with_ssim: bool = True) -> Dict[str, Any]:
    """Per slice of ``(S, H, W)`` (or ``(S, 1, H, W)``) images, float64 ``(S,)`` tensors on the device:
    ``sse`` = ||gt - pred||^2, ``ref_sq`` = ||gt||^2, ``ssim`` (NaN where a slice is smaller than the
    SSIM window, or ``with_ssim=False``); and ``numel``, the pixels per slice (int).

    A volume's metrics are sums of these terms (:func:`nmse_from_terms`, :func:`psnr_from_terms`,
    the mean of ``ssim``), so they are exact whatever the batching."""
    gt, pred = metric_tensor(gt), metric_tensor(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred shapes differ: {tuple(gt.shape)} vs {tuple(pred.shape)}")
    pred = pred.to(gt.device)
    flat_gt, flat_pred = gt.flatten(1), pred.flatten(1)
    out: Dict[str, Any] = {
        "sse": (flat_gt - flat_pred).square().sum(dim=1),
        "ref_sq": flat_gt.square().sum(dim=1),
        "numel": int(flat_gt.shape[1]),
    }
    S = gt.shape[0]
    if with_ssim and gt.dim() >= 3 and min(gt.shape[-2:]) >= SSIM_WINDOW:
        # a slice of several channels: the mean of its channels' SSIM
        per = gt[0].numel() // (gt.shape[-2] * gt.shape[-1])
        data_range = metric_tensor(maxval, gt.device).reshape(-1)
        if data_range.numel() == S and per > 1:
            data_range = data_range.repeat_interleave(per)
        out["ssim"] = ssim_per_slice(gt.reshape(-1, *gt.shape[-2:]), pred.reshape(-1, *gt.shape[-2:]),
                                     data_range).view(S, per).mean(dim=1)
    else:
        out["ssim"] = torch.full((S,), float("nan"), dtype=torch.float64, device=gt.device)
    return out


def nmse_from_terms(sse: Scalar, ref_sq: Scalar) -> float:
    """NMSE ``sum sse / sum ||gt||^2`` of a volume from its slices' terms (fastMRI's ``nmse``)."""
    sse, ref_sq = float(sse), float(ref_sq)
    if ref_sq == 0:  # as numpy divides: 0/0 is NaN, x/0 is inf
        return float("nan") if sse == 0 else float("inf")
    return sse / ref_sq


def psnr_from_terms(sse: Scalar, numel: int, maxval: float) -> float:
    """PSNR ``10 log10(maxval^2 / MSE)`` of a volume from its summed squared error and pixel count
    (scikit-image's ``peak_signal_noise_ratio`` as fastMRI calls it); ``inf`` for an exact match."""
    mse, peak = float(sse) / int(numel), float(maxval) ** 2
    if mse == 0:
        return float("inf")
    return 10 * math.log10(peak / mse) if peak > 0 else float("-inf")


def _default_maxval(gt: torch.Tensor, maxval: Optional[Scalar]) -> Scalar:
    return gt.max() if maxval is None else maxval


def nmse(gt: Array, pred: Array) -> float:
    """Normalised MSE ``||gt - pred||^2 / ||gt||^2`` over the whole volume, in float64."""
    gt, pred = _check_pair(gt, pred)
    t = slice_terms(gt, pred, 1.0, with_ssim=False)
    return nmse_from_terms(t["sse"].sum(), t["ref_sq"].sum())


def psnr(gt: Array, pred: Array, maxval: Optional[Scalar] = None) -> float:
    """PSNR of the whole volume with data range ``maxval`` (default ``gt.max()``), in dB."""
    gt, pred = _check_pair(gt, pred)
    t = slice_terms(gt, pred, 1.0, with_ssim=False)
    return psnr_from_terms(t["sse"].sum(), t["numel"] * gt.shape[0], float(_default_maxval(gt, maxval)))


def ssim(gt: Array, pred: Array, maxval: Optional[Scalar] = None, gaussian_weights: bool = False) -> float:
    """Mean over slices of scikit-image SSIM (7x7 window) with data range ``maxval`` (default
    ``gt.max()``, the volume's maximum, as ``fastmri.evaluate.ssim``)."""
    gt, pred = _check_pair(gt, pred)
    return float(ssim_per_slice(gt, pred, _default_maxval(gt, maxval), gaussian_weights).mean())
