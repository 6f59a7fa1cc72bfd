"""The synthetic knee set: a knee phantom (PD / PDFS), kept apart from the OOD natural images."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from equinet.data import synthetic
from equinet.data.common import stable_seed

TEMPLATE = 32  # centre patch of a training slice (40 px) searched for in every OOD image
SCALES = (32, 36, 40, 44, 48, 52, 56, 60, 64, 72, 80)  # the OOD image's shorter side, resized to each


def _best_match(template: np.ndarray, images) -> float:
    """Largest normalised cross-correlation of ``template`` (or its mirror images) with any
    window of any image at any of :data:`SCALES` (every crop, shift and flip of it)."""
    from skimage.feature import match_template
    from skimage.transform import resize

    best = -1.0
    flips = [template, template[:, ::-1], template[::-1], template[::-1, ::-1]]
    for image in images:
        for short in SCALES:
            factor = short / min(image.shape)
            shape = (max(TEMPLATE, round(image.shape[0] * factor)), max(TEMPLATE, round(image.shape[1] * factor)))
            scaled = resize(image, shape, anti_aliasing=True)
            for t in flips:
                best = max(best, float(match_template(scaled, np.ascontiguousarray(t)).max()))
    return best


def _centre(x: np.ndarray) -> np.ndarray:
    top, left = (x.shape[0] - TEMPLATE) // 2, (x.shape[1] - TEMPLATE) // 2
    return x[top : top + TEMPLATE, left : left + TEMPLATE]


def test_training_sources_are_not_ood_sources():
    assert synthetic.KNEE_SOURCES and set(synthetic.KNEE_SOURCES) <= set(synthetic.KNEE_SOURCE_KINDS)
    assert not set(synthetic.KNEE_SOURCES) & set(synthetic.NATURAL_IMAGES)
    assert not set(synthetic.KNEE_SOURCE_KINDS) & set(synthetic.NATURAL_IMAGES)
    with pytest.raises(ValueError, match="camera"):
        synthetic.knee_volume_images(np.random.default_rng(0), 32, 2, "camera")


@pytest.fixture(scope="module")
def ood_images(tmp_path_factory):
    """Every OOD source image once (as the ImageNet folder writes them), grayscale in [0, 1]."""
    out = tmp_path_factory.mktemp("ood")
    paths = synthetic.write_imagenet_folder(out, num_images=len(synthetic.NATURAL_IMAGES), size=64)
    return [np.asarray(Image.open(p).convert("L"), np.float64) / 255.0 for p in paths]


def test_no_training_slice_matches_an_ood_image(tmp_path, ood_images):
    # positive control first: another crop of an OOD image (camera, brick, coffee), written as a
    # knee volume (phase, noise, k-space round trip), is found: the old natural-texture knee set
    # (other crops of the same pictures) fails this test
    from skimage.transform import resize

    rng = np.random.default_rng(1)
    for index in (0, 4, 8):
        base = ood_images[index]
        side = int(min(base.shape) * 0.7)
        top, left = int(rng.integers(0, base.shape[0] - side)), int(rng.integers(0, base.shape[1] - side))
        crop = resize(base[top : top + side, left : left + side], (40, 40), anti_aliasing=True)
        path = tmp_path / f"control-{index}.h5"
        synthetic.write_knee_volume(path, crop[None], "CORPD_FBK", rng, "control")
        with h5py.File(path) as f:
            recon = f["reconstruction_esc"][0]
        assert _best_match(_centre(recon), ood_images) > 0.75, synthetic.NATURAL_IMAGES[index]
    # the training set: every slice of every volume, PD and PDFS alike
    written = synthetic.write_knee_dataset(tmp_path / "knee", num_volumes=4, num_slices=3, size=40, num_val=1, num_test=1)
    scores = []
    for path in written["train"]:
        with h5py.File(path) as f:
            for recon in f["reconstruction_esc"][()]:
                scores.append(_best_match(_centre(recon), ood_images))
    assert max(scores) < 0.65, scores  # measured: 0.42-0.63; the controls 0.76-0.98


def test_phantom_contrast_and_anatomy():
    size, slices = 192, 4  # cortical rim and cartilage ~2-3 px wide
    tissues = synthetic.knee_tissues(np.random.default_rng(3), size, slices)
    assert set(tissues) == set(synthetic.KNEE_TISSUES)
    total = sum(tissues.values())
    assert total.min() >= 0 and total.max() <= 1 + 1e-9
    middle = {k: v[slices // 2] for k, v in tissues.items()}
    for name, fraction in middle.items():  # every tissue is in the middle slice
        assert fraction.sum() > 2.0, name
    pd = synthetic.knee_phantom(np.random.default_rng(3), size, slices, "PD")
    fs = synthetic.knee_phantom(np.random.default_rng(3), size, slices, "PDFS")
    for image in (pd, fs):
        assert image.shape == (slices, size, size) and np.isfinite(image).all()
        assert image.min() >= 0 and image.max() == pytest.approx(1.0)

    def mean(image, tissue):  # mean over the pixels mostly of this tissue (thin ones: no pure pixel)
        w = tissues[tissue] * (tissues[tissue] > 0.5)
        assert w.sum() > 2.0, tissue
        return float((image * w).sum() / w.sum())

    # fat: bright in PD, dark in PDFS (relative to muscle); fatty marrow follows the fat
    assert mean(pd, "fat") > 1.8 * mean(pd, "muscle") and mean(fs, "fat") < 0.6 * mean(fs, "muscle")
    assert mean(pd, "marrow") > 1.5 * mean(pd, "muscle") and mean(fs, "marrow") < 0.7 * mean(fs, "muscle")
    for image in (pd, fs):  # cortical rim darker than marrow and muscle (partial volume: edges ~1 px)
        assert mean(image, "cortex") < min(0.6 * mean(image, "muscle"), mean(image, "marrow"))
        assert max(mean(image, "meniscus"), mean(image, "ligament")) < 0.6 * mean(image, "muscle")
    assert mean(pd, "cortex") < 0.6 * mean(pd, "marrow")  # (in PDFS fatty marrow is dark too)
    # fluid is the brightest tissue under fat suppression
    assert mean(fs, "fluid") > max(mean(fs, t) for t in synthetic.KNEE_TISSUES if t != "fluid")


def test_phantom_varies_across_slices_and_volumes_and_is_deterministic():
    a = synthetic.knee_phantom(np.random.default_rng(5), 64, 8)
    assert np.array_equal(a, synthetic.knee_phantom(np.random.default_rng(5), 64, 8))
    b = synthetic.knee_phantom(np.random.default_rng(6), 64, 8)
    flat = a.reshape(8, -1)
    for k in range(7):  # neighbouring slices differ, but are slices of one knee
        assert not np.allclose(flat[k], flat[k + 1], atol=1e-3)
        assert np.corrcoef(flat[k], flat[k + 1])[0, 1] > 0.8
    assert np.corrcoef(flat[0], flat[7])[0, 1] < np.corrcoef(flat[0], flat[1])[0, 1]
    assert np.abs(a - b).mean() > 0.05  # another volume: another knee
    with pytest.raises(ValueError, match="contrast"):
        synthetic.knee_phantom(np.random.default_rng(0), 32, 2, "T2")


def test_written_files_have_the_acquisitions_contrast(tmp_path):
    """PDFS files: fat dark; PD files: fat bright (in the stored reconstruction), and the header
    and attrs name the acquisition the phantom was drawn with."""
    size, slices = 64, 3
    written = synthetic.write_knee_dataset(tmp_path, num_volumes=4, num_slices=slices, size=size, num_val=1, num_test=1)
    seen = set()
    for i, path in enumerate(written["train"]):
        tissues = synthetic.knee_tissues(np.random.default_rng(stable_seed("knee", 0, "train", i)), size, slices)
        with h5py.File(path) as f:
            acquisition = f.attrs["acquisition"]
            header = f["ismrmrd_header"][()].decode()
            recon = f["reconstruction_esc"][()]
        assert f"<protocolName>{acquisition}</protocolName>" in header
        fat = recon[tissues["fat"] > 0.9].mean() / recon[tissues["muscle"] > 0.9].mean()
        if acquisition == "CORPDFS_FBK":
            assert fat < 0.6, (path.name, fat)
        else:
            assert acquisition == "CORPD_FBK" and fat > 1.8, (path.name, fat)
        seen.add(acquisition)
    assert seen == set(synthetic.KNEE_ACQUISITIONS)
