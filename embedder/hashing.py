"""Content keys: an image is identified by a hash of its bytes, not by its path (DESIGN.md).

So renaming or moving a file costs nothing, and the same bytes under two names are
embedded once. Hashing reads every file, so it runs on a small thread pool (hashlib
releases the GIL on large buffers) and reports unreadable files instead of failing.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

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
