"""CT forward model of LoDoPaB-CT: parallel-beam ray transform, Poisson noise, FBP (Hann).

Geometry and units follow LoDoPaB-CT (Leuschner et al., Sci. Data 2021) and ODL, which generated
it: the image covers ``[-0.13, 0.13]^2`` m on ``n x n`` pixels, array axis 0 is the first
coordinate ``x`` and axis 1 is ``y``; angle ``i`` of ``A`` is ``theta_i = (i + 1/2) pi / A``;
detector bin ``j`` of ``D`` sits at ``s_j = -0.18385 + (j + 1/2) * 2 * 0.18385 / D`` m and
integrates along the line ``{p : p . (cos theta, sin theta) = s_j}``. Ground truth is
attenuation / ``MU_MAX`` in ``[0, 1]``; an observation is the post-log line integral in metres of
that normalised image: ``y = -log(max(N, 0.1) / N0) / MU_MAX`` with ``N ~ Poisson(N0 exp(-MU_MAX
Ax))``, so an FBP of ``y`` estimates the ground truth directly.

Three FBP backends agree with each other (``tests/test_data_forward.py``): ``astra``
(astra-toolbox, optional; ``FBP_CUDA`` on a GPU), ``torch`` (a sparse backprojection matrix
reused through the square's symmetries, or ``grid_sample``; any device) and ``skimage``
(``iradon(filter_name="hann")``, the reference). ``auto`` picks astra when it has CUDA, else
torch: on a CPU the torch backend measured 8-12x faster than astra's CPU FBP and ~15x faster
than skimage at 362^2 x 1000 angles (``experiments/benchmarks/data_throughput.py``).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

MU_MAX = 81.35858  # 1/m: attenuation that maps to 1.0 in LoDoPaB ground truth
PHOTONS_PER_PIXEL = 4096  # N0 of LoDoPaB's Poisson noise model
LODOPAB_IMAGE_SIZE = 362
LODOPAB_NUM_ANGLES = 1000
LODOPAB_NUM_DETECTORS = 513
IMAGE_HALF_WIDTH = 0.13  # m
DETECTOR_HALF_WIDTH = 0.18385  # m (= 0.13 * sqrt(2), rounded as in the LoDoPaB paper)
FBP_FILTERS = ("ramp", "hann")
FBP_BACKENDS = ("auto", "astra", "torch", "skimage")

ArrayLike = Union[np.ndarray, torch.Tensor]


@dataclass(frozen=True)
class ParallelBeamGeometry:
    """Parallel-beam geometry of LoDoPaB, optionally at a reduced size (same physical extents)."""

    image_size: int = LODOPAB_IMAGE_SIZE
    num_angles: int = LODOPAB_NUM_ANGLES
    num_detectors: int = LODOPAB_NUM_DETECTORS
    image_half_width: float = IMAGE_HALF_WIDTH
    detector_half_width: float = DETECTOR_HALF_WIDTH

    def __post_init__(self) -> None:
        for name in ("image_size", "num_angles", "num_detectors"):
            if int(getattr(self, name)) < 2:
                raise ValueError(f"ParallelBeamGeometry.{name} must be >= 2, got {getattr(self, name)}")

    @classmethod
    def lodopab(cls) -> "ParallelBeamGeometry":
        """The real LoDoPaB-CT geometry: 362^2 image, 1000 angles, 513 bins."""
        return cls()

    @classmethod
    def for_image_size(cls, image_size: int, num_angles: Optional[int] = None) -> "ParallelBeamGeometry":
        """LoDoPaB's geometry scaled to ``image_size`` pixels: detector bins about one pixel wide
        (513 for 362), angles in LoDoPaB's proportion rounded to a multiple of 4 (1000 for 362)
        unless given."""
        ratio = DETECTOR_HALF_WIDTH / IMAGE_HALF_WIDTH
        num_detectors = 2 * int(round(image_size * ratio / 2)) + 1
        if num_angles is None:  # a multiple of 4, so the symmetric backprojector applies
            num_angles = max(8, 4 * int(round(LODOPAB_NUM_ANGLES * image_size / LODOPAB_IMAGE_SIZE / 4)))
        return cls(int(image_size), int(num_angles), num_detectors)

    @classmethod
    def from_shapes(cls, image_shape: Sequence[int], sinogram_shape: Sequence[int]) -> "ParallelBeamGeometry":
        """Geometry implied by a ground-truth image shape ``(n, n)`` and a sinogram shape
        ``(angles, detectors)``, with LoDoPaB's physical extents."""
        if len(image_shape) != 2 or image_shape[0] != image_shape[1]:
            raise ValueError(f"ground-truth images must be square 2D, got shape {tuple(image_shape)}")
        if len(sinogram_shape) != 2:
            raise ValueError(f"sinograms must be 2D (angles, detectors), got shape {tuple(sinogram_shape)}")
        return cls(int(image_shape[0]), int(sinogram_shape[0]), int(sinogram_shape[1]))

    @property
    def pixel_size(self) -> float:
        return 2 * self.image_half_width / self.image_size

    @property
    def detector_spacing(self) -> float:
        return 2 * self.detector_half_width / self.num_detectors

    def angles(self, dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
        """``theta_i = (i + 1/2) pi / A``."""
        return (torch.arange(self.num_angles, dtype=dtype, device=device) + 0.5) * (math.pi / self.num_angles)

    def detector_positions(self) -> np.ndarray:
        return -self.detector_half_width + (np.arange(self.num_detectors) + 0.5) * self.detector_spacing

    def pixel_centers(self) -> np.ndarray:
        return -self.image_half_width + (np.arange(self.image_size) + 0.5) * self.pixel_size

    def describe(self) -> str:
        return (
            f"{self.image_size}x{self.image_size} image over +-{self.image_half_width} m, "
            f"{self.num_angles} angles, {self.num_detectors} bins over +-{self.detector_half_width} m"
        )


# ----------------------------------------------------------------------------------------------
# Forward model
# ----------------------------------------------------------------------------------------------


def _as_batch(x: ArrayLike) -> tuple[torch.Tensor, bool]:
    t = torch.as_tensor(x)
    if t.ndim == 2:
        return t[None], True
    if t.ndim != 3:
        raise ValueError(f"expected a 2D array or a (B, ., .) batch, got shape {tuple(t.shape)}")
    return t, False


def ray_transform(
    images: ArrayLike,
    geometry: ParallelBeamGeometry,
    method: str = "auto",
    oversample: int = 1,
    angle_chunk: int = 64,
) -> torch.Tensor:
    """Line integrals (metres x image value) of ``(B, n, n)`` images: ``(B, angles, detectors)``.

    Used to simulate data from images without an analytic transform (natural images); ellipse
    phantoms use the exact :func:`ellipse_sinogram`. ``method``:

    - ``rays``: each ray sampled every ``pixel_size / oversample`` with bilinear interpolation
      (``grid_sample``), vectorised over angles and batch. The error is set by the bilinear image
      model, not the step (``oversample=2`` is no closer to the exact transform than 1).
    - ``sparse``: pixel-driven, the adjoint of the FBP's linear-interpolation backprojection
      (:class:`SymmetricBackprojector`, needs ``4 | A``); about as accurate and far faster.
    - ``auto``: ``sparse`` when it applies and fits in memory, else ``rays``.

    Both stay within ~1.5% (relative L2) of the exact transform of smooth phantoms
    (``test_ray_transform_matches_analytic_line_integrals``).
    """
    batch, squeeze = _as_batch(images)
    if batch.shape[-1] != geometry.image_size or batch.shape[-2] != geometry.image_size:
        raise ValueError(
            f"images of shape {tuple(batch.shape[-2:])} do not match the geometry ({geometry.describe()})"
        )
    dtype = batch.dtype if batch.dtype in (torch.float32, torch.float64) else torch.float32
    batch = batch.to(dtype)
    if method not in ("auto", "sparse", "rays"):
        raise ValueError(f"method must be 'auto', 'sparse' or 'rays', got {method!r}")
    if method == "auto":
        method = "sparse" if _sparse_applies(geometry, dtype) else "rays"
    if method == "sparse":
        sino = _cached_backprojector(geometry, str(batch.device), dtype).project(batch)
    else:
        sino = _ray_driven_projection(batch, geometry, oversample, angle_chunk)
    return sino[0] if squeeze else sino


def _ray_driven_projection(
    batch: torch.Tensor, geometry: ParallelBeamGeometry, oversample: int, angle_chunk: int
) -> torch.Tensor:
    dtype, device = batch.dtype, batch.device
    step = geometry.pixel_size / oversample
    half_length = geometry.image_half_width * math.sqrt(2.0)
    num_t = 2 * int(math.ceil(half_length / step))
    t = (torch.arange(num_t, dtype=dtype, device=device) - (num_t - 1) / 2) * step
    s = torch.as_tensor(geometry.detector_positions(), dtype=dtype, device=device)
    theta = geometry.angles(dtype, device)
    # grid_sample(align_corners=False) maps normalised -1..1 onto the outer pixel edges, i.e. onto
    # +-image_half_width; grid[..., 0] indexes the last array axis (y), grid[..., 1] axis 0 (x).
    channels = batch[None]  # (1, B, n, n): every image shares the sampling grid
    out = []
    for a0 in range(0, geometry.num_angles, angle_chunk):
        th = theta[a0 : a0 + angle_chunk]
        cos, sin = th.cos()[:, None, None], th.sin()[:, None, None]
        px = s[None, :, None] * cos - t[None, None, :] * sin
        py = s[None, :, None] * sin + t[None, None, :] * cos
        grid = (
            torch.stack((py, px), dim=-1).reshape(1, len(th) * len(s), num_t, 2) / geometry.image_half_width
        )
        values = F.grid_sample(channels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out.append(values.sum(-1).reshape(batch.shape[0], len(th), len(s)) * step)
    return torch.cat(out, dim=1)


def ellipse_sinogram(ellipses: np.ndarray, geometry: ParallelBeamGeometry) -> np.ndarray:
    """Exact parallel-beam transform (float64, ``(angles, detectors)``) of a sum of ellipses.

    ``ellipses`` is ``(E, 6)``: value, semi-axes ``a, b`` (m), centre ``x0, y0`` (m), rotation
    ``phi`` (rad). For one ellipse ``p(s, theta) = 2 rho a b sqrt(r^2 - s'^2) / r^2`` with
    ``r^2 = a^2 cos^2(theta - phi) + b^2 sin^2(theta - phi)`` and ``s' = s - (x0 cos + y0 sin)``
    (Kak & Slaney, eq. 3.13), so no discretisation (no inverse crime) enters the data.
    """
    e = np.asarray(ellipses, dtype=np.float64).reshape(-1, 6)
    theta = geometry.angles().numpy()[:, None, None]
    s = geometry.detector_positions()[None, :, None]
    rho, a, b, x0, y0, phi = (e[:, k][None, None, :] for k in range(6))
    r2 = a**2 * np.cos(theta - phi) ** 2 + b**2 * np.sin(theta - phi) ** 2
    sp = s - (x0 * np.cos(theta) + y0 * np.sin(theta))
    inside = np.clip(r2 - sp**2, 0.0, None)
    return (2 * rho * a * b * np.sqrt(inside) / r2).sum(-1)


def rasterize_ellipses(
    ellipses: np.ndarray, image_size: int, half_width: float = IMAGE_HALF_WIDTH, supersample: int = 4
) -> np.ndarray:
    """Pixel averages (``supersample^2`` points per pixel) of a sum of ellipses, float64 ``(n, n)``;
    axis 0 is ``x``, axis 1 is ``y`` (the convention of :func:`ellipse_sinogram`)."""
    e = np.asarray(ellipses, dtype=np.float64).reshape(-1, 6)
    h = 2 * half_width / image_size
    sub = (np.arange(supersample) + 0.5) / supersample
    coords = -half_width + (np.arange(image_size)[:, None] + sub[None, :]).reshape(-1) * h
    x, y = coords[:, None], coords[None, :]
    image = np.zeros((coords.size, coords.size))
    for rho, a, b, x0, y0, phi in e:
        c, s = math.cos(phi), math.sin(phi)
        u = (x - x0) * c + (y - y0) * s
        v = -(x - x0) * s + (y - y0) * c
        image += rho * ((u / a) ** 2 + (v / b) ** 2 <= 1.0)
    return image.reshape(image_size, supersample, image_size, supersample).mean(axis=(1, 3))


def simulate_observation(
    line_integrals: ArrayLike,
    photons_per_pixel: float = PHOTONS_PER_PIXEL,
    mu_max: float = MU_MAX,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """LoDoPaB's noise model: ``-log(max(N, 0.1) / N0) / MU_MAX`` with ``N ~ Poisson(N0 exp(-MU_MAX p))``.

    ``line_integrals`` are line integrals (m) of the normalised image; the result is float32 on
    the same device. ``photons_per_pixel=inf`` returns the noiseless post-log data.
    """
    p = torch.as_tensor(line_integrals).to(torch.float64)
    if math.isinf(photons_per_pixel):
        return p.to(torch.float32)
    rate = photons_per_pixel * torch.exp(-mu_max * p)
    counts = torch.poisson(rate, generator=generator)
    counts = torch.clamp(counts, min=0.1)
    return (-torch.log(counts / photons_per_pixel) / mu_max).to(torch.float32)


# ----------------------------------------------------------------------------------------------
# FBP
# ----------------------------------------------------------------------------------------------


def fourier_filter(size: int, filter_name: str = "hann", frequency_scaling: float = 1.0) -> np.ndarray:
    """FBP filter on ``size`` (even) FFT bins, unit detector spacing.

    The ramp is the Fourier transform of the discrete Ram-Lak kernel (Kak & Slaney eq. 3.61), as
    scikit-image's ``iradon``; ``hann`` multiplies it by ``0.5 (1 + cos(pi f / (f_N s)))``
    (zero above ``s`` times Nyquist), which for ``s = 1`` is scikit-image's ``fftshift(hanning)``
    up to one sample.
    """
    if filter_name not in FBP_FILTERS:
        raise ValueError(f"unknown FBP filter {filter_name!r}; choose one of {FBP_FILTERS}")
    if not 0 < frequency_scaling <= 1:
        raise ValueError(f"frequency_scaling must be in (0, 1], got {frequency_scaling}")
    n = np.concatenate((np.arange(1, size / 2 + 1, 2, dtype=int), np.arange(size / 2 - 1, 0, -2, dtype=int)))
    kernel = np.zeros(size)
    kernel[0] = 0.25
    kernel[1::2] = -1 / (np.pi * n) ** 2
    ramp = 2 * np.real(np.fft.fft(kernel))
    if filter_name == "ramp":
        return ramp
    freq = np.abs(np.fft.fftfreq(size)) * 2 / frequency_scaling  # 1 at the scaled Nyquist
    window = np.where(freq <= 1.0, 0.5 * (1 + np.cos(np.pi * freq)), 0.0)
    return ramp * window


def _padded_size(num_detectors: int) -> int:
    return max(64, int(2 ** math.ceil(math.log2(2 * num_detectors))))


def filter_sinogram(
    sino: torch.Tensor, filter_name: str = "hann", frequency_scaling: float = 1.0
) -> torch.Tensor:
    """Apply the FBP filter along the detector axis (last) of ``(..., detectors)`` sinograms."""
    num_det = sino.shape[-1]
    size = _padded_size(num_det)
    filt = torch.as_tensor(
        fourier_filter(size, filter_name, frequency_scaling), dtype=sino.dtype, device=sino.device
    )
    spectrum = torch.fft.rfft(sino, n=size, dim=-1) * filt[: size // 2 + 1]
    return torch.fft.irfft(spectrum, n=size, dim=-1)[..., :num_det]


SPARSE_BACKPROJECTOR_MAX_BYTES = 1 << 30  # beyond this the grid_sample path is used instead


class SymmetricBackprojector:
    """Linear-interpolation backprojection as one sparse CSR matrix, built once per geometry.

    LoDoPaB's angles ``(i + 1/2) pi / A`` (``4 | A``) map onto themselves under the square's
    symmetries ``theta -> pi - theta`` (flip x), ``theta + pi/2`` (rotate) and ``pi/2 - theta``
    (transpose), and so does the pixel grid; so the matrix is built for the angles in
    ``(0, pi/4)`` only (a quarter of the full one: 0.5 GB at 362^2 x 1000 angles, float32) and
    applied four times, each result mapped back by the matching flip/transpose. Reused across
    calls (LRU of one; :func:`release_fbp_memory` frees it), which makes CPU FBP about 10x faster
    than re-sampling every call. Its transpose (built on the first :meth:`project`, another
    0.5 GB) is a pixel-driven projector, ~50x faster on a CPU than the ray-driven one.
    """

    def __init__(self, geometry: ParallelBeamGeometry, device: torch.device, dtype: torch.dtype) -> None:
        n, num_angles, num_det = geometry.image_size, geometry.num_angles, geometry.num_detectors
        if num_angles % 4:
            raise ValueError(f"SymmetricBackprojector needs a multiple of 4 angles, got {num_angles}")
        quarter = num_angles // 4
        xs = torch.as_tensor(geometry.pixel_centers(), dtype=torch.float64, device=device)
        coords = torch.stack(
            (xs[:, None].expand(n, n).reshape(-1), xs[None, :].expand(n, n).reshape(-1)), dim=1
        )
        theta = geometry.angles(torch.float64, device)[:quarter]
        trig = torch.stack((theta.cos(), theta.sin())) / geometry.detector_spacing  # (2, q)
        first = (-geometry.detector_half_width + geometry.detector_spacing / 2) / geometry.detector_spacing
        nnz = 2 * quarter * n * n
        index_dtype = torch.int32 if nnz < 2**31 - 1 else torch.int64
        # filled a few angles at a time so the peak memory stays near the matrix's own size
        cols = torch.empty(n * n, quarter, 2, dtype=index_dtype, device=device)
        values = torch.empty(n * n, quarter, 2, dtype=dtype, device=device)
        for a0 in range(0, quarter, 32):
            a1 = min(quarter, a0 + 32)
            pos = coords @ trig[:, a0:a1] - first  # (n^2, chunk) fractional detector index
            lower = pos.floor()
            frac = pos - lower
            lower = lower.to(torch.int64)
            w0 = torch.where((lower >= 0) & (lower <= num_det - 1), 1 - frac, 0.0)
            w1 = torch.where((lower >= -1) & (lower <= num_det - 2), frac, 0.0)
            values[:, a0:a1] = torch.stack((w0, w1), dim=-1)
            offset = (torch.arange(a0, a1, device=device) * num_det)[None, :]
            cols[:, a0:a1] = (
                torch.stack((lower.clamp(0, num_det - 1), (lower + 1).clamp(0, num_det - 1)), dim=-1)
                + offset[..., None]
            )
        crow = torch.arange(0, nnz + 1, 2 * quarter, device=device, dtype=index_dtype)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
            self.matrix = torch.sparse_csr_tensor(
                crow,
                cols.reshape(-1),
                values.reshape(-1),
                size=(n * n, quarter * num_det),
                check_invariants=False,
            )
        q = torch.arange(quarter, device=device)
        # (angles of this quarter, base-angle image -> this quarter's image, and its inverse)
        self.quarters = [
            (q, lambda img: img, lambda img: img),
            (num_angles - 1 - q, lambda img: img.flip(-2), lambda img: img.flip(-2)),
            (
                num_angles // 2 + q,
                lambda img: img.transpose(-1, -2).flip(-2),
                lambda img: img.flip(-2).transpose(-1, -2),
            ),
            (num_angles // 2 - 1 - q, lambda img: img.transpose(-1, -2), lambda img: img.transpose(-1, -2)),
        ]
        self.image_size, self.num_angles, self.num_detectors = n, num_angles, num_det
        self.projection_scale = geometry.pixel_size**2 / geometry.detector_spacing
        self._transposed: Optional[torch.Tensor] = None

    @staticmethod
    def memory_bytes(geometry: ParallelBeamGeometry, dtype: torch.dtype) -> int:
        nnz = 2 * (geometry.num_angles // 4) * geometry.image_size**2
        return nnz * (torch.finfo(dtype).bits // 8 + 4)

    def project(self, images: torch.Tensor) -> torch.Tensor:
        """The adjoint: pixel-driven projection (each pixel's mass spread over the two nearest
        bins with linear weights) ``(B, n, n)`` -> line integrals ``(B, A, D)`` in metres."""
        batch = images.shape[0]
        sino = images.new_empty(batch, self.num_angles, self.num_detectors)
        if self._transposed is None:  # CSR of the transpose, built on first use (CSC matmul is slow)
            self._transposed = self.matrix.t().to_sparse_csr()
        transposed = self._transposed
        for angles, _, from_quarter in self.quarters:
            rhs = from_quarter(images).reshape(batch, -1).T.contiguous()
            sino[:, angles] = (transposed @ rhs).T.reshape(batch, len(angles), self.num_detectors)
        return sino * self.projection_scale

    def __call__(self, filtered: torch.Tensor) -> torch.Tensor:
        """Back-project filtered sinograms ``(B, A, D)`` -> ``(B, n, n)`` (unscaled sum over angles)."""
        batch = filtered.shape[0]
        out = None
        for angles, to_quarter, _ in self.quarters:
            rhs = filtered[:, angles].reshape(batch, -1).T.contiguous()
            image = to_quarter((self.matrix @ rhs).T.reshape(batch, self.image_size, self.image_size))
            out = image if out is None else out + image
        return out


def _sparse_applies(geometry: ParallelBeamGeometry, dtype: torch.dtype) -> bool:
    fits = SymmetricBackprojector.memory_bytes(geometry, dtype) <= SPARSE_BACKPROJECTOR_MAX_BYTES
    return geometry.num_angles % 4 == 0 and fits


@functools.lru_cache(maxsize=1)
def _cached_backprojector(
    geometry: ParallelBeamGeometry, device: str, dtype: torch.dtype
) -> SymmetricBackprojector:
    return SymmetricBackprojector(geometry, torch.device(device), dtype)


def release_fbp_memory() -> None:
    """Drop the cached sparse backprojector (0.5 GB at LoDoPaB's size) once a cache is built."""
    _cached_backprojector.cache_clear()


def _backproject_grid(
    filtered: torch.Tensor, geometry: ParallelBeamGeometry, angle_chunk: int
) -> torch.Tensor:
    """Back-projection with ``grid_sample``, a chunk of angles at a time (any geometry, no setup)."""
    dtype, device = filtered.dtype, filtered.device
    n = geometry.image_size
    xs = torch.as_tensor(geometry.pixel_centers(), dtype=dtype, device=device) / geometry.detector_half_width
    coords = torch.stack(
        (xs[:, None].expand(n, n).reshape(-1), xs[None, :].expand(n, n).reshape(-1))
    )  # (2, n^2)
    theta = geometry.angles(dtype, device)
    trig = torch.stack((theta.cos(), theta.sin()), dim=1)  # (A, 2)
    channels = filtered[None]  # (1, B, A, D): the batch shares one sampling grid as channels
    out = torch.zeros(filtered.shape[0], n * n, dtype=dtype, device=device)
    num_angles = geometry.num_angles
    for a0 in range(0, num_angles, angle_chunk):
        count = min(angle_chunk, num_angles - a0)
        # grid[..., 0]: detector coordinate s / s_max (align_corners=False), grid[..., 1]: row centre
        grid = torch.empty(1, count, n * n, 2, dtype=dtype, device=device)
        grid[0, :, :, 0] = trig[a0 : a0 + count] @ coords
        rows = torch.arange(a0, a0 + count, dtype=dtype, device=device)
        grid[0, :, :, 1] = ((rows + 0.5) * (2.0 / num_angles) - 1.0)[:, None]
        values = F.grid_sample(channels, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out += values[0].sum(1)
    return out.reshape(-1, n, n)


def fbp_torch(
    sinograms: ArrayLike,
    geometry: ParallelBeamGeometry,
    filter_name: str = "hann",
    frequency_scaling: float = 1.0,
    method: str = "auto",
    angle_chunk: int = 100,
) -> torch.Tensor:
    """FBP in torch: filter along detectors, then back-project with linear interpolation along the
    detector. ``f(x) = (pi / A) sum_i q_i(x . theta_i)`` with ``q_i`` the projection filtered on
    detector spacing ``ds`` (Kak & Slaney eq. 3.61); physical units in and out. Any device.

    ``method``: ``sparse`` (:class:`SymmetricBackprojector`, needs ``4 | A``), ``grid``
    (``grid_sample`` per call) or ``auto`` (sparse when it applies and fits in 1 GiB).
    """
    batch, squeeze = _as_batch(sinograms)
    _check_sinogram_shape(batch, geometry)
    dtype = batch.dtype if batch.dtype in (torch.float32, torch.float64) else torch.float32
    batch = batch.to(dtype)
    filtered = filter_sinogram(batch, filter_name, frequency_scaling)  # (B, A, D)
    if method not in ("auto", "sparse", "grid"):
        raise ValueError(f"method must be 'auto', 'sparse' or 'grid', got {method!r}")
    if method == "auto":
        method = "sparse" if _sparse_applies(geometry, dtype) else "grid"
    if method == "sparse":
        summed = _cached_backprojector(geometry, str(batch.device), dtype)(filtered)
    else:
        summed = _backproject_grid(filtered, geometry, angle_chunk)
    # fourier_filter carries scikit-image's factor 2, hence pi / (2 A) (as iradon).
    recon = summed * (math.pi / (2 * geometry.num_angles) / geometry.detector_spacing)
    return recon[0] if squeeze else recon


def fbp_skimage(
    sinograms: ArrayLike,
    geometry: ParallelBeamGeometry,
    filter_name: str = "hann",
    frequency_scaling: float = 1.0,
) -> torch.Tensor:
    """FBP with ``skimage.transform.iradon`` (the reference; slow, per image on the CPU).

    iradon assumes unit detector spacing equal to the pixel size and a rotation centre on pixel
    ``n // 2``; the sinogram is therefore resampled (linearly) onto that grid, with the per-angle
    half-pixel offset ``0.5 (cos + sin)`` of LoDoPaB's pixel-centred grid, and the angle mapped
    ``phi = theta - 90 deg`` (iradon's detector coordinate is ``col cos phi - row sin phi``).
    """
    if frequency_scaling != 1.0:
        raise ValueError("the skimage FBP backend supports frequency_scaling=1.0 only")
    from skimage.transform import iradon

    batch, squeeze = _as_batch(sinograms)
    _check_sinogram_shape(batch, geometry)
    h = geometry.pixel_size
    n = geometry.image_size
    theta = geometry.angles().numpy()
    num_bins = 2 * int(math.ceil(n / math.sqrt(2))) + 3
    t = np.arange(num_bins) - num_bins // 2
    s_needed = h * (t[None, :] + 0.5 * (np.cos(theta) + np.sin(theta))[:, None])  # (A, bins)
    s_grid = geometry.detector_positions()
    outs = []
    for sino in batch.detach().cpu().numpy().astype(np.float64):
        resampled = np.stack(
            [np.interp(s_needed[i], s_grid, sino[i], left=0.0, right=0.0) for i in range(len(theta))]
        )
        recon = iradon(
            resampled.T / h,
            theta=np.rad2deg(theta) - 90.0,
            output_size=n,
            filter_name=filter_name,
            circle=False,
        )
        outs.append(recon)
    out = torch.as_tensor(np.stack(outs), dtype=torch.float32)
    return out[0] if squeeze else out


def _astra():
    import astra  # noqa: F401  (optional dependency)

    return astra


def fbp_astra(
    sinograms: ArrayLike,
    geometry: ParallelBeamGeometry,
    filter_name: str = "hann",
    frequency_scaling: float = 1.0,
) -> torch.Tensor:
    """FBP with astra-toolbox (``FBP_CUDA`` when astra has CUDA, else the CPU ``FBP``).

    astra works in pixel units: detector width ``ds / h``, data divided by ``h``. Its angle and
    axis conventions differ from LoDoPaB's (ODL's); the mapping used here (angle ``-theta``, image
    transposed) is pinned by ``test_fbp_backends_agree``.
    """
    astra = _astra()
    batch, squeeze = _as_batch(sinograms)
    _check_sinogram_shape(batch, geometry)
    n = geometry.image_size
    h = geometry.pixel_size
    theta = geometry.angles().numpy()
    vol_geom = astra.create_vol_geom(n, n)
    proj_geom = astra.create_proj_geom(
        "parallel", geometry.detector_spacing / h, geometry.num_detectors, _ASTRA_ANGLE_SIGN * theta
    )
    use_cuda = bool(astra.use_cuda())
    outs = []
    for sino in batch.detach().cpu().numpy().astype(np.float32):
        sino_id = astra.data2d.create("-sino", proj_geom, sino / h)
        rec_id = astra.data2d.create("-vol", vol_geom, 0.0)
        proj_id = None
        try:
            if use_cuda:
                cfg = astra.astra_dict("FBP_CUDA")
            else:
                proj_id = astra.create_projector("linear", proj_geom, vol_geom)
                cfg = astra.astra_dict("FBP")
                cfg["ProjectorId"] = proj_id
            cfg["ReconstructionDataId"] = rec_id
            cfg["ProjectionDataId"] = sino_id
            cfg["FilterType"] = filter_name
            if frequency_scaling != 1.0:
                cfg["option"] = {"FilterD": frequency_scaling}
            alg_id = astra.algorithm.create(cfg)
            try:
                astra.algorithm.run(alg_id)
            finally:
                astra.algorithm.delete(alg_id)
            outs.append(_from_astra_image(astra.data2d.get(rec_id)))
        finally:
            astra.data2d.delete([sino_id, rec_id])
            if proj_id is not None:
                astra.projector.delete(proj_id)
    out = torch.as_tensor(np.stack(outs), dtype=torch.float32)
    return out[0] if squeeze else out


# astra's volume rows run along our y and its angle turns the other way (pinned by
# test_fbp_backends_agree): angles are negated and its image transposed.
_ASTRA_ANGLE_SIGN = -1.0


def _from_astra_image(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image.T)


def _check_sinogram_shape(batch: torch.Tensor, geometry: ParallelBeamGeometry) -> None:
    if tuple(batch.shape[-2:]) != (geometry.num_angles, geometry.num_detectors):
        raise ValueError(
            f"sinogram shape {tuple(batch.shape[-2:])} does not match the geometry "
            f"({geometry.num_angles} angles x {geometry.num_detectors} detectors)"
        )


FBP_IMPLEMENTATIONS: Dict[str, Callable[..., torch.Tensor]] = {
    "astra": fbp_astra,
    "torch": fbp_torch,
    "skimage": fbp_skimage,
}


def _astra_has_cuda() -> bool:
    try:
        return bool(_astra().use_cuda())
    except Exception:  # ImportError, or a broken install (missing CUDA runtime libraries)
        return False


def available_fbp_backends() -> List[str]:
    """Backends usable here, fastest first (astra first only when it runs on a GPU)."""
    try:
        _astra()
        has_astra = True
    except Exception:  # ImportError, or a broken install (missing CUDA runtime libraries)
        has_astra = False
    if not has_astra:
        return ["torch", "skimage"]
    return ["astra", "torch", "skimage"] if _astra_has_cuda() else ["torch", "astra", "skimage"]


def resolve_fbp_backend(backend: str = "auto") -> str:
    """``auto`` -> the fastest available backend: astra with CUDA, else torch (on CPU torch's
    sparse backprojection beats astra's CPU FBP by about an order of magnitude)."""
    if backend not in FBP_BACKENDS:
        raise ValueError(f"unknown FBP backend {backend!r}; choose one of {FBP_BACKENDS}")
    available = available_fbp_backends()
    if backend == "auto":
        return available[0]
    if backend not in available:
        raise ValueError(
            f"FBP backend {backend!r} is not available here (astra-toolbox is not importable); "
            f"available: {available}"
        )
    return backend


def fbp(
    sinograms: ArrayLike,
    geometry: ParallelBeamGeometry,
    backend: str = "auto",
    filter_name: str = "hann",
    frequency_scaling: float = 1.0,
) -> torch.Tensor:
    """Filtered back-projection of ``(A, D)`` or ``(B, A, D)`` post-log sinograms -> images.

    For LoDoPaB observations (normalised line integrals in metres) the result estimates the
    ground truth in ``[0, 1]``. The torch backend runs on the sinograms' device.
    """
    name = resolve_fbp_backend(backend)
    return FBP_IMPLEMENTATIONS[name](
        sinograms, geometry, filter_name=filter_name, frequency_scaling=frequency_scaling
    )
