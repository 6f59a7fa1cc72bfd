"""Invertible building blocks of the iUNet: additive coupling, invertible channel mixing.

Every block has ``forward(x)`` and an exact ``inverse(y)``. Blocks may also implement
``backward_by_inversion(y, grad_y, params)`` -> ``(x, grad_x, grad_params)``: reconstruct the
input from the output and back-propagate in one go (used by the memory-efficient backprop in
:mod:`equinet.models.memory_efficient`; without it the engine inverts and re-runs ``forward``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from equinet.sampling.base import PADDING_MODES
from equinet.sampling.orthogonal import InitSpec, OrthogonalMatrices

__all__ = [
    "AdditiveCoupling",
    "StandardBlock",
    "create_standard_module",
    "InvertibleChannelMixing",
    "InvertibleChannelMixing1D",
    "InvertibleChannelMixing2D",
    "InvertibleChannelMixing3D",
]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_F = {1: nn.functional.conv1d, 2: nn.functional.conv2d, 3: nn.functional.conv3d}
_CONV_T_F = {1: nn.functional.conv_transpose1d, 2: nn.functional.conv_transpose2d, 3: nn.functional.conv_transpose3d}
_CONV_WEIGHT = {1: nn.grad.conv1d_weight, 2: nn.grad.conv2d_weight, 3: nn.grad.conv3d_weight}


class AdditiveCoupling(nn.Module):
    """Additive coupling (NICE; Jacobsen et al. 2018, as used in the iUNet paper, Sec. 4).

    ``x = (x1, x2)`` with ``x1`` the first ``split`` channels;
    ``y = (x2, x1 + F(x2))`` -- the halves swap, so consecutive blocks transform both halves.
    Inverse: ``x2 = y1``, ``x1 = y2 - F(y1)``. ``F`` maps ``C - split`` to ``split`` channels
    and may be any deterministic module (no dropout, no batch statistics).
    """

    def __init__(self, F: nn.Module, split: int) -> None:
        super().__init__()
        self.F = F
        self.split = int(split)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[:, : self.split], x[:, self.split :]
        return torch.cat([x2, x1 + self.F(x2)], dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        c2 = y.shape[1] - self.split
        y1, y2 = y[:, :c2], y[:, c2:]
        return torch.cat([y2 - self.F(y1), y1], dim=1)

    def backward_by_inversion(
        self, y: torch.Tensor, grad_y: torch.Tensor, params: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[Optional[torch.Tensor], ...]]:
        """Reconstruct ``x`` and back-propagate ``grad_y`` evaluating ``F`` once (RevNet trick).

        ``x2 = y1`` is reconstructed bit for bit, so ``F(x2)`` equals the forward's value;
        ``grad_x1 = grad_y2`` and ``grad_x2 = grad_y1 + (dF/dx2)^T grad_y2``.
        """
        c2 = y.shape[1] - self.split
        y1, y2 = y[:, :c2], y[:, c2:]
        g1, g2 = grad_y[:, :c2], grad_y[:, c2:]
        with torch.enable_grad():
            x2 = y1.detach().requires_grad_(True)
            f = self.F(x2)
            grads = torch.autograd.grad(f, [x2, *params], g2, allow_unused=True)
        x1 = y2 - f.detach()
        grad_x2 = g1 if grads[0] is None else g1 + grads[0]
        return torch.cat([x1, y1], dim=1), torch.cat([g2, grad_x2], dim=1), tuple(grads[1:])

    def extra_repr(self) -> str:
        return f"split={self.split}"


class StandardBlock(nn.Module):
    """The coupling function of the iUNet library: ``block_depth`` x (conv -> LeakyReLU ->
    layer norm), with ``zero_init`` setting the last norm's affine map to zero (the paper's
    zero-initialised normalisation: the coupling, and with it the iUNet, starts as identity)."""

    def __init__(
        self,
        dim: int,
        in_channels: int,
        out_channels: int,
        block_depth: int = 1,
        zero_init: bool = True,
        padding_mode: str = "zeros",
        kernel_size: int = 3,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        if padding_mode not in PADDING_MODES + ("replicate",):
            raise ValueError(f"padding_mode must be one of {PADDING_MODES + ('replicate',)}, got {padding_mode!r}")
        if block_depth < 1:
            raise ValueError(f"block_depth must be >= 1, got {block_depth}")
        layers: List[nn.Module] = []
        width = max(in_channels, out_channels)
        for i in range(block_depth):
            cin = in_channels if i == 0 else width
            cout = out_channels if i == block_depth - 1 else width
            conv = _CONV[dim](cin, cout, kernel_size, padding=kernel_size // 2, padding_mode=padding_mode, bias=False)
            nn.init.kaiming_uniform_(conv.weight, a=negative_slope, mode="fan_out", nonlinearity="leaky_relu")
            layers += [conv, nn.LeakyReLU(negative_slope), nn.GroupNorm(1, cout, eps=1e-3)]
        if zero_init:
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)
        self.F = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.F(x)


def create_standard_module(
    in_channels: int,
    *,
    dim: int = 2,
    block_depth: int = 1,
    zero_init: bool = True,
    padding_mode: str = "zeros",
    kernel_size: int = 3,
    module_index: int = 0,
    LR: str = "L",
    level: int = 0,
    architecture: Optional[Sequence[int]] = None,
) -> AdditiveCoupling:
    """Default ``create_module_fn`` of :class:`~equinet.models.iunet.iUNet`: an additive coupling
    with a :class:`StandardBlock`. ``LR``/``level``/``module_index``/``architecture`` are the
    block's coordinates in the iUNet. With ``F = 0`` a coupling swaps its two halves; the split
    alternates along the encoder and the decoder mirrors it (its block ``j`` undoes encoder block
    ``n - 1 - j``), so a zero-initialised iUNet is exactly the identity, odd channel counts included."""
    if in_channels < 2:
        raise ValueError(
            f"an additive coupling needs at least 2 channels, got {in_channels} "
            f"(iUNet level {level}); lift the input to more channels first (equinet.models.LiftediUNet)"
        )
    small, large = in_channels // 2, in_channels - in_channels // 2

    def encoder_split(j: int) -> int:
        return large if j % 2 == 0 else small

    if LR == "R" and architecture is not None:
        split = in_channels - encoder_split(architecture[level] - 1 - module_index)
    else:
        split = encoder_split(module_index)
    block = StandardBlock(dim, in_channels - split, split, block_depth, zero_init, padding_mode, kernel_size)
    return AdditiveCoupling(block, split)


class InvertibleChannelMixing(nn.Module):
    """Orthogonal 1x1 convolution: ``y = Q x`` per pixel, ``inverse(y) = Q^T y``.

    ``Q`` is parametrised like the resampling matrices (``method`` = exp | cayley |
    householder); ``init="identity"`` (default) keeps an identity-initialised iUNet the identity.
    """

    dim: int = 0

    def __init__(
        self,
        in_channels: int,
        method: str = "cayley",
        learnable: bool = True,
        init: InitSpec = "identity",
        n_reflections: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.in_channels = self.out_channels = int(in_channels)
        self.orthogonal = OrthogonalMatrices(1, self.in_channels, method, init, learnable, n_reflections)

    def kernel(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        return self.orthogonal.matrix(dtype).reshape(self.in_channels, self.in_channels, *(1,) * self.dim)

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects (batch, {self.in_channels}, {self.dim} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return _CONV_F[self.dim](x, self.kernel(x.dtype))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        return _CONV_T_F[self.dim](y, self.kernel(y.dtype))

    def backward_by_inversion(self, y, grad_y, params):
        """``x = Q^T y``, ``grad_x = Q^T grad_y``, ``grad_Q`` = 1x1 conv weight gradient."""
        with torch.enable_grad():
            k = self.kernel(y.dtype)
        kd = k.detach()
        x = _CONV_T_F[self.dim](y, kd)
        grad_x = _CONV_T_F[self.dim](grad_y, kd)
        grads = ()
        if params:
            grad_k = _CONV_WEIGHT[self.dim](x, kd.shape, grad_y)
            grads = torch.autograd.grad(k, list(params), grad_k, allow_unused=True)
        return x, grad_x, grads


class InvertibleChannelMixing1D(InvertibleChannelMixing):
    dim = 1


class InvertibleChannelMixing2D(InvertibleChannelMixing):
    dim = 2


class InvertibleChannelMixing3D(InvertibleChannelMixing):
    dim = 3


CHANNEL_MIXING = {1: InvertibleChannelMixing1D, 2: InvertibleChannelMixing2D, 3: InvertibleChannelMixing3D}


def check_invertible(module: nn.Module, name: str) -> None:
    """A block must provide ``forward`` and ``inverse``."""
    if not callable(getattr(module, "inverse", None)):
        raise TypeError(
            f"{name} ({type(module).__name__}) has no inverse(); create_module_fn must return an "
            f"invertible module with forward(x) and inverse(y)"
        )


def unsupported_for_inversion(module: nn.Module, prefix: str = "") -> List[str]:
    """Submodules that make reconstruction-by-inversion wrong: dropout (a fresh random mask
    when the activation is recomputed) and batch norm / instance norm with running statistics
    in training mode (the recomputation would update the running statistics a second time)."""
    bad = []
    for name, m in module.named_modules(prefix=prefix):
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 and m.training:
            bad.append(f"{name} ({type(m).__name__}: random masks differ between forward and recomputation)")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            bad.append(f"{name} ({type(m).__name__}: running statistics would be updated twice)")
        elif isinstance(m, nn.modules.instancenorm._InstanceNorm) and m.track_running_stats and m.training:
            bad.append(f"{name} ({type(m).__name__} with track_running_stats: updated twice)")
    return bad
