"""The study's figures (PNG, matplotlib's Agg backend), each readable without the tables:

- ``equivariance.png``: equivariance NMSE per variant, in distribution and out of distribution;
- ``psnr_vs_equivariance.png``: reconstruction PSNR against equivariance NMSE (the trade-off);
- ``shift_example.png``: the APS-U paper's Fig. 4 for the baseline and APS;
- ``upsampling_modes.png``: what each upsampler of a fixed two-level network makes of one image,
  with its spectrum (the checkerboard of transposed convolution, Odena et al. 2016).

Every function returns the matplotlib Figure (tests check its axes) and ``write_figures`` saves
them atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from equinet.files import atomic_write
from equinet.metrics import circular_shift
from equinet.study.variants import INPUT

FLOOR = 1e-17  # exact zeros drawn at this height on log axes (and marked "0")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8")
UPSAMPLING_MODES = (
    ("transposed conv", "maxpool", {"up": "transposed"}),
    ("nearest + 1x1 conv", "maxpool", {"up": "nearest"}),
    ("bilinear + 1x1 conv", "maxpool", {"up": "bilinear"}),
    ("max-unpooling", "maxpool", {"up": "unpool"}),
    ("APS-U", "aps", {}),
)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically and close it."""
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _value(row: Mapping[str, Any], key: str) -> Optional[float]:
    v = row.get(key)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


