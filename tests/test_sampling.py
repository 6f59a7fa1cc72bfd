"""Strategy registry and the individual down/upsampling layers against references."""

import math

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given

from equinet.sampling import (
    BlurFilter,
    DenseMaxPool,
    PolyphaseState,
    binomial_filter,
    create_strategy,
    list_strategies,
    select_polyphase,
)
from equinet.sampling.polyphase import polyphase_norms

CLASSICAL = [("maxpool", {}), ("maxpool", {"up": "unpool"}), ("maxpool", {"up": "bilinear"}),
             ("maxpool", {"up": "nearest"}), ("avgpool", {}), ("avgpool", {"up": "bilinear"}),
             ("strided_conv", {}), ("strided_conv", {"kernel_size": 2, "up": "nearest"}),
             ("blur", {"filter_size": 1}), ("blur", {"filter_size": 5}),
             ("aps", {}), ("aps", {"filter_size": 3, "p": 1.0}), ("lps", {}), ("lps", {"filter_size": 2, "tau": 0.5})]


def test_registry_names_every_strategy_of_the_design():
    assert {"maxpool", "avgpool", "strided_conv", "blur", "aps", "lps"} <= set(list_strategies())


def test_unknown_strategy_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown sampling strategy 'apss'.*aps"):
        create_strategy("apss", 4, 8)
    with pytest.raises(ValueError, match=r"'aps' does not take option\(s\) \['filtersize'\].*filter_size"):
        create_strategy("aps", 4, 8, filtersize=3)
    with pytest.raises(ValueError, match="up must be one of"):
        create_strategy("avgpool", 4, 8, up="unpool")
    with pytest.raises(ValueError, match="filter_size must be in 1..7"):
        create_strategy("blur", 4, 8, filter_size=8)
    with pytest.raises(ValueError, match="padding_mode"):
        create_strategy("maxpool", 4, 8, padding_mode="wrap")


@pytest.mark.parametrize("name,kwargs", CLASSICAL)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_pairs_have_declared_shapes_and_pass_state(name, kwargs, dim):
    down, up = create_strategy(name, 3, 6, dim=dim, padding_mode="circular", **kwargs)
    x = torch.randn(2, 3, *([8] * dim))
    y, state = down(x)
    assert y.shape == (2, down.out_channels, *([4] * dim))
    assert down.stride == (2,) * dim
    z = up(torch.randn(2, 6, *([4] * dim)), state)
    assert z.shape == (2, up.out_channels, *([8] * dim))
    (y.sum() + z.sum()).backward()  # differentiable end to end


def test_binomial_filters_are_zhangs():
    assert torch.equal(binomial_filter(3) * 4, torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64))
    assert torch.equal(binomial_filter(5) * 16, torch.tensor([1.0, 4, 6, 4, 1], dtype=torch.float64))
    for f in range(1, 8):
        assert math.isclose(float(binomial_filter(f).sum()), 1.0)


@given(st.integers(1, 7), st.integers(1, 2), st.integers(0, 2**31 - 1))
def test_circular_blur_matches_scipy_wrap_convolution(filter_size, stride, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 12, 10))
    blur = BlurFilter(3, filter_size, stride=stride, padding_mode="circular").double()
    out = blur(torch.from_numpy(x)).numpy()
    taps = binomial_filter(filter_size).numpy()
    kernel = np.outer(taps, taps)
    lo = (filter_size - 1) // 2
    # correlation with the kernel anchored so output n sees inputs n-lo .. n-lo+f-1 (wrapping)
    ref = np.zeros_like(x)
    for a in range(filter_size):
        for b in range(filter_size):
            ref += kernel[a, b] * np.roll(x, (lo - a, lo - b), axis=(2, 3))
    assert np.allclose(out, ref[:, :, ::stride, ::stride], atol=1e-12)


def test_blur_keeps_constants_and_replicate_padding_works_on_tiny_maps():
    blur = BlurFilter(2, 5, stride=2, padding_mode="zeros")
    assert torch.allclose(blur(torch.full((1, 2, 2, 2), 3.0)), torch.full((1, 2, 1, 1), 3.0))


