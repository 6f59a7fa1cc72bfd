"""Data: LightningDataModules on the real file formats, forward models, synthetic datasets.

``FastMRIDataModule`` (fastMRI single-coil knee), ``LoDoPaBDataModule`` (LoDoPaB-CT) and
``ImageNetShiftDataModule`` (ImageNet val JPEGs through the MRI or CT forward model) all yield
batches of :class:`ReconSample`. Given no ``root`` each generates a small synthetic dataset in
the real format once (under ``$EQUINET_DATA_DIR`` or the platform's user cache folder,
``~/.cache/equinet`` on Linux) and reads it through the same loader. Every file is checked where
it is opened; bad input raises :class:`DataFormatError` naming the file and what would be right.
Forward models: :mod:`equinet.data.mri`, :mod:`equinet.data.ct`.

The DataModules are imported on first access (PEP 562), so ``equinet data synth`` and other
light users do not pay for importing Lightning and fastmri.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "ReconSample": "equinet.data.types",
    "FastMRIDataModule": "equinet.data.knee",
    "LoDoPaBDataModule": "equinet.data.lodopab",
    "ImageNetShiftDataModule": "equinet.data.imagenet",
    "DataFormatError": "equinet.data.common",
    "DATA_DIR_ENV": "equinet.data.common",
    "data_dir": "equinet.data.common",
}

__all__ = [
    "DATA_DIR_ENV",
    "DataFormatError",
    "FastMRIDataModule",
    "ImageNetShiftDataModule",
    "LoDoPaBDataModule",
    "ReconSample",
    "data_dir",
]

if TYPE_CHECKING:  # pragma: no cover
    from equinet.data.common import DATA_DIR_ENV, DataFormatError, data_dir
    from equinet.data.imagenet import ImageNetShiftDataModule
    from equinet.data.knee import FastMRIDataModule
    from equinet.data.lodopab import LoDoPaBDataModule
    from equinet.data.types import ReconSample


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'equinet.data' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
