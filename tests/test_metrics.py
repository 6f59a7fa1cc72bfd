"""Metrics: parity with fastmri.evaluate / analytic values, and the equivariance measurements."""

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastmri import evaluate as fm
from hypothesis import given
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from equinet.metrics import (
    circular_shift,
    equivariance_errors,
    measure_equivariance,
    nmse,
    psnr,
    random_shifts,
    ssim,
    worst_case_dpsnr,
    worst_dpsnr_image,
    worst_dpsnr_volume,
)


@given(st.integers(1, 3), st.integers(8, 20), st.floats(0.01, 0.5), st.integers(0, 2**31 - 1))
def test_reconstruction_metrics_match_fastmri_and_analytic(slices, n, noise, seed):
    rng = np.random.default_rng(seed)
    gt = rng.random((slices, n, n)) + 0.1
    pred = gt + noise * rng.standard_normal(gt.shape)
    assert nmse(gt, pred) == pytest.approx(np.sum((gt - pred) ** 2) / np.sum(gt**2), rel=1e-12)
    mse = np.mean((gt - pred) ** 2)
    assert psnr(gt, pred) == pytest.approx(10 * np.log10(gt.max() ** 2 / mse), rel=1e-12)
    assert psnr(gt, pred, maxval=2.0) == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-12)
    assert ssim(gt, pred) == pytest.approx(float(fm.ssim(gt, pred)[0]), rel=1e-12)
    assert ssim(gt, gt) == pytest.approx(1.0)
    assert psnr(gt, gt) == float("inf")


def test_metric_inputs_are_validated():
    with pytest.raises(ValueError, match="shapes differ"):
        nmse(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match=r"\(slices, H, W\) volume"):
        ssim(np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4)))
    assert nmse(np.ones((4, 4)), np.ones((4, 4))) == 0.0  # 2D images are one-slice volumes


def test_circular_shift_torch_and_numpy_agree_and_random_shifts_cover_the_range():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float64).view(2, 3, 5, 7)
    assert np.array_equal(circular_shift(x, (2, -3)).numpy(), circular_shift(x.numpy(), (2, -3)))
    assert torch.equal(circular_shift(circular_shift(x, (2, -3)), (-2, 3)), x)
    shifts = random_shifts(2000, dim=2, generator=torch.Generator().manual_seed(0))
    assert shifts.shape == (2000, 2) and shifts.min() == -16 and shifts.max() == 16


def test_equivariance_measurement_separates_equivariant_from_strided_operators():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular", bias=False).double()
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    shifts = random_shifts(10, generator=torch.Generator().manual_seed(1))
    exact = measure_equivariance(conv, x, shifts, maxval=1.0)
    assert exact["nmse"].max() < 1e-28 and np.allclose(exact["ssim"], 1.0)

    def strided(t):  # subsample on a fixed grid, upsample back: the classic offender
        return F.interpolate(t[..., ::2, ::2], scale_factor=2, mode="nearest")

    odd = torch.tensor([[1, 0], [0, 3], [5, 5]])
    broken = measure_equivariance(strided, x, odd, maxval=4.0)
    assert broken["nmse"].min() > 0.1 and broken["ssim"].max() < 0.9
    even = measure_equivariance(strided, x, torch.tensor([[2, 4], [-6, 0]]), maxval=4.0)
    assert even["nmse"].max() == 0.0
    one = equivariance_errors(conv(x), conv(circular_shift(x, (3, 1))), (3, 1), maxval=4.0)
    assert one["nmse"] < 1e-28


def test_equivariance_ssim_uses_the_given_data_range_not_the_outputs_maximum():
    """One SSIM convention: the dataset's data range. fastMRI's default (the reference's own max)
    would rate the same pair of images differently once the output is scaled."""
    torch.manual_seed(0)
    x = 0.2 * torch.rand(2, 1, 32, 32, dtype=torch.float64)  # a dark image in a [0, 1] dataset

    def strided(t):
        return F.interpolate(t[..., ::2, ::2], scale_factor=2, mode="nearest")

    k = torch.tensor([[1, 1]])
    got = measure_equivariance(strided, x, k, maxval=1.0)["ssim"][0]
    a, b = circular_shift(strided(x), (1, 1)).numpy()[:, 0], strided(circular_shift(x, (1, 1))).numpy()[:, 0]
    want = np.mean([structural_similarity(a[i], b[i], data_range=1.0) for i in range(2)])
    assert got == pytest.approx(want, rel=1e-12)
    own_max = np.mean([structural_similarity(a[i], b[i], data_range=a.max()) for i in range(2)])
    assert abs(own_max - want) > 1e-3  # the two conventions differ on the same images
    with pytest.raises(TypeError):
        measure_equivariance(strided, x, k)  # no silent default: every caller names its data range


def test_worst_dpsnr_image_and_volume_match_skimage_and_fastmri_psnr():
    """Both conventions against independent PSNRs: per image (scikit-image, the paper's text) and per
    volume (fastMRI's volume PSNR, every slice shifted alike: the paper's reference code)."""
    torch.manual_seed(0)
    target = torch.rand(4, 1, 16, 16, dtype=torch.float64)
    x = target + 0.05 * torch.randn_like(target)
    conv = torch.nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular").double()
    shifts = random_shifts(10, generator=torch.Generator().manual_seed(2))
    assert worst_dpsnr_image(conv, x, target, shifts).max() < 1e-9
    assert worst_dpsnr_volume(conv, x, target, shifts) < 1e-9
    assert worst_case_dpsnr is worst_dpsnr_image

    def strided(t):
        return F.interpolate(t[..., ::2, ::2], scale_factor=2, mode="nearest")

    with torch.no_grad():
        out = strided(x)
        shifted = [(circular_shift(target, k.tolist()), strided(circular_shift(x, k.tolist())))
                   for k in shifts]

    def image_psnr(t, o, i):
        return peak_signal_noise_ratio(t[i, 0].numpy(), o[i, 0].numpy(),
                                       data_range=target[i].max().item())

    per_image = [max(abs(image_psnr(t, o, i) - image_psnr(target, out, i)) for t, o in shifted)
                 for i in range(4)]
    assert np.allclose(worst_dpsnr_image(strided, x, target, shifts), per_image, rtol=1e-9)
    vol = lambda a: a[:, 0].numpy()  # noqa: E731
    per_volume = max(abs(psnr(vol(t), vol(o), 1.0) - psnr(vol(target), vol(out), 1.0)) for t, o in shifted)
    assert worst_dpsnr_volume(strided, x, target, shifts) == pytest.approx(per_volume, rel=1e-9)
    assert per_volume < max(per_image)  # the conventions differ: a volume averages its slices' errors
