"""One entry point per ``inspect`` command: resolve the cache, build its inventory, run the report.

The CLI calls exactly one of these and formats what it returns; tests call them directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from headstart.embedder.defaults import CACHE_DIR, SPLIT_SEED, VAL_FRACTION

from .inventory import Log, open_inventory, quiet


def inspect_duplicates(cache: str | os.PathLike | None = None, cache_dir: str | os.PathLike = CACHE_DIR,
                       threshold: float | None = None, val_fraction: float = VAL_FRACTION, seed: int = SPLIT_SEED,
                       out: str | Path | None = None, max_pairs: int | None = None, progress: bool = False,
                       log: Log = quiet):
    from .duplicates import DEFAULT_MAX_PAIRS, check_threshold, find_duplicates

    threshold = None if threshold is None else check_threshold(threshold)  # before any reading; None: calibrated
    inv = open_inventory(cache, cache_dir, val_fraction, seed, log)
    return find_duplicates(inv, threshold, out, DEFAULT_MAX_PAIRS if max_pairs is None else max_pairs, progress)


def inspect_labels(cache: str | os.PathLike | None = None, cache_dir: str | os.PathLike = CACHE_DIR,
                   folds: int | None = None, dims: int | None = None, C: float | None = None, seed: int = 0,
                   out: str | Path | None = None, progress: bool = False, log: Log = quiet):
    from .label_errors import DEFAULT_C, DEFAULT_FOLDS, rank_label_errors

    inv = open_inventory(cache, cache_dir, seed=seed, log=log)
    return rank_label_errors(inv, out, DEFAULT_FOLDS if folds is None else folds, dims,
                             DEFAULT_C if C is None else C, progress)


def inspect_outliers(cache: str | os.PathLike | None = None, cache_dir: str | os.PathLike = CACHE_DIR,
                     k: int | None = None, max_reference: int | None = None, seed: int = 0,
                     out: str | Path | None = None, progress: bool = False, log: Log = quiet):
    from .outliers import DEFAULT_K, DEFAULT_REFERENCE, rank_outliers

    inv = open_inventory(cache, cache_dir, seed=seed, log=log)
    return rank_outliers(inv, out, DEFAULT_K if k is None else k,
                         DEFAULT_REFERENCE if max_reference is None else max_reference, progress)


def inspect_map(cache: str | os.PathLike | None = None, cache_dir: str | os.PathLike = CACHE_DIR,
                method: str = "pca", flag: Sequence[str | Path] = (), top: int | None = None,
                max_points: int | None = None, seed: int = 0, out: str | Path | None = None,
                progress: bool = False, log: Log = quiet):
    from .projection import draw_map

    inv = open_inventory(cache, cache_dir, seed=seed, log=log)
    return draw_map(inv, out, method, flag, top, max_points, progress)


def inspect_samples(cache: str | os.PathLike | None = None, cache_dir: str | os.PathLike = CACHE_DIR,
                    per_class: int | None = None, max_classes: int | None = None, seed: int = 0,
                    images: str | os.PathLike | None = None, out: str | Path | None = None, log: Log = quiet):
    from .samples import DEFAULT_MAX_CLASSES, DEFAULT_PER_CLASS, class_samples

    inv = open_inventory(cache, cache_dir, seed=seed, log=log)
    return class_samples(inv, out, DEFAULT_PER_CLASS if per_class is None else per_class,
                         DEFAULT_MAX_CLASSES if max_classes is None else max_classes, images)
