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


@pytest.fixture(scope="module")
def helps():
    """Every script's ``--help``, the scripts started side by side (each one mostly imports torch)."""
    running = {p.name: subprocess.Popen([sys.executable, str(p), "--help"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True) for p in BENCHMARKS}
    return {name: (proc, *proc.communicate(timeout=180)) for name, proc in running.items()}


@pytest.mark.parametrize("script", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_benchmark_script_prints_help(script, helps):
    proc, stdout, stderr = helps[script.name]
    assert proc.returncode == 0, stderr[-2000:]
    assert "usage:" in stdout and "--" in stdout
