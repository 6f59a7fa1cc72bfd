"""The batch of every step: a :class:`~equinet.data.ReconSample` from whatever the loader collated."""

from __future__ import annotations

from typing import Any

from equinet.data.types import ReconSample


def as_batch(batch: Any) -> ReconSample:
    """``batch`` as a :class:`ReconSample` (from a ReconSample, a tuple/list of its fields or a dict)."""
    if isinstance(batch, ReconSample):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == len(ReconSample._fields):
        return ReconSample(*batch)
    if isinstance(batch, dict):
        return ReconSample(**batch)
    raise TypeError(f"expected a ReconSample batch (fields {ReconSample._fields}), got {type(batch).__name__}")


__all__ = ["as_batch"]
