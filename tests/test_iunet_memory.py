"""The memory benchmark (issue 5, Must-show 3), run in-process; slow (about a minute)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))


@pytest.mark.slow
def test_memory_efficient_peak_does_not_grow_with_depth():
    import iunet_memory

    summary = iunet_memory.main(["--depths", "2", "8", "--repeats", "3"])
    assert summary["me_peak_growth"] <= 1.15
    assert summary["plain_peak_growth"] >= 2.0  # plain backprop grows (about linearly) with depth
    # timing on a shared CI host is too noisy for a hard bound; the benchmark prints the ratio
