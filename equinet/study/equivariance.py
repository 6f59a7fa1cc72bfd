"""``equinet equivariance``: shift equivariance of randomly initialised U-Nets, per strategy.

It measures, for randomly initialised circularly padded U-Nets of every
strategy, the shift-equivariance metrics of the APS-U paper on natural images bundled with
scikit-image (no download): NMSE/SSIM between ``T_k(G(x))`` and ``G(T_k(x))`` for random shifts
``k`` in [-16, 16]^2 and the worst |dPSNR| over those shifts (target: the clean image).
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from equinet.files import atomic_write_text
from equinet.metrics import measure_equivariance, random_shifts, worst_case_dpsnr
from equinet.models import UNet
from equinet.study.variants import VARIANTS, available_variants


def natural_images(size: int = 128, names: Sequence[str] = ("camera", "moon", "brick", "grass")) -> torch.Tensor:
    """Grayscale images bundled with scikit-image, centre-cropped, resized to ``size``, in [0, 1]."""
    from skimage import data, transform

    images = []
    for name in names:
        img = np.asarray(getattr(data, name)(), dtype=np.float64)
        if img.ndim == 3:
            img = img[..., :3].mean(-1)
        side = min(img.shape)
        top, left = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
        img = transform.resize(img[top:top + side, left:left + side], (size, size), anti_aliasing=True)
        images.append((img - img.min()) / (img.max() - img.min()))
    return torch.tensor(np.stack(images)[:, None], dtype=torch.float32)


@torch.no_grad()
def equivariance_table(
    variants: Optional[Sequence[str]] = None,
    size: int = 128,
    channels: int = 8,
    depth: int = 4,
    num_shifts: int = 8,
    seed: int = 0,
) -> List[Dict[str, float]]:
    """One row per variant: equivariance NMSE (mean, max), SSIM (min; data range 1.0, the images'
    range, as :mod:`equinet.metrics.equivariance` prescribes), worst |dPSNR| per image, params."""
    images = natural_images(size)
    shifts = random_shifts(num_shifts, generator=torch.Generator().manual_seed(seed))
    rows = []
    for name in variants or available_variants():
        strategy, kwargs = VARIANTS[name]
        torch.manual_seed(seed)
        net = UNet(1, 1, channels=channels, depth=depth, sampling=strategy, sampling_kwargs=kwargs,
                   padding_mode="circular").eval()
        start = time.perf_counter()
        eq = measure_equivariance(net, images, shifts, maxval=1.0)
        dpsnr = worst_case_dpsnr(net, images, images, shifts)
        rows.append({
            "variant": name,
            "nmse_mean": float(eq["nmse"].mean()),
            "nmse_max": float(eq["nmse"].max()),
            "ssim_min": float(eq["ssim"].min()),
            "dpsnr_worst": float(dpsnr.max()),
            "params": sum(p.numel() for p in net.parameters()),
            "seconds": time.perf_counter() - start,
        })
    return rows


def format_table(rows: List[Dict[str, float]]) -> str:
    """Markdown table of :func:`equivariance_table` rows."""
    lines = ["| variant | equiv. NMSE (mean) | equiv. NMSE (max) | equiv. SSIM (min) | worst abs dPSNR (dB) | params |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['nmse_mean']:.2e} | {r['nmse_max']:.2e} | {r['ssim_min']:.6f} | "
                     f"{r['dpsnr_worst']:.2e} | {r['params']:,} |")
    return "\n".join(lines)


def equivariance_main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="equinet equivariance",
        description="Shift-equivariance of randomly initialised, circularly padded U-Nets for every "
                    "sampling strategy, on natural images bundled with scikit-image.",
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), help="default: all registered")
    parser.add_argument("--size", type=int, default=128, help="image side (multiple of 2**depth)")
    parser.add_argument("--channels", type=int, default=8, help="first-level channels")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--shifts", type=int, default=8, help="random shifts in [-16, 16]^2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the markdown table to this file")
    args = parser.parse_args(argv)
    if args.variants:
        missing = [v for v in args.variants if v not in available_variants()]
        if missing:
            parser.error(f"strategies not available in this installation: {missing}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = equivariance_table(args.variants, args.size, args.channels, args.depth, args.shifts, args.seed)
    table = format_table(rows)
    header = (f"Shift equivariance of random-init U-Nets (channels={args.channels}, depth={args.depth}, "
              f"{args.size}x{args.size}, circular padding, {args.shifts} shifts in [-16,16]^2, seed {args.seed})\n\n")
    print(header + table)
    if args.output:
        atomic_write_text(args.output, header + table + "\n")
