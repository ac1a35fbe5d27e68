"""Writing a cache crash-safely: part files while embedding, one consolidation at the end.

A writer never modifies a finished cache file in place. While it works, each completed
batch becomes a *part file* in ``<cache>.parts/`` (temporary name, fsync, atomic rename); at
the end all rows are consolidated into a new file that atomically replaces the old one, and
only then are the parts removed. After ``kill -9`` at any instant a reader still sees the
previous complete cache (or none), and a rerun finds the finished parts and embeds only
what is missing. One writer at a time: a second one fails clearly (:mod:`embedder.locking`).

Consolidating a big cache (``segments=True``) that only gains rows writes just the new rows,
into a segment file, and a new small cache file that maps all the segments
(:mod:`.segments`): O(new rows), with the same guarantees.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import h5py
import numpy as np

from ..atomic import atomic_path, fsync_dir, remove_stale_temps, write_text_atomic
from ..errors import CacheError
from ..filestat import STAT_DTYPE, StatRecord
from ..fingerprint import Fingerprint, canonical_json, require_same
from ..locking import FileLock
from ..storage import location
from .finite import RECORD_ATTR, locate_nonfinite, nonfinite_mask
from .reader import Cache, open_cache, open_h5
from .schema import (
    COPY_ROWS, PART_RE, STORAGE_DTYPES, VIEWS_PART_RE, content_digest, lock_path_for, now, parts_dir_for,
    write_root_attrs, write_tables,
)
from .segments import (
    FEATURES, MAX_SEGMENTS, SEGMENT_BYTES, SEGMENT_MIN_BYTES, Segment, adopt_as_segment, collect_garbage,
    feature_segments, relative_name, segment_layout, segments_bytes, write_segment,
)

_CHUNK_BYTES = 1 << 20
STAT_CHECKPOINT = "stats.npz"  # in the parts folder: keys and stats an interrupted run had hashed


@dataclass
class FileRecord:
    """One file of the listing as the cache stores it."""

    path: str
    key: str
    label: int  # -1 unlabeled
    split: str
    stat: tuple | None = None  # its stat record (embedder.filestat.STAT_FIELDS); None: none kept


@dataclass
class Failure:
    path: str
    reason: str
    key: str = ""  # '' when the bytes could not even be read
    stat: tuple | None = None  # with a key: its stat record, so a rerun need not read it again


@dataclass
class FinishResult:
    rewritten: bool  # anything written (False: the cache was unchanged)
    num_rows: int
    num_files: int
    size_bytes: int  # the cache file and the segments it maps
    views_missing: int = 0  # rows lacking some of their augmented views (their files are gone)
    # 'unchanged' | 'appended' (new rows in a segment) | 'tables' (no new rows: only the tables written,
    # the segments kept) | 'rewritten' (one whole file)
    mode: str = "unchanged"
    written_bytes: int = 0  # bytes of the files this consolidation wrote
    segments: int = 0  # segment files the cache maps (0: its features are in the file itself)


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
        segments: bool = False,
        rescan: bool = False,
    ):
        """``segments``: a big cache that only gains rows may keep its features in segment files
        (off for a cache that is uploaded as one file). ``rescan``: scan the features for NaN/inf
        even where the cache's record says where they are."""
        if dtype not in STORAGE_DTYPES:
            raise CacheError(f"unsupported cache dtype {dtype!r}; use float16 or float32")
        self.path = Path(path)
        self.fingerprint = dict(fingerprint)
        self.dtype = dtype
        self.extra_attrs = dict(extra_attrs or {})
        self.segments, self.rescan = segments, rescan
        self.parts_dir = parts_dir_for(self.path)
        self._lock: FileLock | None = None
        self._existing: Cache | None = None
        self._parts: list[_Part] = []
        self._view_parts: list[_ViewPart] = []
        self._views_stamp: dict | None = None  # the views record of unfinished view parts
        self.views_record: dict | None = None  # set by set_views(); else the cache's own
        self._done_views: set[tuple[str, int]] = set()  # (key, view) in view parts
        self._existing_views_done: np.ndarray | None = None  # less the views that hold NaN/inf
        self._stale_rows = np.zeros(0, np.int64)  # rows of the finished cache holding NaN/inf
        self._existing_segments: list[Segment] | None = None  # the segments its features are mapped from
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
        self._lock = FileLock(lock_path_for(self.path), lambda holder: (
            f"cache {self.path} is being written by another headstart process (pid {holder}); "
            f"wait for it to finish, or pass --cache to write elsewhere")).acquire()

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

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
            # Rows and views holding NaN/inf are not known: the job embeds them again and
            # consolidation replaces them (what `embed info` advises).
            nonfinite, _ = locate_nonfinite(existing, rescan=self.rescan)
            self._stale_rows = nonfinite.rows
            stale_keys = {str(existing.keys[r]) for r in nonfinite.rows}
            self.known_keys.update(str(k) for k in existing.keys if str(k) not in stale_keys)
            if existing.views:
                with open_h5(existing.path) as h5:
                    self._existing_views_done = h5["embeddings/views_done"][...].astype(bool)
                self._existing_views_done &= ~nonfinite.views
                self._existing_rows = {str(k): i for i, k in enumerate(existing.keys)}
            if existing.num_rows:
                self._dim = existing.dim
            for key, reason in zip(existing.attrs["_failure_keys"], existing.failure_reasons):
                if key:
                    self.known_failures[key] = reason
        mapped = None
        if self._existing is not None:
            with open_h5(self._existing.path) as h5:
                mapped = feature_segments(h5)
        self._existing_segments = mapped
        collect_garbage(self.path, mapped)
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
                view_match = VIEWS_PART_RE.match(entry.name)
                if view_match:
                    self._next_part = max(self._next_part, int(view_match.group(1)) + 1)
                    view_part = self._read_view_part_index(entry)
                    if view_part is not None:
                        self._view_parts.append(view_part)
                        self._done_views.update(zip(view_part.keys, view_part.views.tolist()))
                    continue
                match = PART_RE.match(entry.name)
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

    @property
    def in_parts(self) -> tuple[int, int]:
        """(images, views) in part files so far; read before a run adds any, what an interrupted
        run had done (where a resumed job's progress bars start)."""
        return sum(len(p.keys) + len(p.failed) for p in self._parts), len(self._done_views)

    # -- stat records ------------------------------------------------------------------

    def stat_record(self) -> StatRecord:
        """Keys and stats of the files the cache lists, updated by the checkpoint an
        interrupted run left (:meth:`keep_stat_checkpoint`): what a rerun need not read again."""
        record = self._existing.stat_record() if self._existing is not None else StatRecord.empty()
        checkpoint = self.parts_dir / STAT_CHECKPOINT
        if checkpoint.is_file():
            try:
                with np.load(checkpoint, allow_pickle=False) as data:
                    newer = StatRecord(data["paths"].tolist(), data["keys"].tolist(), data["stats"])
            except (OSError, ValueError, KeyError):
                newer = StatRecord.empty()  # damaged: its files are simply read again
            record = record.updated(newer)
        return record

    def keep_stat_checkpoint(self, paths: Sequence[str], keys: Sequence[str], stats: np.ndarray) -> None:
        """Durably keep what this run hashed before it embeds anything, so that a rerun after
        ``kill -9`` does not read those files again (it would otherwise: the finished cache
        does not list them yet)."""
        if not len(paths):
            return
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.parts_dir / STAT_CHECKPOINT) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, paths=np.asarray(list(paths), dtype=str), keys=np.asarray(list(keys), dtype="U64"),
                         stats=np.asarray(stats, dtype=STAT_DTYPE))

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
                src = old["embeddings/views"]
                k_old = min(k, src.shape[1])
                block = max(1, COPY_ROWS // max(1, k_old))
                for start in range(0, src.shape[0], block):
                    stop = min(start + block, src.shape[0])
                    views[start:stop, :k_old] = src[start:stop, :k_old]
                # A view holding NaN/inf is not a view: done again below if a part has it.
                done[: src.shape[0], :k_old] = self._existing_views_done[:, :k_old]
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
            and (self._existing.attrs.get("_has_stat_record") or not any(f.stat for f in files))
        )
        views_missing, mode, written = 0, "unchanged", 0
        if not unchanged:
            args = (row_keys, key_to_row, files, classes, failures, images_root, digest)
            written = self._append_consolidated(*args) if self._can_append(row_keys, key_to_row) else None
            if written is not None:
                mode = "appended" if len(row_keys) > self._existing.num_rows else "tables"
            else:
                views_missing = self._write_consolidated(*args)
                mode, written = "rewritten", self.path.stat().st_size
        elif self._existing_views_done is not None:
            views_missing = int(np.sum(~self._existing_views_done.all(axis=1)))
        self._drop_parts()
        with open_h5(self.path) as h5:
            segments = feature_segments(h5)
        size = self.path.stat().st_size + segments_bytes(self.path, segments)
        return FinishResult(rewritten=not unchanged, num_rows=len(row_keys), num_files=len(files), size_bytes=size,
                            views_missing=views_missing, mode=mode, written_bytes=written,
                            segments=len(segments or []))

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
        """Write the new cache file, features and all; returns how many rows lack some of their views."""
        n = len(row_keys)
        dim = self._dim or 0
        bad = np.zeros(n, dtype=bool)  # rows written holding NaN/inf: the record readers trust
        with atomic_path(self.path) as tmp:
            with h5py.File(tmp, "w") as h5:
                features = _create_features(h5, n, dim, self.dtype)
                written = np.zeros(n, dtype=bool)
                if self._existing is not None and self._existing.num_rows:
                    with open_h5(self._existing.path) as old:
                        src = old[FEATURES]
                        for start in range(0, src.shape[0], COPY_ROWS):
                            stop = min(start + COPY_ROWS, src.shape[0])
                            block = src[start:stop]
                            features[start:stop] = block
                            bad[start:stop] = nonfinite_mask(block)
                        written[: src.shape[0]] = True
                    written[self._stale_rows] = False  # NaN/inf: replaced by a part's row if one has it
                stale = np.zeros(n, dtype=bool)
                stale[self._stale_rows] = True
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
                    bad[rows] = nonfinite_mask(block)
                if not (written | stale).all():  # a stale row no part replaced keeps its old values
                    raise CacheError("internal: consolidation left rows without features")
                write_tables(h5, row_keys, key_to_row, files, classes, failures)
                write_root_attrs(h5, self.fingerprint, self.dtype, images_root, digest, self._created(),
                                 self._attrs_with_record([np.flatnonzero(bad)]))
                views = self._views_to_write
                return self._write_views(h5, row_keys, key_to_row, views) if views else 0

    def _attrs_with_record(self, nonfinite: list[np.ndarray]) -> dict:
        rows = np.unique(np.concatenate(nonfinite)) if nonfinite else np.zeros(0, np.int64)
        return {**self.extra_attrs, RECORD_ATTR: json.dumps([int(r) for r in rows])}

    # -- appending into segments ---------------------------------------------------------

    def _can_append(self, row_keys: Sequence[str], key_to_row: Mapping[str, int]) -> bool:
        """Whether this consolidation only adds rows to a big cache that may keep segments (or
        adds none and changes only the tables): no row replaced, no views, and not too many
        segments already."""
        existing = self._existing
        if not self.segments or existing is None or not existing.num_rows or existing.views or self._views_to_write:
            return False
        if self._dim != existing.dim or existing.feature_dtype != self.dtype:
            return False
        segments = self._existing_segments
        if segments is None:
            if existing.num_rows * existing.dim * np.dtype(self.dtype).itemsize < SEGMENT_MIN_BYTES:
                return False  # small: rewriting it whole costs less than a second
        elif not all(s.owned_by(self.path) for s in segments) or len(segments) >= MAX_SEGMENTS:
            return False  # e.g. a --virtual merge over shards: rewritten whole, as before
        stale = set(self._stale_rows.tolist())
        return not any(key_to_row[k] in stale for part in self._parts for k in part.keys)

    def _new_row_blocks(self, first: int, key_to_row: Mapping[str, int]):
        """The parts' rows from ``first`` on, in row order, as arrays (parts list new rows in order)."""
        expected = first
        for part in self._parts:
            if not part.keys:
                continue
            rows = np.fromiter((key_to_row[k] for k in part.keys), dtype=np.int64, count=len(part.keys))
            take = np.flatnonzero(rows >= expected)
            if not len(take):
                continue
            with np.load(part.path, allow_pickle=False) as data:
                block = data["features"][take]
            rows = rows[take]
            _, once = np.unique(rows, return_index=True)  # each row once (the same bytes twice in a part)
            rows, block = rows[once], block[once]
            if rows[0] != expected or not np.array_equal(rows, np.arange(expected, expected + len(rows))):
                raise CacheError("internal: the parts do not hold the new rows in order")
            expected += len(rows)
            yield block.astype(self.dtype, copy=False)

    def _append_consolidated(self, row_keys, key_to_row, files, classes, failures, images_root, digest) -> int | None:
        """Write the new rows (if any) as a segment and a new cache file mapping every segment;
        returns the bytes written, or None where this filesystem cannot (no hard links):
        rewrite whole. Without new rows (files moved or relabelled, stat records refreshed)
        only the tables are written."""
        n_old, n, dim = self._existing.num_rows, len(row_keys), self._dim
        row_bytes = dim * np.dtype(self.dtype).itemsize
        segments = list(self._existing_segments or [])
        if not segments:
            try:
                base = adopt_as_segment(self.path)
            except OSError:
                return None
            segments = [Segment(relative_name(self.path, base), n_old)]
        nonfinite, segment = [self._stale_rows], None
        new_rows = n - n_old
        if new_rows:
            blocks = self._new_row_blocks(n_old, key_to_row)
            last = segments[-1]
            if len(segments) > 1 and (last.rows + new_rows) * row_bytes <= SEGMENT_BYTES:
                # The last segment is still small: one segment of its rows and the new ones.
                segments.pop()
                blocks = _chain(_read_blocks(last.path(self.path), last.dataset, last.rows), blocks)
                new_rows += last.rows
            segment = write_segment(self.path, blocks, new_rows, dim, self.dtype)
            segments.append(Segment(relative_name(self.path, segment), new_rows))
            nonfinite.append(n - new_rows + _nonfinite_rows_of(segment))
        with atomic_path(self.path) as tmp:
            with h5py.File(tmp, "w") as h5:
                h5.create_virtual_dataset(FEATURES, segment_layout(self.path, segments, dim, self.dtype),
                                          fillvalue=np.nan)
                write_tables(h5, row_keys, key_to_row, files, classes, failures)
                write_root_attrs(h5, self.fingerprint, self.dtype, images_root, digest, self._created(),
                                 self._attrs_with_record(nonfinite))
        return self.path.stat().st_size + (segment.stat().st_size if segment is not None else 0)

    def _created(self) -> str:
        if self._existing is not None and self._existing.attrs.get("created"):
            return str(self._existing.attrs["created"])
        return now()

    def _drop_parts(self) -> None:
        if not self.parts_dir.is_dir():
            return
        for entry in self.parts_dir.iterdir():
            entry.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.parts_dir.rmdir()
        fsync_dir(self.path.parent)
        self._parts = []


def _chain(*iterables):
    for iterable in iterables:
        yield from iterable


def _read_blocks(path: Path, dataset: str, rows: int):
    with h5py.File(path, "r") as h5:
        data = h5[dataset]
        for start in range(0, rows, COPY_ROWS):
            yield data[start:min(start + COPY_ROWS, rows)]


def _nonfinite_rows_of(segment: Path) -> np.ndarray:
    """Rows of a segment just written that hold NaN/inf (its own numbering)."""
    found = []
    with h5py.File(segment, "r") as h5:
        data = h5[FEATURES]
        for start in range(0, data.shape[0], COPY_ROWS):
            found.append(start + np.flatnonzero(nonfinite_mask(data[start:start + COPY_ROWS])))
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _create_features(h5: h5py.File, n: int, dim: int, dtype: str) -> h5py.Dataset:
    if n == 0 or dim == 0:
        return h5.create_dataset("embeddings/features", shape=(n, dim), dtype=dtype)
    rows_per_chunk = max(1, min(n, _CHUNK_BYTES // (dim * np.dtype(dtype).itemsize)))
    return h5.create_dataset("embeddings/features", shape=(n, dim), dtype=dtype, chunks=(rows_per_chunk, dim))



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
