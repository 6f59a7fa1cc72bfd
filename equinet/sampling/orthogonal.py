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

import math
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from equinet.sampling.adaptive import PhaseChoice, average_over_symmetries
from equinet.sampling.base import Downsample, Upsample, as_tuple, register_strategy
from equinet.sampling.polyphase import max_norm_choice, roll_per_sample
from equinet.sync_counter import takes_cpu_branch

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

METHODS = ("exp", "cayley", "householder")
_SQUEEZE_ALIASES = ("squeeze", "pixel_shuffle", "zeros")
InitSpec = Union[str, torch.Tensor, np.ndarray]


# --------------------------------------------------------------------------------------------
# Orthogonal matrices
# --------------------------------------------------------------------------------------------


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``D[k, j] = sqrt((1 + [k > 0]) / n) cos(pi (2j + 1) k / 2n)``
    in float64 (rows = frequencies). ``dct_matrix(2)`` is the Haar matrix, ``dct_matrix(1) = [[1]]``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] = 1.0 / math.sqrt(n)
    if n == 2:  # exact Haar entries (cos(pi/4) * 1 differs from 1/sqrt(2) in the last bit)
        d = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=torch.float64) / math.sqrt(2.0)
    return d


def _haar_matrix(stride: Sequence[int]) -> torch.Tensor:
    """Kronecker product of per-axis orthonormal DCT-II matrices: row ``(i_1..i_d)`` (row-major)
    is the filter ``prod_a D_{s_a}[i_a, k_a]`` over block positions ``(k_1..k_d)``."""
    out = torch.ones(1, 1, dtype=torch.float64)
    for s in stride:
        out = torch.kron(out, dct_matrix(s))
    return out


