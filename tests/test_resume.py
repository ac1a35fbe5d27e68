"""Data safety: `kill -9` in the middle of `embed run`, then a rerun resumes.

The killed job must leave no unreadable file, keep the previous cache intact, lose at most
the batch in flight, and the resumed cache must equal an uninterrupted run.
"""

from __future__ import annotations

import pytest

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import REPO_ROOT, make_class_folders
from headstart.embedder.cache import open_cache, parts_dir_for

BACKBONE = ["-b", "VGG16", "--weights", "none", "--image-size", "64", "--batch-size", "2"]


def _cmd(images, cache, *extra):
    return [sys.executable, "-c", "import sys; from headstart import cli; sys.exit(cli.main())", "embed", "run", str(images),
            "--cache", str(cache), "--quiet", "--json", *BACKBONE, *extra]


def _kill_after_parts(images, cache, min_parts: int) -> int:
    """Start `embed run`, SIGKILL it once ``min_parts`` batches are durable; return parts seen."""
    proc = subprocess.Popen(_cmd(images, cache), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    parts = parts_dir_for(cache)
    deadline = time.monotonic() + 120
    count = 0
    while time.monotonic() < deadline and proc.poll() is None:
        count = len(list(parts.glob("part-*.npz"))) if parts.is_dir() else 0
        if count >= min_parts:
            break
        time.sleep(0.005)
    still_running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert still_running, f"embed run finished before it could be killed: {proc.stderr.read().decode()[-500:]}"
    return count


def _run(images, cache):
    proc = subprocess.run(_cmd(images, cache), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _by_path(cache_path):
    cache = open_cache(cache_path)
    feats = cache.file_features()
    return {str(p): (feats[i], int(cache.labels[i])) for i, p in enumerate(cache.paths)}


@pytest.mark.slow
@pytest.mark.subprocess
def test_kill_9_mid_run_then_resume_equals_uninterrupted(tmp_path):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=40, size=(64, 64))

    # 1. A fresh cache, killed mid-run: no cache file yet, durable parts, resume finishes it.
    cache = tmp_path / "killed.h5"
    _kill_after_parts(images, cache, min_parts=5)
    assert not cache.exists()
    parts_left = len(list(parts_dir_for(cache).glob("part-*.npz")))
    assert 5 <= parts_left < 40
    report = _run(images, cache)
    assert report["resumed_parts"] == parts_left
    assert report["embedded"] == 80 - 2 * parts_left  # only the missing batches were embedded
    assert not parts_dir_for(cache).exists()

    reference = tmp_path / "reference.h5"
    _run(images, reference)
    resumed, expected = _by_path(cache), _by_path(reference)
    assert resumed.keys() == expected.keys()
    for path, (vec, label) in expected.items():
        assert resumed[path][1] == label
        np.testing.assert_allclose(resumed[path][0], vec, rtol=1e-2, atol=1e-3)

    # 2. An existing cache, killed while new images are embedded: the old file stays
    #    readable and unchanged until the resumed run replaces it whole.
    make_class_folders(images, per_class=40, size=(64, 64), seed=9)
    before = cache.read_bytes()
    _kill_after_parts(images, cache, min_parts=3)
    assert cache.read_bytes() == before
    assert len(open_cache(cache).paths) == 80
    report = _run(images, cache)
    assert report["files"] == 160 and report["rows"] == 160 and report["resumed_parts"] >= 3
    assert report["embedded"] == 80 - 2 * report["resumed_parts"]
    grown = _by_path(cache)
    for path, (vec, _) in expected.items():
        np.testing.assert_array_equal(grown[path][0], resumed[path][0])  # old rows bit for bit


@pytest.mark.slow
@pytest.mark.subprocess
def test_ctrl_c_says_what_is_kept_and_the_rerun_resumes(tmp_path):
    """SIGINT mid-run: exit code 130, one line saying the finished batches are kept (Typer
    itself turns Ctrl-C into a silent 130), the parts on disk, and a rerun that resumes."""
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=40, size=(64, 64))
    cache = tmp_path / "c.h5"
    cmd = [arg for arg in _cmd(images, cache) if arg not in ("--quiet", "--json")]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            # a background CI job may start us with SIGINT ignored; Ctrl-C would not be
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    parts = parts_dir_for(cache)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and \
            len(list(parts.glob("part-*.npz")) if parts.is_dir() else []) < 3:
        time.sleep(0.005)
    assert proc.poll() is None, f"embed run finished before Ctrl-C: {proc.stderr.read().decode()[-500:]}"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == 130, err[-800:]
    assert err.rstrip().splitlines()[-1] == ("headstart: interrupted; the finished batches are kept: rerun the same "
                                             "command to resume")
    assert "Traceback" not in err
    kept = len(list(parts.glob("part-*.npz")))
    assert 3 <= kept < 40 and not cache.exists()
    report = _run(images, cache)
    assert report["resumed_parts"] == kept and report["files"] == 80
