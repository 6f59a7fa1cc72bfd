"""Peak memory and time of one iUNet training step: memory-efficient vs plain backprop, vs the anchors.

The setting of issue 12: channels (16, 32, 64, 128), input (2, 16, 128, 128), 2 convolutions per
coupling block (``block_depth=2``), zero-init off, 2 / 4 / 8 blocks per level and side. One
training step = forward, MSE loss, backward, SGD update.

Memory: every configuration in a fresh process (``--one``), one warm-up step, then the peak
tensor memory of one step (CPU: profiler allocator total; CUDA: ``max_memory_allocated``; see
``_timing``). The parameter gradients are allocated during the step and are part of the peak.
Time: memory-efficient and plain steps alternate in one process (A B A B), median [min, max] of
the per-pair ratios (thread CPU time with one thread; CUDA events on a GPU).

Anchors (the public implementations, iunets 0.1 + memcnn 1.5.2): the issue's figures by default.
``--anchors`` measures them in the same way instead when the ``iunets`` package is importable
(e.g. ``pip install --target /tmp/anchors iunets memcnn`` and ``PYTHONPATH=/tmp/anchors``); equinet
does not depend on them.

    python experiments/benchmarks/iunet_memory.py [--check] [--device cuda] [--anchors]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Dict, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import Target, clock_name, fmt_range, paired_ratios, peak_bytes, print_targets  # noqa: E402

from equinet.models.iunet import iUNet  # noqa: E402

MIB = 2.0**20
# issue 12's table: iunets + memcnn (memory-efficient) and iunets plain, peak MiB at 2 / 4 / 8 blocks
ISSUE_ANCHORS = {"memcnn": {2: 20.5, 4: 20.5, 8: 23.1}, "iunets plain": {2: 58.0, 4: 96.0, 8: 171.0}}
TARGETS = {"me_vs_memcnn": 0.8, "me_growth": 1.05, "plain_vs_iunets": 1.0, "time": 1.30}


def build(impl: str, depth: int, plain: bool, args) -> torch.nn.Module:
    torch.manual_seed(0)
    channels = tuple(args.channels * 2**i for i in range(args.levels))
    if impl == "iunets":  # the public library (optional; only with --anchors)
        import iunets

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = iunets.iUNet(
                channels[0],
                (depth,) * args.levels,
                dim=2,
                module_kwargs={"block_depth": 2},
                disable_custom_gradient=plain,
                verbose=0,
            )
    else:
        net = iUNet(
            channels,
            (depth,) * args.levels,
            dim=2,
            module_kwargs={"block_depth": 2, "zero_init": False},
            disable_custom_gradient=plain,
            verbose=0,
        )
    return net.to(args.device)


def training_step(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, lr: float = 1e-3, zero_grad: bool = True
) -> None:
    if zero_grad:
        model.zero_grad(set_to_none=True)
    loss = (model(x) - target).square().mean()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)


def inputs(args):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, args.channels, args.size, args.size, generator=g).to(args.device)
    return x, torch.randn(x.shape, generator=g).to(args.device)


def measure_one(impl: str, mode: str, depth: int, args) -> Dict[str, float]:
    """Peak of one training step (after a warm-up step) in this process."""
    device = torch.device(args.device)
    model = build(impl, depth, mode == "plain", args)
    x, target = inputs(args)
    training_step(model, x, target)
    model.zero_grad(set_to_none=True)  # (the CPU profiler would count frees of old gradients)
    peak = peak_bytes(lambda: training_step(model, x, target, zero_grad=False), device)
    grads = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return {"peak": peak, "grads": grads}


def measure_fresh(impl: str, mode: str, depth: int, args) -> Dict[str, float]:
    """:func:`measure_one` in a fresh process (nothing cached from other configurations)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--one",
        impl,
        mode,
        str(depth),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
        "--channels",
        str(args.channels),
        "--levels",
        str(args.levels),
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def time_ratios(depth: int, args) -> List[float]:
    device = torch.device(args.device)
    models = {mode: build("equinet", depth, mode == "plain", args) for mode in ("memory-efficient", "plain")}
    x, target = inputs(args)
    steps = {mode: (lambda m=m: training_step(m, x, target)) for mode, m in models.items()}
    return paired_ratios(steps, "plain", device, repeats=args.repeats, warmup=2)["memory-efficient"]


