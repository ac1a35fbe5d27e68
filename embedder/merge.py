"""`headstart embed merge OUT SHARD...`: shard caches from many machines -> one cache.

Shards come from ``embed run --shard I/N`` (a disjoint partition of the files by path), so
the same bytes under two paths may sit in two shards: merge keeps one row per content key.
It checks everything it relies on: every shard is a finished cache (a missing or
half-written one is named), all fingerprints and storage dtypes are equal (a mismatch names
both), and a key that appears in two shards carries the same features in both (else:
refused, naming the key and the shards). Shards it can tell are missing (``1/4`` and
``3/4`` given, ``0/4`` and ``2/4`` not) or that were assigned by another rule (older
headstart versions partitioned by content key) are warned about: OUT may lack files.

Two ways to write OUT:
  * copy (default): a normal cache, written through the crash-safe writer;
  * ``--virtual``: an HDF5 virtual dataset whose ``/embeddings/features`` maps the shards'
    rows in place (no copy; OUT then needs the shard files to stay where they are).
Either way OUT is a normal cache for every later stage. Augmented views (``--views``) are
copied along (made with one seed and recipe in every shard, or refused); ``--virtual`` maps
the clean features only and says so.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np

from .atomic import atomic_path
from .cache import (
    Cache, CacheError, CacheLocation, CacheWriter, Failure, FileRecord, content_digest, open_cache, parts_dir_for,
    write_root_attrs, write_tables,
)
from .errors import UsageError
from .fingerprint import require_same
from .staging import pending_parts
from .storage import is_url, location

COPY_ROWS = 16384
# float16 storage keeps ~3 significant digits; two runtimes/devices may round differently.
SAME_FEATURES_RTOL = 2e-3


@dataclass
class MergeReport:
    out: str
    shards: list[str]
    rows: int = 0
    files: int = 0
    failures: int = 0
    duplicate_keys: int = 0
    virtual: bool = False
    size_bytes: int = 0
    warnings: list[str] = field(default_factory=list)


def _open_shard(path: Path) -> Cache:
    parts = pending_parts(path) if is_url(path) else parts_dir_for(path)  # a URL's are on this machine
    if not path.exists():
        if parts.is_dir():
            raise CacheError(f"shard {path} is half-written (an interrupted run left parts in {parts}); "
                             f"rerun that shard to finish it")
        raise CacheError(f"shard {path} is missing")
    if parts.is_dir() and any(parts.glob("part-*.npz")):
        raise CacheError(f"shard {path} has unfinished parts from an interrupted rerun; rerun that shard to finish it")
    return open_cache(path)


def merge_caches(out: str | os.PathLike, shard_paths: Sequence[str | os.PathLike], virtual: bool = False,
                 images_root: str | None = None, log: Callable[[str], None] = lambda m: None) -> MergeReport:
    out = location(out)
    paths = [location(p) for p in shard_paths]
    if not paths:
        raise UsageError("give at least one shard cache to merge")
    if virtual and (is_url(out) or any(is_url(p) for p in paths)):
        raise UsageError("--virtual maps the shard files in place, so OUT and the shards must be local files; "
                         "merge without --virtual to read or write URLs")
    if any(p.resolve() == out.resolve() for p in paths):
        raise UsageError(f"OUT {out} is also one of the shards; write the merge to a new file")
    if len({p.resolve() for p in paths}) != len(paths):
        raise UsageError("a shard is listed twice")
    shards = [_open_shard(p) for p in paths]
    first = shards[0]
    for shard in shards[1:]:
        require_same(shard.fingerprint, first.fingerprint, f"shard {shard.path}", f"shard {first.path}")
        if shard.feature_dtype != first.feature_dtype and shard.num_rows and first.num_rows:
            raise CacheError(f"shard {shard.path} stores {shard.feature_dtype}, shard {first.path} "
                             f"{first.feature_dtype}; embed all shards with the same --dtype")
    report = MergeReport(str(out), [str(p) for p in paths], virtual=virtual)
    roots = {str(s.images_root) for s in shards}
    root = images_root or str(first.images_root)
    if len(roots) > 1 and images_root is None:
        report.warnings.append(f"shards name {len(roots)} different images roots; recording {root} "
                               f"(pass --images-root to choose)")

    classes = sorted({c for s in shards for c in s.classes})
    class_index = {c: i for i, c in enumerate(classes)}
    row_keys: list[str] = []
    key_to_row: dict[str, int] = {}
    sources: list[tuple[Cache, np.ndarray, np.ndarray]] = []  # (shard, its rows to take, target rows)
    owner: dict[str, Cache] = {}
    for shard in shards:
        take, target, duplicates = [], [], []
        for row, key in enumerate(shard.keys):
            key = str(key)
            if key in key_to_row:
                duplicates.append((row, key))
                continue
            key_to_row[key] = len(row_keys)
            row_keys.append(key)
            owner[key] = shard
            take.append(row)
            target.append(key_to_row[key])
        if duplicates:
            _check_duplicates(shard, duplicates, owner, key_to_row)
            report.duplicate_keys += len(duplicates)
        sources.append((shard, np.asarray(take, dtype=np.int64), np.asarray(target, dtype=np.int64)))
    with_views = [s for s in shards if s.views]
    for shard in with_views[1:]:
        a, b = shard.views, with_views[0].views
        if (a["seed"], a["augmentation"]) != (b["seed"], b["augmentation"]):
            raise CacheError(f"shards {shard.path} and {with_views[0].path} hold augmented views made with "
                             f"different seeds or recipes; embed all shards with the same --views-seed")
    if with_views and virtual:
        report.warnings.append("--virtual maps the clean features only; the shards' augmented views are not "
                               "in OUT (merge without --virtual to keep them)")
    elif with_views and len(with_views) < len(shards):
        report.warnings.append(f"only {len(with_views)} of {len(shards)} shards hold augmented views; the "
                               f"other shards' images have none in OUT")
    report.warnings.extend(coverage_warnings(shards))

    files: list[FileRecord] = []
    seen_paths: dict[str, str] = {}
    for shard in shards:
        for path, row, label, split in zip(shard.paths, shard.rows, shard.labels, shard.splits):
            key = str(shard.keys[row])
            path = str(path)
            if path in seen_paths:
                if seen_paths[path] != key:
                    raise CacheError(f"{path} has different bytes in two shards (key {seen_paths[path][:12]}… "
                                     f"vs {key[:12]}…); were the shards embedded from the same images?")
                continue
            seen_paths[path] = key
            name = shard.classes[label] if label >= 0 else None
            files.append(FileRecord(path, key, class_index[name] if name is not None else -1, str(split)))
    failures: list[Failure] = []
    failed_paths: set[str] = set()
    for shard in shards:
        keys = shard.attrs.get("_failure_keys") or [""] * len(shard.failure_paths)
        for path, reason, key in zip(shard.failure_paths, shard.failure_reasons, keys):
            if path not in failed_paths and path not in seen_paths:
                failed_paths.add(path)
                failures.append(Failure(path, reason, key))

    extra = {"merged_from": ",".join(str(p) for p in paths), "layout": first.attrs.get("layout"),
             "backbone_source": first.attrs.get("backbone_source"),
             "weights_source": first.attrs.get("weights_source"), "runtime": first.attrs.get("runtime")}
    if virtual:
        _write_virtual(out, first, sources, row_keys, key_to_row, files, classes, failures, root, extra)
    else:
        _write_copy(out, first, sources, row_keys, files, classes, failures, root, extra, log)
    report.rows, report.files, report.failures = len(row_keys), len(files), len(failures)
    report.size_bytes = out.stat().st_size
    return report


def _check_duplicates(shard: Cache, duplicates, owner: dict[str, Cache], key_to_row) -> None:
    """A key in two shards must carry the same features in both."""
    rows = np.asarray([r for r, _ in duplicates])
    mine = shard.read_rows(rows)
    by_owner: dict[Path, list[int]] = {}
    for i, (_, key) in enumerate(duplicates):
        by_owner.setdefault(owner[key].path, []).append(i)
    for owner_path, indices in by_owner.items():
        other = open_cache(owner_path)
        other_row = {str(k): i for i, k in enumerate(other.keys)}
        keys = [duplicates[i][1] for i in indices]
        theirs = other.read_rows(np.asarray([other_row[k] for k in keys]))
        for k, a, b in zip(keys, mine[indices], theirs):
            if not np.allclose(a, b, rtol=SAME_FEATURES_RTOL, atol=SAME_FEATURES_RTOL * max(float(np.abs(b).max()), 1e-12)):
                raise CacheError(f"key {k[:16]}… is in shards {shard.path} and {owner_path} with different "
                                 f"features; they were not made the same way")


def _write_copy(out: Path, first: Cache, sources, row_keys, files, classes, failures, root, extra, log) -> None:
    if out.exists():
        raise UsageError(f"{out} exists; merge into a new file")
    with CacheLocation.of(out).staged(log) as local_out, \
            CacheWriter(local_out, first.fingerprint, first.feature_dtype, extra) as writer:
        for shard, take, _ in sources:
            for start in range(0, len(take), COPY_ROWS):
                rows = take[start:start + COPY_ROWS]
                writer.add_part([str(shard.keys[r]) for r in rows], shard.read_rows(rows, dtype=first.feature_dtype))
            log(f"copied {len(take):,} rows from {shard.path}")
        _copy_views(writer, [s for s, _, _ in sources], sources)
        writer.finish(files, classes, failures, root)


def _copy_views(writer: CacheWriter, shards: list[Cache], sources) -> None:
    records = [s.views for s in shards if s.views]
    if not records:
        return
    count = max(int(r["count"]) for r in records)
    writer.set_views(count, records[0]["seed"], records[0]["augmentation"])
    for shard, take, _ in sources:
        if not shard.views or not len(take):
            continue
        block = max(1, COPY_ROWS // shard.num_views)
        for start in range(0, len(take), block):
            rows = take[start:start + block]
            views, done = shard.load_views(rows, dtype=writer.dtype)
            row_index, view_index = np.nonzero(done)
            writer.add_view_part([str(shard.keys[rows[i]]) for i in row_index], view_index.tolist(),
                                 views[row_index, view_index])


def _write_virtual(out: Path, first: Cache, sources, row_keys, key_to_row, files, classes, failures, root,
                   extra) -> None:
    if out.exists():
        raise UsageError(f"{out} exists; merge into a new file")
    dim = next((s.dim for s, _, _ in sources if s.num_rows), first.dim)
    layout = h5py.VirtualLayout(shape=(len(row_keys), dim), dtype=first.feature_dtype)
    for shard, take, target in sources:
        if not len(take):
            continue
        # Each run of consecutive rows taken from a shard maps onto a block of OUT's rows (a
        # shard maps whole unless another shard already holds some of its keys).
        source = h5py.VirtualSource(os.path.relpath(shard.path.resolve(), out.resolve().parent),
                                    "embeddings/features", shape=(shard.num_rows, dim))
        for start, stop in _runs(take):
            block = int(target[start])
            layout[block:block + stop - start] = source[int(take[start]):int(take[stop - 1]) + 1]
    digest = content_digest(files, classes, failures, root, len(row_keys))
    with atomic_path(out, keep_suffix=True) as tmp:
        with h5py.File(tmp, "w") as h5:
            h5.create_virtual_dataset("embeddings/features", layout)
            write_tables(h5, row_keys, key_to_row, files, classes, failures)
            write_root_attrs(h5, first.fingerprint, first.feature_dtype, root, digest,
                             str(first.attrs.get("created", "")), dict(extra, virtual=True))


def _runs(rows: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges of ``rows`` over which the values go up by one."""
    if not len(rows):
        return []
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    edges = [0, *breaks.tolist(), len(rows)]
    return list(zip(edges[:-1], edges[1:]))


