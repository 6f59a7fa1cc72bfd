"""Forward models: CT geometry, exact/numeric projections, noise, FBP backends; MRI masks and recon."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _data_helpers import psnr
from hypothesis import given, settings
from hypothesis import strategies as st

from equinet.data import ct, mri, synthetic


# ---------------------------------------------------------------------------------------------
# CT geometry and forward model
# ---------------------------------------------------------------------------------------------


def test_lodopab_geometry_matches_the_published_one():
    g = ct.ParallelBeamGeometry.lodopab()
    assert (g.image_size, g.num_angles, g.num_detectors) == (362, 1000, 513)
    assert ct.ParallelBeamGeometry.for_image_size(362) == g  # the scaled rule reproduces it
    theta = g.angles().numpy()
    np.testing.assert_allclose(theta, (np.arange(1000) + 0.5) * np.pi / 1000)
    s = g.detector_positions()
    np.testing.assert_allclose(
        [s[0] - g.detector_spacing / 2, s[-1] + g.detector_spacing / 2], [-0.18385, 0.18385]
    )
    np.testing.assert_allclose(g.pixel_size, 0.26 / 362)
    assert ct.ParallelBeamGeometry.from_shapes((362, 362), (1000, 513)) == g
    with pytest.raises(ValueError, match="square"):
        ct.ParallelBeamGeometry.from_shapes((362, 360), (1000, 513))


def _gaussian_blobs(rng: np.random.Generator, count: int):
    """(amplitude, sigma, x0, y0) blobs well inside the FOV: smooth, with an analytic transform."""
    return [
        (rng.uniform(0.2, 1.0), rng.uniform(0.015, 0.025), *rng.uniform(-0.04, 0.04, size=2))
        for _ in range(count)
    ]


def _blob_image(blobs, g: ct.ParallelBeamGeometry) -> np.ndarray:
    x = g.pixel_centers()
    image = np.zeros((g.image_size, g.image_size))
    for a, sigma, x0, y0 in blobs:
        image += a * np.exp(-((x[:, None] - x0) ** 2 + (x[None, :] - y0) ** 2) / (2 * sigma**2))
    return image


def _blob_sinogram(blobs, g: ct.ParallelBeamGeometry) -> np.ndarray:
    theta = g.angles().numpy()[:, None]
    s = g.detector_positions()[None, :]
    sino = np.zeros((g.num_angles, g.num_detectors))
    for a, sigma, x0, y0 in blobs:
        sp = s - (x0 * np.cos(theta) + y0 * np.sin(theta))
        sino += a * math.sqrt(2 * math.pi) * sigma * np.exp(-(sp**2) / (2 * sigma**2))
    return sino


@pytest.mark.parametrize("method, tolerance", [("rays", 0.02), ("sparse", 0.025)])
@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), size=st.sampled_from([32, 41, 64]))
def test_ray_transform_matches_analytic_line_integrals(method, tolerance, seed, size):
    """Numeric projectors (x = axis 0, s = x cos + y sin, metres) vs the closed form of Gaussians."""
    g = ct.ParallelBeamGeometry.for_image_size(size, num_angles=32)
    blobs = _gaussian_blobs(np.random.default_rng(seed), 3)
    image = torch.from_numpy(_blob_image(blobs, g))
    exact = _blob_sinogram(blobs, g)
    numeric = ct.ray_transform(image, g, method=method).numpy()
    assert np.linalg.norm(numeric - exact) / np.linalg.norm(exact) < tolerance


@pytest.mark.parametrize("method", ["rays", "sparse"])
def test_projector_orientation_is_pinned(method):
    """An asymmetric pair of blobs: the right orientation matches, its transpose does not."""
    g = ct.ParallelBeamGeometry.for_image_size(48, num_angles=32)
    blobs = [(1.0, 0.015, 0.06, -0.02), (0.5, 0.02, -0.03, 0.05)]
    image = torch.from_numpy(_blob_image(blobs, g))
    exact = _blob_sinogram(blobs, g)
    for candidate, expected_small in ((image, True), (image.T.contiguous(), False), (image.flip(0), False)):
        error = np.linalg.norm(
            ct.ray_transform(candidate, g, method=method).numpy() - exact
        ) / np.linalg.norm(exact)
        assert (error < 0.025) == expected_small, error


@settings(max_examples=10)
@given(size=st.integers(5, 20), quarter=st.integers(1, 5), seed=st.integers(0, 1000))
def test_pixel_driven_projector_is_the_adjoint_of_the_backprojection(size, quarter, seed):
    g = ct.ParallelBeamGeometry.for_image_size(size, num_angles=4 * quarter)
    op = ct.SymmetricBackprojector(g, torch.device("cpu"), torch.float64)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, size, size, generator=gen, dtype=torch.float64)
    y = torch.randn(2, g.num_angles, g.num_detectors, generator=gen, dtype=torch.float64)
    lhs = float((op.project(x) * y).sum()) / op.projection_scale
    assert lhs == pytest.approx(float((x * op(y)).sum()), rel=1e-10, abs=1e-10)


def test_ellipse_sinogram_matches_projection_of_its_rasterisation():
    g = ct.ParallelBeamGeometry.for_image_size(96)
    ellipses = synthetic.random_body_ellipses(np.random.default_rng(3))
    exact = ct.ellipse_sinogram(ellipses, g)
    numeric = ct.ray_transform(torch.from_numpy(ct.rasterize_ellipses(ellipses, 96)), g).numpy()
    assert np.linalg.norm(numeric - exact) / np.linalg.norm(exact) < 0.03
    # the exact transform of a unit disc of radius r is 2 sqrt(r^2 - s^2)
    disc = np.array([[1.0, 0.05, 0.05, 0.0, 0.0, 0.0]])
    s = g.detector_positions()
    np.testing.assert_allclose(
        ct.ellipse_sinogram(disc, g)[0], 2 * np.sqrt(np.clip(0.05**2 - s**2, 0, None)), atol=1e-12
    )


def test_simulated_observation_follows_lodopab_noise_model():
    p = torch.full((200_000,), 0.02, dtype=torch.float64)  # line integral (m) of the normalised image
    assert torch.equal(ct.simulate_observation(p, math.inf), p.float())
    y = ct.simulate_observation(p, 4096, generator=torch.Generator().manual_seed(0)).double()
    # Poisson counts with mean N0 exp(-mu p): delta method gives var(y) = 1 / (N0 exp(-mu p) mu^2)
    rate = 4096 * math.exp(-ct.MU_MAX * 0.02)
    assert abs(float(y.mean()) - 0.02) < 5e-4
    assert float(y.var()) == pytest.approx(1 / (rate * ct.MU_MAX**2), rel=0.05)
    # zero photons are floored at 0.1 before the log, as in LoDoPaB
    opaque = ct.simulate_observation(
        torch.full((10,), 10.0), 4096, generator=torch.Generator().manual_seed(0)
    )
    np.testing.assert_allclose(opaque.numpy(), -np.log(0.1 / 4096) / ct.MU_MAX, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# FBP
# ---------------------------------------------------------------------------------------------

FBP_PSNR_DB = {"body": 33.0, "shepp_logan": 24.0}  # stated: noiseless exact sinogram, 128^2, Hann


@pytest.mark.parametrize("phantom", ["body", "shepp_logan"])
def test_fbp_of_noiseless_exact_sinogram_reaches_stated_psnr(phantom):
    """Exact (analytic) sinogram, no inverse crime: FBP vs the pixel-averaged phantom. The
    transposed reconstruction is far off, so the orientation convention is pinned as well."""
    g = ct.ParallelBeamGeometry.for_image_size(128)
    values = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        ellipses = (
            synthetic.random_body_ellipses(rng) if phantom == "body" else synthetic.shepp_logan_variant(rng)
        )
        truth = ct.rasterize_ellipses(ellipses, g.image_size)
        recon = ct.fbp(torch.from_numpy(ct.ellipse_sinogram(ellipses, g)), g, backend="torch").numpy()
        values.append(psnr(recon, truth))
        assert psnr(recon.T, truth) < values[-1] - 8
    assert min(values) >= FBP_PSNR_DB[phantom], values


@pytest.mark.slow
def test_fbp_at_full_lodopab_geometry():
    g = ct.ParallelBeamGeometry.lodopab()
    ellipses = synthetic.random_body_ellipses(np.random.default_rng(0))
    truth = ct.rasterize_ellipses(ellipses, 362)
    recon = ct.fbp(torch.from_numpy(ct.ellipse_sinogram(ellipses, g)).float(), g, backend="torch").numpy()
    assert psnr(recon, truth) >= 36.0


def _backend_available(name: str) -> bool:
    return name in ct.available_fbp_backends()


@pytest.mark.parametrize("other", ["skimage", "astra"])
def test_fbp_backends_agree(other):
    if not _backend_available(other):
        pytest.skip(f"{other} FBP backend not importable here")
    g = ct.ParallelBeamGeometry.for_image_size(96)
    rng = np.random.default_rng(1)
    ellipses = synthetic.random_body_ellipses(rng)
    truth = ct.rasterize_ellipses(ellipses, g.image_size)
    noisy = ct.simulate_observation(
        torch.from_numpy(ct.ellipse_sinogram(ellipses, g)), 4096, generator=torch.Generator().manual_seed(0)
    )
    reference = ct.fbp(noisy, g, backend="torch").numpy()
    candidate = ct.fbp(noisy, g, backend=other).numpy()
    assert psnr(candidate, reference) > 40.0  # agree far better than either agrees with the truth
    assert abs(psnr(candidate, truth) - psnr(reference, truth)) < 1.5


def test_fbp_auto_picks_the_fastest_available_backend():
    available = ct.available_fbp_backends()
    assert ct.resolve_fbp_backend("auto") == ("astra" if ct._astra_has_cuda() else "torch")
    assert available[0] == ct.resolve_fbp_backend("auto")
    with pytest.raises(ValueError, match="unknown FBP backend"):
        ct.resolve_fbp_backend("gpu-magic")
    if "astra" not in available:
        with pytest.raises(ValueError, match="not available"):
            ct.resolve_fbp_backend("astra")


@settings(max_examples=10)
@given(batch=st.integers(1, 3), size=st.sampled_from([8, 13, 20]), seed=st.integers(0, 1000))
def test_fbp_torch_is_linear_and_batch_consistent(batch, size, seed):
    g = ct.ParallelBeamGeometry.for_image_size(size, num_angles=11)
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, g.num_angles, g.num_detectors, generator=gen, dtype=torch.float64)
    b = torch.randn(batch, g.num_angles, g.num_detectors, generator=gen, dtype=torch.float64)
    together = ct.fbp_torch(a, g, method="grid", angle_chunk=4)
    singles = torch.stack([ct.fbp_torch(x, g, method="grid") for x in a])
    torch.testing.assert_close(together, singles)
    torch.testing.assert_close(ct.fbp_torch(2 * a - b, g), 2 * together - ct.fbp_torch(b, g))


@settings(max_examples=10)
@given(size=st.integers(5, 24), quarter=st.integers(1, 6), batch=st.integers(1, 3), seed=st.integers(0, 1000))
def test_symmetric_sparse_backprojection_equals_direct_backprojection(size, quarter, batch, seed):
    """The quarter-matrix + square-symmetry backprojector is the same linear map as sampling every
    angle directly (odd and even image sizes)."""
    g = ct.ParallelBeamGeometry.for_image_size(size, num_angles=4 * quarter)
    sino = torch.randn(
        batch,
        g.num_angles,
        g.num_detectors,
        generator=torch.Generator().manual_seed(seed),
        dtype=torch.float64,
    )
    torch.testing.assert_close(
        ct.fbp_torch(sino, g, method="sparse"), ct.fbp_torch(sino, g, method="grid"), rtol=1e-10, atol=1e-10
    )


def test_fbp_torch_method_choice():
    g = ct.ParallelBeamGeometry.for_image_size(16, num_angles=10)  # 10 angles: no 4-fold symmetry
    sino = torch.randn(g.num_angles, g.num_detectors)
    torch.testing.assert_close(ct.fbp_torch(sino, g), ct.fbp_torch(sino, g, method="grid"))
    with pytest.raises(ValueError, match="multiple of 4"):
        ct.fbp_torch(sino, g, method="sparse")
    assert ct.ParallelBeamGeometry.for_image_size(128).num_angles % 4 == 0
    assert (
        ct.SymmetricBackprojector.memory_bytes(ct.ParallelBeamGeometry.lodopab(), torch.float32)
        <= ct.SPARSE_BACKPROJECTOR_MAX_BYTES
    )


def test_fbp_rejects_mismatched_sinogram():
    g = ct.ParallelBeamGeometry.for_image_size(16)
    with pytest.raises(ValueError, match="does not match the geometry"):
        ct.fbp(torch.zeros(g.num_angles + 1, g.num_detectors), g, backend="torch")


# ---------------------------------------------------------------------------------------------
# MRI
# ---------------------------------------------------------------------------------------------


@given(height=st.integers(8, 40), width=st.integers(8, 40), seed=st.integers(0, 1000))
def test_full_kspace_zero_filled_recon_is_the_magnitude(height, width, seed):
    image = torch.rand(height, width, generator=torch.Generator().manual_seed(seed)) + 0.1
    np.testing.assert_allclose(mri.mri_forward(image, None).numpy(), image.numpy(), rtol=1e-5, atol=1e-6)


def test_masks_are_fastmri_masks_seeded_per_file():
    func = mri.make_mask_func("random", (0.08,), (4,))
    kspace = torch.ones(64, 368, 2)
    _, mask_a = mri.undersample(kspace, func, mri.file_seed("file1000001.h5"))
    _, mask_b = mri.undersample(kspace, func, mri.file_seed("file1000001.h5"))
    _, mask_c = mri.undersample(kspace, func, mri.file_seed("file1000002.h5"))
    assert torch.equal(mask_a, mask_b) and not torch.equal(mask_a, mask_c)
    columns = mask_a.flatten()
    assert abs(float(columns.mean()) - 0.25) < 0.07  # 4x acceleration
    centre = round(368 * 0.08)
    start = (368 - centre + 1) // 2
    assert bool(columns[start : start + centre].all())  # fully sampled centre
    with pytest.raises(ValueError, match="unknown mask_type"):
        mri.make_mask_func("spiral")
    with pytest.raises(ValueError, match="equal length"):
        mri.make_mask_func("random", (0.08, 0.04), (4,))
