"""The fully invertible U-Net (iUNet; Etmann, Ke & Schönlieb 2020) with memory-efficient backprop.

Left side, level ``i`` (paper eq. 8): invertible blocks ``Phi^L_i``, then a channel split into a
skip part ``c_i`` and a part that is invertibly downsampled. Right side (eq. 9): invertible
upsampling, concatenation with ``c_i``, blocks ``Phi^R_i``. Every piece is invertible, so
``iUNet.inverse`` is exact and training reconstructs activations by inversion instead of
storing them (:mod:`equinet.models.memory_efficient`): memory does not grow with the number
of blocks per level.

Adaptive orthogonal resampling (``adaptive_resampling=True``, new in equinet): at level ``i``
the block-grid offset ``k_i`` is chosen per sample by the APS-D criterion (largest polyphase l_p
norm) evaluated on the skip tensor ``c_i``. The downsampling uses grid ``k_i`` and the upsampling
of the same level shifts back by ``k_i``. Because ``c_i`` travels unchanged to the decoder, the
inverse recomputes ``k_i`` from the recovered ``c_i``: the network stays a bijection of tensors
(no side information), and with circular padding in the blocks it is exactly equivariant to
*all* circular shifts, not just to multiples of the total downsampling factor -- on every input
whose grid choices are *decided* (:meth:`iUNet.grid_choices_decided`).

The recovered ``c_i`` equals the forward's only up to rounding, so the choice
(:func:`~equinet.sampling.polyphase.invertible_phase`) decides only by margins that rounding
cannot cross: the largest norm, or among norms tied within the margin the best correlation with
a neighbouring pixel, must win by ``t sqrt(A_max E)`` (``t = 128 eps``, ``A`` the component
norms, ``E`` the energy of the level). Those decisions are exact comparisons of exact sums, so
they move with any shift. Otherwise the first tied grid is taken: invertible, not equivariant.
Exactly the following inputs fall there: those with, at some level, two grids whose skip
components agree within the margin in norm and in every neighbour correlation -- every input
whose skip has a symmetry that moves the grid (constant, striped, checkerboard, ramp, half-plane
patterns, an all-zero skip), and skips too weak next to their level for the reconstruction to
tell their components apart.

Why no rule can do better on a skip with such a symmetry (``T_j c = c``, ``j`` not in the stride
lattice ``s Z^d``). The inverse must know ``k_i`` before it can undo the downsampling of the
other channels, and has only ``c_i`` to compute it from, so ``k_i = k(c_i)``; and one grid per
level is what makes the inverse a layer-by-layer computation (averaging the level over several
grids, as the U-Net strategies do, would leave a nonlinear equation to solve). Then
``k(T_j c) = k(c)`` cannot move with ``j``, and equivariance fails already on an input that is
itself ``T_j``-invariant: take ``d = 1``, one downsampling with stride 2 and Haar matrices, the
input ``x = 0`` (so ``T_1 x = x``) and a coarse coupling whose function ``F`` outputs a nonzero
constant ``b`` (zero convolution weights and the group norm's bias ``b``). Whatever grid is
chosen, the coarse tensor is zero, the coupling turns its (mean, detail) channels into
``(0, b)``, and the Haar upsampling turns that into the alternating pattern ``+-b / sqrt(2)``:
``G(0)`` is not ``T_1``-invariant, so ``G(T_1 0) = G(0) != T_1 G(0)``. The grid only decides
where the pattern starts; no choice makes it vanish (``tests/test_ties.py`` builds this network).
So equinet keeps the exact inverse and makes every decided choice -- ties without symmetry
included -- exactly equivariant.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from equinet.models.invertible import (
    CHANNEL_MIXING,
    SUSPECT_TYPES,
    check_invertible,
    create_standard_module,
    unsupported_for_inversion,
)
from equinet.models.memory_efficient import InvertibleProgram, MemoryEfficientBackprop, Step
from equinet.sampling.adaptive import decide_once, stateful_modules
from equinet.sampling.base import PADDING_MODES
from equinet.sampling.orthogonal import InitSpec, invertible_downsampling, invertible_upsampling

__all__ = [
    "iUNet",
    "LiftediUNet",
    "ChannelPlan",
    "ChannelPlanWarning",
    "closest_channel_plan",
    "doubling_channel_plan",
]

log = logging.getLogger(__name__)


StrideSpec = Union[int, Sequence[int], List[Union[int, Sequence[int]]]]


class ChannelPlanWarning(UserWarning):
    """The requested iUNet channels cannot be realised exactly; the closest plan is used."""


@dataclass(frozen=True)
class ChannelPlan:
    """Channels per level and the split at every downsampling (skip / downsampled)."""

    desired: Tuple[int, ...]
    channels: Tuple[int, ...]
    skipped: Tuple[int, ...]
    downsampled: Tuple[int, ...]
    relative_errors: Tuple[float, ...]  # |achieved - desired| / desired for levels 1..m-1

    @property
    def exact(self) -> bool:
        return self.channels == self.desired

    @property
    def mean_relative_error(self) -> float:
        return float(np.mean(self.relative_errors)) if self.relative_errors else 0.0


def _split_levels(first: int, channel_multipliers: Sequence[int], skip_rule):
    """Walk the levels: keep ``skip_rule(i, C_i, sigma_i)`` channels (clamped to ``[1, C_i - 1]``)
    as skip, downsample the rest; returns (channels per level, skipped, downsampled)."""
    channels, skipped, down = [first], [], []
    for i, sigma in enumerate(channel_multipliers):
        c = channels[-1]
        if c < 2:
            raise ValueError(
                f"iUNet level {i} has {c} channel(s) but must split them into a skip part and a "
                f"downsampled part (>= 2 channels); use more channels (a 1x1 lift, as in LiftediUNet)"
            )
        skip = min(max(1, skip_rule(i, c, sigma)), c - 1)
        skipped.append(skip)
        down.append(c - skip)
        channels.append(sigma * (c - skip))
    return channels, skipped, down


def closest_channel_plan(desired: Sequence[int], channel_multipliers: Sequence[int]) -> ChannelPlan:
    """The "closest achievable channels" plan of the iUNet library.

    Level ``i+1`` has ``sigma_i * (C_i - skip_i)`` channels, where ``skip_i`` channels of level
    ``i`` are kept as skip connection. ``skip_i = round(C_i - desired_{i+1} / sigma_i)`` (exact
    rational arithmetic, ties to even like ``numpy.round``), clamped to ``[1, C_i - 1]``.
    The reported mean relative error is over the levels the plan chooses (all but the input);
    the iUNet library averages over all but the coarsest level instead (identical for the
    tutorial's example, 0.1527).
    """
    desired = tuple(int(c) for c in desired)
    if len(desired) != len(channel_multipliers) + 1:
        raise ValueError(
            f"need one channel count per level: {len(channel_multipliers) + 1} levels, got channels={desired}"
        )
    if any(c < 1 for c in desired):
        raise ValueError(f"channel counts must be positive, got {desired}")
    channels, skipped, down = _split_levels(
        desired[0], channel_multipliers,
        lambda i, c, sigma: round(Fraction(c) - Fraction(desired[i + 1], sigma)),
    )
    errors = tuple(abs(a - d) / d for a, d in zip(channels[1:], desired[1:]))
    return ChannelPlan(desired, tuple(channels), tuple(skipped), tuple(down), errors)


def doubling_channel_plan(in_channels: int, channel_multipliers: Sequence[int]) -> ChannelPlan:
    """The plan for ``channels=<int>`` (the library's ``in_channels`` with ``slice_mode="double"``):
    keep ``skip_i = max(1, floor(C_i (sigma_i - 2) / sigma_i))`` channels as skip, so each level
    has (as close as possible) twice the channels of the previous one. ``desired`` is set to the
    realised channels (there is nothing to warn about)."""
    channels, skipped, down = _split_levels(
        int(in_channels), channel_multipliers, lambda i, c, sigma: (c * (sigma - 2)) // sigma
    )
    return ChannelPlan(tuple(channels), tuple(channels), tuple(skipped), tuple(down), (0.0,) * len(skipped))


def _format_strides(stride: StrideSpec, dim: int, n: int) -> List[Tuple[int, ...]]:
    """``2`` | ``(2, 1, 3)`` | ``[(2, 1, 3), 2, (4, 3, 1)]`` -> one ``dim``-tuple per downsampling."""

    def one(s, where):
        if isinstance(s, (int, np.integer)):
            t = (int(s),) * dim
        elif isinstance(s, (tuple, list)) and all(isinstance(v, (int, np.integer)) for v in s):
            t = tuple(int(v) for v in s)
        else:
            t = ()
        if len(t) != dim or any(v < 1 for v in t):
            raise ValueError(
                f"resampling_stride{where} must be a positive int or a tuple of {dim} positive ints, got {s!r}; "
                f"formats: 2, (2, 1, 3) or a list with one entry per downsampling, e.g. [(2, 1, 3), 2, (4, 3, 1)]"
            )
        return t

    if isinstance(stride, list):
        if len(stride) != n:
            raise ValueError(
                f"resampling_stride as a list needs one entry per downsampling ({n} = len(architecture) - 1), "
                f"got {len(stride)}: {stride!r}"
            )
        return [one(s, f"[{i}]") for i, s in enumerate(stride)]
    return [one(stride, "")] * n


class iUNet(nn.Module):  # noqa: N801 - the name its users know
    """Fully invertible U-Net with memory-efficient backprop (API of the ``iunets`` library).

    Args:
        channels: desired channels per level (``len(architecture)`` entries; the closest
            achievable plan is used and a :class:`ChannelPlanWarning` says so), or an int:
            the input channels, (about) doubling per level (the library's ``in_channels`` with
            ``slice_mode="double"``). ``self.channels`` holds the realised plan.
        architecture: invertible blocks per level (on each side), e.g. ``(2, 2, 2, 2)``.
        dim: 1, 2 or 3 spatial dimensions.
        create_module_fn: ``fn(channels, dim=, LR=, level=, module_index=, architecture=,
            **module_kwargs)`` returning a module with ``forward`` and ``inverse``; default: an
            additive coupling with conv -> LeakyReLU -> layer norm
            (:func:`~equinet.models.invertible.create_standard_module`; ``module_kwargs``:
            ``block_depth``, ``zero_init`` (default True: the whole iUNet is the identity at
            initialisation), ``padding_mode`` ('zeros' | 'circular' | 'reflect' | 'replicate'),
            ``kernel_size``).
        learnable_resampling, resampling_stride, resampling_method, resampling_init:
            the orthogonal up/downsampling (see :mod:`equinet.sampling.orthogonal`); the stride is
            an int, a per-dimension tuple or a list with one of those per downsampling.
        resampling_kwargs: ``n_reflections`` (householder), ``p`` (adaptive criterion, default 2).
        adaptive_resampling: choose each level's block grid per sample (shift-equivariant where
            :meth:`grid_choices_decided`, exactly invertible always).
        learnable_channel_mixing, channel_mixing_freq, channel_mixing_method,
        channel_mixing_kwargs: orthogonal 1x1 convolutions; ``freq=-1``: one before every split
            and after every concatenation, ``n > 0``: after every n-th block, ``0``: none.
        padding_mode: ``None`` (default): inputs whose size is not divisible by
            ``downsampling_factors`` raise a ``ValueError``; otherwise a ``torch.nn.functional.pad``
            mode to pad evenly (then ``revert_input_padding`` crops the output back; the inverse of
            a padded forward is exact only for the padded tensor).
        disable_custom_gradient: use plain backprop (store activations) instead of reconstruction.
        verbose: 0 -> plan deviations are only logged; >= 1 -> also a warning.
    """

    def __init__(
        self,
        channels: Union[int, Sequence[int]],
        architecture: Sequence[int],
        dim: int = 2,
        create_module_fn: Callable[..., nn.Module] = create_standard_module,
        module_kwargs: Optional[dict] = None,
        learnable_resampling: bool = True,
        resampling_stride: StrideSpec = 2,
        resampling_method: str = "cayley",
        resampling_init: InitSpec = "haar",
        resampling_kwargs: Optional[dict] = None,
        adaptive_resampling: bool = False,
        learnable_channel_mixing: bool = True,
        channel_mixing_freq: int = -1,
        channel_mixing_method: str = "cayley",
        channel_mixing_kwargs: Optional[dict] = None,
        padding_mode: Optional[str] = None,
        padding_value: float = 0.0,
        revert_input_padding: bool = True,
        disable_custom_gradient: bool = False,
        verbose: int = 1,
    ) -> None:
        super().__init__()
        if dim not in (1, 2, 3):
            raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
        architecture = tuple(int(a) for a in architecture)
        if not architecture or any(a < 0 for a in architecture):
            raise ValueError(f"architecture must be a non-empty sequence of block counts >= 0, got {architecture}")
        m = len(architecture)
        self.dim, self.architecture, self.num_levels = dim, architecture, m
        self.resampling_stride = _format_strides(resampling_stride, dim, m - 1)
        self.channel_multipliers = [int(np.prod(s)) for s in self.resampling_stride]
        self.downsampling_factors = tuple(
            int(np.prod([s[a] for s in self.resampling_stride])) for a in range(dim)
        )
        if isinstance(channels, (int, np.integer)):
            self.plan = doubling_channel_plan(int(channels), self.channel_multipliers)
            desired = self.plan.desired
        else:
            desired = tuple(int(c) for c in channels)
            if len(desired) != m:
                raise ValueError(
                    f"channels needs one entry per level ({m} = len(architecture)), got {len(desired)}: {desired}"
                )
            self.plan = closest_channel_plan(desired, self.channel_multipliers)
        self.channels = self.plan.channels
        self.skipped_channels = list(self.plan.skipped)
        self.channels_before_downsampling = list(self.plan.downsampled)
        self.verbose = verbose
        self._report_plan(desired)

        self.adaptive_resampling = bool(adaptive_resampling)
        resampling_kwargs = dict(resampling_kwargs or {})
        self.adaptive_p = float(resampling_kwargs.pop("p", 2.0))
        n_reflections = resampling_kwargs.pop("n_reflections", None)
        if resampling_kwargs:
            raise ValueError(f"unknown resampling_kwargs {sorted(resampling_kwargs)}; accepted: n_reflections, p")
        self.resampling_method, self.resampling_init = resampling_method, resampling_init
        self.padding_mode, self.padding_value = padding_mode, padding_value
        self.revert_input_padding = revert_input_padding
        self.disable_custom_gradient = disable_custom_gradient
        module_kwargs = dict(module_kwargs or {})
        mixing = CHANNEL_MIXING[dim]
        mixing_kwargs = dict(channel_mixing_kwargs or {})

        def mix(c):
            return mixing(c, method=channel_mixing_method, learnable=learnable_channel_mixing, **mixing_kwargs)

        self.encoder_modules = nn.ModuleList()
        self.decoder_modules = nn.ModuleList()
        self.downsampling_layers = nn.ModuleList()
        self.upsampling_layers = nn.ModuleList()
        for i, n_blocks in enumerate(architecture):
            c = self.channels[i]
            enc, dec = nn.ModuleList(), nn.ModuleList()
            for side, seq in (("L", enc), ("R", dec)):
                if side == "R" and channel_mixing_freq == -1 and i < m - 1:
                    seq.append(mix(c))  # right after the concatenation
                for j in range(n_blocks):
                    block = create_module_fn(
                        c, dim=dim, LR=side, level=i, module_index=j, architecture=architecture, **module_kwargs
                    )
                    check_invertible(block, f"create_module_fn(level={i}, LR={side!r}, module_index={j})")
                    seq.append(block)
                    if channel_mixing_freq > 0 and (j + 1) % channel_mixing_freq == 0:
                        seq.append(mix(c))
                if side == "L" and channel_mixing_freq == -1 and i < m - 1:
                    seq.append(mix(c))  # right before the split
            self.encoder_modules.append(enc)
            self.decoder_modules.append(dec)
            if i < m - 1:
                stride = self.resampling_stride[i]
                down = invertible_downsampling(
                    dim, self.channels_before_downsampling[i], stride, resampling_method,
                    resampling_init, learnable_resampling, n_reflections,
                )
                # The upsampling starts as the exact inverse of the downsampling (same A_0), so an
                # identity-initialised iUNet is the identity.
                up_init = resampling_init
                if not isinstance(resampling_init, str) or resampling_init == "random":
                    up_init = down.orthogonal.init_matrix
                up = invertible_upsampling(
                    dim, self.channels[i + 1], stride, resampling_method, up_init, learnable_resampling, n_reflections
                )
                self.downsampling_layers.append(down)
                self.upsampling_layers.append(up)
        self._build_programs()
        if not disable_custom_gradient:
            self._check_supported()

    # ------------------------------------------------------------------------------------------
    def _report_plan(self, desired: Tuple[int, ...]) -> None:
        if self.plan.exact:
            log.debug("iUNet channels %s", self.channels)
            return
        msg = (
            f"Could not exactly create an iUNet with channels={desired} and "
            f"resampling_stride={self.resampling_stride}. Instead using closest achievable "
            f"configuration: channels={self.channels}. "
            f"Average relative error: {self.plan.mean_relative_error:.4f}"
        )
        log.info(msg)
        if self.verbose:
            warnings.warn(msg, ChannelPlanWarning, stacklevel=3)

    def _build_programs(self) -> None:
        m = self.num_levels
        enc: List[Step] = []
        for i in range(m):
            enc += [Step("apply", b, name=f"encoder[{i}][{j}]") for j, b in enumerate(self.encoder_modules[i])]
            if i < m - 1:
                enc.append(Step("split", split=self.skipped_channels[i], name=f"split[{i}]"))
                enc.append(
                    Step("down", self.downsampling_layers[i], adaptive=self.adaptive_resampling,
                         p=self.adaptive_p, name=f"down[{i}]")
                )
        dec: List[Step] = []
        for i in reversed(range(m)):
            if i < m - 1:
                dec.append(
                    Step("up", self.upsampling_layers[i], adaptive=self.adaptive_resampling,
                         p=self.adaptive_p, name=f"up[{i}]")
                )
                dec.append(Step("concat", split=self.skipped_channels[i], name=f"concat[{i}]"))
            dec += [Step("apply", b, name=f"decoder[{i}][{j}]") for j, b in enumerate(self.decoder_modules[i])]
        self._encoder_program = InvertibleProgram(enc)
        self._decoder_program = InvertibleProgram(dec)
        self._program = InvertibleProgram(enc + dec)

    def _check_supported(self) -> None:
        # Cheap on every training forward: only the blocks of suspect types are re-checked
        # (their .training flag may have changed); the full scan runs once.
        if getattr(self, "_suspects", None) is None:
            self._suspects = []
            for i in range(self.num_levels):
                for side in ("encoder_modules", "decoder_modules"):
                    for name, m in getattr(self, side)[i].named_modules(prefix=f"{side}.{i}"):
                        if isinstance(m, SUSPECT_TYPES):
                            self._suspects.append((name, m))
        bad = []
        for name, m in self._suspects:
            bad += unsupported_for_inversion(m, name)
        if bad:
            raise ValueError(
                "memory-efficient backprop reconstructs activations by inversion and cannot support: "
                + "; ".join(bad)
                + ". Use GroupNorm/LayerNorm/InstanceNorm (without running stats) and no dropout inside "
                "invertible blocks, or pass disable_custom_gradient=True (plain backprop)."
            )

    # ------------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, what: str) -> None:
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"iUNet(dim={self.dim}) expects a (batch, channels, {self.dim} spatial dims) {what}, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.channels[0]:
            raise ValueError(
                f"iUNet {what} must have {self.channels[0]} channels (channels[0]), got {x.shape[1]} "
                f"(shape {tuple(x.shape)}); use LiftediUNet to map other channel counts"
            )

    @property
    def size_multiple(self) -> Tuple[int, ...]:
        """Per-axis sizes inputs must be divisible by (the U-Net's name): ``downsampling_factors``,
        or all ones when ``padding_mode`` pads any size."""
        return (1,) * self.dim if self.padding_mode is not None else self.downsampling_factors

    def get_padding(self, x: torch.Tensor) -> Tuple[List[int], List[int]]:
        """Padded size and ``F.pad`` padding (split evenly) to make ``x`` divisible."""
        shape = list(x.shape[2:])
        padded = [-(-n // f) * f for n, f in zip(shape, self.downsampling_factors)]
        total = [p - n for n, p in zip(shape, padded)]
        pad: List[int] = []
        for t in reversed(total):  # F.pad takes the last dimension first
            pad += [t - t // 2, t // 2]
        return padded, pad

    def _pad(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[List[int]]]:
        padded, pad = self.get_padding(x)
        if padded == list(x.shape[2:]):
            return x, None
        if self.padding_mode is None:
            example = tuple(padded)
            raise ValueError(
                f"iUNet: spatial size {tuple(x.shape[2:])} is not divisible by the total downsampling "
                f"factors {self.downsampling_factors} (resampling_stride={self.resampling_stride}); use a "
                f"size that is, e.g. {example}, or pass padding_mode='constant' | 'reflect' | 'replicate' | "
                f"'circular' to pad automatically"
            )
        if self.padding_mode == "constant":
            return F.pad(x, pad, mode="constant", value=self.padding_value), pad
        return F.pad(x, pad, mode=self.padding_mode), pad

    def _crop(self, x: torch.Tensor, pad: Optional[List[int]]) -> torch.Tensor:
        if pad is None or not self.revert_input_padding:
            return x
        index = [slice(None), slice(None)]
        for a in range(self.dim):
            before, after = pad[2 * (self.dim - 1 - a)], pad[2 * (self.dim - 1 - a) + 1]
            index.append(slice(before, x.shape[2 + a] - after))
        return x[tuple(index)]

    def uses_custom_gradient(self, *inputs: torch.Tensor) -> bool:
        """Whether a call now would back-propagate by inversion (memory-efficient)."""
        if self.disable_custom_gradient or not torch.is_grad_enabled():
            return False
        return any(t.requires_grad for t in inputs) or any(p.requires_grad for p in self.parameters())

    def _execute(self, program: InvertibleProgram, inputs: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.uses_custom_gradient(*inputs):
            if self.training:
                self._check_supported()
            params = program.params()
            return list(MemoryEfficientBackprop.apply(program, len(inputs), *inputs, *params))
        return program.run(list(inputs))

    # ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The iUNet map ``x -> y`` (same shape)."""
        self._check_input(x, "input")
        x, pad = self._pad(x)
        y = decide_once(lambda: self._execute(self._program, [x])[0], self._stateful_modules(), x.device)
        return self._crop(y, pad)

    def _stateful_modules(self) -> List[nn.Module]:
        """(Found once: what a redo of :func:`~equinet.sampling.adaptive.decide_once` restores.)"""
        stateful = getattr(self, "_stateful", None)
        if stateful is None:
            stateful = self._stateful = stateful_modules(self)
        return stateful

    @torch.no_grad()
    def grid_choices_decided(self, x: torch.Tensor) -> torch.Tensor:
        """Per sample, whether every adaptive grid choice of ``forward(x)`` was decided by its margin
        (bool ``(B,)``; all True without ``adaptive_resampling``). Where True, ``forward`` is exactly
        equivariant to every circular shift of ``x`` (module docstring); the inverse is exact
        either way."""
        self._check_input(x, "input")
        x, _ = self._pad(x)
        decided: List[torch.Tensor] = []
        self._program.run([x], decided=decided)
        if not decided:
            return torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        return torch.stack(decided).all(dim=0)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """The exact inverse: ``inverse(forward(x)) == x`` up to rounding (plain autograd)."""
        self._check_input(y, "inverse input")
        y, pad = self._pad(y)
        x = decide_once(lambda: self._program.run_inverse([y])[0], self._stateful_modules(), y.device)
        return self._crop(x, pad)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """The left side: ``(c_0, ..., c_{m-2}, x_bottom)`` (skip tensors and the coarsest code)."""
        self._check_input(x, "input")
        x, pad = self._pad(x)
        if pad is not None:
            raise ValueError("encode() takes inputs divisible by downsampling_factors; pad them first")
        return tuple(decide_once(lambda: self._execute(self._encoder_program, [x]), self._stateful_modules(),
                                 x.device))

    def decode(self, *codes: torch.Tensor) -> torch.Tensor:
        """The right side: ``decode(*encode(x)) == forward(x)``."""
        if len(codes) != self.num_levels:
            raise ValueError(f"decode() needs {self.num_levels} codes (encode()'s output), got {len(codes)}")
        return decide_once(lambda: self._execute(self._decoder_program, list(codes))[0], self._stateful_modules(),
                           codes[0].device)

    def layout(self) -> str:
        """Text layout like the ``iunets`` library: ``C-C-(skip/down)`` per level, mirrored."""
        rows = []
        for i, n in enumerate(self.architecture):
            c = str(self.channels[i])
            left = "-".join([c] * n)
            split = ""
            if i < self.num_levels - 1:
                split = f"({self.skipped_channels[i]}/{self.channels_before_downsampling[i]})"
            rows.append((left, split))
        width = max(len(left) + len(split) for left, split in rows) * 2 + 4 * self.num_levels + 2
        out = []
        for i, (left, split) in enumerate(rows):
            lhs = "-" * (2 * i) + "-".join(t for t in (left, split) if t)
            rhs = "-".join(t for t in (split, left) if t) + "-" * (2 * i)
            out.append(lhs + "-" * max(2, width - len(lhs) - len(rhs)) + rhs)
        return "\n".join(out)

    def print_layout(self) -> None:
        print(self.layout())

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, architecture={self.architecture}, dim={self.dim}, "
            f"resampling_stride={self.resampling_stride}, adaptive_resampling={self.adaptive_resampling}, "
            f"disable_custom_gradient={self.disable_custom_gradient}"
        )


class LiftediUNet(nn.Module):  # noqa: N801
    """iUNet between a linear lift and a linear projection (paper, Fig. 5 and Sec. 3.1).

    A drop-in network for the reconstruction LightningModule, with the U-Net's signature:
    ``(in_channels, out_channels, channels, depth, ...)``. The lift maps ``in_channels`` to
    ``channels`` features; the iUNet has ``depth`` downsamplings (``depth + 1`` levels, desired
    channels ``channels * 2**i``) and ``architecture`` blocks per level and side; the projection
    maps back to ``out_channels``. Linear layers store no activation the iUNet does not already
    keep, so training memory stays independent of the number of blocks. ``padding_mode`` is the
    convolution padding inside the blocks and of the lift and projection ('circular' for exact
    shift equivariance with ``adaptive_resampling=True``). Inputs must be divisible by
    ``size_multiple``.

    ``linear_kernel_size``: the lift's and the projection's kernel (1: the paper's 1x1 layers;
    3: each also sees its 3x3 neighbourhood, still linear). ``identity_init`` (with
    ``in_channels == out_channels``): the projection starts as the pseudo-inverse of the lift
    (centre tap; the other taps of both start at zero), so with zero-initialised couplings
    (``zero_init``) the whole network starts as the identity, as the paper's iUNet does for
    post-processing (Sec. 4.1): training learns a correction of the input.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Union[int, Sequence[int]] = 64,
        depth: int = 4,
        architecture: Union[int, Sequence[int]] = 2,
        dim: int = 2,
        resampling_stride: StrideSpec = 2,
        resampling_method: str = "cayley",
        resampling_init: InitSpec = "haar",
        learnable_resampling: bool = True,
        adaptive_resampling: bool = False,
        padding_mode: str = "zeros",
        block_depth: int = 1,
        zero_init: bool = True,
        disable_custom_gradient: bool = False,
        verbose: int = 1,
        iunet_kwargs: Optional[dict] = None,
        identity_init: bool = True,
        linear_kernel_size: int = 1,
    ) -> None:
        super().__init__()
        if depth < 0:
            raise ValueError(f"depth must be >= 0, got {depth}")
        k = int(linear_kernel_size)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"linear_kernel_size must be odd and >= 1 (the output keeps the input's size), got {k}")
        if padding_mode not in PADDING_MODES + ("replicate",):
            raise ValueError(f"padding_mode must be one of {PADDING_MODES + ('replicate',)}, got {padding_mode!r}")
        levels = depth + 1
        if isinstance(architecture, (int, np.integer)):
            architecture = (int(architecture),) * levels
        if isinstance(channels, (int, np.integer)):
            channels = tuple(int(channels) * 2**i for i in range(levels))
        self.in_channels, self.out_channels, self.dim = in_channels, out_channels, dim
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dim - 1]
        linear = dict(kernel_size=k, padding=k // 2, padding_mode=padding_mode)
        self.lift = conv(in_channels, int(channels[0]), **linear)
        self.iunet = iUNet(
            channels,
            architecture,
            dim=dim,
            module_kwargs={"block_depth": block_depth, "zero_init": zero_init, "padding_mode": padding_mode},
            learnable_resampling=learnable_resampling,
            resampling_stride=resampling_stride,
            resampling_method=resampling_method,
            resampling_init=resampling_init,
            adaptive_resampling=adaptive_resampling,
            disable_custom_gradient=disable_custom_gradient,
            verbose=verbose,
            **dict(iunet_kwargs or {}),
        )
        self.project = conv(self.iunet.channels[0], out_channels, **linear)
        if identity_init and in_channels == out_channels:
            self._init_as_inverse_of_lift()

    @torch.no_grad()
    def _init_as_inverse_of_lift(self) -> None:
        """project(lift(x)) = x: the lift keeps its random centre tap ``W`` (other taps zero), the
        projection gets ``W^+`` there and the bias ``-W^+ b`` (``W^+ W = I``: ``W`` has full column rank)."""
        centre = (slice(None), slice(None)) + (self.lift.kernel_size[0] // 2,) * self.dim
        weight = self.lift.weight[centre].clone()  # (channels, in_channels)
        pinv = torch.linalg.pinv(weight.double())
        self.lift.weight.zero_()
        self.lift.weight[centre] = weight
        self.project.weight.zero_()
        self.project.weight[centre] = pinv.to(weight.dtype)
        self.project.bias.copy_(-(pinv @ self.lift.bias.double()).to(weight.dtype))

    @property
    def downsampling_factors(self) -> Tuple[int, ...]:
        return self.iunet.downsampling_factors

    @property
    def size_multiple(self) -> Tuple[int, ...]:
        """Per-axis sizes inputs must be divisible by, as the U-Net names it (the iUNet's)."""
        return self.iunet.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.dim + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"LiftediUNet expects (batch, {self.in_channels}, {self.dim} spatial dims), got shape {tuple(x.shape)}"
            )
        return self.project(self.iunet(self.lift(x)))
