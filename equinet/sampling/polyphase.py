"""Polyphase primitives shared by APS, LPS and adaptive orthogonal resampling (torch only).

For a stride ``s`` (one entry per spatial dimension) the *polyphase components* of ``x`` are
``x_k(n) = x(s*n + k)`` for every offset ``k`` in ``[0, s_1) x ... x [0, s_d)``
(APS-U paper, Sec. 3.2). Everything here is vectorised over the batch: one offset per sample,
no Python loop over samples, any device.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

from equinet.sampling.adaptive import (
    PhaseChoice,
    certain_argmax,
    choose_phase,
    defer_undecided,
    exact_values,
    gamma,
    ravel_phase,
    unit_roundoff,
    unravel_phase,
)
from equinet.sampling.layers import conv_function
from equinet.sync_counter import takes_cpu_branch

__all__ = [
    "polyphase_view", "polyphase_norms", "norm_rounding_bound", "exact_norms", "max_norm_choice",
    "max_norm_phase", "invertible_phase", "feature_eps", "ravel_phase", "unravel_phase", "select_polyphase",
    "place_polyphase", "mix_polyphase", "roll_per_sample", "roll_mix",
]


def _check_divisible(x: torch.Tensor, stride: Sequence[int]) -> None:
    sizes = tuple(x.shape[2:])
    if len(sizes) != len(stride):
        raise ValueError(
            f"expected a (batch, channels, {len(stride)} spatial dims) tensor for stride {tuple(stride)}, "
            f"got shape {tuple(x.shape)}"
        )
    bad = [n for n, s in zip(sizes, stride) if n % s]
    if bad:
        raise ValueError(
            f"spatial size {sizes} is not divisible by the stride {tuple(stride)}; "
            f"pad or crop to a multiple of it"
        )


def polyphase_view(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """View ``(B, C, N_1, ..., N_d)`` as ``(B, C, N_1/s_1, s_1, ..., N_d/s_d, s_d)`` (no copy)."""
    _check_divisible(x, stride)
    shape = list(x.shape[:2])
    for n, s in zip(x.shape[2:], stride):
        shape += [n // s, s]
    return x.reshape(shape)


def _offset_dims(d: int) -> Tuple[int, ...]:
    return tuple(3 + 2 * i for i in range(d))


# The float64 norms are accumulated in pieces of channels of about this many elements (to bound
# the float64 temporary: 32 MB on the CPU, 128 MB on a device); each piece is cast, squared in
# place and summed over its channels (measured on CPU: 2-4x faster than a float64 vecdot or a
# reduction with dtype=float64, which casts the whole input).
_NORM_PIECE_ELEMENTS = 1 << 22
_DEVICE_NORM_PIECE_ELEMENTS = 1 << 24


def _channel_pieces(x: torch.Tensor) -> List[slice]:
    B, C = x.shape[:2]
    limit = _NORM_PIECE_ELEMENTS if x.device.type == "cpu" else _DEVICE_NORM_PIECE_ELEMENTS
    per_channel = max(1, x.numel() // max(1, C))
    step = max(1, limit // per_channel)
    return [slice(c, c + step) for c in range(0, C, step)]


def polyphase_norms(x: torch.Tensor, stride: Sequence[int], p: float = 2.0) -> torch.Tensor:
    """l_p norm (to the power p) of every polyphase component, jointly over channels and pixels.

    Returns a float64 tensor ``(B, s_1, ..., s_d)``. Every term ``|v|^p`` is formed and summed in
    float64 (exact terms for ``p`` in {1, 2} and inputs of float32 precision or less), so the
    rounding error is that of a float64 sum, bounded by :func:`norm_rounding_bound` (about
    ``E 1e-16`` relative for ``E`` terms): far below the gaps between components of real data,
    which the fast test of :mod:`equinet.sampling.adaptive` therefore decides. Ties are the job of
    :func:`max_norm_choice`. The float64 values are made a piece of channels at a time, on the
    device, never as a full-size copy.
    """
    _check_divisible(x, stride)
    d = len(stride)
    if p == float("inf"):  # maxima are exact in any dtype
        # (keepdim=False then unsqueeze: the keepdim reduction kernel is ~3x slower on CPU)
        view = polyphase_view(x.abs().amax(dim=1).unsqueeze(1), stride)
        return view.amax(dim=(1,) + tuple(2 + 2 * i for i in range(d))).to(torch.float64)
    acc = None
    for piece in _channel_pieces(x):
        v = x[:, piece].to(torch.float64, copy=True)  # (a copy: squared in place below)
        if p == 2:
            term = v.square_().sum(dim=1)  # exact float64 squares, summed over the piece's channels
        elif p == 1:
            term = v.abs().sum(dim=1)
        else:
            term = v.abs().pow(p).sum(dim=1)
        acc = term if acc is None else acc.add_(term)
    view = polyphase_view(acc.unsqueeze(1), stride)
    return view.sum(dim=(1,) + tuple(2 + 2 * i for i in range(d)))


def norm_rounding_bound(norms: torch.Tensor, x: torch.Tensor, stride: Sequence[int],
                        p: float) -> torch.Tensor:
    """``beta >= |norms - a|`` for :func:`polyphase_norms`, ``a`` the exact sum over the component of
    the float64 terms ``|v|^p`` that :func:`max_norm_choice` compares on its exact path.

    A component has ``E = C n`` terms (``C`` channels, ``n`` pixels). Each float64 term is exact
    (``p`` in {1, 2}, inputs of float32 precision or less) or within ``2u`` of the exact path's
    (one rounding each; ``pow``: allow ``4u``), ``u = 2^-53``. A float64 sum of ``E`` terms of one
    sign, in any order, is within ``gamma_{E-1}(u)`` of its exact value (Higham, Thm. 4.3 / eq.
    (4.4)); together ``|f - a| <= gamma_{E+4}(u) a``, and ``a <= f / (1 - gamma)``. Terms that
    underflow (float64 inputs only) add at most ``2^-1074`` each. Doubled for safety -- a wider bound
    only sends more samples down the exact path: ``beta = 2 (gamma_{E+4}(u) f + E 2^-1074)``, about
    ``2 E 1.1e-16`` relative. ``p = inf`` is exact.
    """
    if p == float("inf"):
        return torch.zeros_like(norms)
    terms = x.shape[1] * (math.prod(x.shape[2:]) // math.prod(stride))
    rel = gamma(terms + 4, unit_roundoff(torch.float64))
    underflow = terms * 2.0**-1074
    return 2 * (rel * norms + underflow)


def _component_rows(x: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B * K, C * n)``: the values of each polyphase component, one row
    per (sample, row-major phase)."""
    d = len(stride)
    v = polyphase_view(x, stride)
    perm = (0,) + _offset_dims(d) + (1,) + tuple(2 + 2 * i for i in range(d))
    return v.permute(perm).reshape(x.shape[0] * math.prod(stride), -1)


