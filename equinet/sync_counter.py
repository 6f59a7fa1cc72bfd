"""Count the host syncs a piece of PyTorch code does, and emulate the CUDA branches on a CPU (torch only).

A *host sync* is an operation whose result the host must wait for: a value read back to Python
(``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``), an output whose size depends on the data
(``nonzero``, ``masked_select``, ``unique``, boolean-mask indexing), a comparison returning a
Python bool (``equal``, ``allclose``), a linalg error check (``torch.linalg.solve``/``inv`` check
the factorisation's ``info`` on the host) or a blocking copy between the host and a device. On a
CUDA device each one stalls the stream, breaks a ``torch.compile`` graph and rules out CUDA graphs;
on a CPU it costs nothing, which is why it has to be counted rather than timed there.

Usage::

    with count_host_syncs(emulate_cuda=True) as syncs:
        loss = model(x).square().mean(); loss.backward()
    print(syncs.total, syncs.by_op, syncs.where)

:func:`count_host_syncs` records, per aten op, every such operation (a ``TorchDispatchMode`` for
the aten ops, a ``TorchFunctionMode`` for ``tolist``/``numpy``/``cpu``, which on a CPU tensor reach
no aten op). ``emulate_cuda=True`` also makes :func:`takes_cpu_branch` answer ``False``: code with
a CPU-only fast path (e.g. grouping samples with ``unique``/``tolist``, free on a CPU) reads it
instead of ``x.device.type`` so that the count on a CPU is the count a CUDA device would see, and
it counts what would be a device-host transfer there (``.cpu()``, ``.tolist()``, ``.numpy()``,
``torch.tensor(data, device=...)``) although on the CPU nothing moves. Without emulation only ops
on tensors off the CPU count (a CPU op has no device to wait for). What emulation cannot tell:
which CPU tensors would stay on the host on CUDA too; reads of an optimizer's state (its step
counter lives on the host unless ``capturable``) are therefore listed apart, in ``host_state``,
and a ``.to(device)`` of a host tensor whose target happens to be the CPU is not seen.
"""

from __future__ import annotations

import contextlib
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SyncTally", "count_host_syncs", "emulate_cuda_branches", "takes_cpu_branch", "SYNC_OPS"]

# aten ops (overload packet names) that always read a value or a data-dependent size to the host
SYNC_OPS = frozenset({
    "_local_scalar_dense",  # .item(), bool(t), int(t), float(t), if t:
    "is_nonzero",
    "nonzero",  # and torch.where(cond), argwhere, x.nonzero()
    "masked_select",
    "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive",
    "equal", "allclose",
    "_linalg_check_errors",  # torch.linalg.solve / inv / cholesky / ... (not the *_ex variants)
    "bincount",  # output size = max + 1 unless minlength covers it (counted always)
})
# ops whose boolean index tensors make the output size (or the write pattern) data dependent
_INDEX_OPS = frozenset({"index", "index_put", "index_put_", "_index_put_impl", "_index_put_impl_",
                        "_unsafe_index", "_unsafe_index_put"})
# ops with a ``check_errors`` flag that syncs when True
_CHECKED_OPS = frozenset({"linalg_inv_ex", "linalg_cholesky_ex", "linalg_lu_factor_ex", "linalg_ldl_factor_ex",
                          "linalg_solve_ex", "_linalg_solve_ex", "linalg_lu", "linalg_inv"})
_COPY_OPS = frozenset({"_to_copy", "copy_", "copy", "_copy_from", "_copy_from_and_resize", "to"})

_FORCED = 0  # depth of active emulate_cuda_branches() contexts


def takes_cpu_branch(x: torch.Tensor) -> bool:
    """Whether code may take its CPU-only path for ``x``: ``x`` is on the CPU and the CUDA branches
    are not being emulated (:func:`emulate_cuda_branches`). Read it instead of ``x.device.type``."""
    return x.device.type == "cpu" and not _FORCED


