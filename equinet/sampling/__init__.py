"""Pluggable down/upsampling strategies behind one registry (torch only).

``create_strategy(name, channels, up_channels, dim=..., padding_mode=..., **options)`` returns
the matched (downsampler, upsampler) pair of one U-Net level; ``list_strategies()`` names them.
"""

from equinet.sampling.adaptive import PhaseChoice, SymmetryFrame, average_over_symmetries, choose_phase
from equinet.sampling.base import (
    Downsample,
    Upsample,
    create_strategy,
    list_strategies,
    register_strategy,
    strategy_info,
)
from equinet.sampling.classical import (
    AvgPoolDown,
    BlurPoolDown,
    BlurUp,
    MaxPoolDown,
    ResizeConvUp,
    StridedConvDown,
    TransposedUp,
    UnpoolUp,
)
from equinet.sampling.layers import BlurFilter, DenseMaxPool, binomial_filter
from equinet.sampling.orthogonal import (
    InvertibleDownsampling1D,
    InvertibleDownsampling2D,
    InvertibleDownsampling3D,
    InvertibleUpsampling1D,
    InvertibleUpsampling2D,
    InvertibleUpsampling3D,
    OrthogonalDownsample,
    OrthogonalMatrices,
    OrthogonalUpsample,
)
from equinet.sampling.polyphase import (
    max_norm_choice,
    max_norm_phase,
    mix_polyphase,
    place_polyphase,
    polyphase_norms,
    roll_per_sample,
    select_polyphase,
)
from equinet.sampling.polyphase_layers import APSDown, LPSDown, PolyphaseState, PolyphaseUp

__all__ = [
    "Downsample", "Upsample", "create_strategy", "list_strategies", "register_strategy", "strategy_info",
    "MaxPoolDown", "AvgPoolDown", "StridedConvDown", "BlurPoolDown", "TransposedUp", "ResizeConvUp",
    "UnpoolUp", "BlurUp", "BlurFilter", "DenseMaxPool", "binomial_filter",
    "APSDown", "LPSDown", "PolyphaseUp", "PolyphaseState",
    "InvertibleDownsampling1D", "InvertibleDownsampling2D", "InvertibleDownsampling3D",
    "InvertibleUpsampling1D", "InvertibleUpsampling2D", "InvertibleUpsampling3D",
    "OrthogonalDownsample", "OrthogonalUpsample", "OrthogonalMatrices",
    "PhaseChoice", "SymmetryFrame", "choose_phase", "average_over_symmetries", "max_norm_choice",
    "max_norm_phase", "polyphase_norms", "select_polyphase", "place_polyphase", "mix_polyphase", "roll_per_sample",
]
