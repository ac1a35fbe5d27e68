"""The cache's file table seen per row, as ``head train`` sees it, plus the features as unit vectors.

A cache has one feature row per distinct content (key) and one file entry per path. The
reports reason about rows (two paths of the same bytes are one image to a head) but print
files, so this module works out, once and vectorised, each row's label (the one label its
labelled files agree on; -1 when none or when they disagree: a *conflict*, which
``head train`` leaves out), a representative path, and the split ``head train`` will put it
in: :func:`heads.data.split_for`, the one split function every stage calls, with the same
seed and fraction, so a leakage report describes exactly the split a head will train on.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from headstart.embedder.cache import Cache, open_cache, open_h5
from headstart.embedder.cache.finite import nonfinite_mask
from headstart.embedder.defaults import CACHE_DIR, REPORTS_DIR
from headstart.embedder.errors import UsageError

from ..choose import resolve_cache
from ..data import require_finite, require_rows, split_for
from ..splits import DEFAULT_SEED, DEFAULT_VAL_FRACTION, SplitSpec, check_val_fraction
from .rows import UnitRows

Log = Callable[[str], None]

_NORMALISE_ROWS = 16384


def quiet(_: str) -> None:
    pass


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


def build_inventory(cache: Cache, val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED) -> Inventory:
    """Resolve labels, conflicts, representative paths and ``head train``'s split per row."""
    val_fraction = check_val_fraction(val_fraction)
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed must be a non-negative integer, got {seed}")
    require_rows(cache)
    split = split_for(cache, SplitSpec(val_fraction, seed))  # exactly head train's split
    table = split.table
    return Inventory(cache=cache, label=table.label, conflict=table.conflict, path=table.path,
                     files=np.bincount(cache.rows, minlength=cache.num_rows).astype(np.int64), split=split.split,
                     split_source=split.source, val_fraction=val_fraction, seed=int(seed))


def open_inventory(cache: str | os.PathLike | None, cache_dir: str | os.PathLike = CACHE_DIR,
                   val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED, log: Log = quiet) -> Inventory:
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

    Read a block of rows at a time straight into the float32 array: no copy of the stored
    features besides it."""
    rows = unit_rows(cache, stored=False)
    out = np.empty(rows.shape, dtype=np.float32)
    for start in range(0, len(rows), _NORMALISE_ROWS):
        out[start:start + _NORMALISE_ROWS] = rows[start:start + _NORMALISE_ROWS]
    return out


def unit_rows(cache: Cache, stored: bool = True) -> UnitRows:
    """All rows as :class:`~.rows.UnitRows`: the stored values (float16: half the memory of
    float32) normalised as they are read; checked finite. ``stored=False`` keeps the values as
    float32 instead (for :func:`unit_features`, which converts them all anyway)."""
    dtype = cache.feature_dtype if stored else "float32"
    values = np.empty((cache.num_rows, cache.dim), dtype=dtype)
    bad = 0
    with open_h5(cache._file) as h5:
        data = h5["embeddings/features"]
        for start in range(0, cache.num_rows, _NORMALISE_ROWS):
            block = data[start:start + _NORMALISE_ROWS]
            bad += int(nonfinite_mask(block).sum())
            values[start:start + len(block)] = block
    if bad:
        require_finite(np.full((bad, 1), np.nan, dtype=np.float32), cache.path)  # raises, with the count
    return UnitRows.of(values)


def raw_features(cache: Cache) -> np.ndarray:
    """All rows as float32, checked finite (what the label model standardises)."""
    return require_finite(cache.load_features("float32"), cache.path)


def default_report_path(cache: Cache, suffix: str, reports_dir: str | os.PathLike = REPORTS_DIR) -> Path:
    """``reports/<cache name>-<suffix>``: beside runs/ and cache/, one file per cache and report."""
    stem = Path(str(cache.path)).stem or "cache"
    return Path(reports_dir) / f"{stem}-{suffix}"
