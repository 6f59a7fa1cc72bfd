"""Data integrity on files written independently of equinet (``_independent_data``): no silently
wrong sample, and every bad file named with what is wrong and what would be right.

One test (or more) per case of issue 10; each fails on the loaders before that issue."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from _data_helpers import psnr
from _independent_data import (
    ASYMMETRIC_BLOBS,
    blob_image,
    blob_sinogram,
    random_blobs,
    set_jpeg_size,
    write_fastmri_file,
    write_jpeg,
    write_lodopab_pair,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from equinet.data import DataFormatError, FastMRIDataModule, ImageNetShiftDataModule, LoDoPaBDataModule, ct
from equinet.data import lodopab as lodopab_module
from equinet.data.lodopab import scan_lodopab

SMALL = (32, 48, 47)  # image size, angles, detector bins of the small test sets
REAL_GT = (362, 362)
REAL_SINO = (1000, 513)


def small_pair_rows(count: int, seed: int = 0, geometry=SMALL):
    """``count`` (ground truth, exact sinogram) rows of random blobs in a declared geometry."""
    rng = np.random.default_rng(seed)
    n, angles, bins = geometry
    blobs = [random_blobs(rng) for _ in range(count)]
    truths = np.stack([blob_image(b, n) for b in blobs])
    sinos = np.stack([blob_sinogram(b, angles, bins) for b in blobs])
    return truths, sinos


def small_lodopab(root: Path, counts=None, rows_per_file: int = 4, geometry=SMALL, manifest=True) -> Path:
    """A small LoDoPaB-format set; ``counts[part]`` real rows per part (padded files), described
    by a hand-written manifest (or none)."""
    counts = counts or {"train": 6, "validation": 3, "test": 2}
    n, angles, bins = geometry
    for p_index, (part, count) in enumerate(counts.items()):
        truths, sinos = small_pair_rows(count, seed=p_index, geometry=geometry)
        for k in range(-(-count // rows_per_file)):
            sl = slice(k * rows_per_file, min(count, (k + 1) * rows_per_file))
            write_lodopab_pair(root, part, k, truths[sl], sinos[sl], n, (angles, bins), rows_per_file)
    if manifest:
        (root / "equinet_lodopab.json").write_text(
            json.dumps(
                {
                    "samples_per_file": rows_per_file,
                    "num_samples": counts,
                    "geometry": {"image_size": n, "num_angles": angles, "num_detectors": bins},
                }
            )
        )
    return root


def lodopab_dm(root: Path, tmp_path: Path, **kwargs) -> LoDoPaBDataModule:
    kwargs.setdefault("crop_size", 32)
    kwargs.setdefault("fbp", "torch")
    return LoDoPaBDataModule(root=str(root), data_dir=str(tmp_path / "cache"), progress=False, **kwargs)


def served(dataset) -> list:
    return [dataset[i] for i in range(len(dataset))]


def cheap_fbp(sinograms, geometry, *args, **kwargs):
    """Stands in for the FBP where a test is about which rows are served, not their values."""
    batch = torch.as_tensor(sinograms)
    return batch.sum(dim=(-2, -1), keepdim=True).expand(
        *batch.shape[:-2], geometry.image_size, geometry.image_size
    )


# ---------------------------------------------------------------------------------------------
# LoDoPaB geometry: declared and checked, never inferred
# ---------------------------------------------------------------------------------------------


def test_real_geometry_files_are_accepted_without_a_declaration(tmp_path):
    write_lodopab_pair(tmp_path, "test", 27, None, None, 362, REAL_SINO)
    layout = scan_lodopab(tmp_path)
    assert layout.geometry == ct.ParallelBeamGeometry.lodopab()
    assert [f.num_valid for f in layout.files["test"]] == [3553 - 27 * 128]


@pytest.mark.parametrize(
    "gt_size, sino_shape, message",
    [
        (362, (513, 1000), r"observation_test_000.hdf5: sinograms are stored transposed, 513x1000 \(detector bins "
         r"x angles, the layout skimage.transform.radon returns\); LoDoPaB stores \(angles x bins\) = 1000x513"),
        (362, (1000, 512), r"observation_test_000.hdf5: sinograms are 1000x512, expected 1000x513 \(angles x "
         r"detector bins\) for 362x362 images from LoDoPaB-CT \(no other geometry declared\); .*declare it"),
        (360, (1000, 513), r"ground_truth_test_000.hdf5: ground-truth images are 360x360, expected 362x362 from "
         r"LoDoPaB-CT"),
        (32, (48, 47), r"ground-truth images are 32x32, expected 362x362 .*LoDoPaBDataModule\(geometry=\(image_size, "
         r"num_angles, num_detectors\)\), or a \"geometry\" entry in equinet_lodopab.json"),
    ],
)  # fmt: skip
def test_undeclared_geometry_is_refused_with_the_expected_shape(tmp_path, gt_size, sino_shape, message):
    write_lodopab_pair(tmp_path, "test", 0, None, None, gt_size, sino_shape)
    with pytest.raises(DataFormatError, match=message):
        scan_lodopab(tmp_path)


def test_declared_geometry_must_match_the_files_and_other_declarations(tmp_path):
    root = small_lodopab(tmp_path / "set")
    assert scan_lodopab(root).geometry == ct.ParallelBeamGeometry(*SMALL)  # the manifest declares it
    with pytest.raises(DataFormatError, match=r"geometry argument .* contradicts .*equinet_lodopab.json"):
        scan_lodopab(root, ct.ParallelBeamGeometry(32, 48, 45))
    manifest = json.loads((root / "equinet_lodopab.json").read_text())
    del manifest["geometry"]  # counts only
    (root / "equinet_lodopab.json").write_text(json.dumps(manifest))
    scan_lodopab(root, ct.ParallelBeamGeometry(*SMALL))  # the argument alone declares it
    with pytest.raises(
        DataFormatError,
        match=r"observation_train_000.hdf5: sinograms are 48x47, expected 48x45 .*geometry argument",
    ):
        scan_lodopab(root, ct.ParallelBeamGeometry(32, 48, 45))
    with pytest.raises(DataFormatError, match=r"ground-truth images are 32x32, expected 362x362"):
        lodopab_dm(root, tmp_path).setup("test")
    dm = lodopab_dm(root, tmp_path, geometry=SMALL)
    dm.setup("test")
    assert len(dm.test_set) == 2


@pytest.mark.parametrize(
    "manifest, message",
    [
        (
            {"num_samples": {"train": -3, "validation": 3, "test": 2}},
            r"num_samples.train must be an integer >= 0, got -3",
        ),
        (
            {"num_samples": {"train": 3.5, "validation": 3, "test": 2}},
            r"num_samples.train must be an integer >= 0, got 3.5",
        ),
        (
            {"num_samples": {"train": "6", "validation": 3, "test": 2}},
            r"num_samples.train must be an integer >= 0, got '6'",
        ),
        ({"samples_per_file": 0}, r"samples_per_file must be an integer >= 1, got 0"),
        ({"num_samples": {"training": 6}}, r"num_samples must map parts"),
        ({"geometry": {"image_size": 32, "num_angles": 48}}, r"geometry must be an object with image_size"),
        ({"geometry": {"image_size": 32, "num_angles": 48.5, "num_detectors": 47}}, r"geometry.num_angles"),
        ([1, 2], r"expected a JSON object"),
    ],
)
def test_bad_manifest_is_named_with_the_bad_entry(tmp_path, manifest, message):
    root = small_lodopab(tmp_path / "set")
    if isinstance(manifest, dict):  # the good manifest with one bad entry
        manifest = {**json.loads((root / "equinet_lodopab.json").read_text()), **manifest}
    (root / "equinet_lodopab.json").write_text(json.dumps(manifest))
    with pytest.raises(DataFormatError, match=rf"equinet_lodopab.json: (unreadable manifest: )?{message}"):
        lodopab_dm(root, tmp_path).setup("test")


def test_lodopab_fbp_is_oriented_like_the_ground_truth_among_all_8_flips_and_rotations(tmp_path):
    """Independently written files (analytic sinograms of asymmetric blobs in LoDoPaB's documented
    convention): the FBP input matches the ground truth as stored, and none of the other 7
    symmetries of the square."""
    n, angles, bins = 64, 96, 91
    truth = blob_image(ASYMMETRIC_BLOBS, n)
    assert 0 <= truth.min() and truth.max() <= 1
    sino = blob_sinogram(ASYMMETRIC_BLOBS, angles, bins)
    write_lodopab_pair(tmp_path / "set", "test", 0, truth[None], sino[None], n, (angles, bins), num_rows=2)
    manifest = {
        "samples_per_file": 2,
        "num_samples": {"train": 0, "validation": 0, "test": 1},
        "geometry": {"image_size": n, "num_angles": angles, "num_detectors": bins},
    }
    (tmp_path / "set" / "equinet_lodopab.json").write_text(json.dumps(manifest))
    dm = lodopab_dm(tmp_path / "set", tmp_path, crop_size=n, normalize=False)
    dm.setup("test")
    (sample,) = served(dm.test_set)
    recon, target = sample.input[0].numpy(), sample.target[0].numpy()
    np.testing.assert_array_equal(target, truth)
    candidates = {
        f"rot{k}{'+flip' if flip else ''}": np.rot90(np.flip(truth, 0) if flip else truth, k)
        for k in range(4)
        for flip in (False, True)
    }
    scores = {name: psnr(recon, image) for name, image in candidates.items()}
    best = max(scores, key=scores.get)
    assert best == "rot0", scores
    assert scores["rot0"] > 30 and all(scores["rot0"] - v > 8 for k, v in scores.items() if k != "rot0"), (
        scores
    )


@pytest.mark.slow
def test_lodopab_orientation_at_the_real_geometry(tmp_path):
    truth = blob_image(ASYMMETRIC_BLOBS, 362)
    sino = blob_sinogram(ASYMMETRIC_BLOBS, *REAL_SINO)
    write_lodopab_pair(tmp_path / "set", "test", 27, truth[None], sino[None], 362, REAL_SINO)
    dm = lodopab_dm(tmp_path / "set", tmp_path, crop_size=362, normalize=False)
    dm.setup("test")
    assert len(dm.test_set) == 1  # rows 1..96 of the last test file are zero: skipped, counted
    recon = dm.test_set[0].input[0].numpy()
    scores = [psnr(recon, np.rot90(np.flip(truth, 0) if f else truth, k)) for f in (0, 1) for k in range(4)]
    assert scores[0] > 35 and all(scores[0] - s > 8 for s in scores[1:]), scores


# ---------------------------------------------------------------------------------------------
# LoDoPaB rows: padding and all-zero rows are never samples; ground truth in [0, 1]
# ---------------------------------------------------------------------------------------------


def test_hand_made_subset_without_manifest_does_not_serve_its_zero_rows(tmp_path, monkeypatch, caplog):
    """Real geometry, published counts (file 000 of train 'holds 128 samples'), but only 3 rows
    were written: the other 125 are zero and must not be served."""
    monkeypatch.setattr(ct, "fbp", cheap_fbp)
    truths = np.stack([blob_image(random_blobs(np.random.default_rng(i)), 362) for i in range(3)])
    write_lodopab_pair(
        tmp_path / "set", "train", 0, truths, np.full((3, *REAL_SINO), 0.01, np.float32), 362, REAL_SINO
    )
    dm = lodopab_dm(tmp_path / "set", tmp_path, crop_size=352)
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        dm.build_fbp_cache(["train"])
        dm.train_set = dm.make_dataset("train")
    assert len(dm.train_set) == 3
    assert [s.fname for s in served(dm.train_set)] == [f"ground_truth_train_000:{r}" for r in range(3)]
    assert (
        "skipped 125 all-zero rows" in caplog.text and "ground_truth_train_000.hdf5 rows 3-127" in caplog.text
    )


def test_manifest_that_overstates_the_count_serves_no_zero_row(tmp_path, caplog):
    root = small_lodopab(tmp_path / "set", counts={"train": 5, "validation": 1, "test": 1})
    manifest = json.loads((root / "equinet_lodopab.json").read_text())
    manifest["num_samples"]["train"] = 7  # rows 5 and 6 are zero padding
    (root / "equinet_lodopab.json").write_text(json.dumps(manifest))
    dm = lodopab_dm(root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        dm.setup("fit")
    samples = served(dm.train_set)
    assert len(samples) == 5
    assert all(float((s.target * s.std + s.mean).max()) > 0.05 for s in samples)
    assert "skipped 2 all-zero rows" in caplog.text and "ground_truth_train_001.hdf5 rows 1-2" in caplog.text


def test_all_zero_observation_row_among_real_rows_is_skipped(tmp_path, caplog):
    root = small_lodopab(tmp_path / "set")
    with h5py.File(root / "observation_train_000.hdf5", "r+") as f:
        f["data"][2] = 0
    dm = lodopab_dm(root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        dm.setup("fit")
    names = [s.fname for s in served(dm.train_set)]
    assert "ground_truth_train_000:2" not in names and len(names) == 5
    assert "skipped 1 all-zero rows" in caplog.text and "ground_truth_train_000.hdf5 rows 2" in caplog.text


@pytest.mark.parametrize("scale, offset", [(1000.0, -1000.0), (1.0, -0.2), (5.0, 0.0)])
def test_ground_truth_outside_unit_interval_is_refused(tmp_path, scale, offset):
    """E.g. Hounsfield units (air -1000, water 0) instead of attenuation / MU_MAX."""
    root = small_lodopab(tmp_path / "set")
    with h5py.File(root / "ground_truth_validation_000.hdf5", "r+") as f:
        f["data"][1] = f["data"][1] * scale + offset
    with pytest.raises(
        DataFormatError,
        match=r"ground_truth_validation_000.hdf5 row\(s\) \[1\]: values in \[.*\], outside \[0, 1\]; "
        r"LoDoPaB ground truth is the attenuation divided by MU_MAX",
    ):
        lodopab_dm(root, tmp_path).setup("validate")


# ---------------------------------------------------------------------------------------------
# FBP cache: keyed on content, checked on reuse, computed once
# ---------------------------------------------------------------------------------------------


def test_observation_rewritten_with_same_size_and_mtime_is_reconstructed_again(tmp_path):
    root = small_lodopab(tmp_path / "set")
    lodopab_dm(root, tmp_path).setup("test")
    obs = root / "observation_test_000.hdf5"
    before = obs.stat()
    _, other = small_pair_rows(2, seed=99)
    with h5py.File(obs, "r+") as f:
        f["data"][:2] = other
    os.utime(obs, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (obs.stat().st_size, obs.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    dm = lodopab_dm(root, tmp_path)
    dm.setup("test")
    assert dm.cache_report.computed == 2
    fresh = lodopab_dm(root, tmp_path, fbp_cache_dir=str(tmp_path / "fresh"))
    fresh.setup("test")
    for a, b in zip(served(dm.test_set), served(fresh.test_set)):
        assert torch.equal(a.input, b.input)


def test_source_checksum_is_computed_once_per_file_version(tmp_path, monkeypatch):
    root = small_lodopab(tmp_path / "set")
    calls = []
    real = lodopab_module.check_pair
    monkeypatch.setattr(
        lodopab_module, "check_pair", lambda info: calls.append(info.ground_truth.name) or real(info)
    )
    lodopab_dm(root, tmp_path).setup("test")
    assert calls == ["ground_truth_test_000.hdf5"]
    lodopab_dm(root, tmp_path).setup("test")
    assert calls == ["ground_truth_test_000.hdf5"]  # remembered
    obs = root / "observation_test_000.hdf5"
    os.utime(obs)  # touched, content unchanged: checked again, cache reused
    dm = lodopab_dm(root, tmp_path)
    dm.setup("test")
    assert len(calls) == 2 and dm.cache_report.computed == 0 and dm.cache_report.reused == 2


@pytest.mark.parametrize("damage", ["nan", "shape"])
def test_bad_fbp_cache_entry_is_rebuilt_with_a_warning_naming_it(tmp_path, caplog, damage):
    root = small_lodopab(tmp_path / "set")
    good = lodopab_dm(root, tmp_path, fbp_cache_dir=str(tmp_path / "good"))
    good.setup("test")
    expected = [s.input for s in served(good.test_set)]
    first = lodopab_dm(root, tmp_path)
    first.setup("test")
    cache = first.cache_folder("torch") / "observation_test_000.hdf5"
    with h5py.File(cache, "r+") as f:
        if damage == "nan":
            f["data"][1, 3, 4] = np.nan
        else:
            attrs = dict(f.attrs)
            del f["data"]
            f.create_dataset("data", data=np.zeros((2, 30, 30), np.float32))
            f.attrs.update(attrs)
    dm = lodopab_dm(root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        dm.setup("test")
    assert f"cache file {cache} is unusable" in caplog.text and "rebuilding it" in caplog.text
    assert dm.cache_report.computed == 2
    assert all(torch.equal(s.input, e) for s, e in zip(served(dm.test_set), expected))


def test_fbp_cache_row_changed_after_the_check_is_refused_on_load(tmp_path):
    root = small_lodopab(tmp_path / "set")
    dm = lodopab_dm(root, tmp_path)
    dm.setup("test")
    with h5py.File(dm.cache_folder("torch") / "observation_test_000.hdf5", "r+") as f:
        f["data"][1, 0, 0] = np.inf
    dm.test_set[0]
    with pytest.raises(
        DataFormatError,
        match=r"FBP cache .*observation_test_000.hdf5 row 1 contains 1 NaN/inf values; the cache file",
    ):
        dm.test_set[1]


# ---------------------------------------------------------------------------------------------
# LoDoPaB: opaque failures made clear
# ---------------------------------------------------------------------------------------------


def test_lodopab_data_entry_that_is_a_group(tmp_path):
    root = small_lodopab(tmp_path / "set")
    path = root / "observation_test_000.hdf5"
    path.unlink()
    with h5py.File(path, "w") as f:
        f.create_group("data").create_dataset("rows", data=np.zeros((4, 48, 47), np.float32))
    with pytest.raises(
        DataFormatError, match=r"observation_test_000.hdf5: 'data' is an HDF5 group, not a dataset"
    ):
        lodopab_dm(root, tmp_path).setup("test")


def test_lodopab_broken_symlink_is_named(tmp_path):
    root = small_lodopab(tmp_path / "set")
    (root / "observation_validation_000.hdf5").unlink()
    (root / "observation_validation_000.hdf5").symlink_to(
        tmp_path / "unmounted" / "observation_validation_000.hdf5"
    )
    with pytest.raises(
        DataFormatError,
        match=r"observation_validation_000.hdf5 is a broken symbolic link \(its target .*unmounted",
    ):
        lodopab_dm(root, tmp_path).setup("test")


# ---------------------------------------------------------------------------------------------
# fastMRI
# ---------------------------------------------------------------------------------------------


def knee_dm(root: Path, tmp_path: Path, **kwargs) -> FastMRIDataModule:
    kwargs.setdefault("crop_size", 32)
    return FastMRIDataModule(root=str(root), data_dir=str(tmp_path / "cache"), **kwargs)


def private_copy(root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(root, tmp_path / "knee"))


def test_fastmri_all_zero_kspace_slice_is_refused_on_load(independent_knee, tmp_path):
    root = private_copy(independent_knee, tmp_path)
    bad = root / "singlecoil_val" / "file1010.h5"
    with h5py.File(bad, "r+") as f:
        f["kspace"][1] = 0
    dm = knee_dm(root, tmp_path)
    dm.setup("validate")
    dm.val_set[0]
    with pytest.raises(
        DataFormatError, match=r"file1010.h5 slice 1: kspace is all zeros \(an interrupted copy"
    ):
        dm.val_set[1]


@pytest.mark.parametrize("value", [np.nan, 0.0, -1.0, np.inf])
def test_fastmri_unusable_max_attribute_is_refused(independent_knee, tmp_path, value):
    root = private_copy(independent_knee, tmp_path)
    with h5py.File(root / "singlecoil_val" / "file1011.h5", "r+") as f:
        f.attrs["max"] = value
    with pytest.raises(
        DataFormatError,
        match=r"file1011.h5: attribute 'max' is .*; it must be a finite number > 0 .*PSNR/SSIM",
    ):
        knee_dm(root, tmp_path).setup("validate")


def test_fastmri_kspace_that_is_a_group(independent_knee, tmp_path):
    root = private_copy(independent_knee, tmp_path)
    path = root / "singlecoil_val" / "file1010.h5"
    with h5py.File(path, "r+") as f:
        kspace = f["kspace"][()]
        del f["kspace"]
        f.create_group("kspace").create_dataset("slices", data=kspace)
    with pytest.raises(DataFormatError, match=r"file1010.h5: 'kspace' is an HDF5 group, not a dataset"):
        knee_dm(root, tmp_path).setup("validate")


def test_fastmri_broken_symlink_is_named(independent_knee, tmp_path):
    root = private_copy(independent_knee, tmp_path)
    (root / "singlecoil_val" / "file1099.h5").symlink_to(tmp_path / "nowhere" / "file1099.h5")
    with pytest.raises(
        DataFormatError, match=r"file1099.h5 is a broken symbolic link \(its target .*nowhere"
    ):
        knee_dm(root, tmp_path).setup("validate")


def test_fastmri_non_utf8_file_name_is_named(independent_knee, tmp_path):
    root = private_copy(independent_knee, tmp_path)
    folder = os.fsencode(root / "singlecoil_val")
    os.rename(folder + b"/file1010.h5", folder + b"/file\xe910.h5")
    with pytest.raises(DataFormatError, match=r"file\\xe910.h5: the file name is not valid UTF-8; rename it"):
        knee_dm(root, tmp_path).setup("validate")


def test_fastmri_acquisition_stored_as_bytes_is_decoded(tmp_path):
    root = tmp_path / "knee"
    (root / "singlecoil_val").mkdir(parents=True)
    for v, acquisition in enumerate((b"CORPD_FBK", b"CORPDFS_FBK", np.bytes_(b"CORPD_FBK"))):
        write_fastmri_file(
            root / "singlecoil_val" / f"file{v}.h5", np.ones((2, 32, 32)) * 0.5, v, acquisition
        )
    dm = knee_dm(root, tmp_path, acquisition="CORPD_FBK")
    dm.setup("validate")
    assert sorted({s.fname.name for s in dm.val_set.raw_samples}) == ["file0.h5", "file2.h5"]
    for path in (root / "singlecoil_val").glob("*.h5"):
        path.unlink()
    write_fastmri_file(root / "singlecoil_val" / "file9.h5", np.ones((2, 32, 32)) * 0.5, 9, b"CORPDFS_FBK")
    with pytest.raises(DataFormatError, match=r"no volume has acquisition 'CORPD_FBK'.*'CORPDFS_FBK': 2"):
        knee_dm(root, tmp_path, acquisition="CORPD_FBK").setup("validate")


# ---------------------------------------------------------------------------------------------
# ImageNet
# ---------------------------------------------------------------------------------------------


def imagenet_dm(root: Path, tmp_path: Path, **kwargs) -> ImageNetShiftDataModule:
    kwargs.setdefault("crop_size", 32)
    kwargs.setdefault("forward_model", "mri")
    return ImageNetShiftDataModule(root=str(root), data_dir=str(tmp_path / "cache"), progress=False, **kwargs)


def write_val_folders(tmp_path: Path, count: int = 4):
    flat, tree = tmp_path / "flat", tmp_path / "tree"
    for i in range(count):
        name = f"ILSVRC2012_val_{i + 1:08d}.JPEG"
        write_jpeg(flat / name, i)
        (tree / f"n0144076{i % 2}").mkdir(parents=True, exist_ok=True)
        shutil.copy(flat / name, tree / f"n0144076{i % 2}" / name)
    return flat, tree


@pytest.mark.parametrize("forward_model", ["mri", "ct"])
def test_imagenet_same_image_same_sample_in_flat_and_class_folders(tmp_path, forward_model):
    flat, tree = write_val_folders(tmp_path)
    samples = []
    for root in (flat, tree):
        dm = imagenet_dm(root, tmp_path, forward_model=forward_model, ct_image_size=36, fbp="torch")
        dm.setup("test")
        samples.append(served(dm.test_set))
    for a, b in zip(*samples):
        assert a.fname == b.fname and a.fname.startswith("ILSVRC2012_val_")
        assert torch.equal(a.input, b.input) and torch.equal(a.target, b.target)


def test_imagenet_class_folders_log_png_panels_without_a_logger(tmp_path):
    import pytorch_lightning as pl

    from equinet.lightning.callbacks import ReconstructionImageLogger

    _, tree = write_val_folders(tmp_path)
    dm = imagenet_dm(tree, tmp_path, forward_model="none", batch_size=2)
    dm.setup("test")
    batch = next(iter(dm.test_dataloader()))
    trainer = pl.Trainer(logger=False, default_root_dir=tmp_path / "run", enable_progress_bar=False)
    callback = ReconstructionImageLogger(num_images=2)
    callback.log_panels(trainer, torch.nn.Identity(), None, batch, "test")
    assert [p.is_file() for p in callback.saved_files] == [True, True]


def test_imagenet_duplicate_names_in_class_folders_are_refused(tmp_path):
    _, tree = write_val_folders(tmp_path)
    shutil.copy(tree / "n01440760" / "ILSVRC2012_val_00000001.JPEG", tree / "n01440761")
    with pytest.raises(DataFormatError, match=r"the image name ILSVRC2012_val_00000001.JPEG occurs twice"):
        imagenet_dm(tree, tmp_path).setup("test")


def test_imagenet_broken_symlink_and_non_utf8_name_are_named(tmp_path):
    flat, _ = write_val_folders(tmp_path)
    link = flat / "ILSVRC2012_val_00000009.JPEG"
    link.symlink_to(tmp_path / "gone.JPEG")
    with pytest.raises(DataFormatError, match=r"ILSVRC2012_val_00000009.JPEG is a broken symbolic link"):
        imagenet_dm(flat, tmp_path).setup("test")
    link.unlink()
    os.rename(
        os.fsencode(flat / "ILSVRC2012_val_00000002.JPEG"), os.fsencode(flat) + b"/ILSVRC2012_val_\xff.JPEG"
    )
    with pytest.raises(DataFormatError, match=r"ILSVRC2012_val_\\xff.JPEG: the file name is not valid UTF-8"):
        imagenet_dm(flat, tmp_path).setup("test")


@pytest.mark.parametrize("side", [12000, 40000])  # above PIL's warning limit / above its error limit
def test_imagenet_decompression_bomb_is_refused_naming_the_file(tmp_path, side):
    flat, _ = write_val_folders(tmp_path)
    set_jpeg_size(flat / "ILSVRC2012_val_00000003.JPEG", side, side)
    with pytest.raises(
        DataFormatError, match=r"ILSVRC2012_val_00000003.JPEG: refused, the image is too large"
    ):
        imagenet_dm(flat, tmp_path).setup("test")


def test_imagenet_exif_orientation_is_ignored_as_torchvision_does(tmp_path):
    """The documented choice: pixels as stored (torchvision's ImageFolder ignores EXIF too)."""
    from PIL import Image
    from torchvision.datasets.folder import default_loader

    plain, rotated = (
        tmp_path / "plain" / "ILSVRC2012_val_00000001.JPEG",
        tmp_path / "exif" / "ILSVRC2012_val_00000001.JPEG",
    )
    write_jpeg(plain, 0, size=(40, 64))
    write_jpeg(rotated, 0, size=(40, 64), exif_orientation=6)  # "rotate 90 degrees to display"
    with Image.open(rotated) as image:
        assert image.getexif()[0x0112] == 6
    samples = []
    for folder in (plain.parent, rotated.parent):
        dm = imagenet_dm(folder, tmp_path, forward_model="none")
        dm.setup("test")
        samples.append(dm.test_set[0])
    assert torch.equal(samples[0].target, samples[1].target)
    assert default_loader(str(rotated)).size == (64, 40)  # torchvision: width x height as stored


# ---------------------------------------------------------------------------------------------
# The cheap per-sample check itself
# ---------------------------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    dtype=st.sampled_from([np.float32, np.float64, np.complex64]),
    size=st.integers(1, 300),
    scale=st.sampled_from([0.0, 1e-30, 1e-3, 1.0, 1e30]),
    bad=st.lists(st.tuples(st.integers(0, 299), st.sampled_from([np.nan, np.inf, -np.inf])), max_size=3),
    seed=st.integers(0, 1000),
)
def test_check_finite_agrees_with_the_exact_tests(dtype, size, scale, bad, seed):
    """One BLAS pass decides; under- and overflow of the sum of squares fall back to the exact
    tests, so the verdict is always that of np.isfinite / np.any."""
    from equinet.data.common import check_finite

    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(size) * scale).astype(dtype)
    for index, value in bad:
        if index < size:
            values[index] = value
    if np.dtype(dtype).kind == "c" and bad and bad[0][0] < size:
        values[bad[0][0]] = complex(1.0, bad[0][1])  # non-finite in the imaginary part only
    real = values.view(values.real.dtype) if np.iscomplexobj(values) else values
    expect_nonfinite, expect_zero = not np.isfinite(real).all(), not real.any()
    try:
        check_finite(values, "x", if_all_zero="(test)")
        outcome = None
    except DataFormatError as err:
        outcome = "nonfinite" if "NaN/inf" in str(err) else "zero"
    assert outcome == ("nonfinite" if expect_nonfinite else "zero" if expect_zero else None)


