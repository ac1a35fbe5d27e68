"""A rerun reads only the files whose stat changed (git's index rule, embedder.filestat).

Each test counts the files the hashing step reads (``hashing.content_key`` instrumented) and
checks the cache's keys against the bytes on disk. The racy window is shortened to 50 ms so
that a test can wait it out; ``settle()`` waits until every file written so far is older
than that.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import h5py
import numpy as np
import pytest

from conftest import make_class_folders, photo_like, save_image
from headstart.embedder import filestat, hashing
from headstart.embedder.cache import open_cache, parts_dir_for
from headstart.embedder.filestat import STAT_DTYPE, StatRecord, no_stats

WINDOW_NS = 50_000_000


@pytest.fixture
def reads(monkeypatch):
    """Paths the hashing step read, in order; the racy window shortened for the test."""
    monkeypatch.setattr(filestat, "RACY_WINDOW_NS", WINDOW_NS)
    seen: list[str] = []
    real = hashing.content_key

    def counting(path):
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(hashing, "content_key", counting)
    return seen


def settle() -> None:
    time.sleep(2 * WINDOW_NS / 1e9)


def _embed(run_cli, images, cache, model, *extra) -> dict:
    code, out, err = run_cli("embed", "run", images, "-b", model, "--cache", cache, "--json", "-q", *extra)
    assert code == 0, err
    return json.loads(out)


def _images(tmp_path, per_class=3):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=per_class, ext=".bmp")  # BMPs of one size: rewrites keep the size
    return images, sorted(images.rglob("*.bmp"))


def _key_of(cache_path, relative: str) -> str:
    cache = open_cache(cache_path)
    index = list(map(str, cache.paths)).index(relative)
    return str(cache.keys[cache.rows[index]])


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _same_size_bytes(target, seed: int) -> bytes:
    """Other pixels, as a BMP of the same size as ``target``."""
    other = target.with_name("other.tmp.bmp")
    save_image(other, photo_like(np.random.default_rng(seed), (40, 48), (20, 220, 120)))
    data = other.read_bytes()
    other.unlink()
    assert len(data) == target.stat().st_size and data != target.read_bytes()
    return data


def test_an_unchanged_rerun_reads_no_image(tmp_path, run_cli, tiny_model_file, reads, monkeypatch):
    images, files = _images(tmp_path)
    cache = tmp_path / "c.h5"
    # Files written within the window before a run's stat are racy: here, within 60 s.
    monkeypatch.setattr(filestat, "RACY_WINDOW_NS", 60_000_000_000)
    first = _embed(run_cli, images, cache, tiny_model_file)
    assert first["hashed"] == len(files) and first["unchanged"] == 0
    reads.clear()
    second = _embed(run_cli, images, cache, tiny_model_file)  # so the next run reads them again...
    assert second["racy"] == len(files) and len(reads) == len(files) and second["embedded"] == 0
    # ...and records them again; once the window has passed since, nothing is read any more.
    monkeypatch.setattr(filestat, "RACY_WINDOW_NS", WINDOW_NS)
    settle()
    reads.clear()
    third = _embed(run_cli, images, cache, tiny_model_file)
    assert reads == [] and third["hashed"] == 0 and third["hashed_bytes"] == 0
    assert third["unchanged"] == len(files) and third["embedded"] == 0
    for path in files:
        assert _key_of(cache, path.relative_to(images).as_posix()) == _sha(path)


def _settled_cache(tmp_path, run_cli, model, reads):
    images, files = _images(tmp_path)
    cache = tmp_path / "c.h5"
    settle()  # the files are older than the window when the first run stats them
    _embed(run_cli, images, cache, model)
    reads.clear()
    return images, files, cache


def test_a_same_size_rewrite_that_keeps_the_mtime_is_read_again(tmp_path, run_cli, tiny_model_file, reads):
    """The 'same second' case: new bytes, same size, and the old mtime put back (as a copy
    tool or a coarse clock would leave it); the ctime still moves, so the file is read."""
    images, files, cache = _settled_cache(tmp_path, run_cli, tiny_model_file, reads)
    target = files[0]
    before = target.stat()
    target.write_bytes(_same_size_bytes(target, seed=5))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    report = _embed(run_cli, images, cache, tiny_model_file)
    assert reads == [str(target)] and report["hashed"] == 1 and report["embedded"] == 1
    assert _key_of(cache, target.relative_to(images).as_posix()) == _sha(target)


def test_a_file_replaced_by_a_rename_is_read_again(tmp_path, run_cli, tiny_model_file, reads):
    images, files, cache = _settled_cache(tmp_path, run_cli, tiny_model_file, reads)
    target = files[1]
    before = target.stat()
    replacement = tmp_path / "incoming.bmp"
    replacement.write_bytes(_same_size_bytes(target, seed=6))
    os.utime(replacement, ns=(before.st_atime_ns, before.st_mtime_ns))
    settle()
    os.replace(replacement, target)  # an editor's or a sync tool's atomic save
    report = _embed(run_cli, images, cache, tiny_model_file)
    assert reads == [str(target)] and report["embedded"] == 1
    assert _key_of(cache, target.relative_to(images).as_posix()) == _sha(target)


def test_a_touched_file_is_read_once_and_keeps_its_row(tmp_path, run_cli, tiny_model_file, reads):
    images, files, cache = _settled_cache(tmp_path, run_cli, tiny_model_file, reads)
    key = _key_of(cache, files[2].relative_to(images).as_posix())
    os.utime(files[2])  # touch: new times, same bytes
    settle()
    report = _embed(run_cli, images, cache, tiny_model_file)
    assert reads == [str(files[2])] and report["embedded"] == 0 and report["reused"] == len(files)
    assert report["rewritten"]  # its new stat is kept...
    reads.clear()
    report = _embed(run_cli, images, cache, tiny_model_file)
    assert reads == [] and not report["rewritten"]  # ...so it is not read again
    assert _key_of(cache, files[2].relative_to(images).as_posix()) == key


def test_a_moved_folder_is_not_read_again(tmp_path, run_cli, tiny_model_file, reads):
    """Renaming a folder keeps its files' inodes and times: their keys are found by identity."""
    images, files, cache = _settled_cache(tmp_path, run_cli, tiny_model_file, reads)
    keys = {path.name: _sha(path) for path in files}
    os.rename(images / "cats", images / "felines")
    report = _embed(run_cli, images, cache, tiny_model_file)
    assert reads == [] and report["unchanged"] == len(files) and report["embedded"] == 0
    opened = open_cache(cache)
    assert sorted(opened.classes) == ["dogs", "felines"]
    for path, row, label in zip(opened.paths, opened.rows, opened.labels):
        name = str(path).split("/")[-1]
        assert str(opened.keys[row]) == keys[name]
        assert opened.classes[label] == str(path).split("/")[0]


