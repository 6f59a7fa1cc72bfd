"""The one sample/batch format every DataModule yields and every LightningModule consumes."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch


class ReconSample(NamedTuple):
    """One 2D reconstruction example (a slice of a volume, or an image of its own).

    ``input``/``target`` are normalised ``(1, H, W)`` float32 tensors; the original values are
    ``normalised * std + mean``. ``max_value`` is the data range of the target volume in original
    units (fastMRI: the file's ``max`` attribute), used as PSNR/SSIM ``maxval``. ``fname`` and
    ``slice_num`` identify the sample uniquely, so per-volume metrics can be assembled and
    duplicates (DDP sampler padding) dropped. torch's default collate batches it field-wise.
    """

    input: torch.Tensor
    target: torch.Tensor
    mean: Union[torch.Tensor, float]
    std: Union[torch.Tensor, float]
    max_value: Union[torch.Tensor, float]
    fname: str
    slice_num: Union[torch.Tensor, int]