def test_a_file_changed_while_its_value_was_computed_is_not_remembered_stale(tmp_path):
    """The memo records the fingerprints taken before computing: a file rewritten during the
    (long) computation no longer matches them, so the next call computes again."""
    from equinet.data.fbp_cache import remembered

    source, memo = tmp_path / "observation.hdf5", tmp_path / "memo.json"
    source.write_bytes(b"old content")

    def compute_while_the_file_is_rewritten():
        source.write_bytes(b"new content, longer")
        return "value of the old content"

    assert remembered(memo, [source], compute_while_the_file_is_rewritten) == "value of the old content"
    assert remembered(memo, [source], lambda: "value of the new content") == "value of the new content"
    assert remembered(memo, [source], lambda: "not called") == "value of the new content"


def test_imagenet_ct_digests_are_read_once_per_file_version(tmp_path, monkeypatch):
    """The CT cache is keyed on every image's SHA-256; later runs (ranks, study variants) reuse
    the digests while the files are unchanged and read an image again once it is rewritten."""
    flat, _ = write_val_folders(tmp_path)
    hashed = []  # whole-file reads of the images (the digests; decoding goes through PIL)
    real = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: (p.suffix == ".JPEG" and hashed.append(p.name)) or real(p))

    def setup():
        dm = imagenet_dm(flat, tmp_path, forward_model="ct", ct_image_size=36, fbp="torch")
        dm.setup("test")
        return dm

    first = setup()
    n = len(first.paths)
    assert len(hashed) == n > 0
    second = setup()
    assert len(hashed) == n and (second.cache_report.computed, second.cache_report.reused) == (0, n)
    write_jpeg(first.paths[0], 99)  # rewritten: a new version of one image, a new cache key
    again = setup()
    assert len(hashed) == 2 * n and again.cache_report.computed == n
