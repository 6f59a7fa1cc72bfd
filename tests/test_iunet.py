"""The iUNet: channel plan, exact inverse, identity init, memory-efficient backprop
(gradients equal plain backprop; gradcheck), clear errors, adaptive shift equivariance."""

import math
import warnings

import pytest
import torch
from torch import nn

from equinet.metrics import circular_shift, random_shifts
from equinet.models.invertible import (
    AdditiveCoupling,
    InvertibleChannelMixing2D,
    create_standard_module,
)
from equinet.models.iunet import ChannelPlanWarning, LiftediUNet, closest_channel_plan, iUNet
from equinet.models.memory_efficient import MemoryEfficientBackprop
from equinet.sampling.orthogonal import METHODS, OrthogonalMatrices



def randomize(net: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Move every orthogonal matrix (resampling, channel mixing) away from its initialisation."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, OrthogonalMatrices) and m.weight is not None:
                m.weight.add_(torch.randn(m.weight.shape, generator=g, dtype=m.weight.dtype) * scale)
    return net


def make(dtype=torch.float32, seed=0, randomize_matrices=True, **kw):
    torch.manual_seed(seed)
    options = dict(channels=(4, 8, 16), architecture=(1, 1, 1), dim=2, module_kwargs={"zero_init": False}, verbose=0)
    options.update(kw)
    net = iUNet(**options)
    if randomize_matrices:
        randomize(net, seed=seed)
    return net.to(dtype)


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ---------------------------------------------------------------------------------------------
# The "closest achievable channels" plan (tutorial numbers)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("last_stride", [(2, 2, 2), 2])
def test_tutorial_channel_plan_is_reproduced_exactly(last_stride):
    with pytest.warns(ChannelPlanWarning) as record:
        model = iUNet(
            channels=(3, 25, 32, 55, 128),
            architecture=(2, 2, 2, 2, 2),
            dim=3,
            resampling_stride=[(1, 2, 3), (2, 2, 2), (5, 1, 2), last_stride],
        )
    message = str(record[0].message)
    assert "channels=(3, 25, 32, 55, 128)" in message
    assert "closest achievable configuration: channels=(3, 12, 32, 60, 128)" in message
    assert "Average relative error: 0.1527" in message
    assert model.channels == (3, 12, 32, 60, 128)
    assert model.channel_multipliers == [6, 8, 10, 8]
    assert model.downsampling_factors == (20, 8, 24)
    # the tutorial's layout: 3-3-(1/2), 12-12-(8/4), 32-32-(26/6), 60-60-(44/16), 128-128
    assert model.skipped_channels == [1, 8, 26, 44]
    assert model.channels_before_downsampling == [2, 4, 6, 16]
    assert "60-60-(44/16)" in model.layout()
    # and the network runs and inverts on the smallest admissible input
    x = torch.randn(1, 3, 20, 8, 24)
    with torch.no_grad():
        y = model(x)
        assert y.shape == x.shape
        assert rel(model.inverse(y), x) <= 1e-5


def test_other_documented_plans():
    plan = closest_channel_plan((7, 15, 35, 91), [8, 8, 4])
    assert plan.channels == (7, 16, 32, 92)
    assert plan.skipped == (5, 12, 9) and plan.downsampled == (2, 4, 23)
    # int channels: the library's in_channels with slice_mode="double" (README: 7-16-32-64)
    model = iUNet(7, architecture=(2, 3, 1, 3), dim=3)
    assert model.channels == (7, 16, 32, 64) and model.skipped_channels == [5, 12, 24]
    assert iUNet(64, architecture=(1, 1, 1, 1), dim=2).channels == (64, 128, 256, 512)


def test_exact_plan_emits_no_warning_and_verbose_0_only_logs(caplog):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        iUNet(channels=(4, 8, 16), architecture=(1, 1, 1), dim=2)
        with caplog.at_level("INFO", logger="equinet.models.iunet"):
            iUNet(channels=(4, 9, 16), architecture=(1, 1, 1), dim=2, verbose=0)
    assert "Could not exactly create an iUNet" in caplog.text


def test_plan_errors_are_clear():
    with pytest.raises(ValueError, match="one entry per level"):
        iUNet(channels=(4, 8), architecture=(1, 1, 1))
    with pytest.raises(ValueError, match=r"level 0 has 1 channel\(s\)"):
        iUNet(channels=1, architecture=(1, 1))
    with pytest.raises(ValueError, match="resampling_stride"):
        iUNet(channels=4, architecture=(1, 1, 1), resampling_stride=[2])
    with pytest.raises(ValueError, match="resampling_stride"):
        iUNet(channels=4, architecture=(1, 1), dim=3, resampling_stride=(2, 2))
    with pytest.raises(ValueError, match="unknown resampling_kwargs"):
        iUNet(channels=4, architecture=(1, 1), resampling_kwargs={"n_reflection": 2})


# ---------------------------------------------------------------------------------------------
# inverse(forward(x)) exact, 1D/2D/3D, every method and init, anisotropic strides
# ---------------------------------------------------------------------------------------------

CONFIGS = {
    1: dict(channels=(4, 8, 16), resampling_stride=[3, 2], shape=(2, 4, 24)),
    2: dict(channels=(4, 8, 16), resampling_stride=[(2, 3), (1, 2)], shape=(2, 4, 4, 12)),
    3: dict(channels=(4, 16, 32), resampling_stride=[(2, 1, 2), (1, 2, 2)], shape=(1, 4, 4, 2, 8)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("init", ["haar", "squeeze", "random"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_inverse_is_exact(dim, method, init, dtype):
    cfg = dict(CONFIGS[dim])
    shape = cfg.pop("shape")
    net = make(dtype, dim=dim, architecture=(2, 1, 1), resampling_method=method, resampling_init=init,
               channel_mixing_method=method, **cfg)
    x = torch.randn(*shape, dtype=dtype)
    with torch.no_grad():
        y = net(x)
        assert rel(y, x) > 1e-2  # a non-trivial map
        err = rel(net.inverse(y), x)
    assert err <= (1e-5 if dtype == torch.float32 else 1e-12), err


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inverse_is_exact_with_tensor_init_adaptive_and_options(dtype):
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    for kw in (
        dict(resampling_init=q),
        dict(resampling_init=q.numpy(), resampling_method="householder", resampling_kwargs={"n_reflections": 2}),
        dict(adaptive_resampling=True, module_kwargs={"zero_init": False, "padding_mode": "circular"}),
        dict(channel_mixing_freq=1, module_kwargs={"zero_init": False, "block_depth": 2}),
        dict(channel_mixing_freq=0, learnable_resampling=False),
        dict(channels=(5, 9, 17)),  # odd channel counts: couplings alternate their halves
    ):
        net = make(dtype, **kw)
        x = torch.randn(2, net.channels[0], 8, 12, dtype=dtype)
        with torch.no_grad():
            err = rel(net.inverse(net(x)), x)
        assert err <= (1e-5 if dtype == torch.float32 else 1e-12), (kw, err)


def test_encode_decode_compose_to_forward():
    net = make(torch.float64, adaptive_resampling=True)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        codes = net.encode(x)
        assert len(codes) == 3 and codes[0].shape[1] == net.skipped_channels[0]
        torch.testing.assert_close(net.decode(*codes), net(x), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Identity at initialisation (the paper's zero-initialised normalisation)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_zero_init_makes_the_whole_network_the_identity(dim):
    cfg = dict(CONFIGS[dim])
    shape = cfg.pop("shape")
    for method in METHODS:
        for adaptive in (False, True):
            common = dict(dim=dim, architecture=(2, 1, 1), resampling_method=method, randomize_matrices=False,
                          module_kwargs={"zero_init": True}, adaptive_resampling=adaptive, **cfg)
            x = torch.randn(*shape)
            with torch.no_grad():
                squeeze = make(resampling_init="squeeze", **common)
                if method != "householder":  # exp/cayley start at Q = I: bit-exact identity
                    assert torch.equal(squeeze(x), x), (method, adaptive)
                assert rel(squeeze(x), x) <= 1e-6
                haar = make(resampling_init="haar", **common)
                assert rel(haar(x), x) <= 1e-6
                haar64 = make(torch.float64, resampling_init="random", **common)
                assert rel(haar64(x.double()), x) <= 1e-14
                # the control: without zero-init it is not the identity
                other = make(resampling_init="haar", **{**common, "module_kwargs": {"zero_init": False}})
                assert rel(other(x), x) > 1e-2


# ---------------------------------------------------------------------------------------------
# memory-efficient gradients == plain backprop (float64, 1e-10); gradcheck
# ---------------------------------------------------------------------------------------------


def _grads(net, x, weight, custom):
    net.disable_custom_gradient = not custom
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    out = net(x)
    (out * weight).sum().backward()
    return [x.grad] + [p.grad for p in net.parameters()]


GRAD_CASES = [
    dict(dim=2, resampling_method="cayley"),
    dict(dim=2, resampling_method="exp", resampling_init="random", channel_mixing_method="exp"),
    dict(dim=2, resampling_method="householder", channel_mixing_method="householder"),
    dict(dim=2, adaptive_resampling=True, module_kwargs={"zero_init": False, "padding_mode": "circular"}),
    dict(dim=2, architecture=(3, 2, 1), channel_mixing_freq=2, module_kwargs={"zero_init": False, "block_depth": 2}),
    dict(dim=1, channels=(4, 8, 16), resampling_stride=[3, 2], adaptive_resampling=True),
    dict(dim=3, channels=(4, 16, 32), resampling_stride=[(2, 1, 2), (1, 2, 2)]),
]
SHAPES = {1: (2, 4, 24), 2: (2, 4, 8, 12), 3: (1, 4, 4, 2, 8)}


@pytest.mark.parametrize("case", range(len(GRAD_CASES)))
def test_memory_efficient_gradients_equal_plain_backprop(case):
    kw = dict(GRAD_CASES[case])
    net = make(torch.float64, **kw)
    x = torch.randn(*SHAPES[kw["dim"]], dtype=torch.float64)
    weight = torch.randn_like(x)
    assert net.uses_custom_gradient(x)
    efficient = _grads(net, x, weight, custom=True)
    plain = _grads(net, x, weight, custom=False)
    assert len(efficient) == len(plain) > 5
    for a, b in zip(efficient, plain):
        assert a is not None and b is not None
        assert (a - b).norm() <= 1e-10 * b.norm() + 1e-300, (case, (a - b).norm().item(), b.norm().item())


def test_memory_efficient_gradients_of_encode_decode_and_lifted_network():
    net = make(torch.float64, adaptive_resampling=True)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    ws = [torch.randn_like(c) for c in net.encode(x)]
    results = []
    for custom in (True, False):
        net.disable_custom_gradient = not custom
        net.zero_grad(set_to_none=True)
        xr = x.clone().requires_grad_(True)
        codes = net.encode(xr)
        sum((c * w).sum() for c, w in zip(codes, ws)).backward()
        results.append([xr.grad] + [p.grad for p in net.parameters() if p.grad is not None])
    for a, b in zip(*results):
        assert (a - b).norm() <= 1e-10 * b.norm()

    torch.manual_seed(1)
    lifted = LiftediUNet(1, 2, channels=4, depth=2, architecture=1, zero_init=False, verbose=0).double()
    randomize(lifted)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    w = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    results = []
    for custom in (True, False):
        lifted.iunet.disable_custom_gradient = not custom
        lifted.zero_grad(set_to_none=True)
        (lifted(x) * w).sum().backward()
        results.append([p.grad for p in lifted.parameters()])
    for a, b in zip(*results):
        assert (a - b).norm() <= 1e-10 * b.norm()


class AffineScaling(nn.Module):
    """A custom invertible block without ``backward_by_inversion`` (exercises the generic path)."""

    def __init__(self, channels, **coordinates):
        super().__init__()
        self.log_scale = nn.Parameter(torch.randn(1, channels, 1, 1) * 0.1)

    def forward(self, x):
        return x * self.log_scale.exp() + 0.5 * self.log_scale

    def inverse(self, y):
        return (y - 0.5 * self.log_scale) * (-self.log_scale).exp()


@pytest.mark.parametrize(
    "kw",
    [
        dict(dim=1, channels=(2, 4), architecture=(1, 1), resampling_init="random"),
        dict(dim=2, channels=(2, 4), architecture=(1, 1), adaptive_resampling=True,
             module_kwargs={"zero_init": False, "padding_mode": "circular"}, resampling_method="exp"),
        dict(dim=2, channels=(3, 6), architecture=(1, 1), create_module_fn=AffineScaling, module_kwargs={},
             resampling_method="householder"),
    ],
)
def test_gradcheck_of_memory_efficient_backprop(kw):
    net = make(torch.float64, **kw)
    shape = (1, net.channels[0], 4) if net.dim == 1 else (1, net.channels[0], 4, 4)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    params = net._program.params()
    assert len(params) >= 4

    def f(x_, *ps):
        return MemoryEfficientBackprop.apply(net._program, 1, x_, *ps)[0]

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7)


def test_coupling_backward_by_inversion_matches_autograd():
    torch.manual_seed(0)
    block = create_standard_module(5, dim=2, zero_init=False, module_index=1).double()
    assert isinstance(block, AdditiveCoupling) and block.split == 2
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64, requires_grad=True)
    y = block(x)
    gy = torch.randn_like(y)
    params = list(block.parameters())
    ref = torch.autograd.grad(y, [x, *params], gy)
    x_rec, gx, gps = block.backward_by_inversion(y.detach(), gy, params)
    torch.testing.assert_close(x_rec, x.detach(), rtol=0, atol=1e-13)
    for a, b in zip([gx, *gps], ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)
    mix = randomize(InvertibleChannelMixing2D(5)).double()
    y = mix(x)
    ref = torch.autograd.grad(y, [x, mix.orthogonal.weight], gy)
    x_rec, gx, (gw,) = mix.backward_by_inversion(y.detach(), gy, [mix.orthogonal.weight])
    torch.testing.assert_close(x_rec, x.detach(), rtol=0, atol=1e-13)
    torch.testing.assert_close(gx, ref[0], rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(gw, ref[1], rtol=1e-12, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# Memory: what autograd keeps, and user tensors are left alone
# ---------------------------------------------------------------------------------------------


def _saved_bytes(net, x):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x).sum()
    return sum(storages.values())


def test_saved_activations_do_not_grow_with_depth_and_plain_does():
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    saved = {}
    for depth in (1, 4):
        for custom in (True, False):
            net = make(architecture=(depth,) * 3, disable_custom_gradient=not custom)
            saved[(depth, custom)] = _saved_bytes(net, x)
    # memory-efficient: autograd saves nothing (the output is referenced, and released once the
    # backward pass has copied it); plain backprop keeps the activations of every block
    assert saved[(1, True)] == saved[(4, True)] == 0
    assert saved[(4, False)] > 2 * saved[(1, False)] > 10 * x.numel() * 4


def test_retain_graph_and_outputs_changed_before_backward():
    """The output is released early only when the graph is not retained; a second backward with a
    retained graph gives the same gradients; changing the output in place is caught."""
    net = make(torch.float64)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    loss = net(x).square().sum()
    first = torch.autograd.grad(loss, [x, *net.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *net.parameters()])
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="a second time"):
        loss.backward()
    y = net(x)
    loss = (y * 1.0).sum()
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_user_tensors_are_never_resized_or_modified():
    net = make()
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    before = x.detach().clone()
    nbytes = x.untyped_storage().nbytes()
    y = net(x)
    y.square().sum().backward()
    assert torch.equal(x.detach(), before) and x.untyped_storage().nbytes() == nbytes
    assert y.untyped_storage().nbytes() == y.numel() * 4 and torch.isfinite(y).all()


IN_PLACE_CASES = GRAD_CASES + [
    dict(dim=2, architecture=(3, 1, 2), channels=(5, 9, 13)),  # odd chains and channels: no views to merge
    dict(dim=2, channels=(3, 6), architecture=(1, 1), create_module_fn=AffineScaling, module_kwargs={}),
    dict(dim=2, channel_mixing_freq=0, architecture=(2, 2, 2)),
]


@pytest.mark.parametrize("case", range(len(IN_PLACE_CASES)))
def test_in_place_runs_equal_the_functional_ones_and_leave_inputs_alone(case, monkeypatch):
    """Without autograd the program runs in place in its own buffer (and F in sub-batches): the
    results equal the plain functional run (float64), and the caller's tensors are untouched."""
    import equinet.models.invertible as invertible

    monkeypatch.setattr(invertible, "SUB_BATCH_ELEMENTS", 1)  # every sample its own sub-batch
    kw = dict(IN_PLACE_CASES[case])
    net = make(torch.float64, **kw)
    shape = list(SHAPES[kw["dim"]])
    shape[1] = net.channels[0]
    x = torch.randn(3, *shape[1:], dtype=torch.float64)
    before = x.clone()
    program = net._program
    with torch.enable_grad():
        functional = program.run([x.requires_grad_(True)])[0].detach()
        x.requires_grad_(False)
        back_functional = program.run_inverse([functional])[0].detach()
    with torch.no_grad():
        in_place = program.run([x])[0]
        assert torch.equal(x, before)
        kept = in_place.clone()
        back = program.run_inverse([in_place])[0]
        assert torch.equal(in_place, kept)
    torch.testing.assert_close(in_place, functional, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(back, back_functional, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(back, x, rtol=1e-12, atol=1e-12)


def test_sub_batched_recomputation_matches_plain_backprop_and_is_off_for_batch_statistics(monkeypatch):
    import equinet.models.invertible as invertible

    monkeypatch.setattr(invertible, "SUB_BATCH_ELEMENTS", 1)
    net = make(torch.float64, module_kwargs={"zero_init": False, "block_depth": 2})
    x = torch.randn(3, 4, 8, 12, dtype=torch.float64)
    weight = torch.randn_like(x)
    for a, b in zip(_grads(net, x, weight, custom=True), _grads(net, x, weight, custom=False)):
        assert (a - b).norm() <= 1e-10 * b.norm()
    # batch norm in training mode couples the samples: a no-grad forward keeps the whole batch
    bn = iUNet(4, architecture=(1, 1), create_module_fn=BatchNormCoupling, disable_custom_gradient=True,
               verbose=0)
    x = torch.randn(4, 4, 8, 8)
    with torch.no_grad():
        inference = bn(x)
    torch.testing.assert_close(inference, bn(x).detach(), rtol=0, atol=1e-6)


class ScaledCoupling(AdditiveCoupling):
    """A coupling subclass with its own forward/inverse: the program must not run it as halves."""

    def __init__(self, channels, **coordinates):
        half = channels // 2
        super().__init__(nn.Conv2d(channels - half, half, 3, padding=1), half)

    def forward(self, x):
        x1, x2 = x[:, : self.split], x[:, self.split :]
        return torch.cat([x2, 2 * x1 + self.F(x2)], dim=1)

    def inverse(self, y):
        c2 = y.shape[1] - self.split
        return torch.cat([(y[:, c2:] - self.F(y[:, :c2])) / 2, y[:, :c2]], dim=1)


def test_coupling_subclasses_with_their_own_forward_run_on_whole_tensors():
    """Neither the halves nor the inherited backward_by_inversion may stand in for a subclass's
    own forward (the gradients then come from inversion and local autograd)."""
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    kw = dict(create_module_fn=ScaledCoupling, module_kwargs={})
    single = make(torch.float64, channels=(4,), architecture=(2,), **kw)
    with torch.no_grad():
        reference = x
        for block in [*single.encoder_modules[0], *single.decoder_modules[0]]:
            reference = block(reference)
        torch.testing.assert_close(single(x), reference, rtol=0, atol=1e-14)
    net = make(torch.float64, channels=(4, 8), architecture=(2, 1), **kw)
    with torch.no_grad():
        assert rel(net.inverse(net(x)), x) <= 1e-12
    weight = torch.randn_like(x)
    for a, b in zip(_grads(net, x, weight, custom=True), _grads(net, x, weight, custom=False)):
        assert (a - b).norm() <= 1e-10 * b.norm()


def test_channel_mixing_of_chunks_equals_mixing_their_concatenation():
    mix = randomize(InvertibleChannelMixing2D(5)).double()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(mix.forward_chunks([x[:, :2], x[:, 2:]]), mix(x), rtol=0, atol=1e-14)
    with torch.no_grad():
        torch.testing.assert_close(mix.forward_in_place(x.clone()), mix(x), rtol=0, atol=1e-14)
        torch.testing.assert_close(mix.inverse_in_place(mix(x)), x, rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="expects 5 channels"):
        mix.forward_chunks([x[:, :2], x[:, 3:]])


def test_gradient_and_output_tensors_of_the_caller_are_not_overwritten():
    net = make(torch.float64)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    y = net(x)
    kept = y.detach().clone()
    gy = torch.randn_like(y)
    gy_before = gy.clone()
    torch.autograd.grad(y, [x, *net.parameters()], gy)
    assert torch.equal(gy, gy_before) and torch.equal(y.detach(), kept)


# ---------------------------------------------------------------------------------------------
# Clear errors instead of wrong gradients
# ---------------------------------------------------------------------------------------------


class BatchNormCoupling(AdditiveCoupling):
    def __init__(self, channels, dim=2, dropout=False, **coordinates):
        half = channels // 2
        layers = [nn.Conv2d(channels - half, half, 3, padding=1), nn.Dropout(0.5) if dropout else nn.BatchNorm2d(half)]
        super().__init__(nn.Sequential(*layers), half)


@pytest.mark.parametrize("dropout", [False, True])
def test_batchnorm_and_dropout_inside_blocks_are_refused(dropout):
    kind = "Dropout" if dropout else "BatchNorm2d"
    with pytest.raises(ValueError, match=f"cannot support.*{kind}.*disable_custom_gradient=True"):
        iUNet(4, architecture=(1, 1), create_module_fn=BatchNormCoupling, module_kwargs={"dropout": dropout})
    net = iUNet(4, architecture=(1, 1), create_module_fn=BatchNormCoupling, module_kwargs={"dropout": dropout},
                disable_custom_gradient=True)
    x = torch.randn(2, 4, 8, 8)
    net(x).sum().backward()  # plain backprop is fine
    net.disable_custom_gradient = False
    net.eval()
    net(x).sum().backward()  # eval mode: deterministic, allowed
    net.train()
    with pytest.raises(ValueError, match=kind):
        net(x)


def test_double_backward_is_refused_clearly():
    net = make(torch.float64)
    x = torch.randn(1, 4, 8, 8, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(net(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        g.sum().backward()


def test_bad_inputs_and_modules_give_clear_errors():
    net = make()
    with pytest.raises(ValueError, match=r"\(8, 10\) is not divisible by the total downsampling factors \(4, 4\)"):
        net(torch.randn(1, 4, 8, 10))
    with pytest.raises(ValueError, match="must have 4 channels"):
        net(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="2 spatial dims"):
        net(torch.randn(4, 8, 8))
    with pytest.raises(TypeError, match="no inverse"):
        iUNet(4, architecture=(1, 1), create_module_fn=lambda c, **kw: nn.Identity())
    with pytest.raises(ValueError, match="at least 2 channels"):
        create_standard_module(1)


def test_padding_mode_pads_and_crops():
    net = make(padding_mode="reflect")
    x = torch.randn(1, 4, 10, 7)
    y = net(x)
    assert y.shape == x.shape
    net.revert_input_padding = False
    assert net(x).shape == (1, 4, 12, 8)
    padded = nn.functional.pad(x, net.get_padding(x)[1], mode="reflect")
    with torch.no_grad():
        assert rel(net.inverse(net(x)), padded) <= 1e-5


# ---------------------------------------------------------------------------------------------
# the adaptive iUNet is exactly shift-equivariant and still inverts exactly
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _equivariance_nmse(net, x, shifts):
    ref = net(x)
    out = torch.cat([net(circular_shift(x, k.tolist())) for k in shifts])
    expected = torch.cat([circular_shift(ref, k.tolist()) for k in shifts])
    err = (expected.double() - out.double()).flatten(1).square().sum(1)
    return err / expected.double().flatten(1).square().sum(1)


@pytest.mark.parametrize("method", METHODS)
def test_adaptive_iunet_is_shift_equivariant_and_invertible_float32(method):
    g = torch.Generator().manual_seed(5)
    for i, size in enumerate([(32, 24), (16, 40)]):
        kw = dict(channels=(4, 8, 16, 32), architecture=(1, 1, 1, 1), resampling_method=method,
                  resampling_init="random", module_kwargs={"zero_init": False, "padding_mode": "circular"})
        net = make(seed=i, adaptive_resampling=True, **kw).eval()
        x = torch.randn(1, 4, *size, generator=g)
        nmse = _equivariance_nmse(net, x, random_shifts(50, generator=g))
        assert nmse.max() <= 1e-12, (method, size, nmse.max().item())
        with torch.no_grad():
            assert rel(net.inverse(net(x)), x) <= 1e-5
        # the control: the same network with a fixed block grid is not shift-equivariant
        plain = make(seed=i, adaptive_resampling=False, **kw).eval()
        odd = torch.tensor([[1, 0], [0, 3], [5, -7]])
        assert _equivariance_nmse(plain, x, odd).min() > 1e-3


@pytest.mark.parametrize("dim", [1, 3])
def test_adaptive_iunet_equivariance_1d_3d(dim):
    cfg = dict(CONFIGS[dim])
    shape = cfg.pop("shape")
    net = make(dim=dim, adaptive_resampling=True, resampling_init="random",
               module_kwargs={"zero_init": False, "padding_mode": "circular"}, **cfg).eval()
    g = torch.Generator().manual_seed(dim)
    x = torch.randn(1, *shape[1:], generator=g)
    shifts = torch.stack([torch.randint(-9, 10, (dim,), generator=g) for _ in range(12)])
    assert _equivariance_nmse(net, x, shifts).max() <= 1e-12


def test_lifted_iunet_equivariance_and_shapes():
    torch.manual_seed(0)
    net = LiftediUNet(1, 1, channels=4, depth=3, architecture=1, adaptive_resampling=True, padding_mode="circular",
                      zero_init=False, resampling_init="random").eval()
    assert net.downsampling_factors == (8, 8) and net.iunet.channels == (4, 8, 16, 32)
    x = torch.randn(2, 1, 24, 32)
    assert net(x).shape == x.shape
    g = torch.Generator().manual_seed(1)
    assert _equivariance_nmse(net, x[:1], random_shifts(20, generator=g)).max() <= 1e-12
    with pytest.raises(ValueError, match="expects"):
        net(torch.randn(2, 3, 24, 32))
    with pytest.raises(ValueError, match="not divisible"):
        net(torch.randn(2, 1, 20, 32))


def test_lifted_iunet_is_selectable_from_a_config_with_plain_keywords():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "model")
    cfg = parser.parse_object(
        {"model": {"class_path": "equinet.models.iunet.LiftediUNet",
                   "init_args": {"in_channels": 1, "out_channels": 1, "channels": 8, "depth": 2,
                                 "architecture": 2, "adaptive_resampling": True, "padding_mode": "circular",
                                 "resampling_stride": [2, [1, 4]]}}}
    )
    model = parser.instantiate(cfg).model
    assert isinstance(model, LiftediUNet)
    assert model.iunet.resampling_stride == [(2, 2), (1, 4)]
    assert model(torch.randn(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_training_step_reduces_loss_with_memory_efficient_backprop():
    torch.manual_seed(0)
    net = LiftediUNet(1, 1, channels=4, depth=2, architecture=2, verbose=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x = torch.randn(4, 1, 16, 16)
    target = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = (net(x) - target).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert math.isfinite(losses[-1])


# ---------------------------------------------------------------------------------------------
# Property test over random architectures, strides, channels, methods and inits
# ---------------------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
import hypothesis.strategies as st  # noqa: E402


@settings(max_examples=20)
@given(
    dim=st.integers(1, 3),
    levels=st.integers(1, 3),
    data=st.data(),
    method=st.sampled_from(METHODS),
    init=st.sampled_from(["haar", "squeeze", "random"]),
    adaptive=st.booleans(),
    circular=st.booleans(),
)
def test_random_iunets_invert_exactly_and_memory_efficient_gradients_match(
    dim, levels, data, method, init, adaptive, circular
):
    strides = [tuple(data.draw(st.lists(st.integers(1, 3), min_size=dim, max_size=dim).filter(
        lambda s: math.prod(s) >= 2))) for _ in range(levels - 1)]
    channels = tuple(data.draw(st.lists(st.integers(2, 10), min_size=levels, max_size=levels)))
    architecture = tuple(data.draw(st.lists(st.integers(0, 2), min_size=levels, max_size=levels)))
    padding = "circular" if circular else "zeros"
    net = make(torch.float64, seed=data.draw(st.integers(0, 99)), dim=dim, channels=channels,
               architecture=architecture, resampling_stride=list(strides) if strides else 2,
               resampling_method=method, resampling_init=init, adaptive_resampling=adaptive,
               module_kwargs={"zero_init": False, "padding_mode": padding})
    blocks = data.draw(st.lists(st.integers(1, 2), min_size=dim, max_size=dim))
    x = torch.randn(2, net.channels[0], *[b * f for b, f in zip(blocks, net.downsampling_factors)],
                    dtype=torch.float64)
    with torch.no_grad():
        assert rel(net.inverse(net(x)), x) <= 1e-12
    weight = torch.randn_like(x)
    efficient = _grads(net, x, weight, custom=True)
    plain = _grads(net, x, weight, custom=False)
    # tiny levels (e.g. one pixel under a layer norm) can make a gradient vanish analytically:
    # measure those against the overall gradient scale instead of their own rounding noise
    scale = max(b.norm().item() for b in plain if b is not None)
    for a, b in zip(efficient, plain):
        if b is None:
            assert a is None
            continue
        assert (a - b).norm() <= 1e-10 * b.norm() + 1e-14 * scale


# ---------------------------------------------------------------------------------------------
# LiftediUNet: identity initialisation and the 3x3 linear lift / projection
# ---------------------------------------------------------------------------------------------


def _user_images(size=16, seed=0):
    """What users feed the network: natural crops, and degenerate / shift-symmetric images."""
    from equinet.data.synthetic import natural_image

    g = torch.Generator().manual_seed(seed)
    crops = []
    for name in ("camera", "brick"):
        image = torch.from_numpy(natural_image(name)).double()
        top, left = (int(torch.randint(0, s - size, (1,), generator=g)) for s in image.shape)
        crops.append(image[top:top + size, left:left + size])
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    crops += [torch.zeros(size, size, dtype=torch.float64), torch.full((size, size), 3.0, dtype=torch.float64),
              ((yy + xx) % 2).double(), (xx % 4 < 2).double()]
    return torch.stack(crops)[:, None]


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.float64, 1e-12)])
@pytest.mark.parametrize("kernel", [1, 3])
@pytest.mark.parametrize("channels,adaptive", [(1, False), (2, True)])
def test_lifted_iunet_starts_as_the_identity(kernel, channels, adaptive, dtype, tol):
    default = torch.get_default_dtype()
    for seed in range(3):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)  # initialised in the dtype it runs in (the pseudo-inverse's rounding)
        try:
            net = LiftediUNet(channels, channels, channels=4, depth=2, architecture=2, block_depth=2,
                              linear_kernel_size=kernel, adaptive_resampling=adaptive, padding_mode="circular",
                              verbose=0)
        finally:
            torch.set_default_dtype(default)
        x = _user_images(seed=seed).repeat(1, channels, 1, 1).to(dtype)
        x = x + 0.1 * torch.randn_like(x) * (torch.arange(len(x)) < 2)[:, None, None, None]
        scale = 1 + x.abs().max()
        assert (net(x) - x).abs().max() <= tol * scale
        # the linear ends alone cancel: the projection is the lift's (left) inverse
        assert net.lift(x).shape[1] == 4 and (net.project(net.lift(x)) - x).abs().max() <= tol * scale


def test_identity_init_can_be_switched_off_and_needs_equal_channels():
    torch.manual_seed(0)
    x = _user_images()
    off = LiftediUNet(1, 1, channels=4, depth=1, architecture=1, identity_init=False, verbose=0).double()
    assert (off(x) - x).abs().max() > 1e-2  # a random 1x1 projection of a random 1x1 lift
    couplings_on = LiftediUNet(1, 1, channels=4, depth=1, architecture=1, zero_init=False, verbose=0).double()
    randomize(couplings_on)
    assert (couplings_on(x) - x).abs().max() > 1e-3  # F != 0: only the linear ends cancel
    two = LiftediUNet(1, 2, channels=4, depth=1, architecture=1, verbose=0)
    assert two(x.float()).shape == (len(x), 2, 16, 16)  # no identity to start from; random init
    with pytest.raises(ValueError, match="linear_kernel_size must be odd"):
        LiftediUNet(1, 1, channels=4, depth=1, linear_kernel_size=2, verbose=0)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        LiftediUNet(1, 1, channels=4, depth=1, padding_mode="wrap", verbose=0)


def test_3x3_lifted_adaptive_iunet_is_exactly_equivariant_and_gradients_match():
    torch.manual_seed(2)
    net = LiftediUNet(1, 1, channels=4, depth=3, architecture=1, block_depth=2, linear_kernel_size=3,
                      adaptive_resampling=True, padding_mode="circular", zero_init=False,
                      resampling_init="random", verbose=0).double().eval()
    with torch.no_grad():
        for conv in (net.lift, net.project):
            conv.weight.normal_()  # every tap non-zero, as after training
    x = _user_images(size=24, seed=3)[:2]
    g = torch.Generator().manual_seed(4)
    assert _equivariance_nmse(net, x, random_shifts(12, generator=g)).max() <= 1e-20
    # the 3x3 linear ends sit outside the memory-efficient program: its gradients stay exact
    w = torch.randn_like(x)
    grads = []
    for custom in (True, False):
        net.iunet.disable_custom_gradient = not custom
        net.zero_grad(set_to_none=True)
        (net(x) * w).sum().backward()
        grads.append([p.grad.clone() for p in net.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads):
        assert (a - b).norm() <= 1e-10 * (b.norm() + 1e-30)
