"""The DataModules on generated files in the real formats: shapes, dtypes, ranges, identities."""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import platformdirs
import pytest
import pytorch_lightning as pl
import torch
from _data_helpers import IMAGENET, KNEE, LODOPAB, psnr
from fastmri.data import SliceDataset
from fastmri.data.transforms import UnetDataTransform
from torch.utils.data import DistributedSampler

from equinet.data import (
    FastMRIDataModule,
    ImageNetShiftDataModule,
    LoDoPaBDataModule,
    ReconSample,
    ct,
    data_dir,
    synthetic,
)
from equinet.data.lodopab import LODOPAB_NUM_SAMPLES, scan_lodopab, valid_rows
from equinet.data.mri import make_mask_func


def knee_module(root, tmp_path, **kwargs) -> FastMRIDataModule:
    kwargs.setdefault("crop_size", KNEE["size"])
    return FastMRIDataModule(root=str(root), data_dir=str(tmp_path), **kwargs)


def lodopab_module(root, tmp_path, **kwargs) -> LoDoPaBDataModule:
    kwargs.setdefault("crop_size", 28)
    return LoDoPaBDataModule(root=str(root), data_dir=str(tmp_path), progress=False, **kwargs)


def all_samples(loader):
    return [s for batch in loader for s in zip(*[getattr(batch, f) for f in ReconSample._fields])]


def check_batch(batch: ReconSample, size: int) -> None:
    assert isinstance(batch, ReconSample)
    b = batch.input.shape[0]
    for image in (batch.input, batch.target):
        assert image.dtype == torch.float32 and tuple(image.shape) == (b, 1, size, size)
        assert bool(torch.isfinite(image).all())
    for stat in (batch.mean, batch.std, batch.max_value):
        assert stat.dtype == torch.float32 and tuple(stat.shape) == (b,)
    assert bool((batch.std > 0).all()) and bool((batch.max_value > 0).all())
    assert batch.slice_num.dtype == torch.int64 and tuple(batch.slice_num.shape) == (b,)
    assert (
        isinstance(batch.fname, (list, tuple))
        and len(batch.fname) == b
        and all(isinstance(f, str) for f in batch.fname)
    )


# ---------------------------------------------------------------------------------------------
# fastMRI
# ---------------------------------------------------------------------------------------------


def test_synthetic_knee_files_look_like_fastmri_files(knee):
    path = sorted((knee / "singlecoil_train").glob("*.h5"))[0]
    with h5py.File(path, "r") as f:
        size = KNEE["size"]
        assert f["kspace"].dtype == np.complex64 and f["kspace"].shape == (
            KNEE["num_slices"],
            2 * size,
            synthetic.knee_kspace_width(size),
        )
        assert f["reconstruction_esc"].dtype == np.float32 and f["reconstruction_esc"].shape == (
            KNEE["num_slices"],
            size,
            size,
        )
        assert set(f.attrs) >= {"max", "norm", "acquisition", "patient_id"}
        assert f.attrs["max"] == pytest.approx(float(f["reconstruction_esc"][()].max()))
        assert f.attrs["acquisition"] in ("CORPD_FBK", "CORPDFS_FBK")
    assert synthetic.knee_kspace_width(320) == 368
    # fastmri itself parses the header: encoding sizes and the padded phase-encoding range
    sample = SliceDataset(knee / "singlecoil_train", "singlecoil").raw_samples[0]
    assert sample.metadata["encoding_size"] == (2 * size, synthetic.knee_kspace_width(size), 1)
    assert sample.metadata["recon_size"] == (size, size, 1)
    with h5py.File(path, "r") as f:
        kspace = f["kspace"][0]
    left, right = sample.metadata["padding_left"], sample.metadata["padding_right"]
    assert 0 < left < right < kspace.shape[1]
    assert (
        not np.any(kspace[:, :left])
        and not np.any(kspace[:, right:])
        and np.all(np.abs(kspace[:, left:right]).sum(0) > 0)
    )


