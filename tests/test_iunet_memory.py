"""The memory benchmark (issues 5 and 12), run in-process; slow (a few minutes)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"))


@pytest.mark.slow
def test_memory_efficient_peak_does_not_grow_with_depth_and_beats_the_anchors():
    import iunet_memory

    summary = iunet_memory.main(["--depths", "2", "8", "--repeats", "3"])
    # what grows from 2 to 8 blocks is the parameter gradients (4.5 MiB), not the activations
    assert summary["me_activation_growth"] <= 1.05
    assert summary["plain_peak_growth"] >= 2.0  # plain backprop grows (about linearly) with depth
    for depth in (2, 8):  # <= 0.8x iunets + memcnn, plain <= iunets plain (the figures)
        assert summary["me_vs_memcnn"][depth] <= 0.8
        assert summary["plain_vs_iunets"][depth] <= 1.0
    # timing on a shared CI host is too noisy for a hard bound; the benchmark prints the ratio
