"""The contract every down/upsampling strategy follows, and the registry that names them.

A strategy is a *matched pair* built for one U-Net level: a :class:`Downsample` used by the
encoder and an :class:`Upsample` used by the decoder. The downsampler returns ``(y, state)``
and the decoder hands that ``state`` to its upsampler (APS/LPS phase, unpooling indices,
adaptive grid offsets). State is never stored on a module: it would break under DDP,
activation recomputation and two forwards in flight.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import nn

PADDING_MODES = ("zeros", "circular", "reflect")


class Downsample(nn.Module):
    """Encoder half of a strategy: ``forward(x) -> (y, state)``.

    ``out_channels`` is the channel count of ``y`` (pooling keeps channels, orthogonal
    resampling multiplies them by sigma); ``stride`` the per-dimension resolution factor.
    """

    out_channels: int
    stride: Tuple[int, ...]

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Any]:  # pragma: no cover
        raise NotImplementedError


class Upsample(nn.Module):
    """Decoder half of a strategy: ``forward(x, state) -> y`` with ``out_channels`` channels."""

    out_channels: int

    def forward(self, x: torch.Tensor, state: Any = None) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class StrategyInfo:
    """A registered strategy: its factory and the keyword options it accepts."""

    name: str
    factory: Callable[..., Tuple[Downsample, Upsample]]
    options: Tuple[str, ...]
    doc: str


_REGISTRY: Dict[str, StrategyInfo] = {}
_COMMON = ("channels", "up_channels", "dim", "padding_mode")


def register_strategy(name: str):
    """Register ``factory(channels, up_channels, *, dim, padding_mode, **options)`` under ``name``.

    ``channels``: features entering the downsampler (the skip connection of this level);
    ``up_channels``: features entering the upsampler from the coarser level.
    """

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"sampling strategy {name!r} is registered twice")
        params = inspect.signature(factory).parameters
        options = tuple(p for p in params if p not in _COMMON)
        doc = (inspect.getdoc(factory) or "").split("\n")[0]
        _REGISTRY[name] = StrategyInfo(name, factory, options, doc)
        return factory

    return deco


def list_strategies() -> List[str]:
    """Names of all registered strategies (what ``UNet(sampling=...)`` accepts)."""
    _load_builtin()
    return sorted(_REGISTRY)


def strategy_info(name: str) -> StrategyInfo:
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown sampling strategy {name!r}; choose one of {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]


def create_strategy(
    name: str,
    channels: int,
    up_channels: int,
    *,
    dim: int = 2,
    padding_mode: str = "zeros",
    **options: Any,
) -> Tuple[Downsample, Upsample]:
    """Build the (downsampler, upsampler) pair of strategy ``name`` for one U-Net level."""
    info = strategy_info(name)
    if dim not in (1, 2, 3):
        raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise ValueError(
            f"sampling strategy {name!r} does not take option(s) {unknown}; "
            f"it accepts {list(info.options) or 'no options'}"
        )
    return info.factory(channels, up_channels, dim=dim, padding_mode=padding_mode, **options)


# Modules whose import registers the built-in strategies (timm-style registry by import).
_BUILTIN_MODULES = ("equinet.sampling.classical", "equinet.sampling.polyphase_layers", "equinet.sampling.orthogonal")


def _load_builtin() -> None:
    import importlib

    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def as_tuple(value, dim: int, name: str) -> Tuple[int, ...]:
    """Expand an int to a ``dim``-tuple and validate a given tuple's length and values."""
    if isinstance(value, int):
        out = (value,) * dim
    else:
        out = tuple(int(v) for v in value)
    if len(out) != dim or any(v < 1 for v in out):
        raise ValueError(f"{name} must be a positive int or a tuple of {dim} positive ints, got {value!r}")
    return out
