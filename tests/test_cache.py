"""The cache contract: schema, parts and consolidation, locking, fingerprints."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from headstart.embedder.cache import (
    FORMAT_VERSION,
    CacheWriter,
    Failure,
    FileRecord,
    latest_cache,
    open_cache,
    parts_dir_for,
    write_cache,
)
from headstart.embedder.errors import CacheError, CacheLockedError

FP = {"architecture": "Test", "weights": "none:seed=0", "input_size": 32, "pooling": "avg"}


def _records(keys, labels=None, splits=None):
    labels = labels or [0] * len(keys)
    splits = splits or [""] * len(keys)
    return [FileRecord(f"img/{k}.jpg", k, lab, s) for k, lab, s in zip(keys, labels, splits)]


def test_schema_matches_design(tmp_path):
    keys = ["k0", "k1", "k2"]
    features = np.arange(12, dtype=np.float32).reshape(3, 4)
    files = _records(keys, labels=[0, 1, -1], splits=["train", "val", ""])
    files.append(FileRecord("copy_of_k0.jpg", "k0", 0, "train"))  # same bytes, second path
    path = tmp_path / "c.h5"
    write_cache(path, FP, keys, features, files, ["a", "b"], tmp_path, [Failure("bad.jpg", "not an image", "kx")])
    with h5py.File(path, "r") as h5:
        assert h5["embeddings/features"].dtype == np.float16
        assert h5["embeddings/features"].chunks is not None
        assert h5.attrs["format_version"] == FORMAT_VERSION
        for name in ("fingerprint", "images_root", "created", "versions"):
            assert name in h5.attrs
        assert list(h5["files/rows"][...]) == [0, 1, 2, 0]
        assert list(h5["files/labels"][...]) == [0, 1, -1, 0]
        assert list(h5["files/splits"].asstr()[...]) == ["train", "val", "", "train"]
        assert list(h5["classes"].asstr()[...]) == ["a", "b"]
        assert list(h5["failures/paths"].asstr()[...]) == ["bad.jpg"]
        assert list(h5["failures/reasons"].asstr()[...]) == ["not an image"]
    cache = open_cache(path)
    assert cache.fingerprint == FP
    np.testing.assert_array_equal(cache.load_features(), features)
    np.testing.assert_array_equal(cache.file_features()[3], features[0])
    assert not parts_dir_for(path).exists()


def test_parts_survive_without_finish_and_are_resumed(tmp_path):
    """A writer that dies after two batches leaves two durable parts; the next writer
    sees their keys as done, and consolidation keeps their features."""
    path = tmp_path / "c.h5"
    rng = np.random.default_rng(0)
    first = rng.normal(size=(2, 5)).astype(np.float32)
    second = rng.normal(size=(2, 5)).astype(np.float32)
    with CacheWriter(path, FP) as writer:
        writer.add_part(["a", "b"], first)
        writer.add_part(["c", "d"], second, failed={"bad": "not an image"})
        # no finish(): as if killed here
    assert not path.exists()
    with pytest.raises(CacheError, match="unfinished.*rerun the same command"):
        open_cache(path)

    with CacheWriter(path, FP) as writer:
        assert writer.resumed_parts == 2
        assert writer.known_keys == {"a", "b", "c", "d"}
        assert writer.known_failures == {"bad": "not an image"}
        writer.add_part(["e"], rng.normal(size=(1, 5)).astype(np.float32))
        writer.finish(_records(["a", "b", "c", "d", "e"]), ["x"], [], tmp_path)
    cache = open_cache(path)
    assert list(cache.keys) == ["a", "b", "c", "d", "e"]
    np.testing.assert_allclose(cache.load_features()[:4], np.vstack([first, second]), atol=2e-3)
    assert not parts_dir_for(path).exists()


def test_incremental_finish_keeps_old_rows_and_skips_unchanged_rewrite(tmp_path):
    path = tmp_path / "c.h5"
    feats = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    write_cache(path, FP, ["a", "b", "c"], feats, _records(["a", "b", "c"]), ["x"], tmp_path)
    before = path.stat().st_mtime_ns
    result = write_cache(path, FP, ["a", "b", "c"], feats, _records(["a", "b", "c"]), ["x"], tmp_path)
    assert not result.rewritten and path.stat().st_mtime_ns == before

    new = np.random.default_rng(1).normal(size=(1, 4)).astype(np.float32)
    result = write_cache(path, FP, ["d"], new, _records(["a", "b", "c", "d"]), ["x"], tmp_path)
    assert result.rewritten
    cache = open_cache(path)
    np.testing.assert_array_equal(cache.load_features()[:3], feats.astype(np.float16))
    np.testing.assert_array_equal(cache.load_features()[3], new[0].astype(np.float16))


def test_fingerprint_mismatch_names_both_and_leaves_cache_alone(tmp_path):
    path = tmp_path / "c.h5"
    write_cache(path, FP, ["a"], np.ones((1, 2)), _records(["a"]), ["x"], tmp_path)
    before = path.read_bytes()
    other = dict(FP, pooling="max")
    with pytest.raises(CacheError) as info:
        with CacheWriter(path, other):
            pass
    message = str(info.value)
    assert "fingerprint mismatch" in message and "avg" in message and "max" in message
    assert "pooling: avg vs max" in message
    assert path.read_bytes() == before


def test_second_writer_fails_clearly(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, FP):
        with pytest.raises(CacheLockedError, match="being written by another headstart process"):
            with CacheWriter(path, FP):
                pass
    with CacheWriter(path, FP):  # released after the first one ends
        pass


def test_dtype_mismatch_is_refused(tmp_path):
    path = tmp_path / "c.h5"
    write_cache(path, FP, ["a"], np.ones((1, 2)), _records(["a"]), ["x"], tmp_path)
    with pytest.raises(CacheError, match="stores float16.*float32"):
        with CacheWriter(path, FP, dtype="float32"):
            pass


def test_reader_refuses_non_caches(tmp_path):
    junk = tmp_path / "junk.h5"
    junk.write_text("hello")
    with pytest.raises(CacheError, match="not an HDF5 file"):
        open_cache(junk)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["x"] = 1
    with pytest.raises(CacheError, match="not a headstart cache"):
        open_cache(foreign)
    newer = tmp_path / "newer.h5"
    write_cache(newer, FP, ["a"], np.ones((1, 2)), _records(["a"]), ["x"], tmp_path)
    with h5py.File(newer, "a") as h5:
        h5.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(CacheError, match="newer than this headstart"):
        open_cache(newer)
    with pytest.raises(CacheError, match="cache not found"):
        open_cache(tmp_path / "absent.h5")


def test_damaged_part_is_dropped_and_stale_temps_cleaned(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, FP) as writer:
        writer.add_part(["a"], np.ones((1, 3)))
    parts = parts_dir_for(path)
    (parts / "part-000099.npz").write_bytes(b"garbage")
    (parts / "part-000100.npz.tmp-12345").write_bytes(b"half written")
    with CacheWriter(path, FP) as writer:
        assert writer.known_keys == {"a"}
        assert not (parts / "part-000099.npz").exists()
        assert not (parts / "part-000100.npz.tmp-12345").exists()


def test_latest_cache(tmp_path):
    with pytest.raises(CacheError, match="no cache found"):
        latest_cache(tmp_path)
    import os

    for i, name in enumerate(("old.h5", "new.h5")):
        write_cache(tmp_path / name, FP, ["a"], np.ones((1, 2)), _records(["a"]), ["x"], tmp_path)
        os.utime(tmp_path / name, ns=(10**18 + i, 10**18 + i))
    assert latest_cache(tmp_path).name == "new.h5"


def test_read_rows_returns_rows_in_the_order_asked(tmp_path):
    path = tmp_path / "c.h5"
    keys = [f"k{i}" for i in range(50)]
    feats = np.arange(100, dtype=np.float32).reshape(50, 2)
    write_cache(path, FP, keys, feats, _records(keys), ["x"], tmp_path, dtype="float32")
    cache = open_cache(path)
    for rows in ([7, 3, 3], list(range(49, -1, -1))):  # few rows (fancy read) and all rows
        np.testing.assert_array_equal(cache.read_rows(np.asarray(rows)), feats[rows])
