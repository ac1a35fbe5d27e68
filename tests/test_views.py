"""Cached augmented views (`embed run --views K`): reproducible, incremental, crash-safe,
and used by `head train --views` for training rows only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO_ROOT, make_class_folders
from headstart.embedder.backbones import BackboneConfig
from headstart.embedder.cache import open_cache, parts_dir_for
from headstart.embedder.errors import CacheError
from headstart.embedder.job import EmbedOptions, run_embedding


def _config(tiny_model_file):
    return BackboneConfig(backbone=str(tiny_model_file), weights="none")


def _embed(images, cache, config, **options):
    options.setdefault("runtime", "tf")
    return run_embedding(images, config, EmbedOptions(cache=cache, progress=False, batch_size=4, **options))


def _views_by_key(cache_path):
    cache = open_cache(cache_path)
    views, done = cache.load_views(np.arange(cache.num_rows))
    return {str(k): (views[i], done[i]) for i, k in enumerate(cache.keys)}, cache


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=4, size=(56, 64))
    return root


@pytest.mark.slow
def test_views_are_reproducible_distinct_and_close_to_the_clean_features(images, tmp_path, tiny_model_file):
    config = _config(tiny_model_file)
    report = _embed(images, tmp_path / "a.h5", config, views=3)
    assert report.views == 3 and report.views_embedded == 3 * report.rows
    again = _embed(images, tmp_path / "b.h5", config, views=3)
    a, cache = _views_by_key(tmp_path / "a.h5")
    b, _ = _views_by_key(tmp_path / "b.h5")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key][0], b[key][0])  # same bytes, view, seed -> same view
        assert a[key][1].all()
    clean = cache.load_features()
    views, _ = cache.load_views(np.arange(cache.num_rows))
    assert views.shape == (cache.num_rows, 3, cache.dim)
    # Views differ from each other and from the clean image, yet stay near it in feature space.
    assert np.abs(views[:, 0] - views[:, 1]).max() > 1e-3
    assert np.abs(views[:, 0] - clean).max() > 1e-3
    nearest_clean = np.argmin(((views[:, :, None, :] - clean[None, None]) ** 2).sum(-1), axis=-1)
    assert (nearest_clean == np.arange(cache.num_rows)[:, None]).mean() > 0.5
    # Another seed gives other views.
    _embed(images, tmp_path / "c.h5", config, views=3, views_seed=5)
    c, _ = _views_by_key(tmp_path / "c.h5")
    assert any(np.abs(c[k][0] - a[k][0]).max() > 1e-3 for k in a)
    assert again.views_seed == 0


def test_adding_views_embeds_only_the_views_and_keeps_the_first_ones(images, tmp_path, tiny_model_file, run_cli,
                                                                     monkeypatch):
    from headstart.embedder import filestat

    # The files were just written: with the usual racy window their stat records settle only in
    # a run a few seconds later, which then rewrites the tables once (embedder/filestat.py), and
    # "not rewritten" below would depend on how fast this test runs. No window: settled at once.
    monkeypatch.setattr(filestat, "RACY_WINDOW_NS", 0)
    config = _config(tiny_model_file)
    cache_path = tmp_path / "c.h5"
    first = _embed(images, cache_path, config)
    assert first.views == 0 and open_cache(cache_path).num_views == 0
    clean_before = open_cache(cache_path).load_features()

    two = _embed(images, cache_path, config, views=2)
    assert two.embedded == 0 and two.views_embedded == 2 * two.rows
    np.testing.assert_array_equal(open_cache(cache_path).load_features(), clean_before)
    two_views, _ = _views_by_key(cache_path)
    code, out, err = run_cli("embed", "info", cache_path, "--json")
    assert code == 0 and json.loads(out)["views"]["count"] == 2, err

    four = _embed(images, cache_path, config, views=4)
    assert four.embedded == 0 and four.views_embedded == 2 * four.rows  # only views 2 and 3
    four_views, cache = _views_by_key(cache_path)
    assert cache.num_views == 4
    for key, (views, done) in four_views.items():
        np.testing.assert_array_equal(views[:2], two_views[key][0])
        assert done.all()
    # A fresh K=4 cache equals the incremental one: views depend on (key, view, seed) only.
    fresh = tmp_path / "fresh.h5"
    _embed(images, fresh, config, views=4)
    fresh_views, _ = _views_by_key(fresh)
    for key in four_views:
        np.testing.assert_allclose(fresh_views[key][0], four_views[key][0], atol=1e-6)

    # Nothing new: nothing embedded, file not rewritten; a smaller K keeps what is there.
    rerun = _embed(images, cache_path, config, views=1)
    assert rerun.embedded == 0 and rerun.views_embedded == 0 and not rerun.rewritten and rerun.views == 4


def test_views_are_sticky_for_new_images_and_refuse_another_seed(images, tmp_path, tiny_model_file):
    config = _config(tiny_model_file)
    cache_path = tmp_path / "c.h5"
    _embed(images, cache_path, config, views=2, views_seed=3)
    make_class_folders(images, per_class=2, size=(56, 64), seed=9)  # new images, no --views given
    report = _embed(images, cache_path, config)
    assert report.embedded == 4 and report.views_embedded == 8 and report.views_seed == 3
    views, cache = _views_by_key(cache_path)
    assert all(done.all() for _, done in views.values()) and cache.views["seed"] == 3
    with pytest.raises(CacheError, match="seed 3"):
        _embed(images, cache_path, config, views=2, views_seed=4)


def test_rows_whose_files_are_gone_are_reported_not_faked(images, tmp_path, tiny_model_file):
    config = _config(tiny_model_file)
    cache_path = tmp_path / "c.h5"
    _embed(images, cache_path, config)
    gone = sorted(images.rglob("*.jpg"))[0]
    gone.unlink()
    report = _embed(images, cache_path, config, views=2)
    assert report.views_missing == 1
    cache = open_cache(cache_path)
    _, done = cache.load_views(np.arange(cache.num_rows))
    assert done.all(axis=1).sum() == cache.num_rows - 1 and not done.any(axis=1).all()


def _cmd(images, cache, *extra):
    return [sys.executable, "-c", "import sys; from headstart import cli; sys.exit(cli.main())", "embed", "run", str(images),
            "--cache", str(cache), "--quiet", "--json", "-b", "VGG16", "--weights", "none", "--image-size", "48",
            "--batch-size", "2", "--runtime", "tf", *extra]


@pytest.mark.slow
@pytest.mark.subprocess
def test_kill_9_while_embedding_views_then_resume(tmp_path):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=5, size=(48, 48))
    cache = tmp_path / "c.h5"
    subprocess.run(_cmd(images, cache), cwd=REPO_ROOT, check=True, capture_output=True, timeout=300)
    before = open_cache(cache).load_features()
    proc = subprocess.Popen(_cmd(images, cache, "--views", "6"), cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    parts = parts_dir_for(cache)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("views-*.npz"))) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "the views run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_parts = len(list(parts.glob("views-*.npz")))
    assert killed_parts >= 3
    # The finished cache is untouched and still readable (no views yet).
    survivor = open_cache(cache)
    assert survivor.num_views == 0
    np.testing.assert_array_equal(survivor.load_features(), before)

    done = subprocess.run(_cmd(images, cache, "--views", "6"), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["views_embedded"] <= 60 - 2 * (killed_parts - 1)  # the finished batches were kept
    assert not parts.exists()
    reference = tmp_path / "ref.h5"
    subprocess.run(_cmd(images, reference, "--views", "6"), cwd=REPO_ROOT, check=True, capture_output=True,
                   timeout=300)
    resumed, _ = _views_by_key(cache)
    whole, _ = _views_by_key(reference)
    assert resumed.keys() == whole.keys()
    for key in whole:
        np.testing.assert_allclose(resumed[key][0], whole[key][0], rtol=1e-3, atol=1e-3)
        assert resumed[key][1].all()


# ------------------------------------------------------------------ head train --views

def _add_views(cache_path, make_view, count=2):
    """Give every row of a generated cache ``count`` views, ``make_view(row, view, clean, split)``,
    through the project's own writer."""
    from headstart.embedder.cache import CacheWriter, FileRecord

    cache = open_cache(cache_path)
    clean = cache.load_features()
    split_of = {int(r): str(s) for r, s in zip(cache.rows, cache.splits)}
    files = [FileRecord(str(p), str(cache.keys[r]), int(l), str(s))
             for p, r, l, s in zip(cache.paths, cache.rows, cache.labels, cache.splits)]
    with CacheWriter(cache_path, cache.fingerprint, cache.feature_dtype) as writer:
        writer.set_views(count, 0, {"test": True})
        keys, views, feats = [], [], []
        for row, key in enumerate(cache.keys):
            for v in range(count):
                keys.append(str(key))
                views.append(v)
                feats.append(make_view(row, v, clean[row], split_of[row]))
        writer.add_view_part(keys, views, np.asarray(feats, np.float32))
        writer.finish(files, cache.classes, [], cache.images_root)


