"""Adaptive polyphase sampling (APS-D/APS-U) and learnable polyphase sampling (LPS).

Both replace the fixed subsampling D_2 of a stride-2 max-pool by a per-sample choice of the
polyphase component, and put the decoder's upsampled signal back on that same grid, which makes
a circularly padded U-Net exactly shift-equivariant (APS-U paper, Prop. 1-2).

Upsampling with the chosen grid: a transposed convolution (k=2, s=2) equals zero insertion U_2
followed by a 2-tap convolution, and circular shifts commute with convolution, so
``T_k(ConvT(y)) = conv(T_k U_2 y) = conv(U^A(y, k))`` (paper eq. 5). We therefore apply the
learned transposed convolution at low resolution and then shift its output by the phase — the
same operator as "place on grid, then convolve", at a quarter of the cost.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from equinet.sampling.adaptive import (
    SymmetryFrame,
    average_over_symmetries,
    choose_phase,
    exact_values,
    gamma,
    unit_roundoff,
)
from equinet.sampling.base import Downsample, Upsample, register_strategy
from equinet.sampling.layers import BlurFilter, DenseMaxPool, conv_nd, conv_transpose_nd
from equinet.sampling.polyphase import (
    max_norm_choice,
    mix_polyphase,
    polyphase_view,
    roll_mix,
    roll_per_sample,
    select_polyphase,
    unravel_phase,
)


class PolyphaseState(NamedTuple):
    """What a polyphase downsampler hands to its upsampler.

    ``index``: chosen offset per sample, long ``(B, d)``. ``weights``: soft selection
    ``(B, s_1, ..., s_d)`` during LPS training (Gumbel-softmax), else ``None`` (hard choice).
    ``frame``: the samples whose downsampled tensor has a symmetry that moves the grid, and the
    shifts the upsampler averages over (:mod:`equinet.sampling.adaptive`), else ``None``.
    """

    index: torch.Tensor
    weights: Optional[torch.Tensor] = None
    frame: Optional[SymmetryFrame] = None


class APSDown(Downsample):
    """APS-D: dense max -> optional blur -> the polyphase component of largest l_p norm.

    Chaman & Dokmanic (CVPR 2021); APS-U paper Sec. 2: ``i = argmax_j ||y_j||_p``.
    Norms are taken jointly over channels and pixels and accumulated in float64; exact ties
    follow the shift-consistent rule of :func:`~equinet.sampling.polyphase.max_norm_choice`.
    """

    def __init__(self, channels: int, dim: int = 2, filter_size: int = 1, p: float = 2.0,
                 padding_mode: str = "zeros"):
        super().__init__()
        self.out_channels, self.stride, self.p = channels, (2,) * dim, float(p)
        self.max = DenseMaxPool(dim, padding_mode)
        self.blur = BlurFilter(channels, filter_size, stride=1, dim=dim, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, PolyphaseState]:
        h = self.blur(self.max(x))
        choice = max_norm_choice(h, self.stride, self.p)
        state = PolyphaseState(choice.index, frame=choice.frame)
        return select_polyphase(h, choice.index, self.stride), state


class PolyphaseUp(Upsample):
    """APS-U / LPS-U: transposed conv, shift onto the grid the downsampler chose, optional blur.

    Hard state (APS, LPS in eval): ``T_k ConvT(y)`` per sample (eq. 5). Soft state (LPS
    training): ``sum_k w_k T_k ConvT(y)`` with the downsampler's Gumbel-softmax weights. Samples
    whose downsampled map was symmetric get the average over its symmetry shifts (frame
    averaging of this level's sub-network, :mod:`equinet.sampling.adaptive`).
    """

    def __init__(self, in_channels: int, out_channels: int, dim: int = 2, filter_size: int = 1,
                 padding_mode: str = "zeros"):
        super().__init__()
        self.out_channels, self.stride = out_channels, (2,) * dim
        self.conv = conv_transpose_nd(dim)(in_channels, out_channels, 2, stride=2)
        self.blur = BlurFilter(out_channels, filter_size, stride=1, dim=dim, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor, state: PolyphaseState = None) -> torch.Tensor:
        if not isinstance(state, PolyphaseState):
            raise ValueError(
                f"{type(self).__name__} needs the PolyphaseState returned by its downsampler, got {type(state).__name__}"
            )
        z = self.conv(x)
        if state.weights is not None:
            z = roll_mix(z, state.weights, self.stride)
        else:
            z = roll_per_sample(z, state.index, self.stride)
        return average_over_symmetries(self.blur(z), state.frame)


class LPSLogits(nn.Module):
    """Shared scorer of polyphase components (Rojas-Gomez et al., NeurIPS 2022, LPD).

    conv3x3 -> ReLU -> conv3x3 with circular padding applied to every component, then the mean
    over channels and pixels: a shift-invariant score per component, so circularly shifting the
    input permutes the scores exactly as it permutes the components. The pixel mean is
    accumulated in float64 for the same reason as APS norms.
    """

    def __init__(self, channels: int, hidden_channels: int, dim: int = 2):
        super().__init__()
        conv = conv_nd(dim)
        self.net = nn.Sequential(
            conv(channels, hidden_channels, 3, padding=1, padding_mode="circular"),
            nn.ReLU(inplace=True),
            conv(hidden_channels, hidden_channels, 3, padding=1, padding_mode="circular"),
        )

    def scores(self, h: torch.Tensor, stride: Tuple[int, ...]) -> torch.Tensor:
        """The scorer's output on every component, ``(S, B, hidden, n_1, ...)`` (row-major ``S``)."""
        d = len(stride)
        B, C = h.shape[:2]
        v = polyphase_view(h, stride)  # (B, C, n1, s1, n2, s2, ...)
        perm = tuple(3 + 2 * i for i in range(d)) + (0, 1) + tuple(2 + 2 * i for i in range(d))
        comps = v.permute(perm).reshape(-1, C, *v.shape[2::2][:d])  # (S*B, C, n1, ...)
        out = self.net(comps)
        return out.view(-1, B, *out.shape[1:])

    @staticmethod
    def sums(scores: torch.Tensor) -> torch.Tensor:
        """``(B, S)`` sums of :meth:`scores` over channels and pixels, accumulated in float64
        (whatever the scores' dtype: a bfloat16 channel sum would round at 2^-9): what the eval
        choice compares."""
        return scores.flatten(2).sum(dim=2, dtype=torch.float64).t()

    @staticmethod
    def training_sums(scores: torch.Tensor) -> torch.Tensor:
        """:meth:`sums` for the Gumbel-softmax logits: channels summed in the scores' dtype (float32
        at least), pixels in float64 -- no float64 copy of the scores to differentiate through
        (a rounding of the logits that the Gumbel noise swamps)."""
        per_pixel = scores.sum(dim=2, dtype=scores.dtype if scores.dtype == torch.float64 else torch.float32)
        return per_pixel.flatten(2).sum(dim=2, dtype=torch.float64).t()

    def forward(self, h: torch.Tensor, stride: Tuple[int, ...]) -> torch.Tensor:
        """Logits ``(B, s_1 * ... * s_d)``: mean score per component, row-major component order."""
        scores = self.scores(h, stride)
        return self.sums(scores) / scores[0, 0].numel()


class LPSDown(Downsample):
    """LPS-D: dense max -> optional blur -> learned component choice (scored before the blur).

    Training: Gumbel-softmax weights (temperature ``tau``) mix the components (differentiable);
    eval: hard argmax of the logits, with exactly tied logits (a dead scorer, a symmetric map)
    settled by the shift-consistent rule of :mod:`equinet.sampling.adaptive` on the scored map.
    The weights/choice are the state for LPS-U.
    """

    def __init__(self, channels: int, dim: int = 2, filter_size: int = 1, tau: float = 1.0,
                 hidden_channels: Optional[int] = None, padding_mode: str = "zeros"):
        super().__init__()
        if tau <= 0:
            raise ValueError(f"lps tau must be > 0, got {tau}")
        self.out_channels, self.stride, self.tau = channels, (2,) * dim, float(tau)
        self.max = DenseMaxPool(dim, padding_mode)
        self.blur = BlurFilter(channels, filter_size, stride=1, dim=dim, padding_mode=padding_mode)
        self.logits = LPSLogits(channels, hidden_channels or max(8, channels // 4), dim)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, PolyphaseState]:
        m = self.max(x)
        h = self.blur(m)
        # Score the un-blurred components: a symmetric binomial blur gives every polyphase
        # component the same mean (its even and odd taps sum alike), which leaves a
        # mean-dominated scorer with near-ties that rounding, not the signal, would break.
        scores = self.logits.scores(m, self.stride)
        if self.training:
            logits = self.logits.training_sums(scores) / scores[0, 0].numel()
            index = unravel_phase(logits.argmax(dim=1), self.stride)
            weights = F.gumbel_softmax(logits, tau=self.tau, hard=False).to(h.dtype).view(-1, *self.stride)
            return mix_polyphase(h, weights, self.stride), PolyphaseState(index, weights)
        sums = self.logits.sums(scores.detach())
        choice = self._choose(scores.detach(), sums, m.detach())
        state = PolyphaseState(choice.index, frame=choice.frame)
        return select_polyphase(h, choice.index, self.stride), state

    def _choose(self, scores: torch.Tensor, sums: torch.Tensor, m: torch.Tensor):
        """Eval choice: argmax of the score sums with the tie rule; the exact criterion is the exact
        sum of the scorer's outputs over the component. Bound: the ``E`` scores of a component
        (any dtype up to float64) are exact float64 terms, so their float64 sum in any order is
        within ``gamma_{E-1}(2^-53)`` times the sum of ``|scores|`` (Higham, eq. (4.4)); that sum,
        itself rounded, is covered by doubling: ``beta = 2 gamma_{E+1} sum |s|``, about
        ``2 E 1.1e-16`` relative -- computed in float64 whatever the feature dtype."""
        per_component = scores[0, 0].numel()
        S = scores.shape[0]
        magnitude = scores.abs().flatten(2).sum(dim=2, dtype=torch.float64).t()
        bound = 2 * gamma(per_component + 1, unit_roundoff(torch.float64)) * magnitude

        def exact(samples: torch.Tensor):
            rows = scores.index_select(1, samples).transpose(0, 1).reshape(samples.numel() * S, -1)
            return exact_values(rows)

        return choose_phase(sums, bound, exact, m, self.stride)


@register_strategy("aps")
def aps(channels: int, up_channels: int, *, dim: int = 2, padding_mode: str = "zeros",
        filter_size: int = 1, p: float = 2.0):
    """Adaptive polyphase sampling (APS-D/APS-U); ``filter_size`` > 1 adds the APS-j blur."""
    return (APSDown(channels, dim, filter_size, p, padding_mode),
            PolyphaseUp(up_channels, channels, dim, filter_size, padding_mode))


@register_strategy("lps")
def lps(channels: int, up_channels: int, *, dim: int = 2, padding_mode: str = "zeros",
        filter_size: int = 1, tau: float = 1.0, hidden_channels: Optional[int] = None):
    """Learnable polyphase sampling (LPD/LPU): Gumbel-softmax in training, argmax in eval."""
    return (LPSDown(channels, dim, filter_size, tau, hidden_channels, padding_mode),
            PolyphaseUp(up_channels, channels, dim, filter_size, padding_mode))
