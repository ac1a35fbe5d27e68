"""The cache's file table seen per row, as ``head train`` sees it, plus the features as unit vectors.

A cache has one feature row per distinct content (key) and one file entry per path. The
reports reason about rows (two paths of the same bytes are one image to a head) but print
files, so this module works out, once and vectorised, each row's label (the one label its
labelled files agree on; -1 when none or when they disagree: a *conflict*, which
``head train`` leaves out), a representative path, and the split ``head train`` will put it
in: the same per-row rule as :func:`heads.data.load_labelled` (the most held-out split any
copy was filed under) handed to :func:`heads.splits.assign_splits` with the same seed and
fraction, so a leakage report describes exactly the split a head will train on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from embedder.cache import Cache, latest_cache, open_cache
from embedder.errors import CacheError, UsageError

from ..splits import assign_splits, check_val_fraction, split_source

Log = Callable[[str], None]

# Same order of "held-out-ness" as heads.data / heads.splits: test > val > train > unmarked.
_PRIORITY = {"": 0, "train": 1, "val": 2, "validation": 2, "test": 3}
_PRIORITY_NAMES = np.asarray(["", "train", "val", "test"], dtype=object)
_NORMALISE_ROWS = 16384


def quiet(_: str) -> None:
    pass


def resolve_cache(cache: str | os.PathLike | None, cache_dir: str | os.PathLike = "cache", log: Log = quiet):
    """The cache given, else the newest under ``cache_dir`` (named through ``log``), as other commands do."""
    if cache is not None:
        return cache
    path = latest_cache(cache_dir)
    log(f"using cache {path} (the newest under {cache_dir}/)")
    return path


def progress_bar(total: int, desc: str, enabled: bool, unit: str = "row"):
    """A tqdm bar on stderr; shown only when wanted and stderr is a terminal (as elsewhere)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
                disable=None if enabled else True, unit_scale=True)


@dataclass
class Inventory:
    """Per-row facts of a cache (arrays are ``[N]``, one per feature row)."""

    cache: Cache
    label: np.ndarray  # int64 class index; -1 unlabelled or conflicting
    conflict: np.ndarray  # bool: the row's files carry different labels
    path: np.ndarray  # object: one file of the row ('' if the row has none)
    files: np.ndarray  # int64: how many files share the row's bytes
    split: np.ndarray  # object: 'train' | 'val' | 'test' as head train assigns it
    split_source: str  # 'layout' | 'layout+hash' | 'hash'
    val_fraction: float
    seed: int

    @property
    def classes(self) -> list[str]:
        return list(self.cache.classes)

    @property
    def num_rows(self) -> int:
        return int(len(self.label))

    @property
    def labelled(self) -> np.ndarray:
        """Rows a head trains or validates on: one agreed label."""
        return self.label >= 0

    @property
    def has_labels(self) -> bool:
        return bool(np.any(self.cache.labels >= 0))

    def label_name(self, rows: np.ndarray) -> np.ndarray:
        """Class name per row; '' unlabelled; 'a|b' for a conflict (every label its files carry)."""
        names = np.asarray(list(self.cache.classes) + [""], dtype=object)
        out = names[np.where(self.label[rows] >= 0, self.label[rows], len(names) - 1)]
        conflicted = np.flatnonzero(self.conflict[rows])
        if len(conflicted):
            table = self.conflict_labels()
            for i in conflicted:
                out[i] = "|".join(table[int(rows[i])])
        return out

    def conflict_labels(self) -> dict[int, list[str]]:
        """Row -> sorted class names of its labelled files, for conflicting rows only."""
        c = self.cache
        mask = (c.labels >= 0) & self.conflict[c.rows]
        table: dict[int, set[str]] = {}
        for row, lab in zip(c.rows[mask], c.labels[mask]):
            table.setdefault(int(row), set()).add(c.classes[int(lab)])
        return {row: sorted(names) for row, names in table.items()}


def build_inventory(cache: Cache, val_fraction: float = 0.2, seed: int = 0) -> Inventory:
    """Resolve labels, conflicts, representative paths and ``head train``'s split per row."""
    val_fraction = check_val_fraction(val_fraction)
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")
    n = cache.num_rows
    rows, labels = cache.rows, cache.labels
    if n == 0 or len(cache.paths) == 0:
        raise CacheError(f"cache {cache.path} is empty (no embedded images); run `headstart embed run` on a "
                         f"folder with images")
    files = np.bincount(rows, minlength=n).astype(np.int64)
    path = np.full(n, "", dtype=object)
    present, first = np.unique(rows, return_index=True)
    path[present] = np.asarray(cache.paths, dtype=object)[first]

    labelled = labels >= 0
    lowest = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    highest = np.full(n, -1, dtype=np.int64)
    np.minimum.at(lowest, rows[labelled], labels[labelled])
    np.maximum.at(highest, rows[labelled], labels[labelled])
    has_label = highest >= 0
    conflict = has_label & (lowest != highest)
    label = np.where(has_label & ~conflict, highest, -1)

    # The split entry of each row: the most held-out one among its files (unknown names are
    # ignored, as heads.data does), then head train's own assignment.
    split_names, split_index = np.unique(np.asarray(cache.splits, dtype=str), return_inverse=True)
    priority = np.asarray([_PRIORITY.get(str(s), 0) for s in split_names], dtype=np.int64)
    best = np.zeros(n, dtype=np.int64)
    np.maximum.at(best, rows, priority[np.asarray(split_index).reshape(-1)])
    given = _PRIORITY_NAMES[best]
    split = np.asarray(assign_splits(cache.keys, label, given, val_fraction=val_fraction, seed=seed), dtype=object)
    return Inventory(cache=cache, label=label, conflict=conflict, path=path, files=files, split=split,
                     split_source=split_source(given), val_fraction=val_fraction, seed=int(seed))


