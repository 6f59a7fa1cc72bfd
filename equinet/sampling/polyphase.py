"""Polyphase primitives shared by APS, LPS and adaptive orthogonal resampling (torch only).

For a stride ``s`` (one entry per spatial dimension) the *polyphase components* of ``x`` are
``x_k(n) = x(s*n + k)`` for every offset ``k`` in ``[0, s_1) x ... x [0, s_d)``
(APS-U paper, Sec. 3.2). Everything here is vectorised over the batch: one offset per sample,
no Python loop over samples, any device.
"""

from __future__ import annotations

import itertools
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

from equinet.sampling.layers import conv_function


def _check_divisible(x: torch.Tensor, stride: Sequence[int]) -> None:
    sizes = tuple(x.shape[2:])
    if len(sizes) != len(stride):
        raise ValueError(
            f"expected a (batch, channels, {len(stride)} spatial dims) tensor for stride {tuple(stride)}, "
            f"got shape {tuple(x.shape)}"
        )
    bad = [n for n, s in zip(sizes, stride) if n % s]
    if bad:
        raise ValueError(
            f"spatial size {sizes} is not divisible by the stride {tuple(stride)}; "
            f"pad or crop to a multiple of it"
        )


def polyphase_view(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """View ``(B, C, N_1, ..., N_d)`` as ``(B, C, N_1/s_1, s_1, ..., N_d/s_d, s_d)`` (no copy)."""
    _check_divisible(x, stride)
    shape = list(x.shape[:2])
    for n, s in zip(x.shape[2:], stride):
        shape += [n // s, s]
    return x.reshape(shape)


def _offset_dims(d: int) -> Tuple[int, ...]:
    return tuple(3 + 2 * i for i in range(d))


def polyphase_norms(x: torch.Tensor, stride: Sequence[int], p: float = 2.0) -> torch.Tensor:
    """l_p norm (to the power p) of every polyphase component, jointly over channels and pixels.

    Returns a float64 tensor ``(B, s_1, ..., s_d)``. The per-pixel sum over channels is done in
    the input dtype (it does not depend on where the pixel sits, so a circular shift merely
    permutes it); the sum over pixels, whose order a shift changes, is accumulated in float64.
    So a shift of ``x`` cannot flip which component is largest unless two norms truly tie,
    and no full-size float64 copy is made (that cast costs more than the rest of APS-D).
    """
    # (keepdim=False then unsqueeze: the keepdim reduction kernel is ~3x slower on CPU)
    if p == float("inf"):
        per_pixel = x.abs().amax(dim=1)
    elif p == 2:
        per_pixel = torch.linalg.vecdot(x, x, dim=1)  # one fused pass over x
    elif p == 1:
        per_pixel = x.abs().sum(dim=1)
    else:
        per_pixel = x.abs().pow(p).sum(dim=1)
    per_pixel = per_pixel.unsqueeze(1)
    d = len(stride)
    reduce_dims = (1,) + tuple(2 + 2 * i for i in range(d))
    view = polyphase_view(per_pixel, stride)
    if p == float("inf"):
        return view.amax(dim=reduce_dims).to(torch.float64)
    return view.sum(dim=reduce_dims, dtype=torch.float64)


def max_norm_phase(x: torch.Tensor, stride: Sequence[int], p: float = 2.0) -> torch.Tensor:
    """APS-D choice: per sample, the offset ``(k_1..k_d)`` of the component with largest l_p norm.

    Returns a long tensor ``(B, d)``. Exact ties resolve to the first offset in row-major
    order (the APS paper's caveat: ties have probability zero for continuous data).
    """
    norms = polyphase_norms(x, stride, p)
    return unravel_phase(norms.flatten(1).argmax(dim=1), stride)


def unravel_phase(flat: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Row-major flat component number ``(B,)`` -> per-dimension offsets ``(B, d)``."""
    out = []
    for s in reversed(tuple(stride)):
        out.append(flat % s)
        flat = torch.div(flat, s, rounding_mode="floor")
    return torch.stack(out[::-1], dim=1)


def ravel_phase(index: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Per-dimension offsets ``(B, d)`` -> row-major flat component number ``(B,)``."""
    flat = torch.zeros_like(index[:, 0])
    for i, s in enumerate(stride):
        flat = flat * s + index[:, i]
    return flat


def _advanced_index(xv: torch.Tensor, index: torch.Tensor) -> tuple:
    d = index.shape[1]
    idx = [slice(None)] * xv.dim()
    idx[0] = torch.arange(xv.shape[0], device=index.device)
    for i, dim in enumerate(_offset_dims(d)):
        idx[dim] = index[:, i]
    return tuple(idx)


class _SelectPolyphase(torch.autograd.Function):
    """y = x_k per sample; backward places the gradient back on grid k (no accumulate needed)."""

    @staticmethod
    def forward(ctx, x, index, stride):
        ctx.save_for_backward(index)
        ctx.stride = stride
        xv = polyphase_view(x, stride)
        return xv[_advanced_index(xv, index)]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _PlacePolyphase.apply(grad, index, ctx.stride), None, None


class _PlacePolyphase(torch.autograd.Function):
    """Zero-insertion onto grid k per sample (APS-U eq. 5); backward selects component k."""

    @staticmethod
    def forward(ctx, y, index, stride):
        ctx.save_for_backward(index)
        ctx.stride = stride
        B, C = y.shape[:2]
        full = [n * s for n, s in zip(y.shape[2:], stride)]
        out = y.new_zeros((B, C, *full))
        ov = polyphase_view(out, stride)
        ov[_advanced_index(ov, index)] = y
        return out

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _SelectPolyphase.apply(grad, index, ctx.stride), None, None


def select_polyphase(x: torch.Tensor, index: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Polyphase component ``index[b]`` of each sample: ``y_b(n) = x_b(s*n + index[b])``."""
    return _SelectPolyphase.apply(x, index, tuple(stride))


def place_polyphase(y: torch.Tensor, index: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Adaptive polyphase upsampling U^A(y, k) = T_k U_s(y) (APS-U paper eq. 5): zeros elsewhere."""
    return _PlacePolyphase.apply(y, index, tuple(stride))


def _per_sample_conv(x: torch.Tensor, kernels: torch.Tensor, stride: Sequence[int] = (1,)) -> torch.Tensor:
    """Depthwise correlation of every channel of sample ``b`` with ``kernels[b]`` (``(B, *k)``): one
    grouped convolution over the batch folded into the channels (no pass per phase)."""
    B, C = x.shape[:2]
    k = kernels.shape[1:]
    weight = kernels.to(x.dtype).unsqueeze(1).expand(B, C, *k).reshape(B * C, 1, *k)
    out = conv_function(len(k))(x.reshape(1, B * C, *x.shape[2:]), weight, stride=tuple(stride), groups=B * C)
    return out.view(B, C, *out.shape[2:])


def mix_polyphase(x: torch.Tensor, weights: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Convex combination ``sum_k w_k x_k`` of the components (LPS training, Gumbel-softmax).

    ``weights`` has shape ``(B, s_1, ..., s_d)``; a one-hot ``weights`` gives ``select_polyphase``.
    (A strided correlation of each sample with its weights: ``sum_k w_k x(s n + k)``.)
    """
    _check_divisible(x, stride)
    return _per_sample_conv(x, weights, stride)


def roll_per_sample(x: torch.Tensor, shifts: torch.Tensor, periods: Sequence[int], sign: int = 1) -> torch.Tensor:
    """Circularly shift each sample by its own offsets: ``out_b = T_{sign * shifts[b]} x_b``.

    ``shifts`` is ``(B, d)`` with ``0 <= shifts[:, i] < periods[i]`` (offsets are phases, so
    ``periods`` is the stride); ``sign=-1`` undoes ``sign=+1``. No loop over samples: on the CPU
    the samples are grouped by their shift (at most ``prod(periods)`` groups) and each group is
    moved in one pass of block copies; elsewhere ``sum(periods) - d`` masked rolls (no host sync).
    """
    d = len(periods)
    if shifts.shape != (x.shape[0], d):
        raise ValueError(f"shifts must have shape ({x.shape[0]}, {d}), got {tuple(shifts.shape)}")
    if x.device.type == "cpu":
        return _RollPerSample.apply(x, shifts, sign)
    return _masked_rolls(x, shifts, periods, sign)


def _masked_rolls(x: torch.Tensor, shifts: torch.Tensor, periods: Sequence[int], sign: int) -> torch.Tensor:
    d = len(periods)
    view = (-1,) + (1,) * (x.dim() - 1)
    for i in range(d):
        dim = x.dim() - d + i
        rolled = x
        for v in range(1, periods[i]):
            mask = (shifts[:, i] == v).view(view)
            rolled = torch.where(mask, x.roll(sign * v, dims=dim), rolled)
        x = rolled
    return x


def _roll_into(out: torch.Tensor, x: torch.Tensor, shift: Sequence[int]) -> None:
    """``out = torch.roll(x, shift, last len(shift) dims)`` as ``2^d`` block copies (one pass)."""
    pieces = []
    for n, s in zip(x.shape[x.dim() - len(shift):], shift):
        s %= n
        pieces.append([(slice(None), slice(None))] if s == 0 else
                      [(slice(s, None), slice(0, n - s)), (slice(0, s), slice(n - s, None))])
    for parts in itertools.product(*pieces):
        out[(Ellipsis, *(p[0] for p in parts))].copy_(x[(Ellipsis, *(p[1] for p in parts))])


class _RollPerSample(torch.autograd.Function):
    """:func:`roll_per_sample` on the CPU; the backward rolls the gradient back."""

    @staticmethod
    def forward(ctx, x, shifts, sign):
        ctx.save_for_backward(shifts)
        ctx.sign = sign
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        values, group = torch.unique(shifts, dim=0, return_inverse=True)
        if len(values) == 1:
            _roll_into(out, x, [sign * v for v in values[0].tolist()])
            return out
        for g, value in enumerate(values.tolist()):
            members = (group == g).nonzero().flatten()
            part = x.index_select(0, members)
            rolled = torch.empty_like(part)
            _roll_into(rolled, part, [sign * v for v in value])
            out.index_copy_(0, members, rolled)
        return out

    @staticmethod
    def backward(ctx, grad):
        (shifts,) = ctx.saved_tensors
        return _RollPerSample.apply(grad, shifts, -ctx.sign), None, None


def roll_mix(z: torch.Tensor, weights: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """``sum_k w_k T_k z`` over all phases ``k``: the soft partner of :func:`roll_per_sample`
    (a circular correlation of each sample with its flipped weights)."""
    d = len(stride)
    pad = [v for s in reversed(tuple(stride)) for v in (s - 1, 0)]
    padded = F.pad(z, pad, mode="circular") if any(pad) else z
    return _per_sample_conv(padded, weights.flip(tuple(range(1, d + 1))))
