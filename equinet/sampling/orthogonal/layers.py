"""The layers users know: InvertibleDownsampling{1,2,3}D / InvertibleUpsampling{1,2,3}D
(Definition 3: the upsampling is the downsampling's inverse, with the same matrices)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from equinet.sampling.base import as_tuple
from equinet.sampling.orthogonal.kernels import (
    _BlockDown,
    _Blocks,
    _BlockUp,
    block_down,
    block_up,
    invert_block_down,
    invert_block_up,
    reinterpret,
)
from equinet.sampling.orthogonal.matrices import InitSpec, OrthogonalMatrices
from equinet.sampling.polyphase import roll_per_sample


class _OrthogonalResampling(nn.Module):
    """Shared machinery: ``low_channels`` orthogonal matrices acting on the blocks of the fine side."""

    dim: int = 0
    backward_in_place = True  # backward_by_inversion(..., in_place=True) is supported

    def __init__(
        self,
        low_channels: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.stride = as_tuple(stride, self.dim, "stride")
        self.channel_multiplier = int(np.prod(self.stride))
        self.low_channels = int(low_channels)
        if self.low_channels < 1:
            raise ValueError(f"channels must be >= 1, got {low_channels}")
        self.high_channels = self.low_channels * self.channel_multiplier
        self.method = method
        self.learnable = learnable
        self.orthogonal = OrthogonalMatrices(
            self.low_channels,
            self.channel_multiplier,
            method=method,
            init=init,
            learnable=learnable,
            n_reflections=n_reflections,
            stride=self.stride,
        )

    @property
    def kernel_matrix(self) -> torch.Tensor:
        """The ``(C, sigma, sigma)`` orthogonal matrices."""
        return self.orthogonal.matrix()

    def _check(self, x: torch.Tensor, channels: int, role: str, check_size: bool) -> None:
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"{type(self).__name__} expects a (batch, channels, {self.dim} spatial) tensor, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != channels:
            raise ValueError(
                f"{type(self).__name__} {role} needs {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if check_size:
            bad = [n % s for n, s in zip(x.shape[2:], self.stride)]
            if any(bad):
                raise ValueError(
                    f"{type(self).__name__}: spatial size {tuple(x.shape[2:])} is not divisible by the "
                    f"stride {self.stride}; pad or crop to a multiple of it"
                )

    def _downsample(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check(x, self.low_channels, "input", True)
        if offset is not None:
            x = roll_per_sample(x, offset, self.stride, sign=-1)
        return _BlockDown.apply(x, self.orthogonal.matrix(x.dtype), self.stride)

    def _upsample(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check(y, self.high_channels, "input", False)
        x = _BlockUp.apply(y, self.orthogonal.matrix(y.dtype), self.stride)
        if offset is not None:
            x = roll_per_sample(x, offset, self.stride, sign=+1)
        return x

    # -- in place (no autograd; the memory-efficient backprop runs the iUNet in one buffer) -----
    # Each sample keeps its memory: the result is the input's memory seen with the output shape
    # (``reinterpret``), so the input must have contiguous samples (e.g. a channel slice).

    def _downsample_in_place(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check(x, self.low_channels, "input", True)
        source = x if offset is None else roll_per_sample(x, offset, self.stride, sign=-1)
        geo = _Blocks.of_fine(x, self.stride)
        return block_down(source, self.orthogonal.matrix(x.dtype).detach(), self.stride,
                          out=reinterpret(x, geo.coarse_shape))[0]

    def _upsample_in_place(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check(y, self.high_channels, "input", False)
        geo = _Blocks.of_coarse(y, self.stride)
        a = self.orthogonal.matrix(y.dtype).detach()
        x = block_up(y, a, self.stride, out=reinterpret(y, geo.fine_shape))[0]
        return x if offset is None else x.copy_(roll_per_sample(x, offset, self.stride, sign=+1))

    # -- backward by inversion (memory-efficient backprop, equinet.models.memory_efficient) ---
    # The layer is linear and orthogonal: its input is reconstructed by the inverse map, the
    # input gradient is the adjoint (= inverse) applied to the output gradient, and the matrix
    # gradient is a per-channel gram of the two, pulled back through the parametrisation by
    # autograd. One pass over the blocks does all three.

    def _matrices_for_backward(self, dtype, params):
        with torch.enable_grad():
            a = self.orthogonal.matrix(dtype)
        return a, a.detach()

    def _pull_back(self, a, grad_a, params):
        if not params:
            return ()
        return torch.autograd.grad(a, list(params), grad_a, allow_unused=True)

    def _downsample_backward(self, y, grad_y, params, offset=None, in_place=False):
        """For ``y = down(x, offset)``: ``(x, grad_x, grad_params)`` without storing ``x``
        (``in_place``: in the memory of ``y`` and ``grad_y``, see :func:`reinterpret`)."""
        a, ad = self._matrices_for_backward(y.dtype, params)
        geo = _Blocks.of_coarse(y, self.stride)
        out = (reinterpret(y, geo.fine_shape), reinterpret(grad_y, geo.fine_shape)) if in_place else None
        z, grad_z, grad_a = invert_block_down(y, grad_y, ad, self.stride, bool(params), out)
        if offset is not None:
            z_rolled = roll_per_sample(z, offset, self.stride, sign=+1)
            g_rolled = roll_per_sample(grad_z, offset, self.stride, sign=+1)
            z, grad_z = (z.copy_(z_rolled), grad_z.copy_(g_rolled)) if in_place else (z_rolled, g_rolled)
        return z, grad_z, self._pull_back(a, grad_a, params)

    def _upsample_backward(self, y, grad_y, params, offset=None, in_place=False):
        """For ``y = up(w, offset)``: ``(w, grad_w, grad_params)`` without storing ``w``."""
        geo = _Blocks.of_fine(y, self.stride)
        out = (reinterpret(y, geo.coarse_shape), reinterpret(grad_y, geo.coarse_shape)) if in_place else None
        if offset is not None:  # (rolled copies: the in-place output no longer aliases the source)
            y, grad_y = roll_per_sample(y, offset, self.stride, sign=-1), roll_per_sample(grad_y, offset, self.stride, sign=-1)
        a, ad = self._matrices_for_backward(y.dtype, params)
        w, grad_w, grad_a = invert_block_up(y, grad_y, ad, self.stride, bool(params), out)
        return w, grad_w, self._pull_back(a, grad_a, params)

    def _partner(self, cls):
        """A module of the opposite direction sharing this module's parameters."""
        other = cls.__new__(cls)
        nn.Module.__init__(other)
        for name in ("stride", "channel_multiplier", "low_channels", "high_channels", "method", "learnable"):
            setattr(other, name, getattr(self, name))
        other.orthogonal = self.orthogonal
        other._set_channels()
        return other

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, method={self.method!r}, "
            f"learnable={self.learnable}"
        )


