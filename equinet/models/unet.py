"""The U-Net of the APS-U paper with any down/upsampling strategy at every level.

Encoder level l: [downsample] -> (3x3 conv -> norm -> ReLU) x 2 with ``channels * 2**l``
features; decoder: upsample -> concat with the skip -> (3x3 conv -> norm -> ReLU) x 2; 1x1
head (Ronneberger et al. 2015; APS-U paper Sec. 4). With ``padding_mode="circular"`` and the
``aps``/``lps`` (eval) strategies the network is exactly equivariant to circular shifts
(APS-U paper, Prop. 2).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from equinet.sampling.base import PADDING_MODES, create_strategy
from equinet.sampling.layers import conv_nd

NORMS = ("batch", "instance", "group", "none")


def make_norm(norm: str, channels: int, dim: int) -> nn.Module:
    """Normalisation layer by name; all of them commute with circular shifts."""
    if norm == "batch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](channels)
    if norm == "instance":
        return {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim](channels, affine=True)
    if norm == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> ReLU) x 2, the U-Net's per-level block."""

    def __init__(self, in_channels: int, out_channels: int, dim: int = 2, padding_mode: str = "zeros",
                 norm: str = "batch"):
        conv = conv_nd(dim)
        bias = norm == "none"
        super().__init__(
            conv(in_channels, out_channels, 3, padding=1, padding_mode=padding_mode, bias=bias),
            make_norm(norm, out_channels, dim),
            nn.ReLU(inplace=True),
            conv(out_channels, out_channels, 3, padding=1, padding_mode=padding_mode, bias=bias),
            make_norm(norm, out_channels, dim),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """U-Net with a pluggable sampling strategy (see ``equinet.sampling.list_strategies()``).

    Args:
        in_channels: input channels (1 for magnitude MRI / CT images).
        out_channels: output channels.
        channels: features of the first level (doubled per level), or one count per level
            (``depth + 1`` values, e.g. the paper's ``(64, 128, 256, 512, 1024)``).
        depth: number of down/upsampling steps.
        sampling: strategy name, e.g. ``maxpool``, ``blur``, ``aps``, ``lps``, ``orthogonal``.
        sampling_kwargs: options of the strategy, e.g. ``{"filter_size": 3}``.
        padding_mode: ``zeros`` | ``circular`` | ``reflect`` for every convolution and filter.
        dim: spatial dimensions (1, 2 or 3).
        norm: ``batch`` (paper) | ``instance`` | ``group`` | ``none``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        channels: Union[int, Sequence[int]] = 64,
        depth: int = 4,
        sampling: str = "maxpool",
        sampling_kwargs: Optional[Dict[str, Any]] = None,
        padding_mode: str = "zeros",
        dim: int = 2,
        norm: str = "batch",
    ):
        super().__init__()
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        if isinstance(channels, int):
            widths = [channels * 2**level for level in range(depth + 1)]
        else:
            widths = [int(c) for c in channels]
            if len(widths) != depth + 1:
                raise ValueError(f"channels needs depth + 1 = {depth + 1} values, got {len(widths)}: {widths}")
        self.in_channels, self.out_channels, self.dim, self.depth = in_channels, out_channels, dim, depth
        self.widths = widths
        self.sampling, self.sampling_kwargs = sampling, dict(sampling_kwargs or {})

        self.inc = DoubleConv(in_channels, widths[0], dim, padding_mode, norm)
        self.downs, self.encoders = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        for level in range(depth):
            down, up = create_strategy(sampling, widths[level], widths[level + 1], dim=dim,
                                       padding_mode=padding_mode, **self.sampling_kwargs)
            self.downs.append(down)
            self.encoders.append(DoubleConv(down.out_channels, widths[level + 1], dim, padding_mode, norm))
            self.ups.append(up)
            self.decoders.append(DoubleConv(widths[level] + up.out_channels, widths[level], dim, padding_mode, norm))
        self.head = conv_nd(dim)(widths[0], out_channels, 1)
        factor = [1] * dim
        for down in self.downs:
            factor = [f * s for f, s in zip(factor, down.stride)]
        self.size_multiple: Tuple[int, ...] = tuple(factor)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the problem if the network cannot take ``x``."""
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"UNet(dim={self.dim}) expects a (batch, channels, {self.dim} spatial) tensor with "
                f"{self.dim + 2} dimensions, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_channels:
            raise ValueError(f"UNet(in_channels={self.in_channels}) got {x.shape[1]} input channels (shape {tuple(x.shape)})")
        sizes = tuple(x.shape[2:])
        if any(n % m for n, m in zip(sizes, self.size_multiple)):
            down = tuple(n // m * m for n, m in zip(sizes, self.size_multiple))
            up = tuple(-(-n // m) * m for n, m in zip(sizes, self.size_multiple))
            raise ValueError(
                f"UNet(depth={self.depth}, sampling={self.sampling!r}) needs spatial sizes divisible by "
                f"{self.size_multiple}; got {sizes}. Crop to {tuple(max(d, m) for d, m in zip(down, self.size_multiple))} "
                f"or pad to {up}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h = self.inc(x)
        skips: List[torch.Tensor] = []
        states: List[Any] = []
        for down, encoder in zip(self.downs, self.encoders):
            skips.append(h)
            h, state = down(h)
            states.append(state)
            h = encoder(h)
        for level in reversed(range(self.depth)):
            h = self.ups[level](h, states[level])
            h = self.decoders[level](torch.cat([skips[level], h], dim=1))
        return self.head(h)
