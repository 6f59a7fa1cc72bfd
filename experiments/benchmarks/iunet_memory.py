"""Peak memory and time of one iUNet training step: memory-efficient vs plain backprop.

For an iUNet with ``d`` = 2, 4, 8 invertible blocks per level and side, one training step
(forward, loss, backward, SGD update) is run with memory-efficient backprop (activations
reconstructed by inversion) and with plain backprop (``disable_custom_gradient=True``).

How memory is measured (device-agnostic, and real on CPU):

* CUDA: ``torch.cuda.max_memory_allocated()`` during the step minus the memory allocated
  before it (the caching allocator's true high-water mark of tensor memory).
* CPU: the PyTorch profiler with ``profile_memory=True`` records every allocation and free of
  the CPU allocator together with the running total of allocated bytes; the peak of that total
  during the step, relative to its start, is the step's peak tensor memory. (CPU has no
  ``max_memory_allocated``; process RSS would mix in allocator and library noise.)
* In addition, on any device: the bytes autograd saves for the backward pass, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (unique storages) -- the quantity that
  memory-efficient backprop removes.

Time: the two modes alternate step by step in one run (after a warm-up); the ratio of their
median step times is reported. On CPU the default is one torch thread and the step's CPU
time (``time.thread_time``), which other processes on a shared machine barely disturb; the
wall-clock ratio is printed too. All figures are ratios from one run. Targets (iUNet
issue): memory-efficient peak grows <= 1.15x from d=2 to d=8 while plain grows roughly
linearly; time overhead <= 1.5x.

    python experiments/benchmarks/iunet_memory.py            # ~1-2 minutes on 2 CPU cores
    python experiments/benchmarks/iunet_memory.py --size 256 --batch 2 --repeats 9 --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from equinet.models.iunet import iUNet  # noqa: E402
from equinet.study.cost import peak_bytes  # noqa: E402  (shared with the study's cost columns)


def build(depth: int, plain: bool, args) -> iUNet:
    torch.manual_seed(0)
    levels = args.levels
    return iUNet(
        channels=tuple(args.channels * 2**i for i in range(levels)),
        architecture=(depth,) * levels,
        dim=2,
        module_kwargs={"zero_init": False},
        disable_custom_gradient=plain,
        verbose=0,
    ).to(args.device)


def training_step(
    model: iUNet, x: torch.Tensor, target: torch.Tensor, lr: float = 1e-3, zero_grad: bool = True
) -> None:
    if zero_grad:
        model.zero_grad(set_to_none=True)
    loss = (model(x) - target).square().mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def saved_bytes(fn: Callable[[], None]) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs."""
    storages: Dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def forward_only(model: iUNet, x: torch.Tensor) -> Callable[[], None]:
    def run():
        model(x).square().mean()

    return run


def measure(args) -> Dict[Tuple[int, str], Dict[str, float]]:
    device = torch.device(args.device)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    target = torch.randn_like(x)
    results: Dict[Tuple[int, str], Dict[str, float]] = {}
    for depth in args.depths:
        models = {mode: build(depth, mode == "plain", args) for mode in ("memory-efficient", "plain")}
        for mode, model in models.items():
            training_step(model, x, target)  # warm-up (lazy initialisation)
            # free the old gradients before measuring: the CPU profiler cannot see frees of
            # blocks allocated before it started, which would count them twice
            model.zero_grad(set_to_none=True)
            results[(depth, mode)] = {
                "peak": peak_bytes(lambda: training_step(model, x, target, zero_grad=False), device),
                "saved": saved_bytes(forward_only(model, x)),
                "times": [],
                "cpu_times": [],
            }
        for _ in range(args.repeats):  # alternate the modes so load changes hit both
            for mode, model in models.items():
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0, c0 = time.perf_counter(), time.thread_time()
                training_step(model, x, target)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                results[(depth, mode)]["times"].append(time.perf_counter() - t0)
                results[(depth, mode)]["cpu_times"].append(time.thread_time() - c0)
        for mode in models:
            res = results[(depth, mode)]
            res["wall"] = statistics.median(res["times"])
            # one CPU thread: thread CPU time is robust to other load; otherwise wall clock
            cpu_timing = device.type == "cpu" and torch.get_num_threads() == 1
            res["time"] = statistics.median(res["cpu_times"]) if cpu_timing else res["wall"]
        print(f"  measured depth {depth}", file=sys.stderr, flush=True)
    return results


def main(argv=None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8], help="blocks per level and side")
    parser.add_argument("--channels", type=int, default=8, help="channels at the finest level")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="image height = width")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per mode and depth")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"iUNet training step, 2D, {args.levels} levels, channels {args.channels}.., input "
        f"{args.batch}x{args.channels}x{args.size}x{args.size}, device {args.device}",
        file=sys.stderr,
    )
    r = measure(args)
    d0, d1 = args.depths[0], args.depths[-1]
    mib = 2.0**20
    print(f"\n{'blocks/level':>12} | {'peak ME MiB':>11} | {'peak plain MiB':>14} | {'ME/plain':>8} | "
          f"{'saved ME MiB':>12} | {'saved plain MiB':>15} | {'time ME/plain':>13} | {'wall ME/plain':>13}")
    print("-" * 120)
    for d in args.depths:
        me, pl = r[(d, "memory-efficient")], r[(d, "plain")]
        print(f"{d:>12} | {me['peak'] / mib:>11.2f} | {pl['peak'] / mib:>14.2f} | {me['peak'] / pl['peak']:>8.3f} | "
              f"{me['saved'] / mib:>12.2f} | {pl['saved'] / mib:>15.2f} | {me['time'] / pl['time']:>13.3f} | "
              f"{me['wall'] / pl['wall']:>13.3f}")
    summary = {
        "me_peak_growth": r[(d1, "memory-efficient")]["peak"] / r[(d0, "memory-efficient")]["peak"],
        "plain_peak_growth": r[(d1, "plain")]["peak"] / r[(d0, "plain")]["peak"],
        "time_overhead": max(r[(d, "memory-efficient")]["time"] / r[(d, "plain")]["time"] for d in args.depths),
    }
    print(
        f"\npeak growth from {d0} to {d1} blocks/level: memory-efficient {summary['me_peak_growth']:.3f}x "
        f"(target <= 1.15x), plain {summary['plain_peak_growth']:.3f}x (depth ratio {d1 / d0:.1f}x)"
    )
    print(f"time overhead memory-efficient vs plain: worst {summary['time_overhead']:.3f}x (target <= 1.5x)")
    return summary


if __name__ == "__main__":
    main()
