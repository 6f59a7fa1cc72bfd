"""Metrics as plain functions: reconstruction (fastMRI conventions) and shift equivariance."""

from equinet.metrics.equivariance import (
    circular_shift,
    dpsnr_from_sse,
    equivariance_errors,
    measure_equivariance,
    random_shifts,
    worst_case_dpsnr,
    worst_dpsnr_image,
    worst_dpsnr_volume,
)
from equinet.metrics.reconstruction import nmse, psnr, ssim

__all__ = [
    "nmse",
    "psnr",
    "ssim",
    "circular_shift",
    "dpsnr_from_sse",
    "random_shifts",
    "equivariance_errors",
    "measure_equivariance",
    "worst_case_dpsnr",
    "worst_dpsnr_image",
    "worst_dpsnr_volume",
]
