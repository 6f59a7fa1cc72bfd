"""Memory-efficient backprop for invertible programs: activations are reconstructed, not stored.

An :class:`InvertibleProgram` is a list of steps on a stack of tensors (the top is the current
activation, below it the skip connections of a U-Net):

* ``apply``  -- ``top = block(top)`` for an invertible block (coupling, channel mixing);
* ``down`` / ``up`` -- orthogonal resampling of the top; adaptive steps take their block-grid
  offset from the skip tensor just below the top (see :mod:`equinet.models.iunet`);
* ``split`` -- ``top -> (top[:, :k], top[:, k:])`` (the first part stays behind as a skip);
* ``concat`` -- ``(skip, top) -> cat([skip, top])``.

:class:`MemoryEfficientBackprop` runs the whole program inside one autograd ``Function``: the
forward runs without building a graph and saves only the program's outputs; the backward walks
the steps in reverse, reconstructing each step's input from its output by inversion
(``x = f^{-1}(y)``, iUNet paper Sec. 1) and back-propagating through that step alone. Peak
memory is therefore one activation (plus the U-Net's skip tensors and one step's graph)
independent of the number of blocks (Gomez et al. 2017). Nothing here touches the storage of
tensors the caller owns.

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


def _fresh_part(t: torch.Tensor) -> torch.Tensor:
    """Without autograd, copy a channel slice so the rest of its parent can be freed."""
    return t if torch.is_grad_enabled() else t.clone(memory_format=torch.contiguous_format)


class InvertibleProgram:
    """The steps plus the three ways to run them: forward, inverse, and backward-by-inversion."""

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
    def _offset(step: Step, stack: List[torch.Tensor],
                decided: Optional[List[torch.Tensor]] = None) -> Optional[torch.Tensor]:
        """Adaptive grid offset of a resampling step: the APS-D choice on the skip below the top, with
        the margins that let the inverse reproduce it from its reconstructed skip
        (:func:`~equinet.sampling.polyphase.invertible_phase`; whether it was decided by a margin is
        appended to ``decided``, if given)."""
        if not step.adaptive:
            return None
        if len(stack) < 2:
            raise RuntimeError(f"adaptive step {step.name} needs the skip tensor below the top of the stack")
        index, by_margin = invertible_phase(stack[-2], step.module.stride, step.p, other=stack[-1])
        if decided is not None:
            decided.append(by_margin)
        return index

    # -- forward / inverse ------------------------------------------------------------------
    def run(
        self, stack: List[torch.Tensor], offsets: Optional[List[Optional[torch.Tensor]]] = None,
        decided: Optional[List[torch.Tensor]] = None,
    ) -> List[torch.Tensor]:
        """Run forward on ``stack`` (modified in place and returned). Appends the offsets used by
        resampling steps to ``offsets`` and, for adaptive steps, whether the choice was decided by
        a margin to ``decided`` (if given), in step order."""
        for step in self.steps:
            if step.kind == "apply":
                stack[-1] = step.module(stack[-1])
            elif step.kind in ("down", "up"):
                offset = self._offset(step, stack, decided)
                if offsets is not None:
                    offsets.append(offset)
                stack[-1] = step.module(stack[-1], offset)
            elif step.kind == "split":
                x = stack.pop()
                stack += [_fresh_part(x[:, : step.split]), x[:, step.split :]]
            else:  # concat
                x = stack.pop()
                skip = stack.pop()
                stack.append(torch.cat([skip, x], dim=1))
        return stack

    def run_inverse(self, stack: List[torch.Tensor]) -> List[torch.Tensor]:
        """Invert the program: ``run_inverse(run(s)) == s`` (adaptive offsets are recomputed
        from the skip tensors, which the inverse recovers before it needs them)."""
        for step in reversed(self.steps):
            if step.kind == "apply":
                stack[-1] = step.module.inverse(stack[-1])
            elif step.kind in ("down", "up"):
                stack[-1] = step.module.inverse(stack[-1], self._offset(step, stack))
            elif step.kind == "split":
                x = stack.pop()
                skip = stack.pop()
                stack.append(torch.cat([skip, x], dim=1))
            else:  # concat
                v = stack.pop()
                stack += [_fresh_part(v[:, : step.split]), v[:, step.split :]]
        return stack

    # -- backward by inversion ----------------------------------------------------------------
    def backward(
        self,
        outputs: Sequence[torch.Tensor],
        grad_outputs: Sequence[torch.Tensor],
        offsets: Sequence[Optional[torch.Tensor]],
        params: Sequence[torch.Tensor],
    ) -> Tuple[List[torch.Tensor], List[Optional[torch.Tensor]]]:
        """Walk the steps backwards from the program's outputs: reconstruct each step's input
        by inversion and back-propagate through that step only. Returns (input grads, param grads)."""
        vals = [o.detach() for o in outputs]
        grads = list(grad_outputs)
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
                y, gy = vals[-1], grads[-1]
                ps = self.step_params(step)
                offset = offsets.pop() if step.kind != "apply" else None
                custom = getattr(step.module, "backward_by_inversion", None)
                if custom is not None:
                    x, gx, gps = custom(y, gy, ps) if step.kind == "apply" else custom(y, gy, ps, offset)
                else:
                    extra = () if step.kind == "apply" else (offset,)
                    with torch.no_grad():
                        x = step.module.inverse(y, *extra)
                    with torch.enable_grad():
                        xl = x.detach().requires_grad_(True)
                        out = step.module(xl, *extra)
                        gx, *gps = torch.autograd.grad(out, [xl, *ps], gy, allow_unused=True)
                    if gx is None:
                        gx = torch.zeros_like(x)
                vals[-1], grads[-1] = x.detach(), gx
                accumulate(ps, gps)
                del y, gy
            elif step.kind == "split":
                x, skip = vals.pop(), vals.pop()
                gx, gskip = grads.pop(), grads.pop()
                vals.append(torch.cat([skip, x], dim=1))
                grads.append(torch.cat([gskip, gx], dim=1))
            else:  # concat
                v, gv = vals.pop(), grads.pop()
                k = step.split
                vals += [v[:, :k], v[:, k:]]
                grads += [gv[:, :k], gv[:, k:]]
        return grads, pgrads


class MemoryEfficientBackprop(torch.autograd.Function):
    """``apply(program, n_inputs, *inputs, *params) -> outputs`` with backward by inversion.

    ``params`` must be ``program.params()`` (they are inputs only so that autograd routes their
    gradients here). Only the outputs are saved for backward.
    """

    @staticmethod
    def forward(ctx, program: InvertibleProgram, n_inputs: int, *tensors: torch.Tensor):
        inputs, params = tensors[:n_inputs], tensors[n_inputs:]
        offsets: List[Optional[torch.Tensor]] = []
        with torch.no_grad():
            outs = program.run(list(inputs), offsets)
        # An output may alias an input (e.g. an empty level); autograd needs a fresh tensor.
        storages = {t.untyped_storage().data_ptr() for t in inputs}
        outs = [o.clone() if o.untyped_storage().data_ptr() in storages else o for o in outs]
        ctx.program = program
        ctx.n_inputs = n_inputs
        ctx.n_params = len(params)
        ctx.offsets = offsets
        device = inputs[0].device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.params = params  # the module's own parameters (alive anyway); not saved tensors
        ctx.save_for_backward(*outs)
        ctx.n_outputs = len(outs)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grad_outputs: torch.Tensor):
        outs, params = ctx.saved_tensors, ctx.params
        grads = [torch.zeros_like(o) if g is None else g for o, g in zip(outs, grad_outputs)]
        device, enabled, dtype = ctx.autocast
        with torch.autocast(device_type=device, dtype=dtype, enabled=enabled):
            in_grads, pgrads = ctx.program.backward(outs, grads, ctx.offsets, params)
        in_grads = [g if need else None for g, need in zip(in_grads, ctx.needs_input_grad[2 : 2 + ctx.n_inputs])]
        return (None, None, *in_grads, *pgrads)
