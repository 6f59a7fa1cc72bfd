"""Synthetic datasets in the real on-disk formats (fastMRI knee, LoDoPaB-CT, ImageNet val JPEGs).

Content comes from phantoms (a coronal knee phantom for fastMRI; random ellipses and Shepp-Logan
variants for CT) and, for the ImageNet out-of-distribution set only, the natural images that
scikit-image ships (camera, moon, coins, ...); nothing is downloaded. The files are what the real
loaders expect, so the default (``root=None``) run of every DataModule exercises those loaders
end to end. Everything is seeded: the same arguments give the same files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
import torch

from equinet.data import ct
from equinet.data.common import PathLike, atomic_write_text, log, stable_seed

# Natural images bundled with scikit-image (no download); colour ones are made grayscale.
NATURAL_IMAGES = (
    "camera", "moon", "coins", "astronaut", "brick", "grass", "gravel", "clock", "coffee",
    "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "cell", "retina",
)  # fmt: skip

KNEE_ACQUISITIONS = ("CORPD_FBK", "CORPDFS_FBK")
KNEE_CONTRASTS = {"CORPD_FBK": "PD", "CORPDFS_FBK": "PDFS"}  # fat suppressed: fat dark
# What the synthetic knee volumes are made of (cycled over volumes); the natural images are the
# out-of-distribution set only and must never appear here (tests/test_synthetic_knee.py).
KNEE_SOURCES = ("knee",)
KNEE_SOURCE_KINDS = ("knee", "ellipses", "shepp_logan")
# Part of the cached synthetic knee dataset's folder name: bump it when the content changes, so
# a cache written by older code is not read as the new data.
KNEE_DATA_VERSION = "phantom3"
KNEE_SPLITS = ("train", "val", "test")
LODOPAB_PARTS = ("train", "validation", "test")
LODOPAB_MANIFEST = "equinet_lodopab.json"

# Modified Shepp-Logan (Toft): value, a, b, x0, y0, phi(deg), on [-1, 1]^2.
SHEPP_LOGAN = np.array(
    [
        [1.0, 0.69, 0.92, 0.0, 0.0, 0.0],
        [-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0],
        [-0.2, 0.11, 0.31, 0.22, 0.0, -18.0],
        [-0.2, 0.16, 0.41, -0.22, 0.0, 18.0],
        [0.1, 0.21, 0.25, 0.0, 0.35, 0.0],
        [0.1, 0.046, 0.046, 0.0, 0.1, 0.0],
        [0.1, 0.046, 0.046, 0.0, -0.1, 0.0],
        [0.1, 0.046, 0.023, -0.08, -0.605, 0.0],
        [0.1, 0.023, 0.023, 0.0, -0.606, 0.0],
        [0.1, 0.023, 0.046, 0.06, -0.605, 0.0],
    ]
)


# ----------------------------------------------------------------------------------------------
# Image sources
# ----------------------------------------------------------------------------------------------


def natural_image(name: str) -> np.ndarray:
    """A scikit-image bundled image as grayscale float64 in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray, rgba2rgb
    from skimage.util import img_as_float

    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        if image.shape[-1] == 4:
            image = rgba2rgb(image)
        image = rgb2gray(image)
    return np.clip(img_as_float(image).astype(np.float64), 0.0, 1.0)


