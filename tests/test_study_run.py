"""``equinet study`` end to end: a few-step two-variant study, resuming a
killed study, ``--only`` + ``collect``, and the shipped fastMRI/LoDoPaB study configs on data
generated in the real formats (PD/PDFS split, OOD columns)."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from _study_helpers import read_results, tiny_study, write_config
from PIL import Image
from _lightning_helpers import REPO, cli_env, equinet_cmd

from equinet.study.cli import main as study_cli
from equinet.study.cli import run_study
from equinet.study.results import COLUMNS

pytestmark = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*",
    "ignore:.*smaller than the logging interval.*",
    "ignore:.*GPU available but not used.*",
    "ignore:.*max_steps.*",
    "ignore:.*no last checkpoint available.*",
    'ignore:.*ckpt_path="last".*',
    "ignore:.*could not find the monitored key.*",
)


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _run(config_path, folder, *extra):
    lines = []
    run_study(["--config", str(config_path), "--dir", str(folder), *extra], log=lines.append)
    return lines


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_variant_study_writes_tables_figures_and_run_folders_and_reads_them_back(
    tmp_path, knee, imagenet
):
    config = write_config(tmp_path / "tiny.yaml", tiny_study(knee, imagenet))
    folder = tmp_path / "study"
    old_umask = os.umask(0o022)
    try:
        log = _run(config, folder)
    finally:
        os.umask(old_umask)
    # a team shares study folders: every file and folder has the umask's mode (0644 / 0755)
    wrong = {
        str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777)
        for p in folder.rglob("*")
        if not p.is_symlink() and p.stat().st_mode & 0o777 != (0o755 if p.is_dir() else 0o644)
    }
    assert not wrong, wrong
    assert [line.split(":")[0] for line in log if ": starting" in line] == [
        "[1/3] input",
        "[2/3] baseline",
        "[3/3] APS",
    ]
    assert sum(": finished in" in line for line in log) == 3 and "| APS | 0 |" in log[-1]

    with open(folder / "results.csv") as f:
        reader = csv.DictReader(f)
        rows = {r["variant"]: r for r in reader}
        assert list(reader.fieldnames[: len(COLUMNS)]) == list(COLUMNS)
    assert list(rows) == ["input", "baseline", "APS"]
    for extra in ("psnr_pd", "psnr_pdfs", "ssim_pd", "nmse_pdfs", "eq_nmse_pd", "eq_ssim_pdfs"):
        assert extra in reader.fieldnames  # the knee test split holds one PD and one PDFS volume
    aps, base, inp = rows["APS"], rows["baseline"], rows["input"]
    assert (
        float(aps["eq_nmse"]) <= 1e-12
        and float(aps["eq_nmse_ood"]) <= 1e-12
        and float(aps["worst_dpsnr"]) <= 1e-4
    )
    assert float(aps["eq_ssim"]) == pytest.approx(1.0, abs=1e-9)
    assert float(base["eq_nmse"]) > 1e-12 and float(base["worst_dpsnr"]) > 0
    assert base["step_time_ratio"] == base["peak_mem_ratio"] == "1.0" and float(aps["peak_mem_ratio"]) > 0
    assert int(aps["params"]) == int(base["params"]) > 0 and float(base["train_minutes"]) > 0
    assert inp["eq_nmse"] == "" and inp["params"] == "0" and float(inp["psnr"]) > 0
    # the PD/PDFS columns are the per-acquisition means of the test volumes
    with open(folder / "runs" / "APS" / "test_volumes.csv") as f:
        volumes = list(csv.DictReader(f))
    assert sorted(v["group"] for v in volumes) == ["PD", "PDFS"]
    pd = next(v for v in volumes if v["group"] == "PD")
    assert float(aps["psnr_pd"]) == pytest.approx(float(pd["psnr"]), rel=1e-12)
    assert float(aps["psnr"]) == pytest.approx(np.mean([float(v["psnr"]) for v in volumes]), rel=1e-12)
    # the worst |dPSNR| per volume (the reference code's convention): the mean over volumes, beside
    # the per image one (the max over images)
    with open(folder / "runs" / "baseline" / "test_volumes.csv") as f:
        per_volume = [float(v["worst_dpsnr_volume"]) for v in csv.DictReader(f)]
    with open(folder / "runs" / "baseline" / "test_images.csv") as f:
        per_image = [float(v["worst_dpsnr_image"]) for v in csv.DictReader(f)]
    assert float(base["worst_dpsnr_volume"]) == pytest.approx(np.mean(per_volume), rel=1e-12) and max(per_volume) > 0
    assert float(base["worst_dpsnr"]) == max(per_image) and float(aps["worst_dpsnr_volume"]) <= 1e-4
    assert inp["worst_dpsnr_volume"] == "" and inp["worst_dpsnr"] == ""

    md = (folder / "results.md").read_text()
    for heading in (
        "Equivariance and reconstruction",
        "PD volumes only",
        "PDFS volumes only",
        "Worst-case shift",
        "Out of distribution",
        "Cost",
        "## Columns",
        "- dataset: FastMRIDataModule",
        "- seed: 0",
        "| variant | per image, max over images (dB) | per volume, mean over volumes (dB) |",
        "- `worst_dpsnr_volume`: ",
    ):
        assert heading in md
    figures = sorted(p.name for p in (folder / "figures").iterdir())
    assert figures == [
        "equivariance.png",
        "psnr_vs_equivariance.png",
        "shift_example.png",
        "upsampling_modes.png",
    ]
    for name in figures:
        with Image.open(folder / "figures" / name) as im:
            assert im.format == "PNG" and im.size[0] > 300
    for variant in ("baseline", "APS"):
        run = folder / "runs" / variant
        for name in (
            "checkpoints/last.ckpt",
            "test_summary.md",
            "test_volumes.csv",
            "test_images.csv",
            "study.json",
            "study_example.npz",
        ):
            assert (run / name).is_file(), f"{variant}: {name}"
    with np.load(folder / "runs" / "APS" / "study_example.npz") as example:
        assert tuple(example["shift"]) == (8, 5)
        assert float(example["psnr_shifted"]) == pytest.approx(float(example["psnr"]), abs=1e-6)
        assert np.allclose(
            np.roll(example["output"], (8, 5), axis=(0, 1)), example["shifted_output"], atol=1e-5
        )

    # the same command again: everything is read back, nothing retrained or re-evaluated
    stamps = {
        p: (p.stat().st_mtime_ns, _digest(p))
        for p in folder.rglob("*")
        if p.is_file() and p.suffix in (".ckpt", ".csv", ".json", ".npz") and p.parent.name != "study"
    }
    again = _run(config, folder)
    assert sum("finished earlier, results read back" in line for line in again) == 3
    assert not any(": starting" in line for line in again)
    assert all((p.stat().st_mtime_ns, _digest(p)) == s for p, s in stamps.items() if "results" not in p.name)
    assert read_results(folder) == {
        k: {c: v for c, v in r.items() if c not in ("train_minutes", "step_time_ratio")}
        for k, r in rows.items()
    }


def test_bad_requests_fail_before_any_training(tmp_path, knee, imagenet, capsys):
    config = write_config(tmp_path / "tiny.yaml", tiny_study(knee, imagenet, variants=("baseline", "APS-9")))
    with pytest.raises(SystemExit) as err:
        study_cli(["--config", str(config), "--dir", str(tmp_path / "s")])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "unknown variant(s) ['APS-9']" in message and "orthogonal-adaptive" in message
    assert not (tmp_path / "s").exists()  # nothing written
    config = write_config(tmp_path / "tiny2.yaml", tiny_study(knee, imagenet))
    with pytest.raises(SystemExit):
        study_cli(["--config", str(config), "--dir", str(tmp_path / "s"), "--data.init_args.crop_size", "30"])
    assert "crop_size is 30" in capsys.readouterr().err and not (tmp_path / "s").exists()
    study_cli(["variants"])
    assert "orthogonal-adaptive" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        study_cli(["collect", str(tmp_path)])
    assert "not a study folder" in capsys.readouterr().err


@pytest.mark.slow
def test_only_twice_then_collect_equals_one_combined_run(tmp_path, knee, imagenet):
    config = write_config(
        tmp_path / "tiny.yaml", tiny_study(knee, imagenet, variants=("baseline", "LPF-3", "APS"))
    )
    split = tmp_path / "split"
    _run(config, split, "--only", "APS", "--no-collect")
    _run(config, split, "--only", "baseline", "LPF-3", "--no-collect")
    study_cli(["collect", str(split)])
    combined = tmp_path / "combined"
    _run(config, combined)
    a, b = read_results(split), read_results(combined)
    assert list(a) == list(b) == ["input", "baseline", "LPF-3", "APS"]
    assert a == b  # every column but the timing ones, to the last digit
    # the cost ratio of a variant run alone is still against the baseline, measured beside it
    cost = json.loads((split / "runs" / "APS" / "study.json").read_text())["cost"]
    assert cost["reference"] == "baseline" and cost["reference_peak_bytes"] > 0


@pytest.mark.slow
def test_killed_study_resumes_without_retraining_what_finished(tmp_path, knee, imagenet, caplog):
    """SIGKILL in the third variant's second epoch (after two variants finished): the re-run reads
    the two back untouched and resumes the third from its last checkpoint."""
    marker = tmp_path / "killed"
    kill = {
        "class_path": "_study_helpers.KillOnce",
        "init_args": {"variant": "LPS", "marker": str(marker), "epoch": 1},
    }
    config = write_config(
        tmp_path / "tiny.yaml",
        tiny_study(knee, imagenet, variants=("baseline", "APS", "LPS"), steps=9, callbacks=[kill]),
    )
    folder = tmp_path / "study"
    proc = subprocess.run(
        equinet_cmd("study", "--config", str(config), "--dir", str(folder)),
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == -9 and marker.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[3/4] APS: finished" in proc.stdout and "[4/4] LPS: starting" in proc.stdout
    finished = {
        v: {p: (p.stat().st_mtime_ns, _digest(p)) for p in (folder / "runs" / v).rglob("*") if p.is_file()}
        for v in ("input", "baseline", "APS")
    }
    assert (folder / "runs" / "LPS" / "checkpoints" / "last.ckpt").is_file()
    assert (
        not (folder / "runs" / "LPS" / "test_volumes.csv").exists() and not (folder / "results.csv").exists()
    )

    log = _run(config, folder)
    assert [line.split(":")[0] for line in log if "finished earlier" in line] == [
        "[1/4] input",
        "[2/4] baseline",
        "[3/4] APS",
    ]
    for variant, files in finished.items():  # not retrained, not re-evaluated
        assert {p: (p.stat().st_mtime_ns, _digest(p)) for p in files} == files, variant
    info = json.loads((folder / "runs" / "LPS" / "study.json").read_text())
    assert info["fit_attempts"] == 2  # the interrupted run was continued, from its checkpoint:
    last = folder / "runs" / "LPS" / "checkpoints" / "last.ckpt"
    assert f"Restoring states from the checkpoint path at {last}" in caplog.text
    ckpt = torch.load(
        folder / "runs" / "LPS" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    assert ckpt["global_step"] == 9
    assert list(read_results(folder)) == ["input", "baseline", "APS", "LPS"]


def _shipped(name, root, imagenet, *extra):
    return [
        "--config",
        str(REPO / "experiments" / "study" / f"{name}.yaml"),
        "--data.init_args.root",
        str(root),
        "--variants",
        "[baseline, APS]",
        "--trainer.max_epochs",
        "1",
        "--trainer.max_steps",
        "-1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.enable_progress_bar",
        "false",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.batch_size",
        "4",
        "--data.init_args.crop_size",
        "32",
        "--model.network.init_args.channels",
        "4",
        "--model.network.init_args.depth",
        "2",
        "--equivariance.num_dpsnr_shifts",
        "2",
        "--images.num_images",
        "0",
        "--ood.data.init_args.root",
        str(imagenet),
        "--ood.data.init_args.num_images",
        "3",
        "--ood.data.init_args.crop_size",
        "32",
        "--ood.data.init_args.batch_size",
        "4",
        "--ood.data.init_args.num_workers",
        "0",
        "--cost.repeats",
        "1",
        "--cost.warmup",
        "0",
        "--threads",
        "1",
        *extra,
    ]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fastmri", "lodopab"])
def test_shipped_paper_studies_run_on_real_format_data(name, tmp_path, knee, lodopab, imagenet):
    root = {"fastmri": knee, "lodopab": lodopab}[name]
    extra = (
        [
            "--ood.data.init_args.ct_image_size",
            "40",
            "--ood.data.init_args.ct_num_angles",
            "60",
            "--ood.data.init_args.fbp",
            "torch",
            "--ood.data.init_args.data_dir",
            str(tmp_path / "cache"),
        ]
        if name == "lodopab"
        else []
    )
    folder = tmp_path / "study"
    log = []
    run_study(_shipped(name, root, imagenet, *extra) + ["--dir", str(folder)], log=log.append)
    rows = read_results(folder)
    assert list(rows) == ["input", "baseline", "APS"]
    aps, base = rows["APS"], rows["baseline"]
    for col in (
        "psnr",
        "ssim",
        "nmse",
        "eq_nmse",
        "eq_ssim",
        "eq_nmse_ood",
        "eq_ssim_ood",
        "worst_dpsnr",
        "params",
        "peak_mem_ratio",
    ):
        assert aps[col] != "" and base[col] != "", col
    assert float(aps["eq_nmse"]) <= 1e-12 and float(aps["eq_nmse_ood"]) <= 1e-12
    groups = {"fastmri": {"psnr_pd", "psnr_pdfs", "eq_nmse_pd", "eq_nmse_pdfs"}, "lodopab": set()}[name]
    assert groups <= set(aps) and (name == "fastmri" or not any(c.endswith(("_pd", "_pdfs")) for c in aps))
    md = (folder / "results.md").read_text()
    assert ("PD volumes only" in md) == (name == "fastmri") and "Out of distribution" in md
    ood = (folder / "study.yaml").read_text()
    assert ("forward_model: ct" in ood) == (name == "lodopab")


@pytest.mark.slow
def test_runs_on_two_devices_go_to_their_own_processes(tmp_path, knee, imagenet):
    """DDP over 2 CPU ranks (gloo): each fit/test is its own `python -m equinet` process, whose
    launcher re-executes that command per rank; the study's results are the same kind of rows."""
    config = tiny_study(knee, imagenet, variants=("APS",))
    config["run"]["trainer"].update({"devices": 2, "strategy": "ddp"})
    path = write_config(tmp_path / "ddp.yaml", config)
    env = {k: v for k, v in cli_env().items()}
    saved = dict(os.environ)
    os.environ.update(env)  # the subprocesses find this checkout and the test helpers
    try:
        log = _run(path, tmp_path / "study")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert "as subprocesses" in log[0]
    rows = read_results(tmp_path / "study")
    assert float(rows["APS"]["eq_nmse"]) <= 1e-12 and rows["APS"]["psnr_pd"] != ""
    summary = (tmp_path / "study" / "runs" / "APS" / "test_summary.md").read_text()
    assert "world size: 2" in summary