def exact_norms(x: torch.Tensor, stride: Sequence[int], p: float = 2.0) -> List[Fraction]:
    """Exact component criteria ``sum |v|^p`` of ``x``, ``B * K`` rationals, sample-major.

    ``p`` in {1, 2}: the float64 terms ``|v|`` and ``v * v`` are correctly rounded elementwise
    (exact for float32 and narrower inputs). Other ``p``: the values of a component are sorted
    first, so that every ``pow`` is evaluated at a position that depends on the multiset only
    (a vectorised ``pow`` and its scalar tail may round differently). ``p = inf``: the maxima,
    which are exact.
    """
    if p == float("inf"):
        return [Fraction(v) for v in polyphase_norms(x, stride, p).flatten().tolist()]
    rows = _component_rows(x, stride)
    if p == 2:
        return exact_values(rows, lambda t: t * t)
    if p == 1:
        return exact_values(rows, torch.abs)
    return exact_values(rows.abs().sort(dim=1).values, lambda t: t.pow(p))


def max_norm_choice(x: torch.Tensor, stride: Sequence[int], p: float = 2.0) -> PhaseChoice:
    """APS-D choice: per sample, the phase ``(k_1..k_d)`` of the component with largest l_p norm
    (APS-U paper, Sec. 2: ``i = argmax_j ||y_j||_p``), with the shift-consistent tie rule of
    :mod:`equinet.sampling.adaptive`: exact ties are decided in exact arithmetic and broken by
    the content of ``x``; a real symmetry yields a :class:`~equinet.sampling.adaptive.SymmetryFrame`.
    """
    x = x.detach()
    norms = polyphase_norms(x, stride, p).flatten(1)
    bound = norm_rounding_bound(norms, x, stride, p)

    def exact(samples: torch.Tensor) -> List[Fraction]:
        return exact_norms(x.index_select(0, samples), stride, p)

    return choose_phase(norms, bound, exact, x, stride)


