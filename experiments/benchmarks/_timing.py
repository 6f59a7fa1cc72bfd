"""Measurement helpers shared by the benchmarks: paired timing ratios, peak memory, target rows.

Time: the variants run A B A B ... in one process (after a warm-up), every round timing each of
them once; the figure is the median (and range) of the per-round ratios to a reference, so load
changes on a shared machine hit both sides of each ratio. On the CPU with one torch thread the
time of a call is the calling thread's CPU time (``time.thread_time``: other processes barely
disturb it), with more threads the wall clock; on CUDA it is measured with CUDA events.

Memory: on the CPU the PyTorch profiler (``profile_memory=True``) records every allocation and
free of the allocator together with its running total; the peak of that total during the call,
relative to its start, is the call's peak tensor memory (CPU has no ``max_memory_allocated``;
process RSS would mix in allocator and library noise). On CUDA: ``torch.cuda.max_memory_allocated``
during the call minus the memory allocated before it.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch


def interleaved_medians(
    fns: Dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2
) -> Dict[str, float]:
    """Median seconds per call of each function, timed round-robin so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes (see the module docstring for the clock)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    clock = time.thread_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def clock_name(device: torch.device) -> str:
    if device.type == "cuda":
        return "CUDA events"
    return "thread CPU time" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall clock"


def paired_ratios(
    fns: Dict[str, Callable[[], object]],
    reference: str,
    device: torch.device,
    repeats: int = 9,
    warmup: int = 2,
) -> Dict[str, List[float]]:
    """Per-round ratios ``time(name) / time(reference)`` of every function, A B A B alternation."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    ratios: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        seconds = {name: time_call(fn, device) for name, fn in fns.items()}
        for name in fns:
            ratios[name].append(seconds[name] / seconds[reference])
    return ratios


def summary(values: Sequence[float]) -> Tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def fmt_range(values: Sequence[float], unit: str = "x") -> str:
    median, low, high = summary(values)
    return f"{median:.2f}{unit} [{low:.2f}, {high:.2f}]"


def _walk(nodes):
    for n in nodes:
        yield n
        yield from _walk(n.children)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak tensor memory allocated while ``fn`` runs, relative to before it (see module docstring).

    On the CPU, free tensors that were allocated before (e.g. old gradients) first: the profiler
    does not see the allocation of a block freed during the call, only its free."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    totals = [
        e.extra_fields.total_allocated
        for e in _walk(prof.profiler.kineto_results.experimental_event_tree())
        if e.tag == _EventType.Allocation and str(e.extra_fields.device) == "cpu"
    ]
    return max([0] + totals)


@dataclass
class Target:
    """One row of a benchmark's target table: a measured ratio and the bound it must meet."""

    measure: str
    values: Sequence[float]  # one value (deterministic) or per-round ratios
    bound: float
    anchor: str = ""
    note: str = ""

    @property
    def value(self) -> float:
        return statistics.median(self.values)

    @property
    def met(self) -> bool:
        return self.value <= self.bound

    def row(self) -> str:
        shown = f"{self.values[0]:.3f}x" if len(self.values) == 1 else fmt_range(self.values)
        verdict = "PASS" if self.met else "MISS"
        extra = f" {self.note}" if self.note else ""
        return f"| {self.measure} | {self.anchor} | {shown}{extra} | <= {self.bound:g}x | {verdict} |"


def print_targets(
    title: str, targets: Sequence[Target], check: bool, header_note: Optional[str] = None
) -> bool:
    """Print the target table; with ``check`` exit 1 if any target is missed. Returns all-met."""
    print(f"\n{title}")
    if header_note:
        print(header_note)
    print("| measure | anchor | measured (median [min, max]) | target | |")
    print("|---|---|---|---|---|")
    for t in targets:
        print(t.row())
    missed = [t.measure for t in targets if not t.met]
    print(
        f"\n{len(targets) - len(missed)}/{len(targets)} targets met"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    if check and missed:
        raise SystemExit(1)
    return not missed