def open_inventory(cache: str | os.PathLike | None, cache_dir: str | os.PathLike = "cache",
                   val_fraction: float = 0.2, seed: int = 0, log: Log = quiet) -> Inventory:
    return build_inventory(open_cache(resolve_cache(cache, cache_dir, log)), val_fraction, seed)


def require_labels(inv: Inventory, what: str, min_classes: int = 1) -> None:
    """Refuse (exit 2) a cache without the labels ``what`` needs."""
    where = f"cache {inv.cache.path}"
    if not inv.has_labels:
        raise UsageError(f"{what} needs labels, and {where} has none; embed a folder with one sub-folder per "
                         f"class, or a manifest with labels")
    present = np.unique(inv.label[inv.labelled])
    if len(present) < min_classes:
        raise UsageError(f"{what} needs at least {min_classes} classes with labelled images; {where} has "
                         f"{len(present)} ({', '.join(inv.classes[int(c)] for c in present) or 'none'})")


def labelled_units(inv: Inventory):
    """The distinct (row, label) pairs of the labelled files, which the rankings score:
    ``(rows, labels, first file of each, number of files)``. Copies of the same bytes and
    label are one unit; bytes under two classes (a conflict) are one unit per class."""
    c = inv.cache
    files = np.flatnonzero(c.labels >= 0)
    code = c.rows[files] * (len(c.classes) + 1) + c.labels[files]
    unique, first, counts = np.unique(code, return_index=True, return_counts=True)
    return unique // (len(c.classes) + 1), unique % (len(c.classes) + 1), files[first], counts


def other_paths(inv: Inventory, rows: np.ndarray, labels: np.ndarray, first: np.ndarray,
                counts: np.ndarray) -> dict[int, str]:
    """Unit index -> the unit's other files (';'-joined), for units of several files only."""
    c = inv.cache
    several = np.flatnonzero(counts > 1)
    if not len(several):
        return {}
    wanted = {(int(rows[u]), int(labels[u])): int(u) for u in several}
    found: dict[int, list[str]] = {}
    for f in np.flatnonzero(np.isin(c.rows, rows[several]) & (c.labels >= 0)):
        unit = wanted.get((int(c.rows[f]), int(c.labels[f])))
        if unit is not None and f != first[unit]:
            found.setdefault(unit, []).append(str(c.paths[f]))
    return {u: ";".join(paths) for u, paths in found.items()}


def unit_features(cache: Cache) -> np.ndarray:
    """All rows as float32 unit vectors (a zero row stays zero: it is similar to nothing).

    The stored dtype is read as is and converted in row chunks, so a float16 cache costs its
    float32 copy plus the float16 one, never a second float32 temporary.
    """
    raw = cache.load_features(cache.feature_dtype)
    out = np.empty(raw.shape, dtype=np.float32)
    for start in range(0, len(raw), _NORMALISE_ROWS):
        block = raw[start:start + _NORMALISE_ROWS].astype(np.float32)
        if not np.isfinite(block).all():
            bad = int(np.sum(~np.isfinite(raw).all(axis=1)))
            raise CacheError(f"cache {cache.path} has {bad} rows with NaN or infinite features; re-embed it")
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        block /= np.where(norms > 0, norms, 1.0).astype(np.float32)[:, None]
        out[start:start + len(block)] = block
    return out


def raw_features(cache: Cache) -> np.ndarray:
    """All rows as float32, checked finite (what the label model standardises)."""
    features = cache.load_features("float32")
    if not np.isfinite(features).all():
        bad = int(np.sum(~np.isfinite(features).all(axis=1)))
        raise CacheError(f"cache {cache.path} has {bad} rows with NaN or infinite features; re-embed it")
    return features


def default_report_path(cache: Cache, suffix: str, reports_dir: str | os.PathLike = "reports") -> Path:
    """``reports/<cache name>-<suffix>``: beside runs/ and cache/, one file per cache and report."""
    stem = Path(str(cache.path)).stem or "cache"
    return Path(reports_dir) / f"{stem}-{suffix}"
