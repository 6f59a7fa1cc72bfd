"""Comparisons across sampling strategies.

- ``equinet study --config experiments/study/<name>.yaml``: train every variant under one budget
  and reproduce the APS-U paper's tables (reconstruction, equivariance in and out of
  distribution, worst-case dPSNR, cost) with figures; see :mod:`equinet.study.cli`.
- ``equinet equivariance``: the shift equivariance of randomly initialised U-Nets
  (:mod:`equinet.study.equivariance`).

``VARIANTS`` / ``available_variants`` (the strategy table) are importable from here, as the
benchmarks do.
"""

from equinet.study.equivariance import equivariance_main, equivariance_table, format_table, natural_images
from equinet.study.variants import STUDY_VARIANTS, VARIANTS, available_variants


def study_main(argv=None) -> None:
    """``equinet study ...`` (imported lazily: Lightning is only needed when a study runs)."""
    from equinet.study.cli import main

    main(argv)


__all__ = [
    "STUDY_VARIANTS",
    "VARIANTS",
    "available_variants",
    "equivariance_main",
    "equivariance_table",
    "format_table",
    "natural_images",
    "study_main",
]
