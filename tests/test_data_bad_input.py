"""Every bad input gets a clear error naming the file and the problem (or a counted warning where
skipping is right); the FBP cache is resumable and atomic; fastmri's rough edges are contained."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from _data_helpers import copy_dataset

from equinet.data import DataFormatError, FastMRIDataModule, ImageNetShiftDataModule, LoDoPaBDataModule, ct
from equinet.data.fbp_cache import FBPStack, build_cached_stack, build_fbp_stacks, partial_path


def truncate(path: Path, keep: float = 0.5) -> None:
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def rewrite_h5(path: Path, drop: str = None, replace: dict = None) -> None:
    """Rewrite an HDF5 file without dataset ``drop`` / with datasets replaced."""
    with h5py.File(path, "r") as f:
        items = {k: f[k][()] for k in f.keys()}
        attrs = dict(f.attrs)
    if drop:
        items.pop(drop)
    items.update(replace or {})
    with h5py.File(path, "w") as f:
        for k, v in items.items():
            f.create_dataset(k, data=v)
        f.attrs.update(attrs)


# ---------------------------------------------------------------------------------------------
# fastMRI
# ---------------------------------------------------------------------------------------------


def knee_dm(root: Path, tmp_path: Path, **kwargs) -> FastMRIDataModule:
    return FastMRIDataModule(root=str(root), crop_size=32, data_dir=str(tmp_path / "cache"), **kwargs)


def first_val_file(root: Path) -> Path:
    return sorted((root / "singlecoil_val").glob("*.h5"))[0]


def test_knee_missing_and_empty_directories(knee, tmp_path):
    with pytest.raises(DataFormatError, match=r"nowhere.*does not exist"):
        knee_dm(tmp_path / "nowhere", tmp_path).setup("validate")
    root = copy_dataset(knee, tmp_path)
    shutil.rmtree(root / "singlecoil_val")
    with pytest.raises(DataFormatError, match=r"singlecoil_val does not exist"):
        knee_dm(root, tmp_path).setup("validate")
    (root / "singlecoil_val").mkdir()
    with pytest.raises(DataFormatError, match=r"singlecoil_val holds no fastMRI \.h5 volumes"):
        knee_dm(root, tmp_path).setup("validate")


def test_knee_stray_files_are_skipped_with_a_counted_warning(knee, tmp_path, caplog):
    root = copy_dataset(knee, tmp_path)
    (root / "singlecoil_val" / "README.txt").write_text("not data")
    (root / "singlecoil_val" / "notes.h5.md5").write_text("0123")
    (root / "singlecoil_val" / "subfolder").mkdir()
    dm = knee_dm(root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        dm.setup("validate")
    assert "skipped 3 entries" in caplog.text and "README.txt" in caplog.text
    assert len(dm.val_set) == len(list((knee / "singlecoil_val").glob("*.h5"))) * 4


def test_knee_truncated_file(knee, tmp_path):
    root = copy_dataset(knee, tmp_path)
    bad = first_val_file(root)
    truncate(bad)
    with pytest.raises(DataFormatError, match=rf"{bad.name}: cannot be read as HDF5.*truncated"):
        knee_dm(root, tmp_path).setup("validate")


@pytest.mark.parametrize("key", ["kspace", "reconstruction_esc", "ismrmrd_header"])
def test_knee_missing_keys(knee, tmp_path, key):
    root = copy_dataset(knee, tmp_path)
    bad = first_val_file(root)
    rewrite_h5(bad, drop=key)
    with pytest.raises(DataFormatError, match=rf"{bad.name}: missing dataset '{key}'"):
        knee_dm(root, tmp_path).setup("validate")


def test_knee_challenge_test_set_without_targets_points_to_val(knee, tmp_path):
    root = copy_dataset(knee, tmp_path)
    for path in (root / "singlecoil_test").glob("*.h5"):
        rewrite_h5(path, drop="reconstruction_esc")
    with pytest.raises(DataFormatError, match="test_split='val'"):
        knee_dm(root, tmp_path).setup("test")
    dm = knee_dm(root, tmp_path, test_split="val")
    dm.setup("test")
    assert len(dm.test_set) == len(list((root / "singlecoil_val").glob("*.h5"))) * 4


@pytest.mark.parametrize(
    "replace, message",
    [
        (lambda f: {"kspace": np.abs(f["kspace"][()])}, r"'kspace' must be complex"),
        (lambda f: {"kspace": f["kspace"][0]}, r"'kspace' must be complex with 3 dims"),
        (
            lambda f: {"reconstruction_esc": f["reconstruction_esc"][:-1]},
            r"'reconstruction_esc' must be float \(slices, H, W\) with as many slices",
        ),
        (
            lambda f: {"reconstruction_esc": f["reconstruction_esc"][()].astype(np.int16)},
            r"'reconstruction_esc' must be float",
        ),
        (
            lambda f: {"ismrmrd_header": b"<ismrmrdHeader><encoding></encoding></ismrmrdHeader>"},
            r"cannot parse 'ismrmrd_header'",
        ),
        (lambda f: {"ismrmrd_header": b"<not xml"}, r"cannot parse 'ismrmrd_header'"),
    ],
)
def test_knee_wrong_shapes_dtypes_and_headers(knee, tmp_path, replace, message):
    root = copy_dataset(knee, tmp_path)
    bad = first_val_file(root)
    with h5py.File(bad, "r") as f:
        new = replace(f)
    rewrite_h5(bad, replace=new)
    with pytest.raises(DataFormatError, match=rf"{bad.name}: {message}"):
        knee_dm(root, tmp_path).setup("validate")


def test_knee_missing_max_attribute(knee, tmp_path):
    root = copy_dataset(knee, tmp_path)
    bad = first_val_file(root)
    with h5py.File(bad, "r+") as f:
        del f.attrs["max"]
    with pytest.raises(DataFormatError, match=rf"{bad.name}: missing attribute 'max'"):
        knee_dm(root, tmp_path).setup("validate")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_knee_nan_or_inf_is_reported_with_file_and_slice(knee, tmp_path, value):
    root = copy_dataset(knee, tmp_path)
    bad = first_val_file(root)
    with h5py.File(bad, "r+") as f:
        f["kspace"][2, 5, 7] = value
    dm = knee_dm(root, tmp_path)
    dm.setup("validate")
    dm.val_set[1]  # other slices still load
    with pytest.raises(DataFormatError, match=rf"{bad.name} slice 2: kspace contains 1 NaN/inf"):
        dm.val_set[2]


def test_knee_crop_larger_than_target(knee, tmp_path):
    with pytest.raises(DataFormatError, match=r"is 32x32, smaller than crop_size=40"):
        FastMRIDataModule(root=str(knee), crop_size=40, data_dir=str(tmp_path)).setup("validate")


def test_knee_bad_arguments():
    with pytest.raises(ValueError, match="acquisition"):
        FastMRIDataModule(acquisition="T2")
    with pytest.raises(ValueError, match="single-coil"):
        FastMRIDataModule(challenge="multicoil")
    with pytest.raises(ValueError, match="sample_rate"):
        FastMRIDataModule(sample_rate=0.0)


def test_fastmri_dataset_cache_goes_to_the_data_dir_not_the_cwd(knee, tmp_path, monkeypatch):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    dm = knee_dm(knee, tmp_path, use_dataset_cache=True)
    dm.setup("validate")
    assert (tmp_path / "cache" / "fastmri_dataset_cache.pkl").is_file()
    assert not any(workdir.iterdir())  # fastmri would have written dataset_cache.pkl here
    knee_dm(knee, tmp_path, use_dataset_cache=True).setup("validate")  # reads the cache


# ---------------------------------------------------------------------------------------------
# LoDoPaB
# ---------------------------------------------------------------------------------------------


def lodopab_dm(root: Path, tmp_path: Path, **kwargs) -> LoDoPaBDataModule:
    kwargs.setdefault("crop_size", 28)
    return LoDoPaBDataModule(root=str(root), data_dir=str(tmp_path / "cache"), progress=False, **kwargs)


def test_lodopab_missing_and_empty_directories(tmp_path):
    with pytest.raises(DataFormatError, match=r"nowhere does not exist"):
        lodopab_dm(tmp_path / "nowhere", tmp_path).setup()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"empty holds no LoDoPaB files"):
        lodopab_dm(tmp_path / "empty", tmp_path).setup()


def test_lodopab_missing_part_is_named(lodopab, tmp_path):
    root = copy_dataset(lodopab, tmp_path)
    for path in root.glob("*_validation_*.hdf5"):
        path.unlink()
    dm = lodopab_dm(root, tmp_path)
    dm.setup("test")
    with pytest.raises(DataFormatError, match=r"no ground_truth_validation_NNN.hdf5 files for the val split"):
        dm.setup("validate")


def test_lodopab_stray_files_are_skipped_with_a_counted_warning(lodopab, tmp_path, caplog):
    root = copy_dataset(lodopab, tmp_path)
    (root / "ground_truth_train.zip").write_bytes(b"PK")
    (root / "README.md").write_text("LoDoPaB")
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        lodopab_dm(root, tmp_path).setup("fit")
    assert "skipped 2 entries" in caplog.text and "ground_truth_train.zip" in caplog.text


def test_lodopab_truncated_file(lodopab, tmp_path):
    root = copy_dataset(lodopab, tmp_path)
    truncate(root / "observation_train_001.hdf5", 0.3)
    with pytest.raises(
        DataFormatError, match=r"observation_train_001.hdf5: cannot be read as HDF5.*truncated"
    ):
        lodopab_dm(root, tmp_path).setup()


def test_lodopab_missing_key_and_wrong_shapes(lodopab, tmp_path):
    root = copy_dataset(lodopab, tmp_path)
    rewrite_h5(
        root / "ground_truth_test_000.hdf5",
        drop="data",
        replace={"images": np.zeros((4, 32, 32), np.float32)},
    )
    with pytest.raises(
        DataFormatError, match=r"ground_truth_test_000.hdf5: missing dataset 'data'.*\['images'\]"
    ):
        lodopab_dm(root, tmp_path).setup()
    rewrite_h5(
        root / "ground_truth_test_000.hdf5",
        drop="images",
        replace={"data": np.zeros((4, 32, 30), np.float32)},
    )
    with pytest.raises(
        DataFormatError, match=r"ground_truth_test_000.hdf5: ground-truth images must be square"
    ):
        lodopab_dm(root, tmp_path).setup()
    rewrite_h5(root / "ground_truth_test_000.hdf5", replace={"data": np.zeros((4, 32, 32), np.int32)})
    with pytest.raises(DataFormatError, match=r"ground_truth_test_000.hdf5: 'data' must be a float"):
        lodopab_dm(root, tmp_path).setup()
    rewrite_h5(root / "ground_truth_test_000.hdf5", replace={"data": np.zeros((3, 32, 32), np.float32)})
    with pytest.raises(
        DataFormatError, match=r"ground_truth_test_000.hdf5 has 3 rows but .*observation_test_000.hdf5 has 4"
    ):
        lodopab_dm(root, tmp_path).setup()


def test_lodopab_short_file_is_reported_as_truncated(lodopab, tmp_path):
    root = copy_dataset(lodopab, tmp_path)
    for kind in ("ground_truth", "observation"):
        path = root / f"{kind}_train_000.hdf5"
        with h5py.File(path, "r") as f:
            data = f["data"][:3]
        rewrite_h5(path, replace={"data": data})
    with pytest.raises(
        DataFormatError, match=r"ground_truth_train_000.hdf5: 3 rows, expected 4 per file.*truncated"
    ):
        lodopab_dm(root, tmp_path).setup()


def test_lodopab_missing_observation_and_mismatched_geometry(lodopab, tmp_path):
    root = copy_dataset(lodopab, tmp_path)
    (root / "observation_train_001.hdf5").unlink()
    with pytest.raises(
        DataFormatError,
        match=r"ground_truth_train_001.hdf5: its observation file observation_train_001.hdf5 is missing",
    ):
        lodopab_dm(root, tmp_path).setup()
    root = copy_dataset(lodopab, tmp_path / "b")
    rewrite_h5(root / "observation_test_000.hdf5", replace={"data": np.zeros((4, 10, 45), np.float32)})
    with pytest.raises(
        DataFormatError,
        match=r"observation_test_000.hdf5: sinograms are 10x45, expected \d+x\d+ \(angles x detector bins\)",
    ):
        lodopab_dm(root, tmp_path).setup()


def test_lodopab_nan_in_observation_fails_the_cache_build(lodopab, tmp_path):
    root = copy_dataset(lodopab, tmp_path)
    with h5py.File(root / "observation_validation_000.hdf5", "r+") as f:
        f["data"][1, 3, 4] = np.nan
    with pytest.raises(
        DataFormatError, match=r"observation_validation_000.hdf5 row\(s\) \[1\] contain 1 NaN/inf"
    ):
        lodopab_dm(root, tmp_path).setup()
    assert not list((root / "fbp_cache").rglob("observation_validation_000.hdf5"))  # no bad cache file


def test_lodopab_inf_in_ground_truth_is_reported_on_load(lodopab, tmp_path):
    """Caught when the file is first checked (setup), and by the per-sample check if the file
    changes after that."""
    root = copy_dataset(lodopab, tmp_path)
    with h5py.File(root / "ground_truth_test_000.hdf5", "r+") as f:
        f["data"][1, 0, 0] = np.inf
    with pytest.raises(DataFormatError, match=r"ground_truth_test_000.hdf5 row\(s\) \[1\] contain 1 NaN/inf"):
        lodopab_dm(root, tmp_path).setup("test")
    with h5py.File(root / "ground_truth_test_000.hdf5", "r+") as f:
        f["data"][1, 0, 0] = 0.5
    dm = lodopab_dm(root, tmp_path)
    dm.setup("test")
    with h5py.File(root / "ground_truth_test_000.hdf5", "r+") as f:
        f["data"][1, 0, 0] = np.inf
    dm.test_set[0]
    with pytest.raises(DataFormatError, match=r"ground_truth_test_000.hdf5 row 1 contains 1 NaN/inf"):
        dm.test_set[1]


def test_lodopab_crop_larger_than_images(lodopab, tmp_path):
    with pytest.raises(DataFormatError, match=r"crop_size=48 exceeds the 32x32 images"):
        lodopab_dm(lodopab, tmp_path, crop_size=48).setup()


def test_lodopab_bad_manifest(lodopab, tmp_path):
    root = copy_dataset(lodopab, tmp_path)
    (root / "equinet_lodopab.json").write_text("{not json")
    with pytest.raises(DataFormatError, match=r"equinet_lodopab.json: unreadable manifest"):
        lodopab_dm(root, tmp_path).setup()


# ---------------------------------------------------------------------------------------------
# FBP cache: resumable, atomic, reported
# ---------------------------------------------------------------------------------------------


def test_fbp_cache_resumes_after_interruption_and_is_atomic(lodopab, tmp_path, monkeypatch):
    root = copy_dataset(lodopab, tmp_path)
    reference = lodopab_dm(root, tmp_path, fbp="torch", fbp_cache_dir=str(tmp_path / "reference"))
    reference.setup()
    total = reference.cache_report.computed
    assert total == 6 + 3 + 2 and reference.cache_report.backend == "torch"
    assert reference.cache_report.per_image_ms > 0

    calls = {"n": 0}
    real_fbp = ct.fbp

    def flaky_fbp(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second chunk
        return real_fbp(*args, **kwargs)

    monkeypatch.setattr(ct, "fbp", flaky_fbp)
    dm = lodopab_dm(root, tmp_path, fbp="torch")
    with pytest.raises(KeyboardInterrupt):
        dm.setup()
    cache = root / "fbp_cache" / "hann-f1-torch"
    assert (cache / "observation_train_000.hdf5").is_file()  # first file finished and renamed
    partial = partial_path(cache / "observation_train_001.hdf5")
    assert partial.is_file() and not (cache / "observation_train_001.hdf5").exists()  # never half-written
    monkeypatch.setattr(ct, "fbp", real_fbp)
    dm = lodopab_dm(root, tmp_path, fbp="torch")
    dm.setup()
    assert dm.cache_report.computed == total - 4 and dm.cache_report.reused == 4  # continued where it stopped
    assert not list(cache.glob("*.partial*"))
    for path in cache.glob("*.hdf5"):
        with h5py.File(path) as a, h5py.File(tmp_path / "reference" / "hann-f1-torch" / path.name) as b:
            np.testing.assert_array_equal(a["data"][()], b["data"][()])
    again = lodopab_dm(root, tmp_path, fbp="torch")
    again.setup()
    assert again.cache_report.computed == 0 and again.cache_report.reused == total
    assert "reused" in again.cache_report.summary() and "backend torch" in again.cache_report.summary()


def test_one_fbp_builder_merges_its_stacks_and_cleans_up_after_a_failure(tmp_path, monkeypatch):
    """build_fbp_stacks (both DataModules' builder): one report over all files, the source
    generator closed and the FBP memory freed even when a stack fails."""
    from equinet.data import fbp_cache

    released, closed = [], []
    monkeypatch.setattr(fbp_cache.ct, "release_fbp_memory", lambda: released.append(1))
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal((n, 3, 2)).astype(np.float32) for n in (5, 3)]

    def stacks(fail_at=None):
        try:
            for k, r in enumerate(rows):
                def compute(i, j, r=r, k=k):
                    if k == fail_at:
                        raise RuntimeError("backend died")
                    return r[i:j]
                yield FBPStack(tmp_path / f"s{k}.hdf5", len(r), (3, 2), compute, {"k": k})
        finally:
            closed.append(1)

    report = build_fbp_stacks(stacks(), "torch", 8, "test", progress=False)
    assert (report.computed, report.reused, report.backend) == (8, 0, "torch") and len(released) == 1
    for k, r in enumerate(rows):
        with h5py.File(tmp_path / f"s{k}.hdf5") as f:
            np.testing.assert_array_equal(f["data"][()], r)
    assert build_fbp_stacks(stacks(), "torch", 8, "test", progress=False).reused == 8
    (tmp_path / "s1.hdf5").unlink()
    closed.clear()
    failing = stacks(fail_at=1)  # held here, so only the builder can close it
    with pytest.raises(RuntimeError, match="backend died"):
        build_fbp_stacks(failing, "skimage", 8, "test", progress=False)
    assert closed == [1] and len(released) == 3


def test_fbp_cache_resumes_mid_file_and_discards_corrupt_partials(tmp_path, caplog):
    path = tmp_path / "stack.hdf5"
    rows = np.arange(10 * 4, dtype=np.float32).reshape(10, 2, 2)
    seen = []

    def compute(i, j):
        seen.append((i, j))
        if i == 6 and len(seen) == 4:
            raise RuntimeError("power cut")
        return rows[i:j]

    with pytest.raises(RuntimeError):
        build_cached_stack(path, 10, (2, 2), compute, {"k": "v"}, "test", chunk=2)
    report = build_cached_stack(path, 10, (2, 2), compute, {"k": "v"}, "test", chunk=2)
    assert seen[4:] == [(6, 8), (8, 10)] and report.computed == 4 and report.reused == 6
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["data"][()], rows)
    # different settings -> rebuilt; a corrupt partial -> discarded with a warning
    assert build_cached_stack(path, 10, (2, 2), compute, {"k": "other"}, "test", chunk=5).computed == 10
    partial = partial_path(path)
    partial.write_bytes(b"garbage")
    path.unlink()
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        assert build_cached_stack(path, 10, (2, 2), compute, {"k": "v"}, "test", chunk=5).computed == 10
    assert "discarding unusable partial cache" in caplog.text


def test_fbp_cache_rebuilds_when_the_observation_changes(lodopab, tmp_path):
    root = copy_dataset(lodopab, tmp_path)
    lodopab_dm(root, tmp_path, fbp="torch").setup("test")
    obs = root / "observation_test_000.hdf5"
    with h5py.File(obs, "r+") as f:
        f["data"][0] *= 1.01
    os.utime(obs, ns=(obs.stat().st_atime_ns, obs.stat().st_mtime_ns + 10**9))
    dm = lodopab_dm(root, tmp_path, fbp="torch")
    dm.setup("test")
    assert dm.cache_report.computed == 2  # only the changed file


def test_fbp_cache_falls_back_to_data_dir_for_read_only_roots(lodopab, tmp_path, monkeypatch):
    dm = lodopab_dm(lodopab, tmp_path)
    assert dm.cache_folder("torch").is_relative_to(lodopab)
    real_access = os.access
    monkeypatch.setattr(
        os,
        "access",
        lambda path, mode: False if Path(path).is_relative_to(lodopab) else real_access(path, mode),
    )
    assert dm.cache_folder("torch").is_relative_to(tmp_path / "cache" / "fbp_cache")


# ---------------------------------------------------------------------------------------------
# ImageNet
# ---------------------------------------------------------------------------------------------


def imagenet_dm(root: Path, tmp_path: Path, **kwargs) -> ImageNetShiftDataModule:
    kwargs.setdefault("crop_size", 32)
    kwargs.setdefault("forward_model", "mri")
    return ImageNetShiftDataModule(root=str(root), data_dir=str(tmp_path / "cache"), progress=False, **kwargs)


def test_imagenet_missing_and_empty_directories(tmp_path):
    with pytest.raises(DataFormatError, match=r"nowhere does not exist"):
        imagenet_dm(tmp_path / "nowhere", tmp_path).setup()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n")
    with pytest.raises(DataFormatError, match=r"empty holds no images"):
        imagenet_dm(tmp_path / "empty", tmp_path).setup()


def test_imagenet_stray_files_skipped_with_a_counted_warning(imagenet, tmp_path, caplog):
    root = copy_dataset(imagenet, tmp_path)
    (root / "LOC_val_solution.csv").write_text("x")
    (root / "synset_words.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        imagenet_dm(root, tmp_path, num_images=3).setup()
    assert "skipped 2 files" in caplog.text and "synset_words.txt" in caplog.text


def test_imagenet_unreadable_and_truncated_images(imagenet, tmp_path):
    root = copy_dataset(imagenet, tmp_path)
    (root / "ILSVRC2012_val_00000002.JPEG").write_bytes(b"this is not a jpeg")
    with pytest.raises(DataFormatError, match=r"ILSVRC2012_val_00000002.JPEG: not a readable image"):
        imagenet_dm(root, tmp_path, num_images=3).setup()
    root = copy_dataset(imagenet, tmp_path / "b")
    truncate(root / "ILSVRC2012_val_00000003.JPEG", 0.5)
    dm = imagenet_dm(root, tmp_path, num_images=4)
    dm.setup()
    dm.test_set[1]
    with pytest.raises(
        DataFormatError, match=r"ILSVRC2012_val_00000003.JPEG: cannot decode the image.*truncated"
    ):
        dm.test_set[2]


def test_imagenet_images_smaller_than_the_crop(imagenet, tmp_path, caplog):
    from PIL import Image

    root = copy_dataset(imagenet, tmp_path)
    Image.new("RGB", (50, 20), (128, 64, 32)).save(root / "ILSVRC2012_val_00000002.JPEG")
    with caplog.at_level(logging.WARNING, logger="equinet.data"):
        skip = imagenet_dm(root, tmp_path, num_images=4)
        skip.setup()
    assert (
        "skipped 1 images smaller than 32x32" in caplog.text and "ILSVRC2012_val_00000002.JPEG" in caplog.text
    )
    assert [p.name for p in skip.paths] == [
        f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 3, 4, 5)
    ]  # next ones used
    with pytest.raises(
        DataFormatError,
        match=r"ILSVRC2012_val_00000002.JPEG: image of size 20x50 is smaller than the 32x32 crop",
    ):
        imagenet_dm(root, tmp_path, num_images=4, small_images="error").setup()
    resize = imagenet_dm(root, tmp_path, num_images=4, small_images="resize")
    resize.setup()
    sample = resize.test_set[1]
    assert sample.fname == "ILSVRC2012_val_00000002.JPEG" and tuple(sample.target.shape) == (1, 32, 32)
    with pytest.raises(ValueError, match="ct_image_size"):
        ImageNetShiftDataModule(crop_size=64, ct_image_size=32, forward_model="ct", synthetic=True)
    with pytest.raises(ValueError, match="forward_model"):
        ImageNetShiftDataModule(forward_model="ultrasound")


@pytest.mark.parametrize("cls, crop", [(FastMRIDataModule, 400), (LoDoPaBDataModule, 400)])
def test_a_forgotten_root_is_named_before_the_synthetic_size(cls, crop):
    """Without root and without synthetic=True the problem is the missing dataset folder, whatever
    the crop (the synthetic images' size matters only when synthetic data are asked for)."""
    with pytest.raises(ValueError, match="needs its dataset folder"):
        cls(crop_size=crop)
    with pytest.raises(ValueError, match=f"crop_size={crop} is larger than the synthetic images"):
        cls(crop_size=crop, synthetic=True, synthetic_size=crop // 2)
