"""Image roots and caches at URLs (tf.io.gfile), with TensorFlow's in-memory ``ram://``
filesystem standing in for an object store. It lives in this process's memory, so every
run here is in-process (``run_embedding`` or ``cli.main``), never a subprocess."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path, PurePosixPath

import numpy as np
import pytest

from conftest import make_class_folders, photo_like, save_image
from headstart.embedder import staging
from headstart.embedder.backbones import BackboneConfig
from headstart.embedder.cache import latest_cache, open_cache
from headstart.embedder.discovery import discover
from headstart.embedder.errors import CacheError, UsageError
from headstart.embedder.job import EmbedOptions, run_embedding
from headstart.embedder.storage import UrlPath, is_url, location


def _gfile():
    from headstart.embedder.tf_runtime import import_tf

    return import_tf().io.gfile


@pytest.fixture
def ram(monkeypatch, tmp_path):
    """A fresh ``ram://`` folder; staging goes under tmp_path (never the user's cache dir)."""
    monkeypatch.setenv(staging.STAGING_ENV, str(tmp_path / "staging"))
    root = f"ram://headstart-test-{uuid.uuid4().hex[:8]}"
    _gfile().makedirs(root)
    yield root
    gfile = _gfile()  # ram:// cannot delete a folder tree (rmtree): free the files one by one
    for folder, _, files in gfile.walk(root):
        for name in files:
            gfile.remove(f"{folder}/{name}")


def _upload_tree(local: Path, url: str) -> None:
    gfile = _gfile()
    for path in sorted(local.rglob("*")):
        target = f"{url}/{path.relative_to(local).as_posix()}"
        if path.is_dir():
            gfile.makedirs(target)
        else:
            gfile.copy(str(path), target, overwrite=True)


