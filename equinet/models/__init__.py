"""Networks (torch only): the U-Net with pluggable sampling and the fully invertible iUNet."""

from equinet.models.invertible import (
    AdditiveCoupling,
    InvertibleChannelMixing1D,
    InvertibleChannelMixing2D,
    InvertibleChannelMixing3D,
    create_standard_module,
)
from equinet.models.iunet import ChannelPlanWarning, LiftediUNet, iUNet
from equinet.models.memory_efficient import MemoryEfficientBackprop
from equinet.models.unet import UNet

__all__ = [
    "UNet",
    "iUNet",
    "LiftediUNet",
    "ChannelPlanWarning",
    "AdditiveCoupling",
    "InvertibleChannelMixing1D",
    "InvertibleChannelMixing2D",
    "InvertibleChannelMixing3D",
    "create_standard_module",
    "MemoryEfficientBackprop",
]
