"""The HDF5 embedding cache: the contract between the embedding stage and everything after.

Schema (DESIGN.md; ``format_version`` 1)::

    /embeddings/features  [N, D] float16|float32, chunked by rows
    /embeddings/keys      [N]    str   content hash of each row
    /files/paths          [M]    str   every image file, relative to the images root
    /files/rows           [M]    int   its row in /embeddings
    /files/labels         [M]    int   index into /classes, -1 if unlabeled
    /files/splits         [M]    str   train/val/test, or '' when the layout gives none
    /classes              [C]    str   class names, sorted
    /failures/paths, /failures/reasons   [F] str   files that could not be used, and why
    /failures/keys        [F]    str   (extra) their content keys, '' if unreadable
    /embeddings/views     [N, K, D]    (extra, ``embed run --views K``) augmented views per row
    /embeddings/views_done [N, K] bool (extra) which views exist (a row whose file is gone
                                       from the folder cannot get new ones)
    root attributes: format_version, fingerprint (JSON), images_root, created, versions, ...

Crash safety. A writer never modifies a finished cache file in place. While it works, each
completed batch becomes a *part file* in ``<cache>.parts/`` (temporary name, fsync, atomic
rename); at the end all rows are consolidated into a new file that atomically replaces the
old one, and only then are the parts removed. After ``kill -9`` at any instant a reader
still sees the previous complete cache (or none), and a rerun finds the finished parts and
embeds only what is missing. One writer at a time: a second one fails clearly (flock).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import h5py
import numpy as np

from . import __version__
from .atomic import atomic_path, fsync_dir, remove_stale_temps, write_text_atomic
from .errors import CacheError, CacheLockedError
from .fingerprint import Fingerprint, canonical_json, describe, require_same
from .storage import is_url, location

FORMAT_VERSION = 1
STORAGE_DTYPES = ("float16", "float32")
_CHUNK_BYTES = 1 << 20
_COPY_ROWS = 16384
_PART_RE = re.compile(r"^part-(\d{6,})\.npz$")
_VIEWS_PART_RE = re.compile(r"^views-(\d{6,})\.npz$")

_STR = h5py.string_dtype("utf-8")


# --------------------------------------------------------------------------------------
# Reading


@dataclass
class Cache:
    """A finished cache: all metadata in memory, features read on demand (they can be big)."""

    path: Path
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
        with _open_h5(self._file) as h5:
            data = h5["embeddings/features"][...]
        return data.astype(dtype, copy=False)

    def read_rows(self, rows: np.ndarray, dtype: str = "float32") -> np.ndarray:
        """Features of some rows, in the order given. Reads everything and indexes in numpy
        unless the rows are a small fraction (h5py fancy indexing is ~10x slower per row)."""
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) * 10 >= self.num_rows:
            return self.load_features(dtype)[rows]
        unique, inverse = np.unique(rows, return_inverse=True)
        with _open_h5(self._file) as h5:
            block = h5["embeddings/features"][unique]
        return block[inverse].astype(dtype, copy=False)

    def file_features(self, dtype: str = "float32") -> np.ndarray:
        """One feature row per file (``[M, D]``), in the order of :attr:`paths`."""
        return self.load_features(dtype)[self.rows]

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
        with _open_h5(self._file) as h5:
            views, done = h5["embeddings/views"], h5["embeddings/views_done"]
            done_all = done[:, :k].astype(bool)
            block = max(1, _COPY_ROWS // max(1, k))
            if len(rows):  # one pass over the wanted range, a block of rows at a time
                for lo in range(int(sorted_rows[0]), int(sorted_rows[-1]) + 1, block):
                    a, b = np.searchsorted(sorted_rows, [lo, lo + block])
                    if a < b:
                        chunk = views[lo:min(lo + block, self.num_rows), :k]
                        out[order[a:b]] = chunk[sorted_rows[a:b] - lo]
        return out, done_all[rows]


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[h5py.File]:
    if is_url(path):  # a cache at a URL is read from a local copy of its current version
        from .staging import local_copy

        path = local_copy(path)
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


REQUIRED_DATASETS = (
    "embeddings/features",
    "embeddings/keys",
    "files/paths",
    "files/rows",
    "files/labels",
    "files/splits",
    "classes",
    "failures/paths",
    "failures/reasons",
)


def open_cache(path: str | os.PathLike) -> Cache:
    """Read a finished cache's metadata; raise CacheError with what to do if it isn't one.

    A cache at a URL is read from a local copy (:func:`embedder.staging.local_copy`); its
    ``path`` stays the URL.
    """
    if is_url(path):
        from .staging import local_copy

        local = local_copy(path)
        cache = open_cache(local)
        cache.path, cache.source = location(path), local
        return cache
    path = Path(path)
    if not path.exists():
        parts = parts_dir_for(path)
        if parts.is_dir() and any(_PART_RE.match(p.name) for p in parts.iterdir()):
            raise CacheError(
                f"cache {path} is unfinished: an interrupted `headstart embed run` left parts in "
                f"{parts}; rerun the same command to resume it"
            )
        raise CacheError(f"cache not found: {path}")
    with _open_h5(path) as h5:
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
        failure_keys = h5["failures/keys"] if "failures/keys" in h5 else None
        cache = Cache(
            path=path,
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


# --------------------------------------------------------------------------------------
# Writing


def parts_dir_for(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".parts")


def lock_path_for(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".lock")


@dataclass
class FileRecord:
    """One file of the listing as the cache stores it."""

    path: str
    key: str
    label: int  # -1 unlabeled
    split: str


@dataclass
class Failure:
    path: str
    reason: str
    key: str = ""  # '' when the bytes could not even be read


@dataclass
class FinishResult:
    rewritten: bool
    num_rows: int
    num_files: int
    size_bytes: int
    views_missing: int = 0  # rows lacking some of their augmented views (their files are gone)


@dataclass
class _Part:
    path: Path
    keys: list[str]
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class _ViewPart:
    path: Path
    keys: list[str]  # one entry per view in the part (a key repeats for its views)
    views: np.ndarray  # [E] view index of each entry


class CacheWriter:
    """Adds rows to a cache crash-safely; use as a context manager (it holds the lock).

    >>> with CacheWriter(path, fingerprint, "float16") as writer:
    ...     todo = [k for k in keys if k not in writer.known_keys]
    ...     writer.add_part(batch_keys, batch_features)   # durable once it returns
    ...     writer.finish(files, classes, failures, images_root)
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fingerprint: Fingerprint,
        dtype: str = "float16",
        extra_attrs: Mapping[str, object] | None = None,
    ):
        if dtype not in STORAGE_DTYPES:
            raise CacheError(f"unsupported cache dtype {dtype!r}; use float16 or float32")
        self.path = Path(path)
        self.fingerprint = dict(fingerprint)
        self.dtype = dtype
        self.extra_attrs = dict(extra_attrs or {})
        self.parts_dir = parts_dir_for(self.path)
        self._lock_fh = None
        self._existing: Cache | None = None
        self._parts: list[_Part] = []
        self._view_parts: list[_ViewPart] = []
        self._views_stamp: dict | None = None  # the views record of unfinished view parts
        self.views_record: dict | None = None  # set by set_views(); else the cache's own
        self._done_views: set[tuple[str, int]] = set()  # (key, view) in view parts
        self._existing_views_done: np.ndarray | None = None
        self._existing_rows: dict[str, int] = {}
        self._next_part = 0
        self._dim: int | None = None
        self.known_keys: set[str] = set()
        self.known_failures: dict[str, str] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> "CacheWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        try:
            self._load_state()
        except BaseException:
            self._release_lock()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._release_lock()

    def _acquire_lock(self) -> None:
        lock_file = lock_path_for(self.path)
        fh = open(lock_file, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                fh.close()
                raise
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise CacheLockedError(
                f"cache {self.path} is being written by another headstart process (pid {holder}); "
                f"wait for it to finish, or pass --cache to write elsewhere"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def _release_lock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def _load_state(self) -> None:
        remove_stale_temps(self.path.parent, stem=self.path.name)
        if self.path.exists():
            existing = open_cache(self.path)
            require_same(existing.fingerprint, self.fingerprint, f"cache {self.path}", "this run")
            if existing.feature_dtype != self.dtype and existing.num_rows:
                raise CacheError(
                    f"cache {self.path} stores {existing.feature_dtype} features, this run asks for "
                    f"{self.dtype}; pass --dtype {existing.feature_dtype} or a new --cache path"
                )
            self._existing = existing
            self.known_keys.update(str(k) for k in existing.keys)
            if existing.views:
                with _open_h5(existing.path) as h5:
                    self._existing_views_done = h5["embeddings/views_done"][...].astype(bool)
                self._existing_rows = {str(k): i for i, k in enumerate(existing.keys)}
            if existing.num_rows:
                self._dim = existing.dim
            for key, reason in zip(existing.attrs["_failure_keys"], existing.failure_reasons):
                if key:
                    self.known_failures[key] = reason
        if self.parts_dir.is_dir():
            remove_stale_temps(self.parts_dir)
            stamp = self.parts_dir / "fingerprint.json"
            if stamp.exists():
                require_same(json.loads(stamp.read_text()), self.fingerprint,
                             f"unfinished parts in {self.parts_dir}", "this run")
            views_stamp = self.parts_dir / "views.json"
            if views_stamp.exists():
                self._views_stamp = json.loads(views_stamp.read_text())
            for entry in sorted(self.parts_dir.iterdir()):
                view_match = _VIEWS_PART_RE.match(entry.name)
                if view_match:
                    self._next_part = max(self._next_part, int(view_match.group(1)) + 1)
                    view_part = self._read_view_part_index(entry)
                    if view_part is not None:
                        self._view_parts.append(view_part)
                        self._done_views.update(zip(view_part.keys, view_part.views.tolist()))
                    continue
                match = _PART_RE.match(entry.name)
                if not match:
                    continue
                self._next_part = max(self._next_part, int(match.group(1)) + 1)
                part = self._read_part_index(entry)
                if part is not None:
                    self._parts.append(part)
                    self.known_keys.update(part.keys)
                    self.known_failures.update(part.failed)

    def _read_part_index(self, entry: Path) -> _Part | None:
        try:
            with np.load(entry, allow_pickle=False) as data:
                keys = [str(k) for k in data["keys"]]
                failed = dict(zip((str(k) for k in data["failed_keys"]), (str(r) for r in data["failed_reasons"])))
                if len(keys):
                    dim = int(data["features"].shape[1])
                    if self._dim is None:
                        self._dim = dim
                    elif dim != self._dim:
                        raise CacheError(f"part {entry} has {dim} features per row, the cache {self._dim}")
        except CacheError:
            raise
        except Exception:
            # An atomic rename means a part is complete or absent; anything unreadable is
            # damage from outside. Drop it: its images are simply embedded again.
            entry.unlink(missing_ok=True)
            return None
        return _Part(entry, keys, failed)

    def _read_view_part_index(self, entry: Path) -> _ViewPart | None:
        try:
            with np.load(entry, allow_pickle=False) as data:
                keys = [str(k) for k in data["keys"]]
                views = data["views"].astype(np.int64)
                if data["features"].shape[0] != len(keys) or len(views) != len(keys):
                    raise ValueError("inconsistent view part")
        except Exception:
            entry.unlink(missing_ok=True)  # damage from outside (renames are atomic): redo its views
            return None
        return _ViewPart(entry, keys, views)

    # -- adding rows -------------------------------------------------------------------

    @property
    def existing_attrs(self) -> dict:
        """The finished cache's root attributes (empty for a new cache)."""
        return dict(self._existing.attrs) if self._existing is not None else {}

    @property
    def resumed_parts(self) -> int:
        return len(self._parts)

    def add_part(
        self,
        keys: Sequence[str],
        features: np.ndarray,
        failed: Mapping[str, str] | None = None,
    ) -> None:
        """Durably store one batch of rows (and the keys that failed to decode)."""
        failed = dict(failed or {})
        features = np.asarray(features) if len(keys) else np.zeros((0, self._dim or 0), dtype=self.dtype)
        if len(keys) != len(features):
            raise ValueError("keys and features differ in length")
        if len(keys):
            if features.ndim != 2:
                raise ValueError("features must be [rows, dim]")
            if self._dim is None:
                self._dim = int(features.shape[1])
            elif features.shape[1] != self._dim:
                raise CacheError(f"features have {features.shape[1]} values per row, the cache {self._dim}")
        if not len(keys) and not failed:
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.parts_dir / "fingerprint.json"
        if not stamp.exists():
            write_text_atomic(stamp, canonical_json(self.fingerprint))
        part_path = self.parts_dir / f"part-{self._next_part:06d}.npz"
        self._next_part += 1
        with atomic_path(part_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    keys=np.asarray(list(keys), dtype="U64"),
                    features=features.astype(self.dtype, copy=False),
                    failed_keys=np.asarray(list(failed), dtype="U64"),
                    failed_reasons=np.asarray(list(failed.values()), dtype=str),
                )
        self._parts.append(_Part(part_path, list(keys), failed))
        self.known_keys.update(keys)
        self.known_failures.update(failed)

    # -- augmented views ---------------------------------------------------------------

    @property
    def existing_views(self) -> dict | None:
        """The views record of the finished cache (None when it holds no views)."""
        return dict(self._existing.views) if self._existing is not None and self._existing.views else None

    def set_views(self, count: int, seed: int, augmentation: Mapping) -> dict:
        """Declare the augmented views the cache holds from now on and return their record.

        Views made with another seed or recipe are different data, so mixing them is an
        error; a smaller ``count`` than the cache already holds keeps what is there.
        """
        record = {"count": int(count), "seed": int(seed), "augmentation": dict(augmentation)}
        for where, other in (("cache " + str(self.path), self.existing_views),
                             (f"unfinished view parts in {self.parts_dir}", self._views_stamp)):
            if other and (other["seed"], other["augmentation"]) != (record["seed"], record["augmentation"]):
                raise CacheError(
                    f"{where} holds views made with seed {other['seed']} (augmentation v"
                    f"{other['augmentation'].get('version')}); pass --views-seed {other['seed']}, or --cache to "
                    f"write the new views elsewhere")
        if self.existing_views:
            record["count"] = max(record["count"], int(self.existing_views["count"]))
        self.views_record = record
        return record

    @property
    def _views_to_write(self) -> dict | None:
        """What the consolidated cache will hold: the declared views, else the cache's own."""
        return self.views_record or self.existing_views

    def has_view(self, key: str, view: int) -> bool:
        if (key, view) in self._done_views:
            return True
        row = self._existing_rows.get(key)
        done = self._existing_views_done
        return row is not None and done is not None and view < done.shape[1] and bool(done[row, view])

    def add_view_part(self, keys: Sequence[str], views: Sequence[int], features: np.ndarray) -> None:
        """Durably store one batch of views: entry i is view ``views[i]`` of ``keys[i]``."""
        if self.views_record is None:
            raise CacheError("internal: add_view_part before set_views")
        if not len(keys):
            return
        features = np.asarray(features)
        if features.ndim != 2 or len(features) != len(keys) or len(views) != len(keys):
            raise ValueError("keys, views and features differ in length")
        if self._dim is not None and features.shape[1] != self._dim:
            raise CacheError(f"views have {features.shape[1]} values per row, the cache {self._dim}")
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.parts_dir / "views.json"
        if not stamp.exists():
            write_text_atomic(stamp, canonical_json({k: v for k, v in self.views_record.items() if k != "count"}))
        part_path = self.parts_dir / f"views-{self._next_part:06d}.npz"
        self._next_part += 1
        with atomic_path(part_path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, keys=np.asarray(list(keys), dtype="U64"), views=np.asarray(views, dtype=np.int32),
                         features=features.astype(self.dtype, copy=False))
        self._view_parts.append(_ViewPart(part_path, list(keys), np.asarray(views, dtype=np.int64)))
        self._done_views.update(zip(keys, (int(v) for v in views)))

    def _write_views(self, h5: h5py.File, row_keys: Sequence[str], key_to_row: Mapping[str, int],
                     record: dict) -> int:
        """``/embeddings/views`` [N, K, D] and ``views_done`` [N, K]: the old cache's views
        copied in row blocks, then each view part written as one read-modify-write of the
        row span it covers (parts hold consecutive images, so spans are short). Returns how
        many rows lack some of their views."""
        n, k, dim = len(row_keys), int(record["count"]), self._dim or 0
        done = np.zeros((n, k), dtype=bool)
        if n and dim and k:
            rows_per_chunk = max(1, min(n, _CHUNK_BYTES // (k * dim * np.dtype(self.dtype).itemsize)))
            views = h5.create_dataset("embeddings/views", shape=(n, k, dim), dtype=self.dtype,
                                      chunks=(rows_per_chunk, k, dim))
        else:
            views = h5.create_dataset("embeddings/views", shape=(n, k, dim), dtype=self.dtype)
        if self._existing is not None and self._existing.views and n and dim:
            with h5py.File(self._existing.path, "r") as old:
                src, old_done = old["embeddings/views"], old["embeddings/views_done"]
                k_old = min(k, src.shape[1])
                block = max(1, _COPY_ROWS // max(1, k_old))
                for start in range(0, src.shape[0], block):
                    stop = min(start + block, src.shape[0])
                    views[start:stop, :k_old] = src[start:stop, :k_old]
                done[: src.shape[0], :k_old] = old_done[:, :k_old]
        for part in self._view_parts:
            pairs = [(key_to_row.get(key), int(v), i) for i, (key, v) in enumerate(zip(part.keys, part.views))]
            pairs = [(r, v, i) for r, v, i in pairs if r is not None and v < k]
            if not pairs or not dim:
                continue
            with np.load(part.path, allow_pickle=False) as data:
                block = data["features"]
            rows = np.asarray([r for r, _, _ in pairs])
            cols = np.asarray([v for _, v, _ in pairs])
            entries = np.asarray([i for _, _, i in pairs])
            lo, hi = int(rows.min()), int(rows.max()) + 1
            if hi - lo <= 4 * len(pairs) + 64:
                span = views[lo:hi]
                span[rows - lo, cols] = block[entries]
                views[lo:hi] = span
            else:
                for r, v, i in pairs:
                    views[r, v] = block[i]
            done[rows, cols] = True
        h5.create_dataset("embeddings/views_done", data=done)
        h5.attrs["views"] = canonical_json(record)
        return int(np.sum(~done.all(axis=1))) if k else 0

    # -- consolidation -----------------------------------------------------------------

    def finish(
        self,
        files: Sequence[FileRecord],
        classes: Sequence[str],
        failures: Sequence[Failure],
        images_root: str | os.PathLike,
    ) -> FinishResult:
        """Write the consolidated cache (only if anything changed) and drop the parts."""
        row_keys = self._row_keys()
        key_to_row = {k: i for i, k in enumerate(row_keys)}
        missing = [f.path for f in files if f.key not in key_to_row]
        if missing:
            raise CacheError(f"internal: {len(missing)} files have no embedded row (first: {missing[0]})")
        images_root = str(location(images_root).resolve())
        digest = content_digest(files, classes, failures, images_root, len(row_keys))
        unchanged = (
            self._existing is not None
            and not any(p.keys for p in self._parts)
            and not self._view_parts
            and (self._views_to_write or {}).get("count") == (self.existing_views or {}).get("count")
            and self._existing.attrs.get("content_digest") == digest
        )
        views_missing = 0
        if not unchanged:
            views_missing = self._write_consolidated(row_keys, key_to_row, files, classes, failures, images_root,
                                                     digest)
        elif self._existing_views_done is not None:
            views_missing = int(np.sum(~self._existing_views_done.all(axis=1)))
        self._drop_parts()
        size = self.path.stat().st_size
        return FinishResult(rewritten=not unchanged, num_rows=len(row_keys), num_files=len(files), size_bytes=size,
                            views_missing=views_missing)

    def _row_keys(self) -> list[str]:
        keys = [str(k) for k in self._existing.keys] if self._existing is not None else []
        seen = set(keys)
        for part in self._parts:
            for key in part.keys:
                if key not in seen:
                    seen.add(key)
                    keys.append(key)
        return keys

    def _write_consolidated(self, row_keys, key_to_row, files, classes, failures, images_root, digest) -> int:
        """Write the new cache file; returns how many rows lack some of their views."""
        n = len(row_keys)
        dim = self._dim or 0
        with atomic_path(self.path) as tmp:
            with h5py.File(tmp, "w") as h5:
                features = _create_features(h5, n, dim, self.dtype)
                written = np.zeros(n, dtype=bool)
                if self._existing is not None and self._existing.num_rows:
                    with h5py.File(self._existing.path, "r") as old:
                        src = old["embeddings/features"]
                        for start in range(0, src.shape[0], _COPY_ROWS):
                            stop = min(start + _COPY_ROWS, src.shape[0])
                            features[start:stop] = src[start:stop]
                        written[: src.shape[0]] = True
                for part in self._parts:
                    if not part.keys:
                        continue
                    with np.load(part.path, allow_pickle=False) as data:
                        block = data["features"]
                    rows = np.fromiter((key_to_row[k] for k in part.keys), dtype=np.int64, count=len(part.keys))
                    fresh = ~written[rows]
                    if not fresh.any():
                        continue
                    rows, block = rows[fresh], block[fresh]
                    order = np.argsort(rows)
                    # Rows appended by parts are contiguous and in order, so this is one slice
                    # write in the normal case; the general path handles any order.
                    rows, block = rows[order], block[order]
                    if rows[-1] - rows[0] + 1 == len(rows):
                        features[rows[0] : rows[-1] + 1] = block
                    else:
                        for r, vec in zip(rows, block):
                            features[r] = vec
                    written[rows] = True
                if not written.all():
                    raise CacheError("internal: consolidation left rows without features")
                write_tables(h5, row_keys, key_to_row, files, classes, failures)
                write_root_attrs(h5, self.fingerprint, self.dtype, images_root, digest, self._created(),
                                 self.extra_attrs)
                views = self._views_to_write
                return self._write_views(h5, row_keys, key_to_row, views) if views else 0

    def _created(self) -> str:
        if self._existing is not None and self._existing.attrs.get("created"):
            return str(self._existing.attrs["created"])
        return _now()

    def _drop_parts(self) -> None:
        if not self.parts_dir.is_dir():
            return
        for entry in self.parts_dir.iterdir():
            entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.parts_dir.rmdir()
        fsync_dir(self.path.parent)
        self._parts = []


def write_tables(h5: h5py.File, row_keys: Sequence[str], key_to_row: Mapping[str, int],
                 files: Sequence[FileRecord], classes: Sequence[str], failures: Sequence[Failure]) -> None:
    """Everything of the schema but /embeddings/features."""

    def strings(values) -> np.ndarray:
        return np.asarray(list(values), dtype=object)

    h5.create_dataset("embeddings/keys", data=strings(row_keys), dtype=_STR)
    h5.create_dataset("files/paths", data=strings(f.path for f in files), dtype=_STR)
    h5.create_dataset("files/rows", data=np.asarray([key_to_row[f.key] for f in files], dtype=np.int64))
    h5.create_dataset("files/labels", data=np.asarray([f.label for f in files], dtype=np.int64))
    h5.create_dataset("files/splits", data=strings(f.split for f in files), dtype=_STR)
    h5.create_dataset("classes", data=strings(classes), dtype=_STR)
    h5.create_dataset("failures/paths", data=strings(f.path for f in failures), dtype=_STR)
    h5.create_dataset("failures/reasons", data=strings(f.reason for f in failures), dtype=_STR)
    h5.create_dataset("failures/keys", data=strings(f.key for f in failures), dtype=_STR)


def write_root_attrs(h5: h5py.File, fingerprint: Fingerprint, dtype: str, images_root: str, digest: str,
                     created: str, extra: Mapping[str, object]) -> None:
    attrs = {
        "format_version": FORMAT_VERSION,
        "fingerprint": canonical_json(fingerprint),
        "fingerprint_text": describe(fingerprint),
        "images_root": images_root,
        "created": created,
        "updated": _now(),
        "storage_dtype": dtype,
        "content_digest": digest,
        "key_algorithm": "sha256",
        "headstart_version": __version__,
        "versions": json.dumps(library_versions(), sort_keys=True),
    }
    attrs.update({k: v for k, v in extra.items() if v is not None})
    for name, value in attrs.items():
        h5.attrs[name] = value


def _create_features(h5: h5py.File, n: int, dim: int, dtype: str) -> h5py.Dataset:
    if n == 0 or dim == 0:
        return h5.create_dataset("embeddings/features", shape=(n, dim), dtype=dtype)
    rows_per_chunk = max(1, min(n, _CHUNK_BYTES // (dim * np.dtype(dtype).itemsize)))
    return h5.create_dataset("embeddings/features", shape=(n, dim), dtype=dtype, chunks=(rows_per_chunk, dim))


def content_digest(files, classes, failures, images_root, num_rows) -> str:
    """A digest of everything but the features, to skip rewriting an unchanged cache."""
    h = hashlib.sha256()
    h.update(f"{images_root}\0{num_rows}\0".encode())
    for name in classes:
        h.update(f"c\0{name}\0".encode())
    for f in files:
        h.update(f"f\0{f.path}\0{f.key}\0{f.label}\0{f.split}\0".encode())
    for f in failures:
        h.update(f"x\0{f.path}\0{f.key}\0{f.reason}\0".encode())
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers, read without importing them."""
    from importlib import metadata

    versions = {"headstart": __version__}
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "h5py", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions


def write_cache(
    path: str | os.PathLike,
    fingerprint: Fingerprint,
    keys: Sequence[str],
    features: np.ndarray,
    files: Iterable[FileRecord],
    classes: Sequence[str],
    images_root: str | os.PathLike,
    failures: Sequence[Failure] = (),
    dtype: str = "float16",
    extra_attrs: Mapping[str, object] | None = None,
) -> FinishResult:
    """Write a complete cache from arrays in one go, through the same crash-safe writer.

    For tools and tests that already hold features (e.g. merging, or generated data).
    """
    with CacheWriter(path, fingerprint, dtype, extra_attrs) as writer:
        new = [i for i, k in enumerate(keys) if k not in writer.known_keys]
        if new:
            writer.add_part([keys[i] for i in new], np.asarray(features)[new])
        return writer.finish(list(files), classes, failures, images_root)
