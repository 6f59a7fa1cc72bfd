"""Learnable orthogonal (invertible) up/downsampling (iUNet paper, Thm. 4, Cor. 5-6)."""

from equinet.sampling.orthogonal.layers import *  # noqa: F401,F403
from equinet.sampling.orthogonal.layers import (  # noqa: F401
    InitSpec,
    _Blocks,
    __all__,
    block_down,
    block_up,
    invert_block_down,
    invert_block_up,
    invertible_downsampling,
    invertible_upsampling,
)
