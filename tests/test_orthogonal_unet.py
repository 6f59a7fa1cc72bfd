"""The U-Net with `orthogonal` sampling: adaptive orthogonal resampling
with circular padding is exactly shift-equivariant in float32; the fixed-grid version is not."""

import pytest
import torch
from _ties_helpers import randomize_norms

from equinet.metrics import circular_shift, random_shifts
from equinet.models import UNet
from equinet.sampling.orthogonal import METHODS


def _randomize(net, seed):
    """Random batch-norm statistics/affine maps and orthogonal matrices away from their init."""
    randomize_norms(net, seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("orthogonal.weight"):
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return net


@torch.no_grad()
def _nmse(net, x, shifts):
    ref = net(x)
    out = torch.cat([net(circular_shift(x, k.tolist())) for k in shifts])
    expected = torch.cat([circular_shift(ref, k.tolist()) for k in shifts])
    err = (expected.double() - out.double()).flatten(1).square().sum(1)
    return err / expected.double().flatten(1).square().sum(1)


def _unet(seed, **options):
    torch.manual_seed(seed)
    net = UNet(1, 1, channels=6, depth=3, sampling="orthogonal", sampling_kwargs=options, padding_mode="circular")
    return _randomize(net, seed).eval()


@pytest.mark.parametrize("method", METHODS)
def test_adaptive_orthogonal_unet_is_exactly_shift_equivariant_float32(method):
    """NMSE <= 1e-12 over 50 random shifts for several (non-square) sizes; the control fails."""
    g = torch.Generator().manual_seed(11)
    for i, size in enumerate([(48, 40), (32, 64), (24, 24)]):
        net = _unet(i, adaptive=True, method=method, init="random")
        x = torch.randn(1, 1, *size, generator=g)
        nmse = _nmse(net, x, random_shifts(50, generator=g))
        assert nmse.max() <= 1e-12, (method, size, nmse.max().item())
    plain = _unet(0, adaptive=False, method=method, init="random")
    x = torch.randn(1, 1, 48, 40, generator=g)
    assert _nmse(plain, x, torch.tensor([[1, 0], [0, 1], [3, -5]])).min() > 1e-4


def test_adaptive_orthogonal_unet_anisotropic_stride_and_training_mode():
    g = torch.Generator().manual_seed(2)
    net = _unet(3, adaptive=True, stride=(2, 1), init="haar")
    assert net.size_multiple == (8, 1)
    x = torch.randn(1, 1, 32, 12, generator=g)
    assert _nmse(net, x, random_shifts(20, generator=g)).max() <= 1e-12
    net.train()
    out = net(torch.randn(2, 1, 16, 12, generator=g))
    out.square().mean().backward()
    assert all(p.grad is not None for n, p in net.named_parameters() if "orthogonal" in n)
