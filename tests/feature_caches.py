"""Helpers for the heads tests: caches of generated features, written by the project's own
cache writer (``embedder.cache.write_cache``), never by hand. (No tests in this module.)"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Sequence

import numpy as np

from headstart.embedder.cache import FileRecord, write_cache

FINGERPRINT = {"architecture": "TestNet", "weights": "none:seed=0", "input_size": 32, "pooling": "avg",
               "preprocessing": "none", "compute_dtype": "float32"}


def key_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def make_cache(
    path: Path,
    classes: Sequence[str] = ("ants", "bees", "wasps"),
    per_class: int | Sequence[int] = 40,
    dim: int = 16,
    seed: int = 0,
    separation: float = 3.0,
    splits: dict[str, Sequence[str]] | None = None,
    fingerprint: dict | None = None,
    extra: Sequence[tuple[str, str, int, str, np.ndarray]] = (),
    prefix: str = "",
    offset: dict[str, float] | None = None,
) -> Path:
    """A cache of Gaussian class clusters: ``per_class`` images per class, ``dim`` features.

    ``splits``: class -> list of split names, one per image (a layout); default: none given.
    ``extra``: additional files as (path, key, label, split, feature vector); a key already
    used reuses that row (the same bytes under another path).
    ``offset``: add a constant to every feature of the images in a given split.
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (len(classes), dim)) * separation / np.sqrt(dim) * 2
    counts = [per_class] * len(classes) if isinstance(per_class, int) else list(per_class)
    keys, features, files = [], [], []
    for c, name in enumerate(classes):
        for i in range(counts[c]):
            key = key_of(f"{prefix}{seed}-{name}-{i}")
            split = splits[name][i] if splits else ""
            vector = centers[c] + rng.normal(0, 1, dim)
            if offset and split in offset:
                vector = vector + offset[split]
            keys.append(key)
            features.append(vector)
            files.append(FileRecord(f"{split + '/' if split else ''}{name}/{prefix}{i}.jpg", key, c, split))
    for file_path, key, label, split, vector in extra:
        if key not in keys:
            keys.append(key)
            features.append(vector)
        files.append(FileRecord(file_path, key, label, split))
    write_cache(path, fingerprint or FINGERPRINT, keys, np.asarray(features, np.float32).reshape(len(keys), dim),
                files, list(classes), path.parent / "images", dtype="float32")
    return path
