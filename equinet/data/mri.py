"""MRI forward model (fastMRI single-coil): k-space, Cartesian undersampling, zero-filled recon.

Plain functions over fastMRI's own pieces (``fastmri.fft2c``/``ifft2c``, ``fastmri.data.subsample``
masks, ``fastmri.data.transforms``), reused by :class:`~equinet.data.knee.FastMRIDataModule`, the
ImageNet shift test and the tests. Complex tensors use fastMRI's ``(..., 2)`` real/imag layout.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import fastmri
import numpy as np
import torch
from fastmri.data import transforms as T
from fastmri.data.subsample import MaskFunc, create_mask_for_mask_type

from equinet.data.common import DataFormatError, check_finite, check_max_value, make_sample, normalize_pair
from equinet.data.types import ReconSample

MASK_TYPES = ("random", "equispaced", "equispaced_fraction", "magic", "magic_fraction")
FASTMRI_CLAMP = 6.0  # fastMRI's U-Net baseline clamps normalised inputs to [-6, 6]


def make_mask_func(
    mask_type: str = "random",
    center_fractions: Sequence[float] = (0.08,),
    accelerations: Sequence[int] = (4,),
) -> MaskFunc:
    """fastMRI's column mask (``create_mask_for_mask_type``) with argument checks that name the problem."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"unknown mask_type {mask_type!r}; choose one of {MASK_TYPES}")
    center_fractions, accelerations = list(center_fractions), list(accelerations)
    if not center_fractions or len(center_fractions) != len(accelerations):
        raise ValueError(
            f"center_fractions {center_fractions} and accelerations {accelerations} must be non-empty and of equal length"
        )
    if any(not 0 < c < 1 for c in center_fractions) or any(a < 1 for a in accelerations):
        raise ValueError(
            f"need 0 < center_fraction < 1 and acceleration >= 1, got {center_fractions}, {accelerations}"
        )
    return create_mask_for_mask_type(mask_type, center_fractions, accelerations)


def file_seed(fname: str) -> Tuple[int, ...]:
    """fastMRI's per-volume mask seed (``tuple(map(ord, fname))``): every slice of a volume and
    every evaluation gets the same mask, identical to fastMRI's reference pipeline."""
    return tuple(map(ord, fname))


def image_to_kspace(image: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT (``fastmri.fft2c``) of a real ``(H, W)`` or complex ``(H, W, 2)`` image."""
    if image.ndim == 2:
        image = torch.stack((image, torch.zeros_like(image)), dim=-1)
    return fastmri.fft2c(image)


def zero_filled(kspace: torch.Tensor, crop: Optional[Tuple[int, int]] = None) -> torch.Tensor:
    """Magnitude of the inverse FFT of (masked) k-space ``(H, W, 2)``, centre-cropped to ``crop``."""
    image = fastmri.ifft2c(kspace)
    if crop is not None:
        image = T.complex_center_crop(image, crop)
    return fastmri.complex_abs(image)


def undersample(
    kspace: torch.Tensor,
    mask_func: Optional[MaskFunc],
    seed: Optional[Union[int, Tuple[int, ...]]] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Apply a fastMRI column mask to ``(H, W, 2)`` k-space; ``mask_func=None`` keeps all of it."""
    if mask_func is None:
        return kspace, torch.ones(1, kspace.shape[-2], 1)
    masked, mask, _ = T.apply_mask(kspace, mask_func, seed=seed)
    return masked, mask


def mri_forward(
    image: torch.Tensor,
    mask_func: Optional[MaskFunc],
    seed: Optional[Union[int, Tuple[int, ...]]] = None,
) -> torch.Tensor:
    """Real image ``(H, W)`` -> zero-filled magnitude reconstruction from masked k-space ``(H, W)``."""
    masked, _ = undersample(image_to_kspace(image.to(torch.float32)), mask_func, seed)
    return zero_filled(masked)


class MriSliceTransform:
    """fastMRI ``SliceDataset`` transform -> :class:`ReconSample` (the U-Net baseline's recipe).

    Masks k-space (seeded per file when ``deterministic``: validation and test; otherwise drawn
    from torch's RNG, which differs per DataLoader worker and follows ``seed_everything``), takes
    the zero-filled magnitude, centre-crops input and target to ``crop_size``, and normalises both
    with the input's mean/std (input clamped to +-6 as fastMRI). ``max_value`` is the file's
    ``max`` attribute. Unlike fastMRI's ``UnetDataTransform`` the target is not clamped, so
    ``target * std + mean`` is exactly the stored ``reconstruction_esc``. Each slice is checked
    (cheaply) before use: finite, k-space and target not all zero (an interrupted copy leaves
    zeros), ``max`` a finite number > 0.
    """

    def __init__(self, mask_func: Optional[MaskFunc], crop_size: int, deterministic: bool) -> None:
        self.mask_func = mask_func
        self.crop_size = crop_size
        self.deterministic = deterministic

    def check(self, kspace: np.ndarray, target: Optional[np.ndarray], attrs: Dict, where: str) -> None:
        """The per-sample checks (cheap, always on): a complex 2D k-space slice at least the crop,
        a target, both finite and not all zero, ``max`` a finite number > 0."""
        if target is None:
            raise DataFormatError(f"{where}: no target (reconstruction_esc) in the file")
        if kspace.ndim != 2 or not np.iscomplexobj(kspace):
            raise DataFormatError(
                f"{where}: kspace must be a complex (rows, cols) slice, got {kspace.dtype} {kspace.shape}"
            )
        if min(kspace.shape) < self.crop_size:
            raise DataFormatError(
                f"{where}: kspace {kspace.shape} is smaller than crop_size={self.crop_size}"
            )
        zeros = "(an interrupted copy or a blank slice): not a sample - re-copy the file or remove it"
        check_finite(kspace, f"{where}: kspace", if_all_zero=zeros)
        check_finite(target, f"{where}: reconstruction_esc", if_all_zero=zeros)
        if "max" not in attrs:
            raise DataFormatError(f"{where}: missing attribute 'max' (data range used for PSNR/SSIM)")
        check_max_value(attrs["max"], where)

    def __call__(
        self,
        kspace: np.ndarray,
        mask: Optional[np.ndarray],
        target: Optional[np.ndarray],
        attrs: Dict,
        fname: str,
        slice_num: int,
    ) -> ReconSample:
        self.check(kspace, target, attrs, f"{fname} slice {slice_num}")
        crop = (self.crop_size, self.crop_size)
        if self.deterministic:
            seed = file_seed(fname)
        else:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        masked, _ = undersample(T.to_tensor(kspace), self.mask_func, seed)
        image = zero_filled(masked, crop)
        target_t = T.center_crop(torch.from_numpy(np.asarray(target, dtype=np.float32)), crop)
        image, target_t, mean, std = normalize_pair(image, target_t, clamp=FASTMRI_CLAMP)
        return make_sample(image, target_t, mean, std, float(attrs["max"]), fname, slice_num)