def max_norm_phase(x: torch.Tensor, stride: Sequence[int], p: float = 2.0) -> torch.Tensor:
    """The phase of :func:`max_norm_choice` alone, long ``(B, d)``, without its symmetry frame."""
    return max_norm_choice(x, stride, p).index


INVERTIBLE_MARGIN = 128  # in units of the feature dtype's eps: see invertible_phase


def feature_eps(x: torch.Tensor) -> float:
    """Machine epsilon of the precision the layers around ``x`` compute in: ``x``'s dtype, or the
    autocast dtype where autocast is on for ``x``'s device and coarser (``bf16-mixed``:
    convolutions and matrix products round to bfloat16 although ``x`` is float32)."""
    eps = torch.finfo(x.dtype).eps if x.is_floating_point() else torch.finfo(torch.float32).eps
    device = x.device.type
    try:
        if torch.is_autocast_enabled(device):
            eps = max(eps, torch.finfo(torch.get_autocast_dtype(device)).eps)
    except (RuntimeError, TypeError):  # a device type without autocast
        pass
    return eps


def _neighbour_products(x: torch.Tensor, offset: Sequence[int]) -> torch.Tensor:
    """``x(p) * x(p + offset)`` elementwise (per channel) in float64 (exact for float32 inputs):
    summed over a component, the correlation of the component with its neighbours at ``offset``."""
    xd = x.to(torch.float64)
    return xd * xd.roll([-o for o in offset], dims=tuple(range(2, x.dim())))


