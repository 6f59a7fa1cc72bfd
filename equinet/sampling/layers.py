"""Small building blocks shared by the strategies: N-d conv classes, binomial blur, dense max-pool."""

from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import nn

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_MAX_UNPOOL = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}
_CONV_F = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def conv_nd(dim: int):
    return _CONV[dim]


def conv_transpose_nd(dim: int):
    return _CONV_T[dim]


def conv_function(dim: int):
    """``F.conv1d`` / ``F.conv2d`` / ``F.conv3d``."""
    return _CONV_F[dim]


def pad_mode(padding_mode: str) -> str:
    """Padding for the fixed (non-learned) filters: wrap for a circular network, else replicate.

    Replicate rather than reflect so that a 5-tap blur still works on the 2-pixel maps at the
    bottom of a deep U-Net (reflect needs the pad to be smaller than the map).
    """
    return "circular" if padding_mode == "circular" else "replicate"


def _pad_end(x: torch.Tensor, amount: int, dim: int, mode: str) -> torch.Tensor:
    return F.pad(x, (0, amount) * dim, mode=mode)


def binomial_filter(size: int) -> torch.Tensor:
    """Normalised 1D binomial filter of ``size`` taps (Zhang 2019's LPF-j: [1], [1,1], [1,2,1], ...)."""
    if not 1 <= size <= 7:
        raise ValueError(f"filter_size must be in 1..7, got {size}")
    taps = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    return taps / taps.sum()


class BlurFilter(nn.Module):
    """Depthwise binomial low-pass filter (anti-aliasing, Zhang 2019), optionally strided.

    The kernel is the outer product of :func:`binomial_filter` over the spatial dims. Padding
    ``((f-1)//2, ceil((f-1)/2))`` keeps the size before the stride, as in Zhang's BlurPool.
    ``filter_size == 1`` is the identity (then only the stride applies).
    """

    def __init__(self, channels: int, filter_size: int = 3, stride: int = 1, dim: int = 2,
                 padding_mode: str = "zeros"):
        super().__init__()
        self.channels, self.filter_size, self.stride, self.dim = channels, filter_size, stride, dim
        self.mode = pad_mode(padding_mode)
        taps = binomial_filter(filter_size)
        kernel = taps
        for _ in range(dim - 1):
            kernel = kernel[..., None] * taps
        kernel = kernel.to(torch.get_default_dtype())
        self.register_buffer("kernel", kernel.expand(channels, 1, *kernel.shape).clone(), persistent=False)
        lo = (filter_size - 1) // 2
        self.pad = (lo, filter_size - 1 - lo) * dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.filter_size == 1:
            if self.stride == 1:
                return x
            return x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * self.dim]
        x = F.pad(x, self.pad, mode=self.mode)
        return _CONV_F[self.dim](x, self.kernel.to(x.dtype), stride=self.stride, groups=self.channels)

    def extra_repr(self) -> str:
        return f"{self.channels}, filter_size={self.filter_size}, stride={self.stride}, padding={self.mode}"


class _NeighbourMax(torch.autograd.Function):
    """``out[i] = max(p[i], p[i + 1])`` along ``dim`` (``p`` one longer there than ``out``).

    Native stride-1 max-pooling is ~15x slower than this on CPU; the backward routes each
    gradient to the winning neighbour (ties to the first, like max-pooling).
    """

    @staticmethod
    def forward(ctx, p: torch.Tensor, dim: int) -> torch.Tensor:
        n = p.shape[dim] - 1
        a, b = p.narrow(dim, 0, n), p.narrow(dim, 1, n)
        # a float 0/1 mask: bool-tensor arithmetic is several times slower on CPU
        first = torch.ge(a, b, out=torch.empty(a.shape, dtype=p.dtype, device=p.device))
        ctx.save_for_backward(first)
        ctx.dim = dim
        return torch.maximum(a, b)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (first,) = ctx.saved_tensors
        dim, n = ctx.dim, grad.shape[ctx.dim]
        shape = list(grad.shape)
        shape[dim] += 1
        out = grad.new_empty(shape)
        # out[i] = grad[i] * first[i] + grad[i - 1] * (1 - first[i - 1]), written in place (both
        # products are exact: the mask is 0 or 1)
        torch.mul(grad, first, out=out.narrow(dim, 0, n))
        out.narrow(dim, n, 1).zero_()
        out.narrow(dim, 1, n).addcmul_(grad, torch.sub(1, first))
        return out, None


class DenseMaxPool(nn.Module):
    """Max over a 2-wide window at stride 1 (same size out): strided max-pool = this + D_2.

    The APS-U paper decomposes a stride-2 max-pool into this dense max followed by plain
    subsampling D_2 (Sec. 2, footnote 1); APS/LPS/blur replace only the D_2 part.
    """

    def __init__(self, dim: int = 2, padding_mode: str = "zeros"):
        super().__init__()
        self.dim, self.mode = dim, pad_mode(padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = _pad_end(x, 1, self.dim, self.mode)
        for d in range(x.dim() - self.dim, x.dim()):
            p = _NeighbourMax.apply(p, d)
        return p


def spatial_shape(x: torch.Tensor, dim: int) -> Tuple[int, ...]:
    return tuple(x.shape[-dim:])
