"""Measurement helpers shared by the benchmarks: paired timing ratios, peak memory, target rows.

(The clock and the memory peak live in :mod:`equinet.study.cost`, which the study's cost columns use too.)

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
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# one implementation of the clock and the memory peak, shared with the study's cost columns
from equinet.study.cost import clock_name, paired_ratios, peak_bytes, synchronize, time_call  # noqa: E402,F401


def summary(values: Sequence[float]) -> Tuple[float, float, float]:
    """(median, min, max)."""
    return statistics.median(values), min(values), max(values)


def fmt_range(values: Sequence[float], unit: str = "x") -> str:
    median, low, high = summary(values)
    return f"{median:.2f}{unit} [{low:.2f}, {high:.2f}]"


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