def test_dense_max_pool_matches_reference():
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    ref = torch.stack([torch.roll(x, (-a, -b), (2, 3)) for a in (0, 1) for b in (0, 1)]).amax(0)
    assert torch.equal(DenseMaxPool(2, "circular")(x), ref)
    # max-pool stride 2 is exactly dense max followed by phase-0 subsampling (APS-U footnote 1)
    assert torch.equal(DenseMaxPool(2, "zeros")(x)[:, :, ::2, ::2], F.max_pool2d(x, 2))


def test_aps_down_picks_the_largest_norm_component_of_the_dense_max():
    down, _ = create_strategy("aps", 4, 8, padding_mode="circular", filter_size=3)
    x = torch.randn(5, 4, 16, 12, dtype=torch.float64)
    down = down.double()
    y, state = down(x)
    h = down.blur(down.max(x))
    norms = polyphase_norms(h, (2, 2)).flatten(1)
    assert torch.equal(state.index[:, 0] * 2 + state.index[:, 1], norms.argmax(1))
    assert torch.equal(y, select_polyphase(h, state.index, (2, 2)))
    assert state.weights is None


def test_lps_trains_with_gumbel_softmax_and_selects_hard_in_eval():
    torch.manual_seed(3)
    down, up = create_strategy("lps", 4, 8, padding_mode="circular", tau=0.7)
    x = torch.randn(6, 4, 8, 8)
    down.train()
    y, state = down(x)
    assert state.weights.shape == (6, 2, 2)
    assert torch.allclose(state.weights.sum((1, 2)), torch.ones(6))
    assert (state.weights < 1).any()  # soft, not one-hot
    y.square().sum().backward()
    assert down.logits.net[0].weight.grad.abs().sum() > 0  # the scorer learns through the mixing
    down.eval()
    with torch.no_grad():
        y, state = down(x)
        h = down.max(x)  # filter_size=1: no blur, so the scored and the selected map coincide
        logits = down.logits(h, (2, 2))
    assert state.weights is None
    assert torch.equal(state.index[:, 0] * 2 + state.index[:, 1], logits.argmax(1))
    assert torch.equal(y, select_polyphase(h, state.index, (2, 2)))


def test_lps_scores_permute_with_circular_shifts():
    down, _ = create_strategy("lps", 3, 6, padding_mode="circular")
    down = down.double().eval()
    h = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    logits = down.logits(h, (2, 2)).view(2, 2, 2)
    shifted = down.logits(torch.roll(h, (1, 0), (2, 3)), (2, 2)).view(2, 2, 2)
    # a shift by one row swaps the row phase of every component
    assert torch.allclose(shifted, logits.flip(1), rtol=1e-12)


def test_upsamplers_demand_their_state():
    _, up = create_strategy("aps", 4, 8)
    with pytest.raises(ValueError, match="needs the PolyphaseState"):
        up(torch.randn(1, 8, 4, 4), None)
    _, up = create_strategy("maxpool", 4, 8, up="unpool")
    with pytest.raises(ValueError, match="needs the argmax indices"):
        up(torch.randn(1, 8, 4, 4), None)
    assert PolyphaseState(torch.zeros(1, 2, dtype=torch.long)).weights is None


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["circular", "zeros"])
def test_dense_max_custom_backward_passes_gradcheck_and_matches_native_max_pool(dim, padding_mode):
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(1, 2, *([5, 4, 3][:dim]), dtype=torch.float64, generator=g, requires_grad=True)
    pool = DenseMaxPool(dim, padding_mode)
    assert torch.autograd.gradcheck(pool, (x,))
    mode = "circular" if padding_mode == "circular" else "replicate"
    native = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dim]

    def reference(t):
        return native(F.pad(t, (0, 1) * dim, mode=mode), 2, 1)

    w = torch.randn(x.shape, dtype=torch.float64, generator=g)
    assert torch.equal(pool(x), reference(x))
    ours = torch.autograd.grad((pool(x) * w).sum(), x)[0]
    theirs = torch.autograd.grad((reference(x) * w).sum(), x)[0]
    assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12)