@pytest.mark.slow  # three runs in spawned workers, ~35 s: make test-all
def test_two_workers_give_the_results_of_one(tmp_path, knee, imagenet):
    """``--workers 2`` runs the variants side by side in worker processes; ``results.csv`` is the
    one-worker study's to the last digit (threads per run do not depend on the workers), and the
    console shows one start and one finish line per run, then the study's wall/CPU time."""
    config = write_config(tmp_path / "tiny.yaml", tiny_study(knee, imagenet, variants=("baseline", "APS")))
    one = _run(config, tmp_path / "one", "--workers", "1")
    two = _run(config, tmp_path / "two", "--workers", "2")
    a, b = read_results(tmp_path / "one"), read_results(tmp_path / "two")
    assert list(a) == ["input", "baseline", "APS"] and a == b
    assert "2 worker processes side by side" in two[0] and "in this process" in one[0]
    for variant in ("input", "baseline", "APS"):
        assert sum(f"] {variant}: starting" in line for line in two) == 1, two
        assert sum(f"] {variant}: finished in" in line for line in two) == 1, two
        assert (tmp_path / "two" / "logs" / f"{variant}.log").stat().st_size > 0
    timing = [line for line in two if line.startswith("study time:")]
    assert len(timing) == 1 and "CPU / wall = " in timing[0] and "2 worker(s)" in timing[0], two