def test_fastmri_module_shapes_ranges_and_unique_ids(knee, tmp_path):
    dm = knee_module(knee, tmp_path, batch_size=3)
    dm.setup()
    assert len(dm.train_set) == KNEE["num_volumes"] * KNEE["num_slices"]
    assert len(dm.val_set) == KNEE["num_val"] * KNEE["num_slices"]
    assert len(dm.test_set) == KNEE["num_test"] * KNEE["num_slices"]  # singlecoil_test exists: used
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        check_batch(next(iter(loader)), KNEE["size"])
    val = dm.val_dataloader()
    assert len(val) == math.ceil(len(dm.val_set) / 3)  # drop_last=False
    samples = all_samples(val)
    keys = [(s[5], int(s[6])) for s in samples]
    assert len(keys) == len(set(keys)) == len(dm.val_set)
    assert keys == [(s[5], int(s[6])) for s in all_samples(dm.val_dataloader())]  # no shuffle
    for s in samples[:6]:
        with h5py.File(knee / "singlecoil_val" / s[5], "r") as f:
            stored = f["reconstruction_esc"][int(s[6])]
            maxval = f.attrs["max"]
        original = s[1][0] * s[3] + s[2]
        np.testing.assert_allclose(original.numpy(), stored, rtol=1e-4, atol=1e-6 * maxval)
        assert float(s[4]) == pytest.approx(maxval)
        assert float(original.min()) >= -1e-6 * maxval and float(original.max()) <= maxval * (1 + 1e-5)
        assert float(s[0].abs().max()) <= 6.0  # fastMRI clamp of the input


def test_full_mask_reproduces_the_target(knee, tmp_path):
    """The synthetic k-space and reconstruction_esc are consistent: with every column kept the
    zero-filled input *is* the target (an undersampled one is not)."""
    full = knee_module(knee, tmp_path, center_fractions=(0.5,), accelerations=(1,))
    full.setup("validate")
    under = knee_module(knee, tmp_path)
    under.setup("validate")
    for index in range(0, len(full.val_set), 5):
        s = full.val_set[index]
        assert float(s.mean) > 0
        torch.testing.assert_close(s.input, s.target, rtol=1e-4, atol=1e-4)
        u = under.val_set[index]
        assert float(((u.input - u.target) ** 2).mean()) > 1e-3


@pytest.mark.parametrize("root", ["knee", "independent_knee"])
def test_validation_inputs_match_fastmri_reference_transform_bit_for_bit(root, request, tmp_path):
    """Same seeded mask, same zero-filled image and normalisation as fastmri's UnetDataTransform,
    bit for bit, on equinet's synthetic files and on files written without equinet."""
    root = request.getfixturevalue(root)
    dm = knee_module(root, tmp_path, crop_size=32)
    dm.setup("validate")
    reference = SliceDataset(
        root / "singlecoil_val",
        "singlecoil",
        transform=UnetDataTransform("singlecoil", make_mask_func(), use_seed=True),
    )
    assert len(reference) == len(dm.val_set) >= 6
    for index in range(len(reference)):
        ours, theirs = dm.val_set[index], reference[index]
        assert (ours.fname, ours.slice_num) == (theirs.fname, theirs.slice_num)
        assert torch.equal(ours.input[0], theirs.image)
        assert torch.equal(ours.target[0].clamp(-6, 6), theirs.target)  # fastMRI clamps its target
        assert torch.equal(ours.mean, theirs.mean)
        assert torch.equal(ours.std, theirs.std + 1e-11)  # ours is the divisor, eps included
        assert float(ours.max_value) == pytest.approx(theirs.max_value)


def test_train_masks_vary_validation_masks_do_not(knee, tmp_path):
    dm = knee_module(knee, tmp_path)
    dm.setup("fit")
    torch.testing.assert_close(dm.val_set[0].input, dm.val_set[0].input, rtol=0, atol=0)
    draws = [dm.train_set[0].input for _ in range(4)]
    assert any(not torch.equal(draws[0], d) for d in draws[1:])


