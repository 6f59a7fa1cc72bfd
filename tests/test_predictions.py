"""``equinet predict`` writes fastMRI-format reconstructions into the run folder that
``fastmri.evaluate`` reads back and scores -- the same numbers as ``equinet test`` -- and one HDF5
per LoDoPaB part in the order of the part's samples.
"""

from __future__ import annotations

import csv
import logging
from argparse import Namespace

import h5py
import numpy as np
import pytest
import torch
from _lightning_helpers import REPO, run_cli

from equinet.lightning import ReconstructionModule
from equinet.lightning.predictions import submission_name

CONFIG = str(REPO / "experiments" / "configs" / "synthetic" / "maxpool.yaml")
quiet = pytest.mark.filterwarnings(
    "ignore:.*does not have many workers.*", "ignore:.*smaller than the logging interval.*"
)


def _args(group, root, *extra):
    """The shipped synthetic config on real-format files at ``root`` (32x32 images), run ``a``."""
    return [
        "--config",
        CONFIG,
        "--data.init_args.synthetic",
        "false",
        "--data.root",
        str(root),
        "--data.init_args.crop_size",
        "32",
        "--trainer.default_root_dir",
        str(group),
        "--run.name",
        "a",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        "[]",
        "--equivariance.num_dpsnr_shifts",
        "0",
        *extra,
    ]


@quiet
def test_fastmri_predictions_are_scored_by_fastmri_evaluate_like_equinet_test(knee, tmp_path, caplog):
    from fastmri.evaluate import evaluate

    group = tmp_path / "runs"
    run_cli("fit", *_args(group, knee), "--trainer.max_epochs", "1")
    run_cli("test", *_args(group, knee), "--ckpt_path", "last")
    with caplog.at_level(logging.INFO):
        run_cli("predict", *_args(group, knee), "--ckpt_path", "last")
    out = group / "a" / "reconstructions"
    assert f"equinet: wrote 2 reconstruction files (fastmri format) to {out}" in caplog.text

    targets = knee / "singlecoil_test"
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in targets.iterdir())  # nothing else
    for target in targets.iterdir():
        with h5py.File(out / target.name, "r") as hf, h5py.File(target, "r") as gt:
            assert list(hf) == ["reconstruction"]
            recon = hf["reconstruction"]
            assert recon.dtype == np.float32 and recon.shape == gt["reconstruction_esc"].shape  # all slices
            # original units (de-normalised): same scale as the target
            assert 0.5 < float(np.abs(recon[()]).mean() / np.abs(gt["reconstruction_esc"][()]).mean()) < 2

    metrics = evaluate(
        Namespace(
            target_path=targets,
            predictions_path=out,
            challenge="singlecoil",
            acquisition=None,
            acceleration=None,
        ),
        "reconstruction_esc",
    )
    with open(group / "a" / "test_volumes.csv") as f:
        ours = list(csv.DictReader(f))
    assert len(ours) == 2
    for name in ("nmse", "psnr", "ssim"):  # fastMRI's evaluation of the files == equinet test's numbers
        ours_mean = float(np.mean([float(r[name]) for r in ours]))
        assert metrics.means()[name.upper()] == pytest.approx(ours_mean, rel=1e-4, abs=1e-6), name


@quiet
def test_lodopab_predictions_one_file_per_part_in_sample_order(lodopab, tmp_path):
    from equinet.data import LoDoPaBDataModule

    group = tmp_path / "runs"
    config = str(REPO / "experiments" / "configs" / "lodopab" / "maxpool.yaml")
    common = [
        "--config",
        config,
        "--data.root",
        str(lodopab),
        "--data.init_args.crop_size",
        "32",
        "--data.init_args.num_workers",
        "0",
        "--data.init_args.batch_size",
        "1",
        "--data.init_args.progress",
        "false",
        "--model.network.init_args.channels",
        "2",
        "--trainer.default_root_dir",
        str(group),
        "--run.name",
        "ct",
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger",
        "false",
        "--trainer.callbacks",
        "[]",
        "--trainer.sync_batchnorm",
        "false",
    ]
    run_cli(
        "fit",
        *common,
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "1",
        "--trainer.limit_val_batches",
        "1",
    )
    ckpt = group / "ct" / "checkpoints" / "last.ckpt"
    run_cli("predict", *common, "--ckpt_path", "last", "--run.tag", "again")
    out = group / "ct" / "reconstructions-again"
    assert [p.name for p in out.iterdir()] == ["reconstruction_test.hdf5"]

    data = LoDoPaBDataModule(root=str(lodopab), crop_size=32, progress=False)
    data.setup("predict")
    module = ReconstructionModule.load_from_checkpoint(ckpt).eval()
    with h5py.File(out / "reconstruction_test.hdf5", "r") as hf:
        assert hf["data"].shape == (len(data.test_set), 32, 32) and hf["data"].dtype == np.float32
        samples = hf["sample"][()]
        assert samples.tolist() == sorted(samples.tolist())
        for row, sample in enumerate(samples):
            file_index, within = divmod(int(sample), data.layout.samples_per_file)
            item = next(s for s in data.test_set if s.fname == f"ground_truth_test_{file_index:03d}:{within}")
            with torch.no_grad():
                want = module(item.input[None])[0, 0] * item.std + item.mean
            np.testing.assert_allclose(hf["data"][row], want.numpy(), rtol=1e-5, atol=1e-6)


def test_submission_names():
    assert submission_name("file1000001.h5") == "file1000001.h5"
    assert submission_name("ILSVRC2012_val_00000001.JPEG") == "ILSVRC2012_val_00000001.JPEG.h5"
    assert (
        submission_name("n01440764/ILSVRC2012_val_00000293.JPEG")
        == "n01440764__ILSVRC2012_val_00000293.JPEG.h5"
    )
