"""Learnable orthogonal resampling (iUNet paper Thm. 4, Cor. 5-6) and the `orthogonal` strategy.

All methods x inits x 1D/2D/3D x isotropic/anisotropic strides
preserve the norm and invert to 1e-6 (float32) / 1e-12 (float64); gradcheck passes for every
method at small, unit and large parameter scales.
"""

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from equinet.sampling import create_strategy, list_strategies, strategy_info
from equinet.sampling.orthogonal import (
    METHODS,
    InvertibleDownsampling1D,
    InvertibleDownsampling2D,
    InvertibleDownsampling3D,
    InvertibleUpsampling1D,
    InvertibleUpsampling2D,
    InvertibleUpsampling3D,
    OrthogonalMatrices,
    dct_matrix,
    invertible_downsampling,
    invertible_upsampling,
)
from equinet.sampling.polyphase import max_norm_phase




DOWN = {1: InvertibleDownsampling1D, 2: InvertibleDownsampling2D, 3: InvertibleDownsampling3D}
UP = {1: InvertibleUpsampling1D, 2: InvertibleUpsampling2D, 3: InvertibleUpsampling3D}
STRIDES = {  # isotropic and anisotropic per dimension
    1: [(2,), (3,)],
    2: [(2, 2), (3, 1)],
    3: [(2, 2, 2), (2, 1, 3)],
}
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _tensor_init(sigma):
    """A user-given orthogonal matrix with det = -1 (not reachable by exp/cayley from I)."""
    g = torch.Generator().manual_seed(sigma)
    q, _ = torch.linalg.qr(torch.randn(sigma, sigma, dtype=torch.float64, generator=g))
    if torch.linalg.det(q) > 0:
        q[0] = -q[0]
    return q


def _perturb(layer, scale=0.5, seed=0):
    """Move the parameters away from the initialisation, so Q(theta) != I is tested."""
    g = torch.Generator().manual_seed(seed)
    w = layer.orthogonal.weight
    if w is not None:
        with torch.no_grad():
            w.add_(torch.randn(w.shape, generator=g, dtype=w.dtype) * scale)
    return layer


