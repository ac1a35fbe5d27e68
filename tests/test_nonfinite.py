"""Rows holding NaN/inf (issue 12 A3): found in blocks, reported by `embed info`, embedded
again by a rerun, and refused by readers with a one-line error."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from conftest import make_class_folders
from headstart.embedder.cache import (
    CacheWriter, FileRecord, find_nonfinite, open_cache, require_finite_rows, write_cache,
)
from headstart.embedder.errors import CacheError

FP = {"architecture": "Test", "weights": "none:seed=0", "input_size": 32, "pooling": "avg"}
AUG = {"version": 1, "flip": True}


def _cache(path, n=10, dim=4, bad=(2, 7), dtype="float16"):
    x = np.arange(n * dim, dtype=np.float32).reshape(n, dim) / (n * dim) + 0.5
    values = iter((np.nan, np.inf, -np.inf))
    for row in bad:
        x[row, row % dim] = next(values)
    keys = [f"k{i:02d}" for i in range(n)]
    files = [FileRecord(f"a/{k}.jpg", k, 0, "") for k in keys] + [FileRecord("a/again.jpg", keys[(*bad, 0)[0]], 0, "")]
    write_cache(path, FP, keys, x, files, ["a"], path.parent, dtype=dtype)
    return keys, x


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_found_in_blocks_of_rows(tmp_path, dtype):
    _cache(tmp_path / "c.h5", n=10, bad=(2, 7, 9), dtype=dtype)
    cache = open_cache(tmp_path / "c.h5")
    for block in (3, 4, 100):
        found = find_nonfinite(cache, block_rows=block)
        assert found.rows.tolist() == [2, 7, 9] and found.views is None and bool(found)
    _cache(tmp_path / "ok.h5", bad=())
    assert not find_nonfinite(open_cache(tmp_path / "ok.h5"))


def test_embed_info_reports_them_and_exits_1(tmp_path, run_cli):
    _cache(tmp_path / "c.h5")
    code, out, err = run_cli("embed", "info", tmp_path / "c.h5")
    assert code == 1
    assert "warning: 2 rows hold NaN/inf features: rerun `headstart embed run` with the same options" in err
    code, out, _ = run_cli("embed", "info", tmp_path / "c.h5", "--json")
    info = json.loads(out)
    assert code == 1 and info["nonfinite_rows"] == 2 and info["nonfinite_files"] == 3
    assert info["nonfinite_examples"] == ["a/k02.jpg", "a/k07.jpg", "a/again.jpg"]
    _cache(tmp_path / "ok.h5", bad=())
    code, out, err = run_cli("embed", "info", tmp_path / "ok.h5", "--json")
    assert code == 0 and json.loads(out)["warnings"] == [] and json.loads(out)["nonfinite_rows"] == 0


def test_the_writer_embeds_them_again_and_replaces_them_in_place(tmp_path):
    path = tmp_path / "c.h5"
    keys, x = _cache(path, bad=(2, 7))
    files = [FileRecord(f"a/{k}.jpg", k, 0, "") for k in keys]
    with CacheWriter(path, FP) as writer:
        assert writer.known_keys == set(keys) - {"k02", "k07"}  # what the job will embed again
        writer.add_part(["k02"], np.full((1, 4), 3.0))  # k07's file is gone: it keeps its row
        result = writer.finish(files, ["a"], [], tmp_path)
    assert result.rewritten
    cache = open_cache(path)
    assert cache.keys.tolist() == keys  # rows stay where they were
    features = cache.load_features()
    assert features[2].tolist() == [3.0] * 4
    good = [r for r in range(10) if r not in (2, 7)]
    np.testing.assert_array_equal(features[good], x[good].astype(np.float16).astype(np.float32))
    assert find_nonfinite(cache).rows.tolist() == [7]


def test_views_holding_nan_are_made_again(tmp_path):
    path = tmp_path / "v.h5"
    keys = ["k0", "k1", "k2"]
    files = [FileRecord(f"a/{k}.jpg", k, 0, "") for k in keys]
    with CacheWriter(path, FP) as writer:
        writer.add_part(keys, np.ones((3, 4)))
        writer.set_views(2, 0, AUG)
        views = np.ones((6, 4))
        views[3, 1] = np.nan  # k1, view 1
        writer.add_view_part([k for k in keys for _ in range(2)], [0, 1] * 3, views)
        writer.finish(files, ["a"], [], tmp_path)
    found = find_nonfinite(open_cache(path), block_rows=2)
    assert found.rows.tolist() == [] and found.num_views == 1 and found.view_rows.tolist() == [1]
    with CacheWriter(path, FP) as writer:
        assert not writer.has_view("k1", 1) and writer.has_view("k1", 0) and writer.has_view("k0", 1)
        writer.set_views(2, 0, AUG)
        writer.add_view_part(["k1"], [1], np.full((1, 4), 2.0))
        result = writer.finish(files, ["a"], [], tmp_path)
    assert result.views_missing == 0
    cache = open_cache(path)
    got, done = cache.load_views(np.arange(3))
    assert done.all() and got[1, 1].tolist() == [2.0] * 4 and not find_nonfinite(cache)


def test_readers_refuse_them_with_one_line(tmp_path):
    _cache(tmp_path / "c.h5", bad=(2, 7))
    cache = open_cache(tmp_path / "c.h5")
    with pytest.raises(CacheError) as info:
        require_finite_rows(cache)
    message = str(info.value)
    assert "2 of the 10 feature rows to use hold NaN or inf" in message and "rerun `headstart embed run`" in message
    assert "\n" not in message
    with pytest.raises(CacheError, match="1 of the 3 feature rows"):
        require_finite_rows(cache, rows=np.array([0, 2, 3]))
    require_finite_rows(cache, rows=np.array([0, 1, 3]))  # the rows in use are fine
    features = cache.load_features()
    with pytest.raises(CacheError, match="2 of the 10"):
        require_finite_rows(cache, features=features)
    require_finite_rows(cache, features=features[[0, 1]])


def test_a_rerun_of_embed_run_repairs_the_cache(tmp_path, tiny_model_file, run_cli):
    """The advice `embed info` gives is true: the same command embeds those rows again."""
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=3)
    cache_path = tmp_path / "c.h5"
    args = ("embed", "run", root, "--backbone", tiny_model_file, "--cache", cache_path, "--quiet", "--json",
            "--batch-size", "4")
    code, out, err = run_cli(*args)
    assert code == 0, err
    before = open_cache(cache_path).load_features()
    with h5py.File(cache_path, "r+") as h5:
        h5["embeddings/features"][4] = np.nan
    assert run_cli("embed", "info", cache_path)[0] == 1
    code, out, err = run_cli(*args)
    report = json.loads(out)
    assert code == 0 and report["embedded"] == 1 and report["reused"] == 5
    after = open_cache(cache_path).load_features()
    np.testing.assert_allclose(after, before, rtol=1e-3, atol=1e-3)
    assert run_cli("embed", "info", cache_path)[0] == 0
