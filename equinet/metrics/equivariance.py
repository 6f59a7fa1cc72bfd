"""Shift-equivariance metrics (APS-U paper, Sec. 4): compare ``T_k(G(x))`` with ``G(T_k(x))``.

``T_k`` is a circular shift by ``k`` pixels (circular, so boundary effects are separated from
sampling effects, as in the paper). Per volume: NMSE and SSIM between the two, one random shift
in [-16, 16] per volume; per image: the worst |dPSNR| over several random shifts, where
``dPSNR = PSNR(G(T_k x), T_k y) - PSNR(G(x), y)`` (Table 2).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch

from equinet.metrics.reconstruction import nmse, ssim

Array = Union[np.ndarray, torch.Tensor]


def circular_shift(x: Array, shift: Sequence[int]) -> Array:
    """``T_k x``: roll the last ``len(shift)`` dimensions by ``shift`` (torch or numpy input)."""
    shift = tuple(int(s) for s in shift)
    dims = tuple(range(-len(shift), 0))
    if isinstance(x, torch.Tensor):
        return torch.roll(x, shifts=shift, dims=dims)
    return np.roll(x, shift=shift, axis=dims)


def random_shifts(
    n: int, dim: int = 2, max_shift: int = 16, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """``n`` shifts drawn uniformly from ``[-max_shift, max_shift]^dim`` (long tensor ``(n, dim)``)."""
    return torch.randint(-max_shift, max_shift + 1, (n, dim), generator=generator)


def _volume(t: torch.Tensor) -> np.ndarray:
    """(B, C, *spatial) -> float64 numpy volume of 2D slices for the fastMRI-style metrics."""
    a = t.detach().to(torch.float64).cpu().numpy()
    if a.ndim < 4:
        return a.reshape(-1, 1, a.shape[-1])
    return a.reshape(-1, a.shape[-2], a.shape[-1])


def equivariance_errors(reference: torch.Tensor, shifted_output: torch.Tensor, shift: Sequence[int],
                        maxval: Optional[float] = None) -> Dict[str, float]:
    """NMSE and SSIM between ``T_k(G(x))`` (from ``reference = G(x)``) and ``G(T_k x)``."""
    expected = _volume(circular_shift(reference, shift))
    got = _volume(shifted_output)
    out = {"nmse": nmse(expected, got)}
    out["ssim"] = ssim(expected, got, maxval) if expected.shape[-2] >= 7 else float("nan")
    return out


@torch.no_grad()
def measure_equivariance(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    shifts: torch.Tensor,
    maxval: Optional[float] = None,
) -> Dict[str, np.ndarray]:
    """Equivariance NMSE/SSIM of ``model`` on the volume ``x`` for every shift in ``shifts``.

    ``x`` is ``(slices, C, *spatial)``, treated as one volume; put the model in eval mode first.
    Returns arrays of length ``len(shifts)``.
    """
    reference = model(x)
    rows = [equivariance_errors(reference, model(circular_shift(x, k.tolist())), k.tolist(), maxval)
            for k in shifts]
    return {key: np.array([r[key] for r in rows]) for key in ("nmse", "ssim")}


def _psnr_per_image(target: torch.Tensor, pred: torch.Tensor, maxval: Optional[float]) -> torch.Tensor:
    """Vectorised fastMRI PSNR of each image: ``10 log10(maxval^2 / mse)``, maxval = target max."""
    t, p = target.flatten(1).to(torch.float64), pred.flatten(1).to(torch.float64)
    mse = ((t - p) ** 2).mean(dim=1)
    peak = t.amax(dim=1) if maxval is None else torch.full_like(mse, float(maxval))
    return 10 * torch.log10(peak**2 / mse)


@torch.no_grad()
def worst_case_dpsnr(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    shifts: torch.Tensor,
    maxval: Optional[float] = None,
) -> np.ndarray:
    """Per image, ``max_k |PSNR(G(T_k x), T_k y) - PSNR(G(x), y)|`` over ``shifts`` (Table 2).

    ``x``/``target`` are ``(B, C, *spatial)``; each of the ``B`` images is scored on its own.
    """
    base = _psnr_per_image(target, model(x), maxval)
    worst = torch.zeros_like(base)
    for k in shifts:
        k = k.tolist()
        d = _psnr_per_image(circular_shift(target, k), model(circular_shift(x, k)), maxval) - base
        worst = torch.maximum(worst, d.abs())
    return worst.cpu().numpy()
