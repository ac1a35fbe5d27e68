"""One writer at a time: an exclusive ``flock`` on a lock file, removed when released.

Used by the cache writer (``<cache>.lock``) and by staging (``<staged>.staging-lock``).
A second process asking for a held lock fails at once with :class:`CacheLockedError`,
naming the holder's pid. The lock file is deleted on release, so a finished run leaves
nothing behind, whether it succeeded or failed (``kill -9`` leaves the file, unlocked: the
next run takes it and removes it).

Deleting a lock file is racy unless every taker checks what it locked. Between our
``open`` and ``flock`` the holder may release and unlink the file; we would then hold a
lock on an orphaned inode while a third process creates and locks a new file at the same
path. So after ``flock`` succeeds, the path must still name the inode we locked (``fstat``
of our descriptor against ``stat`` of the path); if not, we retry on the new file. The
holder unlinks *before* unlocking, so whoever holds a lock on the inode the path names is
the only writer.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import Callable

from .errors import CacheLockedError

_RETRIES = 100  # a retry happens only when another process released the lock meanwhile


class FileLock:
    """An exclusive, non-blocking lock on ``path``; a context manager.

    ``busy`` turns the holder's pid (as text, ``"unknown"`` if unreadable) into the error
    message shown when another process holds the lock.
    """

    def __init__(self, path: str | os.PathLike, busy: Callable[[str], str]):
        self.path = Path(path)
        self.busy = busy
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> "FileLock":
        if self._fh is not None:
            raise RuntimeError(f"lock {self.path} is already held by this object")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(_RETRIES):
            fh = open(self.path, "a+")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _read_holder(fh)
                fh.close()
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise CacheLockedError(self.busy(holder)) from None
            if _names_same_file(self.path, fh):
                fh.seek(0)
                fh.truncate()
                fh.write(str(os.getpid()))
                fh.flush()
                self._fh = fh
                return self
            fh.close()  # the holder released and removed it meanwhile: lock the new file
        raise CacheLockedError(self.busy("unknown"))

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order: see the module notes)."""
        fh, self._fh = self._fh, None
        if fh is None:
            return
        try:
            if _names_same_file(self.path, fh):
                self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
            fh.close()

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _names_same_file(path: Path, fh) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fh.fileno())
    return (on_disk.st_dev, on_disk.st_ino) == (mine.st_dev, mine.st_ino)


def _read_holder(fh) -> str:
    try:
        fh.seek(0)
        return fh.read().strip() or "unknown"
    except OSError:
        return "unknown"
