"""A cache as training data: features once in memory, one labelled row per distinct image.

Heads work on *rows* (distinct content), not files: the same bytes under two paths are one
example, so they can neither be counted twice nor sit on both sides of the split. A row's
label is its files' label; when its files disagree (a labelling conflict) the row is
excluded and reported. Unlabelled rows are kept out of training and evaluation.

Memory: features stay in the cache's storage dtype (float16 unless made with ``--dtype
float32``; heads cast a batch at a time) and each split's rows are read straight into their
own array, in one pass over the file: a million rows of 1,280 take 2.6 GB, not the 5.1 GB of
float32 plus copies. ``features`` (every row) is read only when asked for.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from headstart.embedder.cache import Cache, CacheLocation, open_cache, open_h5
from headstart.embedder.cache.finite import REEMBED_ADVICE, locate_nonfinite, nonfinite_mask
from headstart.embedder.cache.schema import COPY_ROWS
from headstart.embedder.errors import CacheError, UsageError

from .splits import DEFAULT_SEED, DEFAULT_VAL_FRACTION, SPLIT_PRIORITY, SplitSpec, assign_splits, split_source

_SPLIT_BY_PRIORITY = np.asarray(["", "train", "val", "test"], dtype=object)
SPLITS = ("train", "val", "test")


@dataclass
class LabelledFeatures:
    """Everything a head needs from a cache, in memory. Arrays are per row ([N])."""

    fingerprint: dict
    classes: list[str]
    images_root: str
    cache: Cache  # features are read from it on demand
    keys: np.ndarray  # [N] content keys
    labels: np.ndarray  # [N] class index; -1 unlabelled or excluded
    splits: np.ndarray  # [N] 'train' | 'val' | 'test'
    paths: np.ndarray  # [N] one file path per row (relative to images_root), '' if none
    split_source: str
    val_fraction: float
    seed: int
    conflicts: list[dict] = field(default_factory=list)
    cache_attrs: dict = field(default_factory=dict)
    num_files: int = 0
    _features: np.ndarray | None = field(default=None, repr=False)
    _subsets: dict = field(default_factory=dict, repr=False)

    @property
    def cache_location(self) -> CacheLocation:
        """Where the cache is, as resolved when it was named; reopen it through this."""
        return self.cache.location

    @property
    def cache_path(self):
        """The cache, as named (a local Path, or a URL)."""
        return self.cache_location.where

    @property
    def dim(self) -> int:
        return int(self.cache.dim)

    @property
    def features(self) -> np.ndarray:
        """Every row, ``[N, D]`` in the storage dtype (read on first use; checked finite)."""
        if self._features is None:
            self._features = _read_rows(self.cache, [np.arange(self.cache.num_rows)])[0]
        return self._features

    def rows(self, split: str | None = None) -> np.ndarray:
        """Indices of labelled rows, optionally of one split only."""
        mask = self.labels >= 0
        if split is not None:
            mask &= self.splits == split
        return np.flatnonzero(mask)

    def subset(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(features, labels, paths) of the labelled rows of one split, gathered once and
        shared by every head trained on this data (a sweep keeps one copy). Features are in the
        storage dtype; the first call reads every split's rows in one pass over the file."""
        if split not in self._subsets:
            names = [s for s in ("train", "val", "test") if s not in self._subsets] if split in SPLITS else [split]
            rows = [self.rows(s) for s in names]
            if self._features is not None:
                blocks = [self._features[r] for r in rows]
            else:
                blocks = _read_rows(self.cache, rows)
            for name, r, block in zip(names, rows, blocks):
                self._subsets[name] = (block, self.labels[r], self.paths[r])
        return self._subsets[split]

    def counts(self) -> dict[str, int]:
        return {s: int(len(self.rows(s))) for s in ("train", "val", "test")}

    def per_class(self) -> dict[str, dict[str, int]]:
        table = {}
        for c, name in enumerate(self.classes):
            mine = self.labels == c
            table[name] = {s: int(np.sum(mine & (self.splits == s))) for s in ("train", "val", "test")}
        return table

    def split_record(self) -> dict:
        """The split as head.json records it: enough for any stage to reproduce it."""
        return {
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "source": self.split_source,
            "unit": "content key",
            "counts": self.counts(),
            "per_class": self.per_class(),
            "excluded": {
                "unlabelled": int(np.sum(self.labels < 0)) - len(self.conflicts),
                "label_conflicts": len(self.conflicts),
            },
        }