def _layout_cache(tmp_path):
    from feature_caches import make_cache

    splits = {name: ["train"] * 20 + ["val"] * 10 for name in ("ants", "bees", "wasps")}
    return make_cache(tmp_path / "c.h5", per_class=30, splits=splits)


def test_head_train_views_uses_training_views_only(tmp_path, run_cli):
    cache = _layout_cache(tmp_path)
    rng = np.random.default_rng(0)
    # Validation rows' views are NaN: reading a single one would fail the run.
    _add_views(cache, lambda row, v, clean, split: clean + rng.normal(0, 0.3, clean.shape) if split == "train"
               else np.full_like(clean, np.nan))
    code, out, err = run_cli("head", "train", "--cache", cache, "--head", "logreg", "--views", "--out",
                             tmp_path / "run", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["split"]["counts"] == {"train": 60, "val": 30, "test": 0}
    assert report["split"]["train_views"] == {"per_image": 2, "examples": 120}
    assert report["params"]["views"] == -1
    assert report["metrics"]["n"] == 30  # evaluated on the 30 clean validation images
    meta = json.loads((tmp_path / "run" / "head.json").read_text())
    assert meta["split"]["train_views"]["examples"] == 120

    code, out, err = run_cli("head", "train", "--cache", cache, "--head", "logreg", "--views", "--max-views", "1",
                             "--out", tmp_path / "run1", "--json")
    assert code == 0, err
    assert json.loads(out)["split"]["train_views"] == {"per_image": 1, "examples": 60}


def test_views_change_what_the_head_learns(tmp_path, run_cli):
    """Views whose labels point the other way must pull a head away from the clean answer:
    proof that they are really trained on, not just counted."""
    cache = _layout_cache(tmp_path)
    data = open_cache(cache)
    clean = data.load_features()
    labels = np.full(data.num_rows, -1)
    labels[data.rows] = data.labels
    centres = np.stack([clean[labels == c].mean(0) for c in range(3)])
    # Each training view looks like the *next* class's centre: 2 views vs 1 clean row per image.
    _add_views(cache, lambda row, v, x, split: centres[(labels[row] + 1) % 3] if split == "train" else x)
    _, plain, _ = run_cli("head", "train", "--cache", cache, "--head", "logreg", "--out", tmp_path / "a", "--json")
    _, mixed, _ = run_cli("head", "train", "--cache", cache, "--head", "logreg", "--views", "--out",
                          tmp_path / "b", "--json")
    assert json.loads(plain)["metrics"]["accuracy"] > 0.9
    assert json.loads(mixed)["metrics"]["accuracy"] < json.loads(plain)["metrics"]["accuracy"] - 0.2


def test_head_train_views_needs_a_cache_with_views(tmp_path, run_cli):
    cache = _layout_cache(tmp_path)
    code, out, err = run_cli("head", "train", "--cache", cache, "--views")
    assert code == 2 and "--views 4" in err and "Traceback" not in err
    code, out, err = run_cli("head", "train", "--cache", cache, "--max-views", "2")
    assert code == 2 and "add --views" in err


def test_shards_with_views_merge_into_the_single_run_views(images, tmp_path, tiny_model_file, run_cli):
    config = _config(tiny_model_file)
    single = tmp_path / "single.h5"
    _embed(images, single, config, views=2)
    shards = []
    for i in range(2):
        shards.append(tmp_path / f"s{i}.h5")
        _embed(images, shards[-1], config, views=2, shard=(i, 2))
    code, _, err = run_cli("embed", "merge", tmp_path / "merged.h5", *shards)
    assert code == 0, err
    merged, cache = _views_by_key(tmp_path / "merged.h5")
    whole, _ = _views_by_key(single)
    assert merged.keys() == whole.keys() and cache.num_views == 2
    for key in whole:
        np.testing.assert_allclose(merged[key][0], whole[key][0], rtol=1e-3, atol=1e-3)
        assert merged[key][1].all()
    code, _, err = run_cli("embed", "merge", tmp_path / "virtual.h5", *shards, "--virtual")
    assert code == 0 and "views are not in OUT" in err


def test_sweep_compares_with_and_without_views(tmp_path, run_cli):
    cache = _layout_cache(tmp_path)
    _add_views(cache, lambda row, v, clean, split: clean + 0.1 * (v + 1))
    code, out, err = run_cli("head", "sweep", "--cache", cache, "--head", "logreg", "--views", "0,1,all",
                             "--out", tmp_path / "sweep", "--json")
    assert code == 0, err
    runs = json.loads(out)["runs"]
    assert sorted(r["params"]["views"] for r in runs) == [-1, 0, 1]
    examples = {r["params"]["views"]: (r["split"].get("train_views") or {}).get("examples", 0) for r in runs}
    assert examples == {0: 0, 1: 60, -1: 120}
    code, _, err = run_cli("head", "sweep", "--cache", cache, "--views", "some")
    assert code == 2 and "--views" in err