def test_rehash_reads_every_file(tmp_path, run_cli, tiny_model_file, reads):
    images, files, cache = _settled_cache(tmp_path, run_cli, tiny_model_file, reads)
    report = _embed(run_cli, images, cache, tiny_model_file, "--rehash")
    assert sorted(reads) == sorted(map(str, files)) and report["hashed"] == len(files)
    assert report["unchanged"] == 0 and report["embedded"] == 0


def test_a_cache_without_stat_records_is_read_and_then_records_them(tmp_path, run_cli, tiny_model_file, reads):
    """Caches made before the stat record: readable, and their first rerun reads every file once."""
    images, files, cache = _settled_cache(tmp_path, run_cli, tiny_model_file, reads)
    with h5py.File(cache, "r+") as h5:
        del h5["files/stat"], h5["failures/stat"]
    assert len(open_cache(cache).paths) == len(files)
    report = _embed(run_cli, images, cache, tiny_model_file)
    assert len(reads) == len(files) and report["embedded"] == 0 and report["rewritten"]
    with h5py.File(cache, "r") as h5:
        assert (h5["files/stat"]["size"] == [p.stat().st_size for p in sorted(files)]).all()
    reads.clear()
    assert _embed(run_cli, images, cache, tiny_model_file)["hashed"] == 0 and reads == []