def natural_image_rgb(name: str) -> np.ndarray:
    """A scikit-image bundled image as uint8 RGB (grayscale ones replicated)."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


def shepp_logan_variant(
    rng: np.random.Generator, half_width: float = ct.IMAGE_HALF_WIDTH, perturb: float = 1.0
) -> np.ndarray:
    """Ellipses ``(E, 6)`` (value, a, b, x0, y0, phi[rad]; metres) of a perturbed modified
    Shepp-Logan phantom filling ~85% of ``[-half_width, half_width]^2``; ``perturb=0`` is the
    original. Values stay in [0, 1]."""
    e = SHEPP_LOGAN.copy()
    if perturb:
        e[2:, 1:3] *= rng.uniform(1 - 0.15 * perturb, 1 + 0.15 * perturb, size=(len(e) - 2, 2))
        e[2:, 3:5] += rng.uniform(-0.04, 0.04, size=(len(e) - 2, 2)) * perturb
        e[2:, 5] += rng.uniform(-10, 10, size=len(e) - 2) * perturb
        e[4:, 0] *= rng.uniform(0.5, 2.0, size=len(e) - 4) ** perturb
        e[:2, 1:3] *= rng.uniform(0.92, 1.0)
    scale = 0.85 * half_width
    out = np.empty_like(e)
    out[:, 0] = e[:, 0]
    out[:, 1:5] = e[:, 1:5] * scale
    out[:, 5] = np.deg2rad(e[:, 5])
    return out


def random_body_ellipses(rng: np.random.Generator, half_width: float = ct.IMAGE_HALF_WIDTH) -> np.ndarray:
    """A CT-like random phantom (metres): body (soft tissue ~0.25, i.e. water / MU_MAX), up to
    two lungs (~0.03), bones (0.5-0.9) and small lesions; rejected and redrawn until its values
    lie in [0, 1], so the exact sinogram of the ellipses is the sinogram of the stored image."""
    for _ in range(100):
        ellipses: List[List[float]] = []
        a, b = rng.uniform(0.55, 0.85) * half_width, rng.uniform(0.45, 0.75) * half_width
        cx, cy = rng.uniform(-0.05, 0.05, size=2) * half_width
        phi = rng.uniform(-0.3, 0.3)
        body = rng.uniform(0.2, 0.28)
        ellipses.append([body, a, b, cx, cy, phi])
        for side in (-1, 1)[: int(rng.integers(0, 3))]:
            la, lb = rng.uniform(0.25, 0.4) * a, rng.uniform(0.3, 0.55) * b
            ellipses.append(
                [
                    -body + rng.uniform(0.01, 0.05),
                    la,
                    lb,
                    cx + side * 0.45 * a,
                    cy + rng.uniform(-0.1, 0.1) * b,
                    rng.uniform(-0.4, 0.4),
                ]
            )
        for _ in range(int(rng.integers(1, 5))):
            r = rng.uniform(0.04, 0.12) * a
            ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.75)
            ellipses.append(
                [
                    rng.uniform(0.3, 0.65),
                    r,
                    r * rng.uniform(0.5, 1.0),
                    cx + rad * a * np.cos(ang),
                    cy + rad * b * np.sin(ang),
                    rng.uniform(0, np.pi),
                ]
            )
        for _ in range(int(rng.integers(2, 8))):
            r = rng.uniform(0.02, 0.08) * a
            ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.8)
            ellipses.append(
                [
                    rng.uniform(-0.06, 0.08),
                    r,
                    r * rng.uniform(0.4, 1.0),
                    cx + rad * a * np.cos(ang),
                    cy + rad * b * np.sin(ang),
                    rng.uniform(0, np.pi),
                ]
            )
        e = np.array(ellipses)
        check = ct.rasterize_ellipses(e, 96, half_width, supersample=2)
        if check.min() >= 0.0 and check.max() <= 1.0:
            return e
    raise RuntimeError("could not draw a phantom with values in [0, 1]")  # pragma: no cover


def _ellipsoid_slice(e3: np.ndarray, z: float) -> np.ndarray:
    """Cut ellipsoids (value, a, b, c, x0, y0, z0, phi) at height ``z`` -> 2D ellipses."""
    rows = []
    for rho, a, b, c, x0, y0, z0, phi in e3:
        f = 1.0 - ((z - z0) / c) ** 2
        if f > 1e-3:
            rows.append([rho, a * math.sqrt(f), b * math.sqrt(f), x0, y0, phi])
    return np.array(rows).reshape(-1, 6)


def _smooth_field(
    rng: np.random.Generator, shape: Tuple[int, int], scale: float, cutoff: int = 6
) -> np.ndarray:
    """Low-frequency random field (a few Fourier modes), zero mean, max |value| ~ ``scale``."""
    spectrum = np.zeros(shape, dtype=np.complex128)
    k = rng.normal(size=(cutoff, cutoff)) + 1j * rng.normal(size=(cutoff, cutoff))
    spectrum[:cutoff, :cutoff] = k
    field = np.real(np.fft.ifft2(spectrum))
    field -= field.mean()
    return field * (scale / (np.abs(field).max() + 1e-12))


# ----------------------------------------------------------------------------------------------
# Knee phantom (coronal slice: femur, tibia, fibula, patella, cartilage, menisci, fluid, ...)
# ----------------------------------------------------------------------------------------------

# Relative signal per tissue under proton-density (PD) and fat-suppressed PD (PDFS) weighting:
# fat (subcutaneous, marrow) is bright in PD and dark in PDFS, fluid brightest in PDFS, cortical
# bone, menisci and ligaments dark in both, cartilage intermediate.
KNEE_TISSUES = ("skin", "fat", "muscle", "cortex", "marrow", "cartilage", "fluid", "meniscus", "ligament")
KNEE_SIGNAL = {
    "PD": dict(skin=0.55, fat=0.92, muscle=0.36, cortex=0.03, marrow=0.78, cartilage=0.58, fluid=0.66,
               meniscus=0.06, ligament=0.08),
    "PDFS": dict(skin=0.35, fat=0.10, muscle=0.30, cortex=0.03, marrow=0.14, cartilage=0.55, fluid=0.95,
                 meniscus=0.05, ligament=0.06),
}  # fmt: skip


def _inside(d: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased indicator of ``d < 0`` (signed distance), edges about one pixel wide."""
    return 0.5 * (1.0 - np.tanh(d / px))


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Smooth union of two signed distances (polynomial smooth minimum, blend width ``k``)."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b * (1 - h) + a * h - k * h * (1 - h)


