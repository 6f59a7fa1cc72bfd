"""Polyphase primitives against naive float64 references, over random shapes, strides and shifts."""

import itertools

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings

from equinet.sampling.polyphase import (
    max_norm_phase,
    mix_polyphase,
    place_polyphase,
    polyphase_norms,
    ravel_phase,
    roll_mix,
    roll_per_sample,
    select_polyphase,
    unravel_phase,
)


@st.composite
def polyphase_case(draw, dtype=None):
    d = draw(st.integers(1, 3))
    stride = tuple(draw(st.sampled_from([1, 2, 3])) for _ in range(d))
    n = tuple(draw(st.integers(1, 4 if d < 3 else 2)) for _ in range(d))
    B = draw(st.integers(1, 4))
    C = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = dtype or draw(st.sampled_from([torch.float32, torch.float64]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, *(a * s for a, s in zip(n, stride)), generator=g, dtype=torch.float64).to(dtype)
    index = torch.stack([torch.randint(0, s, (B,), generator=g) for s in stride], dim=1)
    return x, stride, index, g


def reference_component(x, stride, index):
    """Naive per-sample strided slicing (the textbook definition x_k(n) = x(s n + k))."""
    out = []
    for b in range(x.shape[0]):
        sl = (b, slice(None)) + tuple(slice(int(k), None, s) for k, s in zip(index[b], stride))
        out.append(x[sl])
    return torch.stack(out)


@given(polyphase_case())
def test_select_matches_strided_slicing(case):
    x, stride, index, _ = case
    assert torch.equal(select_polyphase(x, index, stride), reference_component(x, stride, index))


@given(polyphase_case())
def test_place_is_adjoint_of_select_and_its_right_inverse(case):
    x, stride, index, g = case
    x = x.double()
    y = torch.randn(select_polyphase(x, index, stride).shape, generator=g, dtype=torch.float64)
    lhs = (select_polyphase(x, index, stride) * y).sum()
    rhs = (x * place_polyphase(y, index, stride)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)
    assert torch.equal(select_polyphase(place_polyphase(y, index, stride), index, stride), y)
    # zero everywhere except the chosen grid
    placed = place_polyphase(y, index, stride)
    assert torch.count_nonzero(placed) == torch.count_nonzero(y)


def test_select_and_place_gradcheck():
    g = torch.Generator().manual_seed(1)
    for stride in [(2,), (2, 2), (2, 1, 3)]:
        x = torch.randn(3, 2, *(2 * s for s in stride), dtype=torch.float64, generator=g, requires_grad=True)
        index = torch.stack([torch.randint(0, s, (3,), generator=g) for s in stride], 1)
        assert torch.autograd.gradcheck(lambda t: select_polyphase(t, index, stride), (x,))
        assert torch.autograd.gradgradcheck(lambda t: select_polyphase(t, index, stride), (x,))
        y = select_polyphase(x, index, stride).detach().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda t: place_polyphase(t, index, stride), (y,))
        assert torch.autograd.gradgradcheck(lambda t: place_polyphase(t, index, stride), (y,))


@given(polyphase_case(dtype=torch.float64), st.sampled_from([1.0, 2.0, 3.0, float("inf")]))
def test_norms_match_float64_reference(case, p):
    x, stride, _, _ = case
    norms = polyphase_norms(x, stride, p)
    assert norms.dtype == torch.float64
    for k in itertools.product(*(range(s) for s in stride)):
        comp = reference_component(x, stride, torch.tensor([k] * x.shape[0]))
        flat = comp.reshape(x.shape[0], -1).abs()
        ref = flat.amax(1) if p == float("inf") else (flat**p).sum(1)
        assert torch.allclose(norms[(slice(None),) + k], ref, rtol=1e-12)


@given(polyphase_case())
def test_ravel_unravel_roundtrip(case):
    _, stride, index, _ = case
    assert torch.equal(unravel_phase(ravel_phase(index, stride), stride), index)


@given(polyphase_case())
def test_roll_per_sample_matches_torch_roll(case):
    x, stride, index, _ = case
    d = len(stride)
    ref = torch.stack([torch.roll(x[b], tuple(index[b].tolist()), tuple(range(1, d + 1))) for b in range(x.shape[0])])
    assert torch.equal(roll_per_sample(x, index, stride), ref)


def test_roll_per_sample_sign_undoes_and_validates():
    x = torch.randn(3, 2, 6, 9)
    k = torch.tensor([[0, 2], [1, 0], [1, 1]])
    y = roll_per_sample(x, k, (2, 3), sign=-1)
    assert torch.equal(roll_per_sample(y, k, (2, 3), sign=+1), x)
    for b in range(3):
        assert torch.equal(y[b], torch.roll(x[b], (-int(k[b, 0]), -int(k[b, 1])), (1, 2)))
    with pytest.raises(ValueError, match="shifts must have shape"):
        roll_per_sample(x, k[:2], (2, 3))


