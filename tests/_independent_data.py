"""Writers of fastMRI, LoDoPaB-CT and ImageNet files for the data tests, independent of equinet.

Nothing here imports equinet: files are written with h5py, numpy and PIL straight from the
formats' published descriptions (fastMRI's single-coil layout and ISMRMRD header; LoDoPaB-CT's
``data`` key, 128-row files and ODL parallel-beam convention; ImageNet JPEGs), so the loaders are
tested against files they were not built alongside.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Optional, Sequence, Tuple

import h5py
import numpy as np

# LoDoPaB-CT / ODL conventions (Leuschner et al., Sci. Data 2021): the image covers
# [-0.13, 0.13]^2 m, array axis 0 is x and axis 1 is y; angle i of A is (i + 1/2) pi / A; detector
# bin j of D is centred at -0.18385 + (j + 1/2) 2 * 0.18385 / D m and integrates along
# {p : p . (cos t, sin t) = s}.
IMAGE_HALF_WIDTH = 0.13
DETECTOR_HALF_WIDTH = 0.18385

# A Gaussian blob: (amplitude, sigma [m], x0 [m], y0 [m]).
Blob = Tuple[float, float, float, float]

ASYMMETRIC_BLOBS: Sequence[Blob] = (
    (0.9, 0.012, 0.055, -0.02),
    (0.5, 0.02, -0.03, 0.05),
    (0.35, 0.008, -0.06, -0.06),
    (0.6, 0.015, 0.0, 0.075),
)  # no symmetry of the square maps this set onto itself


def blob_image(blobs: Iterable[Blob], size: int) -> np.ndarray:
    """The blobs sampled at LoDoPaB's pixel centres, float32 ``(size, size)``."""
    h = 2 * IMAGE_HALF_WIDTH / size
    x = -IMAGE_HALF_WIDTH + (np.arange(size) + 0.5) * h
    image = np.zeros((size, size))
    for a, sigma, x0, y0 in blobs:
        image += a * np.exp(-((x[:, None] - x0) ** 2 + (x[None, :] - y0) ** 2) / (2 * sigma**2))
    return image.astype(np.float32)


def blob_sinogram(blobs: Iterable[Blob], num_angles: int, num_detectors: int) -> np.ndarray:
    """Exact line integrals (metres x value) of the blobs, ``(angles, detector bins)`` float32."""
    theta = ((np.arange(num_angles) + 0.5) * np.pi / num_angles)[:, None]
    s = (-DETECTOR_HALF_WIDTH + (np.arange(num_detectors) + 0.5) * 2 * DETECTOR_HALF_WIDTH / num_detectors)[
        None, :
    ]
    sino = np.zeros((num_angles, num_detectors))
    for a, sigma, x0, y0 in blobs:
        offset = s - (x0 * np.cos(theta) + y0 * np.sin(theta))
        sino += a * math.sqrt(2 * math.pi) * sigma * np.exp(-(offset**2) / (2 * sigma**2))
    return sino.astype(np.float32)


def random_blobs(rng: np.random.Generator, count: int = 4) -> list:
    """Blobs well inside the field of view whose peaks stay below 1 (ground truth in [0, 1])."""
    return [
        (rng.uniform(0.15, 0.24), rng.uniform(0.008, 0.02), *rng.uniform(-0.07, 0.07, size=2))
        for _ in range(count)
    ]


def write_lodopab_file(
    path: Path, rows: Optional[np.ndarray], row_shape: Sequence[int], num_rows: int = 128
) -> None:
    """A LoDoPaB file: dataset ``data`` of ``num_rows`` float32 rows, the first ``len(rows)``
    written, the rest left as HDF5 fill value 0 (the zero padding; unallocated, so large files
    cost no disk)."""
    with h5py.File(path, "w") as f:
        data = f.create_dataset(
            "data", shape=(num_rows, *row_shape), dtype=np.float32, chunks=(1, *row_shape), fillvalue=0.0
        )
        if rows is not None and len(rows):
            data[: len(rows)] = rows


def write_lodopab_pair(
    root: Path,
    part: str,
    index: int,
    truths: np.ndarray,
    observations: np.ndarray,
    image_size: int,
    sinogram_shape: Sequence[int],
    num_rows: int = 128,
) -> Tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    gt = root / f"ground_truth_{part}_{index:03d}.hdf5"
    obs = root / f"observation_{part}_{index:03d}.hdf5"
    write_lodopab_file(gt, truths, (image_size, image_size), num_rows)
    write_lodopab_file(obs, observations, sinogram_shape, num_rows)
    return gt, obs


# ---------------------------------------------------------------------------------------------
# fastMRI single-coil
# ---------------------------------------------------------------------------------------------


def ismrmrd_header(rows: int, cols: int, recon: int, center: int, maximum: int) -> bytes:
    """The ISMRMRD XML fields fastMRI reads (encoded/recon matrix sizes, phase-encoding limits)."""
    return f"""<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">
  <encoding>
    <encodedSpace><matrixSize><x>{rows}</x><y>{cols}</y><z>1</z></matrixSize></encodedSpace>
    <reconSpace><matrixSize><x>{recon}</x><y>{recon}</y><z>1</z></matrixSize></reconSpace>
    <encodingLimits>
      <kspace_encoding_step_1><minimum>0</minimum><maximum>{maximum}</maximum><center>{center}</center></kspace_encoding_step_1>
    </encodingLimits>
    <trajectory>cartesian</trajectory>
  </encoding>
</ismrmrdHeader>
""".encode()