def _ellipse_d(x, y, cx, cy, a, b) -> np.ndarray:
    """Approximate signed distance to an axis-aligned ellipse (exact on circles)."""
    r = np.sqrt(((x - cx) / a) ** 2 + ((y - cy) / b) ** 2)
    return (r - 1.0) * np.minimum(a, b)


def _texture(rng: np.random.Generator, num: int, size: int, low: float, high: float, aniso=(1.0, 1.0)):
    """``(num, size, size)`` band-passed Gaussian noise (radial frequency in [low, high] cycles per
    field of view, axes stretched by ``aniso``), unit std, varying smoothly from slice to slice."""
    fy = np.fft.fftfreq(size)[:, None] * size * aniso[0]
    fx = np.fft.fftfreq(size)[None, :] * size * aniso[1]
    f = np.sqrt(fx**2 + fy**2)
    band = np.exp(-0.5 * ((f - 0.5 * (low + high)) / (0.5 * (high - low) + 1e-9)) ** 2)
    two = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(2, size, size))) * band))
    two /= two.std(axis=(-2, -1), keepdims=True) + 1e-12
    angle = np.linspace(0.0, rng.uniform(0.6, 1.2), num)[:, None, None]
    return np.cos(angle) * two[0] + np.sin(angle) * two[1]