@given(polyphase_case(dtype=torch.float64))
def test_soft_mixing_matches_weighted_sum_and_one_hot_is_hard(case):
    x, stride, index, g = case
    B, S = x.shape[0], int(np.prod(stride))
    w = torch.softmax(torch.randn(B, S, generator=g, dtype=torch.float64), 1)
    comps = [reference_component(x, stride, torch.tensor([k] * B)) for k in itertools.product(*(range(s) for s in stride))]
    ref = sum(w[:, j].view(-1, *([1] * (x.dim() - 1))) * c for j, c in enumerate(comps))
    assert torch.allclose(mix_polyphase(x, w.view(B, *stride), stride), ref, rtol=1e-12, atol=1e-12)
    one_hot = F.one_hot(ravel_phase(index, stride), S).double().view(B, *stride)
    assert torch.equal(mix_polyphase(x, one_hot, stride), select_polyphase(x, index, stride))
    assert torch.equal(roll_mix(x, one_hot, stride), roll_per_sample(x, index, stride))
    d = len(stride)
    rolled = [torch.roll(x, k, tuple(range(-d, 0))) for k in itertools.product(*(range(s) for s in stride))]
    ref = sum(w[:, j].view(-1, *([1] * (x.dim() - 1))) * r for j, r in enumerate(rolled))
    assert torch.allclose(roll_mix(x, w.view(B, *stride), stride), ref, rtol=1e-12, atol=1e-12)


@given(polyphase_case(), st.data())
def test_aps_choice_moves_with_the_shift_and_aps_up_down_is_equivariant(case, data):
    """APS-U paper Prop. 1: U^A(D^A(T_k x)) = T_k U^A(D^A(x)), and the phase shifts by k mod s."""
    x, stride, _, _ = case
    d = len(stride)
    k = tuple(data.draw(st.integers(-16, 16)) for _ in range(d))
    dims = tuple(range(-d, 0))
    i = max_norm_phase(x, stride)
    i_shift = max_norm_phase(torch.roll(x, k, dims), stride)
    assert torch.equal(i_shift, (i + torch.tensor(k)) % torch.tensor(stride))
    ud = place_polyphase(select_polyphase(x, i, stride), i, stride)
    xs = torch.roll(x, k, dims)
    ud_shift = place_polyphase(select_polyphase(xs, i_shift, stride), i_shift, stride)
    assert torch.equal(ud_shift, torch.roll(ud, k, dims))


def test_fixed_grid_subsampling_is_not_equivariant():
    """Control for the test above: plain D_2/U_2 (always phase 0) breaks under odd shifts."""
    x = torch.randn(2, 3, 16, 16)
    zero = torch.zeros(2, 2, dtype=torch.long)
    ud = place_polyphase(select_polyphase(x, zero, (2, 2)), zero, (2, 2))
    xs = torch.roll(x, (1, 0), (-2, -1))
    ud_shift = place_polyphase(select_polyphase(xs, zero, (2, 2)), zero, (2, 2))
    assert not torch.allclose(ud_shift, torch.roll(ud, (1, 0), (-2, -1)))


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_shifted_transposed_conv_equals_conv_of_placed_signal(dim):
    """T_k ConvT(y) = conv_circ(U^A(y, k)): why APS-U can shift the cheap low-resolution ConvT."""
    g = torch.Generator().manual_seed(dim)
    conv_t = {1: torch.nn.ConvTranspose1d, 2: torch.nn.ConvTranspose2d, 3: torch.nn.ConvTranspose3d}[dim](3, 2, 2, stride=2).double()
    y = torch.randn(4, 3, *([4] * dim), dtype=torch.float64, generator=g)
    index = torch.randint(0, 2, (4, dim), generator=g)
    lhs = roll_per_sample(conv_t(y), index, (2,) * dim)
    placed = place_polyphase(y, index, (2,) * dim)
    # conv_transpose's kernel, as a stride-1 circular correlation over the zero-inserted signal
    w = conv_t.weight.flip(tuple(range(2, 2 + dim))).transpose(0, 1)
    padded = F.pad(placed, (1, 0) * dim, mode="circular")
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dim]
    rhs = conv(padded, w, conv_t.bias)
    assert torch.allclose(lhs, rhs, rtol=1e-12, atol=1e-12)


def test_indivisible_size_gets_clear_error():
    with pytest.raises(ValueError, match=r"spatial size \(5, 8\) is not divisible by the stride \(2, 2\)"):
        max_norm_phase(torch.randn(1, 1, 5, 8), (2, 2))


@settings(max_examples=15)
@given(polyphase_case(dtype=torch.float64))
def test_rolls_and_soft_mixing_gradients(case):
    """The grouped CPU roll equals the masked rolls used on other devices; gradients (and the
    roll's double backward) pass gradcheck; soft mixing differentiates in both arguments."""
    from equinet.sampling.polyphase import _masked_rolls

    x, stride, index, g = case
    for sign in (1, -1):
        assert torch.equal(roll_per_sample(x, index, stride, sign), _masked_rolls(x, index, stride, sign))
    xs = x[:2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: roll_per_sample(t, index[:2], stride), (xs,))
    assert torch.autograd.gradgradcheck(lambda t: roll_per_sample(t, index[:2], stride, -1), (xs,))
    B, S = xs.shape[0], int(np.prod(stride))
    w = torch.softmax(torch.randn(B, S, generator=g, dtype=torch.float64), 1).view(B, *stride)
    w.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, v: roll_mix(t, v, stride), (xs, w))
    assert torch.autograd.gradcheck(lambda t, v: mix_polyphase(t, v, stride), (xs, w))
