"""Classical strategies: max/avg pooling, strided convolution, anti-aliased blur pooling.

Upsampling options shared by ``maxpool``/``avgpool``/``strided_conv`` (``up=...``):
``transposed`` (k=2, s=2, the U-Net default; can leave checkerboard artefacts),
``bilinear``/``nearest`` (resize then 1x1 conv: no checkerboard), ``unpool`` (max-unpooling
at the argmax positions the matching max-pool returned; ``maxpool`` only).
"""

from __future__ import annotations

from typing import Any, Tuple

import torch
import torch.nn.functional as F

from equinet.sampling.base import Downsample, Upsample, register_strategy
from equinet.sampling.layers import (
    _AVG_POOL,
    _MAX_POOL,
    _MAX_UNPOOL,
    BlurFilter,
    DenseMaxPool,
    conv_nd,
    conv_transpose_nd,
)

UP_MODES = ("transposed", "bilinear", "nearest", "unpool")
_RESIZE_MODE = {"bilinear": {1: "linear", 2: "bilinear", 3: "trilinear"}, "nearest": {1: "nearest", 2: "nearest", 3: "nearest"}}


class MaxPoolDown(Downsample):
    """Strided 2x max-pooling; with ``return_indices`` the argmax indices are the state (for unpool)."""

    def __init__(self, channels: int, dim: int = 2, return_indices: bool = False):
        super().__init__()
        self.out_channels, self.stride, self.dim = channels, (2,) * dim, dim
        self.return_indices = return_indices

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        if self.return_indices:
            return _MAX_POOL[self.dim](x, 2, 2, return_indices=True)
        return _MAX_POOL[self.dim](x, 2, 2), None


class AvgPoolDown(Downsample):
    """Strided 2x average pooling."""

    def __init__(self, channels: int, dim: int = 2):
        super().__init__()
        self.out_channels, self.stride, self.dim = channels, (2,) * dim, dim

    def forward(self, x):
        return _AVG_POOL[self.dim](x, 2, 2), None


class StridedConvDown(Downsample):
    """Learned stride-2 convolution (channels preserved), padded like the network's convolutions."""

    def __init__(self, channels: int, dim: int = 2, kernel_size: int = 3, padding_mode: str = "zeros"):
        super().__init__()
        if kernel_size not in (2, 3):
            raise ValueError(f"strided_conv kernel_size must be 2 or 3, got {kernel_size}")
        self.out_channels, self.stride = channels, (2,) * dim
        self.conv = conv_nd(dim)(channels, channels, kernel_size, stride=2, padding=kernel_size // 2 if kernel_size == 3 else 0,
                                 padding_mode=padding_mode)

    def forward(self, x):
        return self.conv(x), None


class BlurPoolDown(Downsample):
    """Anti-aliased max-pooling (LPF-j, Zhang 2019): dense max (stride 1), then blur with stride 2."""

    def __init__(self, channels: int, dim: int = 2, filter_size: int = 3, padding_mode: str = "zeros"):
        super().__init__()
        self.out_channels, self.stride = channels, (2,) * dim
        self.max = DenseMaxPool(dim, padding_mode)
        self.blur = BlurFilter(channels, filter_size, stride=2, dim=dim, padding_mode=padding_mode)

    def forward(self, x):
        return self.blur(self.max(x)), None


class TransposedUp(Upsample):
    """Transposed convolution, kernel 2, stride 2 (the U-Net paper's up-convolution)."""

    def __init__(self, in_channels: int, out_channels: int, dim: int = 2):
        super().__init__()
        self.out_channels = out_channels
        self.conv = conv_transpose_nd(dim)(in_channels, out_channels, 2, stride=2)

    def forward(self, x, state=None):
        return self.conv(x)