def test_acquisition_filter_sample_rate_and_crop(knee, tmp_path):
    pd = knee_module(knee, tmp_path, acquisition="CORPD_FBK")
    pd.setup("fit")
    with h5py.File(knee / "singlecoil_train" / pd.train_set.raw_samples[0].fname.name, "r") as f:
        assert f.attrs["acquisition"] == "CORPD_FBK"
    volumes = {s.fname.name for s in pd.train_set.raw_samples}
    assert len(volumes) == 2  # volumes alternate PD / PDFS
    assert all(s.metadata["acquisition"] == "CORPD_FBK" for s in pd.train_set.raw_samples)
    half = [knee_module(knee, tmp_path, sample_rate=0.5, seed=7) for _ in range(2)]
    for dm in half:
        dm.setup("fit")
    picked = [[(s.fname.name, s.slice_ind) for s in dm.train_set.raw_samples] for dm in half]
    assert picked[0] == picked[1]  # seeded: every DDP rank sees the same subset
    assert (
        len({name for name, _ in picked[0]}) == 2 and len(picked[0]) == 2 * KNEE["num_slices"]
    )  # whole volumes
    small = knee_module(knee, tmp_path, crop_size=16)
    small.setup("validate")
    check_batch(next(iter(small.val_dataloader())), 16)


def test_fastmri_module_with_workers(knee, tmp_path):
    dm = knee_module(knee, tmp_path, batch_size=4, num_workers=2)
    dm.setup("validate")
    keys = [(s[5], int(s[6])) for s in all_samples(dm.val_dataloader())]
    assert sorted(keys) == sorted((s.fname.name, s.slice_ind) for s in dm.val_set.raw_samples)


# ---------------------------------------------------------------------------------------------
# LoDoPaB
# ---------------------------------------------------------------------------------------------


def test_padding_rule_for_real_lodopab_counts():
    assert [valid_rows(35820, 128, k) for k in (0, 278, 279, 280)] == [128, 128, 35820 - 279 * 128, 0]
    for total in LODOPAB_NUM_SAMPLES.values():
        files = math.ceil(total / 128)
        assert sum(valid_rows(total, 128, k) for k in range(files + 2)) == total
        assert 0 < valid_rows(total, 128, files - 1) < 128  # every part's last file is padded


def test_lodopab_module_serves_every_real_sample_once_and_no_padding(lodopab, tmp_path):
    dm = lodopab_module(lodopab, tmp_path, batch_size=4)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (
        LODOPAB["num_train"],
        LODOPAB["num_val"],
        LODOPAB["num_test"],
    )
    with h5py.File(lodopab / "ground_truth_train_001.hdf5", "r") as f:  # the padded tail file
        assert f["data"].shape[0] == LODOPAB["samples_per_file"]
        assert not np.any(f["data"][2:]) and np.all(f["data"][:2].max(axis=(1, 2)) > 0)
    samples = all_samples(dm.train_dataloader())
    names = sorted(s[5] for s in samples)
    assert names == sorted(
        [f"ground_truth_train_000:{r}" for r in range(4)] + [f"ground_truth_train_001:{r}" for r in range(2)]
    )
    for s in samples:
        check_batch(
            ReconSample(*[torch.as_tensor(x)[None] if not isinstance(x, str) else [x] for x in s]), 28
        )
        original = s[1] * s[3] + s[2]
        assert float(original.max()) > 0.05  # a padding row (all zeros) would fail this
        assert -1e-5 <= float(original.min()) and float(original.max()) <= 1 + 1e-5  # ground truth in [0, 1]
    for loader in (dm.val_dataloader(), dm.test_dataloader()):
        check_batch(next(iter(loader)), 28)
    assert len(dm.val_dataloader()) == 1


def test_lodopab_geometry_from_files_and_fbp_input_quality(lodopab, tmp_path):
    layout = scan_lodopab(lodopab)
    assert layout.geometry == ct.ParallelBeamGeometry.for_image_size(LODOPAB["size"]) and layout.synthetic
    dm = lodopab_module(lodopab, tmp_path, normalize=False, crop_size=LODOPAB["size"])
    dm.setup("validate")
    report = dm.cache_report
    assert report.backend in ct.available_fbp_backends()
    sample = dm.val_set[0]
    assert float(sample.mean) == 0.0 and float(sample.std) == 1.0
    assert psnr(sample.input.numpy(), sample.target.numpy()) > 22.0  # noisy FBP at 32 px


