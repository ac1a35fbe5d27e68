"""Many machines without N x reads: `--shard I/N` picks its files by path before reading any,
so N shards read the images about once between them; the same bytes under two paths in two
shards are embedded at most twice and stored once by `embed merge`."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import make_class_folders
from headstart.embedder.cache import open_cache

SHARDS = 3
_READS = {"root": None, "bytes": 0, "opens": 0}
_READS_LOCK = threading.Lock()  # files are read from thread pools: += alone would lose counts


def _count_open(event: str, args) -> None:
    """Audit hook: every file opened under the watched root counts its whole size (the job
    reads image files whole), however it is opened (open, io.open, os.open, Path.read_bytes)."""
    if event != "open" or _READS["root"] is None:
        return
    path = args[0]
    if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(_READS["root"]):
        try:
            size = os.path.getsize(path)
        except OSError:
            return
        with _READS_LOCK:
            _READS["bytes"] += size
            _READS["opens"] += 1


def _reads_during(root: Path, action) -> tuple[int, int]:
    """(bytes, opens) of the files under ``root`` while ``action()`` runs."""
    if not getattr(sys, "_headstart_read_counter", False):
        sys.addaudithook(_count_open)  # hooks cannot be removed: one per process, idle unless watching
        sys._headstart_read_counter = True
    _READS.update(root=str(root), bytes=0, opens=0)
    try:
        action()
        return _READS["bytes"], _READS["opens"]
    finally:
        _READS["root"] = None


def _two_names_in_different_shards():
    from headstart.embedder.job import path_shard

    first = "a/dup_0.jpg"
    for i in range(1, 100):
        other = f"b/dup_{i}.jpg"
        if path_shard(other, SHARDS) != path_shard(first, SHARDS):
            return first, other
    raise AssertionError("no second name in another shard")


@pytest.fixture(scope="module")
def by_path(tmp_path_factory, tiny_model_file):
    from headstart import cli

    work = tmp_path_factory.mktemp("by-path")
    images = work / "imgs"
    make_class_folders(images, classes=("a", "b", "c"), per_class=9, size=(64, 64))
    first, second = _two_names_in_different_shards()
    shutil.copy(images / "a" / "a_0_0.jpg", images / first)  # one content under two more paths,
    shutil.copy(images / "a" / "a_0_0.jpg", images / second)  # in two different shards
    data = sum(p.stat().st_size for p in images.rglob("*.jpg"))
    common = ["-b", str(tiny_model_file), "--dtype", "float32", "--json", "-q"]

    def embed(*args):
        def action():
            code = cli.main(["embed", "run", str(images), *args, *common])
            assert code == 0
        return action

    single_bytes, _ = _reads_during(images, embed("--cache", str(work / "single.h5")))
    shard_bytes = []
    for i in range(SHARDS):
        read, _ = _reads_during(images, embed("--shard", f"{i}/{SHARDS}", "--cache", str(work / f"s{i}.h5")))
        shard_bytes.append(read)
    return {"work": work, "images": images, "data": data, "single_bytes": single_bytes, "shard_bytes": shard_bytes,
            "shards": [work / f"s{i}.h5" for i in range(SHARDS)], "dup": (first, second)}


def test_n_shards_read_the_images_about_once_between_them(by_path):
    total = sum(by_path["shard_bytes"])
    assert all(by_path["shard_bytes"])  # every shard read its own part
    # As much as one machine reads for the whole set (not N times: nothing is hashed twice)...
    assert total <= 1.1 * by_path["single_bytes"]  # (+ the one content that sits in two shards)
    # ...which is at most hashing and decoding each file once (a key partition read 1 + N times).
    assert by_path["single_bytes"] <= 2.02 * by_path["data"]


def test_shards_partition_the_files_and_duplicates_are_embedded_at_most_twice(by_path):
    caches = [open_cache(p) for p in by_path["shards"]]
    paths = [set(map(str, c.paths)) for c in caches]
    single = open_cache(by_path["work"] / "single.h5")
    assert sum(len(p) for p in paths) == len(single.paths) and set().union(*paths) == set(map(str, single.paths))
    first, second = by_path["dup"]
    holders = [i for i, p in enumerate(paths) if first in p or second in p]
    assert len(holders) == 2  # the two paths of one content sit in two shards...
    assert sum(c.num_rows for c in caches) == single.num_rows + 1  # ...which embed it once each
    assert {c.attrs["shard_by"] for c in caches} == {"path"}


@pytest.mark.parametrize("virtual", [False, True])
def test_merge_stores_one_row_per_content_and_equals_a_single_run(by_path, run_cli, virtual):
    out = by_path["work"] / f"merged-{virtual}.h5"
    flags = ["--json", "--virtual"] if virtual else ["--json"]
    code, stdout, err = run_cli("embed", "merge", out, *by_path["shards"], *flags)
    assert code == 0, err
    report = json.loads(stdout)
    single, merged = open_cache(by_path["work"] / "single.h5"), open_cache(out)
    assert report["duplicate_keys"] == 1 and report["warnings"] == []
    assert merged.num_rows == single.num_rows and sorted(map(str, merged.keys)) == sorted(map(str, single.keys))
    expected = dict(zip(map(str, single.keys), single.load_features()))
    for key, row in zip(map(str, merged.keys), merged.load_features()):
        np.testing.assert_allclose(row, expected[key], rtol=1e-6, atol=1e-6)
    as_key = lambda c: {str(p): (str(c.keys[r]), int(l)) for p, r, l in zip(c.paths, c.rows, c.labels)}  # noqa: E731
    assert as_key(merged) == as_key(single) and list(merged.classes) == list(single.classes)
    first, second = by_path["dup"]
    rows = dict(zip(map(str, merged.paths), merged.rows))
    assert rows[first] == rows[second]  # stored once
    if virtual:
        with h5py.File(out) as h5:
            assert h5["embeddings/features"].is_virtual


def test_merge_warns_about_missing_shards_and_mixed_rules(by_path, run_cli, tmp_path):
    code, _, err = run_cli("embed", "merge", tmp_path / "m.h5", by_path["shards"][0], by_path["shards"][2])
    assert code == 0 and f"1 of {SHARDS} shards are not among the inputs (1/{SHARDS})" in err
    old = tmp_path / "old-rule.h5"
    shutil.copy(by_path["shards"][1], old)
    with h5py.File(old, "a") as h5:
        del h5.attrs["shard_by"]  # as shards of earlier versions, partitioned by content key
    code, _, err = run_cli("embed", "merge", tmp_path / "m2.h5", by_path["shards"][0], old, by_path["shards"][2])
    assert code == 0 and "assigned files by different rules" in err and "by key: " + str(old) in err


def test_the_shard_of_a_path_ignores_unicode_normalisation():
    import unicodedata

    from headstart.embedder.job import path_shard

    name = "caf\u00e9/cr\u00e8me br\u00fbl\u00e9e.jpg"
    decomposed = unicodedata.normalize("NFD", name)
    assert decomposed != name
    assert all(path_shard(decomposed, n) == path_shard(name, n) for n in (2, 3, 7, 16))
