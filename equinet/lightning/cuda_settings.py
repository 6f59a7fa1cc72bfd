"""Which numerical settings keep equinet's exactness guarantees, and the one-line warning at fit start.

equinet sets no ``torch.backends`` flag itself (they are process-wide and belong to the user); it
*requires* full float32 (or float64) arithmetic for its guarantees and says so when a fit breaks
that (README, "What is exact"):

- ``precision`` other than ``32-true``/``64-true`` (``16-mixed``, ``bf16-mixed``, ``*-true``):
  convolutions run with 11 / 8 mantissa bits, grid choices are made on rounded features and
  ties are compared between rounded norms: equivariance is not promised, only measured.
- on CUDA, TF32 (``torch.backends.cudnn.allow_tf32``, PyTorch's default ``True``;
  ``torch.backends.cuda.matmul.allow_tf32`` / ``torch.get_float32_matmul_precision() != "highest"``):
  10 mantissa bits in convolutions and matrix products; the orthogonal layers are then orthogonal
  only to ~1e-3 and the rounding-safe margins of the adaptive choices (which assume float32
  features) no longer hold.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import nn

EXACT_PRECISIONS = ("32-true", "32", "64-true", "64")


class ExactnessWarning(UserWarning):
    """A fit's numerical settings break a guarantee its network makes (README, "What is exact")."""


def exactness_guarantee(network: nn.Module) -> Optional[str]:
    """What ``network`` promises ("exact shift equivariance" / "exact invertibility ..."), or ``None``."""
    from equinet.models.iunet import LiftediUNet, iUNet
    from equinet.models.unet import UNet

    if isinstance(network, LiftediUNet):  # lift -> iUNet -> projection: the iUNet's guarantee
        network = network.iunet

    if isinstance(network, UNet):
        adaptive = network.sampling in ("aps", "lps") or (
            network.sampling == "orthogonal" and bool(network.sampling_kwargs.get("adaptive")))
        if adaptive and network.padding_mode == "circular":
            return f"exact shift equivariance (UNet, sampling={network.sampling!r})"
        return "exact invertibility of its resampling (UNet, sampling='orthogonal')" if network.sampling == "orthogonal" else None
    if isinstance(network, iUNet):
        if network.adaptive_resampling:
            return "exact invertibility and shift equivariance (iUNet, adaptive_resampling=True)"
        return "exact invertibility (iUNet)"
    return None


def inexact_settings(precision: str, device_type: str) -> List[str]:
    """The settings, of this precision on this device type and the current ``torch.backends``
    flags, that break float32-exact arithmetic (empty when none does)."""
    problems = []
    if str(precision) not in EXACT_PRECISIONS:
        problems.append(f"precision={precision} (reduced-precision features and norms)")
    if device_type == "cuda":
        if torch.backends.cudnn.allow_tf32:
            problems.append("TF32 convolutions (torch.backends.cudnn.allow_tf32=True)")
        if torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest":
            problems.append("TF32 matrix products (torch.backends.cuda.matmul.allow_tf32 / "
                            f"float32_matmul_precision={torch.get_float32_matmul_precision()!r})")
    return problems


def exactness_message(network: nn.Module, precision: str, device_type: str) -> Optional[str]:
    """The one-line warning for this fit, or ``None`` when its settings keep the network's guarantee."""
    guarantee = exactness_guarantee(network)
    problems = inexact_settings(precision, device_type)
    if guarantee is None or not problems:
        return None
    return (f"equinet: {'; '.join(problems)} on {device_type}: {guarantee} is not guaranteed (it is in 32-true "
            "with TF32 off: torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False); "
            "see README 'What is exact'")


def warn_if_inexact(network: nn.Module, precision: str, device_type: str) -> Optional[str]:
    """Warn once (rank zero, :class:`ExactnessWarning`) when the settings break the guarantee."""
    message = exactness_message(network, precision, device_type)
    if message is not None:
        rank_zero_warn(message, category=ExactnessWarning)
    return message
