"""One training step (forward, MSE, backward, Adam) of each strategy's U-Net vs the maxpool U-Net.

Issue 12's setting: base channels 32 (32..512 over depth 4), circular padding, input
(4, 1, 128, 128). The variants run A B A B in one process (after a warm-up); each is reported
as the median [min, max] of its per-round ratio to maxpool (thread CPU time with one thread,
CUDA events on a GPU). Targets: LPS <= 1.12x, APS-3 <= 1.06x, APS (= APS-1) <= 1.03x.

    python experiments/benchmarks/unet_step.py [--check] [--device cuda] [--variants ... | --all]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Target, clock_name, fmt_range, paired_ratios, print_targets, synchronize  # noqa: E402

from equinet.models import UNet  # noqa: E402
from equinet.study import VARIANTS, available_variants  # noqa: E402

# variant -> (target ratio to maxpool, the anchor from issue 12)
TARGETS = {
    "LPS": (1.12, "the LPS reference has no U-Net"),
    "APS-3": (1.06, "APS reference 1.44-1.50x"),
    "APS": (1.03, "APS reference 1.35-1.39x"),
}
DEFAULT = ["maxpool", "APS", "APS-3", "LPS"]


def make_step(variant: str, args) -> callable:
    strategy, kwargs = VARIANTS[variant]
    torch.manual_seed(0)
    net = (
        UNet(
            1,
            1,
            channels=args.channels,
            depth=args.depth,
            sampling=strategy,
            sampling_kwargs=kwargs,
            padding_mode="circular",
        )
        .to(args.device)
        .train()
    )
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch, 1, args.size, args.size, generator=g).to(args.device)
    y = torch.randn(x.shape, generator=g).to(args.device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        synchronize(torch.device(args.device))

    return step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT)
    parser.add_argument("--all", action="store_true", help="every registered variant")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    wanted = list(VARIANTS) if args.all else args.variants
    variants = [v for v in wanted if v in available_variants()]
    skipped = sorted(set(wanted) - set(variants))
    if "maxpool" not in variants:
        variants.insert(0, "maxpool")
    steps = {v: make_step(v, args) for v in variants}
    ratios = paired_ratios(steps, "maxpool", device, repeats=args.repeats, warmup=1)
    print(
        f"U-Net training step, channels {args.channels}..{args.channels * 2**args.depth} "
        f"(depth {args.depth}), "
        f"input ({args.batch}, 1, {args.size}, {args.size}), device {args.device}, "
        f"threads {torch.get_num_threads()}, time: {clock_name(device)}, {args.repeats} rounds"
    )
    print("| variant | step time / maxpool (median [min, max]) |\n|---|---:|")
    for v in variants:
        print(f"| {v} | {fmt_range(ratios[v])} |")
    if skipped:
        print(f"(not available in this installation: {', '.join(skipped)})")
    targets = [
        Target(f"{'APS-1' if v == 'APS' else v} U-Net train step / maxpool", ratios[v], bound, anchor)
        for v, (bound, anchor) in TARGETS.items()
        if v in ratios
    ]
    if targets:
        print_targets("Targets", targets, args.check)


if __name__ == "__main__":
    main()
