"""Appending to a big cache writes only the new rows (embedder.cache.segments), crash-safely.

The size above which a cache keeps segments is lowered to 0 here, so tiny caches behave as a
million-row one does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from conftest import REPO_ROOT
from headstart.embedder.cache import CacheError, CacheWriter, FileRecord, open_cache, parts_dir_for
from headstart.embedder.cache import finite, segments, writer as writer_module
from headstart.embedder.cache.segments import segments_dir_for

FP = {"architecture": "synthetic", "weights": "none", "input_size": 8, "pooling": "avg"}
DIM = 16


@pytest.fixture
def big(monkeypatch):
    """Every cache counts as big; the last segment takes up to 64 rows."""
    monkeypatch.setattr(writer_module, "SEGMENT_MIN_BYTES", 0)
    monkeypatch.setattr(writer_module, "SEGMENT_BYTES", 64 * DIM * 2)


def _rows(start: int, count: int) -> tuple[list[str], np.ndarray]:
    keys = [f"{i:064x}" for i in range(start, start + count)]
    features = np.random.default_rng(start).normal(size=(count, DIM)).astype(np.float16)
    return keys, features


def _write(path, total: int, **options):
    """A cache of rows 0..total-1, the ones it lacks added as one part."""
    keys, features = _rows(0, total)
    with CacheWriter(path, FP, "float16", segments=True, **options) as w:
        new = [i for i, k in enumerate(keys) if k not in w.known_keys]
        for start in range(0, len(new), 50):
            chunk = new[start:start + 50]
            w.add_part([keys[i] for i in chunk], features[chunk])
        files = [FileRecord(f"x/{i}.jpg", k, 0, "") for i, k in enumerate(keys)]
        return w.finish(files, ["x"], [], path.parent), features


def test_an_append_writes_only_the_new_rows(tmp_path, big):
    path = tmp_path / "c.h5"
    first, _ = _write(path, 500)
    assert first.mode == "rewritten" and first.segments == 0  # a new cache is one file
    inode = path.stat().st_ino
    grown, expected = _write(path, 510)
    assert grown.mode == "appended" and grown.segments == 2
    base, added = sorted(segments_dir_for(path).iterdir())
    assert base.stat().st_ino == inode  # the old file became the first segment, uncopied
    with h5py.File(added, "r") as h5:  # the only features written: the new rows
        assert h5["embeddings/features"].shape == (10, DIM)
    assert grown.written_bytes == path.stat().st_size + added.stat().st_size
    cache = open_cache(path)
    np.testing.assert_array_equal(cache.load_features("float16"), expected)
    np.testing.assert_array_equal(cache.read_rows(np.array([509, 3, 505]), "float16"), expected[[509, 3, 505]])
    with h5py.File(path, "r") as h5:
        assert h5["embeddings/features"].is_virtual

    again, expected = _write(path, 530)  # the small last segment takes the new rows: still two
    assert again.mode == "appended" and again.segments == 2
    np.testing.assert_array_equal(open_cache(path).load_features("float16"), expected)
    third, expected = _write(path, 600)  # past 64 rows it is sealed and a new one starts
    assert third.segments == 3
    np.testing.assert_array_equal(open_cache(path).load_features("float16"), expected)
    assert _write(path, 600)[0].mode == "unchanged"


def test_a_missing_segment_is_named_and_never_read_as_zeros(tmp_path, big):
    path = tmp_path / "c.h5"
    _write(path, 300)
    _write(path, 310)
    newest = max(segments_dir_for(path).iterdir())
    newest.rename(tmp_path / "elsewhere.h5")
    with pytest.raises(CacheError, match=r"c\.h5\.segments/ folder"):
        open_cache(path)
    with h5py.File(path, "r") as h5:  # an outside tool sees NaN, which every reader refuses
        assert np.isnan(h5["embeddings/features"][305]).all()


def test_readers_without_headstart_see_one_dataset(tmp_path, big):
    path = tmp_path / "c.h5"
    _write(path, 200)
    _, expected = _write(path, 220)
    os.chdir(tmp_path.parent)  # relative to the cache's folder, not the working directory
    with h5py.File(path, "r") as h5:
        np.testing.assert_array_equal(h5["embeddings/features"][...], expected)


def test_replacing_a_row_or_a_small_cache_rewrites_one_file(tmp_path, big, monkeypatch):
    path = tmp_path / "c.h5"
    _write(path, 200)
    _write(path, 210)
    with h5py.File(max(segments_dir_for(path).iterdir()), "r+") as h5:  # a NaN row from elsewhere
        h5["embeddings/features"][5] = np.nan
    result, expected = _write(path, 210, rescan=True)  # found by the rescan, embedded again
    assert result.mode == "rewritten" and result.segments == 0
    np.testing.assert_array_equal(open_cache(path).load_features("float16"), expected)
    monkeypatch.setattr(writer_module, "SEGMENT_MIN_BYTES", 1 << 30)
    assert _write(path, 220)[0].mode == "rewritten"


def test_unmapped_segments_are_removed_after_the_grace_period(tmp_path, big, monkeypatch):
    path = tmp_path / "c.h5"
    _write(path, 200)
    _write(path, 210)
    _write(path, 215)  # folds the last segment: its predecessor is no longer mapped
    assert len(list(segments_dir_for(path).iterdir())) == 3
    _write(path, 215)  # within the grace period: kept (a reader may still be on the old version)
    assert len(list(segments_dir_for(path).iterdir())) == 3
    monkeypatch.setattr(segments, "GARBAGE_GRACE_S", 0)
    _write(path, 215)
    assert len(list(segments_dir_for(path).iterdir())) == 2
    path.unlink()
    _write(path, 10)  # a cache deleted by hand: its segments go with it
    assert not segments_dir_for(path).exists()


def test_the_nan_record_spares_big_caches_a_scan(tmp_path, big, monkeypatch):
    path = tmp_path / "c.h5"
    _write(path, 200)
    _write(path, 210)
    monkeypatch.setattr(finite, "SCAN_ALWAYS_BYTES", 0)
    scanned = []
    real = finite.find_nonfinite
    monkeypatch.setattr(finite, "find_nonfinite", lambda cache, *a: (scanned.append(1), real(cache, *a))[1])
    found, was_scanned = finite.locate_nonfinite(open_cache(path))
    assert not was_scanned and not len(found.rows) and scanned == []
    with h5py.File(max(segments_dir_for(path).iterdir()), "r+") as h5:
        h5["embeddings/features"][7] = np.inf
    assert not len(finite.locate_nonfinite(open_cache(path))[0].rows)  # the record is trusted...
    found, was_scanned = finite.locate_nonfinite(open_cache(path), rescan=True)  # ...unless asked
    assert was_scanned and found.rows.tolist() == [207]


_KILL_SCRIPT = """
import sys, time
import numpy as np
from pathlib import Path
from headstart.embedder.cache import CacheWriter, FileRecord, segments, writer
writer.SEGMENT_MIN_BYTES = 0
path, stage = Path(sys.argv[1]), sys.argv[2]
real_write, real_layout = segments.write_segment, writer.segment_layout
def pause(where):
    Path(str(path) + "." + where).write_text("x")
    time.sleep(60)