def test_an_interrupted_run_keeps_what_it_hashed(tmp_path, run_cli, tiny_model_file, reads, monkeypatch):
    """The keys hashed before a crash are kept in the parts folder: the rerun embeds the images
    without reading them to hash them again."""
    import headstart.embedder.job as job

    images, files = _images(tmp_path)
    cache = tmp_path / "c.h5"
    settle()
    real = job._embed_new

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(job, "_embed_new", crash)
    assert run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", cache, "--json", "-q")[0] == 130
    assert (parts_dir_for(cache) / "stats.npz").is_file() and len(reads) == len(files)
    monkeypatch.setattr(job, "_embed_new", real)
    reads.clear()
    report = _embed(run_cli, images, cache, tiny_model_file)
    assert reads == [] and report["unchanged"] == len(files) and report["embedded"] == len(files)
    assert not parts_dir_for(cache).exists()


def test_a_stale_record_never_becomes_a_wrong_row(tmp_path, run_cli, tiny_model_file, reads, monkeypatch):
    """Should a record name the wrong key (a forged or damaged checkpoint), the engine still
    hashes the bytes it decodes: the file is a failure of the moment, never a row under that key."""
    import headstart.embedder.job as job

    images, files = _images(tmp_path)
    cache = tmp_path / "c.h5"
    settle()
    real = job._embed_new
    monkeypatch.setattr(job, "_embed_new", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", cache, "--json", "-q")[0] == 130
    monkeypatch.setattr(job, "_embed_new", real)
    checkpoint = parts_dir_for(cache) / "stats.npz"
    with np.load(checkpoint) as data:
        paths, keys, stats = data["paths"], data["keys"].copy(), data["stats"]
    wrong = "0" * 64
    keys[0] = wrong
    with open(checkpoint, "wb") as fh:
        np.savez(fh, paths=paths, keys=keys, stats=stats)
    code, out, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", cache, "--json", "-q")
    report = json.loads(out)
    assert code == 1 and report["skipped"][0]["reason"].startswith("changed since it was listed")
    opened = open_cache(cache)
    assert wrong not in set(map(str, opened.keys)) and len(opened.paths) == len(files) - 1
    assert _embed(run_cli, images, cache, tiny_model_file)["embedded"] == 1  # no record kept: read next time


def _stats(rows) -> np.ndarray:
    out = no_stats(len(rows))
    for i, row in enumerate(rows):
        out[i] = row
    return out


def test_the_racy_rule_and_what_must_match():
    s = 1_000_000_000
    now = 1_000 * s
    # size, mtime, ctime, inode, device, checked
    settled_row = (10, 500 * s, 500 * s, 7, 1, now)
    record = StatRecord(["a", "b", "c", "d"], ["ka", "kb", "kc", "kd"], _stats([
        settled_row,
        (10, now - s, now - s, 8, 1, now),  # changed 1 s before its stat was taken: racy
        (10, 500 * s, 0, 0, 0, now),  # a URL: no ctime, inode or device
        (10, 0, 0, 0, 0, now),  # a URL whose store keeps no time: never trusted
    ]))
    current = _stats([(10, 500 * s, 500 * s, 7, 1, 0), (10, now - s, now - s, 8, 1, 0),
                      (10, 500 * s, 0, 0, 0, 0), (10, 0, 0, 0, 0, 0)])
    found, racy = record.match(["a", "b", "c", "d"], current)
    assert found.tolist() == [0, -1, 2, -1] and racy.tolist() == [False, True, False, True]
    for field, value in (("size", 11), ("mtime_ns", 501 * s), ("ctime_ns", 501 * s), ("inode", 9)):
        changed = current[:1].copy()
        changed[field] = value
        assert record.match(["a"], changed)[0].tolist() == [-1], field
    # Moved: found by device and inode, and only with everything else equal.
    assert record.match(["elsewhere/a"], current[:1])[0].tolist() == [0]
    other_disk = current[:1].copy()
    other_disk["device"] = 2
    assert record.match(["elsewhere/a"], other_disk)[0].tolist() == [-1]
    assert np.dtype(STAT_DTYPE).names == filestat.STAT_FIELDS