def load_labelled(cache: str | os.PathLike | CacheLocation | Cache, val_fraction: float = DEFAULT_VAL_FRACTION,
                  seed: int = DEFAULT_SEED) -> LabelledFeatures:
    """Open a cache and resolve rows, labels and splits; refuse rows holding NaN/inf.

    The features are read later, by :meth:`LabelledFeatures.subset`, each split straight
    into its own array."""
    cache = cache if isinstance(cache, Cache) else open_cache(cache)
    require_rows(cache)
    nonfinite, _ = locate_nonfinite(cache)  # a big cache's record; reading the rows checks them again
    if len(nonfinite.rows):
        raise _nonfinite_error(cache.path, len(nonfinite.rows))
    split = split_for(cache, SplitSpec(val_fraction, seed))
    table = split.table
    labels, paths = table.label, table.path
    conflicts = conflict_records(cache, table)
    splits = split.split
    return LabelledFeatures(
        fingerprint=dict(cache.fingerprint),
        classes=list(cache.classes),
        images_root=str(cache.images_root),
        cache=cache,
        keys=np.asarray(cache.keys, dtype=object),
        labels=labels,
        splits=np.asarray(splits, dtype=object),
        paths=paths,
        split_source=split.source,
        val_fraction=split.spec.val_fraction,
        seed=split.spec.seed,
        conflicts=conflicts,
        cache_attrs={k: v for k, v in cache.attrs.items() if not k.startswith("_")},
        num_files=len(cache.paths),
    )


def require_rows(cache: Cache) -> None:
    """Refuse a cache with nothing embedded in it (exit 2)."""
    if cache.num_rows == 0 or len(cache.paths) == 0:
        raise CacheError(f"cache {cache.path} is empty (no embedded images); run `headstart embed run` on a "
                         f"folder with images")


@dataclass
class RowSplit:
    """Every row's side of the line, and what it was derived from."""

    table: RowTable  # each row's label, conflict flag, representative path and given split
    split: np.ndarray  # [N] object: 'train' | 'val' | 'test'
    source: str  # 'layout' | 'layout+hash' | 'hash'
    spec: SplitSpec


def split_for(cache: Cache, spec: SplitSpec = SplitSpec()) -> RowSplit:
    """THE split of a cache: ``head train``/``eval``/``sweep``, ``finetune`` and ``inspect`` all call this.

    It works per row (distinct content): a row's given split is the most held-out one any of
    its files was filed under (:func:`row_table`), and :func:`heads.splits.assign_splits`
    turns keys, given splits and ``spec`` into 'train'/'val'/'test'. A stage that works on
    files maps them to rows with ``cache.rows``, so it cannot see another split.
    """
    table = row_table(cache)
    split = assign_splits(cache.keys, table.label, table.given, val_fraction=spec.val_fraction, seed=spec.seed)
    spec = SplitSpec(float(spec.val_fraction), int(spec.seed))
    return RowSplit(table=table, split=np.asarray(split, dtype=object), source=split_source(table.given), spec=spec)


def require_finite(features: np.ndarray, cache_path) -> np.ndarray:
    """``features`` unchanged, or a CacheError naming how many rows hold NaN or inf."""
    bad = int(nonfinite_mask(features).sum()) if len(features) else 0
    if bad:
        raise _nonfinite_error(cache_path, bad)
    return features


def _nonfinite_error(cache_path, bad: int) -> CacheError:
    return CacheError(f"cache {cache_path} has {bad} rows with NaN or infinite features; {REEMBED_ADVICE}")


def _read_rows(cache: Cache, groups: list[np.ndarray]) -> list[np.ndarray]:
    """The features of each group of (ascending) rows, in the storage dtype, read in one pass
    over the file a block of rows at a time (memory: the groups plus one block); rows holding
    NaN/inf are refused, counted over the whole pass."""
    out = [np.empty((len(rows), cache.dim), dtype=cache.feature_dtype) for rows in groups]
    wanted = np.zeros(cache.num_rows, dtype=bool)
    for rows in groups:
        wanted[rows] = True
    bad = 0
    with open_h5(cache._file) as h5:
        data = h5["embeddings/features"]
        for start in range(0, cache.num_rows, COPY_ROWS):
            stop = min(start + COPY_ROWS, cache.num_rows)
            if not wanted[start:stop].any():
                continue
            block = data[start:stop]
            bad += int(nonfinite_mask(block[wanted[start:stop]]).sum())
            for rows, target in zip(groups, out):
                a, b = np.searchsorted(rows, [start, stop])
                if a < b:
                    target[a:b] = block[rows[a:b] - start]
    if bad:
        raise _nonfinite_error(cache.path, bad)
    return out


@dataclass
class RowTable:
    """What a cache's file table says about each feature row (arrays are ``[N]``): the one
    place that decides a row's label and given split, for head train and inspect alike."""

    label: np.ndarray  # int64: the label its labelled files agree on; -1 if none or they disagree
    conflict: np.ndarray  # bool: its labelled files disagree (head train leaves it out)
    path: np.ndarray  # object: its first file, '' if it has none
    given: np.ndarray  # object: the most held-out split any of its files was filed under, '' if none