@contextlib.contextmanager
def emulate_cuda_branches() -> Iterator[None]:
    """Within the context, :func:`takes_cpu_branch` is ``False``: CPU code runs the branch a CUDA
    device takes (same results; used to count that branch's host syncs on a CPU)."""
    global _FORCED
    _FORCED += 1
    try:
        yield
    finally:
        _FORCED -= 1


@dataclass
class SyncTally:
    """What :func:`count_host_syncs` saw: ``by_op`` counts per op, ``where`` the first frame outside
    torch of each sync (``file:line function``), ``events`` the ``(op, where)`` pairs in order."""

    by_op: Counter = field(default_factory=Counter)
    where: Counter = field(default_factory=Counter)
    events: List[Tuple[str, str]] = field(default_factory=list)
    stacks: bool = True
    emulate: bool = False
    # emulation only: host reads of state that stays on the host on CUDA too (an optimizer's step
    # counter, unless ``capturable``), which the CPU cannot tell apart; not in ``total``
    host_state: Counter = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def add(self, op: str) -> None:
        stack = traceback.extract_stack()[:-2] if (self.stacks or self.emulate) else []
        if self.emulate and _reads_host_state(stack):
            self.host_state[op] += 1
            return
        place = _caller(stack) if self.stacks else ""
        self.by_op[op] += 1
        self.where[place] += 1
        self.events.append((op, place))

    def reset(self) -> None:
        self.host_state.clear()
        self.by_op.clear()
        self.where.clear()
        self.events.clear()

    def summary(self) -> str:
        """One line per op with its count, then the places (most frequent first)."""
        lines = [f"{self.total} host sync(s)"]
        lines += [f"  {op}: {n}" for op, n in self.by_op.most_common()]
        lines += [f"    at {w}: {n}" for w, n in self.where.most_common() if w]
        if self.host_state:
            lines.append(f"  (not counted: {sum(self.host_state.values())} read(s) of optimizer state kept on the host)")
        return "\n".join(lines)


_HOST_STATE = "/torch/optim/"


def _reads_host_state(stack) -> bool:
    """Whether the innermost frame outside torch's core is an optimizer's (its step counter), not
    code it calls back: a closure passed to ``optimizer.step`` (Lightning runs the whole training
    step so) has its own frames inside, and its syncs count."""
    for frame in reversed(stack):
        name = frame.filename.replace("\\", "/")
        if _HOST_STATE in name:
            return True
        if "/torch/" in name or name.endswith("sync_counter.py") or "/contextlib.py" in name:
            continue
        return False
    return False


def _caller(stack) -> str:
    for frame in reversed(stack):
        name = frame.filename.replace("\\", "/")
        if "/torch/" in name or name.endswith("sync_counter.py") or "/contextlib.py" in name:
            continue
        return f"{name}:{frame.lineno} {frame.name}"
    return "?"


def _is_mask(t) -> bool:
    return isinstance(t, torch.Tensor) and t.dtype in (torch.bool, torch.uint8)


def _device_of(value) -> Optional[torch.device]:
    if value is None:
        return None
    if isinstance(value, torch.device):
        return value
    if isinstance(value, (str, int)):
        try:
            return torch.device(value)
        except (RuntimeError, TypeError):
            return None
    return None


def _on_device(args, kwargs) -> bool:
    """Whether any tensor argument lives off the CPU."""
    for a in list(args) + list(kwargs.values()):
        for t in (a if isinstance(a, (list, tuple)) else (a,)):
            if isinstance(t, torch.Tensor) and t.device.type not in ("cpu", "meta"):
                return True
    return False


