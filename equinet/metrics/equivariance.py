"""Shift-equivariance metrics (APS-U paper, Sec. 4): compare ``T_k(G(x))`` with ``G(T_k(x))``.

``T_k`` is the circular shift of :mod:`equinet.metrics.shifts` (its one definition, with the shift
draws). Conventions, the same everywhere in equinet (the callbacks and the study call these
functions; nothing else computes the measurements):

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

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from equinet.metrics.reconstruction import nmse_from_terms, slice_terms
from equinet.metrics.shifts import circular_shift, random_shifts  # noqa: F401  (T_k, the draws)

Model = Callable[[torch.Tensor], torch.Tensor]
Shifts = Union[Sequence[int], torch.Tensor]


def _has_ssim(x: torch.Tensor) -> bool:
    return x.dim() >= 4  # images (B, C, H, W) or volumes (B, C, D, H, W): SSIM of the 2D slices


@torch.no_grad()
def equivariance_terms(
    model: Model,
    x: torch.Tensor,
    shifts: Shifts,
    maxval,
    output: Optional[torch.Tensor] = None,
    to_units: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> Dict[str, torch.Tensor]:
    """The equivariance measurement: per image, the terms (:func:`~equinet.metrics.slice_terms`) of
    NMSE and SSIM between ``T_k(G(x))`` (the reference) and ``G(T_k x)``, on ``x``'s device.

    ``shifts``: one ``k`` ``(d,)`` for all images or one per image ``(B, d)``; ``output``: ``G(x)``
    if already computed; ``to_units``: applied to both before comparing (e.g. de-normalisation);
    ``maxval``: the SSIM data range, one or per image (the dataset's, see the module docstring).
    A volume's equivariance NMSE is ``nmse_from_terms`` of the summed terms, its SSIM their mean."""
    reference = model(x) if output is None else output
    expected = circular_shift(reference, shifts)
    got = model(circular_shift(x, shifts))
    if to_units is not None:
        expected, got = to_units(expected), to_units(got)
    return slice_terms(expected, got, maxval, with_ssim=_has_ssim(x))


def _volume_errors(terms: Dict[str, torch.Tensor]) -> Dict[str, float]:
    return {"nmse": nmse_from_terms(terms["sse"].sum(), terms["ref_sq"].sum()), "ssim": float(terms["ssim"].mean())}


def equivariance_errors(reference: torch.Tensor, shifted_output: torch.Tensor, shift: Shifts,
                        maxval: float) -> Dict[str, float]:
    """NMSE and SSIM of the volume between ``T_k(G(x))`` (from ``reference = G(x)``) and ``G(T_k x)``;
    ``maxval``: the data range for SSIM (the dataset's, see the module docstring)."""
    expected = circular_shift(reference, shift)
    return _volume_errors(slice_terms(expected, shifted_output, maxval, with_ssim=_has_ssim(reference)))


@torch.no_grad()
def measure_equivariance(
    model: Model,
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
    rows = [_volume_errors(equivariance_terms(model, x, k, maxval, output=reference)) for k in shifts]
    return {key: np.array([r[key] for r in rows]) for key in ("nmse", "ssim")}


def dpsnr_from_sse(base_sse, shifted_sse):
    """``|10 log10(base / shifted)|``: |dPSNR| from two squared errors against the same target (the
    data range cancels); 0 where both are 0, inf where only one is."""
    base = torch.as_tensor(base_sse, dtype=torch.float64)
    shifted = torch.as_tensor(shifted_sse, dtype=torch.float64)
    out = (10 * torch.log10(base / shifted)).abs()
    return torch.where((base == 0) & (shifted == 0), torch.zeros_like(out), out)


def _sse(target: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return slice_terms(target, pred, 1.0, with_ssim=False)["sse"]


@torch.no_grad()
def dpsnr_terms(
    model: Model,
    x: torch.Tensor,
    target: torch.Tensor,
    shifts: torch.Tensor,
    output: Optional[torch.Tensor] = None,
    scale: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The terms of the worst-case |dPSNR| (Table 2): per image the squared error of ``G(x)`` against
    ``y`` (``(B,)``) and of ``G(T_k x)`` against ``T_k y`` for each of ``n`` shifts (``(B, n)``),
    float64 on ``x``'s device. ``shifts``: ``(n, d)`` shared by all images or ``(B, n, d)`` per
    image; ``scale`` ``(B,)`` multiplies each image's errors (e.g. ``std**2``: original units)."""
    base = _sse(target, model(x) if output is None else output)
    shifted = []
    for j in range(shifts.shape[-2]):
        k = shifts[:, j] if shifts.dim() == 3 else shifts[j]
        shifted.append(_sse(circular_shift(target, k), model(circular_shift(x, k))))
    sse = torch.stack(shifted, dim=1)
    if scale is not None:
        scale = scale.to(device=base.device, dtype=torch.float64).reshape(-1)
        base, sse = base * scale, sse * scale[:, None]
    return base, sse


def worst_dpsnr_from_terms(base: torch.Tensor, sse: torch.Tensor) -> torch.Tensor:
    """Per image, ``max_k |dPSNR|`` from :func:`dpsnr_terms` (``(B,)``)."""
    return dpsnr_from_sse(base[:, None], sse).amax(dim=1)


def worst_dpsnr_volume_from_terms(base: torch.Tensor, sse: torch.Tensor) -> torch.Tensor:
    """For a volume, ``max_k |dPSNR|`` of its volume PSNR (every slice shifted by the same ``k``)."""
    return dpsnr_from_sse(base.sum(), sse.sum(dim=0)).amax()


@torch.no_grad()
def worst_dpsnr_image(
    model: Model,
    x: torch.Tensor,
    target: torch.Tensor,
    shifts: torch.Tensor,
) -> np.ndarray:
    """Per image, ``max_k |PSNR(G(T_k x), T_k y) - PSNR(G(x), y)|`` over ``shifts`` (Table 2; the
    paper's text). ``x``/``target`` are ``(B, C, *spatial)``; each image is scored on its own."""
    return worst_dpsnr_from_terms(*dpsnr_terms(model, x, target, shifts)).cpu().numpy()


@torch.no_grad()
def worst_dpsnr_volume(
    model: Model,
    x: torch.Tensor,
    target: torch.Tensor,
    shifts: torch.Tensor,
) -> float:
    """``max_k |PSNR_vol(T_k y, G(T_k x)) - PSNR_vol(y, G(x))|`` for the volume ``x`` ``(slices, C,
    *spatial)``, every slice shifted by the same ``k``, PSNR of the whole volume (the paper's
    reference code)."""
    return float(worst_dpsnr_volume_from_terms(*dpsnr_terms(model, x, target, shifts)))


# The name this metric had before the volume convention was added; same function.
worst_case_dpsnr = worst_dpsnr_image
