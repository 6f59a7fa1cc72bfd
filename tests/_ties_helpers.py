"""Inputs users feed a shift-equivariant network beyond Gaussian noise: degenerate and
shift-symmetric patterns, natural images, mixed batches -- and small networks, at initialisation
and after a few Adam steps, to run them through."""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch

from equinet.models import UNet
from equinet.models.iunet import iUNet

# Patterns with a symmetry that moves the grid (``T_j x = x``, ``j`` odd somewhere) ...
SYMMETRIC = ("zeros", "constant", "checker1", "checker1_01", "checker2", "stripes1", "stripes2", "ramp",
             "half_plane", "lattice4", "lattice8")
# ... and degenerate ones without such a symmetry (components that tie, zero regions, dead channels).
DEGENERATE = ("hot_pixel", "blocks", "natural_zero_background", "natural_dead_channel")
FAMILIES = SYMMETRIC + DEGENERATE + ("natural",)


@functools.lru_cache(maxsize=None)
def _camera() -> np.ndarray:
    from skimage import data

    img = np.asarray(data.camera(), dtype=np.float64)
    return (img - img.min()) / (img.max() - img.min())


def natural(dim: int, n: int, offset: int) -> torch.Tensor:
    """A natural ``(n,)*dim`` signal: a crop of scikit-image's camera (a row in 1D, stacked crops in 3D)."""
    img = _camera()
    r, c = (37 * offset) % (img.shape[0] - n), (53 * offset) % (img.shape[1] - n)
    if dim == 1:
        out = img[r, c:c + n]
    elif dim == 2:
        out = img[r:r + n, c:c + n]
    else:
        out = np.stack([img[r + 3 * z:r + 3 * z + n, c:c + n] for z in range(n)])
    return torch.tensor(out, dtype=torch.float32)


