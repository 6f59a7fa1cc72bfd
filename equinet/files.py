"""File writing shared across equinet: never leave a half-written file behind.

Everything is written under a temporary name in the target's directory and renamed into place,
so a reader sees the old file or the complete new one, never a part. ``tempfile`` creates its
files 0600 and folders 0700 whatever the umask; the helpers here give the final file or folder
the mode a plain ``open``/``mkdir`` would have had (0666/0777 minus the umask), so reports,
caches and datasets on a shared disk stay readable by the team.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

PathLike = Union[str, os.PathLike]


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _chmod_like_open(path: PathLike, directory: bool = False) -> None:
    os.chmod(path, (0o777 if directory else 0o666) & ~current_umask())


def temporary_path(final: PathLike) -> Path:
    """A new, empty file beside ``final`` (same directory, hidden name) with the umask's mode.

    Write to it, then ``os.replace(tmp, final)``; delete it on failure.
    """
    final = Path(final)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    _chmod_like_open(name)
    return Path(name)


@contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write the whole file to; on success it is renamed
    to ``path`` (readers see the old file or the new one, never half of it), on failure deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file in the same directory and a rename."""
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        f.write(text)


@contextmanager
def atomic_directory(final: PathLike, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``final`` and rename it to ``final`` on success.

    If ``final`` exists (another process finished first), the temporary copy is discarded, or,
    with ``replace=True``, swapped in for the old folder, which is then removed (a new set of
    outputs replaces the old one whole). On error the temporary directory is removed: no
    half-written dataset is left.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    _chmod_like_open(tmp, directory=True)
    try:
        yield tmp
        if replace and final.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / final.name)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
