"""Resumable, atomic on-disk cache of computed image stacks (FBP reconstructions).

A cache file ``X.hdf5`` (dataset ``data``) is built as ``X.hdf5.partial-<host>`` chunk by chunk;
after every chunk its rows are flushed and the attribute ``num_done`` advanced, so an interrupted
build resumes at the first missing row. When complete the partial file is renamed to ``X.hdf5``
(atomic), so a reader never sees a half-written cache. The host name in the partial file keeps
two nodes of a multi-node job that share the data folder from writing into the same file (each
then finishes its own copy and the identical results replace one another atomically).

Callers key a cache on the *content* it was computed from (a checksum of the source rows), not
on file names or times. A complete file is checked before it is reused (shape, dtype, every value
finite); a bad one is rebuilt with a warning naming it. Reading a whole file to check it (or to
checksum a source) happens once: the result is remembered (:func:`remembered`) together with the
file's fingerprint (size, mtime, ctime, inode) and recomputed only when that changes. Any write
to a file changes its ctime, which unlike the mtime cannot be set back, so a file rewritten with
the same size and mtime is noticed.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from equinet.data import ct
from equinet.data.common import atomic_write_text, log, shown

MEMO_VERSION = 1
CACHE_CHANGED = "the cache file changed after it was checked; the next setup checks it again and rebuilds it"


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


def fingerprint(path: Path) -> Dict[str, Any]:
    """What identifies a file's current content without reading it: resolved path, size, mtime,
    ctime and inode (a write changes the ctime, and the ctime cannot be set back)."""
    stat = Path(path).stat()
    return {
        "path": str(Path(path).resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
    }


def remembered(memo: Path, sources: Sequence[Path], compute: Callable[[], Any], key: Any = None) -> Any:
    """``compute()`` (a JSON-able value about the files ``sources``), remembered in the JSON file
    ``memo`` and recomputed only when a source's :func:`fingerprint` or ``key`` changes."""
    stamp = _stamp(sources, key)
    try:
        stored = json.loads(Path(memo).read_text())
        if stored.get("stamp") == json.loads(json.dumps(stamp)):
            return stored["value"]
    except (OSError, ValueError, AttributeError, KeyError):
        pass
    value = compute()
    # recorded under the fingerprints taken *before* computing: a file that changed meanwhile
    # no longer matches them, so the next call computes again instead of trusting a stale value
    _write_memo(memo, stamp, value)
    return value


def remember(memo: Path, sources: Sequence[Path], value: Any, key: Any = None) -> None:
    """Record ``value`` for the current fingerprints of ``sources`` (see :func:`remembered`)."""
    _write_memo(memo, _stamp(sources, key), value)


def _stamp(sources: Sequence[Path], key: Any) -> dict:
    return {"version": MEMO_VERSION, "sources": [fingerprint(p) for p in sources], "key": key}


def _write_memo(memo: Path, stamp: dict, value: Any) -> None:
    atomic_write_text(memo, json.dumps({"stamp": stamp, "value": value}, indent=1))


def memo_path(path: Path) -> Path:
    """The memo beside cache file ``path`` recording that it was checked."""
    return path.with_name(f"{path.name}.checked.json")


def check_stack(path: Path, num_rows: int, row_shape: Sequence[int], chunk: int = 16) -> Optional[str]:
    """What is wrong with a complete cache file (``None`` if nothing): its ``data`` must be
    float32 ``(num_rows, *row_shape)`` and finite everywhere."""
    expected = (num_rows, *row_shape)
    try:
        with h5py.File(path, "r") as f:
            data = f.get("data")
            if not isinstance(data, h5py.Dataset):
                return "no 'data' dataset"
            if data.shape != expected or data.dtype != np.float32:
                return f"'data' is {data.dtype} {data.shape}, expected float32 {expected}"
            for i in range(0, num_rows, chunk):
                rows = data[i : min(num_rows, i + chunk)]
                finite = np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
                if not finite.all():
                    return f"row(s) {(np.flatnonzero(~finite) + i).tolist()} hold NaN/inf values"
    except OSError as err:
        return f"unreadable ({err})"
    return None


def is_complete(path: Path, key: Dict) -> bool:
    """Whether ``path`` is a finished cache built with attributes ``key``."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return _attrs_match(f.attrs, key) and "data" in f
    except OSError:
        return False


def _reusable(path: Path, key: Dict, num_rows: int, row_shape: Sequence[int]) -> bool:
    """A complete cache with ``key`` that passes :func:`check_stack` (checked once per file
    version); a bad one is deleted with a warning naming it."""
    if not is_complete(path, key):
        return False
    problem = remembered(
        memo_path(path), [path], lambda: check_stack(path, num_rows, row_shape), key=num_rows
    )
    if problem is None:
        return True
    log.warning("cache file %s is unusable (%s); rebuilding it", shown(path), problem)
    path.unlink()
    memo_path(path).unlink(missing_ok=True)
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
    reused if it passes :func:`check_stack`, a partial one with the same key is resumed, anything
    else is rebuilt. Computed rows must be finite. ``progress`` is called with the number of rows
    finished after each chunk (for a progress bar).
    """
    path = Path(path)
    report = CacheReport(backend=backend, files=[path])
    if _reusable(path, key, num_rows, row_shape):
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
            finite = np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
            if not finite.all():
                raise FloatingPointError(
                    f"{shown(path)}: the {backend} backend returned NaN/inf for row(s) "
                    f"{(np.flatnonzero(~finite) + i).tolist()} of finite input; nothing was cached for them"
                )
            data[i:j] = rows
            f.attrs["num_done"] = j
            f.flush()
            report.computed += j - i
            if progress:
                progress(j - i)
        f.attrs["backend"] = backend
    os.replace(partial, path)
    remember(memo_path(path), [path], None, key=num_rows)  # every row was checked as it was computed
    return report


@dataclass
class FBPStack:
    """One cache file to build: ``compute(i, j)`` gives FBP rows ``i:j`` (float32) of ``row_shape``."""

    path: Path
    num_rows: int
    row_shape: Tuple[int, ...]
    compute: Callable[[int, int], np.ndarray]
    key: Dict


def fbp_device(requested: Optional[str]) -> torch.device:
    """The device of the torch FBP: ``requested``, else CUDA if available, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fbp_chunk(backend: str) -> int:
    """Rows per computed chunk: batches of 8 for the torch backend, one image otherwise."""
    return 8 if backend == "torch" else 1


def build_fbp_stacks(
    stacks: Iterable[FBPStack], backend: str, total: int, desc: str, progress: bool = True
) -> CacheReport:
    """Build every stack with :func:`build_cached_stack` under one progress bar (``total`` rows,
    ``desc``), merge their reports and free the FBP backend's memory afterwards, also on error.

    ``stacks`` may be a generator holding its source open while a stack is computed.
    """
    report = CacheReport(backend=backend)
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for stack in stacks:
            report.merge(
                build_cached_stack(
                    stack.path,
                    stack.num_rows,
                    stack.row_shape,
                    stack.compute,
                    stack.key,
                    backend,
                    chunk=fbp_chunk(backend),
                    progress=bar.update,
                )
            )
            if report.computed:
                bar.set_postfix_str(f"{report.per_image_ms:.0f} ms/img")
    finally:
        close = getattr(stacks, "close", None)
        if callable(close):  # a generator's open source files are closed now, not at collection
            close()
        bar.close()
        ct.release_fbp_memory()
    return report
