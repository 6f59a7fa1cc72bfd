"""One training step (forward, MSE, backward, Adam) of each strategy's U-Net vs the maxpool U-Net.

Paper-sized U-Net: 64 base channels, depth 4, circular padding, 128x128 inputs, batch 4, on
the CPU by default (``--device cuda`` on a GPU box). Prints each strategy's step time as a
ratio to maxpool measured in this run (target: aps <= 1.25x).

    python experiments/benchmarks/unet_step.py [--check] [--device cpu|cuda] [--variants ...]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import interleaved_medians  # noqa: E402

from equinet.models import UNet  # noqa: E402
from equinet.study import VARIANTS, available_variants  # noqa: E402

DEFAULT = ["maxpool", "maxpool+bilinear", "avgpool", "strided_conv", "LPF-3", "APS", "APS-3", "LPS",
           "orthogonal", "orthogonal-adaptive"]


def make_step(variant: str, args) -> callable:
    strategy, kwargs = VARIANTS[variant]
    torch.manual_seed(0)
    net = UNet(1, 1, channels=args.channels, depth=args.depth, sampling=strategy, sampling_kwargs=kwargs,
               padding_mode="circular").to(args.device).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 1, args.size, args.size, device=args.device)
    y = torch.randn_like(x)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--check", action="store_true", help="exit 1 if aps exceeds 1.25x maxpool")
    args = parser.parse_args()
    variants = [v for v in args.variants if v in available_variants()]
    skipped = sorted(set(args.variants) - set(variants))
    if "maxpool" not in variants:
        variants.insert(0, "maxpool")
    steps = {v: make_step(v, args) for v in variants}
    times = interleaved_medians(steps, repeats=args.repeats, warmup=1)
    print(f"U-Net training step, channels={args.channels} depth={args.depth} {args.size}x{args.size} "
          f"batch={args.batch} device={args.device} threads={torch.get_num_threads()} (median of {args.repeats})")
    print("| variant | step time / maxpool |\n|---|---:|")
    for v in variants:
        print(f"| {v} | {times[v] / times['maxpool']:.2f}x |")
    if skipped:
        print(f"(not available in this installation: {', '.join(skipped)})")
    if "APS" in times:
        ratio = times["APS"] / times["maxpool"]
        print(f"\naps / maxpool = {ratio:.2f}x (target <= 1.25x): {'PASS' if ratio <= 1.25 else 'MISS'}")
        if args.check and ratio > 1.25:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