def knee_tissues(rng: np.random.Generator, size: int, num_slices: int) -> Dict[str, np.ndarray]:
    """Fractional tissue maps ``{tissue: (num_slices, size, size)}`` of a coronal knee slab
    (posterior to anterior), one per name in :data:`KNEE_TISSUES`, summing to <= 1 per pixel.

    Femur (shaft, two condyles, intercondylar notch), tibia (plateau, spines), fibular head,
    patella (anterior slices), each a cortical rim around marrow; articular cartilage on the
    condyles and plateau, joint fluid between them, wedge-shaped menisci, collateral ligaments,
    muscle above and below the joint, subcutaneous and intermuscular fat, skin. Sizes, position,
    tilt, side and slab position are drawn from ``rng``; vectorised over slices.
    """
    u = rng.uniform
    px = 2.0 / size
    # slab: num_slices positions z (-1 posterior .. 1 anterior) inside a random window
    z0 = u(-0.75, -0.35)
    z = np.linspace(z0, z0 + u(0.9, 1.3), num_slices)[:, None, None]
    lin = np.linspace(-1.0, 1.0, size, endpoint=False) + 1.0 / size
    ang = u(-0.12, 0.12)
    scale = u(0.9, 1.1)
    X0, Y0 = lin[None, None, :], lin[None, :, None]
    X = (np.cos(ang) * X0 + np.sin(ang) * Y0) / scale - u(-0.06, 0.06)
    Y = (-np.sin(ang) * X0 + np.cos(ang) * Y0) / scale - u(-0.08, 0.08)
    X = X * (1.0 if u() < 0.5 else -1.0)  # left or right knee: lateral side (fibula) flips
    X, Y = np.broadcast_to(X, (num_slices, size, size)), np.broadcast_to(Y, (num_slices, size, size))
    jy = u(-0.02, 0.08)  # joint line (femur above, tibia below)
    depth = np.sqrt(np.clip(1.0 - (z / 1.45) ** 2, 0.05, 1.0))  # structures shrink towards the ends

    # body outline, skin and subcutaneous fat; the leg spans about 2/3 of the field of view's
    # width (phase encoding), with air on both sides
    wb = u(0.62, 0.72) * (1.0 + 0.06 * np.exp(-(((Y - jy) / 0.35) ** 2))) * (0.92 + 0.08 * depth)
    d_body = np.abs(X - u(-0.03, 0.03)) - wb
    body = _inside(d_body, px)
    fat_thick = u(0.07, 0.14) + 0.03 * np.tanh(-X / 0.3)  # thicker medially
    sub_fat_ind = 1.0 - _inside(d_body + fat_thick, px)
    skin_ind = 1.0 - _inside(d_body + 0.018, px)

    # femur: shaft + metaphysis + two condyles (spheres cut by the slice), notch removed
    rc = u(0.19, 0.23) * depth
    cs = u(0.19, 0.23)
    fw = u(0.2, 0.24)
    d_shaft = np.maximum(np.abs(X) - fw, Y - (jy - 0.3))
    d_meta = _ellipse_d(X, Y, 0.0, jy - 0.2, cs + 0.85 * rc, 0.3)
    d_cond = np.minimum(_ellipse_d(X, Y, -cs, jy - rc, rc, rc), _ellipse_d(X, Y, cs, jy - rc * u(0.9, 1.1), rc, rc))
    d_fem = _smin(_smin(d_shaft, d_meta, 0.08), d_cond, 0.05)
    notch_w = u(0.07, 0.1) * (1.3 - 0.5 * (z + 1) / 2)
    d_fem = np.maximum(d_fem, -_ellipse_d(X, Y, 0.0, jy + 0.02, notch_w, u(0.14, 0.19)))
    # tibia: plateau narrowing to the shaft, with two intercondylar spines
    gap = u(0.05, 0.07)
    top = jy + gap
    tw = u(0.4, 0.46) * (0.85 + 0.15 * depth)
    half = 0.22 + (tw - 0.22) * np.exp(-np.clip(Y - top, 0, None) / 0.3)
    d_tib = np.maximum(np.abs(X) - half, top - Y)
    d_tib = _smin(d_tib, np.minimum(_ellipse_d(X, Y, -0.04, top, 0.035, 0.06), _ellipse_d(X, Y, 0.04, top, 0.035, 0.05)), 0.02)
    # fibular head (lateral, posterior slices) and patella (anterior slices)
    fr = u(0.06, 0.08) * np.sqrt(np.clip(1 - ((z + 0.45) / 0.6) ** 2, 0, 1))
    d_fib = _ellipse_d(X, Y, tw + 0.04, top + 0.22, fr + 1e-6, 1.3 * fr + 1e-6)
    pz = np.sqrt(np.clip(1 - ((z - u(0.7, 0.9)) / 0.35) ** 2, 0, 1))
    d_pat = _ellipse_d(X, Y, u(-0.03, 0.05), jy - u(0.3, 0.4), 0.2 * pz + 1e-6, 0.17 * pz + 1e-6)
    cortical = u(0.02, 0.03)
    bone = np.clip(sum(_inside(d, px) for d in (d_fem, d_tib, d_fib, d_pat)), 0, 1)
    marrow_ind = np.clip(sum(_inside(d + cortical, px) for d in (d_fem, d_tib, d_fib, d_pat)), 0, 1)
    # articular cartilage on the condyles (lower half) and the plateau, fluid film between them
    ct = u(0.025, 0.035)
    ax = np.abs(X)
    joint_zone = _inside(np.abs(Y - (jy + 0.5 * gap)) - 0.12, px) * _inside(ax - tw, px)
    cart_f = _inside(d_fem - ct, px) * _inside(jy - 0.6 * rc - Y, px)
    cart_t = _inside(d_tib - ct, px) * _inside(top + 0.03 - Y, px)
    cart_ind = np.clip(cart_f + cart_t, 0, 1) * joint_zone
    # menisci: wedges at the periphery of the joint, base outside, apex pointing inwards
    mw, mh = u(0.1, 0.14), u(0.06, 0.09)
    wedge = ((ax - (tw - mw)) / mw) - ((top - Y) / mh)
    men_ind = _inside(-wedge * mw, px) * _inside(Y - top, px) * _inside(ax - tw - 0.015, px)
    men_ind = men_ind * _inside(top - mh - Y, px)
    fluid_pool = _inside(np.abs(Y - (jy + 0.5 * gap)) - (0.6 * gap + 0.01), px) * _inside(ax - tw + 0.02, px)
    effusion = u(0.0, 1.0) * _inside(_ellipse_d(ax, Y, fw + 0.05, jy - 0.45, 0.04, 0.22), px)
    fluid_ind = np.clip(fluid_pool + effusion, 0, 1)
    # collateral ligaments along both sides of the joint
    lig_ind = _inside(np.abs(ax - (tw + 0.035)) - 0.014, px) * _inside(np.abs(Y - jy) - 0.3, px)
    # muscle above and below the joint, intermuscular fat around it
    musc_ind = 1.0 - _inside(np.abs(Y - jy) - u(0.2, 0.3) * (1.2 - 0.3 * depth), 6 * px)

    # painter's order: each tissue takes its share of what the earlier ones left (sum = body)
    left = body.copy()

    def take(indicator: np.ndarray) -> np.ndarray:
        nonlocal left
        part = indicator * left
        left = left - part
        return part

    skin, sub_fat = take(skin_ind), take(sub_fat_ind)
    marrow = take(marrow_ind)
    cortex = take(bone)
    cartilage, meniscus, fluid, lig = take(cart_ind), take(men_ind), take(fluid_ind), take(lig_ind)
    muscle = take(musc_ind)
    fat = sub_fat + left
    return dict(skin=skin, fat=fat, muscle=muscle, cortex=cortex, marrow=marrow, cartilage=cartilage,
                fluid=fluid, meniscus=meniscus, ligament=lig)