def test_real_lodopab_layout_without_manifest_uses_published_counts(tmp_path):
    """Files named as the real test part: file 027 is the last and holds 3553 - 27 * 128 = 97
    real rows; without a manifest the loader must take that from the published constants. (The
    small geometry is declared: without a declaration the files would have to be 362 / 1000 x 513.)"""
    root = tmp_path / "lodopab_real_names"
    root.mkdir()
    n, angles, dets = 8, 6, 13
    rng = np.random.default_rng(0)
    for kind, shape in (("ground_truth", (n, n)), ("observation", (angles, dets))):
        data = np.zeros((128, *shape), dtype=np.float32)
        data[:97] = rng.uniform(0.1, 0.9, size=(97, *shape))
        with h5py.File(root / f"{kind}_test_027.hdf5", "w") as f:
            f.create_dataset("data", data=data)
    layout = scan_lodopab(root, ct.ParallelBeamGeometry(n, angles, dets))
    assert not layout.synthetic and [f.num_valid for f in layout.files["test"]] == [97]
    assert layout.geometry == ct.ParallelBeamGeometry(n, angles, dets)
    dm = LoDoPaBDataModule(
        root=str(root), crop_size=n, geometry=(n, angles, dets), data_dir=str(tmp_path), progress=False
    )
    dm.setup("test")
    assert len(dm.test_set) == 97
    assert dm.test_set[96].fname == "ground_truth_test_027:96"
    with pytest.raises(IndexError):
        dm.test_set[97]


def test_lodopab_caches_only_the_parts_a_stage_needs(lodopab, tmp_path):
    dm = lodopab_module(lodopab, tmp_path, fbp="torch", fbp_cache_dir=str(tmp_path / "fbp"))
    dm.setup("test")
    assert dm.cache_report.computed == LODOPAB["num_test"]  # trainer.test does not FBP the training set
    assert sorted(p.name for p in (tmp_path / "fbp").rglob("*.hdf5")) == ["observation_test_000.hdf5"]
    dm.setup("fit")
    assert dm.cache_report.computed == LODOPAB["num_train"] + LODOPAB["num_val"]
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    fresh = lodopab_module(lodopab, tmp_path, fbp="torch", fbp_cache_dir=str(tmp_path / "fbp2"))
    trainer.test(_TinyTestModule(), datamodule=fresh)
    assert sorted(p.name for p in (tmp_path / "fbp2").rglob("*.hdf5")) == ["observation_test_000.hdf5"]


def test_lodopab_module_with_workers(lodopab, tmp_path):
    dm = lodopab_module(lodopab, tmp_path, batch_size=2, num_workers=2)
    dm.setup("fit")
    assert len(all_samples(dm.train_dataloader())) == LODOPAB["num_train"]


# ---------------------------------------------------------------------------------------------
# ImageNet shift test
# ---------------------------------------------------------------------------------------------


def test_synthetic_imagenet_folder_has_rgb_gray_and_cmyk_jpegs(imagenet):
    from PIL import Image

    modes = Counter()
    for path in sorted(imagenet.glob("*.JPEG")):
        with Image.open(path) as image:
            assert image.format == "JPEG"
            modes[image.mode] += 1
    assert set(modes) == {"RGB", "L", "CMYK"} and sum(modes.values()) == IMAGENET["num_images"]


@pytest.mark.parametrize("forward_model", ["mri", "ct", "none"])
def test_imagenet_module_forward_models(imagenet, tmp_path, forward_model):
    dm = ImageNetShiftDataModule(
        root=str(imagenet),
        num_images=5,
        crop_size=32,
        forward_model=forward_model,
        ct_image_size=36,
        data_dir=str(tmp_path),
        progress=False,
    )
    dm.setup("test")
    assert [p.name for p in dm.paths] == [
        f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 6)
    ]  # first N by name
    batch = next(iter(dm.test_dataloader()))
    check_batch(batch, 32)
    samples = [dm.test_set[i] for i in range(5)]
    for s in samples:
        original = s.target * s.std + s.mean
        assert float(original.min()) >= -1e-5 and float(original.max()) <= 1 + 1e-5
    if forward_model == "none":
        assert all(torch.equal(s.input, s.target) for s in samples)
    else:
        quality = np.mean([psnr(s.input * s.std + s.mean, s.target * s.std + s.mean) for s in samples])
        assert 15.0 < quality < 60.0, quality  # degraded, but recognisably the image
    again = [dm.test_set[i] for i in range(5)]
    assert all(torch.equal(a.input, b.input) for a, b in zip(samples, again))  # deterministic
    with pytest.raises(RuntimeError, match="evaluation set"):
        dm.train_dataloader()


