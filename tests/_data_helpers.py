"""Small generated datasets shared by the data tests (built once per session, in pytest's tmp)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from equinet.data import synthetic

KNEE = dict(num_volumes=3, num_slices=4, size=32, num_val=3, num_test=2)
LODOPAB = dict(num_train=6, num_val=3, num_test=2, size=32, samples_per_file=4)
IMAGENET = dict(num_images=12, size=40)


def session_dataset(tmp_path_factory, name: str, build: Callable[[Path], object]) -> Path:
    """``build`` a dataset once per test session (shared by every test module) and return it."""
    root = tmp_path_factory.getbasetemp() / "equinet-data" / name
    if not root.is_dir():
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        tmp.rename(root)
    return root


def knee_root(tmp_path_factory) -> Path:
    return session_dataset(tmp_path_factory, "knee", lambda out: synthetic.write_knee_dataset(out, **KNEE))


def lodopab_root(tmp_path_factory) -> Path:
    return session_dataset(
        tmp_path_factory, "lodopab", lambda out: synthetic.write_lodopab_dataset(out, **LODOPAB)
    )


def imagenet_root(tmp_path_factory) -> Path:
    return session_dataset(
        tmp_path_factory, "imagenet", lambda out: synthetic.write_imagenet_folder(out, **IMAGENET)
    )


def copy_dataset(source: Path, tmp_path: Path) -> Path:
    """A private copy of a session dataset (without caches) for tests that damage it."""
    target = tmp_path / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("fbp_cache"))
    return target


def psnr(estimate: np.ndarray, reference: np.ndarray, data_range: float = 1.0) -> float:
    mse = float(np.mean((np.asarray(estimate, np.float64) - np.asarray(reference, np.float64)) ** 2))
    return 10 * np.log10(data_range**2 / mse)
