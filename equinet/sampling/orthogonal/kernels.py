"""Block kernels: Theorem 4's strided convolution computed as what it is -- a permutation of the
pixels (pixel_unshuffle) and one sigma x sigma matrix product per channel."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

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
