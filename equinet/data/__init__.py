"""Data: LightningDataModules on the real file formats, forward models, synthetic datasets.

``FastMRIDataModule`` (fastMRI single-coil knee), ``LoDoPaBDataModule`` (LoDoPaB-CT) and
``ImageNetShiftDataModule`` (ImageNet val JPEGs through the MRI or CT forward model) all yield
batches of :class:`ReconSample`. Given no ``root`` each generates a small synthetic dataset in
the real format once (under ``$EQUINET_DATA_DIR`` or ``~/.cache/equinet``) and reads it through
the same loader. Forward models: :mod:`equinet.data.mri`, :mod:`equinet.data.ct`.
"""

from equinet.data.common import DATA_DIR_ENV, DataFormatError, data_dir
from equinet.data.imagenet import ImageNetShiftDataModule
from equinet.data.knee import FastMRIDataModule
from equinet.data.lodopab import LoDoPaBDataModule
from equinet.data.types import ReconSample

__all__ = [
    "DATA_DIR_ENV",
    "DataFormatError",
    "FastMRIDataModule",
    "ImageNetShiftDataModule",
    "LoDoPaBDataModule",
    "ReconSample",
    "data_dir",
]
