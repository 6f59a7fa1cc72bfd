"""The demo study (`make demo`) trains every variant and shows the APS-U
paper's picture -- the slow test runs it end to end exactly as shipped and asserts the numbers."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import time

import pytest
import torch
from _lightning_helpers import REPO

from equinet.study.cli import run_study
from equinet.study.plan import check_study, load_study
from equinet.study.variants import STUDY_VARIANTS

EXACT = ("APS", "LPS", "orthogonal-adaptive")


def test_make_demo_runs_a_valid_study_of_every_variant():
    """``make demo``'s command (as make expands it) is ``equinet study`` on a config that passes the
    study's pre-flight checks and trains one variant of every strategy the study compares."""
    done = subprocess.run(["make", "-n", "-s", "demo"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, MAKEFLAGS=""))
    assert done.returncode == 0, done.stderr
    command = shlex.split(done.stdout.strip().splitlines()[-1])
    assert command[1:4] == ["-m", "equinet", "study"], command
    study = load_study(REPO / command[command.index("--config") + 1], command[command.index("--config") + 2:])
    every_strategy = ["baseline", "baseline+DA", "LPF-3", "APS", "LPS", "orthogonal", "orthogonal-adaptive", "iUNet"]
    assert set(every_strategy) <= set(STUDY_VARIANTS)
    assert check_study(study) == every_strategy


@pytest.mark.slow
@pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:.*smaller than the logging interval.*",
    "ignore:.*no last checkpoint available.*",
    'ignore:.*ckpt_path="last".*',
    "ignore:.*max_unpooling2d_forward_out does not have a deterministic.*",
)
def test_demo_study_shows_the_papers_picture(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EQUINET_DATA_DIR", str(tmp_path / "data"))  # generated afresh, as on a new clone
    threads = torch.get_num_threads()
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        folder = run_study(
            ["--config", str(REPO / "experiments" / "study" / "demo.yaml"), "--dir", str(tmp_path / "demo")]
        )
    finally:
        torch.set_num_threads(threads)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    with open(folder / "results.csv") as f:
        rows = {
            r["variant"]: {
                k: (float(v) if v not in ("", None) and k not in ("variant", "strategy") else v)
                for k, v in r.items()
            }
            for r in csv.DictReader(f)
        }
    with capsys.disabled():
        print(f"\ndemo study: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU of this process")
        print((folder / "results.md").read_text().split("## Worst")[0])
    required = {"input", "baseline", "baseline+DA", "APS", "LPS", "orthogonal-adaptive", "iUNet"}
    assert required <= set(rows) and any(v.startswith("LPF-") for v in rows)
    for name in (
        "results.csv",
        "results.md",
        "figures/equivariance.png",
        "figures/psnr_vs_equivariance.png",
        "figures/shift_example.png",
        "figures/upsampling_modes.png",
    ):
        assert (folder / name).is_file(), name
    for v in EXACT:  # exactly shift-equivariant, in and out of distribution, and in the worst case
        assert rows[v]["eq_nmse"] <= 1e-12 and rows[v]["eq_nmse_ood"] <= 1e-12, v
        assert rows[v]["worst_dpsnr"] <= 1e-4, v
    base = rows["baseline"]
    assert base["eq_nmse"] >= 1e-3  # trained: far from the ~1e-7 of a random-init maxpool U-Net
    for v in [v for v in rows if v.startswith("LPF-")] + ["baseline+DA"]:  # help, but not exact
        assert rows["APS"]["eq_nmse"] < rows[v]["eq_nmse"] < base["eq_nmse"], v
    assert abs(rows["APS"]["psnr"] - base["psnr"]) <= 1.0
    for v, row in rows.items():  # every network learned something (the knee is visibly restored)
        if v != "input":
            assert row["psnr"] >= rows["input"]["psnr"] + 1.0, v
            assert row["ssim"] >= rows["input"]["ssim"] + 0.10, v