class _DispatchCounter(TorchDispatchMode):
    def __init__(self, tally: SyncTally, emulate: bool):
        super().__init__()
        self.tally, self.emulate, self.quiet = tally, emulate, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.quiet:
            op = self._sync(func, args, kwargs, out)
            if op:
                self.tally.add(op)
        return out

    def _sync(self, func, args, kwargs, out) -> Optional[str]:
        name = func.overloadpacket.__name__
        if name in _COPY_OPS or name == "lift_fresh":
            return self._copy(name, args, kwargs, out)
        if not (self.emulate or _on_device(args, kwargs)):
            return None  # a CPU op: no device to wait for
        if name in SYNC_OPS:
            return name
        if name in _INDEX_OPS:
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(_is_mask(i) for i in (indices or ()) if i is not None):
                return f"{name}[bool mask]"
            return None
        if name == "repeat_interleave":
            repeats = args[0] if args and isinstance(args[0], torch.Tensor) and len(args) == 1 else \
                (args[1] if len(args) > 1 else kwargs.get("repeats"))
            if isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None:
                return "repeat_interleave[tensor repeats]"
            return None
        if name in _CHECKED_OPS:
            if kwargs.get("check_errors", False):
                return f"{name}[check_errors]"
            return None
        return None

    @staticmethod
    def _copy(name, args, kwargs, out) -> Optional[str]:
        if name in _COPY_OPS:
            src = args[1] if name in ("copy_", "copy", "_copy_from") and len(args) > 1 else (args[0] if args else None)
            dst = out if name not in ("copy_",) else (args[0] if args else None)
            if not isinstance(src, torch.Tensor) or not isinstance(dst, torch.Tensor):
                return None
            s, d = src.device.type, dst.device.type
            if s != d and "meta" not in (s, d):
                if d == "cpu":
                    return f"{name}[device->host]"
                if s == "cpu" and not kwargs.get("non_blocking", False):
                    return f"{name}[blocking host->device]"
            return None
        if name == "lift_fresh" and isinstance(out, torch.Tensor) and out.device.type != "cpu":
            return "tensor(data)[host->device]"
        return None


class _FunctionCounter(TorchFunctionMode):
    """The host reads that reach no aten op on a CPU tensor (``tolist``, ``numpy``), and in emulation
    what would be a device-host copy on CUDA."""

    _READS = {"tolist", "numpy", "__array__"}

    def __init__(self, tally: SyncTally, dispatch: _DispatchCounter, emulate: bool):
        super().__init__()
        self.tally, self.dispatch, self.emulate = tally, dispatch, emulate

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        op = None
        if self.dispatch.quiet == 0:
            if name in self._READS and args and isinstance(args[0], torch.Tensor) and (
                    self.emulate or args[0].device.type not in ("cpu", "meta")):
                op = name
            elif self.emulate and args and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
                if name == "cpu":
                    op = "cpu[device->host]"
                elif name == "to" and any(_device_of(a) == torch.device("cpu") and isinstance(a, str)
                                          for a in list(args[1:]) + [kwargs.get("device")]):
                    op = "to('cpu')[device->host]"
            elif self.emulate and name in ("tensor", "as_tensor") and kwargs.get("device") is not None:
                op = f"{name}(data, device=...)[host->device]"
        if op is None:
            return func(*args, **kwargs)
        self.tally.add(op)
        self.dispatch.quiet += 1  # one event, not one per aten op it decomposes into
        try:
            return func(*args, **kwargs)
        finally:
            self.dispatch.quiet -= 1


@contextlib.contextmanager
def count_host_syncs(emulate_cuda: bool = False, stacks: bool = True) -> Iterator[SyncTally]:
    """Count the host syncs of the code run inside the context (module docstring); the yielded
    :class:`SyncTally` fills in as it runs. ``emulate_cuda``: also :func:`emulate_cuda_branches`,
    and count the copies that would cross the device boundary on CUDA. ``stacks``: record where."""
    tally = SyncTally(stacks=stacks, emulate=emulate_cuda)
    dispatch = _DispatchCounter(tally, emulate_cuda)
    function = _FunctionCounter(tally, dispatch, emulate_cuda)
    with contextlib.ExitStack() as stack:
        if emulate_cuda:
            stack.enter_context(emulate_cuda_branches())
        stack.enter_context(function)
        stack.enter_context(dispatch)
        yield tally