def pattern(name: str, dim: int, n: int, axis: int = 0, seed: int = 0) -> torch.Tensor:
    """One ``(n,)*dim`` pattern of the families above (``axis``: the direction of stripes, ramps,
    half-planes; ``seed``: the hot pixel's position, the blocks' values, the crop)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.meshgrid(*[torch.arange(n)] * dim, indexing="ij")
    a = idx[axis % dim]
    total = sum(idx)
    if name == "zeros":
        return torch.zeros((n,) * dim)
    if name == "constant":
        return torch.full((n,) * dim, 0.75)
    if name == "checker1":  # +-1, period 2 in every axis
        return (total % 2 * 2 - 1).float()
    if name == "checker1_01":
        return (total % 2).float()
    if name == "checker2":  # 2-pixel squares
        return (sum(i // 2 for i in idx) % 2).float()
    if name == "stripes1":
        return (a % 2 * 2 - 1).float()
    if name == "stripes2":
        return (a // 2 % 2).float()
    if name in ("lattice4", "lattice8"):  # invariant under T_(1, 2, 0..): a symmetry along no axis
        m = 4 if name == "lattice4" else 8
        line = 2 * idx[0] - (idx[1] if dim > 1 else 0) + sum(idx[2:])
        return (line % m < m // 2 - (m == 8)).float()
    if name == "ramp":
        return a.float() / n
    if name == "half_plane":
        return (a < n // 2).float()
    if name == "hot_pixel":
        out = torch.zeros((n,) * dim)
        out[tuple(torch.randint(0, n, (dim,), generator=g).tolist())] = 1.0
        return out
    if name == "blocks":  # every value repeated in a 2-pixel block: all polyphase components equal
        coarse = torch.rand((n // 2,) * dim, generator=g)
        for d in range(dim):
            coarse = coarse.repeat_interleave(2, dim=d)
        return coarse
    if name in ("natural", "natural_dead_channel"):
        return natural(dim, n, seed)
    if name == "natural_zero_background":  # an object on an exactly zero background (MRI, CT)
        img = natural(dim, n, seed)
        inside = torch.ones_like(img, dtype=torch.bool)
        for i in idx:
            inside &= (i >= n // 4) & (i < 3 * n // 4)
        return torch.where(inside, img, 0.0)
    raise ValueError(name)


def batch(names: Sequence[str], dim: int, n: int, channels: int = 2, seed: int = 0) -> torch.Tensor:
    """``(len(names), channels, n..)``: channel 0 the pattern, the others affine copies of it (a zero
    channel for ``natural_dead_channel``), one sample per name."""
    samples = []
    for i, name in enumerate(names):
        p = pattern(name, dim, n, axis=seed + i, seed=seed + 7 * i)
        chans = [p] + [torch.zeros_like(p) if name == "natural_dead_channel" else (0.5 + c) * p - 0.25 * c
                       for c in range(1, channels)]
        samples.append(torch.stack(chans))
    return torch.stack(samples)


# --------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------
ADAPTIVE = {
    "aps": ("aps", {"filter_size": 1}),
    "aps-2": ("aps", {"filter_size": 2}),
    "aps-3": ("aps", {"filter_size": 3}),
    "aps-5": ("aps", {"filter_size": 5}),
    "lps": ("lps", {"filter_size": 1}),
    "lps-3": ("lps", {"filter_size": 3}),
    "orthogonal-adaptive": ("orthogonal", {"adaptive": True}),
}
CONTROL = {"maxpool": ("maxpool", {})}
SIZE = {1: 32, 2: 32, 3: 8}
TRAIN_SIZE = {1: 32, 2: 32, 3: 16}
DEPTH = {1: 3, 2: 3, 3: 2}


def train_briefly(net: torch.nn.Module, dim: int, steps: int = 8, seed: int = 0) -> torch.nn.Module:
    """A few Adam steps (lr 1e-2) towards a smoothed copy of mixed natural/degenerate inputs, so
    the weights and batch-norm statistics are those of a (briefly) trained network."""
    n = TRAIN_SIZE[dim]
    channels = net.in_channels if hasattr(net, "in_channels") else net.channels[0]
    names = ["natural", "natural", "hot_pixel", "checker2"]
    x = torch.cat([batch(names, dim, n, channels, seed=s) for s in (seed, seed + 1)])
    F = torch.nn.functional
    pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dim]
    target = pool(x, 3, 1, 1, count_include_pad=False)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        out = net(x)
        loss = (out - target[:, : out.shape[1]]).square().mean()
        loss.backward()
        opt.step()
    return net.eval()


def randomize_norms(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random affine parameters and running statistics, so eval-mode batch norm is not a no-op."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return net


@functools.lru_cache(maxsize=None)
def unet(name: str, dim: int, trained: bool) -> UNet:
    """A small circular U-Net of strategy ``name``: random weights and batch-norm statistics, or
    trained a few steps."""
    sampling, kwargs = {**ADAPTIVE, **CONTROL}[name]
    torch.manual_seed(11)
    net = UNet(2, 2, channels=4, depth=DEPTH[dim], sampling=sampling, sampling_kwargs=kwargs,
               padding_mode="circular", dim=dim)
    return train_briefly(net, dim) if trained else randomize_norms(net).eval()


@functools.lru_cache(maxsize=None)
def adaptive_iunet(dim: int, trained: bool, dtype: torch.dtype = torch.float32) -> iUNet:
    """Adaptive iUNet with circular blocks, identity-initialised (the default) and then either given
    random coupling outputs (the zero-initialised group-norm affine maps drawn at scale 0.2) or
    trained a few steps."""
    torch.manual_seed(3)
    net = iUNet(channels=(4, 8, 16), architecture=(1, 1, 1), dim=dim, adaptive_resampling=True, verbose=0,
                module_kwargs={"padding_mode": "circular"})
    if trained:
        train_briefly(net, dim)
    else:
        g = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.GroupNorm):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.2)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
    return net.to(dtype).eval()


@torch.no_grad()
def equivariance_nmse(net, x: torch.Tensor, shift: Sequence[int]) -> torch.Tensor:
    """Per sample ``||G(T_k x) - T_k G(x)||^2 / ||T_k G(x)||^2`` (0 where both are 0), float64."""
    dims = tuple(range(2, x.dim()))
    expected = torch.roll(net(x), tuple(shift), dims).double()
    got = net(torch.roll(x, tuple(shift), dims)).double()
    err = (got - expected).flatten(1).square().sum(1)
    ref = expected.flatten(1).square().sum(1)
    return torch.where(err == 0, torch.zeros_like(err), err / ref.clamp_min(1e-300))
