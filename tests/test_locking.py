"""One writer at a time, and no lock file left behind (embedder.locking)."""

from __future__ import annotations

import fcntl

import numpy as np
import pytest

from headstart.embedder import locking, staging
from headstart.embedder.cache import CacheWriter, lock_path_for, write_cache
from headstart.embedder.errors import CacheLockedError
from headstart.embedder.locking import FileLock

FP = {"architecture": "Test", "weights": "none:seed=0", "input_size": 32, "pooling": "avg"}


def _busy(holder: str) -> str:
    return f"busy (pid {holder})"


def test_cache_writer_removes_its_lock_file_after_success_and_failure(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, FP):
        assert lock_path_for(path).exists()  # held while the writer works
    assert not lock_path_for(path).exists()

    write_cache(path, FP, ["a"], np.ones((1, 2)), [], [], tmp_path)
    assert not lock_path_for(path).exists()

    with pytest.raises(RuntimeError, match="boom"):
        with CacheWriter(path, FP):
            raise RuntimeError("boom")
    assert not lock_path_for(path).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


def test_a_lock_file_left_by_a_killed_run_is_taken_and_removed(tmp_path):
    path = tmp_path / "c.h5"
    lock_path_for(path).write_text("12345")  # kill -9 leaves the file, but no flock on it
    with CacheWriter(path, FP):
        assert lock_path_for(path).read_text() == str(__import__("os").getpid())
    assert not lock_path_for(path).exists()


def test_second_holder_fails_clearly_and_names_the_first(tmp_path):
    lock = tmp_path / "x.lock"
    with FileLock(lock, _busy):
        with pytest.raises(CacheLockedError, match=rf"busy \(pid {__import__('os').getpid()}\)"):
            FileLock(lock, _busy).acquire()
        assert lock.exists()
    assert not lock.exists()
    with FileLock(lock, _busy):  # free again
        pass


def test_staging_lock_is_one_writer_and_leaves_no_file(tmp_path):
    local = tmp_path / "stage" / "c.h5"
    url = staging.location("ram://bucket/c.h5")
    with staging._staging_lock(local, url):
        with pytest.raises(CacheLockedError, match="on this machine"):
            with staging._staging_lock(local, url):
                pass
    assert list(local.parent.iterdir()) == []
    with pytest.raises(RuntimeError):
        with staging._staging_lock(local, url):
            raise RuntimeError("boom")
    assert list(local.parent.iterdir()) == []


def test_lock_on_a_removed_file_is_not_a_lock(tmp_path, monkeypatch):
    """The race the inode check closes: B opens the lock file, A releases (and removes it),
    C creates and locks a new file at the path, then B's flock on the old inode succeeds.
    B must notice that the path no longer names what it locked, retry, and find C there."""
    path = tmp_path / "x.lock"
    a = FileLock(path, _busy).acquire()
    c = FileLock(path, _busy)
    real_flock = fcntl.flock
    calls = []

    def interleaved(fh, op):
        calls.append(op)
        if len(calls) == 1:  # B has opened the old file; now A finishes and C starts
            a.release()
            c.acquire()
        return real_flock(fh, op)

    monkeypatch.setattr(locking.fcntl, "flock", interleaved)
    with pytest.raises(CacheLockedError):
        FileLock(path, _busy).acquire()
    monkeypatch.setattr(locking.fcntl, "flock", real_flock)
    assert c.held and path.exists()
    c.release()
    assert not path.exists()
