"""Many machines: `embed run --shard I/N` partitions by content key; `embed merge` joins the
shards into a cache equal to a single run, and refuses what does not belong together."""

from __future__ import annotations

import json
import os
import shutil

import h5py
import numpy as np
import pytest

from conftest import make_class_folders
from headstart.embedder.cache import open_cache, parts_dir_for


def _by_path(path):
    cache = open_cache(path)
    features = cache.file_features()
    return {str(p): (features[i], cache.classes[l] if l >= 0 else None, str(s))
            for i, (p, l, s) in enumerate(zip(cache.paths, cache.labels, cache.splits))}


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, tiny_model_file):
    from headstart import cli

    work = tmp_path_factory.mktemp("shards")
    images = work / "imgs"
    make_class_folders(images, classes=("a", "b", "c"), per_class=8, size=(48, 48), split="train")
    make_class_folders(images, classes=("a", "b"), per_class=2, size=(48, 48), split="val", seed=1)
    (images / "train" / "a" / "broken.jpg").write_text("not an image")
    common = ["-b", str(tiny_model_file), "--dtype", "float32", "-q"]
    assert cli.main(["embed", "run", str(images), "--cache", str(work / "single.h5"), *common]) == 1
    for i in range(3):
        assert cli.main(["embed", "run", str(images), "--shard", f"{i}/3", "--cache", str(work / f"s{i}.h5"),
                         *common]) in (0, 1)
    return {"work": work, "images": images, "common": common, "shards": [work / f"s{i}.h5" for i in range(3)]}


def test_shards_are_disjoint_and_complete(sharded):
    caches = [open_cache(p) for p in sharded["shards"]]
    keys = [set(map(str, c.keys)) for c in caches]
    assert all(k for k in keys)  # every shard got some rows
    assert not (keys[0] & keys[1]) and not (keys[0] & keys[2]) and not (keys[1] & keys[2])
    single = open_cache(sharded["work"] / "single.h5")
    assert set().union(*keys) == set(map(str, single.keys))
    assert sum(len(c.failure_paths) for c in caches) == 1  # the broken file is reported exactly once
    assert {c.attrs["shard"] for c in caches} == {"0/3", "1/3", "2/3"}


@pytest.mark.parametrize("virtual", [False, True])
def test_merge_equals_a_single_run(sharded, run_cli, virtual):
    out = sharded["work"] / f"merged-{virtual}.h5"
    args = ["embed", "merge", out, *sharded["shards"], "--json"] + (["--virtual"] if virtual else [])
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    report = json.loads(stdout)
    single = open_cache(sharded["work"] / "single.h5")
    assert report["rows"] == single.num_rows and report["files"] == len(single.paths) and report["failures"] == 1
    merged, expected = _by_path(out), _by_path(sharded["work"] / "single.h5")
    assert merged.keys() == expected.keys()
    for path, (vector, label, split) in expected.items():
        assert merged[path][1:] == (label, split)
        np.testing.assert_allclose(merged[path][0], vector, rtol=1e-6, atol=1e-6)
    if virtual:
        with h5py.File(out) as h5:
            assert h5["embeddings/features"].is_virtual


def test_virtual_merge_reads_from_another_working_directory(sharded, run_cli, tmp_path, monkeypatch):
    out = sharded["work"] / "virtual-cwd.h5"
    assert run_cli("embed", "merge", out, *sharded["shards"], "--virtual", "--json")[0] == 0
    monkeypatch.chdir(tmp_path)
    features = open_cache(out).load_features()
    assert features.shape[0] == open_cache(sharded["work"] / "single.h5").num_rows and np.abs(features).sum() > 0


def test_merge_refuses_mismatched_fingerprints_and_different_features(sharded, run_cli, tmp_path):
    other = tmp_path / "maxpool.h5"
    assert run_cli("embed", "run", sharded["images"], "--shard", "0/3", "--cache", other, "--pooling", "max",
                   *sharded["common"])[0] in (0, 1)
    code, _, err = run_cli("embed", "merge", tmp_path / "m.h5", sharded["shards"][1], other)
    assert code == 2 and "fingerprint mismatch" in err and "pooling: max vs avg" in err

    # The same key in two shards with different features: refused, naming the key and both shards.
    tampered = tmp_path / "tampered.h5"
    shutil.copy(sharded["shards"][0], tampered)
    with h5py.File(tampered, "a") as h5:
        h5["embeddings/features"][0] = h5["embeddings/features"][0] + 1.0
    code, _, err = run_cli("embed", "merge", tmp_path / "m2.h5", sharded["shards"][0], tampered)
    assert code == 2 and "with different features" in err and str(tampered) in err
    assert not (tmp_path / "m2.h5").exists()
    # ...while an identical duplicate merges (copy mode) into one row per key.
    same = tmp_path / "same.h5"
    shutil.copy(sharded["shards"][0], same)
    code, out, err = run_cli("embed", "merge", tmp_path / "m3.h5", sharded["shards"][0], same, "--json")
    assert code == 0, err
    assert json.loads(out)["duplicate_keys"] == open_cache(same).num_rows


def test_missing_and_half_written_shards_are_named(sharded, run_cli, tmp_path):
    code, _, err = run_cli("embed", "merge", tmp_path / "m.h5", sharded["shards"][0], tmp_path / "s9.h5")
    assert code == 2 and f"shard {tmp_path / 's9.h5'} is missing" in err
    half = tmp_path / "half.h5"
    parts_dir_for(half).mkdir()
    (parts_dir_for(half) / "part-000000.npz").write_bytes(b"x")
    code, _, err = run_cli("embed", "merge", tmp_path / "m.h5", sharded["shards"][0], half)
    assert code == 2 and f"shard {half} is half-written" in err


def test_bad_shard_specs(run_cli, tmp_path, sharded):
    for spec, message in (("3/3", "counts from 0"), ("1", "must look like I/N"), ("-1/2", "counts from 0")):
        code, _, err = run_cli("embed", "run", sharded["images"], "--shard", spec, "--cache", tmp_path / "x.h5", "-q")
        assert code == 2 and message in err, (spec, err)


@pytest.mark.slow
@pytest.mark.subprocess
def test_killed_shard_resumes(sharded, tmp_path):
    """A shard is an ordinary embed run over its keys: kill -9 and rerun resumes it."""
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO_ROOT, make_class_folders as more_images

    images = tmp_path / "imgs"
    more_images(images, per_class=40, size=(64, 64))
    cache = tmp_path / "s1.h5"
    cmd = [sys.executable, "-c", "import sys; from headstart import cli; sys.exit(cli.main())", "embed", "run", str(images),
           "--shard", "1/2", "--cache", str(cache), "-b", "VGG16", "--weights", "none", "--image-size", "64",
           "--batch-size", "2", "--runtime", "tf", "--json", "-q"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if parts_dir_for(cache).is_dir() and len(list(parts_dir_for(cache).glob("part-*.npz"))) >= 3:
            break
        time.sleep(0.005)
    running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["resumed_parts"] >= 3 and report["embedded"] == report["rows"] - 2 * report["resumed_parts"]
