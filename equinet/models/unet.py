"""The U-Net of the APS-U paper with any down/upsampling strategy at every level.

Encoder level l: [downsample] -> (3x3 conv -> norm -> ReLU) x 2 with ``channels * 2**l``
features; decoder: upsample -> concat with the skip -> (3x3 conv -> norm -> ReLU) x 2; 1x1
head (Ronneberger et al. 2015; APS-U paper Sec. 4). With ``padding_mode="circular"`` and the
``aps``/``lps`` (eval) strategies the network is exactly equivariant to circular shifts
(APS-U paper, Prop. 2).

``layout="fastmri"`` builds fastMRI's U-Net (``fastmri.models.Unet``, Zbontar et al. 2018) around
the same strategies: bias-free 3x3 convs -> affine-free InstanceNorm -> LeakyReLU(0.2) ->
Dropout2d per block, every upsampler followed by InstanceNorm + LeakyReLU (its convolution
bias-free), the upsampled map concatenated before the skip, 1x1 head with bias. With a
floor-pooling strategy (``avgpool``, ``maxpool``) it also takes fastMRI's odd sizes: pooling floors
them and the upsampled map is reflect-padded by one pixel at the end of each odd axis, as
``fastmri.models.Unet`` does. :meth:`UNet.from_fastmri` carries a fastMRI model's weights over.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from equinet.sampling.adaptive import decide_once, stateful_modules
from equinet.sampling.base import PADDING_MODES, create_strategy
from equinet.sampling.layers import conv_nd

NORMS = ("batch", "instance", "group", "none")
LAYOUTS = ("equinet", "fastmri")
# strategies whose 2x pooling floors odd sizes as fastMRI's avg_pool2d does (the fastMRI layout
# then takes odd sizes the way fastMRI does)
FLOOR_POOLING = ("avgpool", "maxpool")
FASTMRI_NEGATIVE_SLOPE = 0.2  # fastMRI's LeakyReLU
_DROPOUT = {1: nn.Dropout1d, 2: nn.Dropout2d, 3: nn.Dropout3d}


def make_norm(norm: str, channels: int, dim: int, affine: bool = True) -> nn.Module:
    """Normalisation layer by name; all of them commute with circular shifts. ``affine=False``
    (instance norm only): fastMRI's InstanceNorm without learned scale and shift."""
    if norm == "batch":
        return {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dim](channels)
    if norm == "instance":
        return {1: nn.InstanceNorm1d, 2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}[dim](channels, affine=affine)
    if norm == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def make_activation(layout: str) -> nn.Module:
    """The layout's nonlinearity: ReLU (U-Net paper) or fastMRI's LeakyReLU(0.2)."""
    if layout == "fastmri":
        return nn.LeakyReLU(FASTMRI_NEGATIVE_SLOPE, inplace=True)
    return nn.ReLU(inplace=True)


