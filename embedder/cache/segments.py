"""Big caches keep their features in immutable segment files, so an append costs O(new rows).

A cache file is never modified in place (a ``kill -9`` must leave the previous version
intact), so adding 10 rows to a single-file cache of a million rows rewrote 2.5 GB. Instead,
once a cache holds :data:`SEGMENT_MIN_BYTES` of features, a run that only adds rows writes:

1. the new rows into a new *segment* ``<cache>.segments/seg-<id>.h5`` (temporary name, fsync,
   atomic rename), folded together with the previous segment while that one is still small
   (under :data:`SEGMENT_BYTES`), so there are few segments; the first time, the existing
   single-file cache becomes the first segment by a hard link (no copy);
2. a new cache file, swapped in atomically as before, holding the tables and
   ``/embeddings/features`` as an HDF5 *virtual dataset* over the segments, in order.

A run that adds no rows but changes the tables (files moved or relabelled, stat records
refreshed) writes step 2 only.

Segments are never modified. Until step 2 a reader sees the previous cache, whole; after it,
the new one. h5py and HDF5 tools read a virtual dataset like any other (HDF5 >= 1.10); its
fill value is NaN, so a missing segment could never pass for zeros, and :func:`check_sources`
(run by ``open_cache``) names it. A cache that keeps segments must be moved together with its
``.segments/`` folder.

Segments no longer mapped (folded away, or left by a killed run) are removed by the next
writer of the cache, once the cache file has been in place for :data:`GARBAGE_GRACE_S`: a
reader that opened the previous version while it was current has finished by then.
Everything that is not a pure append -- rows replaced (NaN rows embedded again), augmented
views, a cache at a URL (uploaded as one file), more than :data:`MAX_SEGMENTS` segments --
is written as one self-contained file, as before.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ..atomic import atomic_path, fsync_dir, remove_stale_temps
from ..errors import CacheError

SEGMENT_MIN_BYTES = 256 << 20  # smaller caches are rewritten whole: it takes well under a second
SEGMENT_BYTES = 256 << 20  # the last segment takes new rows until it holds this much
MAX_SEGMENTS = 64  # beyond this an append folds everything back into one file
GARBAGE_GRACE_S = 600
FEATURES = "embeddings/features"
_CHUNK_BYTES = 1 << 20


def segments_dir_for(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".segments")


@dataclass(frozen=True)
class Segment:
    """A block of consecutive rows of the features, stored in another file."""

    file: str  # as the virtual dataset names it: relative to the cache's folder (or absolute)
    rows: int
    dataset: str = FEATURES

    def path(self, cache_path: Path) -> Path:
        return Path(self.file) if os.path.isabs(self.file) else cache_path.parent / self.file

    def owned_by(self, cache_path: Path) -> bool:
        """Whether this is one of the cache's own segments (not, e.g., a shard of a --virtual merge)."""
        return self.path(cache_path).parent == segments_dir_for(cache_path)


def feature_segments(h5: h5py.File) -> list[Segment] | None:
    """The segments the features are mapped from, in row order; None if they are stored in the file."""
    data = h5[FEATURES]
    if not data.is_virtual:
        return None
    found = []
    for source in data.virtual_sources():
        (first, _), (last, _) = source.vspace.get_select_bounds()
        found.append((int(first), Segment(source.file_name, int(last) - int(first) + 1, source.dset_name)))
    found.sort(key=lambda item: item[0])
    expected = 0
    for first, segment in found:
        if first != expected:
            raise CacheError(f"{h5.filename}: its virtual features do not map consecutive rows")
        expected += segment.rows
    return [segment for _, segment in found]