def knee_phantom(
    rng: np.random.Generator, size: int, num_slices: int, contrast: str = "PD"
) -> np.ndarray:
    """``(num_slices, size, size)`` coronal knee slices in [0, 1]: :func:`knee_tissues` weighted
    by the ``contrast``'s signal (``"PD"`` or ``"PDFS"``, fat suppressed; :data:`KNEE_SIGNAL`),
    with striated muscle, fat septa, trabecular marrow and a smooth coil-sensitivity field.
    Deterministic given ``rng``; the anatomy does not depend on ``contrast``."""
    if contrast not in KNEE_SIGNAL:
        raise ValueError(f"contrast must be one of {sorted(KNEE_SIGNAL)}, got {contrast!r}")
    sig = KNEE_SIGNAL[contrast]
    t = knee_tissues(rng, size, num_slices)
    skin, fat, muscle, cortex, marrow = t["skin"], t["fat"], t["muscle"], t["cortex"], t["marrow"]
    cartilage, fluid, meniscus, lig = t["cartilage"], t["fluid"], t["meniscus"], t["ligament"]
    u = rng.uniform
    # textures: striated muscle, fat septa, trabecular marrow; coil sensitivity
    striae = _texture(rng, num_slices, size, 8.0, 28.0, aniso=(0.25, 1.0))
    septa = np.exp(-(_texture(rng, num_slices, size, 5.0, 16.0) ** 2) / 0.08)
    trabec = _texture(rng, num_slices, size, 14.0, 36.0)
    image = (
        skin * sig["skin"]
        + fat * sig["fat"] * (1 - 0.3 * septa)
        + muscle * sig["muscle"] * (1 + 0.08 * striae)
        + cortex * sig["cortex"]
        + marrow * sig["marrow"] * (1 + 0.07 * trabec)
        + cartilage * sig["cartilage"]
        + fluid * sig["fluid"]
        + meniscus * sig["meniscus"]
        + lig * sig["ligament"]
    )
    coil = 1.0 + _smooth_field(rng, (size, size), u(0.1, 0.25), cutoff=3)
    image = np.clip(image * coil[None], 0.0, None)
    return image / max(float(image.max()), 1e-12)


def knee_volume_images(
    rng: np.random.Generator, size: int, num_slices: int, source: str, contrast: str = "PD"
) -> np.ndarray:
    """``(num_slices, size, size)`` magnitude images in [0, 1] that vary smoothly across slices:
    the knee phantom (``source="knee"``, ``contrast`` PD or PDFS), or 3D random ellipsoids /
    a Shepp-Logan variant (``"ellipses"``, ``"shepp_logan"``). Never a natural image: those are
    the out-of-distribution set (:func:`write_imagenet_folder`)."""
    if source == "knee":
        return knee_phantom(rng, size, num_slices, contrast)
    if source not in ("ellipses", "shepp_logan"):
        raise ValueError(f"knee volume source must be one of {KNEE_SOURCE_KINDS}, got {source!r}")
    zs = np.linspace(-0.6, 0.6, num_slices)
    if source == "ellipses":
        e2 = random_body_ellipses(rng)
    else:
        e2 = shepp_logan_variant(rng)
    # extrude to ellipsoids of random height so structures appear/disappear across slices
    c = rng.uniform(0.7, 1.6, size=len(e2))
    c[0] = 10.0
    z0 = rng.uniform(-0.4, 0.4, size=len(e2))
    z0[0] = 0.0
    e3 = np.column_stack([e2[:, 0], e2[:, 1], e2[:, 2], c, e2[:, 3], e2[:, 4], z0, e2[:, 5]])
    texture = 1.0 + _smooth_field(rng, (size, size), 0.15, cutoff=12)
    images = np.stack([ct.rasterize_ellipses(_ellipsoid_slice(e3, z), size, supersample=2) for z in zs])
    images = np.clip(images * texture[None], 0.0, None)
    return images / max(images.max(), 1e-12)


# ----------------------------------------------------------------------------------------------
# fastMRI single-coil knee
# ----------------------------------------------------------------------------------------------


def knee_kspace_width(size: int) -> int:
    """Phase-encoding width for a ``size`` reconstruction: 368 for 320 (fastMRI's typical value)."""
    return 2 * int(round(size * 368 / 320 / 2))