def _reference_down(x, matrices, stride):
    """Theorem 4 in float64 by explicit block reshaping: y[c*sigma+i, n] = sum_k A_c[i, k] x[c, s*n+k]."""
    b, c = x.shape[:2]
    d = len(stride)
    shape = [b, c]
    for n, s in zip(x.shape[2:], stride):
        shape += [n // s, s]
    v = x.double().reshape(shape)
    perm = [0, 1] + [2 + 2 * i for i in range(d)] + [3 + 2 * i for i in range(d)]
    v = v.permute(perm).reshape(b, c, *[n // s for n, s in zip(x.shape[2:], stride)], -1)
    y = torch.einsum("bc...k,cik->bci...", v, matrices.double())
    return y.reshape(b, c * matrices.shape[-1], *y.shape[3:])


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------------------------------------
# The full grid: method x init x dim x stride kind x dtype
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("init", ["haar", "squeeze", "random", "tensor"])
@pytest.mark.parametrize("method", METHODS)
def test_norm_preserved_and_inverse_exact_grid(method, init, dim, dtype):
    torch.manual_seed(1)
    for stride in STRIDES[dim]:
        sigma = math.prod(stride)
        spec = _tensor_init(sigma) if init == "tensor" else init
        down = _perturb(DOWN[dim](3, stride=stride, method=method, init=spec)).to(dtype)
        x = torch.randn(2, 3, *[2 * s for s in stride], dtype=dtype)
        y = down(x)
        assert y.shape == (2, 3 * sigma, *([2] * dim))
        assert abs(y.norm().item() / x.norm().item() - 1) <= TOL[dtype], (method, init, stride)
        assert _rel(down.inverse(y), x) <= TOL[dtype], (method, init, stride)
        # the conv realises Theorem 4's reordering of the (orthogonal) matrices
        assert _rel(y, _reference_down(x, down.kernel_matrix, stride)) <= TOL[dtype]
        a = down.kernel_matrix.double()
        eye = torch.eye(sigma, dtype=torch.float64)
        assert (a @ a.transpose(-1, -2) - eye).abs().max() <= 10 * TOL[dtype]
        # upsampling layers are the inverse direction
        up = _perturb(UP[dim](3 * sigma, stride=stride, method=method, init=spec), seed=3).to(dtype)
        z = torch.randn(2, 3 * sigma, *([2] * dim), dtype=dtype)
        u = up(z)
        assert u.shape == (2, 3, *[2 * s for s in stride])
        assert abs(u.norm().item() / z.norm().item() - 1) <= TOL[dtype]
        assert _rel(up.inverse(u), z) <= TOL[dtype]


@settings(max_examples=25)
@given(
    dim=st.integers(1, 3),
    data=st.data(),
    method=st.sampled_from(METHODS),
    init=st.sampled_from(["haar", "squeeze", "random"]),
    double=st.booleans(),
    channels=st.integers(1, 3),
    batch=st.integers(1, 3),
    scale=st.sampled_from([0.0, 0.3, 3.0]),
)
def test_orthogonality_property(dim, data, method, init, double, channels, batch, scale):
    """Random shapes/strides/dtypes/parameters: norm, inverse and the float64 reference."""
    dtype = torch.float64 if double else torch.float32
    stride = tuple(data.draw(st.lists(st.integers(1, 3), min_size=dim, max_size=dim)))
    blocks = data.draw(st.lists(st.integers(1, 3), min_size=dim, max_size=dim))
    down = _perturb(DOWN[dim](channels, stride=stride, method=method, init=init), scale=scale).to(dtype)
    x = torch.randn(batch, channels, *[n * s for n, s in zip(blocks, stride)], dtype=dtype)
    y = down(x)
    assert abs(y.norm().item() / x.norm().item() - 1) <= TOL[dtype]
    assert _rel(down.inverse(y), x) <= TOL[dtype]
    assert _rel(y, _reference_down(x, down.kernel_matrix, stride)) <= TOL[dtype]


# ---------------------------------------------------------------------------------------------
# Inits: Haar, squeeze (= pixel_unshuffle), random, tensor, det -1
# ---------------------------------------------------------------------------------------------


def test_haar_init_is_the_analytic_2d_haar_transform():
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    haar = torch.stack([a + b + c + d, a - b + c - d, a + b - c - d, a - b - c + d], dim=2) / 2
    haar = haar.reshape(2, 12, 4, 3)  # channel c*4 + filter
    for method in METHODS:
        down = InvertibleDownsampling2D(3, stride=2, method=method, init="haar").double()
        torch.testing.assert_close(down(x), haar, rtol=0, atol=1e-14)


def test_haar_init_1d_and_3d():
    x = torch.randn(1, 2, 6, dtype=torch.float64)
    ref = torch.stack([x[..., 0::2] + x[..., 1::2], x[..., 0::2] - x[..., 1::2]], 2).reshape(1, 4, 3) / math.sqrt(2)
    torch.testing.assert_close(InvertibleDownsampling1D(2, init="haar").double()(x), ref, rtol=0, atol=1e-14)
    x3 = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64)
    y = InvertibleDownsampling3D(1, init="haar").double()(x3)
    # filter 0 is the block sum / sqrt(8); filter 7 (detail along all axes) alternates signs
    blocks = x3.reshape(1, 1, 2, 2, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    signs = torch.tensor([1.0, -1.0], dtype=torch.float64)
    sign3 = signs[:, None, None] * signs[None, :, None] * signs[None, None, :]
    torch.testing.assert_close(y[:, 0], blocks.sum((-1, -2, -3))[:, 0] / math.sqrt(8), rtol=0, atol=1e-14)
    torch.testing.assert_close(y[:, 7], (blocks * sign3).sum((-1, -2, -3))[:, 0] / math.sqrt(8), rtol=0, atol=1e-14)


def test_haar_for_other_strides_is_the_separable_orthonormal_dct():
    assert torch.equal(dct_matrix(1), torch.ones(1, 1, dtype=torch.float64))
    d3 = dct_matrix(3)
    torch.testing.assert_close(d3 @ d3.T, torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-15)
    down = InvertibleDownsampling3D(1, stride=(2, 1, 3), init="haar", learnable=False).double()
    torch.testing.assert_close(down.kernel_matrix[0], torch.kron(dct_matrix(2), dct_matrix(3)), rtol=0, atol=1e-15)
    # filter 0 is the block mean times sqrt(sigma), as for Haar
    assert torch.allclose(down.kernel_matrix[0, 0], torch.full((6,), 1 / math.sqrt(6), dtype=torch.float64))


@pytest.mark.parametrize("stride", [2, 3])
def test_squeeze_init_is_pixel_unshuffle_exactly(stride):
    x = torch.randn(2, 3, 6 * stride, 4 * stride)
    expected = F.pixel_unshuffle(x, stride)
    for method in ("exp", "cayley"):
        for learnable in (True, False):
            down = InvertibleDownsampling2D(3, stride=stride, method=method, init="squeeze", learnable=learnable)
            assert torch.equal(down(x), expected), (method, learnable)
            assert torch.equal(down.inverse(expected), F.pixel_shuffle(expected, stride))
    # householder: exact up to the rounding of Q(theta_0) Q(theta_0)^T
    down = InvertibleDownsampling2D(3, stride=stride, method="householder", init="squeeze")
    torch.testing.assert_close(down(x), expected, rtol=0, atol=1e-6)
    for alias in ("pixel_shuffle", "zeros"):
        assert torch.equal(InvertibleDownsampling2D(3, stride=stride, init=alias)(x), expected)


def test_squeeze_init_anisotropic_3d_picks_block_pixels_in_row_major_order():
    x = torch.randn(1, 2, 4, 3, 6)
    y = InvertibleDownsampling3D(2, stride=(2, 1, 3), init="squeeze")(x)
    for c in range(2):
        for i, (k0, k2) in enumerate([(a, b) for a in range(2) for b in range(3)]):
            assert torch.equal(y[:, c * 6 + i], x[:, c, k0::2, :, k2::3])


def test_random_init_is_orthogonal_distinct_per_channel_and_reachable():
    for method in METHODS:
        down = InvertibleDownsampling2D(4, stride=2, method=method, init="random").double()
        a = down.kernel_matrix
        torch.testing.assert_close(a @ a.transpose(1, 2), torch.eye(4, dtype=torch.float64).expand(4, 4, 4))
        assert not torch.allclose(a[0], a[1])
        torch.testing.assert_close(a, down.orthogonal.init_matrix, rtol=0, atol=1e-14)


@pytest.mark.parametrize("method", METHODS)
def test_tensor_and_ndarray_init_with_det_minus_one_is_reproduced(method):
    q = _tensor_init(4)
    assert torch.linalg.det(q) < 0
    for spec, tol in ((q, 1e-14), (q.numpy(), 1e-14), (q.float(), 1e-6), (q.expand(3, 4, 4).clone(), 1e-14)):
        down = InvertibleDownsampling2D(3, stride=2, method=method, init=spec).double()
        a = down.kernel_matrix
        assert (a - q).abs().max() <= tol
        # a float32 init is polished to the nearest orthogonal matrix: orthogonal in float64
        assert (a @ a.transpose(1, 2) - torch.eye(4, dtype=torch.float64)).abs().max() <= 1e-14
    # exp/cayley keep a float64 init bit for bit
    if method != "householder":
        assert torch.equal(InvertibleDownsampling2D(3, 2, method, q).double().kernel_matrix, q.expand(3, 4, 4))


def test_bad_inits_and_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="must be orthogonal"):
        InvertibleDownsampling2D(2, init=torch.ones(4, 4))
    with pytest.raises(ValueError, match="shape"):
        InvertibleDownsampling2D(2, init=torch.eye(3))
    with pytest.raises(ValueError, match="unknown init"):
        InvertibleDownsampling2D(2, init="wavelet")
    with pytest.raises(ValueError, match="unknown method"):
        InvertibleDownsampling2D(2, method="givens")
    with pytest.raises(ValueError, match="stride"):
        InvertibleDownsampling3D(2, stride=(2, 2))
    with pytest.raises(ValueError, match="not divisible by the channel multiplier"):
        InvertibleUpsampling2D(6, stride=2)
    down = InvertibleDownsampling2D(2, stride=(2, 3))
    with pytest.raises(ValueError, match=r"\(8, 8\) is not divisible by the stride \(2, 3\)"):
        down(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="needs 2 channels, got 3"):
        down(torch.randn(1, 3, 8, 9))
    with pytest.raises(ValueError, match="spatial"):
        down(torch.randn(2, 8, 9))


def test_float64_precision_survives_dtype_round_trips():
    """A float32-built layer moved to float64 is orthogonal to float64 precision (buffers keep it)."""
    down = InvertibleDownsampling2D(2, stride=(3, 2), init="haar").float().double()
    assert down.orthogonal.base.dtype == torch.float64
    x = torch.randn(1, 2, 6, 4, dtype=torch.float64)
    assert _rel(down.inverse(down(x)), x) <= 1e-14
    assert down.float()(x.float()).dtype == torch.float32


def test_inverse_without_argument_returns_partner_sharing_parameters():
    down = _perturb(InvertibleDownsampling2D(2, stride=2, method="exp"))
    up = down.inverse()
    assert isinstance(up, InvertibleUpsampling2D) and up.in_channels == 8 and up.out_channels == 2
    assert up.orthogonal is down.orthogonal
    x = torch.randn(1, 2, 4, 4)
    assert _rel(up(down(x)), x) <= 1e-6
    assert isinstance(up.inverse(), InvertibleDownsampling2D)


def test_learning_changes_the_matrix_and_keeps_it_orthogonal():
    for method in METHODS:
        down = InvertibleDownsampling2D(1, stride=2, method=method, init="haar").double()
        opt = torch.optim.SGD(down.parameters(), lr=0.1)
        x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
        before = down.kernel_matrix.detach().clone()
        for _ in range(5):
            opt.zero_grad()
            down(x).abs().sum().backward()  # sparsity objective of the paper's Fig. 4
            opt.step()
        a = down.kernel_matrix.detach()
        assert (a - before).abs().max() > 1e-3, method
        torch.testing.assert_close(a[0] @ a[0].T, torch.eye(4, dtype=torch.float64), rtol=0, atol=1e-12)


def test_not_learnable_has_no_parameters():
    down = InvertibleDownsampling2D(2, learnable=False, init="random")
    assert list(down.parameters()) == []
    x = torch.randn(1, 2, 4, 4)
    assert _rel(down.inverse(down(x)), x) <= 1e-6


# ---------------------------------------------------------------------------------------------
# Gradients: gradcheck in float64, every method, parameter scales 1e-3, 1, 10
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 1.0, 10.0])
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_every_method_and_scale(method, scale):
    for dim, stride in ((2, (2, 2)), (3, (2, 1, 3)), (1, (3,))):
        torch.manual_seed(0)
        down = DOWN[dim](2, stride=stride, method=method, init="random").double()
        with torch.no_grad():
            down.orthogonal.weight.copy_(torch.randn_like(down.orthogonal.weight) * scale)
        x = torch.randn(1, 2, 2 * stride[0], *stride[1:], dtype=torch.float64, requires_grad=True)
        w = down.orthogonal.weight
        # householder is invariant to the scale of its vectors: finite differences relative to it
        eps = 1e-6 * min(scale, 1.0) if method == "householder" else 1e-6
        assert torch.autograd.gradcheck(lambda x_, w_: down(x_), (x, w), eps=eps, atol=1e-6)
        up = down.inverse()
        y = torch.randn(1, 2 * math.prod(stride), 2, *([1] * (dim - 1)), dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda y_, w_: up(y_), (y, w), eps=eps, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_matrix_gradcheck_including_householder_reflection_count(method):
    kw = {"n_reflections": 3} if method == "householder" else {}
    m = OrthogonalMatrices(2, 5, method=method, init="random", **kw).double()
    if method == "householder":
        assert m.weight.shape == (2, 3, 5)
    with torch.no_grad():
        m.weight.mul_(4.0)
    assert torch.autograd.gradcheck(lambda w: m.matrix(), (m.weight,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("adaptive", [False, True])
def test_backward_by_inversion_matches_autograd(method, adaptive):
    """The hand-derived reconstruct-and-backprop of the layers equals autograd (float64)."""
    torch.manual_seed(0)
    layers = (
        InvertibleDownsampling2D(2, (2, 3), method, "random"),
        InvertibleUpsampling2D(12, (2, 3), method, "random"),
    )
    for layer in layers:
        layer = _perturb(layer).double()
        is_down = isinstance(layer, InvertibleDownsampling2D)
        x = torch.randn(3, 2 if is_down else 12, 4 if is_down else 2, 6 if is_down else 2, dtype=torch.float64)
        offset = torch.stack([torch.tensor([0, 1, 1]), torch.tensor([2, 0, 1])], 1) if adaptive else None
        x.requires_grad_(True)
        y = layer(x, offset)
        gy = torch.randn_like(y)
        params = [layer.orthogonal.weight]
        gx_ref, gw_ref = torch.autograd.grad(y, [x, *params], gy)
        for in_place in (False, True):  # in place: the results take over the memory of y, gy
            yc, gc = y.detach().clone(), gy.clone()
            x_rec, gx, (gw,) = layer.backward_by_inversion(yc, gc, params, offset, in_place=in_place)
            torch.testing.assert_close(x_rec, x.detach(), rtol=0, atol=1e-13)
            torch.testing.assert_close(gx, gx_ref, rtol=1e-12, atol=1e-13)
            torch.testing.assert_close(gw, gw_ref, rtol=1e-12, atol=1e-13)
            assert (x_rec.untyped_storage().data_ptr() == yc.untyped_storage().data_ptr()) == in_place
            assert (gx.untyped_storage().data_ptr() == gc.untyped_storage().data_ptr()) == in_place


# ---------------------------------------------------------------------------------------------
# The `orthogonal` strategy: registry, channels, adaptive grid, exact inverse, equivariance
# ---------------------------------------------------------------------------------------------


def test_strategy_is_registered_with_its_options():
    assert "orthogonal" in list_strategies()
    opts = strategy_info("orthogonal").options
    for name in ("method", "init", "stride", "learnable", "adaptive", "p", "n_reflections"):
        assert name in opts


@pytest.mark.parametrize("dim,stride", [(1, 2), (2, 2), (2, (1, 3)), (3, (2, 1, 3))])
def test_strategy_channels_and_projection(dim, stride):
    down, up = create_strategy("orthogonal", 4, 8, dim=dim, stride=stride)
    sigma = math.prod(down.stride)
    assert down.out_channels == 4 * sigma and len(down.stride) == dim
    assert up.out_channels == 4
    assert (up.project is None) == (8 == 4 * sigma)
    x = torch.randn(2, 4, *[3 * s for s in down.stride])
    y, state = down(x)
    assert y.shape[1] == down.out_channels and state is None
    out = up(torch.randn(2, 8, *y.shape[2:]), state)
    assert out.shape == x.shape


def _reference_adaptive_down(x, matrices, stride, p=2.0):
    """Float64, per-sample loop: grid offset = argmax of polyphase l_p norms, roll by -k, Thm 4."""
    ys, ks = [], []
    xs = x.double()
    for b in range(x.shape[0]):
        norms = {}
        for k in np.ndindex(*stride):
            comp = xs[b][(slice(None),) + tuple(slice(kk, None, s) for kk, s in zip(k, stride))]
            norms[k] = comp.abs().pow(p).sum().item()
        k = max(norms, key=lambda kk: (norms[kk], tuple(-v for v in kk)))  # ties: first in row-major order
        ks.append(k)
        shifted = torch.roll(xs[b : b + 1], tuple(-v for v in k), tuple(range(2, x.dim())))
        ys.append(_reference_down(shifted, matrices, stride))
    return torch.cat(ys), torch.tensor(ks)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dim,stride", [(1, (2,)), (2, (2, 2)), (2, (3, 2)), (3, (2, 1, 2))])
def test_adaptive_pair_matches_float64_reference_and_inverts_exactly(method, dim, stride):
    torch.manual_seed(dim)
    sigma = math.prod(stride)
    down, up = create_strategy("orthogonal", 3, 3 * sigma, dim=dim, stride=stride, method=method,
                               init="random", adaptive=True)
    _perturb(down.layer)
    x = torch.randn(4, 3, *[4 * s for s in stride])
    y, offset = down(x)
    y_ref, k_ref = _reference_adaptive_down(x, down.layer.kernel_matrix.detach(), stride)
    assert offset.frame is None  # Gaussian inputs: no symmetry to average over
    assert torch.equal(offset.index, k_ref)
    assert torch.equal(offset.index, max_norm_phase(x, stride))
    assert _rel(y, y_ref) <= 1e-6
    # up is initialised with the same matrices -> exactly the inverse (before training)
    up.layer.orthogonal.load_state_dict(down.layer.orthogonal.state_dict())
    assert _rel(up(y, offset), x) <= 1e-6
    xd = x.double()
    down64, up64 = down.double(), up.double()
    y64, k64 = down64(xd)
    assert _rel(up64(y64, k64), xd) <= 1e-12


@pytest.mark.parametrize("dim,stride", [(1, (2,)), (2, (2, 2)), (2, (3, 2)), (3, (2, 1, 2))])
def test_adaptive_pair_is_shift_consistent(dim, stride):
    """down(T_s x) = T_m down(x) with m integer, and up(down(T_s x)) = T_s x, for every shift."""
    torch.manual_seed(0)
    down, up = create_strategy("orthogonal", 2, 2 * math.prod(stride), dim=dim, stride=stride,
                               init="random", adaptive=True)
    x = torch.randn(2, 2, *[3 * s for s in stride], dtype=torch.float64)
    down, up = down.double(), up.double()
    y, k = down(x)
    for shift in np.ndindex(*[2 * s for s in stride]):
        xs = torch.roll(x, shift, tuple(range(2, 2 + dim)))
        ys, ks = down(xs)
        m = [(sh + kk - kn) for sh, kk, kn in zip(shift, k.index[0].tolist(), ks.index[0].tolist())]
        assert all(v % s == 0 for v, s in zip(m, stride))
        coarse_shift = [v // s for v, s in zip(m, stride)]
        torch.testing.assert_close(ys[:1], torch.roll(y[:1], coarse_shift, tuple(range(2, 2 + dim))))
        torch.testing.assert_close(up(ys, ks), xs, rtol=0, atol=1e-12)


def test_adaptive_upsampler_requires_its_state():
    down, up = create_strategy("orthogonal", 2, 8, dim=2, adaptive=True)
    with pytest.raises(ValueError, match="offset"):
        up(torch.randn(1, 8, 2, 2))


class _TinyUNet(torch.nn.Module):
    """Two-level encoder/decoder with circular convs around one strategy pair (float32)."""

    def __init__(self, **options):
        super().__init__()
        torch.manual_seed(0)
        self.down, self.up = create_strategy("orthogonal", 4, 8, dim=2, **options)
        self.inc = torch.nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular")
        self.mid = torch.nn.Conv2d(self.down.out_channels, 8, 3, padding=1, padding_mode="circular")
        self.out = torch.nn.Conv2d(4 + self.up.out_channels, 1, 3, padding=1, padding_mode="circular")

    def forward(self, x):
        h = torch.relu(self.inc(x))
        y, state = self.down(h)
        u = self.up(torch.relu(self.mid(y)), state)
        return self.out(torch.cat([h, u], 1))


def test_adaptive_strategy_makes_a_small_unet_shift_equivariant_and_plain_does_not():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 24, 20, generator=g)
    shifts = [(1, 0), (0, 1), (3, -5), (-7, 2), (5, 5), (11, -9)]
    worst = {}
    for adaptive in (True, False):
        net = _TinyUNet(adaptive=adaptive, init="random").eval()
        with torch.no_grad():
            ref = net(x)
            errs = [
                ((net(torch.roll(x, s, (2, 3))) - torch.roll(ref, s, (2, 3))).double().square().sum()
                 / ref.double().square().sum()).item()
                for s in shifts
            ]
        worst[adaptive] = max(errs)
    assert worst[True] <= 1e-12, worst
    assert worst[False] > 1e-4, worst


def test_factory_helpers_reject_bad_dim():
    with pytest.raises(ValueError, match="dim"):
        invertible_downsampling(4, 2)
    with pytest.raises(ValueError, match="dim"):
        invertible_upsampling(0, 8)


def test_matrix_exp_is_accurate_to_float64_precision_at_every_scale():
    """Including 1-norms 3e-4..5e-2, where torch 2.14's matrix_exp is off by up to ~1e-10."""
    from scipy.linalg import expm

    from equinet.sampling.orthogonal import matrix_exp

    for a in np.logspace(-5, 1.5, 40):
        s = torch.tensor([[0.0, a], [-a, 0.0]], dtype=torch.float64)
        rotation = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64)
        assert (matrix_exp(s) - rotation).abs().max() <= 1e-14, a
    g = torch.Generator().manual_seed(0)
    for n, scale in ((4, 3e-3), (6, 1e-2), (8, 1.0), (8, 10.0), (16, 0.05)):
        w = torch.randn(3, n, n, dtype=torch.float64, generator=g) * scale
        s = w - w.transpose(-1, -2)
        np.testing.assert_allclose(matrix_exp(s).numpy(), expm(s.numpy()), rtol=0, atol=2e-13)
    zero = torch.zeros(2, 5, 5, dtype=torch.float64)
    assert torch.equal(matrix_exp(zero), torch.eye(5, dtype=torch.float64).expand(2, 5, 5))


# ---------------------------------------------------------------------------------------------
# The block kernels: a permutation and a per-channel matrix product, in pieces, in place
# ---------------------------------------------------------------------------------------------

from equinet.sampling.orthogonal import kernels as ortho  # noqa: E402


def _blocks_of(x, stride):
    """(B, C, sigma, N): the blocks of x by explicit reshaping (independent of the kernels)."""
    b, c = x.shape[:2]
    d = len(stride)
    shape = [b, c]
    for n, s in zip(x.shape[2:], stride):
        shape += [n // s, s]
    v = x.reshape(shape).permute(0, 1, *[3 + 2 * i for i in range(d)], *[2 + 2 * i for i in range(d)])
    return v.reshape(b, c, math.prod(stride), -1)


@settings(max_examples=40, deadline=None)
@given(
    dim=st.integers(1, 3),
    data=st.data(),
    channels=st.integers(1, 3),
    batch=st.integers(1, 3),
    piece=st.sampled_from([1, 7, 40, 1 << 18]),
    offset=st.integers(0, 2),
)
def test_block_kernels_match_the_reference_in_pieces_and_in_place(dim, data, channels, batch, piece, offset):
    """Every kernel, with pieces down to one channel of one sample, on channel slices of bigger
    tensors and in place, equals the float64 reference (Theorem 4 by explicit reshaping)."""
    stride = tuple(data.draw(st.lists(st.integers(1, 3), min_size=dim, max_size=dim)))
    blocks = data.draw(st.lists(st.integers(1, 3), min_size=dim, max_size=dim))
    sigma = math.prod(stride)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 99)))
    a = torch.linalg.qr(torch.randn(channels, sigma, sigma, generator=g, dtype=torch.float64))[0]
    spatial = [n * s for n, s in zip(blocks, stride)]
    big = torch.randn(batch, channels + 3, *spatial, generator=g, dtype=torch.float64)
    x = big[:, offset : offset + channels]  # a channel slice (samples contiguous, batch strided)
    grad = torch.randn(batch, channels * sigma, *blocks, generator=g, dtype=torch.float64)
    grad_fine = torch.randn(x.shape, generator=g, dtype=torch.float64)
    old = ortho._PIECE_ELEMENTS
    ortho._PIECE_ELEMENTS = piece
    try:
        ref_y = (a @ _blocks_of(x, stride)).reshape(grad.shape)
        y = ortho.block_down(x, a, stride)[0]
        torch.testing.assert_close(y, ref_y, rtol=0, atol=1e-13)
        torch.testing.assert_close(ortho.block_up(y, a, stride)[0], x, rtol=0, atol=1e-13)
        columns = grad.reshape(batch, channels, sigma, -1)
        ref_gram = torch.einsum("bcin,bckn->cik", columns, _blocks_of(x, stride))
        gram = ortho.block_down(x, a, stride, gram_with=grad)[1]
        torch.testing.assert_close(gram, ref_gram, rtol=0, atol=1e-12)
        torch.testing.assert_close(ortho.block_up(grad, a, stride, gram_with=ref_y)[1] @ a, ref_gram,
                                   rtol=0, atol=1e-12)
        geo = ortho._Blocks.of_fine(x, stride)
        # in place: the result is the input's memory seen with the other shape
        work = big.clone()[:, offset : offset + channels]
        coarse = ortho.block_down(work, a, stride, out=ortho.reinterpret(work, geo.coarse_shape))[0]
        assert coarse.untyped_storage().data_ptr() == work.untyped_storage().data_ptr()
        torch.testing.assert_close(coarse, ref_y, rtol=0, atol=1e-13)
        fine = ortho.block_up(coarse, a, stride, out=ortho.reinterpret(coarse, geo.fine_shape))[0]
        torch.testing.assert_close(fine, x, rtol=0, atol=1e-13)
        # the fused inversions (memory-efficient backprop), out of place and in place
        ref_gx = (a.transpose(1, 2) @ columns).reshape(batch, channels, *stride, *blocks)
        for in_place in (False, True):
            yy, gg = ref_y.clone(), grad.clone()
            out = (ortho.reinterpret(yy, geo.fine_shape), ortho.reinterpret(gg, geo.fine_shape))
            out = out if in_place else None
            x_rec, gx, ga = ortho.invert_block_down(yy, gg, a, stride, out=out)
            torch.testing.assert_close(x_rec, x, rtol=0, atol=1e-13)
            torch.testing.assert_close(_blocks_of(gx, stride), ref_gx.reshape(batch, channels, sigma, -1),
                                       rtol=0, atol=1e-13)
            torch.testing.assert_close(ga, ref_gram, rtol=0, atol=1e-12)
            xx, gf = x.clone(), grad_fine.clone()
            out = (ortho.reinterpret(xx, geo.coarse_shape), ortho.reinterpret(gf, geo.coarse_shape))
            out = out if in_place else None
            w, gw, ga = ortho.invert_block_up(xx, gf, a, stride, out=out)
            torch.testing.assert_close(w, ref_y, rtol=0, atol=1e-13)
            ref_gw = (a @ _blocks_of(grad_fine, stride)).reshape(grad.shape)
            torch.testing.assert_close(gw, ref_gw, rtol=0, atol=1e-13)
            torch.testing.assert_close(ga, torch.einsum("bcin,bckn->cik", ref_y.reshape(columns.shape),
                                                        _blocks_of(grad_fine, stride)), rtol=0, atol=1e-12)
    finally:
        ortho._PIECE_ELEMENTS = old


