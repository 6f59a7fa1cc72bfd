"""Lightning layer: the reconstruction module, its callbacks, and the ``equinet`` LightningCLI.

Data flows ``equinet.data`` -> ``equinet.lightning`` -> ``equinet.models``; the network is an
injected ``nn.Module`` so any U-Net strategy (or the iUNet) trains with the same logic.
"""

from equinet.lightning.callbacks import (
    EquivarianceEvaluation,
    ReconstructionImageLogger,
    ResumableRNG,
    RunCheckpoint,
)
from equinet.lightning.cuda_settings import ExactnessWarning
from equinet.lightning.module import ReconstructionModule
from equinet.lightning.predictions import ReconstructionWriter

__all__ = [
    "EquivarianceEvaluation",
    "ExactnessWarning",
    "ReconstructionImageLogger",
    "ReconstructionModule",
    "ReconstructionWriter",
    "ResumableRNG",
    "RunCheckpoint",
]
