"""Memory-efficient backprop for invertible programs: activations are reconstructed, not stored.

An :class:`InvertibleProgram` is a list of steps on a stack of tensors (the top is the current
activation, below it the skip connections of a U-Net):

* ``apply``  -- ``top = block(top)`` for an invertible block (coupling, channel mixing);
* ``down`` / ``up`` -- orthogonal resampling of the top; adaptive steps take their block-grid
  offset from the skip tensor just below the top (see :mod:`equinet.models.iunet`);
* ``split`` -- ``top -> (top[:, :k], top[:, k:])`` (the first part stays behind as a skip);
* ``concat`` -- ``(skip, top) -> cat([skip, top])``.

:class:`MemoryEfficientBackprop` runs the whole program inside one autograd ``Function``: the
forward runs without building a graph and keeps only the program's outputs; the backward walks
the steps in reverse, reconstructing each step's input from its output by inversion
(``x = f^{-1}(y)``, iUNet paper Sec. 1) and back-propagating through that step alone. Peak
memory is therefore one activation (plus the U-Net's skip tensors and one step's graph)
independent of the number of blocks (Gomez et al. 2017). Both passes run in place, in one
buffer for the activation and one for its gradient (:class:`_Workspace`), and a coupling's graph
is built one sub-batch at a time (:class:`~equinet.models.invertible.AdditiveCoupling`); the
output is let go as soon as the backward pass has copied it, unless the graph is retained.
Nothing here writes to tensors the caller owns.

Limits (checked, with clear errors): blocks must be deterministic functions of their input
(no dropout, no batch statistics in training mode); double backward (``create_graph=True``)
is not supported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from equinet.models.invertible import runs_on_halves
from equinet.sampling.orthogonal import samples_contiguous
from equinet.sampling.polyphase import invertible_phase

__all__ = ["Step", "InvertibleProgram", "MemoryEfficientBackprop"]

STEP_KINDS = ("apply", "down", "up", "split", "concat")


@dataclass
class Step:
    """One step of an :class:`InvertibleProgram` (see module docstring)."""

    kind: str
    module: Optional[nn.Module] = None
    split: int = 0
    adaptive: bool = False
    p: float = 2.0
    name: str = ""

    def __post_init__(self) -> None:
        if self.kind not in STEP_KINDS:
            raise ValueError(f"unknown step kind {self.kind!r}; one of {STEP_KINDS}")


# An activation on the stack is a tuple of tensors along the channel dimension ("chunks"): a
# chain of additive couplings passes its two halves on as they are, without concatenating them.
Chunks = Tuple[torch.Tensor, ...]


def _width(chunks: Chunks) -> int:
    return sum(t.shape[1] for t in chunks)


def _merged_view(chunks: Chunks) -> Optional[torch.Tensor]:
    """The chunks as one tensor without copying, when they are consecutive channel ranges of the
    same memory (the halves of one buffer updated in place, a skip and the part after it)."""
    first = chunks[0]
    offset = first.storage_offset()
    for t in chunks:
        if (
            t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() or t.dtype != first.dtype
            or t.stride() != first.stride() or t.shape[0] != first.shape[0] or t.shape[2:] != first.shape[2:]
            or t.storage_offset() != offset
        ):
            return None
        offset += t.shape[1] * t.stride(1)
    size = (first.shape[0], _width(chunks), *first.shape[2:])
    return first.as_strided(size, first.stride(), first.storage_offset())


class _Workspace:
    """How one run of a program treats memory.

    Functional (autograd is recording): every step returns new tensors, and chunks are
    concatenated where a step needs one tensor -- plain autograd sees plain operations.

    In place (no autograd: the memory-efficient forward and backward, inference): the run
    copies the caller's tensors once into buffers of its own (*arenas*) and from then on every
    step overwrites its input -- couplings update one half, channel mixing and orthogonal
    resampling transform piece by piece, and resampling keeps each sample's memory (the
    coarse tensor is the fine one's memory seen with another shape). A split leaves the skip as
    the first channels of the buffer and resamples the rest inside it, so a whole U-Net runs in
    one buffer and every concatenation is a view. The caller's tensors are never written.
    """

    def __init__(self, in_place: bool) -> None:
        self.in_place = in_place
        self._arenas: Dict[int, int] = {}

    def _own(self, t: torch.Tensor) -> torch.Tensor:
        self._arenas[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    def owns(self, t: torch.Tensor) -> bool:
        storage = t.untyped_storage()
        return self._arenas.get(storage.data_ptr()) == storage.nbytes()

    def join(self, chunks: Chunks) -> torch.Tensor:
        """One tensor from chunks (a view where they lie side by side, in place)."""
        if len(chunks) == 1:
            return chunks[0]
        if self.in_place:
            merged = _merged_view(chunks)
            if merged is not None:
                return merged
            return self._own(torch.cat(chunks, dim=1))
        return torch.cat(chunks, dim=1)

    def writable(self, chunks: Chunks, whole: bool = False) -> Chunks:
        """Chunks in memory this run owns, with the same channel split (copied there once if
        needed); ``whole``: as one tensor whose samples are contiguous (for resampling)."""
        if not whole and all(self.owns(t) for t in chunks):
            return chunks
        t = self.join(chunks)
        if not self.owns(t) or not samples_contiguous(t):
            t = self._own(t.clone(memory_format=torch.contiguous_format))
        if whole:
            return (t,)
        out, start = [], 0
        for c in chunks:
            out.append(t[:, start : start + c.shape[1]])
            start += c.shape[1]
        return tuple(out)

    def halves(self, chunks: Chunks, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first ``k`` channels and the rest, as two tensors (views where possible)."""
        if len(chunks) == 2 and chunks[0].shape[1] == k:
            return chunks[0], chunks[1]
        x = self.join(chunks)
        return x[:, :k], x[:, k:]

    def call(self, module: nn.Module, method: str, chunks: Chunks, *extra) -> torch.Tensor:
        """``module.<method>(top, *extra)``; in place via ``<method>_in_place`` where the module has it,
        otherwise its result is copied back into the top's memory (same shape)."""
        if not self.in_place:
            by_chunks = getattr(module, method + "_chunks", None)
            if by_chunks is not None and len(chunks) > 1:
                return by_chunks(chunks, *extra)
            return getattr(module, method)(self.join(chunks), *extra)
        (x,) = self.writable(chunks, whole=True)
        in_place = getattr(module, method + "_in_place", None)
        if in_place is not None:
            return in_place(x, *extra)
        out = getattr(module, method)(x, *extra)
        if out.shape != x.shape:
            return out
        return x if _same_view(out, x) else x.copy_(out)


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.untyped_storage().data_ptr(), a.storage_offset(), a.stride(), a.shape) == (
        b.untyped_storage().data_ptr(), b.storage_offset(), b.stride(), b.shape)