@pytest.mark.parametrize("method", METHODS)
def test_layers_in_place_equal_out_of_place_and_double_backward(method, monkeypatch):
    monkeypatch.setattr(ortho, "_PIECE_ELEMENTS", 30)
    torch.manual_seed(0)
    for dim, stride in ((1, (3,)), (2, (2, 3)), (3, (2, 1, 2))):
        down = _perturb(DOWN[dim](2, stride=stride, method=method, init="random")).double()
        x = torch.randn(3, 5, *[2 * s for s in stride], dtype=torch.float64)[:, 1:3]
        offset = torch.stack([torch.arange(3) % s for s in stride], 1)
        for off in (None, offset):
            with torch.no_grad():
                y = down(x, off)
                got = down.forward_in_place(x.clone(), off)
                torch.testing.assert_close(got, y, rtol=0, atol=1e-13)
                torch.testing.assert_close(down.inverse_in_place(got, off), x, rtol=0, atol=1e-13)
        xg = x.clone().requires_grad_(True)
        w = down.orthogonal.weight
        assert torch.autograd.gradgradcheck(lambda x_, w_: down(x_), (xg, w), atol=1e-6)
        up = down.inverse()
        coarse = (2, 2 * math.prod(stride), *([2] + [1] * (dim - 1)))
        yg = torch.randn(coarse, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda y_, w_: up(y_), (yg, w), atol=1e-6)