def row_table(cache: Cache) -> RowTable:
    """Resolve every row at once (vectorised: caches hold 100k+ files)."""
    n = cache.num_rows
    rows, labels = cache.rows, cache.labels
    path = np.full(n, "", dtype=object)
    present, first = np.unique(rows, return_index=True)
    path[present] = np.asarray(cache.paths, dtype=object)[first]
    labelled = labels >= 0
    lowest = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    highest = np.full(n, -1, dtype=np.int64)
    np.minimum.at(lowest, rows[labelled], labels[labelled])
    np.maximum.at(highest, rows[labelled], labels[labelled])
    conflict = (highest >= 0) & (lowest != highest)
    label = np.where((highest >= 0) & ~conflict, highest, -1)
    # Unknown split names count as unmarked, as they always have here.
    names, index = np.unique(np.asarray(cache.splits, dtype=str), return_inverse=True)
    priority = np.asarray([SPLIT_PRIORITY.get(str(s), 0) for s in names], dtype=np.int64)
    best = np.zeros(n, dtype=np.int64)
    np.maximum.at(best, rows, priority[np.asarray(index).reshape(-1)])
    return RowTable(label=label, conflict=conflict, path=path, given=_SPLIT_BY_PRIORITY[best])


def conflict_records(cache: Cache, table: RowTable) -> list[dict]:
    """``{key, paths, labels}`` of each conflicting row, in the order of its first labelled file."""
    in_conflict = table.conflict[cache.rows]
    order: dict[int, None] = {}
    for i in np.flatnonzero(in_conflict & (cache.labels >= 0)):
        order.setdefault(int(cache.rows[i]), None)
    files: dict[int, list[int]] = {}
    for i in np.flatnonzero(in_conflict):
        files.setdefault(int(cache.rows[i]), []).append(int(i))
    return [{"key": str(cache.keys[row]),
             "paths": [str(cache.paths[i]) for i in files[row]],
             "labels": sorted({cache.classes[int(cache.labels[i])] for i in files[row] if cache.labels[i] >= 0})}
            for row in order]


def training_views(data: LabelledFeatures, limit: int = -1) -> tuple[np.ndarray, np.ndarray, int]:
    """The cached augmented views of the *training* rows only, as extra ``(features, labels)``
    examples, and how many views per image were available.

    Validation and test rows never contribute views: they are measured on clean images,
    as a user's new images will be.
    """
    cache = open_cache(data.cache_location)
    if not cache.num_views:
        raise UsageError(f"cache {data.cache_path} holds no augmented views; run `headstart embed run IMAGES "
                         f"--views 4` (same backbone options) first, or drop --views")
    rows = data.rows("train")
    views, done = cache.load_views(rows, limit=None if limit < 0 else limit)
    x = views[done]
    if not np.isfinite(x).all():
        raise CacheError(f"cache {data.cache_path} has augmented views with NaN or infinite features; re-embed them")
    y = np.repeat(data.labels[rows], done.sum(axis=1))
    return x, y, int(views.shape[1])


def conflict_warning(conflicts: list[dict]) -> str:
    first = conflicts[0]
    return (f"{len(conflicts)} images have the same bytes under different classes and were left out "
            f"(e.g. {', '.join(first['paths'][:2])}: {' vs '.join(first['labels'])}); fix their labels")


def check_trainable(data: LabelledFeatures) -> list[str]:
    """Refuse data no head can learn from (exit 2); return warnings for what is merely weak."""
    where = f"cache {data.cache_path}"
    if len(data.classes) < 2:
        raise UsageError(f"{where} has {len(data.classes)} class; a classifier needs at least 2 "
                         f"(one folder per class under the images root)")
    if not len(data.rows()):
        raise UsageError(f"{where} has no labelled images; embed a folder with one sub-folder per class, "
                         f"or a manifest with labels")
    warnings = []
    if data.conflicts:
        warnings.append(conflict_warning(data.conflicts))
    table = data.per_class()
    for name, counts in table.items():
        total = counts["train"] + counts["val"] + counts["test"]
        if total == 0:
            raise UsageError(f"class {name!r} has no labelled images in {where}; add images or remove the class")
        if counts["train"] == 0:
            raise UsageError(
                f"class {name!r} has too few images for the split: none of its {total} landed in the training "
                f"split ({counts['val']} val, {counts['test']} test); add images"
                + (" or lower --val-fraction" if data.split_source != "layout" else " to its train folder")
            )
    if not len(data.rows("val")):
        raise UsageError(
            f"no labelled image is in the validation split of {where}; "
            + ("raise --val-fraction or add images" if data.split_source != "layout"
               else "add images to the val/ folders")
        )
    missing = [name for name, counts in table.items() if counts["val"] == 0]
    if missing:
        warnings.append(f"no validation images for class{'es' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(m) for m in missing)}: its accuracy is not measured")
    return warnings
