"""Reading a finished cache: metadata in memory, features on demand (they can be big).

:func:`open_cache` checks everything a later stage relies on (format version, required
datasets, consistent lengths and indices) and raises a one-line CacheError with what to do
otherwise. A cache at a URL is read from a local copy (:mod:`embedder.staging`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from ..errors import CacheError
from ..filestat import STAT_DTYPE, StatRecord
from ..storage import location
from .location import CacheLocation
from .schema import COPY_ROWS, FORMAT_VERSION, PART_RE, REQUIRED_DATASETS, parts_dir_for
from .segments import check_sources


@dataclass
class Cache:
    """A finished cache: all metadata in memory, features read on demand (they can be big)."""

    path: Path  # or a UrlPath: where the cache is, as named
    location: CacheLocation  # the same, resolved once; hand it on to anything that reopens the cache
    fingerprint: dict
    attrs: dict
    keys: np.ndarray  # [N] str
    paths: np.ndarray  # [M] str
    rows: np.ndarray  # [M] int64
    labels: np.ndarray  # [M] int64
    splits: np.ndarray  # [M] str
    classes: list[str]
    failure_paths: list[str]
    failure_reasons: list[str]
    feature_shape: tuple[int, int]
    feature_dtype: str
    views: dict | None = None  # {count, seed, augmentation} when the cache holds augmented views
    # Where the bytes are read from: for a cache at a URL, the local copy it was opened from,
    # so later reads neither ask the URL again nor mix versions if it changes meanwhile.
    source: Path | None = None

    @property
    def _file(self) -> Path:
        return self.source or self.path

    @property
    def images_root(self) -> Path:
        return location(self.attrs.get("images_root", "."))

    @property
    def num_rows(self) -> int:
        return self.feature_shape[0]

    @property
    def dim(self) -> int:
        return self.feature_shape[1]

    def load_features(self, dtype: str = "float32") -> np.ndarray:
        """All rows at once: a contiguous read is ~10x faster than h5py fancy indexing."""
        with open_h5(self._file) as h5:
            data = h5["embeddings/features"][...]
        return data.astype(dtype, copy=False)

    def read_rows(self, rows: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """Features of some rows, in the order given. Reads everything and indexes in numpy
        unless the rows are a small fraction (h5py fancy indexing is ~10x slower per row)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) * 10 >= self.num_rows:
            return self.load_features(dtype)[rows]
        unique, inverse = np.unique(rows, return_inverse=True)
        with open_h5(self._file) as h5:
            block = h5["embeddings/features"][unique]
        return block[inverse].astype(dtype, copy=False)

    def file_features(self, dtype: str = "float32") -> np.ndarray:
        """One feature row per file (``[M, D]``), in the order of :attr:`paths`."""
        return self.load_features(dtype)[self.rows]

    def stat_record(self) -> StatRecord:
        """What the last run saw of each listed file (and of each failure with a key): its key
        and stat, for :func:`embedder.hashing.listing_keys`. A cache made before stat records
        were kept (or whose record does not fit its tables) gives an empty record: the next
        run reads every file once, and keeps their stats."""
        failure_keys = list(self.attrs.get("_failure_keys") or [])
        with open_h5(self._file) as h5:
            files = _stat_table(h5, "files/stat", len(self.paths))
            failures = _stat_table(h5, "failures/stat", len(self.failure_paths))
        if files is None:
            return StatRecord.empty()
        paths, keys, stats = list(self.paths), list(self.keys[self.rows]) if len(self.rows) else [], [files]
        if failures is not None and len(failure_keys) == len(self.failure_paths):
            keyed = [i for i, k in enumerate(failure_keys) if k]
            paths += [self.failure_paths[i] for i in keyed]
            keys += [failure_keys[i] for i in keyed]
            stats.append(failures[keyed])
        return StatRecord(paths, keys, np.concatenate(stats))

    @property
    def num_views(self) -> int:
        return int(self.views["count"]) if self.views else 0

    def load_views(self, rows: np.ndarray, limit: int | None = None,
                   dtype: str = "float32") -> tuple[np.ndarray, np.ndarray]:
        """Augmented views of some rows: ``[len(rows), K, D]`` and which exist ``[len(rows), K]``.

        ``limit`` keeps the first views only (views are independent draws, so the first four
        of eight are exactly what a ``--views 4`` run would have made). Read in row blocks, so
        the float16 -> float32 copy never doubles the whole array in memory.
        """
        if not self.num_views:
            raise CacheError(f"cache {self.path} holds no augmented views; run `headstart embed run ... --views K`")
        k = self.num_views if limit is None else max(0, min(int(limit), self.num_views))
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), k, self.dim), dtype=dtype)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        with open_h5(self._file) as h5:
            views, done = h5["embeddings/views"], h5["embeddings/views_done"]
            done_all = done[:, :k].astype(bool)
            block = max(1, COPY_ROWS // max(1, k))
            if len(rows):  # one pass over the wanted range, a block of rows at a time
                for lo in range(int(sorted_rows[0]), int(sorted_rows[-1]) + 1, block):
                    a, b = np.searchsorted(sorted_rows, [lo, lo + block])
                    if a < b:
                        chunk = views[lo:min(lo + block, self.num_rows), :k]
                        out[order[a:b]] = chunk[sorted_rows[a:b] - lo]
        return out, done_all[rows]


@contextlib.contextmanager
def open_h5(path: "Path | CacheLocation") -> Iterator[h5py.File]:
    path = CacheLocation.of(path).local_file()  # a cache at a URL: a local copy of its current version
    try:
        h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise CacheError(f"cache not found: {path}") from None
    except OSError as exc:
        raise CacheError(f"cannot read cache {path}: not an HDF5 file or damaged ({_first_line(exc)})") from None
    try:
        yield h5
    finally:
        h5.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _str_array(dataset: h5py.Dataset) -> np.ndarray:
    return np.asarray(dataset.asstr()[...], dtype=object)


def open_cache(where: "CacheLocation | str | os.PathLike") -> Cache:
    """Read a finished cache's metadata; raise CacheError with what to do if it isn't one.

    A cache at a URL is read from a local copy (:meth:`CacheLocation.local_file`); its
    ``path`` stays the URL, and later reads use that copy without asking the URL again.
    """
    where = CacheLocation.of(where)
    if where.is_url:
        cache = open_cache(where.local_file())
        cache.path, cache.source, cache.location = where.where, cache.path, where
        return cache
    path = where.where
    if not path.exists():
        parts = parts_dir_for(path)
        if parts.is_dir() and any(PART_RE.match(p.name) for p in parts.iterdir()):
            raise CacheError(
                f"cache {path} is unfinished: an interrupted `headstart embed run` left parts in "
                f"{parts}; rerun the same command to resume it"
            )
        raise CacheError(f"cache not found: {path}")
    with open_h5(path) as h5:
        version = h5.attrs.get("format_version")
        if version is None:
            raise CacheError(f"{path} is not a headstart cache (no format_version attribute)")
        if int(version) > FORMAT_VERSION:
            raise CacheError(
                f"{path} has cache format {int(version)}, newer than this headstart understands "
                f"({FORMAT_VERSION}); upgrade headstart"
            )
        missing = [name for name in REQUIRED_DATASETS if name not in h5]
        if missing:
            raise CacheError(f"{path} is not a complete headstart cache (missing /{missing[0]})")
        attrs = {k: _attr_value(v) for k, v in h5.attrs.items()}
        try:
            fingerprint = json.loads(attrs["fingerprint"])
        except (KeyError, TypeError, ValueError):
            raise CacheError(f"{path} has no readable fingerprint attribute") from None
        features = h5["embeddings/features"]
        if features.ndim != 2:
            raise CacheError(f"{path}: /embeddings/features must be 2-D, is {features.shape}")
        if features.is_virtual:  # segments (or --virtual merge shards): all there, or a clear error
            check_sources(path, h5)
        failure_keys = h5["failures/keys"] if "failures/keys" in h5 else None
        cache = Cache(
            path=path,
            location=where,
            fingerprint=fingerprint,
            attrs=attrs,
            keys=_str_array(h5["embeddings/keys"]),
            paths=_str_array(h5["files/paths"]),
            rows=h5["files/rows"][...].astype(np.int64),
            labels=h5["files/labels"][...].astype(np.int64),
            splits=_str_array(h5["files/splits"]),
            classes=[str(c) for c in _str_array(h5["classes"])],
            failure_paths=[str(p) for p in _str_array(h5["failures/paths"])],
            failure_reasons=[str(r) for r in _str_array(h5["failures/reasons"])],
            feature_shape=(int(features.shape[0]), int(features.shape[1])),
            feature_dtype=str(features.dtype),
        )
        cache.attrs["_failure_keys"] = [] if failure_keys is None else [str(k) for k in _str_array(failure_keys)]
        cache.attrs["_has_stat_record"] = "files/stat" in h5
        cache.views = _views_record(path, attrs, h5, cache.feature_shape)
    _check_consistency(cache)
    return cache


def _views_record(path: Path, attrs: dict, h5: h5py.File, feature_shape: tuple[int, int]) -> dict | None:
    if "views" not in attrs:
        return None
    try:
        record = json.loads(attrs["views"])
        count = int(record["count"])
    except (TypeError, ValueError, KeyError):
        raise CacheError(f"{path} has an unreadable 'views' attribute") from None
    views = h5.get("embeddings/views")
    done = h5.get("embeddings/views_done")
    expected = (feature_shape[0], count, feature_shape[1])
    if views is None or done is None or tuple(views.shape) != expected or tuple(done.shape) != expected[:2]:
        raise CacheError(f"{path}: /embeddings/views does not match its 'views' attribute ({expected})")
    return record


def _stat_table(h5: h5py.File, name: str, length: int) -> np.ndarray | None:
    data = h5.get(name)
    if not isinstance(data, h5py.Dataset) or data.shape != (length,) or data.dtype != STAT_DTYPE:
        return None
    return data[...]


def _check_consistency(cache: Cache) -> None:
    n, m = cache.num_rows, len(cache.paths)
    if len(cache.keys) != n:
        raise CacheError(f"{cache.path}: {len(cache.keys)} keys for {n} feature rows")
    if not (len(cache.rows) == len(cache.labels) == len(cache.splits) == m):
        raise CacheError(f"{cache.path}: /files datasets have different lengths")
    if m and (cache.rows.min() < 0 or cache.rows.max() >= n):
        raise CacheError(f"{cache.path}: /files/rows points outside /embeddings")
    if m and (cache.labels.min() < -1 or cache.labels.max() >= len(cache.classes)):
        raise CacheError(f"{cache.path}: /files/labels points outside /classes")


def _attr_value(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def latest_cache(folder: str | os.PathLike = "cache") -> Path:
    """The most recently written finished cache in ``folder`` (the CLI's default)."""
    folder = location(folder)  # a URL folder is listed with tf.io.gfile
    candidates = [p for p in folder.glob("*.h5") if p.is_file()] if folder.is_dir() else []
    if not candidates:
        raise CacheError(
            f"no cache found under {folder}/; run `headstart embed run IMAGES` first, or pass --cache PATH"
        )
    return max(candidates, key=lambda p: p.stat().st_mtime_ns)