def ismrmrd_header(
    enc_x: int, enc_y: int, recon: int, center: int, maximum: int, acquisition: str, num_slices: int
) -> bytes:
    """A real ISMRMRD XML header with the fields fastMRI reads (encodedSpace/reconSpace matrix
    sizes, kspace_encoding_step_1 limits) plus typical knee protocol fields."""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:schemaLocation="http://www.ismrm.org/ISMRMRD ismrmrd.xsd">
  <studyInformation><studyTime>12:00:00</studyTime></studyInformation>
  <measurementInformation><measurementID>equinet-synthetic</measurementID><patientPosition>FFS</patientPosition><protocolName>{acquisition}</protocolName></measurementInformation>
  <acquisitionSystemInformation><systemVendor>SIEMENS</systemVendor><systemModel>equinet synthetic</systemModel><systemFieldStrength_T>2.89362</systemFieldStrength_T><relativeReceiverNoiseBandwidth>0.793</relativeReceiverNoiseBandwidth><receiverChannels>1</receiverChannels></acquisitionSystemInformation>
  <experimentalConditions><H1resonanceFrequency_Hz>123251815</H1resonanceFrequency_Hz></experimentalConditions>
  <encoding>
    <encodedSpace><matrixSize><x>{enc_x}</x><y>{enc_y}</y><z>1</z></matrixSize><fieldOfView_mm><x>280</x><y>{140 * enc_y / recon:.4f}</y><z>4.5</z></fieldOfView_mm></encodedSpace>
    <reconSpace><matrixSize><x>{recon}</x><y>{recon}</y><z>1</z></matrixSize><fieldOfView_mm><x>140</x><y>140</y><z>3</z></fieldOfView_mm></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center></kspace_encoding_step_1>
      <kspace_encoding_step_2><minimum>0</minimum><maximum>0</maximum><center>0</center></kspace_encoding_step_2>
      <slice><minimum>0</minimum><maximum>{num_slices - 1}</maximum><center>0</center></slice>
      <average><minimum>0</minimum><maximum>0</maximum><center>0</center></average>
      <contrast><minimum>0</minimum><maximum>0</maximum><center>0</center></contrast>
      <phase><minimum>0</minimum><maximum>0</maximum><center>0</center></phase>
      <repetition><minimum>0</minimum><maximum>0</maximum><center>0</center></repetition>
      <set><minimum>0</minimum><maximum>0</maximum><center>0</center></set>
      <segment><minimum>0</minimum><maximum>0</maximum><center>0</center></segment>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
  <sequenceParameters><TR>2750</TR><TE>27</TE><TI>100</TI><flipAngle_deg>90</flipAngle_deg><sequence_type>TurboSpinEcho</sequence_type><echo_spacing>13.5</echo_spacing></sequenceParameters>
</ismrmrdHeader>
""".encode()


def _fft2c(x: np.ndarray) -> np.ndarray:
    """numpy twin of ``fastmri.fft2c`` (centred, orthonormal) on the last two axes."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _ifft2c(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def _center_crop(x: np.ndarray, size: int) -> np.ndarray:
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


def write_knee_volume(
    path: PathLike, images: np.ndarray, acquisition: str, rng: np.random.Generator, patient_id: str
) -> None:
    """Write one fastMRI single-coil file from magnitude images ``(slices, S, S)`` in [0, 1].

    The object fills the reconstruction FOV inside a ``2S x W`` field (readout oversampled 2x, as
    fastMRI), gets a smooth phase, complex noise and MR-like scaling (~1e-4), is Fourier
    transformed (``fft2c``) with a few zero phase-encoding columns at the edges (declared in the
    header's encoding limits), and ``reconstruction_esc`` is the centre-cropped magnitude of the
    inverse FFT of the stored complex64 k-space, so a full mask reproduces it exactly.
    """
    num_slices, size, _ = images.shape
    rows, cols = 2 * size, knee_kspace_width(size)
    fat_suppressed = acquisition == "CORPDFS_FBK"
    scale = rng.uniform(0.6, 1.4) * (4e-5 if fat_suppressed else 1e-4)
    noise = (0.03 if fat_suppressed else 0.015) * scale
    field = np.zeros((num_slices, rows, cols), dtype=np.complex128)
    top, left = (rows - size) // 2, (cols - size) // 2
    phase = _smooth_field(rng, (rows, cols), 1.2, cutoff=4)
    field[:, top : top + size, left : left + size] = images * scale
    field = field * np.exp(1j * phase)[None]
    field += noise * (rng.normal(size=field.shape) + 1j * rng.normal(size=field.shape)) / math.sqrt(2)
    kspace = _fft2c(field)
    pad_left, pad_right = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kspace[..., :pad_left] = 0
    kspace[..., cols - pad_right :] = 0
    kspace = kspace.astype(np.complex64)
    recon = _center_crop(np.abs(_ifft2c(kspace.astype(np.complex128))), size).astype(np.float32)
    center = cols // 2 - pad_left
    maximum = cols - pad_left - pad_right - 1
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace, chunks=(1, rows, cols))
        f.create_dataset("reconstruction_esc", data=recon, chunks=(1, size, size))
        f.create_dataset(
            "ismrmrd_header", data=ismrmrd_header(rows, cols, size, center, maximum, acquisition, num_slices)
        )
        f.attrs["max"] = float(recon.max())
        f.attrs["norm"] = float(np.linalg.norm(recon))
        f.attrs["acquisition"] = acquisition
        f.attrs["patient_id"] = patient_id