def main(argv=None) -> Dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8], help="blocks per level and side")
    parser.add_argument("--channels", type=int, default=16, help="channels at the finest level")
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--size", type=int, default=128, help="image height = width")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9, help="timed step pairs per depth")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--anchors", action="store_true", help="measure iunets + memcnn instead of the issue's figures"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument("--one", nargs=3, metavar=("IMPL", "MODE", "DEPTH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        impl, mode, depth = args.one
        print(json.dumps(measure_one(impl, mode, int(depth), args)))
        return {}

    device = torch.device(args.device)
    print(
        f"iUNet training step, 2D, channels {tuple(args.channels * 2**i for i in range(args.levels))}, "
        f"input ({args.batch}, {args.channels}, {args.size}, {args.size}), 2 convs per block, "
        f"device {args.device}, "
        f"threads {torch.get_num_threads()}, time: {clock_name(device)}",
        flush=True,
    )
    memory = {
        (impl, mode, d): measure_fresh(impl, mode, d, args)
        for d in args.depths
        for impl, mode in (("equinet", "memory-efficient"), ("equinet", "plain"))
    }
    if args.anchors:
        for d in args.depths:
            memory[("iunets", "memory-efficient", d)] = measure_fresh("iunets", "memory-efficient", d, args)
            memory[("iunets", "plain", d)] = measure_fresh("iunets", "plain", d, args)
        anchors = {
            "memcnn": {d: memory[("iunets", "memory-efficient", d)]["peak"] / MIB for d in args.depths},
            "iunets plain": {d: memory[("iunets", "plain", d)]["peak"] / MIB for d in args.depths},
        }
        source = "measured here"
    else:
        anchors, source = ISSUE_ANCHORS, "issue 12's figures"
    times = {d: time_ratios(d, args) for d in args.depths}

    print(
        "\n| blocks/level | memory-efficient MiB | plain MiB | memcnn MiB | iunets plain MiB | "
        "param grads MiB | time ME/plain |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d in args.depths:
        me, pl = memory[("equinet", "memory-efficient", d)], memory[("equinet", "plain", d)]
        print(
            f"| {d} | {me['peak'] / MIB:.2f} | {pl['peak'] / MIB:.2f} | "
            f"{anchors['memcnn'].get(d, float('nan')):.2f} | "
            f"{anchors['iunets plain'].get(d, float('nan')):.2f} | "
            f"{me['grads'] / MIB:.2f} | {fmt_range(times[d])} |"
        )

    d0, d1 = args.depths[0], args.depths[-1]
    me0, me1 = memory[("equinet", "memory-efficient", d0)], memory[("equinet", "memory-efficient", d1)]
    growth = me1["peak"] / me0["peak"]
    growth_activations = (me1["peak"] - me1["grads"]) / (me0["peak"] - me0["grads"])
    targets = []
    for d in args.depths:
        if d in anchors["memcnn"]:
            targets.append(
                Target(
                    f"memory-efficient peak, {d} blocks / memcnn",
                    [memory[("equinet", "memory-efficient", d)]["peak"] / MIB / anchors["memcnn"][d]],
                    TARGETS["me_vs_memcnn"],
                    f"{anchors['memcnn'][d]:.1f} MiB",
                )
            )
    memcnn_growth = anchors["memcnn"].get(d1, float("nan")) / anchors["memcnn"].get(d0, float("nan"))
    targets.append(
        Target(
            f"memory-efficient peak growth {d0} -> {d1} blocks",
            [growth],
            TARGETS["me_growth"],
            f"memcnn {memcnn_growth:.2f}x",
            f"(without the parameter gradients, {(me1['grads'] - me0['grads']) / MIB:.1f} MiB more at "
            f"{d1} blocks: {growth_activations:.3f}x)",
        )
    )
    for d in args.depths:
        if d in anchors["iunets plain"]:
            targets.append(
                Target(
                    f"plain peak, {d} blocks / iunets plain",
                    [memory[("equinet", "plain", d)]["peak"] / MIB / anchors["iunets plain"][d]],
                    TARGETS["plain_vs_iunets"],
                    f"{anchors['iunets plain'][d]:.0f} MiB",
                )
            )
    for d in args.depths:
        targets.append(
            Target(
                f"memory-efficient / plain step time, {d} blocks",
                times[d],
                TARGETS["time"],
                "memcnn 1.69-1.90x",
            )
        )
    print_targets(f"Targets (anchors: {source})", targets, args.check)
    return {
        "me_peak_growth": growth,
        "me_activation_growth": growth_activations,
        "plain_peak_growth": memory[("equinet", "plain", d1)]["peak"]
        / memory[("equinet", "plain", d0)]["peak"],
        "time_overhead": max(statistics.median(times[d]) for d in args.depths),
        "me_vs_memcnn": {
            d: memory[("equinet", "memory-efficient", d)]["peak"] / MIB / anchors["memcnn"][d]
            for d in args.depths
            if d in anchors["memcnn"]
        },
        "plain_vs_iunets": {
            d: memory[("equinet", "plain", d)]["peak"] / MIB / anchors["iunets plain"][d]
            for d in args.depths
            if d in anchors["iunets plain"]
        },
    }


if __name__ == "__main__":
    main()
