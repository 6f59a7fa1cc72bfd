"""APS-D forward+backward: equinet's vectorised implementation vs the straightforward one.

The straightforward implementation (as in the original APS code) stacks the four strided
slices into a new tensor, takes a norm per component and picks one per sample. equinet's
computes the norms on a reshaped view (per-pixel channel sums, float64 accumulation over pixels),
gathers only the chosen component, and backpropagates by writing the gradient straight onto the
chosen grid. Prints the speed-up measured in this run, A B A B, median [min, max] of the
per-pair ratios (target: >= 3x).

    python experiments/benchmarks/aps_speed.py [--check] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import clock_name, fmt_range, paired_ratios, summary  # noqa: E402

from equinet.sampling.polyphase import max_norm_phase, select_polyphase  # noqa: E402


def aps_down_straightforward(x: torch.Tensor) -> torch.Tensor:
    """Stack the polyphase components, l2 norm each, index the largest per sample."""
    poly = torch.stack([x[:, :, i::2, j::2] for i in (0, 1) for j in (0, 1)], dim=1)
    norms = torch.linalg.vector_norm(poly.flatten(2), dim=2)
    return poly[torch.arange(x.shape[0], device=x.device), norms.argmax(dim=1)]


def aps_down_equinet(x: torch.Tensor) -> torch.Tensor:
    return select_polyphase(x, max_norm_phase(x.detach(), (2, 2)), (2, 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--check", action="store_true", help="exit 1 if the 3x target is missed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    shapes = [(4, 64, 128, 128), (4, 128, 64, 64), (16, 32, 160, 160)]
    print(
        f"threads={torch.get_num_threads()}  device={args.device}  time: {clock_name(device)}  "
        f"repeats={args.repeats}"
    )
    print("| input (B,C,H,W) | equal outputs | straightforward / equinet (fwd+bwd), median [min, max] |")
    print("|---|---|---:|")
    worst = float("inf")
    for shape in shapes:
        x = torch.randn(shape, device=device, requires_grad=True)
        same = torch.equal(aps_down_straightforward(x), aps_down_equinet(x))
        grad_a = torch.autograd.grad(aps_down_straightforward(x).square().sum(), x)[0]
        grad_b = torch.autograd.grad(aps_down_equinet(x).square().sum(), x)[0]
        same = same and torch.equal(grad_a, grad_b)

        def step(fn):
            return lambda: torch.autograd.grad(fn(x).sum(), x)

        ratios = paired_ratios(
            {"naive": step(aps_down_straightforward), "ours": step(aps_down_equinet)},
            "ours",
            device,
            repeats=args.repeats,
        )
        worst = min(worst, summary(ratios["naive"])[0])
        print(f"| {shape} | {same} | {fmt_range(ratios['naive'])} |")
        if not same:
            raise SystemExit("outputs or gradients differ")
    print(f"\nworst speed-up {worst:.2f}x (target >= 3x): {'PASS' if worst >= 3 else 'MISS'}")
    if args.check and worst < 3:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
