"""The variants a study compares: named overrides of one run config (the dotted-key helpers are in
:mod:`equinet.study.config`).

``VARIANTS`` is *the* strategy table: display name -> sampling strategy (registry name) and its
options, with one line on what it is. Every other list of strategies follows from it, in its
spelling (``APS-3``, ``LPF-3``): the study variants, ``equinet equivariance --variants``,
``equinet study variants``, the benchmarks, and ``experiments/configs/<dataset>/<name>.yaml``
(the name in lower case: ``aps-3.yaml``).

A *study variant* is a set of dotted-key overrides of the study's run config (an ordinary
``equinet fit`` config, whose network is the baseline's), e.g.
``{"model.network.init_args.sampling": "aps"}``. ``STUDY_VARIANTS`` holds the APS-U paper's rows
(``baseline``, ``baseline+DA``, ``LPF-j``, ``APS``, ``APS-j``) plus equinet's (``LPS``,
``orthogonal``, ``orthogonal-adaptive``, ``iUNet``, ...); a study config may define more under
``define:`` with the same kind of overrides.
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Mapping, NamedTuple, Optional

from equinet.sampling import list_strategies
from equinet.study.config import INPUT, NETWORK


class Strategy(NamedTuple):
    """A U-Net down/upsampling strategy: ``UNet(sampling=sampling, sampling_kwargs=options)``."""

    sampling: str
    options: Dict[str, Any]


# name, registry name, options, what it is: the U-Net down/upsampling variants the papers compare
_TABLE = (
    ("maxpool", "maxpool", {}, "max-pool down, transposed conv up"),
    ("maxpool+bilinear", "maxpool", {"up": "bilinear"}, "max-pool down, bilinear resize + 1x1 conv up"),
    ("maxpool+nearest", "maxpool", {"up": "nearest"}, "max-pool down, nearest resize + 1x1 conv up"),
    ("maxpool+unpool", "maxpool", {"up": "unpool"}, "max-pool down, max-unpooling up"),
    ("avgpool", "avgpool", {}, "average-pool down, transposed conv up"),
    ("strided_conv", "strided_conv", {}, "strided conv down, transposed conv up"),
    *((f"LPF-{j}", "blur", {"filter_size": j}, f"max-pool + {j}x{j} blur down, transposed conv + blur up")
      for j in (2, 3, 5)),
    ("APS", "aps", {"filter_size": 1}, "adaptive polyphase down/up (APS-D/APS-U)"),
    *((f"APS-{j}", "aps", {"filter_size": j}, f"APS with {j}x{j} blur") for j in (2, 3, 5)),
    ("LPS", "lps", {}, "learnable polyphase down/up"),
    ("orthogonal", "orthogonal", {}, "learnable orthogonal (invertible) down/up"),
    ("orthogonal-adaptive", "orthogonal", {"adaptive": True}, "orthogonal down/up on an adaptively chosen grid"),
)
VARIANTS: Dict[str, Strategy] = {name: Strategy(sampling, options) for name, sampling, options, _ in _TABLE}


def available_variants() -> List[str]:
    """Variants whose strategy is registered (all of them once every strategy module ships)."""
    registered = set(list_strategies())
    return [name for name, (strategy, _) in VARIANTS.items() if strategy in registered]


Overrides = Dict[str, Any]

UNET = "equinet.models.UNet"
LIFTED_IUNET = "equinet.models.LiftediUNet"
DA_SHIFT = 16  # the APS-U paper's random shifts in [-16, 16]


def unet_overrides(variant: str) -> Overrides:
    """Overrides that make the run config's U-Net use the strategy of ``VARIANTS[variant]``."""
    strategy, options = VARIANTS[variant]
    return {
        f"{NETWORK}.class_path": UNET,
        f"{NETWORK}.init_args.sampling": strategy,
        f"{NETWORK}.init_args.sampling_kwargs": dict(options) or None,
    }


# The iUNet rows: 2 couplings per level and side, each F two 3x3 convs on half the channels, so a
# level has about the U-Net's parameters at the same width (0.8x: 25.9M against 31.0M for the
# fastMRI U-Net of 64 channels); 3x3 linear lift and projection, initialised so that the whole
# network starts as the identity (LiftediUNet's identity_init).
_IUNET = {
    f"{NETWORK}.class_path": LIFTED_IUNET,
    f"{NETWORK}.init_args.architecture": 2,
    f"{NETWORK}.init_args.block_depth": 2,
    f"{NETWORK}.init_args.linear_kernel_size": 3,
    f"{NETWORK}.init_args.verbose": 0,
}
# study variant, overrides of the run config, what it is. ``baseline`` is the APS-U paper's U-Net
# (max-pool down, transposed convolution up); every other row changes only what its name says.
_STUDY_TABLE = (
    ("baseline", unet_overrides("maxpool"), "max-pool down, transposed conv up"),
    ("baseline+DA", {**unet_overrides("maxpool"), "model.shift_augmentation": DA_SHIFT},
     f"baseline trained with random circular shifts in [-{DA_SHIFT}, {DA_SHIFT}]^2"),
    *((name, unet_overrides(name), what) for name, _, _, what in _TABLE if name != "maxpool"),
    ("iUNet", {**_IUNET, f"{NETWORK}.init_args.adaptive_resampling": False},
     "fully invertible U-Net (orthogonal resampling)"),
    ("iUNet-adaptive", {**_IUNET, f"{NETWORK}.init_args.adaptive_resampling": True},
     "fully invertible U-Net, adaptive grid"),
)
STUDY_VARIANTS: Dict[str, Overrides] = {name: overrides for name, overrides, _ in _STUDY_TABLE}
VARIANT_DESCRIPTIONS: Dict[str, str] = {name: what for name, _, what in _STUDY_TABLE}

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+._-]*$")


def known_variants(define: Optional[Mapping[str, Overrides]] = None) -> Dict[str, Overrides]:
    """Built-in variants plus a study's ``define:`` (which may also redefine a built-in)."""
    table = dict(STUDY_VARIANTS)
    for name, overrides in (define or {}).items():
        if not isinstance(name, str) or not VARIANT_NAME.match(name) or name == INPUT:
            raise ValueError(
                f"variant name {name!r} is not usable as a folder name (letters, digits, +._-; "
                f"not {INPUT!r}, which is the reference row)"
            )
        if not isinstance(overrides, Mapping):
            raise ValueError(
                f"define.{name} must map config keys to values, e.g. "
                f"{{'model.network.init_args.sampling': 'aps'}}; got {overrides!r}"
            )
        table[name] = dict(overrides)
    return table