class InvertibleProgram:
    """The steps plus the three ways to run them: forward, inverse, and backward-by-inversion
    (with autograd functionally, without it in place: see :class:`_Workspace`). Additive
    couplings (:func:`~equinet.models.invertible.runs_on_halves`) run on the two halves of the
    activation, so a chain of them never concatenates."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)

    # -- parameters -------------------------------------------------------------------------
    def step_params(self, step: Step) -> List[nn.Parameter]:
        if step.module is None:
            return []
        return [p for p in step.module.parameters() if p.requires_grad]

    def params(self) -> List[nn.Parameter]:
        seen, out = set(), []
        for step in self.steps:
            for p in self.step_params(step):
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
        return out

    # -- offsets ----------------------------------------------------------------------------
    @staticmethod
    def _offset(step: Step, stack: List[Chunks], ws: _Workspace,
                decided: Optional[List[torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """Adaptive grid offset of a resampling step: the APS-D choice on the skip below the top, with
        the margins that let the inverse reproduce it from its reconstructed skip
        (:func:`~equinet.sampling.polyphase.invertible_phase`; whether it was decided by a margin is
        appended to ``decided``, if given)."""
        if not step.adaptive:
            return None
        if len(stack) < 2:
            raise RuntimeError(f"adaptive step {step.name} needs the skip tensor below the top of the stack")
        index, by_margin = invertible_phase(ws.join(stack[-2]), step.module.stride, step.p, other=stack[-1])
        if decided is not None:
            decided.append(by_margin)
        return index

    # -- forward / inverse ------------------------------------------------------------------
    def run(
        self, stack: List[torch.Tensor], offsets: Optional[List[Optional[torch.Tensor]]] = None,
        decided: Optional[List[torch.Tensor]] = None,
    ) -> List[torch.Tensor]:
        """Run forward on ``stack`` (a list of tensors; returns a new list). Appends the offsets
        used by resampling steps to ``offsets`` and, for adaptive steps, whether the choice was
        decided by a margin to ``decided`` (if given), in step order."""
        ws = _Workspace(in_place=not torch.is_grad_enabled())
        chunks: List[Chunks] = [(t,) for t in stack]
        for step in self.steps:
            if step.kind == "apply":
                module = step.module
                if runs_on_halves(module):
                    top = ws.writable(chunks[-1]) if ws.in_place else chunks[-1]
                    chunks[-1] = module.forward_pair(*ws.halves(top, module.split), inplace=ws.in_place)
                else:
                    chunks[-1] = (ws.call(module, "forward", chunks[-1]),)
            elif step.kind in ("down", "up"):
                offset = self._offset(step, chunks, ws, decided)
                if offsets is not None:
                    offsets.append(offset)
                chunks[-1] = (ws.call(step.module, "forward", chunks[-1], offset),)
            elif step.kind == "split":
                chunks += [(t,) for t in ws.halves(chunks.pop(), step.split)]
            else:  # concat (a view in place; with autograd a concatenation, which it keeps)
                top = chunks.pop()
                skip = chunks.pop()
                chunks.append(skip + top if ws.in_place else (ws.join(skip + top),))
        return [ws.join(c) for c in chunks]

    def run_inverse(self, stack: List[torch.Tensor]) -> List[torch.Tensor]:
        """Invert the program: ``run_inverse(run(s)) == s`` (adaptive offsets are recomputed
        from the skip tensors, which the inverse recovers before it needs them)."""
        ws = _Workspace(in_place=not torch.is_grad_enabled())
        chunks: List[Chunks] = [(t,) for t in stack]
        for step in reversed(self.steps):
            if step.kind == "apply":
                module = step.module
                if runs_on_halves(module):
                    top = ws.writable(chunks[-1]) if ws.in_place else chunks[-1]
                    y1, y2 = ws.halves(top, _width(top) - module.split)
                    chunks[-1] = module.inverse_pair(y1, y2, inplace=ws.in_place)
                else:
                    chunks[-1] = (ws.call(module, "inverse", chunks[-1]),)
            elif step.kind in ("down", "up"):
                chunks[-1] = (ws.call(step.module, "inverse", chunks[-1], self._offset(step, chunks, ws)),)
            elif step.kind == "split":
                top = chunks.pop()
                chunks.append(chunks.pop() + top)
            else:  # concat
                chunks += [(t,) for t in ws.halves(chunks.pop(), step.split)]
        return [ws.join(c) for c in chunks]

    # -- backward by inversion ----------------------------------------------------------------
    def backward(
        self,
        outputs: Sequence[torch.Tensor],
        grad_outputs: Sequence[torch.Tensor],
        offsets: Sequence[Optional[torch.Tensor]],
        params: Sequence[torch.Tensor],
    ) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
        """Walk the steps backwards from the program's outputs: reconstruct each step's input
        by inversion and back-propagate through that step only, in place (:class:`_Workspace`:
        ``outputs`` and ``grad_outputs`` are copied once, never written; a list of outputs is
        emptied, so that they can be freed early). Returns (input grads, param grads)."""
        ws = _Workspace(in_place=True)
        vals: List[Chunks] = [(o.detach(),) for o in outputs]
        grads: List[Chunks] = [(g,) for g in grad_outputs]
        if isinstance(outputs, list):
            outputs.clear()  # (the caller's references: each output can go as soon as it is copied)
        index: Dict[int, int] = {id(p): i for i, p in enumerate(params)}
        pgrads: List[Optional[torch.Tensor]] = [None] * len(params)
        offsets = list(offsets)

        def accumulate(ps, gs):
            for p, g in zip(ps, gs):
                if g is None:
                    continue
                i = index[id(p)]
                pgrads[i] = g if pgrads[i] is None else pgrads[i] + g

        for step in reversed(self.steps):
            if step.kind in ("apply", "down", "up"):
                module, ps = step.module, self.step_params(step)
                if runs_on_halves(module):
                    # (replace the entries at once: a copied output can then be freed before F runs)
                    top, gtop = vals[-1], grads[-1] = ws.writable(vals[-1]), ws.writable(grads[-1])
                    c2 = _width(top) - module.split
                    x1, x2, gx1, gx2, gps = module.backward_pair(
                        *ws.halves(top, c2), *ws.halves(gtop, c2), ps, inplace=True, inplace_grad=True
                    )
                    vals[-1], grads[-1] = (x1, x2), (gx1, gx2)
                else:
                    offset = () if step.kind == "apply" else (offsets.pop(),)
                    vals[-1], grads[-1] = ws.writable(vals[-1], whole=True), ws.writable(grads[-1], whole=True)
                    (y,), (gy,) = vals[-1], grads[-1]
                    x, gx, gps = self._step_backward(module, y, gy, ps, offset)
                    vals[-1], grads[-1] = (x,), (gx,)
                accumulate(ps, gps)
            elif step.kind == "split":
                top, gtop = vals.pop(), grads.pop()
                vals.append(vals.pop() + top)
                grads.append(grads.pop() + gtop)
            else:  # concat
                vals += [(t,) for t in ws.halves(vals.pop(), step.split)]
                grads += [(t,) for t in ws.halves(grads.pop(), step.split)]
        return [ws.join(g) for g in grads], pgrads

    @staticmethod
    def _step_backward(module, y, gy, ps, offset):
        """One block's reconstruction and backward, the results in the memory of ``y``, ``gy``
        where the shapes allow (``backward_by_inversion(..., in_place=True)`` where the module
        offers it; otherwise inversion and a local autograd graph)."""
        custom = getattr(module, "backward_by_inversion", None) if _describes_forward(module) else None
        if custom is not None and getattr(module, "backward_in_place", False):
            return custom(y, gy, ps, *offset, in_place=True)
        if custom is not None:
            x, gx, gps = custom(y, gy, ps, *offset)
        else:
            x = module.inverse(y, *offset)
            with torch.enable_grad():
                xl = x.detach().requires_grad_(True)
                out = module(xl, *offset)
                gx, *gps = torch.autograd.grad(out, [xl, *ps], gy, allow_unused=True)
            if gx is None:
                gx = torch.zeros_like(x)
        if x.shape == y.shape:
            x, gx = y.copy_(x), gy.copy_(gx)
        return x.detach(), gx, gps


def _describes_forward(module: nn.Module) -> bool:
    """Whether the module's ``backward_by_inversion`` belongs to its ``forward`` and ``inverse``: not
    when it is inherited from a class whose forward or inverse a subclass has overridden."""

    def owner(name):
        return next((c for c in type(module).__mro__ if name in c.__dict__), object)

    custom = owner("backward_by_inversion")
    return issubclass(custom, owner("forward")) and issubclass(custom, owner("inverse"))


def _fresh_outputs(outs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Outputs autograd can own: copies where an output shares memory with an input (e.g. an
    empty level) or with another output (the in-place run leaves skips in one buffer), and
    views of the run's buffer made plain tensors (no view of a no-grad buffer escapes)."""
    taken = {t.untyped_storage().data_ptr() for t in inputs}
    fresh = []
    for o in outs:
        ptr = o.untyped_storage().data_ptr()
        if ptr in taken:
            o = o.clone(memory_format=torch.contiguous_format)
        elif o._base is not None:
            o = o.new_empty(0).set_(o.untyped_storage(), o.storage_offset(), o.shape, o.stride())
        taken.add(ptr)
        fresh.append(o)
    return fresh