class DoubleConv(nn.Sequential):
    """(3x3 conv -> norm -> activation [-> dropout]) x 2, the U-Net's per-level block.

    ``layout="fastmri"``: fastMRI's ``ConvBlock`` (affine-free instance norm, LeakyReLU(0.2));
    ``drop_prob > 0`` adds channel dropout (``Dropout2d`` in 2D) after each activation.
    """

    def __init__(self, in_channels: int, out_channels: int, dim: int = 2, padding_mode: str = "zeros",
                 norm: str = "batch", layout: str = "equinet", drop_prob: float = 0.0):
        conv = conv_nd(dim)
        bias = norm == "none"
        layers: List[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers += [conv(channels, out_channels, 3, padding=1, padding_mode=padding_mode, bias=bias),
                       make_norm(norm, out_channels, dim, affine=layout != "fastmri"),
                       make_activation(layout)]
            if drop_prob > 0:
                layers.append(_DROPOUT[dim](drop_prob))
        super().__init__(*layers)


def _drop_conv_biases(module: nn.Module) -> None:
    """Remove the bias of every convolution in ``module`` (a norm follows, which cancels it)."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and m.bias is not None:
            m.bias = None


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
        norm: ``batch`` (paper) | ``instance`` | ``group`` | ``none``; ``None``: the layout's
            (``batch`` for ``equinet``; the ``fastmri`` layout has fastMRI's affine-free instance norm).
        layout: ``equinet`` (the APS-U paper's U-Net) or ``fastmri`` (``fastmri.models.Unet``'s
            blocks around the same strategy; see the module docstring and :meth:`from_fastmri`).
        drop_prob: channel-dropout probability after every block activation (fastMRI's
            ``drop_prob``); 0 adds no dropout layers.
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
        norm: Optional[str] = None,
        layout: str = "equinet",
        drop_prob: float = 0.0,
    ):
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        if layout == "fastmri" and norm not in (None, "instance"):
            raise ValueError(f"layout='fastmri' has fastMRI's affine-free instance norm; got norm={norm!r} "
                             "(leave norm unset)")
        norm = norm or ("instance" if layout == "fastmri" else "batch")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
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
        self.padding_mode, self.norm, self.layout, self.drop_prob = padding_mode, norm, layout, float(drop_prob)
        block = dict(dim=dim, padding_mode=padding_mode, norm=norm, layout=layout, drop_prob=drop_prob)

        self.inc = DoubleConv(in_channels, widths[0], **block)
        self.downs, self.encoders = nn.ModuleList(), nn.ModuleList()
        self.ups, self.decoders = nn.ModuleList(), nn.ModuleList()
        # fastMRI layout: norm + activation after every upsampler (fastMRI's TransposeConvBlock)
        self.up_norms = nn.ModuleList()
        for level in range(depth):
            down, up = create_strategy(sampling, widths[level], widths[level + 1], dim=dim,
                                       padding_mode=padding_mode, **self.sampling_kwargs)
            self.downs.append(down)
            self.encoders.append(DoubleConv(down.out_channels, widths[level + 1], **block))
            self.ups.append(up)
            self.decoders.append(DoubleConv(widths[level] + up.out_channels, widths[level], **block))
            if layout == "fastmri":
                _drop_conv_biases(up)
                self.up_norms.append(nn.Sequential(make_norm(norm, up.out_channels, dim, affine=False),
                                                   make_activation(layout)))
        self.head = conv_nd(dim)(widths[0], out_channels, 1)
        factor = [1] * dim
        for down in self.downs:
            factor = [f * s for f, s in zip(factor, down.stride)]
        self.total_stride: Tuple[int, ...] = tuple(factor)
        # fastMRI's odd sizes: floor pooling + reflect padding take any size of >= 1 pixel per level
        self.pads_odd_sizes = layout == "fastmri" and sampling in FLOOR_POOLING
        self._stateful: Optional[List[nn.Module]] = None
        self.size_multiple: Tuple[int, ...] = (1,) * dim if self.pads_odd_sizes else self.total_stride

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
        if self.pads_odd_sizes and any(n < m for n, m in zip(sizes, self.total_stride)):
            raise ValueError(
                f"UNet(depth={self.depth}, layout='fastmri') halves each axis {self.depth} times (odd sizes "
                f"rounded down), so it needs spatial sizes of at least {self.total_stride}; got {sizes}"
            )
        if any(n % m for n, m in zip(sizes, self.size_multiple)):
            down = tuple(n // m * m for n, m in zip(sizes, self.size_multiple))
            up = tuple(-(-n // m) * m for n, m in zip(sizes, self.size_multiple))
            raise ValueError(
                f"UNet(depth={self.depth}, sampling={self.sampling!r}) needs spatial sizes divisible by "
                f"{self.size_multiple}; got {sizes}. Crop to {tuple(max(d, m) for d, m in zip(down, self.size_multiple))} "
                f"or pad to {up}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x -> y``; the adaptive grid choices of all levels are checked on the host once, at the
        end (:func:`~equinet.sampling.adaptive.decide_once`: at most one host sync)."""
        self.check_input(x)
        stateful = getattr(self, "_stateful", None)
        if stateful is None:  # (found once; their .training is read each call)
            stateful = self._stateful = stateful_modules(self)
        return decide_once(lambda: self._forward(x), stateful, x.device)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
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
            if self.layout == "fastmri":
                h = pad_like_fastmri(self.up_norms[level](h), skips[level])
                h = torch.cat([h, skips[level]], dim=1)
            else:
                h = torch.cat([skips[level], h], dim=1)
            h = self.decoders[level](h)
        return self.head(h)

    @classmethod
    def from_fastmri(cls, model_or_state_dict: Any, sampling: str = "avgpool",
                     sampling_kwargs: Optional[Dict[str, Any]] = None, padding_mode: str = "zeros",
                     drop_prob: Optional[float] = None) -> "UNet":
        """fastMRI's U-Net (a ``fastmri.models.Unet``, its ``state_dict``, or a ``UnetModule``
        checkpoint dict) as an equinet ``UNet(layout="fastmri")`` with ``sampling``, its weights
        carried over by name (:mod:`equinet.models.fastmri_compat` maps the names).

        ``sampling="avgpool"`` with ``padding_mode="zeros"`` computes what the fastMRI model does
        (odd sizes included); ``aps``/``lps`` with ``padding_mode="circular"`` is the same network made
        exactly shift-equivariant (APS-U paper, Prop. 2), to be fine-tuned. ``drop_prob`` defaults to
        the model's (a module's attribute, a checkpoint's ``hyper_parameters``), else 0.
        """
        from equinet.models.fastmri_compat import fastmri_architecture, fastmri_weights, load_fastmri_state_dict

        state_dict, hparams = fastmri_weights(model_or_state_dict)
        arch = fastmri_architecture(state_dict)
        if drop_prob is None:
            drop_prob = float(hparams.get("drop_prob") or 0.0)
        unet = cls(arch["in_chans"], arch["out_chans"], channels=arch["chans"], depth=arch["num_pool_layers"],
                   sampling=sampling, sampling_kwargs=sampling_kwargs, padding_mode=padding_mode,
                   layout="fastmri", drop_prob=drop_prob)
        unet.to(dtype=next(iter(state_dict.values())).dtype)
        load_fastmri_state_dict(unet, state_dict)
        return unet

    def to_fastmri_state_dict(self) -> Dict[str, torch.Tensor]:
        """The weights as a ``fastmri.models.Unet`` state dict (``layout="fastmri"``, ``avgpool``,
        zero padding only); see :func:`equinet.models.fastmri_compat.to_fastmri_state_dict`."""
        from equinet.models.fastmri_compat import to_fastmri_state_dict

        return to_fastmri_state_dict(self)


def pad_like_fastmri(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Reflect-pad ``x`` by one pixel at the end of every axis where it is one shorter than ``skip``
    (an odd size the pooling floored), as ``fastmri.models.Unet`` does before concatenating."""
    pad: List[int] = []
    for n, m in zip(reversed(x.shape[2:]), reversed(skip.shape[2:])):
        pad += [0, m - n]
    return F.pad(x, pad, mode="reflect") if any(pad) else x
