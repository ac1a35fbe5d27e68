"""A million-row cache within a laptop's memory: heads and reports keep the features as the
cache stores them (float16) and read or convert them a block at a time.

Each test compares the memory-saving path with the plain in-memory computation on a small
cache (the size switches are lowered where there is one).
"""

from __future__ import annotations

import hashlib

import numpy as np

from headstart.embedder.cache import FileRecord, open_cache, write_cache

FP = {"architecture": "TestNet", "weights": "none:seed=0", "input_size": 32, "pooling": "avg"}


def _cache(path, n=300, dim=32, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = (rng.normal(size=(n, dim)) + 2.0 * np.eye(classes, dim)[labels]).astype(np.float32)
    x[7] = 0.0  # a zero row stays zero
    keys = [hashlib.sha256(f"row-{i}".encode()).hexdigest() for i in range(n)]
    names = [f"c{c}" for c in range(classes)]
    files = [FileRecord(f"{names[labels[i]]}/{i}.jpg", keys[i], int(labels[i]), "") for i in range(n)]
    write_cache(path, FP, keys, x, files, names, path.parent)
    return open_cache(path)


def test_head_data_stays_float16_and_holds_the_cache_rows(tmp_path):
    from headstart.heads.data import load_labelled

    cache = _cache(tmp_path / "c.h5")
    data = load_labelled(cache)
    stored = cache.load_features("float16")
    for split in ("train", "val"):
        features, labels, _ = data.subset(split)
        assert features.dtype == np.float16  # not a float32 copy: half the memory at 1M rows
        np.testing.assert_array_equal(features, stored[data.rows(split)])
        np.testing.assert_array_equal(labels, data.labels[data.rows(split)])
    assert data._features is None  # every row was never read as one array


def test_unit_rows_are_the_float32_unit_vectors_bit_for_bit(tmp_path):
    from headstart.heads.quality.inventory import unit_features, unit_rows

    cache = _cache(tmp_path / "c.h5")
    rows = unit_rows(cache)
    assert rows.stored.dtype == np.float16 and rows.shape == (cache.num_rows, cache.dim)
    full = unit_features(cache)
    expected = cache.load_features("float32")
    norms = np.linalg.norm(expected, axis=1)
    expected /= np.where(norms > 0, norms, 1.0)[:, None]
    np.testing.assert_allclose(full, expected, rtol=1e-6, atol=1e-7)
    pick = np.array([5, 7, 299, 0])
    np.testing.assert_array_equal(rows[pick], full[pick])
    np.testing.assert_array_equal(rows[10:20], full[10:20])
    assert not rows[7].any() and not rows.nonzero[7] and rows.nonzero.sum() == cache.num_rows - 1


def test_streamed_projection_matches_the_in_memory_one(tmp_path, monkeypatch):
    from headstart.heads.quality import label_errors
    from headstart.heads.quality.inventory import raw_features

    cache = _cache(tmp_path / "c.h5")
    expected = label_errors._standardised_projection(raw_features(cache), 8, seed=3)
    monkeypatch.setattr(label_errors, "FULL_WIDTH_VALUES", 0)  # every cache counts as big
    monkeypatch.setattr(label_errors, "_BLOCK", 64)  # several blocks
    streamed = label_errors.standardised_projection(cache, 8, seed=3)
    assert streamed.shape == (cache.num_rows, 8) and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, expected, rtol=1e-4, atol=1e-4)
