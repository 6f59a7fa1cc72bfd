"""A conv backend whose rounding depends on where a pixel sits (cuDNN's Winograd/FFT tiles, split
reductions), emulated on the CPU: every convolution and matrix product returns its float32 result
moved by -2..2 ulps by a fixed field over the output positions. A shifted input meets a different
field, so features are no longer shifted bit for bit. On natural images and noise the adaptive
networks must then stay equivariant to rounding level (NMSE <= 1e-10), and wherever the margin test
decided a sample's grids with a margin beyond the backend's rounding (on a shift-exact backend, for
the input and its shift) take the same grid at every level: a rounding-level perturbation never
flips such a choice. (Choices left to the
exact path are made on the perturbed features and may differ; the NMSE bound covers them too.)
"""

from __future__ import annotations

import pytest
import torch
from _ties_helpers import SIZE, adaptive_iunet, batch, equivariance_nmse, unet
from torch.utils._python_dispatch import TorchDispatchMode

from equinet.sampling import adaptive

aten = torch.ops.aten
PERTURBED = {aten.convolution.default, aten.mm.default, aten.bmm.default, aten.addmm.default,
             aten.baddbmm.default}
ULPS = 2


class ShiftDependentRounding(TorchDispatchMode):
    """Emulated backend: float32 outputs of convolutions/matrix products moved by a position field
    of -ULPS..ULPS ulps (fixed per output shape, so it does not move with the content)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in PERTURBED and isinstance(out, torch.Tensor) and out.dtype == torch.float32:
            self.calls += 1
            seed = hash(tuple(out.shape)) % (2**31)
            field = torch.randint(-ULPS, ULPS + 1, out.shape, generator=torch.Generator().manual_seed(seed))
            ulp = torch.nextafter(out, torch.full_like(out, float("inf"))) - out
            out = out + field.to(out.dtype) * ulp
        return out


def _input_margin(x: torch.Tensor) -> torch.Tensor:
    """Per sample, the relative gap between the two largest stride-2 polyphase l2 norms of ``x``
    (float64): smooth images have near-equal components, textured ones do not."""
    d = x.dim() - 2
    comps = [x[(slice(None), slice(None)) + tuple(slice(o, None, 2) for o in off)].double().flatten(1).norm(dim=1)
             for off in torch.cartesian_prod(*[torch.arange(2)] * d).reshape(-1, d).tolist()]
    top = torch.stack(comps, 1).topk(2, dim=1).values
    return (top[:, 0] - top[:, 1]) / top[:, 0]


def _inputs(dim: int, channels: int) -> torch.Tensor:
    """Gaussian noise and textured natural crops: inputs whose grid choices the margin test decides
    with room to spare. (A smooth crop, e.g. the camera's sky, has components within 1e-8 of each
    other: the exact path decides it on the features, which this backend does not shift bit for bit,
    so its grid may flip: the README says so.)"""
    n = SIZE[dim]
    natural = torch.cat([batch(["natural"], dim, n, channels, seed=s) for s in range(12)])
    natural = natural[_input_margin(natural) > 1e-3][:3]
    g = torch.Generator().manual_seed(dim)
    noise = torch.randn((3, channels) + (n,) * dim, generator=g)
    scaled = torch.randn((6, channels) + (n,) * dim, generator=g) * torch.rand((6,) + (1,) * (dim + 1), generator=g) * 10
    assert len(natural) == 3
    return torch.cat([natural, noise, scaled])


SHIFTS = {1: [(1,), (5,), (-6,)], 2: [(1, 0), (3, -5), (-6, 7)], 3: [(1, 1, 0), (-3, 2, 5)]}


def _pooled(net, x, mode=None):
    """Each level's downsampled tensor of ``net(x)`` under ``mode`` (the UNet's ``downs``), and per
    sample whether every level's grid was decided with room for this backend's rounding: certain
    in the fast float64 test (``certain_argmax``) and a top-two margin beyond ``ULPS`` ulps of
    float32 (``beyond_feature_rounding``; blurred APS meets margins of 1e-9..1e-7 on natural
    crops, which the float64 test certifies but a few ulps of feature rounding can flip)."""
    out, certain = [], []
    real = adaptive.certain_argmax

    def recording(scores, bound):
        top, ok = real(scores, bound)
        # decided for this backend: certain in float64 AND a margin beyond ULPS of feature rounding
        certain.append(ok & adaptive.beyond_feature_rounding(scores, ULPS))
        return top, ok

    hooks = [d.register_forward_hook(lambda m, i, o: out.append(o[0].detach().clone())) for d in net.downs]
    try:
        adaptive.certain_argmax = recording
        with torch.no_grad(), (mode if mode is not None else torch.no_grad()):
            net(x)
    finally:
        adaptive.certain_argmax = real
        for h in hooks:
            h.remove()
    assert len(certain) == len(net.downs)
    return out, torch.stack(certain).all(0)


def _same_grid(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> torch.Tensor:
    """Per sample, whether ``b`` is a circular shift of ``a`` up to rounding (a different grid of
    the same level gives different values under every shift)."""
    dims = tuple(range(2, a.dim()))
    best = torch.full((a.shape[0],), float("inf"), dtype=torch.float64)
    for k in torch.cartesian_prod(*[torch.arange(s) for s in a.shape[2:]]).reshape(-1, len(dims)).tolist():
        err = (torch.roll(a, tuple(k), dims) - b).double().flatten(1).norm(dim=1)
        best = torch.minimum(best, err / a.double().flatten(1).norm(dim=1).clamp_min(1e-30))
    return best <= tol


def _check(net, x, dim, unet_levels: bool):
    mode = ShiftDependentRounding()
    with mode:
        worst = torch.stack([equivariance_nmse(net, x, k) for k in SHIFTS[dim]]).amax(0)
    assert mode.calls > 0
    assert worst.max() <= 1e-10, worst.tolist()
    assert worst.max() > 0, "the emulated backend left the features shift-exact: the test has no teeth"
    if unet_levels:
        dims = tuple(range(2, x.dim()))
        base, base_decided = _pooled(net, x)
        perturbed, _ = _pooled(net, x, ShiftDependentRounding())
        checked = 0
        for k in SHIFTS[dim]:
            shifted = torch.roll(x, k, dims)
            _, decided = _pooled(net, shifted)
            decided &= base_decided  # decided by the margin test on a shift-exact backend
            moved, _ = _pooled(net, shifted, ShiftDependentRounding())
            for level, (a, b) in enumerate(zip(perturbed, moved)):
                same = _same_grid(a, b)
                assert same[decided].all(), (k, level, decided.tolist(), same.tolist())
            checked += int(decided.sum())
        return checked
    return None


@pytest.mark.parametrize("name", ["aps", "aps-3", "aps-5", "lps", "orthogonal-adaptive"])
@pytest.mark.parametrize("trained", [False, True])
def test_adaptive_unets_degrade_to_rounding_level_never_a_flipped_grid(name, trained):
    torch.manual_seed(0)
    x = _inputs(2, 2)
    checked = _check(unet(name, 2, trained), x, 2, unet_levels=True)
    assert checked > 0, "no decided input: the grid check would check nothing"


@pytest.mark.parametrize("dim", [1, 3])
def test_adaptive_unets_in_1d_and_3d(dim):
    x = _inputs(dim, 2)
    for name in ("aps", "lps", "orthogonal-adaptive"):
        assert _check(unet(name, dim, False), x, dim, unet_levels=True) > 0, name


@pytest.mark.parametrize("dim,trained", [(2, False), (2, True), (1, False)])
def test_adaptive_iunet_degrades_to_rounding_level_where_decided(dim, trained):
    x = _inputs(dim, 4)
    net = adaptive_iunet(dim, trained)
    assert net.grid_choices_decided(x).all()
    _check(net, x, dim, unet_levels=False)


def test_beyond_feature_rounding_is_the_top_two_gap_against_ulps_of_the_largest_score():
    u = torch.finfo(torch.float32).eps / 2
    top = torch.tensor([[1.0, 1.0 - 3.9 * u, 0.5], [1.0, 1.0 - 4.1 * u, 0.5], [-2.0, -2.0 - 9 * u, -3.0]],
                       dtype=torch.float64)
    # 2 ulps on each side: gap must exceed 4 u |max score| (|max| = 3 in the last row)
    assert adaptive.beyond_feature_rounding(top, 2).tolist() == [False, True, False]
    assert adaptive.beyond_feature_rounding(top, 1).tolist() == [True, True, True]
    assert adaptive.beyond_feature_rounding(top[:, :1], 2).all()
