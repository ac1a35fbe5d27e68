"""`headstart cache list` and `cache clean`: what is kept on disk, and the clean rule
(embedder/housekeeping.py): orphaned converted backbones, stale parts and locks, the old
cache/litert/ flatbuffers go; finished caches and anything a writer holds never do."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest
from feature_caches import FINGERPRINT, make_cache

from headstart.embedder.backbones import network_key
from headstart.embedder.cache import open_cache
from headstart.embedder.locking import FileLock
from headstart.embedder.runtimes.store import ConvertedStore

MONTH_AGO = time.time() - 30 * 86400


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("HEADSTART_HOME", str(home))
    return home


def _store():
    return ConvertedStore("litert", ".tflite", ("tensorflow",))


def _converted(key: str, size: int, last_used: float):
    """A converted backbone kept by the store itself, last loaded at ``last_used``."""
    store = _store()
    path = store.save(key, b"x" * size, {"for": dict(FINGERPRINT)})
    record = json.loads(store.sidecar(path).read_text())
    record["last_used"] = dt.datetime.fromtimestamp(last_used, dt.timezone.utc).isoformat(timespec="seconds")
    store.sidecar(path).write_text(json.dumps(record))
    return path


def _age(path, when=MONTH_AGO):
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        os.utime(p, (when, when))


@pytest.fixture
def kept(tmp_path, home):
    """A cache folder after months of use: one finished cache and the leftovers around it."""
    caches = tmp_path / "cache"
    cache = make_cache(caches / "ants.h5", per_class=5, dim=8)
    stuff = {
        "cache": cache,
        "its backbone": _converted(network_key(FINGERPRINT), 3000, MONTH_AGO),
        "orphan": _converted("backbone-deadbeef", 94_000, MONTH_AGO),
        "orphan, recent": _converted("backbone-cafe", 500, time.time()),
        "fine-tuned model": _converted("model-0123", 700, MONTH_AGO),
        "old parts": caches / "gone.h5.parts",
        "new parts": caches / "resumable.h5.parts",
        "stale lock": caches / "gone.h5.lock",
        "old flatbuffer": caches / "litert" / "backbone-1234.tflite",
    }
    for name in ("old parts", "new parts"):
        stuff[name].mkdir()
        (stuff[name] / "part-00000.npz").write_bytes(b"p" * 2000)
    _age(stuff["old parts"])
    stuff["stale lock"].write_text("12345")  # left by kill -9: no process holds it
    stuff["old flatbuffer"].parent.mkdir()
    stuff["old flatbuffer"].write_bytes(b"f" * 5000)
    stuff["old flatbuffer"].with_suffix(".json").write_text("{}")
    return stuff


def test_cache_list_shows_caches_and_converted_backbones(run_cli, kept, tmp_path):
    code, out, err = run_cli("cache", "list", "--cache-dir", tmp_path / "cache", "--json")
    assert code == 0, err
    listing = json.loads(out)
    [cache] = listing["caches"]
    assert cache["path"] == str(kept["cache"]) and cache["rows"] == open_cache(kept["cache"]).num_rows == 15
    assert cache["images_root"] == str(tmp_path / "cache" / "images")
    assert cache["size_bytes"] == kept["cache"].stat().st_size and "TestNet" in cache["backbone"]
    assert not cache["in_use"]
    by_key = {c["key"]: c for c in listing["converted"]}
    assert set(by_key) == {network_key(FINGERPRINT), "backbone-deadbeef", "backbone-cafe", "model-0123"}
    assert by_key[network_key(FINGERPRINT)]["caches"] == [str(kept["cache"])]
    assert by_key["backbone-deadbeef"]["caches"] == []
    orphan = kept["orphan"]
    assert by_key["backbone-deadbeef"]["size_bytes"] == 94_000 + _store().sidecar(orphan).stat().st_size

    code, out, err = run_cli("cache", "list", "--cache-dir", tmp_path / "cache")
    assert code == 0, err
    assert f"{kept['cache']}  0.0 MB, 15 rows" in out and "converted backbones in" in out and "4 files" in out
    assert f"{orphan}  0.1 MB, for no cache here" in out


def test_cache_clean_dry_run_then_clean(run_cli, kept, tmp_path):
    folder = tmp_path / "cache"
    doomed = {kept[name] for name in ("orphan", "fine-tuned model", "old parts", "stale lock", "old flatbuffer")}
    doomed.add(kept["old flatbuffer"].with_suffix(".json"))
    spared = [kept[name] for name in ("cache", "its backbone", "orphan, recent", "new parts")]
    expected_bytes = (94_000 + 700 + 2000 + 5 + 5000 + 2
                      + sum(_store().sidecar(kept[n]).stat().st_size for n in ("orphan", "fine-tuned model")))

    code, out, err = run_cli("cache", "clean", "--cache-dir", folder, "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert {r["path"] for r in plan["removals"]} == {str(p) for p in doomed}
    assert plan["size_bytes"] == expected_bytes
    assert all(p.exists() for p in doomed | set(spared))  # a dry run removes nothing

    code, out, err = run_cli("cache", "clean", "--cache-dir", folder)
    assert code == 0, err
    assert f"removed 6 items, {expected_bytes / 1e6:.1f} MB" in out
    assert not any(p.exists() for p in doomed) and not (folder / "litert").exists()
    assert not _store().sidecar(kept["orphan"]).exists()
    assert all(p.exists() for p in spared)
    assert open_cache(kept["cache"]).num_rows == 15  # the finished cache is untouched

    code, out, err = run_cli("cache", "clean", "--cache-dir", folder, "--unused-days", "0")
    assert code == 0, err  # now the recent orphan and the interrupted run's parts may go too
    assert not kept["orphan, recent"].exists() and not kept["new parts"].exists()
    assert kept["its backbone"].exists() and kept["cache"].exists()


def test_clean_spares_what_a_writer_holds(run_cli, kept, tmp_path):
    folder = tmp_path / "cache"
    _age(kept["new parts"])  # old enough to go, but its writer is still at work
    with FileLock(folder / "resumable.h5.lock", lambda holder: holder):
        code, out, err = run_cli("cache", "clean", "--cache-dir", folder, "--unused-days", "0")
        assert code == 0, err
        assert kept["new parts"].is_dir() and (folder / "resumable.h5.lock").exists()
        assert f"kept {kept['new parts']}: a writer is filling it now" in out
    assert not kept["stale lock"].exists()


def test_unreadable_cache_keeps_backbone_conversions(run_cli, kept, tmp_path):
    folder = tmp_path / "cache"
    (folder / "broken.h5").write_bytes(b"not hdf5")
    code, out, err = run_cli("cache", "list", "--cache-dir", folder)
    assert code == 1 and f"not a readable cache: {folder / 'broken.h5'}" in err
    code, out, err = run_cli("cache", "clean", "--cache-dir", folder)
    assert code == 0 and "are not readable caches" in err
    assert kept["orphan"].exists()  # it may be the broken cache's backbone
    assert not kept["fine-tuned model"].exists()  # a fine-tuned model's conversion belongs to no cache


def test_a_url_cache_dir_is_refused(run_cli, home):
    code, out, err = run_cli("cache", "clean", "--cache-dir", "s3://bucket/cache")
    assert code == 2 and "a folder on this machine" in err
