"""Shift-equivariance metrics (APS-U paper, Sec. 4): compare ``T_k(G(x))`` with ``G(T_k(x))``.

``T_k`` is a circular shift by ``k`` pixels (circular, so boundary effects are separated from
sampling effects, as in the paper). Conventions, the same everywhere in equinet:

* shifts are drawn uniformly from ``[-16, 16]`` per axis, both ends included (the paper's text;
  its reference code draws from ``[-16, 15]``);
* per volume, NMSE and SSIM between the two, one random shift per volume; SSIM takes the
  dataset's data range as ``maxval`` (a volume's ``max_value``; 1.0 for images in [0, 1]),
  never the shifted output's own maximum, which would make it depend on the output's scale;
* worst-case |dPSNR| with ``dPSNR = PSNR(G(T_k x), T_k y) - PSNR(G(x), y)`` (Table 2), in two
  conventions: :func:`worst_dpsnr_image` -- per image, the worst over its shifts (the paper's
  text: "the worst possible decline for any image"; the default and headline number) -- and
  :func:`worst_dpsnr_volume` -- per volume, all slices shifted together and the PSNR of the
  volume, the worst over the shifts (the paper's reference code). The data range cancels in
  the difference of two PSNRs of the same target, so neither needs it.
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
                        maxval: float) -> Dict[str, float]:
    """NMSE and SSIM between ``T_k(G(x))`` (from ``reference = G(x)``) and ``G(T_k x)``; ``maxval``:
    the data range for SSIM (the dataset's, see the module docstring)."""
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
    maxval: float,
) -> Dict[str, np.ndarray]:
    """Equivariance NMSE/SSIM of ``model`` on the volume ``x`` for every shift in ``shifts``.

    ``x`` is ``(slices, C, *spatial)``, treated as one volume; put the model in eval mode first.
    ``maxval``: the data range for SSIM (the dataset's ``max_value``; 1.0 for images in [0, 1]).
    Returns arrays of length ``len(shifts)``.
    """
    reference = model(x)
    rows = [equivariance_errors(reference, model(circular_shift(x, k.tolist())), k.tolist(), maxval)
            for k in shifts]
    return {key: np.array([r[key] for r in rows]) for key in ("nmse", "ssim")}


def dpsnr_from_sse(base_sse, shifted_sse):
    """``|10 log10(base / shifted)|``: |dPSNR| from two squared errors against the same target (the
    data range cancels); 0 where both are 0, inf where only one is."""
    base = torch.as_tensor(base_sse, dtype=torch.float64)
    shifted = torch.as_tensor(shifted_sse, dtype=torch.float64)
    out = (10 * torch.log10(base / shifted)).abs()
    return torch.where((base == 0) & (shifted == 0), torch.zeros_like(out), out)


def _sse_per_image(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return ((target.to(torch.float64) - pred.to(torch.float64)) ** 2).flatten(1).sum(dim=1)


@torch.no_grad()
def worst_dpsnr_image(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    shifts: torch.Tensor,
) -> np.ndarray:
    """Per image, ``max_k |PSNR(G(T_k x), T_k y) - PSNR(G(x), y)|`` over ``shifts`` (Table 2; the
    paper's text). ``x``/``target`` are ``(B, C, *spatial)``; each image is scored on its own."""
    base = _sse_per_image(target, model(x))
    worst = torch.zeros_like(base)
    for k in shifts:
        k = k.tolist()
        shifted = _sse_per_image(circular_shift(target, k), model(circular_shift(x, k)))
        worst = torch.maximum(worst, dpsnr_from_sse(base, shifted))
    return worst.cpu().numpy()


@torch.no_grad()
def worst_dpsnr_volume(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    target: torch.Tensor,
    shifts: torch.Tensor,
) -> float:
    """``max_k |PSNR_vol(T_k y, G(T_k x)) - PSNR_vol(y, G(x))|`` for the volume ``x`` ``(slices, C,
    *spatial)``, every slice shifted by the same ``k``, PSNR of the whole volume (the paper's
    reference code)."""
    base = _sse_per_image(target, model(x)).sum()
    worst = torch.zeros_like(base)
    for k in shifts:
        k = k.tolist()
        shifted = _sse_per_image(circular_shift(target, k), model(circular_shift(x, k))).sum()
        worst = torch.maximum(worst, dpsnr_from_sse(base, shifted))
    return float(worst)


# The name this metric had before the volume convention was added; same function.
worst_case_dpsnr = worst_dpsnr_image