# --------------------------------------------------------------------------------------------
def equivariance_figure(rows: Sequence[Mapping[str, Any]]):
    """Grouped bars (log scale): equivariance NMSE per variant, in distribution vs OOD."""
    plt = _pyplot()
    rows = [r for r in rows if r["variant"] != INPUT]
    names = [r["variant"] for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows) + 2), 4.2))
    series = [
        ("eq_nmse", "test split (in distribution)", "tab:blue"),
        ("eq_nmse_ood", "natural images (out of distribution)", "tab:orange"),
    ]
    width = 0.38
    for j, (key, label, colour) in enumerate(series):
        values = [_value(r, key) for r in rows]
        if all(v is None for v in values):
            continue
        heights = [
            FLOOR if v is not None and v <= FLOOR else (v if v is not None else np.nan) for v in values
        ]
        pos = x + (j - 0.5) * width
        ax.bar(pos, heights, width, label=label, color=colour)
        for p, v in zip(pos, values):
            if v is not None and v <= FLOOR:
                ax.text(p, FLOOR * 2, "0", ha="center", va="bottom", fontsize=8)
    ax.set_yscale("log")
    top = max([v for r in rows for v in (_value(r, "eq_nmse"), _value(r, "eq_nmse_ood")) if v] + [FLOOR])
    ax.set_ylim(FLOOR / 3, top * 1e4)  # head room for the legend
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_xlabel("variant")
    ax.set_ylabel("equivariance NMSE  (T_k G(x) vs G(T_k x))")
    ax.set_title("Shift equivariance per variant (lower is better; 0 = exact)")
    ax.grid(axis="y", which="major", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def tradeoff_figure(rows: Sequence[Mapping[str, Any]]):
    """Reconstruction PSNR against equivariance NMSE, one point per variant; the input as a line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.4, 4.6))
    points = [(r["variant"], _value(r, "eq_nmse"), _value(r, "psnr")) for r in rows if r["variant"] != INPUT]
    points = [(n, max(e, FLOOR), p) for n, e, p in points if e is not None and p is not None]
    colours = plt.get_cmap("tab20").colors
    for i, (name, e, p) in enumerate(points):
        exact = "0" if e <= FLOOR else f"{e:.1e}"
        ax.scatter(
            [e],
            [p],
            s=44,
            marker=MARKERS[i % len(MARKERS)],
            color=colours[(2 * i) % 20],
            label=f"{name}: {p:.2f} dB, NMSE {exact}",
        )
    reference = next((r for r in rows if r["variant"] == INPUT), None)
    if reference is not None and _value(reference, "psnr") is not None:
        ax.axhline(
            reference["psnr"],
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"network input: {reference['psnr']:.2f} dB",
        )
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title="variant", title_fontsize=8)
    ax.set_xscale("log")
    if points:
        lo = min(e for _, e, _ in points)
        hi = max(e for _, e, _ in points)
        ax.set_xlim(lo / 30, hi * 30)
    ax.set_xlabel("equivariance NMSE (log scale; left = more equivariant, 1e-17 = exact)")
    ax.set_ylabel("reconstruction PSNR (dB)")
    ax.set_title("Reconstruction vs shift equivariance")
    ax.grid(alpha=0.3)
    return fig


def shift_example_figure(examples: Mapping[str, Mapping[str, np.ndarray]], variants: Sequence[str]):
    """The APS-U paper's Fig. 4: per variant, x, T_k x, y, G(x), G(T_k x) and |G(T_k x) - T_k G(x)|
    in percent of the ground truth's maximum (one colour scale for every row)."""
    plt = _pyplot()
    variants = [v for v in variants if v in examples]
    first = examples[variants[0]]
    k = tuple(int(s) for s in first["shift"])
    cols = 6
    fig, axes = plt.subplots(
        len(variants), cols, figsize=(3.0 * cols, 3.2 * len(variants) + 0.3), squeeze=False
    )
    lo, hi = float(first["target"].min()), float(first["target"].max())
    reference = hi if hi > 0 else 1.0
    diffs = {
        v: 100.0 * np.abs(examples[v]["shifted_output"] - circular_shift(examples[v]["output"], k)) / reference
        for v in variants
    }
    dmax = max(float(d.max()) for d in diffs.values()) or 1.0
    for i, v in enumerate(variants):
        e = examples[v]
        dpsnr = float(e["psnr_shifted"]) - float(e["psnr"])
        panels = [
            (e["input"], "input x", "gray", lo, hi),
            (e["shifted_input"], f"T_k x, k = {k}", "gray", lo, hi),
            (e["target"], "ground truth y", "gray", lo, hi),
            (e["output"], f"G(x): PSNR {float(e['psnr']):.2f} dB", "gray", lo, hi),
            (e["shifted_output"], f"G(T_k x): PSNR {float(e['psnr_shifted']):.2f} dB", "gray", lo, hi),
            (
                diffs[v],
                f"|G(T_k x) - T_k G(x)|, max {float(diffs[v].max()):.2g}% of max y\nPSNR change {dpsnr:+.3g} dB",
                "magma",
                0.0,
                dmax,
            ),
        ]
        for j, (img, title, cmap, vmin, vmax) in enumerate(panels):
            ax = axes[i, j]
            im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(f"{v}: {title}" if j == 0 else title, fontsize=8)
            ax.set_xlabel("x (pixels)", fontsize=7)
            ax.set_ylabel("y (pixels)", fontsize=7)
            ax.tick_params(labelsize=6)
        cbar = fig.colorbar(im, ax=axes[i, -1], fraction=0.046, pad=0.04, format="%.2g%%")
        cbar.set_label("% of max y (same scale in every row)", fontsize=7)
        cbar.ax.tick_params(labelsize=6)
    where = ""
    if "fname" in first and "slice_num" in first:
        where = f"\ntest slice {first['fname']} #{int(first['slice_num'])}"
        if "selection" in first:
            where += f": {first['selection']} (a typical input, not a best case)"
    fig.suptitle(
        f"Shifting the input by k = {k} pixels (APS-U paper, Fig. 4): PSNR of G(T_k x) against T_k y{where}",
        fontsize=10,
    )
    return fig


# --------------------------------------------------------------------------------------------
# upsampling modes of a fixed network
# --------------------------------------------------------------------------------------------
def _fix_weights(module: torch.nn.Module, seed: int, unevenness: float = 0.1) -> None:
    """Deterministic weights: transposed convolutions get one seeded 2x2 kernel of mean 1 whose
    entries differ by up to +-``unevenness`` (as a learned kernel's do), so brightness is kept and
    only the unevenness shows; 1x1 convolutions are the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, (torch.nn.ConvTranspose1d, torch.nn.ConvTranspose2d, torch.nn.ConvTranspose3d)):
            w = 1 + unevenness * (2 * torch.rand(m.weight.shape, generator=g) - 1)
            m.weight.data.copy_(w / w.mean())
        elif isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) and m.weight.shape[-1] == 1:
            m.weight.data.fill_(1.0)
        else:
            continue
        if m.bias is not None:
            m.bias.data.zero_()


@torch.no_grad()
def upsampling_outputs(
    image: np.ndarray, levels: int = 2, seed: int = 0, unevenness: float = 0.1
) -> Dict[str, np.ndarray]:
    """``image`` downsampled ``levels`` times and upsampled back by each mode's fixed layers."""
    from equinet.sampling import create_strategy

    x0 = torch.as_tensor(np.asarray(image, dtype=np.float32))[None, None]
    outputs: Dict[str, np.ndarray] = {}
    for label, strategy, options in UPSAMPLING_MODES:
        pairs = [
            create_strategy(strategy, 1, 1, dim=2, padding_mode="circular", **options) for _ in range(levels)
        ]
        for down, up in pairs:
            _fix_weights(down, seed, unevenness)
            _fix_weights(up, seed, unevenness)
        h, states = x0, []
        for down, _ in pairs:
            h, state = down.eval()(h)
            states.append(state)
        for (_, up), state in zip(reversed(pairs), reversed(states)):
            h = up.eval()(h, state)
        outputs[label] = h[0, 0].double().numpy()
    return outputs


def checkerboard_energy(output: np.ndarray, levels: int) -> float:
    """Fraction of the spectrum's energy (mean removed) at the frequencies a stride-2^levels
    up-sampler's periodic pattern lives on: multiples of ``size / 2**levels`` except 0."""
    spec = np.abs(np.fft.fft2(output - output.mean())) ** 2
    h, w = spec.shape
    period = 2**levels
    mask = np.zeros_like(spec, dtype=bool)
    mask[:: h // period if h >= period else 1, :: w // period if w >= period else 1] = True
    mask[0, 0] = False
    total = spec.sum()
    return float(spec[mask].sum() / total) if total > 0 else 0.0


def upsampling_figure(image: np.ndarray, levels: int = 2, seed: int = 0):
    """Outputs of each upsampling mode (top) and their log power spectra (bottom)."""
    plt = _pyplot()
    outputs = upsampling_outputs(image, levels, seed)
    cols = len(outputs) + 1
    fig, axes = plt.subplots(2, cols, figsize=(3.3 * cols, 7.0), constrained_layout=True)
    lo, hi = float(np.min(image)), float(np.max(image))
    panels = [("input image", np.asarray(image, dtype=np.float64))] + list(outputs.items())
    spectra = [
        np.log10(np.fft.fftshift(np.abs(np.fft.fft2(img - img.mean())) ** 2) + 1e-30) for _, img in panels
    ]
    vmax = max(float(sp.max()) for sp in spectra)
    vmin = vmax - 8  # eight decades below the strongest peak
    for j, (label, img) in enumerate(panels):
        ax = axes[0, j]
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
        title = (
            label
            if j == 0
            else f"{label}\nenergy at 1/{2**levels}-periodic peaks {checkerboard_energy(img, levels):.1%}"
        )
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("x (pixels)", fontsize=7)
        ax.set_ylabel("y (pixels)", fontsize=7)
        ax.tick_params(labelsize=6)
        freqs = np.fft.fftshift(np.fft.fftfreq(img.shape[-1]))
        ax = axes[1, j]
        im = ax.imshow(
            spectra[j],
            cmap="viridis",
            vmin=vmin,
            vmax=vmax,
            extent=(freqs[0], freqs[-1], freqs[-1], freqs[0]),
        )
        ax.set_xlabel("horizontal frequency (cycles/pixel)", fontsize=7)
        ax.set_ylabel("vertical frequency (cycles/pixel)", fontsize=7)
        ax.set_title("log10 power spectrum", fontsize=8)
        ax.tick_params(labelsize=6)
    cbar = fig.colorbar(im, ax=axes[1, :], fraction=0.02, pad=0.01)
    cbar.set_label("log10 power (same scale in every panel)", fontsize=7)
    fig.suptitle(
        f"Upsampling modes of one fixed network ({levels} max-pool/APS-D levels down, then up; "
        "seeded 2x2 transposed kernels, identity 1x1 convs): the transposed convolution stamps its\n"
        "uneven kernel on every pixel -- the checkerboard, spectral peaks at multiples of "
        f"1/{2**levels} cycles/pixel; APS-U uses the same kernel on its chosen grid; resize modes have none",
        fontsize=9,
    )
    return fig


def camera_image(size: int = 128) -> np.ndarray:
    """scikit-image's bundled cameraman, resized to ``size`` in [0, 1]: the upsampling figure's image
    (natural edges and flat regions, where a periodic artefact is easy to see)."""
    from skimage import data, transform

    return transform.resize(data.camera().astype(np.float64) / 255.0, (size, size), anti_aliasing=True)


# --------------------------------------------------------------------------------------------
def write_figures(
    folder: Path,
    rows: Sequence[Mapping[str, Any]],
    examples: Mapping[str, Mapping[str, np.ndarray]],
    reference: str = "baseline",
    equivariant: str = "APS",
) -> Tuple[List[Path], List[str]]:
    """All figures the rows and examples allow; returns their paths and notes on what was skipped."""
    folder = Path(folder)
    paths, notes = [], []
    if any(_value(r, "eq_nmse") is not None for r in rows):
        paths.append(save_figure(equivariance_figure(rows), folder / "equivariance.png"))
        paths.append(save_figure(tradeoff_figure(rows), folder / "psnr_vs_equivariance.png"))
    pair = [v for v in (reference, equivariant) if v in examples]
    if len(pair) == 2:
        paths.append(save_figure(shift_example_figure(examples, pair), folder / "shift_example.png"))
    else:
        notes.append(
            f"shift_example.png needs finished {reference!r} and {equivariant!r} runs; "
            f"found examples for {sorted(examples) or 'none'}"
        )
    paths.append(save_figure(upsampling_figure(camera_image(), levels=2), folder / "upsampling_modes.png"))
    return paths, notes
