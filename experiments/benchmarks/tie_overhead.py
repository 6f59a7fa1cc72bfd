"""Cost of the shift-consistent tie rule (issue 9): equinet's adaptive choices vs a plain argmax.

The plain argmax is what APS-D, LPS (eval), adaptive orthogonal resampling and the adaptive iUNet
did before the tie rule: ``argmax`` of the float64 component norms (LPS: logits), ties to the
first grid. Both run in this process, alternated A B A B (per-round ratios, see ``_timing``), on
inputs without ties -- the common case, which must cost the same (target: within 5%) -- and,
for information, the tie path on constant images, where every level ties (it only runs for the
samples that tie).

    python experiments/benchmarks/tie_overhead.py [--repeats 11] [--threads 1] [--only NAME] [--check]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import Target, clock_name, fmt_range, paired_ratios, print_targets  # noqa: E402

import equinet.models.memory_efficient as memory_efficient  # noqa: E402
import equinet.sampling.orthogonal.strategy as orthogonal  # noqa: E402
import equinet.sampling.polyphase_layers as polyphase_layers  # noqa: E402
from equinet.models import UNet  # noqa: E402
from equinet.models.iunet import LiftediUNet  # noqa: E402
from equinet.sampling.adaptive import PhaseChoice, unravel_phase  # noqa: E402
from equinet.sampling.polyphase import max_norm_choice, polyphase_norms, select_polyphase  # noqa: E402


def plain_choice(x, stride, p=2.0):
    return PhaseChoice(unravel_phase(polyphase_norms(x.detach(), stride, p).flatten(1).argmax(dim=1), stride))


def plain_lps(self, scores, sums, m):
    return PhaseChoice(unravel_phase(sums.argmax(dim=1), self.stride))


def plain_invertible(x, stride, p=2.0, other=None):
    index = plain_choice(x, stride, p).index
    return index, torch.ones(x.shape[0], dtype=torch.bool, device=x.device)


@contextlib.contextmanager
def plain_argmax():
    """Swap every adaptive choice for the plain argmax while inside."""
    saved = (polyphase_layers.max_norm_choice, orthogonal.max_norm_choice, polyphase_layers.LPSDown._choose,
             memory_efficient.invertible_phase)
    polyphase_layers.max_norm_choice = orthogonal.max_norm_choice = plain_choice
    polyphase_layers.LPSDown._choose = plain_lps
    memory_efficient.invertible_phase = plain_invertible
    try:
        yield
    finally:
        (polyphase_layers.max_norm_choice, orthogonal.max_norm_choice, polyphase_layers.LPSDown._choose,
         memory_efficient.invertible_phase) = saved


def pair(fn):
    """``fn`` with equinet's rule and with the plain argmax."""
    def plain():
        with plain_argmax():
            return fn()
    return {"rule": fn, "plain": plain}


def aps_down(shape):
    x = torch.randn(shape, requires_grad=True)

    def rule():
        return torch.autograd.grad(select_polyphase(x, max_norm_choice(x, (2, 2)).index, (2, 2)).sum(), x)

    def plain():
        return torch.autograd.grad(select_polyphase(x, plain_choice(x, (2, 2)).index, (2, 2)).sum(), x)

    return {"rule": rule, "plain": plain}


def unet_step(sampling, kwargs, args, train=True):
    torch.manual_seed(0)
    net = UNet(1, 1, channels=args.channels, depth=args.depth, sampling=sampling, sampling_kwargs=kwargs,
               padding_mode="circular")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 1, args.size, args.size)

    def step():
        if train:
            net.train()
            opt.zero_grad(set_to_none=True)
            net(x).square().mean().backward()
            opt.step()
        else:
            net.eval()
            with torch.no_grad():
                net(x)

    return pair(step)


def iunet_step(args):
    torch.manual_seed(0)
    net = LiftediUNet(1, 1, channels=16, depth=args.depth, architecture=2, adaptive_resampling=True,
                      padding_mode="circular", zero_init=False, verbose=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.randn(args.batch, 1, args.size, args.size)

    def step():
        opt.zero_grad(set_to_none=True)
        net(x).square().mean().backward()
        opt.step()

    return pair(step)


def tie_path(sampling, kwargs, args):
    """Eval forward of a constant batch (every level ties, every sample averages) vs a random one."""
    torch.manual_seed(0)
    net = UNet(1, 1, channels=args.channels, depth=args.depth, sampling=sampling, sampling_kwargs=kwargs,
               padding_mode="circular").eval()
    const = torch.full((args.batch, 1, args.size, args.size), 0.5)
    noise = torch.randn(args.batch, 1, args.size, args.size)

    def run(x):
        def f():
            with torch.no_grad():
                net(x)
        return f

    return {"rule": run(const), "plain": run(noise)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--only", default="", help="run only the cases whose name contains this")
    parser.add_argument("--check", action="store_true", help="exit 1 if the 5%% target is missed")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {
        "APS-D fwd+bwd (4,64,128,128)": lambda: aps_down((4, 64, 128, 128)),
        "APS-D fwd+bwd (16,32,160,160)": lambda: aps_down((16, 32, 160, 160)),
        "U-Net step, aps": lambda: unet_step("aps", {}, args),
        "U-Net step, aps filter 3": lambda: unet_step("aps", {"filter_size": 3}, args),
        "U-Net step, orthogonal adaptive": lambda: unet_step("orthogonal", {"adaptive": True}, args),
        "U-Net eval forward, lps": lambda: unet_step("lps", {}, args, train=False),
        "LiftediUNet step (16 ch), adaptive": lambda: iunet_step(args),
    }
    device = torch.device("cpu")
    print(f"threads {torch.get_num_threads()}, time: {clock_name(device)}, {args.repeats} rounds; U-Nets: "
          f"channels {args.channels}, depth {args.depth}, {args.size}x{args.size}, batch {args.batch}, "
          "random inputs")
    print("| case (no ties) | with the tie rule / plain argmax (median [min, max]) |\n|---|---:|")
    targets = []
    for name, build in cases.items():
        if args.only not in name:
            continue
        ratios = paired_ratios(build(), "plain", device, repeats=args.repeats, warmup=1)["rule"]
        print(f"| {name} | {fmt_range(ratios)} |")
        targets.append(Target(f"{name}: tie rule / plain argmax", ratios, 1.05, "no ties"))
    if args.only:
        print_targets("Targets", targets, args.check)
        return
    print("\n| tie path: constant batch (every level ties) / random batch, eval forward | ratio |")
    print("|---|---:|")
    for name, (sampling, kwargs) in {"aps": ("aps", {}), "lps": ("lps", {}),
                                     "orthogonal adaptive": ("orthogonal", {"adaptive": True})}.items():
        ratios = paired_ratios(tie_path(sampling, kwargs, args), "plain", device,
                               repeats=max(3, args.repeats // 2), warmup=1)["rule"]
        print(f"| {name} | {fmt_range(ratios)} |")
    print_targets("Targets", targets, args.check)


if __name__ == "__main__":
    main()
