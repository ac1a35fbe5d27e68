"""Where a cache is: resolved once, at the edge, and passed down as one object.

A cache may be a local file or a URL (``gs://b/c.h5``), which is written in a staging folder
on this machine and read from a local copy (:mod:`embedder.staging`). Which of the two it is,
and for a URL which local file stands for its current version, used to be worked out again
by every function the path passed through: one ``inspect duplicates`` went back and forth
between ``storage`` and ``staging`` six times, and each trip asked the object store again.
A :class:`CacheLocation` is made once (:meth:`CacheLocation.of`, idempotent) where the user's
words enter (the CLI, the Python API, the default-cache choice), and everything below takes it.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from ..storage import UrlPath, is_url, location


class CacheLocation:
    """A cache file's place: a local path, or a URL staged on this machine."""

    __slots__ = ("where", "_local")

    def __init__(self, where: Path | UrlPath):
        self.where = where
        self._local: Path | None = None  # for a URL: the local copy found by the first read

    @classmethod
    def of(cls, value: "CacheLocation | str | os.PathLike | UrlPath") -> "CacheLocation":
        """``value`` as a location; a location is returned as it is (so passing one down is free)."""
        if isinstance(value, cls):
            return value
        where = location(value)
        return cls(where if is_url(where) else Path(where).expanduser())

    @property
    def is_url(self) -> bool:
        return isinstance(self.where, UrlPath)

    @property
    def name(self) -> str:
        return self.where.name

    @property
    def stem(self) -> str:
        return self.where.stem

    def resolved(self) -> str:
        """The location as recorded in run files: an absolute local path, or the URL."""
        return str(self.where) if self.is_url else str(self.where.resolve())

    def local_file(self) -> Path:
        """The local file to read: the path itself, or (for a URL) a local copy of its current
        version, found once per location (one request to the store, not one per read)."""
        if not self.is_url:
            return self.where
        if self._local is None:
            from ..staging import local_copy

            self._local = local_copy(self.where)
        return self._local

    @contextlib.contextmanager
    def staged(self, log: Callable[[str], None] = lambda message: None) -> Iterator[Path]:
        """The local file to write this cache into; a URL is uploaded when the block succeeds."""
        from ..staging import staged_cache

        try:
            with staged_cache(self.where, log) as local:
                yield local
        finally:
            self._local = None  # the URL may hold a new version now

    def __str__(self) -> str:
        return str(self.where)

    def __repr__(self) -> str:
        return f"CacheLocation({str(self.where)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CacheLocation) and str(self.where) == str(other.where)

    def __hash__(self) -> int:
        return hash(str(self.where))