def test_imagenet_class_folder_layout_sorted_by_file_name(tmp_path):
    root = tmp_path / "val_tree"
    synthetic.write_imagenet_folder(root, num_images=6, size=36, layout="classes")
    assert len(list(root.glob("n*/*.JPEG"))) == 6
    dm = ImageNetShiftDataModule(
        root=str(root), num_images=4, crop_size=32, forward_model="none", data_dir=str(tmp_path)
    )
    dm.setup("test")
    assert [p.name for p in dm.paths] == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 5)]
    assert dm.paths[0].parent.name == "n00000000"
    assert dm.test_set[0].fname == "ILSVRC2012_val_00000001.JPEG"  # the image's identity, not its folder


# ---------------------------------------------------------------------------------------------
# Cross-cutting: synthetic defaults, DDP padding, Lightning and jsonargparse
# ---------------------------------------------------------------------------------------------


def test_root_none_generates_once_in_the_data_dir_and_uses_the_real_loaders(tmp_path, monkeypatch):
    monkeypatch.setenv("EQUINET_DATA_DIR", str(tmp_path / "cache"))
    modules = [
        FastMRIDataModule(crop_size=16, synthetic=True, synthetic_size=16, synthetic_volumes=2, synthetic_slices=2),
        LoDoPaBDataModule(
            crop_size=16, synthetic=True, synthetic_size=20, synthetic_num=3, synthetic_samples_per_file=2, progress=False
        ),
        ImageNetShiftDataModule(crop_size=16, synthetic=True, synthetic_size=20, synthetic_num=4, num_images=3),
    ]
    for dm in modules:
        dm.prepare_data()
        dm.setup("test")
        assert dm.resolved_root().is_relative_to(tmp_path / "cache")
        check_batch(next(iter(dm.test_dataloader())), 16)
    stamp = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    again = FastMRIDataModule(crop_size=16, synthetic=True, synthetic_size=16, synthetic_volumes=2, synthetic_slices=2)
    again.prepare_data()
    again.setup("test")
    assert {
        p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*") if p.is_file()
    } == stamp  # reused
    assert not list((tmp_path / "cache" / "synthetic").glob(".*tmp*"))  # no half-written leftovers


@pytest.mark.parametrize("replicas", [2, 4])
def test_ddp_padding_duplicates_are_identifiable(knee, tmp_path, replicas):
    """DistributedSampler pads with duplicates; (fname, slice_num) tells them apart, so metrics
    keyed by it count every sample exactly once."""
    dm = knee_module(knee, tmp_path)
    dm.setup("validate")
    n = len(dm.val_set)
    keys = []
    for rank in range(replicas):
        sampler = DistributedSampler(dm.val_set, num_replicas=replicas, rank=rank, shuffle=False)
        keys += [(dm.val_set.raw_samples[i].fname.name, dm.val_set.raw_samples[i].slice_ind) for i in sampler]
    assert len(keys) == math.ceil(n / replicas) * replicas
    assert len(set(keys)) == n  # every sample present, extras are exact duplicates


