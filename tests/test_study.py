"""The demo (`equinet equivariance`) and the `equinet` command dispatcher."""

import os
import subprocess
import sys

import pytest

from equinet.cli import main
from equinet.study import available_variants, equivariance_main, equivariance_table, format_table


def test_equivariance_table_separates_aps_from_maxpool():
    rows = equivariance_table(["maxpool", "LPF-3", "APS-3", "LPS"], size=32, channels=4, depth=2, num_shifts=3)
    by = {r["variant"]: r for r in rows}
    assert by["APS-3"]["nmse_max"] <= 1e-12 and by["LPS"]["nmse_max"] <= 1e-12
    assert by["maxpool"]["nmse_max"] > 1e-9 and by["LPF-3"]["nmse_max"] > 1e-12
    table = format_table(rows)
    assert table.count("\n") == len(rows) + 1 and "| APS-3 |" in table


def test_equivariance_command_prints_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "sub" / "table.md"
    equivariance_main(["--variants", "maxpool", "APS", "--size", "32", "--channels", "4", "--depth", "2",
                       "--shifts", "2", "--output", str(out)])
    printed = capsys.readouterr().out
    assert "| APS |" in printed and out.read_text().strip().endswith(printed.strip().splitlines()[-1])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".tmp-")]


def test_every_strategy_variant_is_listed():
    assert {"maxpool", "LPF-3", "APS", "APS-5", "LPS"} <= set(available_variants())


def test_python_dash_m_equinet_runs():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    done = subprocess.run([sys.executable, "-m", "equinet", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and "usage: equinet" in done.stdout