def check_sources(cache_path: Path, h5: h5py.File) -> None:
    """Refuse a cache whose features are mapped from a file that is missing or too short."""
    segments = feature_segments(h5)
    for segment in segments or []:
        where = segment.path(cache_path)
        why = ""
        try:
            with h5py.File(where, "r") as source:
                data = source.get(segment.dataset)
                if not isinstance(data, h5py.Dataset) or data.ndim != 2 or data.shape[0] < segment.rows:
                    why = f"it does not hold the {segment.rows:,} rows mapped from it"
        except FileNotFoundError:
            why = "it is missing"
        except OSError as exc:
            why = f"it cannot be read ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
        if why:
            keep = (f"move or copy {cache_path.name} together with its {segments_dir_for(cache_path).name}/ folder"
                    if segment.owned_by(cache_path) else "keep the files it maps beside it")
            raise CacheError(f"cache {cache_path} maps its features from {where}, but {why}; {keep}")


def new_segment_path(cache_path: Path) -> Path:
    folder = segments_dir_for(cache_path)
    return folder / f"seg-{time.time_ns():020d}-{os.getpid()}.h5"


def adopt_as_segment(cache_path: Path) -> Path:
    """Make the current single-file cache the first segment: a hard link, no copy. Raises
    OSError where the filesystem has no hard links (the caller then rewrites the file)."""
    target = new_segment_path(cache_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.link(cache_path, target)
    fsync_dir(target.parent)
    return target


def write_segment(cache_path: Path, blocks, rows: int, dim: int, dtype: str) -> Path:
    """A new segment holding ``rows`` rows, written from ``blocks`` (arrays of consecutive rows)."""
    target = new_segment_path(cache_path)
    with atomic_path(target) as tmp:
        with h5py.File(tmp, "w") as h5:
            chunk = max(1, min(rows, _CHUNK_BYTES // max(1, dim * np.dtype(dtype).itemsize)))
            data = h5.create_dataset(FEATURES, shape=(rows, dim), dtype=dtype, chunks=(chunk, dim) if rows else None)
            at = 0
            for block in blocks:
                data[at:at + len(block)] = block
                at += len(block)
            if at != rows:
                raise CacheError(f"internal: a segment got {at} rows of {rows}")
            h5.attrs["segment_of"] = cache_path.name
    return target


def segment_layout(cache_path: Path, segments: list[Segment], dim: int, dtype: str) -> h5py.VirtualLayout:
    """The virtual ``/embeddings/features``: each segment's rows, in order."""
    total = sum(s.rows for s in segments)
    layout = h5py.VirtualLayout(shape=(total, dim), dtype=dtype)
    at = 0
    for segment in segments:
        if segment.rows:
            layout[at:at + segment.rows] = h5py.VirtualSource(segment.file, segment.dataset, shape=(segment.rows, dim))
        at += segment.rows
    return layout


def relative_name(cache_path: Path, segment_path: Path) -> str:
    return os.path.relpath(segment_path, cache_path.parent)


def collect_garbage(cache_path: Path, mapped: list[Segment] | None, grace_s: float | None = None) -> int:
    """Remove the cache's own segment files that its current version does not map (and
    temporary files of killed writers), once the cache file has been in place for
    ``grace_s`` (default :data:`GARBAGE_GRACE_S`). Call with the writer's lock held. Returns how many were removed."""
    folder = segments_dir_for(cache_path)
    if not folder.is_dir():
        return 0
    removed = remove_stale_temps(folder)
    grace_s = GARBAGE_GRACE_S if grace_s is None else grace_s
    try:
        settled = not cache_path.exists() or time.time() - cache_path.stat().st_mtime >= grace_s
    except OSError:
        return removed
    if not settled:
        return removed
    keep = {s.path(cache_path).name for s in mapped or [] if s.owned_by(cache_path)}
    for entry in folder.iterdir():
        if entry.name.startswith("seg-") and entry.name not in keep:
            with contextlib.suppress(OSError):
                entry.unlink()
                removed += 1
    if not keep:
        with contextlib.suppress(OSError):
            folder.rmdir()
    fsync_dir(cache_path.parent)
    return removed


def segments_bytes(cache_path: Path, segments: list[Segment] | None) -> int:
    """Bytes of the segments a cache maps (its own and others'), counted once each."""
    total = 0
    for path in {s.path(cache_path) for s in segments or []}:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total
