"""The adaptive grid choice of APS-D, LPS-D (eval), adaptive orthogonal resampling and the adaptive
iUNet, with one rule for ties that keeps every adaptive U-Net exactly shift-equivariant (torch only).

Why a rule is needed. With stride ``s`` a level chooses a phase ``c(h)`` in ``Z_s^d`` for the
tensor ``h`` it downsamples, keeps ``D_s T_{-c} h`` and puts the decoder's signal back with
``T_c``. Composing the levels, the network is ``G(x) = T_{s(x)} G_0(T_{-s(x)} x)`` with ``G_0``
the fixed-grid network and ``s(x)`` the combined offset: a *canonicalisation*. It is exactly
equivariant when every level's choice moves with the shift, ``c(T_m h) = c(h) + m (mod s)``
(APS-U paper, Prop. 1-2). An argmax that breaks ties by index does not: on a constant map every
phase ties, ``T_1 h = h``, and the argmax says 0 for both. Such a ``c`` exists on the orbit of
``h`` iff ``h`` has no symmetry ``T_j h = h`` with ``j`` outside ``s Z^d``; when it has one, the
admissible choices form a coset ``r + S(h)`` of the image ``S(h)`` of its symmetry group in
``Z_s^d``, and only an average over that coset (frame averaging, Puny et al., ICLR 2022) is
equivariant.

The rule (:func:`choose_phase`), for a per-phase criterion (APS: the component's l_p norm; LPS:
its learned logit) whose exact value ``a_k`` is a sum over the values of component ``k``:

1. **Fast path.** The float64 scores ``f_k`` come with a bound ``beta_k >= |f_k - a_k|`` that
   holds for *every* summation order (Higham's ``gamma_n = n u / (1 - n u)``). If
   ``f_top - beta_top > f_j + beta_j`` for every other ``j``, ``a_top`` is the unique exact
   maximum. A circular shift permutes the components and, within each, the pixels, so the
   multiset of values -- and ``a_k`` -- of each component moves with the shift: the exact
   maximiser of ``T_m x`` is that of ``x`` plus ``m``. Step 2 finds the same unique maximiser
   whenever it exists, so it does not matter that ``x`` and ``T_m x`` may take different paths.
2. **Exact path** (only samples that fail 1). ``a_k`` is computed exactly (:func:`exact_values`:
   error-free extraction into float64 parts whose sums cannot round, then rationals), so it does
   not depend on the order of the pixels: the tied set ``{k : a_k = max a}`` of ``T_m x`` is
   exactly that of ``x`` moved by ``m``. This is how an exact tie is decided.
3. **Complete tie-break** (only samples with two or more exactly tied phases). Every rotation
   ``T_{-p} h`` is ranked lexicographically (:func:`rotation_ranks`: ranks of the channel
   vectors, then of cyclic segments of doubling length along each axis -- comparisons only, no
   rounding); the winners are the positions ``p`` (of a tied phase) whose rotation is largest.
   The ranks move with the shift, and two positions have equal rotations iff ``T_{p'-p} h = h``,
   so the winners are ``p0 + Stab(h)``: a single phase unless ``h`` has a real symmetry. Ties
   without symmetry (a hot pixel after the dense max, an image made of 2x2 blocks, the +1 and
   -1 phases of a +-1 checkerboard) are resolved exactly; no statistic of each component alone
   could separate the first two, whose components are shifted copies of each other.
4. **Symmetry.** If the winners cover several phases, the choice is ``r = p0 mod s`` and the
   :class:`SymmetryFrame` lists one symmetry shift ``j`` of ``h`` per class of ``S(h)``; the
   upsampler of the level averages its output over them (:func:`average_over_symmetries`).
   Because ``T_j h = h``, the branch that would have chosen ``r + j`` equals ``T_j`` of branch
   ``r``: the frame average costs one branch plus a few rolls. Averaging the level's upsampled
   output (not the network's) suffices, and is not the soft mixing of components that breaks
   equivariance: it is the frame average of the sub-network ``Phi`` from ``h`` to that output,
   and everything around ``Phi`` is equivariant. Proof, with ``Phi(h) = mean_j T_j T_r
   U(Psi(D_s T_{-r} h))`` and ``Psi`` (the deeper levels) equivariant by induction: for
   ``h' = T_m h`` the rule gives ``r' = r + m + j0 + s q`` with ``j0`` a symmetry; then
   ``D_s T_{-r'} h' = T_{-q} D_s T_{-r} h``, so branch ``r'`` of ``h'`` is ``T_m T_{j0}`` branch
   ``r`` of ``h``, and averaging over the shifted set of symmetry classes gives
   ``Phi(h') = T_m Phi(h)`` (two lifts of one class differ by ``s q'`` with ``T_{s q'} h = h``,
   which leaves branch ``r`` unchanged). The mean adds its copies in sorted order, so it keeps
   the symmetries bit for bit.

One host sync per forward. Deciding whether step 1 succeeded is a question the host must ask
the device (``bool(certain.all())``), and every level asking it would stall a CUDA stream once per
level. Inside :func:`decide_once` (what ``UNet.forward`` and the iUNet's ``forward``/``inverse``
run in) a level instead keeps the argmax and hands its "not certain" flags to the enclosing call;
after the whole forward the flags of every level are checked once, and only if some sample was
not certain is the forward run again with the rule of steps 1-4 inline (its state restored first:
batch-norm running statistics and the random number generators, so the redo leaves no trace).
Where every level is certain the result is the argmax -- what the inline rule returns too -- so
the two ways give the same bits; where one is not, the redo *is* the inline rule.

What "exactly" needs: the features reaching the choice must be shifted bit for bit when the
input is (circular float32 convolutions, pointwise layers, batch norm in eval mode -- tested on
CPU). PyTorch's float64 CPU convolution is not position-uniform (a constant image does not give
a constant output), so in float64 a symmetric input meets rounding-level near-ties instead of
ties, and no rule can be exact there. Per-sample statistics (instance/group norm) change by
rounding under a shift; symmetries and ties between components with equal value multisets stay
exact, other exact ties could be broken by that rounding. Non-finite features have no norm and
keep the plain argmax.
"""

