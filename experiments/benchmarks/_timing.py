"""Timing helper for the benchmarks: interleaved repetitions, median, ratios from one run."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Dict


def interleaved_medians(fns: Dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2) -> Dict[str, float]:
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
