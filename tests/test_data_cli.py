"""``equinet data ...``: synth writes the real formats, refuses to overwrite; check and fbp-cache run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from equinet.data import FastMRIDataModule, ImageNetShiftDataModule, LoDoPaBDataModule
from equinet.data.cli import main

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    return subprocess.run(
        [sys.executable, "-m", "equinet", "data", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_synth_through_the_equinet_command(tmp_path):
    out = tmp_path / "knee"
    result = run_cli(
        "synth",
        "--kind",
        "knee",
        "--out",
        str(out),
        "--num",
        "1",
        "--num-val",
        "1",
        "--num-test",
        "1",
        "--size",
        "16",
        "--slices",
        "2",
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 files" in result.stdout
    dm = FastMRIDataModule(root=str(out), crop_size=16, data_dir=str(tmp_path))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (2, 2, 2)


def test_help_and_refusal_to_overwrite(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "synth" in capsys.readouterr().out
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--kind", "knee", "--out", str(tmp_path / "full"), "--num", "1"])
    assert exit_info.value.code == 1
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "user data"


def test_synth_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--kind", "--out", "--num", "--size", "knee", "lodopab", "imagenet"):
        assert option in text


def test_synth_lodopab_default_writes_the_real_sizes(tmp_path):
    out = tmp_path / "lodopab"
    main(["synth", "--kind", "lodopab", "--out", str(out), "--num", "1"])
    for part in ("train", "validation", "test"):
        with (
            h5py.File(out / f"ground_truth_{part}_000.hdf5") as gt,
            h5py.File(out / f"observation_{part}_000.hdf5") as obs,
        ):
            assert gt["data"].shape == (128, 362, 362) and obs["data"].shape == (128, 1000, 513)
            assert gt["data"].dtype == obs["data"].dtype == "float32"
            assert gt["data"][0].max() > 0 and not gt["data"][1].any()  # one sample, 127 padding rows


def test_synth_lodopab_padded_tail_and_check_command(tmp_path, capsys):
    out = tmp_path / "lodopab"
    main(
        [
            "synth",
            "--kind",
            "lodopab",
            "--out",
            str(out),
            "--num",
            "5",
            "--size",
            "24",
            "--samples-per-file",
            "2",
        ]
    )
    assert sorted(p.name for p in out.glob("ground_truth_train_*.hdf5")) == [
        f"ground_truth_train_{k:03d}.hdf5" for k in range(3)
    ]
    capsys.readouterr()
    main(["fbp-cache", "--root", str(out), "--backend", "torch"])
    assert "computed 7 images" in capsys.readouterr().out  # 5 + 1 + 1 real rows, padding skipped
    main(["check", "--kind", "lodopab", "--root", str(out), "--crop-size", "24"])
    text = capsys.readouterr().out
    assert "train: 5 samples" in text and "batch: input (1, 1, 24, 24)" in text
    folder = LoDoPaBDataModule(root=str(out), crop_size=24, progress=False).cache_folder("torch")
    assert folder == out / "fbp_cache" / "hann-f1-torch" and len(list(folder.glob("observation_*.hdf5"))) == 5


def test_synth_imagenet_class_layout(tmp_path):
    out = tmp_path / "val"
    main(
        [
            "synth",
            "--kind",
            "imagenet",
            "--out",
            str(out),
            "--num",
            "4",
            "--size",
            "20",
            "--layout",
            "classes",
        ]
    )
    assert len(list(out.glob("n*/ILSVRC2012_val_*.JPEG"))) == 4
    dm = ImageNetShiftDataModule(root=str(out), crop_size=16, forward_model="none", data_dir=str(tmp_path))
    dm.setup()
    assert len(dm.test_set) == 4


def test_check_reports_bad_input_as_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["check", "--kind", "lodopab", "--root", str(tmp_path / "empty")])
    assert exit_info.value.code == 1
    assert "holds no LoDoPaB files" in capsys.readouterr().err


def test_fbp_cache_prints_its_summary_once_and_check_builds_the_cache_once(
    tmp_path, capsys, caplog, monkeypatch
):
    out = tmp_path / "lodopab"
    main(f"synth --kind lodopab --out {out} --num 3 --size 24 --samples-per-file 2".split())
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="equinet.data"):
        main(["fbp-cache", "--root", str(out), "--backend", "torch"])
    printed = capsys.readouterr().out
    summaries = printed.count("FBP cache: ") + caplog.text.count("FBP cache: ")
    assert summaries == 1 and "computed 5 images" in printed and str(out / "fbp_cache") in printed
    caplog.clear()
    builds = []
    real_build = LoDoPaBDataModule.build_fbp_cache
    monkeypatch.setattr(
        LoDoPaBDataModule,
        "build_fbp_cache",
        lambda self, *a, **k: builds.append(a) or real_build(self, *a, **k),
    )
    with caplog.at_level(logging.INFO, logger="equinet.data"):
        main(["check", "--kind", "lodopab", "--root", str(out), "--crop-size", "24"])
    assert len(builds) == 1 and caplog.text.count("FBP cache: ") == 1
    assert "train: 3 samples" in capsys.readouterr().out


def test_synth_lodopab_shows_a_progress_bar(tmp_path):
    result = run_cli(
        "synth", "--kind", "lodopab", "--out", str(tmp_path / "l"), "--num", "3", "--size", "16",
        "--samples-per-file", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "synthetic LoDoPaB:" in result.stderr and "/5 [" in result.stderr  # 3 + 1 + 1 samples
