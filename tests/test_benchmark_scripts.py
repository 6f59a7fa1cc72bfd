"""Every benchmark script in experiments/benchmarks/ starts: imports resolve and ``--help`` prints.

The scripts run only by hand (``make bench``), so a broken import or help string would otherwise
surface only when a user tries to measure something.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = sorted(p for p in (Path(__file__).resolve().parents[1] / "experiments" / "benchmarks").glob("*.py")
                    if not p.name.startswith("_"))


def test_make_bench_runs_every_benchmark_script():
    """A script ``make bench`` does not run is a measurement nobody repeats; one it names must exist."""
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    ran = re.findall(r"experiments/benchmarks/(\w+\.py)", recipe)
    assert BENCHMARKS and sorted(ran) == sorted(p.name for p in BENCHMARKS), (ran, [p.name for p in BENCHMARKS])


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_benchmark_script_prints_help(script):
    done = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout and "--" in done.stdout
