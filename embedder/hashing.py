"""Content keys: an image is identified by a hash of its bytes, not by its path (DESIGN.md).

So renaming or moving a file costs nothing, and the same bytes under two names are
embedded once. Hashing reads every file, so it runs on a small thread pool (hashlib
releases the GIL on large buffers) and reports unreadable files instead of failing.
:func:`listing_keys` reads only the files whose stat changed since the last run
(:mod:`embedder.filestat`): an unchanged rerun reads no image at all.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .filestat import StatRecord, now_ns, stat_files
from .storage import is_url, open_file

KEY_ALGORITHM = "sha256"
REMOTE_WORKERS = 32
_READ_BLOCK = 1 << 20


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks (a URL's are streamed through
    tf.io.gfile). The project's one file hash: image keys, weights files, model checksums."""
    digest = hashlib.sha256()
    with open_file(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def content_key(path: str | Path) -> str:
    """An image's key (DESIGN.md, "Image identity"): the SHA-256 of its bytes."""
    return file_sha256(path)


def hash_files(
    paths: Iterable[Path],
    workers: int = 8,
    on_done: Callable[[int], None] | None = None,
) -> list[str | OSError]:
    """Key of each path, in order; an unreadable file yields its OSError instead.

    Files at URLs get more threads: reading them waits on the network, not on a core.
    """
    paths = list(paths)
    if paths and is_url(paths[0]):
        workers = max(workers, REMOTE_WORKERS)

    def one(path: Path) -> str | OSError:
        try:
            return content_key(path)
        except OSError as exc:
            return exc

    results: list[str | OSError] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for result in pool.map(one, paths):
            results.append(result)
            if on_done is not None:
                on_done(1)
    return results


def key_of_bytes(data: bytes) -> str:
    """The content key of bytes already in memory (the engine hashes what it decodes)."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class ListingKeys:
    """The key of every listed file, and how each was obtained."""

    keys: list  # str, or the OSError that kept the file from being read
    stats: np.ndarray  # [n] filestat.STAT_DTYPE: the stat record to keep for each file
    hashed: int = 0  # files read and hashed
    hashed_bytes: int = 0
    unchanged: int = 0  # files whose key came from the stat record (not read)
    racy: int = 0  # files read again because their record was taken too soon after a change
    read: np.ndarray | None = None  # [n] bool: which files were read and hashed (successfully)


def listing_keys(root, relative: Sequence[str], record: StatRecord | None = None, workers: int = 8,
                 on_done: Callable[[int], None] | None = None) -> ListingKeys:
    """Keys of ``root / p`` for each relative path ``p``: from ``record`` where the file's stat
    says it is unchanged (see :mod:`embedder.filestat`), else by reading and hashing it.

    Every file is stat-ed *before* it is read, so the record pairs a key with a stat at least as
    old as the bytes hashed: a change during the read shows as a changed stat next time.
    ``record`` None (``--rehash``): every file is read.
    """
    if is_url(root):
        paths = [root / p for p in relative]
    else:  # plain strings: joining 100k pathlib paths took seconds of a no-op rerun's time
        base = os.fspath(root)
        paths = [os.path.join(base, p) for p in relative]
    remote = bool(paths) and is_url(paths[0])
    checked = now_ns()  # before any stat: the racy rule compares file times with this
    stats, errors = stat_files(paths, max(workers, REMOTE_WORKERS) if remote else workers)
    stats["checked_ns"] = checked
    found, racy = (record or StatRecord.empty()).match(relative, stats)
    result = ListingKeys(keys=[None] * len(paths), stats=stats, racy=int(racy.sum()))
    for i, exc in errors.items():
        result.keys[i] = exc
        found[i] = -1
    reused = np.flatnonzero(found >= 0)
    for i in reused:
        result.keys[i] = record.keys[found[i]]
    if len(reused):
        stats[reused] = record.stats[found[reused]]  # when the kept record was taken, not now
    result.unchanged = int(len(reused))
    if on_done is not None and result.unchanged + len(errors):
        on_done(result.unchanged + len(errors))
    todo = [i for i in range(len(paths)) if result.keys[i] is None]
    result.read = np.zeros(len(paths), dtype=bool)
    for i, key in zip(todo, hash_files([paths[i] for i in todo], workers, on_done)):
        result.keys[i] = key
        if isinstance(key, OSError):
            stats["size"][i] = -1
        else:
            result.read[i] = True
            result.hashed += 1
            result.hashed_bytes += int(stats["size"][i])
    return result
