"""The `orthogonal` sampling strategy for the U-Net (registered on import), optionally adaptive:
a shift-consistent per-sample block-grid offset passed to the upsampler as state."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from equinet.sampling.adaptive import PhaseChoice, average_over_symmetries
from equinet.sampling.base import Downsample, Upsample, as_tuple, register_strategy
from equinet.sampling.orthogonal.layers import invertible_downsampling, invertible_upsampling
from equinet.sampling.orthogonal.matrices import InitSpec
from equinet.sampling.polyphase import max_norm_choice


class OrthogonalDownsample(Downsample):
    """Encoder half: orthogonal downsampling, optionally with an adaptive block-grid offset.

    ``forward(x) -> (y, state)``; ``state`` is ``None`` unless ``adaptive``, then the per-sample
    APS-D choice :func:`max_norm_choice` ``(x, stride, p)``: a :class:`PhaseChoice` whose ``index``
    is the block-grid offset (and whose ``frame`` lists symmetric samples, see the upsampler).
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
        adaptive: bool = False,
        p: float = 2.0,
    ) -> None:
        super().__init__()
        self.layer = invertible_downsampling(dim, channels, stride, method, init, learnable, n_reflections)
        self.stride = self.layer.stride
        self.out_channels = self.layer.out_channels
        self.adaptive = bool(adaptive)
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.adaptive:
            return self.layer(x, None), None
        choice = max_norm_choice(x, self.stride, self.p)
        return self.layer(x, choice.index), choice

    def extra_repr(self) -> str:
        return f"adaptive={self.adaptive}, p={self.p}"


class OrthogonalUpsample(Upsample):
    """Decoder half: ``(B, up_channels, n) -> (B, channels, n * stride)``.

    When ``up_channels == channels * sigma`` it is the pure orthogonal upsampling (initialised
    with the downsampler's matrices, so ``up(down(x)) == x`` at initialisation and always with
    ``learnable=False``). Otherwise a learnable 1x1 convolution first maps ``up_channels`` to
    ``channels * sigma`` (like a transposed convolution, every strategy's upsampler returns the
    skip connection's channel count). With an adaptive state (the downsampler's
    :class:`PhaseChoice`, or a bare ``(B, d)`` offset) the result is shifted back by the offset,
    and averaged over the symmetry shifts of the samples its ``frame`` lists.
    """

    def __init__(
        self,
        up_channels: int,
        channels: int,
        dim: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
        adaptive: bool = False,
    ) -> None:
        super().__init__()
        stride_t = as_tuple(stride, dim, "stride")
        high = channels * int(np.prod(stride_t))
        self.project = None
        if up_channels != high:
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dim - 1]
            self.project = conv(up_channels, high, kernel_size=1)
        self.layer = invertible_upsampling(dim, high, stride_t, method, init, learnable, n_reflections)
        self.stride = stride_t
        self.in_channels = up_channels
        self.out_channels = channels
        self.adaptive = bool(adaptive)

    def forward(self, x: torch.Tensor, state: Any = None) -> torch.Tensor:
        if self.adaptive and state is None:
            raise ValueError(
                "adaptive orthogonal upsampling needs the offset its downsampler returned as state"
            )
        if self.project is not None:
            x = self.project(x)
        if not self.adaptive:
            return self.layer(x, None)
        if isinstance(state, torch.Tensor):
            state = PhaseChoice(state)
        return average_over_symmetries(self.layer(x, state.index), state.frame)


@register_strategy("orthogonal")
def orthogonal_strategy(
    channels: int,
    up_channels: int,
    *,
    dim: int,
    padding_mode: str,
    method: str = "cayley",
    init: InitSpec = "haar",
    stride: Union[int, Sequence[int]] = 2,
    learnable: bool = True,
    adaptive: bool = False,
    p: float = 2.0,
    n_reflections: Optional[int] = None,
) -> Tuple[OrthogonalDownsample, OrthogonalUpsample]:
    """Learnable orthogonal (invertible) resampling (iUNet); adaptive=True: shift-equivariant grid choice.

    Channels: the downsampler multiplies them by sigma = prod(stride); the upsampler returns
    ``channels`` (with a 1x1 projection first when ``up_channels != channels * sigma``).
    ``padding_mode`` is unused (no padding: sizes must be divisible by ``stride``).
    """
    down = OrthogonalDownsample(channels, dim, stride, method, init, learnable, n_reflections, adaptive, p)
    up_init = down.layer.orthogonal.init_matrix  # same A_0 (also for init="random")
    up = OrthogonalUpsample(up_channels, channels, dim, stride, method, up_init, learnable, n_reflections, adaptive)
    return down, up
