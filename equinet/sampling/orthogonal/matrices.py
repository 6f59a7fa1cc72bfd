"""Orthogonal matrices: the exp / Cayley / Householder parametrisations, ``matrix_exp`` and the inits
(Haar/DCT, squeeze, random, user-given); see :mod:`equinet.sampling.orthogonal`."""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from equinet.sync_counter import takes_cpu_branch

METHODS = ("exp", "cayley", "householder")
_SQUEEZE_ALIASES = ("squeeze", "pixel_shuffle", "zeros")
InitSpec = Union[str, torch.Tensor, np.ndarray]


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