class _TinyModule(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

    def training_step(self, batch, _):
        return torch.nn.functional.mse_loss(self.conv(batch.input), batch.target)

    def validation_step(self, batch, _):
        self.log(
            "val_loss",
            torch.nn.functional.mse_loss(self.conv(batch.input), batch.target),
            batch_size=batch.input.shape[0],
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _TinyTestModule(_TinyModule):
    def test_step(self, batch, _):
        self.log(
            "test_loss",
            torch.nn.functional.mse_loss(self.conv(batch.input), batch.target),
            batch_size=batch.input.shape[0],
        )


def test_datamodules_run_under_a_lightning_trainer(knee, lodopab, imagenet, tmp_path):
    def trainer():
        return pl.Trainer(
            fast_dev_run=True,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )

    for dm in (knee_module(knee, tmp_path, batch_size=2), lodopab_module(lodopab, tmp_path, batch_size=2)):
        trainer().fit(_TinyModule(), datamodule=dm)
    ood = ImageNetShiftDataModule(
        root=str(imagenet), num_images=4, crop_size=32, data_dir=str(tmp_path), batch_size=2
    )
    assert trainer().validate(_TinyModule(), datamodule=ood)[0]["val_loss"] > 0


def test_constructors_are_driven_by_jsonargparse(tmp_path):
    from jsonargparse import ArgumentParser

    for cls, extra in (
        (
            FastMRIDataModule,
            ["--dm.center_fractions=[0.04]", "--dm.accelerations=[8]", "--dm.acquisition=CORPDFS_FBK"],
        ),
        (LoDoPaBDataModule, ["--dm.fbp=torch"]),
        (ImageNetShiftDataModule, ["--dm.forward_model=ct", "--dm.num_images=10"]),
    ):
        parser = ArgumentParser()
        parser.add_class_arguments(cls, "dm")
        cfg = parser.parse_args([f"--dm.root={tmp_path}", "--dm.crop_size=64", "--dm.batch_size=2", *extra])
        init = parser.instantiate(cfg)
        dm = init.dm
        assert isinstance(dm, cls) and dm.crop_size == 64 and dm.batch_size == 2
        help_text = parser.format_help()
        assert "crop_size" in help_text and "centre crop" in help_text  # docstrings reach --help


def test_data_dir_follows_the_platform_cache_convention(tmp_path, monkeypatch):
    monkeypatch.delenv("EQUINET_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert data_dir() == tmp_path / "xdg" / "equinet"
    assert data_dir() == Path(platformdirs.user_cache_dir("equinet", appauthor=False))
    monkeypatch.setenv("EQUINET_DATA_DIR", str(tmp_path / "team"))
    assert data_dir() == tmp_path / "team"
    assert data_dir(tmp_path / "mine") == tmp_path / "mine"
    dm = FastMRIDataModule(synthetic=True, synthetic_size=16, crop_size=16, data_dir=str(tmp_path / "mine"))
    assert dm.synthetic_root().is_relative_to(tmp_path / "mine")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_written_by_the_data_package_follow_the_umask(tmp_path, umask):
    """Synthetic datasets, `equinet data synth` output, FBP caches and their check records: every
    file and folder gets the mode a plain open/mkdir would (0666/0777 minus the umask)."""
    from equinet.data.cli import main

    old = os.umask(umask)
    try:
        cache = tmp_path / "cache"
        for dm in (
            FastMRIDataModule(
                crop_size=16, synthetic=True, synthetic_size=16, synthetic_volumes=1, synthetic_slices=1,
                data_dir=str(cache),
            ),
            LoDoPaBDataModule(
                crop_size=16, synthetic=True, synthetic_size=16, synthetic_num=1, progress=False, data_dir=str(cache)
            ),
            ImageNetShiftDataModule(
                crop_size=16, synthetic=True, forward_model="ct", ct_image_size=16, synthetic_size=20, synthetic_num=2,
                num_images=2, progress=False, data_dir=str(cache),
            ),
        ):  # fmt: skip
            dm.prepare_data()
            dm.setup("test")
        main(["synth", "--kind", "lodopab", "--out", str(tmp_path / "synth"), "--num", "1", "--size", "16"])
    finally:
        os.umask(old)
    written = [p for p in tmp_path.rglob("*")]
    kinds = {p.suffix for p in written if p.is_file()}
    assert {".h5", ".hdf5", ".json", ".JPEG"} <= kinds and any(
        p.name.endswith(".checked.json") for p in written
    )
    wrong = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in written
             if p.stat().st_mode & 0o777 != (0o777 if p.is_dir() else 0o666) & ~umask}  # fmt: skip
    assert not wrong
