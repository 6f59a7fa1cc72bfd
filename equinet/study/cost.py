"""What a variant costs next to the baseline: training step time and peak memory as ratios
measured side by side in one process on the same batch (so a variant run alone with ``--only``
still gets its ratio), plus the parameter count.

Time: the two training steps alternate (A B A B ...) after a warm-up and the median of the
per-pair ratios is reported, so load changes on a shared machine hit both alike. On a CPU with
one torch thread the steps' thread CPU time is used (other processes barely disturb it),
otherwise wall-clock time (synchronised on CUDA).

Memory (device-agnostic, deterministic): CUDA -- ``max_memory_allocated`` during the step minus
what was allocated before; CPU -- the PyTorch profiler's allocator events (``profile_memory``),
whose running total's peak during the step, relative to its start, is the step's peak tensor
memory (CPU has no ``max_memory_allocated``; process RSS would mix in allocator noise).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Dict, Iterable, List

import torch
import torch.nn.functional as F
from torch import nn


def _walk(nodes) -> Iterable:
    for n in nodes:
        yield n
        yield from _walk(n.children)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak tensor memory allocated while ``fn`` runs, relative to before it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # kineto (the profiler's backend) prints start/stop and "no GPU" lines unless told not to
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (
            e
            for e in _walk(prof.profiler.kineto_results.experimental_event_tree())
            if e.tag == _EventType.Allocation and str(e.extra_fields.device) == "cpu"
        ),
        key=lambda e: e.start_time_ns,
    )
    if not events:
        return 0
    # ``total_allocated`` is a process-wide running total that keeps blocks allocated under an
    # earlier profiler session and freed outside it: measure from the total before the first event
    start = events[0].extra_fields.total_allocated - events[0].extra_fields.alloc_size
    return max(0, max(e.extra_fields.total_allocated for e in events) - start)


def synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _cpu_thread_time(device: torch.device) -> bool:
    return torch.device(device).type == "cpu" and torch.get_num_threads() == 1


def clock_name(device: torch.device) -> str:
    """What :func:`time_call` measures on ``device``."""
    if torch.device(device).type == "cuda":
        return "CUDA events"
    return "thread CPU time" if _cpu_thread_time(device) else "wall clock"


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes: CUDA events on CUDA, the thread's CPU time on a CPU with
    one torch thread (other processes barely disturb it), else the wall clock."""
    device = torch.device(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    clock = time.thread_time if _cpu_thread_time(device) else time.perf_counter
    synchronize(device)
    start = clock()
    fn()
    synchronize(device)
    return clock() - start


def paired_seconds(
    fns: Dict[str, Callable[[], object]], device: torch.device, repeats: int = 9, warmup: int = 2
) -> Dict[str, List[float]]:
    """Seconds of every function in each of ``repeats`` rounds, A B A B alternation after a warm-up
    (so load changes on a shared machine hit all of them alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            seconds[name].append(time_call(fn, device))
    return seconds


def paired_ratios(
    fns: Dict[str, Callable[[], object]],
    reference: str,
    device: torch.device,
    repeats: int = 9,
    warmup: int = 2,
) -> Dict[str, List[float]]:
    """Per-round ratios ``time(name) / time(reference)`` of every function (:func:`paired_seconds`)."""
    seconds = paired_seconds(fns, device, repeats, warmup)
    return {name: [t / r for t, r in zip(ts, seconds[reference])] for name, ts in seconds.items()}


def interleaved_ratio(
    reference: Callable[[], object],
    candidate: Callable[[], object],
    device: torch.device,
    repeats: int = 7,
    warmup: int = 2,
) -> Dict[str, float]:
    """Median over A/B pairs of ``time(candidate) / time(reference)``, and the median times."""
    seconds = paired_seconds({"reference": reference, "candidate": candidate}, device, repeats, warmup)
    ratios = [c / r for r, c in zip(seconds["reference"], seconds["candidate"]) if r > 0]
    return {
        "ratio": statistics.median(ratios) if ratios else float("nan"),
        "reference_seconds": statistics.median(seconds["reference"]),
        "candidate_seconds": statistics.median(seconds["candidate"]),
        "clock": clock_name(device),
    }


def training_step(
    network: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 1e-3
) -> Callable[[], None]:
    """One MSE training step (forward, loss, backward, Adam update) of ``network`` on ``(x, y)``."""
    optimizer = (
        torch.optim.Adam(network.parameters(), lr=lr) if any(True for _ in network.parameters()) else None
    )

    def step() -> None:
        if optimizer is not None:
            optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(network(x), y)
        if loss.requires_grad:
            loss.backward()
        if optimizer is not None:
            optimizer.step()

    return step


def parameter_count(network: nn.Module) -> int:
    return sum(p.numel() for p in network.parameters())


def measure_cost(
    network: nn.Module,
    reference: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    repeats: int = 7,
    warmup: int = 2,
    same: bool = False,
) -> Dict[str, float]:
    """Step-time and peak-memory ratios of ``network`` to ``reference`` on the batch ``(x, y)``.

    ``same``: the network *is* the reference (ratios 1 by definition; its own figures measured).
    """
    device = torch.device(device)
    x, y = x.to(device), y.to(device)
    network = network.to(device).train()
    step = training_step(network, x, y)
    step()  # lazy initialisation (and Adam's state) before measuring
    if same:
        ref_step = step
    else:
        reference = reference.to(device).train()
        ref_step = training_step(reference, x, y)
        ref_step()
    # free the gradients first: the CPU profiler cannot see frees of blocks allocated before it
    # started, which would count them twice
    network.zero_grad(set_to_none=True)
    peak = peak_bytes(step, device)
    ref_peak = peak
    if not same:
        reference.zero_grad(set_to_none=True)
        ref_peak = peak_bytes(ref_step, device)
    timing = interleaved_ratio(ref_step, step, device, repeats=repeats, warmup=warmup)
    return {
        "params": parameter_count(network),
        "step_time_ratio": 1.0 if same else timing["ratio"],
        "peak_mem_ratio": 1.0 if same else (peak / ref_peak if ref_peak else float("nan")),
        "step_seconds": timing["candidate_seconds"],
        "reference_step_seconds": timing["reference_seconds"],
        "peak_bytes": int(peak),
        "reference_peak_bytes": int(ref_peak),
        "clock": timing["clock"],
        "device": str(device),
        "threads": torch.get_num_threads(),
        "batch": list(x.shape),
        "repeats": int(repeats),
    }
