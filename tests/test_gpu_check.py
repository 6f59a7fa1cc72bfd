"""experiments/gpu_check.py: its --help, a few of its step functions on the CPU, and (slow) the whole
``--device cpu --quick`` run with its one report file."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["WANDB_MODE"] = "offline"
    return env


def test_help_lists_the_options_and_every_step():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120,
                          env=_env(), check=True)
    for text in ("--device", "--quick", "--out", "--only", "--strict", "exactness", "host_syncs", "ddp"):
        assert text in proc.stdout, text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_without_a_gpu_says_what_to_run_instead(tmp_path, capsys):
    assert _module().main(["--device", "cuda", "--out", str(tmp_path)]) == 2
    assert '--device cpu --quick' in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


@pytest.mark.filterwarnings("ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*")
def test_training_step_function_fires_the_warning_for_bf16_only():
    rows = _module().training_rows("cpu", True, precisions=("32-true", "bf16-mixed"), networks=["aps"], steps=1)
    assert [r[:3] for r in rows] == [["aps", "32-true", 1], ["aps", "bf16-mixed", 1]]
    assert all(math.isfinite(r[3]) and r[-1] == "ok" for r in rows)
    assert [r[5] for r in rows] == ["no", "yes"]


def test_exactness_step_function_and_report(tmp_path):
    mod = _module()
    rows = mod.exactness_rows("cpu", True, names=["aps"])
    assert rows[0][:3] == ["UNet aps", "init", 16] and rows[0][3] <= 1e-12 and rows[0][-1] == "ok"
    assert rows[1][1] == "init, bf16 autocast" and rows[1][-1] == "measured"
    step = mod.Step("exactness")
    step.table(("network", "worst NMSE"), [[r[0], r[3]] for r in rows])
    mod.write_report([step], tmp_path / "report.md", "cpu", True, 1.0)
    text = (tmp_path / "report.md").read_text()
    assert "| exactness | ok |" in text and "| UNet aps |" in text


def test_benchmark_options_another_branch_lacks_are_dropped(tmp_path):
    script = tmp_path / "bench.py"
    script.write_text("import argparse\np = argparse.ArgumentParser()\np.add_argument('--device')\n"
                      "p.add_argument('--size')\np.parse_args()\n")
    assert _module()._supported(script, ["--device", "cpu", "--depths", "1", "2", "--size", "32"], "cpu") == [
        "--device", "cpu", "--size", "32"]


def test_a_step_keeps_the_scripts_table_not_lightnings_banner(tmp_path):
    """The report keeps a script's stdout table even when Lightning prints its banner to stderr after it
    (the host_syncs step once showed only 'GPU available: False' lines)."""
    mod = _module()
    script = tmp_path / "noisy.py"
    script.write_text("import sys\nprint('| network | syncs |')\nprint('| APS | 1 |')\n"
                      "for _ in range(30):\n    print('GPU available: False, used: False', file=sys.stderr)\n"
                      "    print('`Trainer.fit` stopped: `max_steps=2` reached.', file=sys.stderr)\n")
    step = mod.Step("noisy")
    assert mod._run(step, [sys.executable, str(script)], timeout=60, device="cpu", tail=5) == 0
    assert "| APS | 1 |" in step.lines and not any("GPU available" in ln for ln in step.lines)


@pytest.mark.slow
def test_quick_cpu_run_exits_0_and_writes_one_report(tmp_path):
    """What `make gpu-check GPU_CHECK_ARGS="--device cpu --quick"` runs (<= 5 min on 2 cores)."""
    out = tmp_path / "gpu-check"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env=_env(), check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert [p.name for p in out.iterdir()] == ["report.md"]
    report = (out / "report.md").read_text()
    for name in _module().STEPS:
        assert f"## {name} (" in report, name
    assert "| fail |" not in report


def test_environment_step_and_the_time_budget(tmp_path):
    mod = _module()
    assert mod.main(["--device", "cpu", "--only", "environment", "--out", str(tmp_path)]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "| environment | ok |" in report and "torch.backends.cudnn.allow_tf32" in report
    assert mod.main(["--device", "cpu", "--only", "environment", "--budget", "-1", "--out", str(tmp_path)]) == 0
    assert "| environment | skipped |" in (tmp_path / "report.md").read_text()
    assert mod.main(["--device", "cpu", "--only", "environment", "--budget", "-1", "--strict", "--out",
                     str(tmp_path)]) == 1