from __future__ import annotations

import contextlib
import math
import threading
from fractions import Fraction
from typing import Callable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, TypeVar

import torch
from torch import nn

__all__ = [
    "PhaseChoice",
    "SymmetryFrame",
    "choose_phase",
    "certain_argmax",
    "beyond_feature_rounding",
    "exact_values",
    "rotation_ranks",
    "average_over_symmetries",
    "circular_shift_per_sample",
    "decide_once",
    "defer_undecided",
    "record_undecided",
    "stateful_modules",
    "gamma",
    "unit_roundoff",
    "ravel_phase",
    "unravel_phase",
]


class SymmetryFrame(NamedTuple):
    """The samples whose choice tensor has a symmetry that moves the grid, and how to average.

    ``samples``: long ``(B_s,)`` batch indices. ``shifts``: long ``(B_s, K, d)``, for each class
    ``c`` of ``Z_s^d`` (row-major, ``K = prod(stride)``) a shift ``j = c (mod s)`` with
    ``T_j h = h``, in pixels of the choice tensor. ``valid``: bool ``(B_s, K)``, which classes
    have one (always class 0, with shift 0).
    """

    samples: torch.Tensor
    shifts: torch.Tensor
    valid: torch.Tensor


class PhaseChoice(NamedTuple):
    """An adaptive choice: ``index`` long ``(B, d)``, the chosen phase per sample, and ``frame``
    (``None`` unless some sample is symmetric): what its upsampler averages over."""

    index: torch.Tensor
    frame: Optional[SymmetryFrame] = None


