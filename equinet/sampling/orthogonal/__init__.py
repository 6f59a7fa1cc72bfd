"""Learnable orthogonal (invertible) up/downsampling (iUNet paper, Thm. 4, Cor. 5-6).

A downsampling with stride ``s = (s_1..s_d)`` and channel multiplier ``sigma = s_1 * ... * s_d``
is a strided convolution with kernel size = stride, ``groups = C``: each input channel ``c`` has
its own orthogonal ``sigma x sigma`` matrix ``A_c`` whose ``i``-th row, reshaped to ``s``
(row-major), is output filter ``c * sigma + i`` (Theorem 4's reordering ``R``). The windows do
not overlap, so the operator is orthogonal: it preserves the l2 norm and its inverse is the
transposed convolution with the same kernel (= the matching upsampling, Definition 3).
It is computed as what it is: a permutation of the pixels into blocks (``pixel_unshuffle``)
and one ``sigma x sigma`` matrix product per channel, forward and backward, in cache-sized pieces
on the CPU and, without autograd, in place (see :func:`block_down`).

Parametrisation. ``A(theta) = Q(theta) @ B`` with ``Q(theta_0) = I``:

* ``exp``: ``Q = exp(theta - theta^T)`` (Cor. 5; scaling and squaring, see :func:`matrix_exp`),
* ``cayley``: ``Q = (I - S)^{-1} (I + S)``, ``S = theta - theta^T`` (``torch.linalg.solve_ex``),
* ``householder``: ``Q = H(v_1) ... H(v_n)``, ``H(v) = I - 2 v v^T / v^T v``
  (``n_reflections``, default ``sigma``); ``theta_0`` = random vectors and
  ``B = Q(theta_0)^T A_0`` so that ``A(theta_0) = A_0``.

For ``exp``/``cayley`` ``theta_0 = 0`` and ``B = A_0`` (the init), so the initial matrix is
reproduced bit for bit and every orthogonal matrix in ``A_0``'s connected component
(``det = det A_0``) is reachable -- including ``det = -1`` inits such as a pixel shuffle with an
odd permutation. Gradients come from autograd through ``torch.linalg.solve_ex`` and plain matrix
products; there is no hand-written backward of the parametrisation to get wrong.

Inits: ``"haar"`` -- the separable orthonormal DCT-II per axis (Kronecker product over axes);
for stride 2 this *is* the Haar transform ``[[1, 1], [1, -1]] / sqrt(2)``, for stride 1 the
identity, for other strides the DCT generalises Haar's "block mean + ordered details" (filter 0
is always the block mean times ``sqrt(sigma)``). ``"squeeze"`` (aliases ``"pixel_shuffle"``,
``"zeros"``) -- the identity matrix: filter ``i`` picks pixel ``i`` of the block, exactly
``torch.nn.functional.pixel_unshuffle`` in 2D. ``"random"`` -- Haar-distributed random
orthogonal matrices, independent per channel. A tensor/ndarray -- the orthogonal matrix itself,
``(sigma, sigma)`` shared by all channels or ``(C, sigma, sigma)``; it is checked and polished
to the nearest orthogonal matrix in float64.

Adaptive orthogonal resampling (new in equinet): per sample, the block-grid offset ``k`` is
chosen shift-consistently with the APS-D criterion (:func:`max_norm_choice`, ties included), the
input is shifted by ``-k`` before resampling and the upsampler shifts back by ``+k``; with ``k``
passed as state the pair is exactly invertible *and* equivariant to circular shifts. If the input
of a sample is symmetric under a shift that moves the grid, the upsampler averages its output
over that symmetry (:mod:`equinet.sampling.adaptive`).
"""

from __future__ import annotations

from equinet.sampling.orthogonal.kernels import (
    _Blocks,
    block_down,
    block_up,
    invert_block_down,
    invert_block_up,
    piece_slices,
    reinterpret,
    samples_contiguous,
)
from equinet.sampling.orthogonal.layers import (
    InvertibleDownsampling,
    InvertibleDownsampling1D,
    InvertibleDownsampling2D,
    InvertibleDownsampling3D,
    InvertibleUpsampling,
    InvertibleUpsampling1D,
    InvertibleUpsampling2D,
    InvertibleUpsampling3D,
    invertible_downsampling,
    invertible_upsampling,
)
from equinet.sampling.orthogonal.matrices import (
    METHODS,
    InitSpec,
    OrthogonalMatrices,
    dct_matrix,
    matrix_exp,
    orthogonal_init_matrix,
)
from equinet.sampling.orthogonal.strategy import OrthogonalDownsample, OrthogonalUpsample, orthogonal_strategy

__all__ = [
    "METHODS",
    "piece_slices",
    "reinterpret",
    "samples_contiguous",
    "OrthogonalMatrices",
    "orthogonal_init_matrix",
    "dct_matrix",
    "matrix_exp",
    "InvertibleDownsampling",
    "InvertibleUpsampling",
    "InvertibleDownsampling1D",
    "InvertibleDownsampling2D",
    "InvertibleDownsampling3D",
    "InvertibleUpsampling1D",
    "InvertibleUpsampling2D",
    "InvertibleUpsampling3D",
    "OrthogonalDownsample",
    "OrthogonalUpsample",
    "orthogonal_strategy",
]
