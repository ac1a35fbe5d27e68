"""Rows that hold NaN or inf: found in bounded memory, reported, embedded again, refused.

A row of NaN is not a feature: a head trained on it, or a prediction made from it, is
silently wrong. Such rows can reach a cache (a backbone that overflowed in float16 on some
image, a damaged file from outside), so every stage agrees on what to do with them:

* :func:`find_nonfinite` locates them, and the views that hold them, a block of rows at a
  time (memory: one block, never the whole array). ``embed info`` reports them.
* The writer treats them as not embedded: a rerun of ``embed run`` with the same options
  embeds their images again and consolidation replaces the rows in place.
* :func:`require_finite_rows` is for readers about to use rows: a one-line CacheError that
  says how many and how to re-embed them.
* The writer records where they are (``nonfinite_rows``) whenever it writes features, and
  :func:`locate_nonfinite` trusts that record for big caches (no 2.5 GB scan on every
  ``embed run`` or ``embed info`` at a million rows) unless asked to rescan; small caches,
  caches with views and caches made before the record are scanned, as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from ..errors import CacheError
from .reader import Cache, open_h5
from .schema import COPY_ROWS

REEMBED_ADVICE = "rerun `headstart embed run` with the same options to embed them again"
SCAN_ALWAYS_BYTES = 256 << 20  # features up to this size are scanned every time (well under a second)
RECORD_ATTR = "nonfinite_rows"  # JSON list of the rows holding NaN/inf when the features were written


@dataclass
class NonFinite:
    """Where a cache holds NaN or inf."""

    rows: np.ndarray  # int64, ascending: feature rows with at least one NaN/inf value
    views: np.ndarray | None = None  # bool [N, K]: existing views holding NaN/inf (None: no views)

    @property
    def view_rows(self) -> np.ndarray:
        """Rows with at least one such view."""
        return np.zeros(0, np.int64) if self.views is None else np.flatnonzero(self.views.any(axis=1))

    @property
    def num_views(self) -> int:
        return 0 if self.views is None else int(self.views.sum())

    def __bool__(self) -> bool:
        return bool(len(self.rows) or self.num_views)


def nonfinite_mask(block: np.ndarray) -> np.ndarray:
    """Which entries along the first axis hold a NaN or inf anywhere in the others.

    float16 is tested on its bits (exponent all ones), ~20x faster than ``np.isfinite``,
    which has no vectorised float16 loop."""
    flat = block.reshape(len(block), -1)
    if not flat.size:
        return np.zeros(len(block), dtype=bool)
    if flat.dtype == np.float16:
        return np.bitwise_and(flat.view(np.uint16), 0x7FFF).max(axis=1) >= 0x7C00
    return ~np.isfinite(flat).all(axis=1)


def find_nonfinite(cache: Cache, block_rows: int = COPY_ROWS) -> NonFinite:
    """Scan the features (and the existing views) of ``cache`` in blocks of ``block_rows``."""
    n = cache.num_rows
    bad: list[np.ndarray] = []
    views = None
    with open_h5(cache._file) as h5:
        features = h5["embeddings/features"]
        for start in range(0, n, block_rows):
            bad.append(start + np.flatnonzero(nonfinite_mask(features[start:start + block_rows])))
        if cache.num_views:
            data, done = h5["embeddings/views"], h5["embeddings/views_done"][...].astype(bool)
            k = data.shape[1]
            views = np.zeros(done.shape, dtype=bool)
            step = max(1, block_rows // max(1, k))
            for start in range(0, n, step):
                block = data[start:start + step]
                views[start:start + len(block)] = nonfinite_mask(block.reshape(-1, block.shape[-1])).reshape(
                    len(block), k) & done[start:start + len(block)]
    rows = np.concatenate(bad) if bad else np.zeros(0, np.int64)
    return NonFinite(rows=rows.astype(np.int64), views=views)


def locate_nonfinite(cache: Cache, rescan: bool = False) -> tuple[NonFinite, bool]:
    """Where ``cache`` holds NaN/inf, and whether the features were scanned to say so (False:
    read from the record the writer kept; see the module notes)."""
    recorded = cache.attrs.get(RECORD_ATTR)
    size = cache.num_rows * cache.dim * np.dtype(cache.feature_dtype).itemsize
    if recorded is not None and not rescan and not cache.num_views and size > SCAN_ALWAYS_BYTES:
        try:
            rows = np.asarray(json.loads(recorded), dtype=np.int64).reshape(-1)
        except (TypeError, ValueError):
            rows = None
        if rows is not None and (not len(rows) or (rows.min() >= 0 and rows.max() < cache.num_rows)):
            return NonFinite(rows=np.unique(rows)), False
    return find_nonfinite(cache), True


def describe_nonfinite(found: NonFinite) -> str:
    """One line for a user: how many rows (and views) hold NaN/inf, and what to do."""
    parts = []
    if len(found.rows):
        parts.append(f"{len(found.rows):,} rows hold NaN/inf features")
    if found.num_views:
        parts.append(f"{found.num_views:,} augmented views of {len(found.view_rows):,} rows hold NaN/inf")
    return f"{' and '.join(parts)}: {REEMBED_ADVICE}" if parts else ""


def require_finite_rows(cache: Cache, features: np.ndarray | None = None, rows: np.ndarray | None = None) -> None:
    """Refuse NaN/inf in the rows a reader is about to use, with a one-line CacheError.

    ``features``: those rows, already in memory (checked as they are, no read). Else
    ``rows``: their indices (the file is scanned in blocks). Neither: the whole cache.
    """
    if features is not None:
        features = np.asarray(features)
        total, bad = len(features), int(nonfinite_mask(features).sum()) if len(features) else 0
    else:
        found = find_nonfinite(cache).rows
        if rows is None:
            total, bad = cache.num_rows, len(found)
        else:
            rows = np.asarray(rows, dtype=np.int64)
            total, bad = len(rows), int(np.isin(rows, found).sum())
    if bad:
        raise CacheError(f"cache {cache.path}: {bad:,} of the {total:,} feature rows to use hold NaN or inf; "
                         f"{REEMBED_ADVICE}")
