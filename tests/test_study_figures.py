"""Every study figure is a valid PNG with labelled axes; the cost columns
are ratios measured side by side; the upsampling figure shows the checkerboard it claims."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from equinet.models import UNet
from equinet.study.cost import measure_cost, peak_bytes
from equinet.study.figures import (
    camera_image,
    checkerboard_energy,
    equivariance_figure,
    save_figure,
    shift_example_figure,
    tradeoff_figure,
    upsampling_figure,
    upsampling_outputs,
    write_figures,
)

ROWS = [
    {"variant": "input", "psnr": 18.0, "eq_nmse": None, "eq_nmse_ood": None},
    {"variant": "baseline", "psnr": 23.0, "eq_nmse": 7e-3, "eq_nmse_ood": 5e-3},
    {"variant": "LPF-3", "psnr": 22.5, "eq_nmse": 1e-3, "eq_nmse_ood": 7e-4},
    {"variant": "APS", "psnr": 22.6, "eq_nmse": 0.0, "eq_nmse_ood": 0.0},
    {"variant": "LPS", "psnr": 22.1, "eq_nmse": 3e-15, "eq_nmse_ood": 1e-14},
    {"variant": "iUNet", "psnr": 21.0, "eq_nmse": 2e-3, "eq_nmse_ood": None},
]


def _example(seed, shift=(8, 5), equivariant=False):
    g = np.random.default_rng(seed)
    x = g.random((32, 32))
    out = x * 0.9
    shifted = np.roll(out, shift, axis=(0, 1)) + (0 if equivariant else 0.01 * g.random((32, 32)))
    return {
        "input": x,
        "shifted_input": np.roll(x, shift, axis=(0, 1)),
        "output": out,
        "shifted_output": shifted,
        "target": x,
        "shift": np.array(shift),
        "psnr": np.array(25.0),
        "psnr_shifted": np.array(24.0 if not equivariant else 25.0),
    }


def _assert_labelled(fig):
    axes = fig.get_axes()
    assert axes
    for ax in axes:
        assert ax.get_xlabel().strip() or ax.get_ylabel().strip(), f"unlabelled axes {ax}"
        if ax.get_label() != "<colorbar>":
            assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), (
                f"axes {ax.get_title()!r} lack a label"
            )


def _assert_png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    with Image.open(path) as im:
        w, h = im.size
        assert w > 300 and h > 200 and np.asarray(im.convert("L")).std() > 5  # not blank


def test_each_figure_has_labelled_axes_and_saves_a_valid_png(tmp_path):
    examples = {"baseline": _example(0), "APS": _example(0, equivariant=True)}
    figures = {
        "equivariance": equivariance_figure(ROWS),
        "tradeoff": tradeoff_figure(ROWS),
        "shift": shift_example_figure(examples, ["baseline", "APS"]),
        "upsampling": upsampling_figure(np.random.default_rng(1).random((32, 32)), levels=2),
    }
    for name, fig in figures.items():
        _assert_labelled(fig)
        if name == "equivariance":
            ax = fig.get_axes()[0]
            assert ax.get_yscale() == "log"
            assert [t.get_text() for t in ax.get_xticklabels()] == [
                "baseline",
                "LPF-3",
                "APS",
                "LPS",
                "iUNet",
            ]
            assert sum(t.get_text() == "0" for t in ax.texts) == 2  # APS: exact in and out of distribution
        if name == "tradeoff":
            assert fig.get_axes()[0].get_xscale() == "log"
        if name == "shift":
            titles = " ".join(ax.get_title() for ax in fig.get_axes())
            assert "PSNR change -1 dB" in titles and "PSNR change +0 dB" in titles and "k = (8, 5)" in titles
        _assert_png(save_figure(fig, tmp_path / f"{name}.png"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_write_figures_names_what_it_could_not_draw(tmp_path):
    paths, notes = write_figures(tmp_path, ROWS, {"baseline": _example(0)})
    assert sorted(p.name for p in paths) == [
        "equivariance.png",
        "psnr_vs_equivariance.png",
        "upsampling_modes.png",
    ]
    assert any("shift_example.png needs finished 'baseline' and 'APS'" in n for n in notes)
    for p in paths:
        _assert_png(p)


def test_transposed_convolution_leaves_a_checkerboard_that_resize_modes_do_not():
    image = camera_image(64)
    out = upsampling_outputs(image, levels=2)
    energy = {k: checkerboard_energy(v, 2) for k, v in out.items()}
    # an uneven (+-10%) 2x2 kernel stamped on every pixel: a 1/4-periodic pattern in the spectrum
    assert energy["transposed conv"] > 0.01 and energy["APS-U"] > 0.01
    assert energy["nearest + 1x1 conv"] < 1e-12  # a hold filter is zero at those frequencies
    assert energy["bilinear + 1x1 conv"] < 0.002
    assert energy["transposed conv"] > 20 * energy["bilinear + 1x1 conv"]
    for v in out.values():
        assert v.shape == image.shape and np.isfinite(v).all()
    # the same layers with an even kernel are nearest-neighbour upsampling: no checkerboard
    flat = upsampling_outputs(image, levels=2, seed=0, unevenness=0.0)
    assert np.allclose(flat["transposed conv"], flat["nearest + 1x1 conv"], atol=1e-6)


def test_cost_ratios_are_measured_against_the_reference_on_one_batch():
    x, y = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    torch.manual_seed(0)
    small = UNet(1, 1, channels=4, depth=2)
    torch.manual_seed(0)
    wide = UNet(1, 1, channels=8, depth=2)
    same = measure_cost(small, small, x, y, "cpu", repeats=2, warmup=1, same=True)
    assert (
        same["step_time_ratio"] == same["peak_mem_ratio"] == 1.0
        and same["params"] == sum(p.numel() for p in small.parameters()) == 7_477
    )
    cost = measure_cost(wide, small, x, y, "cpu", repeats=3, warmup=1)
    assert cost["peak_mem_ratio"] > 1.5 and cost["params"] > 3 * same["params"]
    assert cost["step_time_ratio"] > 0 and cost["reference_peak_bytes"] > 0
    # memory is deterministic: measured again, the same
    again = measure_cost(wide, small, x, y, "cpu", repeats=1, warmup=0)
    assert again["peak_mem_ratio"] == pytest.approx(cost["peak_mem_ratio"], rel=1e-6)


def test_peak_bytes_sees_a_temporary_allocation():
    n = 256
    peak = peak_bytes(lambda: torch.ones(n, n, dtype=torch.float64).sum(), "cpu")
    assert peak >= n * n * 8