def slow_write(*args, **kwargs):
    out = real_write(*args, **kwargs)
    pause("segment-written")
    return out
def slow_layout(*args, **kwargs):
    pause("main-started")
    return real_layout(*args, **kwargs)
if stage == "segment-written":
    writer.write_segment = slow_write
else:
    writer.segment_layout = slow_layout
keys = [f"{i:064x}" for i in range(110)]
features = np.random.default_rng(0).normal(size=(110, 16)).astype(np.float16)
with CacheWriter(path, {"architecture": "synthetic", "weights": "none", "input_size": 8, "pooling": "avg"},
                 "float16", segments=True) as w:
    w.add_part(keys[100:], features[100:])
    w.finish([FileRecord(f"x/{i}.jpg", k, 0, "") for i, k in enumerate(keys)], ["x"], [], path.parent)
"""


@pytest.mark.parametrize("stage", ["segment-written", "main-started"])
def test_kill_9_during_an_append_leaves_the_previous_cache(tmp_path, big, stage):
    path = tmp_path / "c.h5"
    _, before_features = _write(path, 100)
    before = path.read_bytes()
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_KILL_SCRIPT), str(path), stage], cwd=REPO_ROOT,
                            stderr=subprocess.PIPE)
    marker = tmp_path / f"c.h5.{stage}"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert marker.exists(), proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "timed out"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == before  # the previous version, whole
    cache = open_cache(path)
    np.testing.assert_array_equal(cache.load_features("float16"), before_features)
    assert (parts_dir_for(path)).is_dir()  # the killed run's rows are kept for the rerun
    result, expected = _write(path, 110)
    assert result.mode == "appended"
    np.testing.assert_array_equal(open_cache(path).load_features("float16"), expected)


def test_embed_run_appends_and_info_counts_the_segments(tmp_path, big, run_cli, tiny_model_file):
    from conftest import make_class_folders

    images = tmp_path / "imgs"
    make_class_folders(images, per_class=3)
    cache = tmp_path / "c.h5"
    args = ("embed", "run", images, "-b", tiny_model_file, "--cache", cache, "--json", "-q")
    code, out, err = run_cli(*args)
    assert code == 0 and json.loads(out)["cache_write"] == "rewritten", err
    make_class_folders(images, per_class=2, seed=3)
    code, out, err = run_cli(*args)
    report = json.loads(out)
    assert code == 0 and report["cache_write"] == "appended" and report["embedded"] == 4, err
    code, out, err = run_cli("embed", "info", cache, "--json")
    info = json.loads(out)
    assert code == 0 and info["segments"] == 2 and info["rows"] == 10
    assert info["size_bytes"] > cache.stat().st_size and info["nonfinite_rows"] == 0


def test_an_append_takes_each_new_row_once(tmp_path, big):
    path = tmp_path / "c.h5"
    _write(path, 100)
    keys, features = _rows(0, 103)
    with CacheWriter(path, FP, "float16", segments=True) as w:  # the same bytes twice, apart, in one part
        w.add_part([keys[100], keys[101], keys[100], keys[102]], features[[100, 101, 100, 102]])
        result = w.finish([FileRecord(f"x/{i}.jpg", k, 0, "") for i, k in enumerate(keys)], ["x"], [], tmp_path)
    assert result.mode == "appended" and result.num_rows == 103
    np.testing.assert_array_equal(open_cache(path).load_features("float16"), features)


def test_a_change_of_the_tables_alone_writes_no_features(tmp_path, big):
    path = tmp_path / "c.h5"
    _, expected = _write(path, 300)  # one file: the first such change adopts it as the base segment
    keys = _rows(0, 300)[0]
    for attempt in range(2):
        with CacheWriter(path, FP, "float16", segments=True) as w:  # every file moved to another folder
            result = w.finish([FileRecord(f"y{attempt}/{i}.jpg", k, 0, "") for i, k in enumerate(keys)], ["x"], [],
                              tmp_path)
        assert result.mode == "tables" and result.segments == 1
        assert result.written_bytes == path.stat().st_size  # no segment written
        assert len(list(segments_dir_for(path).iterdir())) == 1
        cache = open_cache(path)
        np.testing.assert_array_equal(cache.load_features("float16"), expected)
        assert cache.paths[0] == f"y{attempt}/0.jpg"