def _graph_kept() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph``/``create_graph``)."""
    query = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if query is None else bool(query())


class MemoryEfficientBackprop(torch.autograd.Function):
    """``apply(program, n_inputs, *inputs, *params) -> outputs`` with backward by inversion.

    ``params`` must be ``program.params()`` (they are inputs only so that autograd routes their
    gradients here). The outputs are kept for backward -- referenced, not saved, so that the
    backward pass can let go of them once it has copied them (unless the graph is retained);
    an output changed in place before backward is detected, as autograd does for saved tensors.
    """

    @staticmethod
    def forward(ctx, program: InvertibleProgram, n_inputs: int, *tensors: torch.Tensor):
        inputs, params = tensors[:n_inputs], tensors[n_inputs:]
        offsets: List[Optional[torch.Tensor]] = []
        with torch.no_grad():
            outs = program.run(list(inputs), offsets)
        outs = _fresh_outputs(outs, inputs)
        ctx.program = program
        ctx.n_inputs = n_inputs
        ctx.n_params = len(params)
        ctx.offsets = offsets
        device = inputs[0].device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.params = params  # the module's own parameters (alive anyway); not saved tensors
        ctx.outputs = [o.detach() for o in outs]  # aliases: same memory and version counter
        ctx.versions = [o._version for o in outs]
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs: torch.Tensor):
        if ctx.outputs is None:
            raise RuntimeError(
                "Trying to backward through the memory-efficient iUNet a second time: its output was "
                "released after the first backward. Specify retain_graph=True the first time."
            )
        outs = list(ctx.outputs)
        changed = [(i, t._version, v) for i, (t, v) in enumerate(zip(outs, ctx.versions)) if t._version != v]
        if changed:
            i, now, then = changed[0]
            raise RuntimeError(
                f"output {i} of the memory-efficient iUNet was modified by an inplace operation before "
                f"backward (version {now}, expected {then}); the gradient needs it unchanged "
                "(clone it before modifying it)"
            )
        if not _graph_kept():
            ctx.outputs = None
        grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grad_outputs)]
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device_type=device, dtype=dtype, enabled=enabled):
            in_grads, pgrads = ctx.program.backward(outs, grads, ctx.offsets, ctx.params)
        in_grads = [g if need else None for g, need in zip(in_grads, ctx.needs_input_grad[2 : 2 + ctx.n_inputs])]
        return (None, None, *in_grads, *pgrads)
