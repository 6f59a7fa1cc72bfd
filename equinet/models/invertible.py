"""Invertible building blocks of the iUNet: additive coupling, invertible channel mixing.

Every block has ``forward(x)`` and an exact ``inverse(y)``. Blocks may also implement
``backward_by_inversion(y, grad_y, params)`` -> ``(x, grad_x, grad_params)``: reconstruct the
input from the output and back-propagate in one go (used by the memory-efficient backprop in
:mod:`equinet.models.memory_efficient`; without it the engine inverts and re-runs ``forward``).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from equinet.sampling.base import PADDING_MODES
from equinet.sampling.orthogonal import InitSpec, OrthogonalMatrices, piece_slices

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

# See AdditiveCoupling: F is recomputed on sub-batches of about this many input elements on the
# CPU (cache-sized pieces); see sub_batch_elements for accelerators.
SUB_BATCH_ELEMENTS = 1 << 17


def sub_batch_elements(device: torch.device) -> int:
    """Input elements per sub-batch of a coupling's ``F`` on ``device``: :data:`SUB_BATCH_ELEMENTS`
    on the CPU; on a CUDA GPU a float32 sub-batch of 1/1024 of its memory (clamped to 2^20..2^26
    elements; about 2^24 on an 80 GB card: ``F``'s activations of one sub-batch then take a few
    hundred MB, and its kernels get enough work to fill the device); 2^22 on other accelerators."""
    if device.type == "cpu":
        return SUB_BATCH_ELEMENTS
    if device.type == "cuda":
        return _cuda_sub_batch_elements(device.index if device.index is not None else torch.cuda.current_device())
    return 1 << 22


@functools.lru_cache(maxsize=None)
def _cuda_sub_batch_elements(index: int) -> int:
    total = torch.cuda.get_device_properties(index).total_memory
    return int(min(1 << 26, max(1 << 20, total // 1024 // 4)))

# Module types that may make a block depend on the batch or on chance (see unsupported_for_inversion).
SUSPECT_TYPES = (
    nn.modules.dropout._DropoutNd,
    nn.modules.batchnorm._BatchNorm,
    nn.modules.instancenorm._InstanceNorm,
)


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

    # The pair methods work on the two halves as separate tensors, so that a chain of couplings
    # (whose splits line up: see create_standard_module) never concatenates; ``inplace`` lets
    # them update a half in place when the caller owns its memory and no graph is recorded.
    #
    # Without a graph (and when back-propagating by inversion) F runs on sub-batches of about
    # SUB_BATCH_ELEMENTS input elements (at least one sample): its intermediate activations, and
    # in the backward pass its graph, then take the memory of one sub-batch, not of the batch.
    # F treats samples independently (no batch statistics, checked), so only memory changes, and
    # every pass uses the same sub-batches: a recomputed F(x2) equals the forward's bit for bit.

    def _sub_batches(self, x: torch.Tensor) -> List[slice]:
        step = max(1, sub_batch_elements(x.device) // max(1, x[:1].numel()))
        if step >= x.shape[0]:
            return [slice(None)]
        if getattr(self, "_suspects", None) is None:  # (found once; their .training is read each time)
            self._suspects = [m for m in self.F.modules() if isinstance(m, SUSPECT_TYPES)]
        if any(unsupported_for_inversion(m) for m in self._suspects):
            return [slice(None)]
        return [slice(b, b + step) for b in range(0, x.shape[0], step)]

    def forward_pair(self, x1: torch.Tensor, x2: torch.Tensor, inplace: bool = False):
        """``(x1, x2) -> (x2, x1 + F(x2))``."""
        if inplace and not torch.is_grad_enabled():
            for s in self._sub_batches(x2):
                x1[s].add_(self.F(x2[s]))
            return x2, x1
        f = self.F(x2)
        return x2, (x1.add_(f) if inplace else x1 + f)

    def inverse_pair(self, y1: torch.Tensor, y2: torch.Tensor, inplace: bool = False):
        """``(y1, y2) -> (y2 - F(y1), y1)``."""
        if inplace and not torch.is_grad_enabled():
            for s in self._sub_batches(y1):
                y2[s].sub_(self.F(y1[s]))
            return y2, y1
        f = self.F(y1)
        return (y2.sub_(f) if inplace else y2 - f), y1

    def backward_pair(
        self, y1, y2, grad_y1, grad_y2, params, inplace: bool = False, inplace_grad: bool = False
    ):
        """Reconstruct ``(x1, x2)`` from ``(y1, y2)`` and back-propagate, evaluating ``F`` once
        (RevNet trick): ``x2 = y1`` bit for bit, so ``F(x2)`` equals the forward's value;
        ``grad_x1 = grad_y2`` and ``grad_x2 = grad_y1 + (dF/dx2)^T grad_y2``. ``inplace`` /
        ``inplace_grad``: ``x1`` / ``grad_x2`` overwrite ``y2`` / ``grad_y1``.
        Returns ``(x1, x2, grad_x1, grad_x2, grad_params)``."""
        x1 = y2 if inplace else y2.clone()
        grad_x2 = grad_y1 if inplace_grad else grad_y1.clone()
        grad_params: List[Optional[torch.Tensor]] = [None] * len(params)
        for s in self._sub_batches(y1):
            with torch.enable_grad():
                x2 = y1[s].detach().contiguous().requires_grad_(True)
                f = self.F(x2)
            grads = torch.autograd.grad(f, [x2, *params], grad_y2[s], allow_unused=True)
            # only now (this graph is spent) may x1 / grad_x2, which can share memory with x2, change
            x1[s].sub_(f.detach())
            del f
            if grads[0] is not None:
                grad_x2[s].add_(grads[0])
            grad_params = [
                g if a is None else a if g is None else a + g for a, g in zip(grad_params, grads[1:])
            ]
        return x1, y1, grad_y2, grad_x2, tuple(grad_params)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.forward_pair(x[:, : self.split], x[:, self.split :]), dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        c2 = y.shape[1] - self.split
        return torch.cat(self.inverse_pair(y[:, :c2], y[:, c2:]), dim=1)

    def backward_by_inversion(
        self, y: torch.Tensor, grad_y: torch.Tensor, params: Sequence[torch.Tensor]
    ) -> Tuple[torch.Tensor, torch.Tensor, Tuple[Optional[torch.Tensor], ...]]:
        """:meth:`backward_pair` on whole tensors: ``(x, grad_x, grad_params)``."""
        c2 = y.shape[1] - self.split
        halves = (y[:, :c2], y[:, c2:], grad_y[:, :c2], grad_y[:, c2:])
        x1, x2, g1, g2, grads = self.backward_pair(*halves, params)
        return torch.cat([x1, x2], dim=1), torch.cat([g1, g2], dim=1), grads

    def extra_repr(self) -> str:
        return f"split={self.split}"


def runs_on_halves(module: nn.Module) -> bool:
    """Whether ``module`` is an additive coupling whose forward, inverse and backward are the pair
    methods (an :class:`~equinet.models.memory_efficient.InvertibleProgram` then runs it on the two
    halves; a subclass that overrides one of them runs on whole tensors)."""
    cls = type(module)
    return isinstance(module, AdditiveCoupling) and all(
        getattr(cls, name) is getattr(AdditiveCoupling, name)
        for name in ("forward", "inverse", "backward_by_inversion")
    )


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
            # in place: the convolution's output is not needed again, so the activation reuses it
            layers += [conv, nn.LeakyReLU(negative_slope, inplace=True), nn.GroupNorm(1, cout, eps=1e-3)]
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
    backward_in_place = True  # backward_by_inversion(..., in_place=True) is supported

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

    def matrix(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """``Q``, ``(C, C)``."""
        return self.orthogonal.matrix(dtype)[0]

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects (batch, {self.in_channels}, {self.dim} spatial dims), "
                f"got shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        return _mix(self.matrix(x.dtype), x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check(y)
        return _mix(self.matrix(y.dtype).t(), y)

    def forward_chunks(self, chunks: Sequence[torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` of the channel concatenation of ``chunks`` without concatenating them
        (autograd keeps the chunks, which the blocks before keep anyway, not a copy of them)."""
        q = self.matrix(chunks[0].dtype)
        out, start = None, 0
        for c in chunks:
            part = q[:, start : start + c.shape[1]].expand(c.shape[0], -1, -1)
            out = torch.bmm(part, _pixels(c)) if out is None else out.baddbmm_(part, _pixels(c))
            start += c.shape[1]
        if start != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} channels, got chunks of {start}"
            )
        return out.view(chunks[0].shape[0], self.in_channels, *chunks[0].shape[2:])

    def _mix_in_place(self, x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        pixels = _pixel_view(x)
        batched = matrix.expand(x.shape[0], *matrix.shape)
        for s in piece_slices(pixels.shape[2], pixels.shape[0] * pixels.shape[1], x.device, in_place=True):
            pixels[:, :, s] = torch.bmm(batched, pixels[:, :, s])
        return x

    def forward_in_place(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` without autograd, overwriting ``x`` (one pixel range at a time)."""
        self._check(x)
        return self._mix_in_place(x, self.matrix(x.dtype).detach())

    def inverse_in_place(self, y: torch.Tensor) -> torch.Tensor:
        """:meth:`inverse` without autograd, overwriting ``y``."""
        self._check(y)
        return self._mix_in_place(y, self.matrix(y.dtype).detach().t())

    def backward_by_inversion(self, y, grad_y, params, in_place: bool = False):
        """``x = Q^T y``, ``grad_x = Q^T grad_y``, ``grad_Q = sum over pixels of grad_y x^T``, one pass
        over pixel ranges; ``in_place``: ``x`` and ``grad_x`` overwrite ``y`` and ``grad_y``."""
        with torch.enable_grad():
            q = self.matrix(y.dtype)
        qt = q.detach().t().expand(y.shape[0], *q.shape)
        x, grad_x = (y, grad_y) if in_place else (torch.empty_like(y), torch.empty_like(grad_y))
        grad_q = q.new_zeros(q.shape) if params else None
        ys, gs, xs, gxs = _pixels(y), _pixels(grad_y), _pixel_view(x), _pixel_view(grad_x)
        for s in piece_slices(ys.shape[2], ys.shape[0] * ys.shape[1], y.device, in_place):
            xp, gp = torch.bmm(qt, ys[:, :, s]), gs[:, :, s]
            if grad_q is not None:
                grad_q += torch.bmm(gp, xp.transpose(1, 2)).sum(0)
            gxp = torch.bmm(qt, gp)
            xs[:, :, s] = xp
            gxs[:, :, s] = gxp
        grads = torch.autograd.grad(q, list(params), grad_q, allow_unused=True) if params else ()
        return x, grad_x, grads


def _mix(matrix: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``matrix @ x`` at every pixel, as a batched matrix product: autograd keeps ``x`` itself
    (a 2D @ 3D ``matmul`` would keep a transposed copy of it)."""
    pixels = _pixels(x)
    return torch.bmm(matrix.expand(x.shape[0], *matrix.shape), pixels).view(x.shape)


def _pixels(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` as ``(B, C, N)``."""
    return t.reshape(t.shape[0], t.shape[1], -1)


def _pixel_view(t: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` as a ``(B, C, N)`` view (to write through)."""
    return t.view(t.shape[0], t.shape[1], -1)


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
