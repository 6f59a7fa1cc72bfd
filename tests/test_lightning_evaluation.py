"""Per-volume metrics from per-slice records, seeded shifts, per-sample rolls, reports."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from _lightning_helpers import TinyNet, ToyVolumes
from torch.utils.data import DataLoader

from equinet.lightning import EquivarianceEvaluation, ReconstructionModule
from equinet.lightning.evaluation import (
    dpsnr_shifts,
    gather_unique,
    slice_records,
    summarise,
    volume_metrics,
    volume_shift,
    write_report,
)
from equinet.metrics import (
    circular_shift,
    equivariance_errors,
    nmse,
    psnr,
    ssim,
    worst_dpsnr_image,
    worst_dpsnr_volume,
)


def _volumes(rng: np.random.Generator, slices, size=16):
    vols = {}
    for v, n in enumerate(slices):
        gt = rng.random((n, size, size)) * (v + 1)
        vols[f"v{v}"] = (gt, gt + 0.1 * rng.standard_normal(gt.shape), float(gt.max()))
    return vols


@settings(max_examples=10)
@given(slices=st.lists(st.integers(1, 4), min_size=1, max_size=4), batch=st.integers(1, 5),
       seed=st.integers(0, 2**16), duplicates=st.integers(0, 3))
def test_volume_metrics_equal_fastmri_on_stacked_volumes(slices, batch, seed, duplicates):
    """Whatever the batching/order, with sampler-style duplicates, volumes match fastMRI metrics."""
    rng = np.random.default_rng(seed)
    vols = _volumes(rng, slices)
    items = [(f, s, gt[s], pred[s], mx) for f, (gt, pred, mx) in vols.items() for s in range(gt.shape[0])]
    items += [items[i % len(items)] for i in range(duplicates)]  # DistributedSampler-like padding
    random.Random(seed).shuffle(items)
    records = []
    for i in range(0, len(items), batch):
        chunk = items[i:i + batch]
        keys = [(f, s) for f, s, *_ in chunk]
        t = torch.tensor(np.stack([c[2] for c in chunk]))[:, None]
        p = torch.tensor(np.stack([c[3] for c in chunk]))[:, None]
        records += slice_records(keys, t, p, torch.tensor([c[4] for c in chunk], dtype=torch.float64))
    unique, dropped = gather_unique(records)
    assert dropped == duplicates
    rows = {r["fname"]: r for r in volume_metrics(unique)}
    assert sorted(rows) == sorted(vols)
    for f, (gt, pred, mx) in vols.items():
        assert rows[f]["slices"] == gt.shape[0]
        assert rows[f]["nmse"] == pytest.approx(nmse(gt, pred), rel=1e-12)
        assert rows[f]["psnr"] == pytest.approx(psnr(gt, pred, mx), rel=1e-12)
        assert rows[f]["ssim"] == pytest.approx(ssim(gt, pred, mx), rel=1e-12)


def test_dropping_duplicates_matters():
    """Counting a padded duplicate twice changes the volume mean: the de-duplication is needed."""
    rng = np.random.default_rng(0)
    gt, pred, mx = _volumes(rng, [3])["v0"]
    keys = [("v0", 0), ("v0", 1), ("v0", 2), ("v0", 0)]
    t = torch.tensor(gt[[0, 1, 2, 0]])[:, None]
    p = torch.tensor(pred[[0, 1, 2, 0]])[:, None]
    records = slice_records(keys, t, p, mx)
    naive = np.mean([r["ssim"] for r in records])
    unique, _ = gather_unique(records)
    assert volume_metrics(unique)[0]["ssim"] == pytest.approx(ssim(gt, pred, mx), rel=1e-12)
    assert naive != pytest.approx(ssim(gt, pred, mx), rel=1e-6)


@settings(max_examples=25)
@given(b=st.integers(1, 4), c=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
       seed=st.integers(0, 1000))
def test_circular_shift_per_sample_equals_torch_roll(b, c, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    shifts = torch.randint(-20, 21, (b, 2), generator=g)
    got = circular_shift(x, shifts)  # (B, d) shifts: one per sample
    for i in range(b):
        assert torch.equal(got[i], torch.roll(x[i], tuple(shifts[i].tolist()), dims=(-2, -1)))


def test_circular_shift_per_sample_rejects_bad_shifts():
    with pytest.raises(ValueError, match="shifts must be"):
        circular_shift(torch.zeros(2, 1, 4, 4), torch.zeros(3, 2, dtype=torch.long))


def test_seeded_shifts_depend_on_key_only():
    a = volume_shift(0, "file1.h5")
    assert torch.equal(a, volume_shift(0, "file1.h5"))
    draws = torch.stack([volume_shift(s, f"f{i}") for s in range(3) for i in range(100)])
    assert draws.abs().max() <= 16 and draws.min() == -16 and draws.max() == 16  # the whole range is used
    assert len({tuple(d) for d in draws.tolist()}) > 250
    k = dpsnr_shifts(1, "f", 10)
    assert k.shape == (10, 2) and torch.equal(k, dpsnr_shifts(1, "f", 10))
    assert not torch.equal(k, dpsnr_shifts(1, "g", 10)) and not torch.equal(k, dpsnr_shifts(2, "f", 10))


def _eval_module(pool=True):
    torch.manual_seed(0)
    module = ReconstructionModule(TinyNet(channels=4, pool=pool))
    module.eval()
    return module


@pytest.mark.parametrize("pool", [True, False])
def test_equivariance_callback_matches_metric_functions(pool):
    """Callback records, assembled per volume, equal equinet.metrics on whole volumes/images."""
    module = _eval_module(pool)
    data = ToyVolumes([3, 2], size=32, seed=3)
    cb = EquivarianceEvaluation(max_shift=16, num_dpsnr_shifts=4, seed=5)
    for batch in DataLoader(data, batch_size=2):
        cb.on_test_batch_end(None, module, None, batch, 0)
    records, _ = gather_unique(cb._records)
    rows = {r["fname"]: r for r in volume_metrics(records)}
    with torch.no_grad():
        for fname in rows:
            items = [it for it in data.items if it.fname == fname]
            x = torch.stack([it.input for it in items])
            y = torch.stack([it.target for it in items])
            mean = torch.tensor([it.mean for it in items]).reshape(-1, 1, 1, 1)
            std = torch.tensor([it.std for it in items]).reshape(-1, 1, 1, 1)
            k = volume_shift(5, fname, 16).tolist()
            def model(z, std=std, mean=mean):  # original units
                return module(z) * std + mean

            ref = equivariance_errors(model(x), model(circular_shift(x, k)), k, items[0].max_value)
            assert rows[fname]["equivariance_nmse"] == pytest.approx(ref["nmse"], rel=1e-6, abs=1e-12)
            assert rows[fname]["equivariance_ssim"] == pytest.approx(ref["ssim"], rel=1e-9)
            # worst-case |dPSNR|, both conventions, against the metric functions in original units
            shifts = dpsnr_shifts(5, fname, 4, 16)
            y_orig = y * std + mean
            want = worst_dpsnr_image(model, x, y_orig, shifts)
            for i, it in enumerate(items):
                got = next(r["worst_dpsnr_image"] for r in records
                           if r["fname"] == fname and r["slice_num"] == i)
                assert got == pytest.approx(float(want[i]), rel=1e-4, abs=1e-6)
            assert rows[fname]["worst_dpsnr_image"] == pytest.approx(float(want.max()), rel=1e-4, abs=1e-6)
            want_volume = worst_dpsnr_volume(model, x, y_orig, shifts)
            assert rows[fname]["worst_dpsnr_volume"] == pytest.approx(want_volume, rel=1e-4, abs=1e-6)
    eq = [rows[f]["equivariance_nmse"] for f in rows]
    if pool:  # max-pooling is not shift-equivariant: the metric sees it (so this test can fail)
        assert max(eq) > 1e-4
    else:  # circular convolutions only: exactly equivariant
        assert max(eq) < 1e-12


def test_report_files(tmp_path):
    volumes = [{"fname": "a", "slices": 2, "max_value": 1.0, "nmse": 0.1, "psnr": 30.0, "ssim": 0.9,
                "worst_dpsnr_image": 1.5, "worst_dpsnr_volume": 0.25},
               {"fname": "b", "slices": 1, "max_value": 1.0, "nmse": 0.1, "psnr": 30.0, "ssim": 0.9,
                "worst_dpsnr_image": 0.1, "worst_dpsnr_volume": 0.05}]
    images = [{"fname": "a", "slice_num": 0, "worst_dpsnr_image": 0.5},
              {"fname": "a", "slice_num": 1, "worst_dpsnr_image": 1.5},
              {"fname": "b", "slice_num": 0, "worst_dpsnr_image": 0.1}]
    summary = summarise(volumes, images)
    assert summary["worst_dpsnr_image"] == 1.5 and summary["worst_dpsnr_image_mean"] == pytest.approx(0.7)
    assert summary["worst_dpsnr_volume"] == 0.25 and summary["worst_dpsnr_volume_mean"] == pytest.approx(0.15)
    paths = write_report(tmp_path / "run", "test", volumes, images, summary, {"checkpoint": "x.ckpt"})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["test_images.csv", "test_summary.md",
                                                                     "test_volumes.csv"]
    text = paths["summary"].read_text()
    assert "| nmse | 0.1 |" in text and "| worst_dpsnr_image | 1.5 |" in text and "x.ckpt" in text
    assert "| worst_dpsnr_volume | 0.25 |" in text
    assert paths["volumes"].read_text().splitlines()[0] == (
        "fname,slices,max_value,nmse,psnr,ssim,worst_dpsnr_image,worst_dpsnr_volume")