def _energy_bounds(v: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds, float64 ``(B,)``, of the exact ``sum v^2`` over each row of ``v``
    ``(B, n)``: one fused float32 (or float64) pass ``e``, whose rounding -- ``g = gamma_{n+1}``
    relative, any order, products and sums (Higham, eq. (3.5)) -- is allowed for both ways:
    ``e (1 - g) <= E <= e (1 + 2g)`` (``g <= 1/4``; otherwise the pass is made in float64)."""
    work = v if v.dtype in (torch.float32, torch.float64) else v.float()
    g = gamma(v.shape[1] + 1, unit_roundoff(work.dtype))
    if g > 0.25:  # too many terms for the working precision: accumulate in float64
        work, g = work.to(torch.float64), gamma(v.shape[1] + 1, unit_roundoff(torch.float64))
    e = torch.linalg.vecdot(work, work).to(torch.float64)
    return e * (1 - g), e * (1 + 2 * g)


def _first_offset(d: int) -> Tuple[int, ...]:
    """The first neighbour offset of step 2 of :func:`invertible_phase`: ``(0, .., 0, 1)``."""
    return (0,) * (d - 1) + (1,)


def _norms_and_correlations(x: torch.Tensor, stride: Sequence[int], p: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`polyphase_norms` and, in the same float64 pieces, every component's correlation with
    its neighbours at :func:`_first_offset`, ``sum_p x(p) x(p + o)`` (both float64 ``(B, K)``)."""
    d = len(stride)
    reduce = (1,) + tuple(2 + 2 * i for i in range(d))
    if p != 2:
        norms = polyphase_norms(x, stride, p).flatten(1)
    acc_n = acc_c = None
    for piece in _channel_pieces(x):
        v = x[:, piece].to(torch.float64, copy=True)
        c = (v * v.roll(-1, dims=-1)).sum(dim=1)
        acc_c = c if acc_c is None else acc_c.add_(c)
        if p == 2:
            n = v.square_().sum(dim=1)
            acc_n = n if acc_n is None else acc_n.add_(n)
    corr = polyphase_view(acc_c.unsqueeze(1), stride).sum(dim=reduce).flatten(1)
    if p == 2:
        norms = polyphase_view(acc_n.unsqueeze(1), stride).sum(dim=reduce).flatten(1)
    return norms, corr


def _device_steps(norms, bound, corr, x, other, stride, p, t) -> Tuple[torch.Tensor, torch.Tensor]:
    """Steps 1-2 of :func:`invertible_phase` (step 2 at its first offset) in float64 on the device,
    as interval tests: ``(decided (B,), index (B, d))``, decided where they settle the exact rule.

    ``a_k`` (exact norms) lie within ``bound`` of ``norms``; the exact correlations within
    ``cb = 2 (gamma_{E+4}(2^-53) E_up + E 2^-1074)`` of ``corr`` (``E`` terms per component, whose
    absolute values sum to at most the energy, Cauchy-Schwarz); ``m = t sqrt(A_max E)`` within
    ``[m_lo, m_hi]`` (bounds of ``A_max`` and ``E``, times ``1 -+ 1e-9`` for the rounding of these
    few float64 operations). A phase is surely kept if the largest possible ``max a - a_k`` is at
    most ``m_lo``, surely dropped if the smallest possible exceeds ``m_hi``; the same with the
    correlations among the kept. Where every phase is sure and one is left, the exact rule leaves
    that one -- the same bits, without a host sync. Step 1 alone (the top beats every other by
    ``m_hi`` plus the bounds) is the common case.
    """
    E_terms = x.shape[1] * (math.prod(x.shape[2:]) // math.prod(stride))
    if p == 2:
        e_lo, e_hi = (norms - bound).sum(dim=1), (norms + bound).sum(dim=1)
    else:
        e_lo, e_hi = _energy_bounds(x.flatten(1))
    for o in other:
        lo, hi = _energy_bounds(o)
        e_lo, e_hi = e_lo + lo, e_hi + hi
    a_hi = (norms + bound).amax(dim=1, keepdim=True)
    a_lo = (norms - bound).amax(dim=1, keepdim=True)
    m_hi = ((1 + 1e-9) * t) * (a_hi * e_hi[:, None]).sqrt()
    m_lo = ((1 - 1e-9) * t) * (a_lo.clamp_min(0) * e_lo.clamp_min(0)[:, None]).sqrt()
    # step 1: the top phase beats every other by more than m_hi
    top, decided = certain_argmax(norms, bound + 0.5 * m_hi)
    # step 2, first offset: which phases are surely within m of the best norm ...
    keep = a_hi - (norms - bound) <= m_lo
    sure = keep | (a_lo - (norms + bound) > m_hi)
    # ... and, among those, within m of the best correlation
    cb = 2 * (gamma(E_terms + 4, unit_roundoff(torch.float64)) * e_hi[:, None] + E_terms * 2.0**-1074)
    lowest = torch.full_like(corr, float("-inf"))
    c_hi = torch.where(keep, corr + cb, lowest).amax(dim=1, keepdim=True)
    c_lo = torch.where(keep, corr - cb, lowest).amax(dim=1, keepdim=True)
    kept = keep & (c_hi - (corr - cb) <= m_lo)
    sure = sure & (~keep | kept | (c_lo - (corr + cb) > m_hi))
    by_step2 = sure.all(dim=1) & (kept.sum(dim=1) == 1)
    first = kept.to(torch.uint8).argmax(dim=1)
    index = unravel_phase(torch.where(decided, top, first), stride)
    return decided | by_step2, index


def invertible_phase(x: torch.Tensor, stride: Sequence[int], p: float = 2.0,
                     other: Sequence[torch.Tensor] = ()) -> Tuple[torch.Tensor, torch.Tensor]:
    """Grid choice of the exactly invertible adaptive iUNet: ``(index (B, d), decided (B,))``.

    The iUNet recomputes the choice in ``inverse`` from a *reconstructed* skip tensor, equal to
    the forward's only up to the rounding of the layers it was reconstructed through: about
    ``eps sqrt(E)`` with ``E = ||x||^2 + ||other||^2`` the energy of the whole level (``other``:
    the tensor being resampled; measured: 0.4 to 2 ``eps sqrt(E)``). So every decision needs a
    margin ``m = t sqrt(A_max E)`` (``t = 128 eps``, :func:`feature_eps`; ``A_k`` the exact
    component norms to the power ``p``) that the reconstruction cannot cross:

    1. the phase of the largest norm if it beats every other by more than ``m`` (plus the
       rounding bound of :func:`polyphase_norms`): the common case, at the cost of the norms;
    2. else the phases within ``m`` of the largest exact norm, narrowed in turn by the exact
       correlation of each component with its neighbours at the offsets ``{0, 1}^d \\ 0``
       (row-major; kept: within ``m`` of the best): this separates ties without symmetry (a
       blocky image, a half-plane) by a margin; one phase left decides;
    3. else the first remaining phase (row-major), and ``decided`` is False.

    Steps 1-2 compare exact sums, so their outcome moves with any shift of ``x``: where every
    level's choice is ``decided``, the iUNet is exactly equivariant. Step 3 is not shift-consistent
    -- it cannot be, for a skip with a symmetry that moves the grid (proof in
    :mod:`equinet.models.iunet`) -- but it is stable under rounding, so the inverse stays exact.
    No averaging: a single grid per level keeps the inverse a layer-by-layer computation
    without side information. Step 1 and the first offset of step 2 run on the device
    (:func:`_device_steps`); inside :func:`~equinet.sampling.adaptive.decide_once` the samples
    they leave are checked once per forward, and only those go through the exact sums.
    """
    x = x.detach()
    stride = tuple(stride)
    K = math.prod(stride)
    t = INVERTIBLE_MARGIN * feature_eps(x)
    norms, corr = _norms_and_correlations(x, stride, p)
    bound = norm_rounding_bound(norms, x, stride, p)
    other = [o.detach().flatten(1) for o in ([other] if isinstance(other, torch.Tensor) else other)]
    decided, index = _device_steps(norms, bound, corr, x, other, stride, p, t)
    if defer_undecided(~decided) or bool(decided.all()):
        return index, decided
    unsure = (~decided).nonzero().squeeze(1)
    sub = x.index_select(0, unsure)
    # the exact rule on the unsure samples; margins compared squared: gap^2 > t^2 A_max E
    t2 = Fraction(t) ** 2
    a = exact_norms(sub, stride, p)
    e = exact_values(sub.flatten(1), lambda v: v * v)
    for o in other:
        e = [ei + ej for ei, ej in zip(e, exact_values(o.index_select(0, unsure), lambda v: v * v))]
    limits, keep = [], []
    for b in range(len(unsure)):
        vals = a[b * K:(b + 1) * K]
        limits.append(t2 * max(vals) * e[b])
        best = max(vals)
        keep.append([(best - v) ** 2 <= limits[b] for v in vals])
    offsets = [o for o in itertools.product((0, 1), repeat=len(stride)) if any(o)]
    for offset in offsets:
        if all(sum(k) == 1 for k in keep):
            break
        f = exact_values(_component_rows(_neighbour_products(sub, offset), stride))
        for b in range(len(unsure)):
            if sum(keep[b]) == 1:
                continue
            vals = f[b * K:(b + 1) * K]
            best = max(v for v, k in zip(vals, keep[b]) if k)
            keep[b] = [k and (v >= best or (best - v) ** 2 <= limits[b]) for v, k in zip(vals, keep[b])]
    kept = torch.tensor(keep, dtype=torch.bool, device=x.device)
    index[unsure] = unravel_phase(kept.to(torch.uint8).argmax(dim=1), stride)
    decided = decided.clone()
    decided[unsure] = kept.sum(dim=1) == 1
    return index, decided


def _advanced_index(xv: torch.Tensor, index: torch.Tensor) -> tuple:
    d = index.shape[1]
    idx = [slice(None)] * xv.dim()
    idx[0] = torch.arange(xv.shape[0], device=index.device)
    for i, dim in enumerate(_offset_dims(d)):
        idx[dim] = index[:, i]
    return tuple(idx)


class _SelectPolyphase(torch.autograd.Function):
    """y = x_k per sample; backward places the gradient back on grid k (no accumulate needed)."""

    @staticmethod
    def forward(ctx, x, index, stride):
        ctx.save_for_backward(index)
        ctx.stride = stride
        xv = polyphase_view(x, stride)
        return xv[_advanced_index(xv, index)]

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _PlacePolyphase.apply(grad, index, ctx.stride), None, None


class _PlacePolyphase(torch.autograd.Function):
    """Zero-insertion onto grid k per sample (APS-U eq. 5); backward selects component k."""

    @staticmethod
    def forward(ctx, y, index, stride):
        ctx.save_for_backward(index)
        ctx.stride = stride
        B, C = y.shape[:2]
        full = [n * s for n, s in zip(y.shape[2:], stride)]
        out = y.new_zeros((B, C, *full))
        ov = polyphase_view(out, stride)
        ov[_advanced_index(ov, index)] = y
        return out

    @staticmethod
    def backward(ctx, grad):
        (index,) = ctx.saved_tensors
        return _SelectPolyphase.apply(grad, index, ctx.stride), None, None


def select_polyphase(x: torch.Tensor, index: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Polyphase component ``index[b]`` of each sample: ``y_b(n) = x_b(s*n + index[b])``."""
    return _SelectPolyphase.apply(x, index, tuple(stride))


def place_polyphase(y: torch.Tensor, index: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Adaptive polyphase upsampling U^A(y, k) = T_k U_s(y) (APS-U paper eq. 5): zeros elsewhere."""
    return _PlacePolyphase.apply(y, index, tuple(stride))


def _per_sample_conv(x: torch.Tensor, kernels: torch.Tensor, stride: Sequence[int] = (1,)) -> torch.Tensor:
    """Depthwise correlation of every channel of sample ``b`` with ``kernels[b]`` (``(B, *k)``): one
    grouped convolution over the batch folded into the channels (no pass per phase)."""
    B, C = x.shape[:2]
    k = kernels.shape[1:]
    weight = kernels.to(x.dtype).unsqueeze(1).expand(B, C, *k).reshape(B * C, 1, *k)
    out = conv_function(len(k))(x.reshape(1, B * C, *x.shape[2:]), weight, stride=tuple(stride), groups=B * C)
    return out.view(B, C, *out.shape[2:])


def mix_polyphase(x: torch.Tensor, weights: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Convex combination ``sum_k w_k x_k`` of the components (LPS training, Gumbel-softmax).

    ``weights`` has shape ``(B, s_1, ..., s_d)``; a one-hot ``weights`` gives ``select_polyphase``.
    (A strided correlation of each sample with its weights: ``sum_k w_k x(s n + k)``.)
    """
    _check_divisible(x, stride)
    return _per_sample_conv(x, weights, stride)


def roll_per_sample(x: torch.Tensor, shifts: torch.Tensor, periods: Sequence[int], sign: int = 1) -> torch.Tensor:
    """Circularly shift each sample by its own offsets: ``out_b = T_{sign * shifts[b]} x_b``.

    ``shifts`` is ``(B, d)`` with ``0 <= shifts[:, i] < periods[i]`` (offsets are phases, so
    ``periods`` is the stride); ``sign=-1`` undoes ``sign=+1``. No loop over samples: on the CPU
    the samples are grouped by their shift (at most ``prod(periods)`` groups) and each group is
    moved in one pass of block copies; elsewhere ``sum(periods) - d`` masked rolls (no host sync).
    """
    d = len(periods)
    if shifts.shape != (x.shape[0], d):
        raise ValueError(f"shifts must have shape ({x.shape[0]}, {d}), got {tuple(shifts.shape)}")
    if takes_cpu_branch(x):
        return _RollPerSample.apply(x, shifts, sign)
    return _masked_rolls(x, shifts, periods, sign)


def _masked_rolls(x: torch.Tensor, shifts: torch.Tensor, periods: Sequence[int], sign: int) -> torch.Tensor:
    d = len(periods)
    view = (-1,) + (1,) * (x.dim() - 1)
    for i in range(d):
        dim = x.dim() - d + i
        rolled = x
        for v in range(1, periods[i]):
            mask = (shifts[:, i] == v).view(view)
            rolled = torch.where(mask, x.roll(sign * v, dims=dim), rolled)
        x = rolled
    return x


def _roll_into(out: torch.Tensor, x: torch.Tensor, shift: Sequence[int]) -> None:
    """``out = torch.roll(x, shift, last len(shift) dims)`` as ``2^d`` block copies (one pass)."""
    pieces = []
    for n, s in zip(x.shape[x.dim() - len(shift):], shift):
        s %= n
        pieces.append([(slice(None), slice(None))] if s == 0 else
                      [(slice(s, None), slice(0, n - s)), (slice(0, s), slice(n - s, None))])
    for parts in itertools.product(*pieces):
        out[(Ellipsis, *(p[0] for p in parts))].copy_(x[(Ellipsis, *(p[1] for p in parts))])


class _RollPerSample(torch.autograd.Function):
    """:func:`roll_per_sample` on the CPU; the backward rolls the gradient back."""

    @staticmethod
    def forward(ctx, x, shifts, sign):
        ctx.save_for_backward(shifts)
        ctx.sign = sign
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        values, group = torch.unique(shifts, dim=0, return_inverse=True)
        if len(values) == 1:
            _roll_into(out, x, [sign * v for v in values[0].tolist()])
            return out
        for g, value in enumerate(values.tolist()):
            members = (group == g).nonzero().flatten()
            part = x.index_select(0, members)
            rolled = torch.empty_like(part)
            _roll_into(rolled, part, [sign * v for v in value])
            out.index_copy_(0, members, rolled)
        return out

    @staticmethod
    def backward(ctx, grad):
        (shifts,) = ctx.saved_tensors
        return _RollPerSample.apply(grad, shifts, -ctx.sign), None, None


def roll_mix(z: torch.Tensor, weights: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """``sum_k w_k T_k z`` over all phases ``k``: the soft partner of :func:`roll_per_sample`
    (a circular correlation of each sample with its flipped weights)."""
    d = len(stride)
    pad = [v for s in reversed(tuple(stride)) for v in (s - 1, 0)]
    padded = F.pad(z, pad, mode="circular") if any(pad) else z
    return _per_sample_conv(padded, weights.flip(tuple(range(1, d + 1))))
