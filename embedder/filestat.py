"""When a listed file keeps the key it had last time without being read: git's index rule.

A content key is the SHA-256 of a file's bytes (:mod:`embedder.hashing`), so finding out that
nothing changed used to mean reading every byte again: 2 TB for a million camera photos. So,
as git's index does, the cache keeps a *stat record* next to each file's key (its size,
``mtime_ns``, ``ctime_ns``, inode and device, and when that stat was taken) and a rerun reads
only the files whose stat differs.

The one subtle case is a file changed so soon after its stat was taken that the change did not
move its timestamps (they tick at the filesystem's granularity: 1-2 s on FAT or ext3, a kernel
clock tick elsewhere). A record is therefore *settled*, and trusted, only when the file's
``ctime`` is at least :data:`RACY_WINDOW_NS` older than the moment the stat was taken; any
later change sets ``ctime`` (the kernel's clock; ``touch -d`` cannot set it) past the recorded
one. An unsettled ("racy") record is re-read next time and recorded again. Files at URLs have
no ``ctime`` or inode: their size and modification time are compared (and trusted only when the
store reports a time at all) with a wider window for the store's clock.

Matching is by path first, then by file identity (device and inode, with every other field
equal): a moved or renamed folder keeps its files' inodes and ``ctime``\\s, so its images are not
read again either. Anything else (no record, another size or time, another inode) is read and
hashed, and the engine still checks that the bytes it decodes hash to the key they were listed
under.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np

from .storage import is_url, location

STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "inode", "device", "checked_ns")
STAT_DTYPE = np.dtype([(name, "<i8") for name in STAT_FIELDS])
NO_STAT = (-1, 0, 0, 0, 0, 0)  # size -1: no record (an old cache, a file that could not be read)
# 2 s covers FAT's and ext3's coarse timestamps; one more for the kernel's coarse clock and a
# file server's clock drift. Files changed less than this before a run are simply read again.
RACY_WINDOW_NS = 3_000_000_000
REMOTE_RACY_WINDOW_NS = 60_000_000_000  # an object store's clock is not this machine's
STAT_CHUNK = 512  # paths stat-ed per task on the thread pool


def now_ns() -> int:
    return time.time_ns()


def no_stats(count: int) -> np.ndarray:
    out = np.zeros(count, dtype=STAT_DTYPE)
    out["size"] = -1
    return out


def stat_of(path: str | os.PathLike) -> tuple[int, int, int, int, int]:
    """(size, mtime_ns, ctime_ns, inode, device) of a file (links followed); a URL has no
    ctime, inode or device (0). Raises the OSError that reading it would raise."""
    if is_url(path):
        info = location(path).stat()
        if getattr(info, "is_directory", False):
            raise IsADirectoryError(21, "Is a directory", str(path))
        return int(info.st_size), int(info.st_mtime_ns), 0, 0, 0
    st = os.stat(path)
    return int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino), int(st.st_dev)


def stat_files(paths: Sequence[str | Path], workers: int = 8) -> tuple[np.ndarray, dict[int, OSError]]:
    """Stats of ``paths`` (``checked_ns`` left 0) and, by position, the errors of those that
    could not be stat-ed. Chunks of paths go to a thread pool: a stat waits on the disk, or on
    the network for a file server or a URL."""
    out = no_stats(len(paths))
    errors: dict[int, OSError] = {}

    def chunk(start: int) -> None:
        for i in range(start, min(start + STAT_CHUNK, len(paths))):
            try:
                out[i] = stat_of(paths[i]) + (0,)
            except OSError as exc:
                errors[i] = exc

    starts = range(0, len(paths), STAT_CHUNK)
    if len(starts) <= 1:
        for start in starts:
            chunk(start)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(chunk, starts))
    return out, errors


def settled(stats: np.ndarray) -> np.ndarray:
    """Which records may be trusted: taken long enough after the file's last change that a
    later change must show in its stat (see the module notes). Vectorised over records."""
    remote = (stats["inode"] == 0) & (stats["ctime_ns"] == 0)
    local_ok = stats["ctime_ns"] < stats["checked_ns"] - RACY_WINDOW_NS
    remote_ok = (stats["mtime_ns"] > 0) & (stats["mtime_ns"] < stats["checked_ns"] - REMOTE_RACY_WINDOW_NS)
    return (stats["size"] >= 0) & (stats["checked_ns"] > 0) & np.where(remote, remote_ok, local_ok)


def _same(a: np.ndarray, b: np.ndarray, device: bool) -> np.ndarray:
    same = (a["size"] == b["size"]) & (a["mtime_ns"] == b["mtime_ns"]) & (a["ctime_ns"] == b["ctime_ns"])
    same &= a["inode"] == b["inode"]
    if device:  # only for a match by identity: a remounted disk may renumber its device
        same &= a["device"] == b["device"]
    return same


class StatRecord:
    """The keys and stats of the files a cache lists (and its failures with a key), by path
    and by file identity. ``paths`` are relative to the images root, as the cache stores them."""

    def __init__(self, paths: Sequence[str], keys: Sequence[str], stats: np.ndarray):
        if not (len(paths) == len(keys) == len(stats)):
            raise ValueError("paths, keys and stats differ in length")
        self.paths = list(map(str, paths))
        self.keys = list(map(str, keys))
        self.stats = np.asarray(stats, dtype=STAT_DTYPE)
        self._by_path = {p: i for i, p in enumerate(self.paths)}
        self._by_identity: dict[tuple[int, int], int] | None = None

    @classmethod
    def empty(cls) -> "StatRecord":
        return cls([], [], no_stats(0))

    def __len__(self) -> int:
        return len(self.paths)

    def updated(self, newer: "StatRecord") -> "StatRecord":
        """This record with ``newer``'s entries taking precedence (an interrupted run's checkpoint)."""
        if not len(newer):
            return self
        keep = [i for i, p in enumerate(self.paths) if p not in newer._by_path]
        return StatRecord([self.paths[i] for i in keep] + newer.paths, [self.keys[i] for i in keep] + newer.keys,
                          np.concatenate([self.stats[keep], newer.stats]))

    def _identity_index(self) -> dict[tuple[int, int], int]:
        if self._by_identity is None:
            usable = np.flatnonzero((self.stats["inode"] != 0) & settled(self.stats))
            self._by_identity = {(int(self.stats["device"][i]), int(self.stats["inode"][i])): int(i) for i in usable}
        return self._by_identity

    def match(self, paths: Sequence[str], now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each listed file (relative path, current stat): the index of the settled record
        whose key it still has, or -1; and which files had an equal but unsettled record
        (racy: read again, as if changed)."""
        found = np.full(len(paths), -1, dtype=np.int64)
        racy = np.zeros(len(paths), dtype=bool)
        if not len(self) or not len(paths):
            return found, racy
        by_path = np.fromiter((self._by_path.get(p, -1) for p in paths), dtype=np.int64, count=len(paths))
        listed = np.flatnonzero((by_path >= 0) & (now["size"] >= 0))
        record = self.stats[by_path[listed]]
        equal = _same(record, now[listed], device=False)
        ok = equal & settled(record)
        found[listed[ok]] = by_path[listed[ok]]
        racy[listed[equal & ~ok]] = True
        # Not found by path: a file moved (or a folder renamed) keeps its inode and times.
        rest = np.flatnonzero((found < 0) & ~racy & (now["inode"] != 0))
        if len(rest):
            index = self._identity_index()
            if index:
                guess = np.fromiter((index.get((int(d), int(n)), -1) for d, n in
                                     zip(now["device"][rest], now["inode"][rest])), dtype=np.int64, count=len(rest))
                hit = guess >= 0
                rest, guess = rest[hit], guess[hit]
                ok = _same(self.stats[guess], now[rest], device=True)
                found[rest[ok]] = guess[ok]
        return found, racy
