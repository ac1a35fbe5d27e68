"""What a cache holds, for ``headstart embed info``: counts, failures, fingerprint, size, and
rows holding NaN/inf (``warnings``: what needs a look, one line each).

It never reads all the features of a big cache: NaN/inf rows come from the record the writer
keeps (``nonfinite_checked`` says 'record' or 'scan'), and segment files are only stat'ed."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from .cache import describe_nonfinite, open_cache, open_h5, parts_dir_for
from .cache.finite import locate_nonfinite
from .cache.segments import feature_segments, segments_bytes
from .fingerprint import describe
from .staging import pending_parts
from .storage import is_url


def cache_info(path: str | Path) -> dict:
    cache = open_cache(path)
    path = cache.path
    per_class: dict[str, Counter] = defaultdict(Counter)
    for label, split in zip(cache.labels, cache.splits):
        name = cache.classes[label] if label >= 0 else "(unlabeled)"
        per_class[name][split or "-"] += 1
    failures = Counter(cache.failure_reasons)
    referenced = len(set(cache.rows.tolist()))
    parts = pending_parts(path) if is_url(path) else parts_dir_for(path)  # a URL's are on this machine
    pending = len(list(parts.glob("part-*.npz"))) + len(list(parts.glob("views-*.npz"))) if parts.is_dir() else 0
    versions = cache.attrs.get("versions")
    nonfinite, scanned = locate_nonfinite(cache)
    with open_h5(cache.location) as h5:
        segments = feature_segments(h5)
    bad_files = [str(p) for p in cache.paths[np.isin(cache.rows, nonfinite.rows)]] if len(nonfinite.rows) else []
    return {
        "path": str(path),
        "size_bytes": (local := cache.location.local_file()).stat().st_size + segments_bytes(local, segments),
        "segments": len(segments or []),  # 0: the features are in the cache file itself
        "format_version": cache.attrs.get("format_version"),
        "fingerprint": cache.fingerprint,
        "fingerprint_text": describe(cache.fingerprint),
        "images_root": str(cache.images_root),
        "layout": cache.attrs.get("layout", ""),
        "created": cache.attrs.get("created"),
        "updated": cache.attrs.get("updated"),
        "storage_dtype": cache.feature_dtype,
        "rows": cache.num_rows,
        "dim": cache.dim,
        "files": len(cache.paths),
        "duplicate_files": len(cache.paths) - referenced,
        "orphan_rows": cache.num_rows - referenced,
        "classes": cache.classes,
        "counts": {name: dict(counts) for name, counts in sorted(per_class.items())},
        "failures": len(cache.failure_paths),
        "failures_by_reason": dict(failures.most_common()),
        "failure_examples": [
            {"path": p, "reason": r} for p, r in list(zip(cache.failure_paths, cache.failure_reasons))[:10]
        ],
        "views": cache.views,
        "pending_parts": pending,
        "nonfinite_rows": int(len(nonfinite.rows)),  # feature rows holding NaN/inf
        "nonfinite_files": len(bad_files),
        "nonfinite_examples": bad_files[:10],
        "nonfinite_views": nonfinite.num_views,  # augmented views holding NaN/inf
        "nonfinite_checked": "scan" if scanned else "record",  # record: as the writer found them
        "warnings": [describe_nonfinite(nonfinite)] if nonfinite else [],
        "versions": json.loads(versions) if isinstance(versions, str) else versions,
    }
