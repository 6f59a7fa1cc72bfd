"""Data: LightningDataModules on the real file formats, forward models, synthetic datasets."""

from equinet.data.types import ReconSample

__all__ = ["ReconSample"]
