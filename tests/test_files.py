"""equinet.files: atomic writers leave no partial file and give files the umask's mode."""

import os
import stat

import pytest

from equinet.files import atomic_directory, atomic_write, atomic_write_text, temporary_path


@pytest.fixture(params=[0o022, 0o077, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writers_honour_the_umask(tmp_path, umask):
    atomic_write_text(tmp_path / "a" / "report.md", "x\n")
    assert mode(tmp_path / "a" / "report.md") == 0o666 & ~umask
    assert mode(temporary_path(tmp_path / "b.h5")) == 0o666 & ~umask
    with atomic_directory(tmp_path / "dataset") as tmp:
        (tmp / "f.txt").write_text("y")
    assert mode(tmp_path / "dataset") == 0o777 & ~umask
    assert (tmp_path / "dataset" / "f.txt").read_text() == "y"
    with atomic_write(tmp_path / "c" / "panel.png") as tmp:
        tmp.write_bytes(b"png")
    assert mode(tmp_path / "c" / "panel.png") == 0o666 & ~umask
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["panel.png"]


def test_failed_writes_leave_nothing_behind(tmp_path):
    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        with atomic_directory(tmp_path / "dataset"):
            raise Boom
    atomic_write_text(tmp_path / "r.md", "old")
    with pytest.raises(TypeError):
        atomic_write_text(tmp_path / "r.md", None)  # type: ignore[arg-type]
    with pytest.raises(Boom):
        with atomic_write(tmp_path / "r.md") as tmp:
            tmp.write_text("half")
            raise Boom
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md"]
    assert (tmp_path / "r.md").read_text() == "old"


def test_atomic_directory_replace_swaps_the_whole_folder(tmp_path, umask):
    with atomic_directory(tmp_path / "out") as tmp:
        (tmp / "old.h5").write_text("old")
    with atomic_directory(tmp_path / "out") as tmp:  # default: the first complete folder stays
        (tmp / "new.h5").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.h5"]
    with atomic_directory(tmp_path / "out", replace=True) as tmp:
        (tmp / "new.h5").write_text("new")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.h5"]  # no stale file of the old set
    assert mode(tmp_path / "out") == 0o777 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left behind