def write_knee_dataset(
    out: PathLike,
    num_volumes: int = 8,
    num_slices: int = 8,
    size: int = 320,
    num_val: Optional[int] = None,
    num_test: Optional[int] = None,
    seed: int = 0,
) -> Dict[str, List[Path]]:
    """``out/singlecoil_{train,val,test}/file9SNNNNN.h5`` in the fastMRI single-coil format.

    Volumes alternate PD / PDFS acquisitions (the header's protocol and ``attrs["acquisition"]``
    name the contrast the phantom was drawn with) and are knee phantoms (:func:`knee_phantom`),
    each with its own anatomy; no natural image is a source (those are the OOD set). ``num_val``/``num_test`` default to ``max(2, N // 4)``.
    """
    if size < 8 or num_volumes < 1 or num_slices < 1:
        raise ValueError(
            f"need size >= 8, num_volumes >= 1, num_slices >= 1; got {size}, {num_volumes}, {num_slices}"
        )
    counts = {"train": num_volumes, "val": num_val if num_val is not None else max(2, num_volumes // 4)}
    counts["test"] = num_test if num_test is not None else counts["val"]
    written: Dict[str, List[Path]] = {}
    out = Path(out)
    for split_index, split in enumerate(KNEE_SPLITS):
        folder = out / f"singlecoil_{split}"
        folder.mkdir(parents=True, exist_ok=True)
        written[split] = []
        for i in range(counts[split]):
            rng = np.random.default_rng(stable_seed("knee", seed, split, i))
            source = KNEE_SOURCES[(i + 3 * split_index) % len(KNEE_SOURCES)]
            acquisition = KNEE_ACQUISITIONS[i % 2]
            images = knee_volume_images(rng, size, num_slices, source, KNEE_CONTRASTS[acquisition])
            path = folder / f"file9{split_index}{i:05d}.h5"
            write_knee_volume(path, images, acquisition, rng, patient_id=f"synthetic-{split}-{i:05d}-{seed}")
            written[split].append(path)
    return written


# ----------------------------------------------------------------------------------------------
# LoDoPaB-CT
# ----------------------------------------------------------------------------------------------


def lodopab_sample(
    rng: np.random.Generator,
    geometry: ct.ParallelBeamGeometry,
    generator: torch.Generator,
    photons_per_pixel: float,
) -> Tuple[np.ndarray, np.ndarray]:
    """One (ground truth in [0, 1], post-log observation) pair from a random CT-like phantom or a
    Shepp-Logan variant; the sinogram is the exact (analytic) transform of the ellipses."""
    if rng.uniform() < 0.25:
        ellipses = shepp_logan_variant(rng)
    else:
        ellipses = random_body_ellipses(rng)
    truth = np.clip(ct.rasterize_ellipses(ellipses, geometry.image_size), 0.0, 1.0).astype(np.float32)
    line_integrals = torch.from_numpy(ct.ellipse_sinogram(ellipses, geometry))
    observation = ct.simulate_observation(line_integrals, photons_per_pixel, generator=generator)
    return truth, observation.numpy().astype(np.float32)


def write_lodopab_dataset(
    out: PathLike,
    num_train: int = 60,
    num_val: Optional[int] = None,
    num_test: Optional[int] = None,
    size: int = ct.LODOPAB_IMAGE_SIZE,
    num_angles: Optional[int] = None,
    samples_per_file: int = 128,
    photons_per_pixel: float = ct.PHOTONS_PER_PIXEL,
    seed: int = 0,
    progress: bool = False,
) -> Dict[str, int]:
    """``out/{ground_truth,observation}_{train,validation,test}_NNN.hdf5`` in LoDoPaB's format.

    Key ``data``; ``samples_per_file`` rows per file (LoDoPaB: 128), the last file of each part
    zero-padded. The true counts, rows per file and the geometry go to ``equinet_lodopab.json``
    (real LoDoPaB uses the published constants instead; the loader applies the same rules to
    both, and refuses files that do not match the declared geometry). ``size=362`` with
    ``num_angles=None`` is exactly LoDoPaB's geometry (1000 angles, 513 bins). ``progress``: a
    tqdm bar over the samples (about 0.4 s each at 362 px).
    """
    from tqdm.auto import tqdm

    geometry = ct.ParallelBeamGeometry.for_image_size(size, num_angles)
    num_val = num_val if num_val is not None else max(1, num_train // 4)
    num_test = num_test if num_test is not None else num_val
    counts = {"train": num_train, "validation": num_val, "test": num_test}
    if min(counts.values()) < 1 or samples_per_file < 1:
        raise ValueError(
            f"need >= 1 sample per part and per file, got {counts}, samples_per_file={samples_per_file}"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=sum(counts.values()), desc="synthetic LoDoPaB", unit="sample", disable=not progress, leave=False
    )
    for part, count in counts.items():
        num_files = math.ceil(count / samples_per_file)
        for k in range(num_files):
            rows = range(k * samples_per_file, min(count, (k + 1) * samples_per_file))
            truths = np.zeros((samples_per_file, geometry.image_size, geometry.image_size), dtype=np.float32)
            observations = np.zeros(
                (samples_per_file, geometry.num_angles, geometry.num_detectors), dtype=np.float32
            )
            for r, index in enumerate(rows):
                rng = np.random.default_rng(stable_seed("lodopab", seed, part, index))
                generator = torch.Generator().manual_seed(stable_seed("lodopab-noise", seed, part, index))
                truths[r], observations[r] = lodopab_sample(rng, geometry, generator, photons_per_pixel)
                bar.update()
            for prefix, array in (("ground_truth", truths), ("observation", observations)):
                with h5py.File(out / f"{prefix}_{part}_{k:03d}.hdf5", "w") as f:
                    # full-length file; padding rows are left unwritten and read as the fill value 0
                    data = f.create_dataset(
                        "data",
                        shape=array.shape,
                        dtype=np.float32,
                        chunks=(1, *array.shape[1:]),
                        fillvalue=0.0,
                    )
                    data[: len(rows)] = array[: len(rows)]
    bar.close()
    manifest = {
        "format": "LoDoPaB-CT layout, written by equinet (synthetic)",
        "samples_per_file": samples_per_file,
        "num_samples": counts,
        "geometry": geometry.__dict__,
        "photons_per_pixel": photons_per_pixel,
        "mu_max": ct.MU_MAX,
        "seed": seed,
    }
    atomic_write_text(out / LODOPAB_MANIFEST, json.dumps(manifest, indent=2))
    return counts


# ----------------------------------------------------------------------------------------------
# ImageNet validation folder
# ----------------------------------------------------------------------------------------------


def write_imagenet_folder(
    out: PathLike,
    num_images: int = 64,
    size: int = 375,
    layout: str = "flat",
    seed: int = 0,
) -> List[Path]:
    """JPEGs named ``ILSVRC2012_val_%08d.JPEG`` (flat, or in ``nXXXXXXXX/`` class folders) from
    random crops of bundled natural images; shorter side ``size``, 4:3 landscape or portrait.
    Most are RGB; every 7th is grayscale (``L``) and every 11th CMYK, as in the real set."""
    from PIL import Image

    if layout not in ("flat", "classes"):
        raise ValueError(f"layout must be 'flat' or 'classes', got {layout!r}")
    if num_images < 1 or size < 8:
        raise ValueError(f"need num_images >= 1 and size >= 8, got {num_images}, {size}")
    out = Path(out)
    written = []
    for i in range(num_images):
        rng = np.random.default_rng(stable_seed("imagenet", seed, i))
        base = natural_image_rgb(NATURAL_IMAGES[i % len(NATURAL_IMAGES)])
        long_side = int(round(size * 4 / 3))
        h, w = (size, long_side) if rng.uniform() < 0.7 else (long_side, size)
        frac = rng.uniform(0.6, 1.0)
        ch = max(8, int(base.shape[0] * frac))
        cw = max(8, min(base.shape[1], int(ch * w / h)))
        top = int(rng.integers(0, base.shape[0] - ch + 1))
        left = int(rng.integers(0, base.shape[1] - cw + 1))
        image = Image.fromarray(base[top : top + ch, left : left + cw]).resize(
            (w, h), Image.Resampling.BICUBIC
        )
        if rng.uniform() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if i % 7 == 3:
            image = image.convert("L")
        elif i % 11 == 5:
            image = image.convert("CMYK")
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        folder = out / f"n{i % 10:08d}" if layout == "classes" else out
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / name, format="JPEG", quality=90)
        written.append(folder / name)
    log.debug("wrote %d JPEGs to %s", len(written), out)
    return written