def centred_fft2(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def centred_ifft2(x: np.ndarray) -> np.ndarray:
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(x, axes=(-2, -1)), norm="ortho"), axes=(-2, -1))


def natural_slices(num_slices: int, size: int, seed: int = 0) -> np.ndarray:
    """``(num_slices, size, size)`` crops of scikit-image's bundled photos in [0, 1]."""
    import skimage.data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    rng = np.random.default_rng(seed)
    sources = [skimage.data.camera(), rgb2gray(skimage.data.astronaut()), skimage.data.coins()]
    out = []
    for i in range(num_slices):
        base = np.asarray(sources[i % len(sources)], dtype=np.float64)
        base = base / base.max()
        crop = int(min(base.shape) * rng.uniform(0.5, 0.9))
        top = int(rng.integers(0, base.shape[0] - crop + 1))
        left = int(rng.integers(0, base.shape[1] - crop + 1))
        out.append(resize(base[top : top + crop, left : left + crop], (size, size), anti_aliasing=True))
    return np.stack(out)


def write_fastmri_file(
    path: Path,
    images: np.ndarray,
    seed: int = 0,
    acquisition="CORPD_FBK",
    max_value: Optional[float] = None,
    pad: Tuple[int, int] = (2, 3),
) -> None:
    """A fastMRI single-coil file from magnitude images ``(slices, S, S)``: the object in a
    ``2S x W`` field with a smooth phase and noise, ``kspace`` = centred orthonormal FFT
    (complex64) with ``pad`` unacquired phase-encoding columns left/right (declared in the
    header), ``reconstruction_esc`` = centre-cropped magnitude of its inverse FFT, attrs ``max``
    (default: the target's maximum), ``norm``, ``acquisition`` (str, or bytes if given so)."""
    rng = np.random.default_rng(seed)
    num_slices, size, _ = images.shape
    rows, cols = 2 * size, 2 * int(round(size * 1.15 / 2))
    field = np.zeros((num_slices, rows, cols), dtype=np.complex128)
    top, left = (rows - size) // 2, (cols - size) // 2
    yy, xx = np.mgrid[0:rows, 0:cols] / max(rows, cols)
    phase = 1.5 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)
    field[:, top : top + size, left : left + size] = images * 3e-5
    field = field * np.exp(1j * phase)[None]
    field += 2e-7 * (rng.normal(size=field.shape) + 1j * rng.normal(size=field.shape))
    kspace = centred_fft2(field)
    kspace[..., : pad[0]] = 0
    kspace[..., cols - pad[1] :] = 0
    kspace = kspace.astype(np.complex64)
    recon = np.abs(centred_ifft2(kspace.astype(np.complex128)))[..., top : top + size, :]
    recon = recon[..., (cols - size) // 2 : (cols - size) // 2 + size].astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("reconstruction_esc", data=recon)
        f.create_dataset(
            "ismrmrd_header", data=ismrmrd_header(rows, cols, size, cols // 2 - pad[0], cols - sum(pad) - 1)
        )
        f.attrs["max"] = float(recon.max()) if max_value is None else max_value
        f.attrs["norm"] = float(np.linalg.norm(recon))
        f.attrs["acquisition"] = acquisition
        f.attrs["patient_id"] = f"independent-{seed}"


def write_fastmri_root(root: Path, volumes: int = 2, slices: int = 3, size: int = 32) -> Path:
    """``root/singlecoil_{train,val}/fileNNN.h5`` of natural-image volumes."""
    for split_index, split in enumerate(("train", "val")):
        folder = root / f"singlecoil_{split}"
        folder.mkdir(parents=True, exist_ok=True)
        for v in range(volumes):
            seed = 10 * split_index + v
            write_fastmri_file(
                folder / f"file{1000 + seed}.h5",
                natural_slices(slices, size, seed),
                seed=seed,
                acquisition=("CORPD_FBK", "CORPDFS_FBK")[v % 2],
            )
    return root


# ---------------------------------------------------------------------------------------------
# ImageNet JPEGs
# ---------------------------------------------------------------------------------------------


def write_jpeg(path: Path, index: int, size: Tuple[int, int] = (48, 64), exif_orientation: int = 0) -> None:
    """An RGB JPEG (height, width) = ``size`` cut from a bundled photo; optional EXIF orientation."""
    import skimage.data
    from PIL import Image

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    photo = photos[index % len(photos)]
    h, w = size
    top, left = (7 * index) % (photo.shape[0] - h), (11 * index) % (photo.shape[1] - w)
    image = Image.fromarray(np.ascontiguousarray(photo[top : top + h, left : left + w, :3]))
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif
    image.save(path, format="JPEG", quality=92, **kwargs)


def set_jpeg_size(path: Path, height: int, width: int) -> None:
    """Rewrite the frame size in a baseline JPEG's SOF0 header (what a decoder reads first)."""
    data = bytearray(path.read_bytes())
    at = data.index(b"\xff\xc0")
    data[at + 5 : at + 7] = height.to_bytes(2, "big")
    data[at + 7 : at + 9] = width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
