"""Resumable, atomic on-disk cache of computed image stacks (FBP reconstructions).

A cache file ``X.hdf5`` (dataset ``data``) is built as ``X.hdf5.partial-<host>`` chunk by chunk;
after every chunk its rows are flushed and the attribute ``num_done`` advanced, so an interrupted
build resumes at the first missing row. When complete the partial file is renamed to ``X.hdf5``
(atomic), so a reader never sees a half-written cache. The host name in the partial file keeps
two nodes of a multi-node job that share the data folder from writing into the same file (each
then finishes its own copy and the identical results replace one another atomically).
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import h5py
import numpy as np

from equinet.data.common import log


@dataclass
class CacheReport:
    """What a cache step did: images computed now (not reused), seconds, backend."""

    backend: str
    computed: int = 0
    reused: int = 0
    seconds: float = 0.0
    files: list = field(default_factory=list)

    @property
    def per_image_ms(self) -> float:
        return 1000.0 * self.seconds / self.computed if self.computed else float("nan")

    def merge(self, other: "CacheReport") -> None:
        self.computed += other.computed
        self.reused += other.reused
        self.seconds += other.seconds
        self.files.extend(other.files)

    def summary(self) -> str:
        if not self.computed:
            return f"FBP cache: all {self.reused} images reused (backend {self.backend})"
        return (
            f"FBP cache: computed {self.computed} images in {self.seconds:.1f} s "
            f"({self.per_image_ms:.1f} ms/image, backend {self.backend}); reused {self.reused}"
        )


def _attrs_match(attrs, expected: Dict) -> bool:
    for key, value in expected.items():
        if key not in attrs:
            return False
        stored = attrs[key]
        if isinstance(stored, bytes):
            stored = stored.decode()
        if isinstance(value, float):
            if not np.isclose(float(stored), value):
                return False
        elif str(stored) != str(value):
            return False
    return True


def is_complete(path: Path, key: Dict) -> bool:
    """Whether ``path`` is a finished cache built with attributes ``key``."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return _attrs_match(f.attrs, key) and "data" in f
    except OSError:
        return False


def partial_path(path: Path) -> Path:
    """Where ``path`` is built before its atomic rename (per host)."""
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
    return path.with_name(f"{path.name}.partial-{host}")


def build_cached_stack(
    path: Path,
    num_rows: int,
    row_shape: Sequence[int],
    compute: Callable[[int, int], np.ndarray],
    key: Dict,
    backend: str,
    chunk: int = 8,
    progress: Optional[Callable[[int], None]] = None,
) -> CacheReport:
    """Make ``path`` hold ``compute(0, num_rows)`` (float32), computed ``chunk`` rows at a time.

    ``key`` (JSON-able scalars) is stored as attributes; a complete file with the same key is
    reused, a partial one with the same key is resumed, anything else is rebuilt. ``progress`` is
    called with the number of rows finished after each chunk (for a progress bar).
    """
    path = Path(path)
    report = CacheReport(backend=backend, files=[path])
    if is_complete(path, key):
        report.reused = num_rows
        if progress:
            progress(num_rows)
        return report
    partial = partial_path(path)
    start = 0
    if partial.exists():
        try:
            with h5py.File(partial, "r") as f:
                if _attrs_match(f.attrs, key) and f["data"].shape == (num_rows, *row_shape):
                    start = int(f.attrs["num_done"])
                else:
                    start = -1
        except (OSError, KeyError):
            start = -1
        if start < 0:
            log.warning(
                "discarding unusable partial cache %s (different settings or corrupt); rebuilding", partial
            )
            partial.unlink()
            start = 0
        elif start:
            log.info("resuming %s at row %d of %d", partial, start, num_rows)
    if not partial.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(partial, "w") as f:
            f.create_dataset("data", shape=(num_rows, *row_shape), dtype=np.float32, chunks=(1, *row_shape))
            for k, v in key.items():
                f.attrs[k] = v
            f.attrs["num_done"] = 0
    report.reused = start
    if progress and start:
        progress(start)
    with h5py.File(partial, "r+") as f:
        data = f["data"]
        for i in range(start, num_rows, chunk):
            j = min(num_rows, i + chunk)
            t0 = time.perf_counter()
            rows = np.asarray(compute(i, j), dtype=np.float32)
            report.seconds += time.perf_counter() - t0
            if rows.shape != (j - i, *row_shape):
                raise ValueError(f"cache compute returned shape {rows.shape}, expected {(j - i, *row_shape)}")
            data[i:j] = rows
            f.attrs["num_done"] = j
            f.flush()
            report.computed += j - i
            if progress:
                progress(j - i)
        f.attrs["backend"] = backend
    os.replace(partial, path)
    return report