def gamma(n: int, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: bound on the relative error of a sum of ``n``
    terms of one sign (or of a dot product of length ``n``) in any order, unit roundoff ``u``."""
    nu = n * u
    if nu >= 0.5:
        return float("inf")
    return nu / (1 - nu)


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2``: the largest relative error of one correctly rounded operation in ``dtype``."""
    return torch.finfo(dtype).eps / 2


def unravel_phase(flat: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Row-major flat component number ``(B,)`` -> per-dimension offsets ``(B, d)``."""
    out = []
    for s in reversed(tuple(stride)):
        out.append(flat % s)
        flat = torch.div(flat, s, rounding_mode="floor")
    return torch.stack(out[::-1], dim=-1)


def ravel_phase(index: torch.Tensor, stride: Sequence[int]) -> torch.Tensor:
    """Per-dimension offsets ``(..., d)`` -> row-major flat component number ``(...)``."""
    flat = torch.zeros_like(index[..., 0])
    for i, s in enumerate(stride):
        flat = flat * s + index[..., i]
    return flat


# --------------------------------------------------------------------------------------------
# 1. fast path
# --------------------------------------------------------------------------------------------
def certain_argmax(scores: torch.Tensor, bound: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(argmax, certain)`` of ``scores`` ``(B, K)``; ``certain[b]`` when the interval
    ``[f - beta, f + beta]`` of the top phase lies above every other phase's (so the exact
    maximum is unique and is the argmax). NaN scores are never certain."""
    top = scores.argmax(dim=1, keepdim=True)
    low = scores.gather(1, top) - bound.gather(1, top)
    others = (scores + bound).scatter(1, top, float("-inf")).amax(dim=1, keepdim=True)
    return top.squeeze(1), (low > others).squeeze(1)


def beyond_feature_rounding(scores: torch.Tensor, ulps: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Per row of ``scores`` ``(B, K)``: whether the top phase beats every other by more than
    ``ulps`` units of roundoff of ``dtype`` on each side (relative to the largest ``|score|``).
    A norm criterion (APS, orthogonal-adaptive) of features moved by at most ``ulps`` ulps moves
    by at most that much, so such a choice survives a backend whose rounding depends on the
    position (cuDNN tiles); :func:`certain_argmax` certifies the float64 sum only, not this."""
    top2 = scores.topk(min(2, scores.shape[1]), dim=1).values
    if top2.shape[1] < 2:
        return torch.ones(scores.shape[0], dtype=torch.bool, device=scores.device)
    slack = 2 * ulps * unit_roundoff(dtype) * scores.abs().amax(dim=1)
    return (top2[:, 0] - top2[:, 1]) > slack


# --------------------------------------------------------------------------------------------
# 2. exact sums
# --------------------------------------------------------------------------------------------
Term = Callable[[torch.Tensor], torch.Tensor]


def exact_values(values: torch.Tensor, term: Term = lambda t: t) -> List[Fraction]:
    """The exact sum over every row of ``term(values)`` (``values`` ``(R, M)``, ``term`` applied
    elementwise in float64, finite), as rationals.

    Error-free extraction (Rump, Ogita & Oishi, SIAM J. Sci. Comput. 31(1), 2008, ExtractVector):
    with ``sigma = 2^(ceil(log2(M + 2)) + ceil(log2 max|p|))``, ``q = fl((sigma + p) - sigma)`` is
    a multiple of ``2^-53 sigma`` with ``p = q + (p - q)`` exactly, and every partial sum of the
    ``q`` is such a multiple below ``sigma``: representable, so their float64 sum is exact *in any
    order*. Repeating on the remainders (``53 - log2(M + 2)`` bits per pass, a few passes for
    real data) gives the exact row sums as a short list of float64 parts. Vectorised over the
    batch; only the final rationals are assembled in Python, one per row. (Terms so large that
    ``sigma`` would overflow are first scaled by a power of two, which is exact unless the same
    tensor also holds terms below ``2^-1074`` times that scale.)
    """
    p = term(values.to(torch.float64))
    if p is values or p.data_ptr() == values.data_ptr():
        p = p.clone()  # worked on in place below
    rows = p.shape[0]
    extra = math.ceil(math.log2(p.shape[1] + 2))
    scale, parts = 0, []
    q = torch.empty_like(p)
    while p.numel():
        low, high = torch.aminmax(p)
        top = max(-float(low), float(high))
        if top == 0.0:
            break
        exponent = extra + math.ceil(math.log2(top))
        if exponent > 1023:
            p = torch.ldexp(p, torch.tensor(1023 - exponent, dtype=torch.float64))
            scale += exponent - 1023
            continue
        sigma = 2.0**exponent
        torch.add(p, sigma, out=q).sub_(sigma)  # the part of p at and above 2^-53 sigma
        parts.append(q.sum(dim=1))
        p.sub_(q)
    totals = [Fraction(0)] * rows
    for part in parts:
        totals = [t + Fraction(v) for t, v in zip(totals, part.tolist())]
    return [t * 2**scale for t in totals] if scale else totals


# --------------------------------------------------------------------------------------------
# 3. complete tie-break: lexicographic ranks of all rotations
# --------------------------------------------------------------------------------------------
def _dense_rank(keys: torch.Tensor) -> torch.Tensor:
    """Per column of ``keys`` ``(N, K)``: 0, 1, 2, ... in sorted order, equal keys equal ranks."""
    vals, order = keys.sort(dim=0)
    step = (vals[1:] != vals[:-1]).to(torch.int64)
    ranks = torch.cat([torch.zeros_like(step[:1]), step.cumsum(dim=0)])
    return torch.empty_like(ranks).scatter_(0, order, ranks)


def rotation_ranks(h: torch.Tensor) -> torch.Tensor:
    """``h`` ``(B, C, n_1..n_d)`` -> long ``(B, n_1..n_d)``: ``rank[b, p]`` orders the rotations
    ``T_{-p} h[b]`` (the map read from ``p`` on, cyclically, row-major, channels innermost)
    lexicographically; equal rotations get equal ranks.

    Prefix doubling: rank the channel vectors (per channel, then pairs of channels), then along
    the last axis combine the ranks of the segments at ``p`` and ``p + L`` into segments of
    length ``2L`` until they cover the axis (cyclic segments longer than the axis order like the
    rotations), then the same along the other axes with whole rows as symbols. Sorting and
    comparing only: ranks are a function of the content, so they move with any shift.
    ``O(n log^2 n)``; ranks are shared across the batch but only compared within a sample.
    """
    B, C = h.shape[:2]
    spatial = h.shape[2:]
    r = _dense_rank(h.detach().movedim(1, -1).reshape(-1, C))
    while r.shape[1] > 1:
        if r.shape[1] % 2:
            r = torch.cat([r, torch.zeros_like(r[:, :1])], dim=1)
        r = _dense_rank(r[:, 0::2] * (int(r.max()) + 1) + r[:, 1::2])
    r = r.view(B, *spatial)
    for axis in reversed(range(len(spatial))):
        length = 1
        while length < spatial[axis]:
            key = r * (int(r.max()) + 1) + r.roll(-length, dims=1 + axis)
            r = _dense_rank(key.reshape(-1, 1)).view(r.shape)
            length *= 2
    return r


def _positions(spatial: Sequence[int], device) -> torch.Tensor:
    """Coordinates ``(n, d)`` of every position, row-major."""
    grids = torch.meshgrid(*[torch.arange(n, device=device) for n in spatial], indexing="ij")
    return torch.stack([g.reshape(-1) for g in grids], dim=1)


def _resolve_ties(h: torch.Tensor, tied: torch.Tensor, stride: Sequence[int]):
    """Step 3-4 for samples ``h`` ``(B_t, ...)`` with tied phases ``tied`` ``(B_t, K)``:
    ``(index (B_t, d), shifts (B_t, K, d), valid (B_t, K))``."""
    spatial = h.shape[2:]
    sizes = torch.tensor(spatial, device=h.device)
    stride_t = torch.tensor(stride, device=h.device)
    pos = _positions(spatial, h.device)  # (n, d)
    phase_of = ravel_phase(pos % stride_t, stride)  # (n,)
    ranks = rotation_ranks(h).flatten(1).masked_fill(~tied[:, phase_of], -1)
    winners = ranks == ranks.amax(dim=1, keepdim=True)  # p0 + Stab(h), restricted to tied phases
    first = winners.to(torch.uint8).argmax(dim=1)  # argmax returns the first maximal index
    p0 = pos[first]  # (B_t, d)
    rel = (pos[None] - p0[:, None]) % sizes  # shift from p0 to every position
    rel_class = ravel_phase(rel % stride_t, stride)  # (B_t, n)
    K = int(torch.tensor(stride).prod())
    shifts = torch.zeros(h.shape[0], K, len(stride), dtype=torch.long, device=h.device)
    valid = torch.zeros(h.shape[0], K, dtype=torch.bool, device=h.device)
    rows = torch.arange(h.shape[0], device=h.device)
    for c in range(K):
        hit = winners & (rel_class == c)
        valid[:, c] = hit.any(dim=1)
        shifts[:, c] = rel[rows, hit.to(torch.uint8).argmax(dim=1)]
    return p0 % stride_t, shifts, valid


# --------------------------------------------------------------------------------------------
# one check per forward (module docstring, "One host sync per forward")
# --------------------------------------------------------------------------------------------
class _Pending:
    """The flags of the levels run so far in a :func:`decide_once` call (``exact``: the redo)."""

    __slots__ = ("flags", "exact")

    def __init__(self, exact: bool = False) -> None:
        self.flags: List[torch.Tensor] = []
        self.exact = exact


_LOCAL = threading.local()
T = TypeVar("T")


@contextlib.contextmanager
def record_undecided() -> Iterator[List[List[torch.Tensor]]]:
    """Diagnostics: within the context every outermost :func:`decide_once` call appends the
    "fast test failed" flags of its first pass, one bool ``(B,)`` tensor per adaptive level in
    forward order, to the yielded list (kept on the device: recording costs no host sync)."""
    previous = getattr(_LOCAL, "record", None)
    _LOCAL.record = record = []
    try:
        yield record
    finally:
        _LOCAL.record = previous


def defer_undecided(undecided: torch.Tensor) -> bool:
    """Called by a level with its per-sample "fast test failed" flags (bool ``(B,)``, on the
    device). Inside the first pass of a :func:`decide_once` call: records them and returns True --
    the level keeps its fast choice, no sync. Otherwise (no such call, or its redo): False, and
    the level applies the rule inline."""
    pending = getattr(_LOCAL, "pending", None)
    if pending is None or pending.exact:
        return False
    pending.flags.append(undecided.reshape(-1))
    return True


_STATEFUL = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def stateful_modules(module: nn.Module) -> List[nn.Module]:
    """The submodules whose forward changes state a redo must restore: batch norms (running
    statistics) and dropouts (the random number generator)."""
    return [m for m in module.modules() if isinstance(m, _STATEFUL)]


def _snapshot(modules: Sequence[nn.Module], device: torch.device):
    """What a training forward of ``modules`` changes, saved for :func:`_restore` (``None``:
    nothing; eval-mode modules change nothing)."""
    buffers, rng = [], False
    for m in modules:
        if not m.training:
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd):
            rng = rng or m.p > 0
        else:
            buffers += [b for b in m.buffers(recurse=False) if b is not None]
    if not buffers and not rng:
        return None
    saved = [b.clone() for b in buffers]
    states = None
    if rng:
        states = [torch.get_rng_state()]
        backend = getattr(torch, device.type, None) if device.type != "cpu" else None
        if backend is not None and hasattr(backend, "get_rng_state"):
            states.append(backend.get_rng_state(device) if device.type == "cuda" else backend.get_rng_state())
    return buffers, saved, states, device


def _restore(snapshot) -> None:
    if snapshot is None:
        return
    buffers, saved, states, device = snapshot
    with torch.no_grad():
        for b, s in zip(buffers, saved):
            b.copy_(s)
    if states:
        torch.set_rng_state(states[0])
        if len(states) > 1:
            backend = getattr(torch, device.type)
            if device.type == "cuda":
                backend.set_rng_state(states[1], device)
            else:
                backend.set_rng_state(states[1])


def _any_across_ranks(flag: torch.Tensor, modules: Sequence[nn.Module]) -> torch.Tensor:
    """``flag``, or-ed over the ranks of a training ``SyncBatchNorm``'s process group: its forward
    is a collective, so a redo must run on every rank of the group or on none (an all-reduce on
    the device, no extra host sync)."""
    sync_bn = [m for m in modules if isinstance(m, nn.SyncBatchNorm) and m.training]
    dist = torch.distributed
    if not sync_bn or not dist.is_available() or not dist.is_initialized():
        return flag
    group = sync_bn[0].process_group or dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return flag
    flag = flag.to(torch.int32).reshape(1)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return flag[0]


def decide_once(run: Callable[[], T], modules: Sequence[nn.Module] = (),
                device: Optional[torch.device] = None) -> T:
    """``run()`` with every adaptive choice inside it checked once, at the end (one host sync;
    none if no level is adaptive): if some level's fast test failed for some sample, ``modules``'
    state (:func:`stateful_modules`) is restored and ``run()`` repeated with the rule inline
    (on every rank of a training ``SyncBatchNorm``'s group if on one). Nested calls join the
    outermost one."""
    if getattr(_LOCAL, "pending", None) is not None:
        return run()
    pending = _Pending()
    snapshot = _snapshot(modules, device or torch.device("cpu")) if modules else None
    _LOCAL.pending = pending
    try:
        out = run()
    finally:
        _LOCAL.pending = None
    flags = pending.flags
    record = getattr(_LOCAL, "record", None)
    if record is not None:
        record.append(list(flags))
    if not flags:
        return out
    undecided = flags[0] if len(flags) == 1 else torch.cat(flags)
    if not bool(_any_across_ranks(undecided.any(), modules)):  # the one host sync
        return out
    del out
    _restore(snapshot)
    _LOCAL.pending = _Pending(exact=True)
    try:
        return run()
    finally:
        _LOCAL.pending = None


# --------------------------------------------------------------------------------------------
# the rule
# --------------------------------------------------------------------------------------------
def choose_phase(
    scores: torch.Tensor,
    bound: torch.Tensor,
    exact: Callable[[torch.Tensor], List[Fraction]],
    h: torch.Tensor,
    stride: Sequence[int],
) -> PhaseChoice:
    """The adaptive choice with the shift-consistent tie rule (module docstring).

    ``scores`` ``(B, K)`` float64 (row-major phases), ``bound`` ``(B, K)`` with
    ``|scores - exact| <= bound``; ``exact(samples)`` returns the exact criteria of those samples,
    ``len(samples) * K`` rationals, sample-major (:func:`exact_values`); ``h`` the tensor whose
    content breaks remaining ties (it must move with the criterion under shifts). Samples passing
    the gap test cost nothing beyond it; inside :func:`decide_once` the test costs no host sync.
    """
    stride = tuple(stride)
    top, certain = certain_argmax(scores, bound)
    index = unravel_phase(top, stride)
    if defer_undecided(~certain):
        return PhaseChoice(index)
    if bool(certain.all()):
        return PhaseChoice(index)
    unsure = (~certain).nonzero().squeeze(1)
    finite = torch.isfinite(h.detach().index_select(0, unsure).flatten(1)).all(dim=1)
    unsure = unsure[finite]
    if unsure.numel() == 0:
        return PhaseChoice(index)
    K = scores.shape[1]
    values = exact(unsure)
    tied = torch.tensor([[v == max(values[b * K:(b + 1) * K]) for v in values[b * K:(b + 1) * K]]
                         for b in range(unsure.numel())], dtype=torch.bool, device=scores.device)
    index[unsure] = unravel_phase(tied.to(torch.uint8).argmax(dim=1), stride)
    several = tied.sum(dim=1) > 1
    if not bool(several.any()):
        return PhaseChoice(index)
    samples = unsure[several]
    chosen, shifts, valid = _resolve_ties(h.detach().index_select(0, samples), tied[several], stride)
    index[samples] = chosen
    symmetric = valid.sum(dim=1) > 1
    if not bool(symmetric.any()):
        return PhaseChoice(index)
    return PhaseChoice(index, SymmetryFrame(samples[symmetric], shifts[symmetric], valid[symmetric]))


# --------------------------------------------------------------------------------------------
# averaging over a symmetry (the upsampler's half of step 4)
# --------------------------------------------------------------------------------------------
def circular_shift_per_sample(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circular shift of each sample ``x[b]`` by ``shifts[b]`` over the last ``shifts.shape[1]`` dims.

    Equals ``torch.roll(x[b], shifts[b], dims)`` for every ``b`` (``T_k`` of the APS-U paper), done
    as one gather per dimension instead of a Python loop over the batch, for any shift size.
    (:func:`equinet.sampling.polyphase.roll_per_sample` is the variant for phase offsets smaller
    than a stride, where a few masked rolls are cheaper than a gather.)
    """
    if shifts.dim() != 2 or shifts.shape[0] != x.shape[0]:
        raise ValueError(f"shifts must be (batch={x.shape[0]}, dims), got {tuple(shifts.shape)}")
    ndim = shifts.shape[1]
    shifts = shifts.to(device=x.device, dtype=torch.long)
    for d in range(ndim):
        axis = x.dim() - ndim + d
        size = x.shape[axis]
        # output[i] = input[(i - s) mod size]
        idx = (torch.arange(size, device=x.device)[None, :] - shifts[:, d : d + 1]) % size  # (B, size)
        view = [x.shape[0]] + [1] * (x.dim() - 1)
        view[axis] = size
        x = torch.gather(x, axis, idx.reshape(view).expand_as(x))
    return x


def average_over_symmetries(z: torch.Tensor, frame: Optional[SymmetryFrame]) -> torch.Tensor:
    """``z`` with the samples of ``frame`` replaced by ``mean_j T_j z`` over their symmetry shifts
    (``z`` at the resolution of the tensor the choice was made on). Differentiable; ``None``: ``z``.

    The shifted copies are sorted elementwise before they are added one by one, so the rounded
    mean is the same whatever their order: shifting the mean by a symmetry permutes the copies,
    and the mean stays symmetric bit for bit (a plain sum would be symmetric only up to rounding).
    """
    if frame is None:
        return z
    out = z
    for pattern in torch.unique(frame.valid, dim=0):  # samples with the same symmetry classes
        rows = (frame.valid == pattern).all(dim=1)
        samples = frame.samples[rows]
        sub = z.index_select(0, samples)
        copies = torch.stack([circular_shift_per_sample(sub, frame.shifts[rows, c])
                              for c in pattern.nonzero().flatten().tolist()]).sort(dim=0).values
        total = copies[0]
        for copy in copies[1:]:
            total = total + copy
        out = out.index_copy(0, samples, total / copies.shape[0])
    return out
