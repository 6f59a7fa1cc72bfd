"""Networks: the U-Net with pluggable sampling (torch only)."""

from equinet.models.unet import UNet

__all__ = ["UNet"]