class InvertibleDownsampling(_OrthogonalResampling):
    """Learnable orthogonal downsampling: ``(B, C, N) -> (B, C * sigma, N / stride)``.

    ``forward(x, offset=None)``; ``offset`` (``(B, d)`` long) selects the block grid per sample
    (adaptive resampling). ``inverse(y, offset=None)`` is the exact inverse (transposed conv);
    ``inverse()`` without a tensor returns the matching :class:`InvertibleUpsampling` that shares
    this module's parameters.
    """

    def __init__(
        self,
        in_channels: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
    ) -> None:
        super().__init__(in_channels, stride, method, init, learnable, n_reflections)
        self._set_channels()

    def _set_channels(self) -> None:
        self.in_channels, self.out_channels = self.low_channels, self.high_channels

    def forward(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._downsample(x, offset)

    def inverse(self, y: Optional[torch.Tensor] = None, offset: Optional[torch.Tensor] = None):
        if y is None:
            return self._partner(_UPSAMPLING[self.dim])
        return self._upsample(y, offset)

    def forward_in_place(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`forward` without autograd, in the memory of ``x``."""
        return self._downsample_in_place(x, offset)

    def inverse_in_place(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`inverse` without autograd, in the memory of ``y``."""
        return self._upsample_in_place(y, offset)

    def backward_by_inversion(self, y, grad_y, params, offset=None, in_place=False):
        return self._downsample_backward(y, grad_y, params, offset, in_place)


class InvertibleUpsampling(_OrthogonalResampling):
    """Learnable orthogonal upsampling: ``(B, C, N) -> (B, C / sigma, N * stride)``.

    ``in_channels`` (the coarse side) must be divisible by ``sigma``. The inverse of an
    :class:`InvertibleDownsampling` with the same matrices (Definition 3 of the paper).
    """

    def __init__(
        self,
        in_channels: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
    ) -> None:
        stride_t = as_tuple(stride, self.dim, "stride")
        sigma = int(np.prod(stride_t))
        if in_channels % sigma:
            raise ValueError(
                f"{type(self).__name__}: in_channels={in_channels} is not divisible by the channel "
                f"multiplier {sigma} of stride {stride_t}"
            )
        super().__init__(in_channels // sigma, stride_t, method, init, learnable, n_reflections)
        self._set_channels()

    def _set_channels(self) -> None:
        self.in_channels, self.out_channels = self.high_channels, self.low_channels

    def forward(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._upsample(y, offset)

    def inverse(self, x: Optional[torch.Tensor] = None, offset: Optional[torch.Tensor] = None):
        if x is None:
            return self._partner(_DOWNSAMPLING[self.dim])
        return self._downsample(x, offset)

    def forward_in_place(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`forward` without autograd, in the memory of ``y``."""
        return self._upsample_in_place(y, offset)

    def inverse_in_place(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`inverse` without autograd, in the memory of ``x``."""
        return self._downsample_in_place(x, offset)

    def backward_by_inversion(self, y, grad_y, params, offset=None, in_place=False):
        return self._upsample_backward(y, grad_y, params, offset, in_place)


class InvertibleDownsampling1D(InvertibleDownsampling):
    dim = 1


class InvertibleDownsampling2D(InvertibleDownsampling):
    dim = 2


class InvertibleDownsampling3D(InvertibleDownsampling):
    dim = 3


class InvertibleUpsampling1D(InvertibleUpsampling):
    dim = 1


class InvertibleUpsampling2D(InvertibleUpsampling):
    dim = 2


class InvertibleUpsampling3D(InvertibleUpsampling):
    dim = 3


_DOWNSAMPLING = {1: InvertibleDownsampling1D, 2: InvertibleDownsampling2D, 3: InvertibleDownsampling3D}
_UPSAMPLING = {1: InvertibleUpsampling1D, 2: InvertibleUpsampling2D, 3: InvertibleUpsampling3D}


def invertible_downsampling(dim: int, *args, **kwargs) -> InvertibleDownsampling:
    """``InvertibleDownsampling{dim}D(*args, **kwargs)``."""
    if dim not in _DOWNSAMPLING:
        raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
    return _DOWNSAMPLING[dim](*args, **kwargs)


def invertible_upsampling(dim: int, *args, **kwargs) -> InvertibleUpsampling:
    """``InvertibleUpsampling{dim}D(*args, **kwargs)``."""
    if dim not in _UPSAMPLING:
        raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
    return _UPSAMPLING[dim](*args, **kwargs)
