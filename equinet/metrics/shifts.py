"""The circular shift ``T_k`` of the APS-U paper and the shift draws, the one definition in equinet.

``T_k x`` rolls the last ``d`` dimensions of ``x`` by ``k`` (circular, so that boundary effects are
kept apart from sampling effects, as in the paper). Every measurement (the equivariance metrics,
the callbacks, the study's figures) and the training augmentation use :func:`circular_shift`;
shifts are drawn by :func:`random_shifts` uniformly from ``[-max_shift, max_shift]^d``, both ends
included (the paper's text; its reference code draws from ``[-16, 15]``), and per volume from a
seed and the volume's name (:func:`volume_shift`, :func:`dpsnr_shifts`), so the shift of a volume
is the same whatever the batching, the sample order or the number of DDP ranks.
"""

from __future__ import annotations

import hashlib
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch

from equinet.sampling.adaptive import circular_shift_per_sample

Array = Union[np.ndarray, torch.Tensor]

MAX_SHIFT = 16  # the paper's largest shift per axis, in pixels


def circular_shift(x: Array, shift: Union[Sequence[int], torch.Tensor]) -> Array:
    """``T_k x``: ``x`` rolled over its last ``d`` dims by ``shift`` -- one shift ``(d,)`` for all of ``x``
    (torch or numpy), or one per sample, a ``(B, d)`` tensor: ``out[b] = torch.roll(x[b], shift[b])``.

    Per-sample shifts of any size are one gather per dimension on ``x``'s device (no loop over the
    batch, no host sync; the kernel is the sampling layer's own, which the adaptive layers use to
    average over symmetries: sampling imports torch only); the shifts go to ``x``'s device
    without the host waiting (:func:`to_device`).
    """
    if isinstance(shift, torch.Tensor) and shift.dim() == 2:
        if not isinstance(x, torch.Tensor):
            raise TypeError("per-sample shifts (a (B, d) tensor) need a torch tensor x")
        return circular_shift_per_sample(x, to_device(shift, x.device))
    if isinstance(shift, torch.Tensor):
        shift = shift.tolist()
    shift = tuple(int(s) for s in shift)
    dims = tuple(range(-len(shift), 0))
    if isinstance(x, torch.Tensor):
        return torch.roll(x, shifts=shift, dims=dims)
    return np.roll(x, shift=shift, axis=dims)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor goes to a CUDA device through pinned memory, without the
    host waiting for the stream (a plain ``.to(device)`` from pageable memory blocks)."""
    if t.device == torch.device(device):
        return t
    if t.device.type == "cpu" and torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def random_shifts(
    n: int,
    dim: int = 2,
    max_shift: int = MAX_SHIFT,
    generator: Optional[torch.Generator] = None,
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """``n`` shifts drawn uniformly from ``[-max_shift, max_shift]^dim`` (long tensor ``(n, dim)``),
    from ``generator`` or the default generator of ``device`` (drawn there: no host round trip)."""
    if generator is not None and device is None:
        device = generator.device
    return torch.randint(-max_shift, max_shift + 1, (n, dim), generator=generator, device=device)


def seeded_generator(*key: Any) -> torch.Generator:
    """A CPU generator seeded by a hash of ``key`` (the same on every machine, process and rank)."""
    digest = hashlib.sha256(":".join(str(k) for k in key).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def volume_shift(seed: int, fname: str, max_shift: int = MAX_SHIFT, dim: int = 2) -> torch.Tensor:
    """The one random shift in ``[-max_shift, max_shift]^dim`` of volume ``fname`` (seeded, (dim,)):
    a function of ``(seed, fname)`` only."""
    return random_shifts(1, dim, max_shift, seeded_generator("volume", seed, fname))[0]


def dpsnr_shifts(seed: int, fname: str, n: int, max_shift: int = MAX_SHIFT, dim: int = 2) -> torch.Tensor:
    """The ``n`` random shifts ``(n, dim)`` of the worst-case |dPSNR| of volume ``fname``, seeded by
    ``(seed, fname)``; every slice of the volume gets the same ``n`` shifts."""
    return random_shifts(n, dim, max_shift, seeded_generator("dpsnr", seed, fname))