def _random_orthogonal(count: int, size: int) -> torch.Tensor:
    """Haar-distributed orthogonal matrices (QR of a Gaussian with the sign fix of Mezzadri)."""
    g = torch.randn(count, size, size, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def _polish_orthogonal(matrix: torch.Tensor, what: str) -> torch.Tensor:
    """Validate a user-given (count, n, n) matrix stack and return its nearest orthogonal matrix
    (polar factor, float64) so that float32-rounded inits are orthogonal to float64 precision."""
    m = matrix.detach().to("cpu", torch.float64)
    n = m.shape[-1]
    eye = torch.eye(n, dtype=torch.float64)
    err = (m @ m.transpose(-1, -2) - eye).abs().amax().item() if m.numel() else 0.0
    if not math.isfinite(err) or err > 1e-4:
        raise ValueError(
            f"{what} must be orthogonal (A @ A.T = I); max |A A^T - I| = {err:.3g}. "
            f"Pass an orthogonal matrix, or init='haar' | 'squeeze' | 'random'"
        )
    if matrix.dtype == torch.float64 and err <= 1e-14 * n:
        return m.clone()  # already orthogonal to float64 precision: keep it bit for bit
    u, _, vh = torch.linalg.svd(m)
    return u @ vh


def orthogonal_init_matrix(
    init: InitSpec, count: int, size: int, stride: Optional[Sequence[int]] = None
) -> torch.Tensor:
    """The initial matrices ``A_0`` as a float64 ``(count, size, size)`` tensor.

    ``init``: ``"identity"``/``"squeeze"`` (aliases ``"pixel_shuffle"``, ``"zeros"``), ``"haar"``
    (needs ``stride``; separable orthonormal DCT-II, = Haar for stride 2), ``"random"``, or an
    orthogonal tensor/ndarray of shape ``(size, size)``, ``(1, size, size)`` or
    ``(count, size, size)``.
    """
    if isinstance(init, np.ndarray):
        init = torch.from_numpy(np.asarray(init))
    if isinstance(init, torch.Tensor):
        t = init
        if t.dim() == 2:
            t = t.unsqueeze(0)
        if t.dim() != 3 or t.shape[-2:] != (size, size) or t.shape[0] not in (1, count):
            raise ValueError(
                f"an init matrix must have shape ({size}, {size}), (1, {size}, {size}) or "
                f"({count}, {size}, {size}) here (sigma = {size}, {count} channel(s)); got {tuple(init.shape)}"
            )
        return _polish_orthogonal(t, "the init matrix").expand(count, size, size).clone()
    if not isinstance(init, str):
        raise TypeError(f"init must be a string, a torch.Tensor or a numpy.ndarray, got {type(init).__name__}")
    if init in _SQUEEZE_ALIASES or init == "identity":
        base = torch.eye(size, dtype=torch.float64)
    elif init == "haar":
        base = _haar_matrix(stride) if stride is not None else dct_matrix(size)
        if base.shape[0] != size:
            raise ValueError(f"haar init for stride {tuple(stride)} has size {base.shape[0]}, expected {size}")
    elif init == "random":
        return _random_orthogonal(count, size)
    else:
        raise ValueError(
            f"unknown init {init!r}; choose 'haar', 'squeeze' (or 'pixel_shuffle'/'zeros'), "
            f"'random', 'identity' or pass an orthogonal matrix"
        )
    return base.expand(count, size, size).clone()


# Taylor coefficients 1/k! for the degree-18 approximant used by matrix_exp (below).
_EXP_DEGREE = 18
_EXP_COEFFS = [1.0 / math.factorial(k) for k in range(_EXP_DEGREE + 1)]


# The most squarings matrix_exp does off the CPU branch (1-norms up to 2^16; beyond, the
# polynomial is evaluated outside its accuracy range).
MAX_SQUARINGS = 16


def matrix_exp(a: torch.Tensor) -> torch.Tensor:
    """Matrix exponential by scaling and squaring of a degree-18 Taylor polynomial (batched).

    ``a`` is scaled by ``2^-s`` so that its 1-norm is <= 1 (truncation error <= 1/19! ~ 8e-18),
    the polynomial is evaluated with Paterson-Stockmeyer (7 matrix products) and squared ``s``
    times. Plain tensor algebra, so autograd gives the exact derivative of the approximant.
    On the CPU ``s`` is read on the host; elsewhere (no host sync) :data:`MAX_SQUARINGS`
    squarings run, each kept only while it is one of the ``s`` -- the same bits.

    Why not ``torch.linalg.matrix_exp``: in torch 2.14 its degree-8 branch (1-norms of about
    3e-4 .. 5e-2, i.e. just after initialisation at zero) has a wrong coefficient and is
    accurate to only ~1e-10 in float64 (pytorch/pytorch#196592), which would cap the
    invertibility of ``method="exp"`` layers far above float64 precision.
    """
    n = a.shape[-1]
    if a.numel() == 0:
        return a.clone()
    norm = torch.linalg.matrix_norm(a.detach(), ord=1).amax()
    if takes_cpu_branch(a):
        norm = norm.item()
        squarings = max(0, math.ceil(math.log2(norm))) if norm > 1.0 else 0
        x = a / (2.0**squarings) if squarings else a
    else:
        squarings = torch.where(norm > 1.0, norm.log2().ceil(), torch.zeros_like(norm)).clamp(0, MAX_SQUARINGS)
        x = a / torch.exp2(squarings).to(a.dtype)  # a power of two: exact, as on the CPU branch
    eye = torch.eye(n, dtype=a.dtype, device=a.device).expand_as(a)
    powers = [eye, x, x @ x]
    powers.append(powers[2] @ x)
    x4 = powers[2] @ powers[2]
    c = _EXP_COEFFS
    # T(x) = sum_j x4^j B_j with B_j = sum_{i<4} c[4j+i] x^i (blocks for degrees 0..18)
    def block(j: int) -> torch.Tensor:
        out = None
        for i in range(4):
            k = 4 * j + i
            if k > _EXP_DEGREE:
                break
            term = c[k] * powers[i]
            out = term if out is None else out + term
        return out

    n_blocks = _EXP_DEGREE // 4 + 1
    result = block(n_blocks - 1)
    for j in range(n_blocks - 2, -1, -1):
        result = block(j) + x4 @ result
    if isinstance(squarings, int):
        for _ in range(squarings):
            result = result @ result
    else:
        for i in range(MAX_SQUARINGS):
            result = torch.where(squarings > i, result @ result, result)
    return result


def _householder_product(v: torch.Tensor) -> torch.Tensor:
    """``H(v_1) ... H(v_n)`` for ``v`` of shape ``(count, n, size)`` (plain autograd)."""
    count, n, size = v.shape
    q = torch.eye(size, dtype=v.dtype, device=v.device).expand(count, size, size)
    tiny = torch.finfo(v.dtype).tiny
    for k in range(n):
        vk = v[:, k, :]
        scale = 2.0 / (vk * vk).sum(-1).clamp_min(tiny)
        q = q - (q @ vk.unsqueeze(-1)) * (scale[:, None, None] * vk.unsqueeze(-2))
    return q


class OrthogonalMatrices(nn.Module):
    """``count`` orthogonal ``size x size`` matrices ``A(theta) = Q(theta) @ B`` (see module doc).

    ``learnable=False`` stores ``A_0`` only (no parameters). Call the module (or
    :meth:`matrix`) to get the ``(count, size, size)`` stack in the weight dtype.
    """

    def __init__(
        self,
        count: int,
        size: int,
        method: str = "cayley",
        init: InitSpec = "identity",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
        stride: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
        if count < 1 or size < 1:
            raise ValueError(f"need count >= 1 and size >= 1, got count={count}, size={size}")
        self.count, self.size, self.method, self.learnable = count, size, method, learnable
        dtype = torch.get_default_dtype()
        a0 = orthogonal_init_matrix(init, count, size, stride)
        self.register_buffer("init_matrix", a0)
        self.n_reflections = None
        if not learnable:
            self.weight = None
            self.register_buffer("base", a0.clone())
        elif method in ("exp", "cayley"):
            self.weight = nn.Parameter(torch.zeros(count, size, size, dtype=dtype))
            self.register_buffer("base", a0.clone())
        else:
            n = size if n_reflections is None else int(n_reflections)
            if n < 1:
                raise ValueError(f"n_reflections must be >= 1, got {n_reflections}")
            self.n_reflections = n
            v = torch.randn(count, n, size, dtype=torch.float64).to(dtype)
            self.weight = nn.Parameter(v)
            q0 = _householder_product(v.to(torch.float64))
            self.register_buffer("base", q0.transpose(-1, -2) @ a0)

    # float64 buffers keep full precision through .float()/.half()/.to(dtype): a float32-rounded
    # Haar matrix is not orthogonal to 1e-12 once the module is moved to float64.
    _FULL_PRECISION = ("init_matrix", "base")

    def _apply(self, fn, recurse=True):
        keep = {name: self._buffers[name] for name in self._FULL_PRECISION if name in self._buffers}
        out = super()._apply(fn, recurse)
        for name, ref in keep.items():
            moved = self._buffers[name]
            if moved is not None and moved.dtype != torch.float64 and ref.dtype == torch.float64:
                try:
                    self._buffers[name] = ref.to(device=moved.device)
                except (TypeError, RuntimeError):  # device without float64 (e.g. mps)
                    pass
        return out

    def rotation(self) -> torch.Tensor:
        """``Q(theta)`` (identity at initialisation for exp/cayley).

        Computed in float64 whatever the weight dtype (where the device has float64): the
        matrices are tiny, and a float32 matrix exponential of a large skew-symmetric matrix is
        orthogonal only to ~1e-5, which would cap the layer's invertibility.
        """
        w = self.weight
        if w is None:
            return torch.eye(self.size, dtype=self.base.dtype, device=self.base.device).expand(
                self.count, self.size, self.size
            )
        if w.dtype != torch.float64 and w.device.type != "mps":
            w = w.to(torch.float64)
        if self.method == "householder":
            return _householder_product(w)
        s = w - w.transpose(-1, -2)
        if self.method == "exp":
            return matrix_exp(s)
        eye = torch.eye(self.size, dtype=w.dtype, device=w.device)
        # I - S is invertible for skew S (its eigenvalues are 1 - i lambda): no check, no host sync
        return torch.linalg.solve_ex(eye - s, eye + s)[0]

    def matrix(self, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """The orthogonal matrices ``(count, size, size)``, cast to ``dtype`` if given."""
        if self.weight is None:
            a = self.base
        else:
            q = self.rotation()  # float64 where available; cast once, at the end
            a = q @ self.base.to(q.dtype)
            dtype = dtype or self.weight.dtype
        return a if dtype is None or a.dtype == dtype else a.to(dtype)

    def forward(self) -> torch.Tensor:
        return self.matrix()

    def extra_repr(self) -> str:
        extra = f", n_reflections={self.n_reflections}" if self.n_reflections else ""
        return f"count={self.count}, size={self.size}, method={self.method!r}, learnable={self.learnable}{extra}"


# --------------------------------------------------------------------------------------------
# Block kernels: Theorem 4's strided convolution computed as what it is -- a permutation of the
# pixels (pixel_unshuffle) and one sigma x sigma matrix product per channel
# --------------------------------------------------------------------------------------------

# On the CPU the kernels walk through a tensor in pieces of about this many elements: the permuted
# copy of a piece stays in cache and its memory is reused, instead of a fresh page-faulted tensor
# the size of the input (which costs more than the arithmetic). Accelerators take it in one piece,
# or, when working in place, in pieces of the larger size (to bound the temporary memory).
_PIECE_ELEMENTS = 1 << 18
_DEVICE_PIECE_ELEMENTS = 1 << 24


def _piece_limit(device: torch.device, in_place: bool) -> Optional[int]:
    return _PIECE_ELEMENTS if device.type == "cpu" else _DEVICE_PIECE_ELEMENTS if in_place else None


def piece_slices(length: int, elements_per_index: int, device: torch.device, in_place: bool = False):
    """Slices of ``range(length)`` covering about :data:`_PIECE_ELEMENTS` elements each on the CPU
    (``elements_per_index`` per index); elsewhere one slice (``_DEVICE_PIECE_ELEMENTS`` in place)."""
    limit = _piece_limit(device, in_place)
    step = max(1, length) if limit is None else max(1, limit // max(1, elements_per_index))
    for start in range(0, length, step):
        yield slice(start, start + step)


def samples_contiguous(t: torch.Tensor) -> bool:
    """Whether every sample ``t[b]`` is one contiguous range of memory (e.g. a channel slice of a
    contiguous tensor): the layout in which resampling can work in place."""
    expected = 1
    for size, step in reversed(list(zip(t.shape[1:], t.stride()[1:]))):
        if size != 1 and step != expected:
            return False
        expected *= size
    return True


def reinterpret(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The memory of ``t`` (see :func:`samples_contiguous`) seen with another shape that has as
    many elements per sample: each sample keeps its range of memory."""
    if not samples_contiguous(t) or shape[0] != t.shape[0] or math.prod(shape[1:]) != math.prod(t.shape[1:]):
        raise ValueError(
            f"cannot view a tensor of shape {tuple(t.shape)}, strides {t.stride()} as {tuple(shape)}"
        )
    strides, step = [], 1
    for size in reversed(shape[1:]):
        strides.append(step)
        step *= size
    return t.as_strided(tuple(shape), (t.stride(0), *reversed(strides)), t.storage_offset())


class _Blocks:
    """Geometry of one resampling between fine ``(B, C, n_1 s_1, .., n_d s_d)`` and coarse
    ``(B, C sigma, n_1, .., n_d)`` tensors, and the permutation between pixels and blocks.

    In both layouts sample ``b``, channel ``c`` occupies the same ``sigma N`` consecutive elements
    of a contiguous tensor, so a resampling can overwrite its input piece by piece."""

    def __init__(self, batch: int, channels: int, n: Sequence[int], stride: Sequence[int]) -> None:
        self.batch, self.channels, self.n, self.stride = batch, channels, tuple(n), tuple(stride)
        self.sigma, self.count = math.prod(self.stride), math.prod(self.n)
        self.fine_shape = (batch, channels, *(n * s for n, s in zip(self.n, self.stride)))
        self.coarse_shape = (batch, channels * self.sigma, *self.n)

    @classmethod
    def of_fine(cls, x: torch.Tensor, stride: Sequence[int]) -> "_Blocks":
        return cls(x.shape[0], x.shape[1], [size // s for size, s in zip(x.shape[2:], stride)], stride)

    @classmethod
    def of_coarse(cls, y: torch.Tensor, stride: Sequence[int]) -> "_Blocks":
        return cls(y.shape[0], y.shape[1] // math.prod(stride), y.shape[2:], stride)

    def columns(self, coarse: torch.Tensor) -> torch.Tensor:
        """A coarse tensor as ``(B, C, sigma, N)``: the coefficients of every block."""
        return coarse.reshape(coarse.shape[0], -1, self.sigma, self.count)

    def blocks(self, fine: torch.Tensor) -> torch.Tensor:
        """A fine tensor as ``(B, C, s_1, .., s_d, n_1, .., n_d)``: entry ``(b, c, k, n)`` is pixel
        ``s n + k`` of channel ``c`` (a view when every spatial row is contiguous)."""
        d = len(self.stride)
        shape = list(fine.shape[:2])
        for n, s in zip(self.n, self.stride):
            shape += [n, s]
        order = (0, 1, *(3 + 2 * i for i in range(d)), *(2 + 2 * i for i in range(d)))
        return fine.reshape(shape).permute(order)

    def pieces(self, device: torch.device, in_place: bool = False, whole_batch: bool = True):
        """``(batch slice, fine channel slice, coarse channel slice)`` pieces (see
        :data:`_PIECE_ELEMENTS`): several whole samples (only if ``whole_batch``: every written
        tensor is contiguous), or a channel range of one sample -- each piece one range of memory,
        the same in the fine and in the coarse layout."""
        everything = slice(None)
        per_channel = self.sigma * self.count
        per_sample = self.channels * per_channel
        limit = _piece_limit(device, in_place) or self.batch * per_sample
        if whole_batch and self.batch * per_sample <= limit:
            yield everything, everything, everything
        elif whole_batch and per_sample <= limit:
            step = limit // per_sample
            for b in range(0, self.batch, step):
                yield slice(b, b + step), everything, everything
        else:
            step = max(1, limit // per_channel)
            for b in range(self.batch):
                for c in range(0, self.channels, step):
                    yield slice(b, b + 1), slice(c, c + step), slice(c * self.sigma, (c + step) * self.sigma)

    def read_columns(self, coarse: torch.Tensor) -> torch.Tensor:
        """A coarse piece as ``(b c, sigma, N)`` (a view when possible)."""
        return self.columns(coarse).reshape(-1, self.sigma, self.count)

    def target_columns(self, coarse: torch.Tensor) -> torch.Tensor:
        """A coarse piece as a writable ``(b c, sigma, N)`` view."""
        return self.columns(coarse).view(-1, self.sigma, self.count)

    def read_blocks(self, fine: torch.Tensor, copy: bool = False) -> torch.Tensor:
        """The blocks of a fine piece as a ``(b c, sigma, N)`` tensor (the permutation; a view
        only for strides that permute nothing, unless ``copy``: then never shares memory)."""
        blocks = self.blocks(fine)
        if not copy:
            return blocks.reshape(-1, self.sigma, self.count)
        rows = blocks.shape[0] * blocks.shape[1]
        out = torch.empty((rows, self.sigma, self.count), dtype=fine.dtype, device=fine.device)
        out.view(blocks.shape).copy_(blocks)
        return out

    def write_blocks(self, columns: torch.Tensor, fine: torch.Tensor) -> None:
        """Write ``(b c, sigma, N)`` block columns into the pixels of the fine piece ``fine``."""
        self.blocks(fine).copy_(columns.view(*fine.shape[:2], *self.stride, *self.n))


def _repeat(a: torch.Tensor, rows: int) -> torch.Tensor:
    """The ``(c, m, k)`` matrices of a piece for each of its ``rows // c`` samples: ``(rows, m, k)``."""
    return a.unsqueeze(0).expand(rows // a.shape[0], *a.shape).reshape(rows, *a.shape[1:])


def _gram_into(gram: torch.Tensor, cs: slice, left: torch.Tensor, right: torch.Tensor) -> None:
    """``gram[c] += sum over the piece's samples and blocks of left[., :, n] right[., :, n]^T``."""
    products = torch.bmm(left, right.transpose(1, 2))
    gram[cs] += products.view(-1, *gram[cs].shape).sum(0)


def _whole_batch(*written: torch.Tensor) -> bool:
    return all(t.is_contiguous() for t in written)


def block_down(fine, a, stride, gram_with=None, out=None):
    """``coarse[b, c sigma + i, n] = sum_k a[c, i, k] fine[b, c, s n + k]`` (Theorem 4), no autograd.

    With ``gram_with`` (coarse-shaped, ``w``) also ``sum_{b,n} w[b, c, :, n] u[b, c, :, n]^T`` per
    channel, ``u`` the blocks of ``fine``: the matrix gradient of an upsampling of ``w``.
    ``out``: where to write the result; it may be ``reinterpret(fine, ...)`` (in place).
    """
    geo = _Blocks.of_fine(fine, stride)
    coarse = fine.new_empty(geo.coarse_shape) if out is None else out
    gram = None if gram_with is None else a.new_zeros(a.shape)
    for bs, cs, ccs in geo.pieces(fine.device, out is not None, _whole_batch(coarse)):
        u = geo.read_blocks(fine[bs, cs], copy=out is not None)  # (the target may be this memory)
        torch.bmm(_repeat(a[cs], u.shape[0]), u, out=geo.target_columns(coarse[bs, ccs]))
        if gram is not None:
            _gram_into(gram, cs, geo.read_columns(gram_with[bs, ccs]), u)
    return coarse, gram


def block_up(coarse, a, stride, gram_with=None, out=None):
    """The adjoint (= inverse) of :func:`block_down`, no autograd: ``fine[b, c, s n + k] =
    sum_i a[c, i, k] coarse[b, c sigma + i, n]``. With ``gram_with`` (coarse-shaped, ``y``) also
    ``sum_{b,n} coarse[b, c, :, n] y[b, c, :, n]^T`` per channel: times ``a`` it is the matrix
    gradient of ``y = block_down(x, a)`` for the output gradient ``coarse`` (as ``x``'s blocks
    are ``a^T y``), computed without touching ``x``. ``out`` as in :func:`block_down`."""
    geo = _Blocks.of_coarse(coarse, stride)
    fine = coarse.new_empty(geo.fine_shape) if out is None else out
    at = a.transpose(1, 2)
    gram = None if gram_with is None else a.new_zeros(a.shape)
    for bs, cs, ccs in geo.pieces(coarse.device, out is not None, _whole_batch(fine)):
        columns = geo.read_columns(coarse[bs, ccs])
        if gram is not None:
            _gram_into(gram, cs, columns, geo.read_columns(gram_with[bs, ccs]))
        geo.write_blocks(torch.bmm(_repeat(at[cs], columns.shape[0]), columns), fine[bs, cs])
    return fine, gram


def invert_block_down(y, grad_y, a, stride, gram=True, out=None):
    """For ``y = block_down(x, a)``: ``(x, grad_x, grad_a)`` from ``y`` and its gradient, in one pass
    (``grad_a`` is ``None`` unless ``gram``). ``out``: a pair of fine-shaped tensors to write ``x``
    and ``grad_x`` into; they may reinterpret ``y`` and ``grad_y`` (in place)."""
    geo = _Blocks.of_coarse(y, stride)
    x, grad_x = (y.new_empty(geo.fine_shape), y.new_empty(geo.fine_shape)) if out is None else out
    at = a.transpose(1, 2)
    grad_a = a.new_zeros(a.shape) if gram else None
    for bs, cs, ccs in geo.pieces(y.device, out is not None, _whole_batch(x, grad_x)):
        columns, grads = geo.read_columns(y[bs, ccs]), geo.read_columns(grad_y[bs, ccs])
        m = _repeat(at[cs], columns.shape[0])
        u = torch.bmm(m, columns)  # the blocks of x
        if gram:
            _gram_into(grad_a, cs, grads, u)
        grads = torch.bmm(m, grads)
        geo.write_blocks(u, x[bs, cs])  # (the piece has been read in full above)
        geo.write_blocks(grads, grad_x[bs, cs])
    return x, grad_x, grad_a


def invert_block_up(x, grad_x, a, stride, gram=True, out=None):
    """For ``x = block_up(w, a)``: ``(w, grad_w, grad_a)`` from ``x`` and its gradient, in one pass
    (``grad_a`` is ``None`` unless ``gram``; ``out`` as in :func:`invert_block_down`, coarse-shaped)."""
    geo = _Blocks.of_fine(x, stride)
    w, grad_w = (x.new_empty(geo.coarse_shape), x.new_empty(geo.coarse_shape)) if out is None else out
    grad_a = a.new_zeros(a.shape) if gram else None
    for bs, cs, ccs in geo.pieces(x.device, out is not None, _whole_batch(w, grad_w)):
        in_place = out is not None  # (then the targets may be this memory)
        u, g = geo.read_blocks(x[bs, cs], copy=in_place), geo.read_blocks(grad_x[bs, cs], copy=in_place)
        m = _repeat(a[cs], u.shape[0])
        columns = geo.target_columns(w[bs, ccs])
        torch.bmm(m, u, out=columns)
        torch.bmm(m, g, out=geo.target_columns(grad_w[bs, ccs]))
        if gram:
            _gram_into(grad_a, cs, columns, g)
    return w, grad_w, grad_a


def _gram(coarse, fine, stride):
    """``sum_{b, n} coarse[b, c, :, n] u[b, c, :, n]^T`` (``u``: the blocks of ``fine``) in
    differentiable tensor algebra, for double backward."""
    geo = _Blocks.of_fine(fine, stride)
    u = geo.blocks(fine).reshape(geo.batch, geo.channels, geo.sigma, geo.count)
    return (geo.columns(coarse) @ u.transpose(-1, -2)).sum(0)


def _coarse_gram(left, right, stride):
    """``sum_{b, n} left[b, c, :, n] right[b, c, :, n]^T`` of two coarse tensors, differentiably."""
    geo = _Blocks.of_coarse(left, stride)
    return (geo.columns(left) @ geo.columns(right).transpose(-1, -2)).sum(0)


class _BlockDown(torch.autograd.Function):
    """:func:`block_down` with autograd: the input gradient is :func:`block_up` of the output
    gradient, the matrix gradient its gram with the input."""

    @staticmethod
    def forward(ctx, fine, a, stride):
        ctx.stride = stride
        coarse = block_down(fine, a, stride)[0]
        # the output, not the input: the matrix gradient needs x's blocks, which are a^T y, and
        # y is kept by whatever consumes it (the input may be a temporary, e.g. a rolled copy)
        ctx.save_for_backward(coarse, a)
        return coarse

    @staticmethod
    def backward(ctx, grad):
        coarse, a = ctx.saved_tensors
        need_fine, need_a = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph: the same formulas, differentiably
            grad_fine = _BlockUp.apply(grad, a, ctx.stride) if need_fine else None
            return grad_fine, (_coarse_gram(grad, coarse, ctx.stride) @ a if need_a else None), None
        grad_fine, gram = block_up(grad, a, ctx.stride, gram_with=coarse if need_a else None)
        return (grad_fine if need_fine else None), (None if gram is None else gram @ a), None


class _BlockUp(torch.autograd.Function):
    """:func:`block_up` with autograd (the mirror image of :class:`_BlockDown`)."""

    @staticmethod
    def forward(ctx, coarse, a, stride):
        ctx.stride = stride
        ctx.save_for_backward(coarse, a)
        return block_up(coarse, a, stride)[0]

    @staticmethod
    def backward(ctx, grad):
        coarse, a = ctx.saved_tensors
        need_coarse, need_a = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():
            grad_coarse = _BlockDown.apply(grad, a, ctx.stride) if need_coarse else None
            return grad_coarse, (_gram(coarse, grad, ctx.stride) if need_a else None), None
        grad_coarse, grad_a = block_down(grad, a, ctx.stride, gram_with=coarse if need_a else None)
        return (grad_coarse if need_coarse else None), grad_a, None


# --------------------------------------------------------------------------------------------
# The layers users know: InvertibleDownsampling{1,2,3}D / InvertibleUpsampling{1,2,3}D
# --------------------------------------------------------------------------------------------


class _OrthogonalResampling(nn.Module):
    """Shared machinery: ``low_channels`` orthogonal matrices acting on the blocks of the fine side."""

    dim: int = 0
    backward_in_place = True  # backward_by_inversion(..., in_place=True) is supported

    def __init__(
        self,
        low_channels: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.stride = as_tuple(stride, self.dim, "stride")
        self.channel_multiplier = int(np.prod(self.stride))
        self.low_channels = int(low_channels)
        if self.low_channels < 1:
            raise ValueError(f"channels must be >= 1, got {low_channels}")
        self.high_channels = self.low_channels * self.channel_multiplier
        self.method = method
        self.learnable = learnable
        self.orthogonal = OrthogonalMatrices(
            self.low_channels,
            self.channel_multiplier,
            method=method,
            init=init,
            learnable=learnable,
            n_reflections=n_reflections,
            stride=self.stride,
        )

    @property
    def kernel_matrix(self) -> torch.Tensor:
        """The ``(C, sigma, sigma)`` orthogonal matrices."""
        return self.orthogonal.matrix()

    def _check(self, x: torch.Tensor, channels: int, role: str, check_size: bool) -> None:
        if x.dim() != self.dim + 2:
            raise ValueError(
                f"{type(self).__name__} expects a (batch, channels, {self.dim} spatial) tensor, "
                f"got shape {tuple(x.shape)}"
            )
        if x.shape[1] != channels:
            raise ValueError(
                f"{type(self).__name__} {role} needs {channels} channels, got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if check_size:
            bad = [n % s for n, s in zip(x.shape[2:], self.stride)]
            if any(bad):
                raise ValueError(
                    f"{type(self).__name__}: spatial size {tuple(x.shape[2:])} is not divisible by the "
                    f"stride {self.stride}; pad or crop to a multiple of it"
                )

    def _downsample(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check(x, self.low_channels, "input", True)
        if offset is not None:
            x = roll_per_sample(x, offset, self.stride, sign=-1)
        return _BlockDown.apply(x, self.orthogonal.matrix(x.dtype), self.stride)

    def _upsample(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check(y, self.high_channels, "input", False)
        x = _BlockUp.apply(y, self.orthogonal.matrix(y.dtype), self.stride)
        if offset is not None:
            x = roll_per_sample(x, offset, self.stride, sign=+1)
        return x

    # -- in place (no autograd; the memory-efficient backprop runs the iUNet in one buffer) -----
    # Each sample keeps its memory: the result is the input's memory seen with the output shape
    # (``reinterpret``), so the input must have contiguous samples (e.g. a channel slice).

    def _downsample_in_place(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check(x, self.low_channels, "input", True)
        source = x if offset is None else roll_per_sample(x, offset, self.stride, sign=-1)
        geo = _Blocks.of_fine(x, self.stride)
        return block_down(source, self.orthogonal.matrix(x.dtype).detach(), self.stride,
                          out=reinterpret(x, geo.coarse_shape))[0]

    def _upsample_in_place(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check(y, self.high_channels, "input", False)
        geo = _Blocks.of_coarse(y, self.stride)
        a = self.orthogonal.matrix(y.dtype).detach()
        x = block_up(y, a, self.stride, out=reinterpret(y, geo.fine_shape))[0]
        return x if offset is None else x.copy_(roll_per_sample(x, offset, self.stride, sign=+1))

    # -- backward by inversion (memory-efficient backprop, equinet.models.memory_efficient) ---
    # The layer is linear and orthogonal: its input is reconstructed by the inverse map, the
    # input gradient is the adjoint (= inverse) applied to the output gradient, and the matrix
    # gradient is a per-channel gram of the two, pulled back through the parametrisation by
    # autograd. One pass over the blocks does all three.

    def _matrices_for_backward(self, dtype, params):
        with torch.enable_grad():
            a = self.orthogonal.matrix(dtype)
        return a, a.detach()

    def _pull_back(self, a, grad_a, params):
        if not params:
            return ()
        return torch.autograd.grad(a, list(params), grad_a, allow_unused=True)

    def _downsample_backward(self, y, grad_y, params, offset=None, in_place=False):
        """For ``y = down(x, offset)``: ``(x, grad_x, grad_params)`` without storing ``x``
        (``in_place``: in the memory of ``y`` and ``grad_y``, see :func:`reinterpret`)."""
        a, ad = self._matrices_for_backward(y.dtype, params)
        geo = _Blocks.of_coarse(y, self.stride)
        out = (reinterpret(y, geo.fine_shape), reinterpret(grad_y, geo.fine_shape)) if in_place else None
        z, grad_z, grad_a = invert_block_down(y, grad_y, ad, self.stride, bool(params), out)
        if offset is not None:
            z_rolled = roll_per_sample(z, offset, self.stride, sign=+1)
            g_rolled = roll_per_sample(grad_z, offset, self.stride, sign=+1)
            z, grad_z = (z.copy_(z_rolled), grad_z.copy_(g_rolled)) if in_place else (z_rolled, g_rolled)
        return z, grad_z, self._pull_back(a, grad_a, params)

    def _upsample_backward(self, y, grad_y, params, offset=None, in_place=False):
        """For ``y = up(w, offset)``: ``(w, grad_w, grad_params)`` without storing ``w``."""
        geo = _Blocks.of_fine(y, self.stride)
        out = (reinterpret(y, geo.coarse_shape), reinterpret(grad_y, geo.coarse_shape)) if in_place else None
        if offset is not None:  # (rolled copies: the in-place output no longer aliases the source)
            y, grad_y = roll_per_sample(y, offset, self.stride, sign=-1), roll_per_sample(grad_y, offset, self.stride, sign=-1)
        a, ad = self._matrices_for_backward(y.dtype, params)
        w, grad_w, grad_a = invert_block_up(y, grad_y, ad, self.stride, bool(params), out)
        return w, grad_w, self._pull_back(a, grad_a, params)

    def _partner(self, cls):
        """A module of the opposite direction sharing this module's parameters."""
        other = cls.__new__(cls)
        nn.Module.__init__(other)
        for name in ("stride", "channel_multiplier", "low_channels", "high_channels", "method", "learnable"):
            setattr(other, name, getattr(self, name))
        other.orthogonal = self.orthogonal
        other._set_channels()
        return other

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, stride={self.stride}, method={self.method!r}, "
            f"learnable={self.learnable}"
        )


class InvertibleDownsampling(_OrthogonalResampling):
    """Learnable orthogonal downsampling: ``(B, C, N) -> (B, C * sigma, N / stride)``.

    ``forward(x, offset=None)``; ``offset`` (``(B, d)`` long) selects the block grid per sample
    (adaptive resampling). ``inverse(y, offset=None)`` is the exact inverse (transposed conv);
    ``inverse()`` without a tensor returns the matching :class:`InvertibleUpsampling` that shares
    this module's parameters.
    """

    def __init__(
        self,
        in_channels: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
    ) -> None:
        super().__init__(in_channels, stride, method, init, learnable, n_reflections)
        self._set_channels()

    def _set_channels(self) -> None:
        self.in_channels, self.out_channels = self.low_channels, self.high_channels

    def forward(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._downsample(x, offset)

    def inverse(self, y: Optional[torch.Tensor] = None, offset: Optional[torch.Tensor] = None):
        if y is None:
            return self._partner(_UPSAMPLING[self.dim])
        return self._upsample(y, offset)

    def forward_in_place(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`forward` without autograd, in the memory of ``x``."""
        return self._downsample_in_place(x, offset)

    def inverse_in_place(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`inverse` without autograd, in the memory of ``y``."""
        return self._upsample_in_place(y, offset)

    def backward_by_inversion(self, y, grad_y, params, offset=None, in_place=False):
        return self._downsample_backward(y, grad_y, params, offset, in_place)


class InvertibleUpsampling(_OrthogonalResampling):
    """Learnable orthogonal upsampling: ``(B, C, N) -> (B, C / sigma, N * stride)``.

    ``in_channels`` (the coarse side) must be divisible by ``sigma``. The inverse of an
    :class:`InvertibleDownsampling` with the same matrices (Definition 3 of the paper).
    """

    def __init__(
        self,
        in_channels: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
    ) -> None:
        stride_t = as_tuple(stride, self.dim, "stride")
        sigma = int(np.prod(stride_t))
        if in_channels % sigma:
            raise ValueError(
                f"{type(self).__name__}: in_channels={in_channels} is not divisible by the channel "
                f"multiplier {sigma} of stride {stride_t}"
            )
        super().__init__(in_channels // sigma, stride_t, method, init, learnable, n_reflections)
        self._set_channels()

    def _set_channels(self) -> None:
        self.in_channels, self.out_channels = self.high_channels, self.low_channels

    def forward(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self._upsample(y, offset)

    def inverse(self, x: Optional[torch.Tensor] = None, offset: Optional[torch.Tensor] = None):
        if x is None:
            return self._partner(_DOWNSAMPLING[self.dim])
        return self._downsample(x, offset)

    def forward_in_place(self, y: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`forward` without autograd, in the memory of ``y``."""
        return self._upsample_in_place(y, offset)

    def inverse_in_place(self, x: torch.Tensor, offset: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`inverse` without autograd, in the memory of ``x``."""
        return self._downsample_in_place(x, offset)

    def backward_by_inversion(self, y, grad_y, params, offset=None, in_place=False):
        return self._upsample_backward(y, grad_y, params, offset, in_place)


class InvertibleDownsampling1D(InvertibleDownsampling):
    dim = 1


class InvertibleDownsampling2D(InvertibleDownsampling):
    dim = 2


class InvertibleDownsampling3D(InvertibleDownsampling):
    dim = 3


class InvertibleUpsampling1D(InvertibleUpsampling):
    dim = 1


class InvertibleUpsampling2D(InvertibleUpsampling):
    dim = 2


class InvertibleUpsampling3D(InvertibleUpsampling):
    dim = 3


_DOWNSAMPLING = {1: InvertibleDownsampling1D, 2: InvertibleDownsampling2D, 3: InvertibleDownsampling3D}
_UPSAMPLING = {1: InvertibleUpsampling1D, 2: InvertibleUpsampling2D, 3: InvertibleUpsampling3D}


def invertible_downsampling(dim: int, *args, **kwargs) -> InvertibleDownsampling:
    """``InvertibleDownsampling{dim}D(*args, **kwargs)``."""
    if dim not in _DOWNSAMPLING:
        raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
    return _DOWNSAMPLING[dim](*args, **kwargs)


def invertible_upsampling(dim: int, *args, **kwargs) -> InvertibleUpsampling:
    """``InvertibleUpsampling{dim}D(*args, **kwargs)``."""
    if dim not in _UPSAMPLING:
        raise ValueError(f"dim must be 1, 2 or 3, got {dim}")
    return _UPSAMPLING[dim](*args, **kwargs)


# --------------------------------------------------------------------------------------------
# The `orthogonal` sampling strategy for the U-Net
# --------------------------------------------------------------------------------------------


class OrthogonalDownsample(Downsample):
    """Encoder half: orthogonal downsampling, optionally with an adaptive block-grid offset.

    ``forward(x) -> (y, state)``; ``state`` is ``None`` unless ``adaptive``, then the per-sample
    APS-D choice :func:`max_norm_choice` ``(x, stride, p)``: a :class:`PhaseChoice` whose ``index``
    is the block-grid offset (and whose ``frame`` lists symmetric samples, see the upsampler).
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
        adaptive: bool = False,
        p: float = 2.0,
    ) -> None:
        super().__init__()
        self.layer = invertible_downsampling(dim, channels, stride, method, init, learnable, n_reflections)
        self.stride = self.layer.stride
        self.out_channels = self.layer.out_channels
        self.adaptive = bool(adaptive)
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.adaptive:
            return self.layer(x, None), None
        choice = max_norm_choice(x, self.stride, self.p)
        return self.layer(x, choice.index), choice

    def extra_repr(self) -> str:
        return f"adaptive={self.adaptive}, p={self.p}"


class OrthogonalUpsample(Upsample):
    """Decoder half: ``(B, up_channels, n) -> (B, channels, n * stride)``.

    When ``up_channels == channels * sigma`` it is the pure orthogonal upsampling (initialised
    with the downsampler's matrices, so ``up(down(x)) == x`` at initialisation and always with
    ``learnable=False``). Otherwise a learnable 1x1 convolution first maps ``up_channels`` to
    ``channels * sigma`` (like a transposed convolution, every strategy's upsampler returns the
    skip connection's channel count). With an adaptive state (the downsampler's
    :class:`PhaseChoice`, or a bare ``(B, d)`` offset) the result is shifted back by the offset,
    and averaged over the symmetry shifts of the samples its ``frame`` lists.
    """

    def __init__(
        self,
        up_channels: int,
        channels: int,
        dim: int,
        stride: Union[int, Sequence[int]] = 2,
        method: str = "cayley",
        init: InitSpec = "haar",
        learnable: bool = True,
        n_reflections: Optional[int] = None,
        adaptive: bool = False,
    ) -> None:
        super().__init__()
        stride_t = as_tuple(stride, dim, "stride")
        high = channels * int(np.prod(stride_t))
        self.project = None
        if up_channels != high:
            conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dim - 1]
            self.project = conv(up_channels, high, kernel_size=1)
        self.layer = invertible_upsampling(dim, high, stride_t, method, init, learnable, n_reflections)
        self.stride = stride_t
        self.in_channels = up_channels
        self.out_channels = channels
        self.adaptive = bool(adaptive)

    def forward(self, x: torch.Tensor, state: Any = None) -> torch.Tensor:
        if self.adaptive and state is None:
            raise ValueError(
                "adaptive orthogonal upsampling needs the offset its downsampler returned as state"
            )
        if self.project is not None:
            x = self.project(x)
        if not self.adaptive:
            return self.layer(x, None)
        if isinstance(state, torch.Tensor):
            state = PhaseChoice(state)
        return average_over_symmetries(self.layer(x, state.index), state.frame)


@register_strategy("orthogonal")
def orthogonal_strategy(
    channels: int,
    up_channels: int,
    *,
    dim: int,
    padding_mode: str,
    method: str = "cayley",
    init: InitSpec = "haar",
    stride: Union[int, Sequence[int]] = 2,
    learnable: bool = True,
    adaptive: bool = False,
    p: float = 2.0,
    n_reflections: Optional[int] = None,
) -> Tuple[OrthogonalDownsample, OrthogonalUpsample]:
    """Learnable orthogonal (invertible) resampling (iUNet); adaptive=True: shift-equivariant grid choice.

    Channels: the downsampler multiplies them by sigma = prod(stride); the upsampler returns
    ``channels`` (with a 1x1 projection first when ``up_channels != channels * sigma``).
    ``padding_mode`` is unused (no padding: sizes must be divisible by ``stride``).
    """
    down = OrthogonalDownsample(channels, dim, stride, method, init, learnable, n_reflections, adaptive, p)
    up_init = down.layer.orthogonal.init_matrix  # same A_0 (also for init="random")
    up = OrthogonalUpsample(up_channels, channels, dim, stride, method, up_init, learnable, n_reflections, adaptive)
    return down, up
