"""Learnable orthogonal downsampling, forward + backward, vs ``pixel_unshuffle`` (issue 12's row).

An orthogonal downsampling with stride ``s`` is a permutation of the pixels (what
``pixel_unshuffle`` does) followed by one ``sigma x sigma`` orthogonal matrix per channel; its
backward is the inverse permutation of the transposed product plus the matrix gradient (and the
gradient of the Cayley/exp parametrisation, which is tiny). ``pixel_unshuffle`` forward+backward
is the floor. Both run A B A B in one process; the figure is the median [min, max] of the
per-pair ratios. Also printed (not a target): the strided grouped convolution the layer used to
be (and the ``iunets`` library uses), as a ratio to the same floor.

    python experiments/benchmarks/orthogonal_speed.py [--check] [--device cuda] [--shape 8 64 128 128]
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _timing import Target, clock_name, fmt_range, paired_ratios, print_targets  # noqa: E402

from equinet.sampling.orthogonal import InvertibleDownsampling2D  # noqa: E402

ANCHOR = "iunets 1.56-1.65x"
TARGET = 1.2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 64, 128, 128], metavar=("B", "C", "H", "W"))
    parser.add_argument("--method", default="cayley")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--check", action="store_true", help="exit 1 if the target is missed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    b, c, h, w = args.shape
    x = torch.randn(b, c, h, w, device=device, requires_grad=True)
    grad = torch.randn(b, 4 * c, h // 2, w // 2, device=device)
    layer = InvertibleDownsampling2D(c, 2, args.method, "haar", learnable=True).to(device)
    weight = layer.orthogonal.weight

    def unshuffle():
        torch.autograd.grad(F.pixel_unshuffle(x, 2), [x], grad)

    def orthogonal():
        torch.autograd.grad(layer(x), [x, weight], grad)

    def grouped_conv():
        kernel = layer.orthogonal.matrix(x.dtype).reshape(4 * c, 1, 2, 2)
        torch.autograd.grad(F.conv2d(x, kernel, stride=2, groups=c), [x, weight], grad)

    with torch.no_grad():  # the same map (up to rounding)
        kernel = layer.orthogonal.matrix(x.dtype).reshape(4 * c, 1, 2, 2)
        err = (layer(x) - F.conv2d(x, kernel, stride=2, groups=c)).abs().max().item()
    ratios = paired_ratios(
        {"pixel_unshuffle": unshuffle, "orthogonal": orthogonal, "conv": grouped_conv},
        "pixel_unshuffle",
        device,
        repeats=args.repeats,
        warmup=2,
    )
    print(
        f"orthogonal downsampling ({args.method}, learnable, stride 2) of {tuple(args.shape)}, "
        "forward+backward, "
        f"device {args.device}, threads {torch.get_num_threads()}, time: {clock_name(device)}; "
        f"max |difference| to the grouped convolution {err:.1e}"
    )
    print(
        "strided grouped convolution (the former implementation) / pixel_unshuffle: "
        f"{fmt_range(ratios['conv'])}"
    )
    print_targets(
        "Target",
        [
            Target(
                f"orthogonal down, fwd+bwd, {tuple(args.shape)} / pixel_unshuffle",
                ratios["orthogonal"],
                TARGET,
                ANCHOR,
            )
        ],
        args.check,
    )


if __name__ == "__main__":
    main()