def _images(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    make_class_folders(root, classes=("cats", "dogs"), per_class=3, size=(48, 48))
    save_image(root / "cats" / "nested" / "deep.png", photo_like(np.random.default_rng(5), (40, 40)))
    (root / "dogs" / "broken.jpg").write_text("not an image")
    (root / "notes.txt").write_text("not an image either")
    return root


def _options(cache, **extra) -> EmbedOptions:
    return EmbedOptions(cache=cache, batch_size=4, dtype="float32", progress=False, **extra)


def _by_path(cache_location) -> dict:
    cache = open_cache(cache_location)
    features = cache.file_features()
    return {str(p): (features[i], int(label)) for i, (p, label) in enumerate(zip(cache.paths, cache.labels))}


def _names(url: str) -> list[str]:
    return sorted(n.rstrip("/") for n in _gfile().listdir(url))


# ------------------------------------------------------------------------- locations


def test_urls_keep_their_double_slash_and_local_paths_stay_paths():
    url = location("gs://bucket/images/cats/a.JPG")
    assert isinstance(url, UrlPath) and str(url) == "gs://bucket/images/cats/a.JPG"
    assert (url.name, url.suffix, url.stem) == ("a.JPG", ".JPG", "a")
    assert str(url.parent.parent) == "gs://bucket/images"
    assert url.relative_to(location("gs://bucket/images/")) == PurePosixPath("cats/a.JPG")
    assert str(location("gs://bucket//images/") / "cats" / "b.png") == "gs://bucket/images/cats/b.png"
    assert location("gs://b/x") == location("gs://b/x/") and location("gs://b/x") != location("s3://b/x")
    with pytest.raises(ValueError):
        url.relative_to(location("gs://other/images"))
    assert location("file:///tmp/x.h5") == Path("/tmp/x.h5")
    assert location("cache/x.h5") == Path("cache/x.h5") and location(Path("a")) == Path("a")
    assert is_url("ram://x") and not is_url("C:/data") and not is_url(Path("gs:/b")) and not is_url("file:///x")


def test_discovery_at_a_url_equals_discovery_on_disk(tmp_path, ram):
    local = tmp_path / "imgs"
    make_class_folders(local, classes=("a", "b"), per_class=2, size=(32, 32), split="train")
    make_class_folders(local, classes=("a", "b"), per_class=1, size=(32, 32), split="val", seed=1)
    (local / "train" / "a" / ".hidden.jpg").write_bytes(b"x")
    (local / "list.csv").write_text("path,label,split\ntrain/a/a_0_0.jpg,x,train\nval/b/b_1_0.jpg,y,test\n")
    _upload_tree(local, f"{ram}/imgs")

    on_disk, remote = discover(local), discover(f"{ram}/imgs/")  # a trailing slash is fine
    assert remote.layout == on_disk.layout == "split-folders"
    assert remote.files == on_disk.files and remote.classes == on_disk.classes
    assert str(remote.root) == f"{ram}/imgs"
    manifest = discover(f"{ram}/imgs", f"{ram}/imgs/list.csv")
    assert manifest.files == discover(local, local / "list.csv").files and manifest.layout == "manifest"
    with pytest.raises(UsageError, match="not found"):
        discover(f"{ram}/nowhere")


# ---------------------------------------------------------------- embedding to a URL


def test_embed_from_and_to_a_url_equals_a_local_run(tmp_path, ram, tiny_model_file, monkeypatch):
    config = BackboneConfig(backbone=str(tiny_model_file))
    local_images = _images(tmp_path)
    local = run_embedding(local_images, config, _options(tmp_path / "local.h5"))
    _upload_tree(local_images, f"{ram}/images")

    # Spy on every write to the object store: bytes go to a temporary name, the final name
    # appears by one rename, so a reader never sees a half-written cache.
    gfile, writes = _gfile(), []
    real_copy, real_rename = gfile.copy, gfile.rename
    monkeypatch.setattr(gfile, "copy", lambda a, b, overwrite=False: (writes.append(("copy", a, b)),
                                                                       real_copy(a, b, overwrite))[1])
    monkeypatch.setattr(gfile, "rename", lambda a, b, overwrite=False: (writes.append(("rename", a, b)),
                                                                         real_rename(a, b, overwrite))[1])
    url = f"{ram}/cache/x.h5"
    remote = run_embedding(f"{ram}/images", config, _options(url))

    uploads = [w for w in writes if w[2].startswith(ram)]
    assert [kind for kind, _, _ in uploads] == ["copy", "rename"]
    assert uploads[0][2] != url and uploads[0][2].startswith(url + ".tmp-") and uploads[1][1:] == (uploads[0][2], url)
    assert _names(f"{ram}/cache") == ["x.h5"]  # no temporary file, part file or lock beside it

    assert remote.cache_path == url and remote.images_root == f"{ram}/images"
    assert (remote.embedded, remote.files, remote.rows) == (local.embedded, local.files, local.rows) == (7, 7, 7)
    assert remote.skipped == local.skipped == [{"path": "dogs/broken.jpg", "reason": "not an image (unknown file format)"}]
    assert remote.ignored_files == local.ignored_files == 1
    expected, got = _by_path(tmp_path / "local.h5"), _by_path(url)
    assert sorted(got) == sorted(expected) and "cats/nested/deep.png" in got
    for path, (features, label) in expected.items():
        assert got[path][1] == label
        np.testing.assert_allclose(got[path][0], features, rtol=1e-5, atol=1e-6)
    cache = open_cache(url)
    assert cache.path == UrlPath(url) and str(cache.images_root) == f"{ram}/images"
    assert cache.attrs["images_root"] == f"{ram}/images"

    # The staged copy, the flatbuffer and the bookkeeping live on this machine, not at the URL.
    staged = staging.staged_path(url)
    assert staged.is_file() and staged.parent.parent == tmp_path / "staging"
    if remote.runtime == "litert":
        from headstart.embedder.runtimes.store import headstart_home

        assert list((headstart_home() / "converted" / "litert").glob("*.tflite"))

    # A rerun embeds nothing and uploads nothing.
    writes.clear()
    again = run_embedding(f"{ram}/images", config, _options(url))
    assert (again.embedded, again.reused, again.rewritten) == (0, 8, False)  # 7 rows + the broken file
    assert not [w for w in writes if w[2].startswith(ram)]

    # Another machine (no staging folder): the cache is downloaded first, so nothing is embedded.
    shutil.rmtree(tmp_path / "staging")
    other = run_embedding(f"{ram}/images", config, _options(url))
    assert (other.embedded, other.reused) == (0, 8)

    # A new image: only it is embedded, and the URL then holds it.
    save_image(tmp_path / "new.jpg", photo_like(np.random.default_rng(9), (48, 48), (200, 40, 40)))
    gfile.copy(str(tmp_path / "new.jpg"), f"{ram}/images/cats/new.jpg")
    grown = run_embedding(f"{ram}/images", config, _options(url))
    assert (grown.embedded, grown.files) == (1, 8)
    assert "cats/new.jpg" in set(open_cache(url).paths) and _names(f"{ram}/cache") == ["x.h5"]


def test_default_cache_name_under_a_url_cache_dir(tmp_path, ram, tiny_model_file, run_cli):
    _upload_tree(_images(tmp_path), f"{ram}/images")
    config = BackboneConfig(backbone=str(tiny_model_file))
    report = run_embedding(f"{ram}/images", config, EmbedOptions(cache_dir=f"{ram}/cache", batch_size=4,
                                                                   progress=False, runtime="tf"))
    assert report.cache_path.startswith(f"{ram}/cache/images-") and report.cache_path.endswith(".h5")
    assert str(latest_cache(f"{ram}/cache")) == report.cache_path

    # The command line hands URLs over intact (a pathlib.Path would make gs://b into gs:/b).
    code, out, err = run_cli("embed", "run", f"{ram}/images", "-b", tiny_model_file, "--cache-dir", f"{ram}/cache",
                             "--runtime", "tf", "--json", "-q")
    assert code == 1, err  # the broken file
    assert json.loads(out)["cache_path"] == report.cache_path and json.loads(out)["embedded"] == 0
    code, out, err = run_cli("embed", "info", report.cache_path, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["path"] == report.cache_path and info["files"] == 7 and info["pending_parts"] == 0


def test_a_killed_run_resumes_from_staging_and_uploads_nothing_before(tmp_path, ram, tiny_model_file, monkeypatch):
    from headstart.embedder.cache import CacheWriter

    _upload_tree(_images(tmp_path), f"{ram}/images")
    config = BackboneConfig(backbone=str(tiny_model_file))
    url = f"{ram}/cache/x.h5"
    real_add_part = CacheWriter.add_part
    calls = []

    def dies_after_one_batch(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_add_part(self, *args, **kwargs)

    monkeypatch.setattr(CacheWriter, "add_part", dies_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        run_embedding(f"{ram}/images", config, _options(url, runtime="tf"))
    assert not _gfile().exists(url)  # nothing is uploaded before the run finishes
    with pytest.raises(CacheError, match="unfinished"):
        open_cache(url)
    monkeypatch.setattr(CacheWriter, "add_part", real_add_part)

    resumed = run_embedding(f"{ram}/images", config, _options(url, runtime="tf"))
    assert resumed.resumed_parts == 1 and resumed.embedded == 7 - 4 and resumed.rows == 7
    assert _names(f"{ram}/cache") == ["x.h5"] and len(open_cache(url).keys) == 7


def test_a_failed_upload_is_retried_by_the_rerun_without_embedding(tmp_path, ram, tiny_model_file, monkeypatch):
    _upload_tree(_images(tmp_path), f"{ram}/images")
    config = BackboneConfig(backbone=str(tiny_model_file))
    url = f"{ram}/cache/x.h5"
    real_upload = staging._upload

    def network_down(local, target):
        raise CacheError(f"cannot upload the cache to {target}: network down")

    monkeypatch.setattr(staging, "_upload", network_down)
    with pytest.raises(CacheError, match="network down"):
        run_embedding(f"{ram}/images", config, _options(url, runtime="tf"))
    assert not _gfile().exists(url)
    monkeypatch.setattr(staging, "_upload", real_upload)

    retried = run_embedding(f"{ram}/images", config, _options(url, runtime="tf"))
    assert retried.embedded == 0 and retried.rows == 7 and _gfile().exists(url)
    assert len(open_cache(url).keys) == 7


def test_a_cache_changed_at_the_url_meanwhile_is_not_overwritten(tmp_path, ram, tiny_model_file, monkeypatch):
    import headstart.embedder.job as job

    _upload_tree(_images(tmp_path), f"{ram}/images")
    config = BackboneConfig(backbone=str(tiny_model_file))
    url = f"{ram}/cache/x.h5"
    run_embedding(f"{ram}/images", config, _options(url, runtime="tf"))
    gfile = _gfile()
    real_hash = job._hash_listing

    def another_machine_writes(listing, *args):
        gfile.remove(url)  # someone else's version of the cache appears meanwhile (ram:// appends
        with gfile.GFile(url, "wb") as fh:  # to an existing file: remove it first)
            fh.write(b"x" * 10)
        return real_hash(listing, *args)

    monkeypatch.setattr(job, "_hash_listing", another_machine_writes)
    save_image(tmp_path / "new.jpg", photo_like(np.random.default_rng(11), (48, 48)))
    gfile.copy(str(tmp_path / "new.jpg"), f"{ram}/images/dogs/new.jpg")
    with pytest.raises(CacheError, match="changed while this run worked"):
        run_embedding(f"{ram}/images", config, _options(url, runtime="tf"))
    assert gfile.stat(url).length == 10  # left as the other writer made it


# ------------------------------------------------------------------ reading from a URL


def test_reading_merging_and_training_on_caches_at_urls(tmp_path, ram, tiny_model_file, monkeypatch):
    from headstart.embedder.merge import merge_caches
    from headstart.heads.params import make_params
    from headstart.heads.train import train_head

    _upload_tree(_images(tmp_path), f"{ram}/images")
    config = BackboneConfig(backbone=str(tiny_model_file))
    shards = [f"{ram}/cache/s{i}.h5" for i in range(2)]
    for i, shard in enumerate(shards):
        run_embedding(f"{ram}/images", config, _options(shard, runtime="tf", shard=(i, 2)))
    whole = f"{ram}/cache/whole.h5"
    run_embedding(f"{ram}/images", config, _options(whole, runtime="tf"))

    # Reading on a machine without the staged copies downloads once, then reuses the copy
    # while the URL's size and modification time stay the same.
    shutil.rmtree(tmp_path / "staging")
    downloads = []
    real_download = staging._download
    monkeypatch.setattr(staging, "_download", lambda url, local: (downloads.append(str(url)), real_download(url, local)))
    stats = []
    real_stat = staging._remote_stat
    monkeypatch.setattr(staging, "_remote_stat", lambda url: (stats.append(str(url)), real_stat(url))[1])
    first = open_cache(whole)
    features = first.load_features()
    first.file_features()
    assert stats == [whole]  # reads after opening use the copy it was opened from
    again = open_cache(whole)
    assert downloads == [whole] and np.array_equal(again.load_features(), features)
    assert staging.local_copy(whole).parent.name == staging.DOWNLOADS

    # A location resolved once at the edge asks the store once, whatever reads it after.
    from headstart.heads.choose import resolve_cache
    from headstart.heads.data import load_labelled

    stats.clear()
    where = resolve_cache(whole)
    data = load_labelled(where)
    assert open_cache(data.cache_location).location is where and data.cache_path == location(whole)
    assert np.array_equal(open_cache(where).load_features(), features)
    assert stats == [whole]

    merged = f"{ram}/merged/all.h5"
    report = merge_caches(merged, shards)
    assert report.rows == 7 and report.out == merged and _names(f"{ram}/merged") == ["all.h5"]
    assert _by_path(merged).keys() == _by_path(whole).keys()
    with pytest.raises(UsageError, match="--virtual"):
        merge_caches(f"{ram}/merged/virtual.h5", shards, virtual=True)

    trained = train_head(make_params("logreg"), cache=whole, out=tmp_path / "run")
    assert trained.cache == whole or whole in str(trained.cache)
    recorded = json.loads((tmp_path / "run" / "head.json").read_text())["cache"]["path"]
    assert recorded == whole

    # predict on images at a URL: features from the cache at a URL, or decoded from the URL.
    from headstart.heads.inference import PredictOptions, predict_images
    from headstart.heads.runs import load_run

    run = load_run(tmp_path / "run")
    cached = predict_images([f"{ram}/images/cats"], run, PredictOptions(progress=False, runtime="tf",
                                                                          cache_dir=tmp_path / "none"))
    fresh = predict_images([f"{ram}/images/cats"], run, PredictOptions(progress=False, runtime="tf", use_cache=False,
                                                                         cache_dir=tmp_path / "none"))
    assert (cached.from_cache, fresh.through_backbone) == (4, 4)
    assert [p["path"] for p in cached.predictions] == [p["path"] for p in fresh.predictions]
    assert cached.predictions[0]["path"].startswith(f"{ram}/images/cats/")
    for a, b in zip(cached.predictions, fresh.predictions):
        assert a["label"] == b["label"] and abs(a["probability"] - b["probability"]) < 1e-3
    with pytest.raises(CacheError, match="not found"):
        open_cache(f"{ram}/cache/missing.h5")


def test_finetune_reads_the_cache_and_the_images_from_urls(tmp_path, ram, tiny_model_file, run_cli):
    local = tmp_path / "imgs"
    make_class_folders(local, per_class=4, size=(48, 48), split="train")
    make_class_folders(local, per_class=2, size=(48, 48), split="val", seed=1)
    _upload_tree(local, f"{ram}/images")
    url = f"{ram}/cache/x.h5"
    run_embedding(f"{ram}/images", BackboneConfig(backbone=str(tiny_model_file)), _options(url, runtime="tf"))
    code, _, err = run_cli("head", "train", "--cache", url, "--epochs", "3", "--hidden", "8", "--out",
                           tmp_path / "head", "-q")
    assert code == 0, err
    code, out, err = run_cli("finetune", "--from", tmp_path / "head", "--out", tmp_path / "ft", "--epochs", "1",
                             "--unfreeze", "1", "--no-augment", "--batch-size", "4", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert (report["train_images"], report["val_images"]) == (8, 4) and not report["skipped"]