class ResizeConvUp(Upsample):
    """2x resize (bilinear/nearest) followed by a 1x1 convolution: no checkerboard artefacts."""

    def __init__(self, in_channels: int, out_channels: int, dim: int = 2, mode: str = "bilinear"):
        super().__init__()
        self.out_channels, self.mode = out_channels, _RESIZE_MODE[mode][dim]
        self.conv = conv_nd(dim)(in_channels, out_channels, 1)

    def forward(self, x, state=None):
        kwargs = {} if self.mode == "nearest" else {"align_corners": False}
        return self.conv(F.interpolate(x, scale_factor=2, mode=self.mode, **kwargs))


class UnpoolUp(Upsample):
    """1x1 conv to the pooled channel count, then max-unpooling at the max-pool's argmax positions."""

    def __init__(self, in_channels: int, out_channels: int, dim: int = 2):
        super().__init__()
        self.out_channels, self.dim = out_channels, dim
        self.conv = conv_nd(dim)(in_channels, out_channels, 1)

    def forward(self, x, state=None):
        if state is None:
            raise ValueError("UnpoolUp needs the argmax indices returned by its MaxPoolDown (state=None given)")
        return _MAX_UNPOOL[self.dim](self.conv(x), state, 2, 2)


class BlurUp(Upsample):
    """Transposed convolution followed by the same binomial blur (stride 1) as the downsampler."""

    def __init__(self, in_channels: int, out_channels: int, dim: int = 2, filter_size: int = 3,
                 padding_mode: str = "zeros"):
        super().__init__()
        self.out_channels = out_channels
        self.conv = conv_transpose_nd(dim)(in_channels, out_channels, 2, stride=2)
        self.blur = BlurFilter(out_channels, filter_size, stride=1, dim=dim, padding_mode=padding_mode)

    def forward(self, x, state=None):
        return self.blur(self.conv(x))


def make_upsampler(up: str, in_channels: int, out_channels: int, dim: int, allow_unpool: bool = False) -> Upsample:
    """The classical upsampler named ``up`` (see module docstring)."""
    if up not in UP_MODES or (up == "unpool" and not allow_unpool):
        allowed = UP_MODES if allow_unpool else UP_MODES[:-1]
        raise ValueError(f"up must be one of {allowed}, got {up!r}" + ("" if allow_unpool else " (unpool needs maxpool)"))
    if up == "transposed":
        return TransposedUp(in_channels, out_channels, dim)
    if up == "unpool":
        return UnpoolUp(in_channels, out_channels, dim)
    return ResizeConvUp(in_channels, out_channels, dim, up)


@register_strategy("maxpool")
def maxpool(channels: int, up_channels: int, *, dim: int = 2, padding_mode: str = "zeros", up: str = "transposed"):
    """Baseline: strided max-pooling down; transposed conv (or bilinear/nearest/unpool) up."""
    return MaxPoolDown(channels, dim, return_indices=up == "unpool"), make_upsampler(up, up_channels, channels, dim, True)


@register_strategy("avgpool")
def avgpool(channels: int, up_channels: int, *, dim: int = 2, padding_mode: str = "zeros", up: str = "transposed"):
    """Strided average pooling down; transposed conv (or bilinear/nearest) up."""
    return AvgPoolDown(channels, dim), make_upsampler(up, up_channels, channels, dim)


@register_strategy("strided_conv")
def strided_conv(channels: int, up_channels: int, *, dim: int = 2, padding_mode: str = "zeros",
                 up: str = "transposed", kernel_size: int = 3):
    """Learned stride-2 convolution down; transposed conv (or bilinear/nearest) up."""
    return (StridedConvDown(channels, dim, kernel_size, padding_mode), make_upsampler(up, up_channels, channels, dim))


@register_strategy("blur")
def blur(channels: int, up_channels: int, *, dim: int = 2, padding_mode: str = "zeros", filter_size: int = 3):
    """Anti-aliased (LPF-j): dense max then binomial blur with stride 2; transposed conv then blur up."""
    return (BlurPoolDown(channels, dim, filter_size, padding_mode),
            BlurUp(up_channels, channels, dim, filter_size, padding_mode))