def coverage_warnings(shards: Sequence[Cache]) -> list[str]:
    """What the shards' own records say OUT may lack: shards of a partition that are not
    among the inputs, or shards assigned by different rules (files may fall between them)."""
    marked = []
    for shard in shards:
        try:
            index, count = (int(x) for x in str(shard.attrs.get("shard") or "").split("/"))
        except ValueError:
            continue  # a whole cache (not a shard): nothing to check
        marked.append((shard, index, count, str(shard.attrs.get("shard_by") or "key")))
    warnings = []
    rules = sorted({rule for *_, rule in marked})
    if len(rules) > 1:
        named = "; ".join(f"by {rule}: " + ", ".join(str(s.path) for s, *_, r in marked if r == rule) for rule in rules)
        warnings.append(f"the shards were assigned files by different rules ({named}), so some files may be in "
                        f"none of them; embed every shard with the same headstart version")
    for count in sorted({c for _, _, c, _ in marked}):
        present = {i for _, i, c, _ in marked if c == count}
        absent = [i for i in range(count) if i not in present]
        if absent:
            listed = ", ".join(f"{i}/{count}" for i in absent[:8]) + (", ..." if len(absent) > 8 else "")
            warnings.append(f"{len(absent)} of {count} shards are not among the inputs ({listed}): their files are "
                            f"not in OUT")
    return warnings
