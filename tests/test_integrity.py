"""No silent wrong answers from the embedding engine: every row belongs to its key, a kept
converted backbone is trusted only as far as its hash, NaN never becomes a row or a
probability, bombs are refused from the header, identical pixels are not a broken backbone."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_class_folders, photo_like, save_image
from headstart.embedder.cache import open_cache


def _embed(run_cli, images, backbone, cache, *extra):
    code, out, err = run_cli("embed", "run", images, "-b", backbone, "--cache", cache, "--dtype", "float32",
                             "--json", "-q", *extra)
    return code, (json.loads(out) if out.strip() else {}), err


def _rows_by_key(cache_path) -> dict[str, np.ndarray]:
    cache = open_cache(cache_path)
    return dict(zip((str(k) for k in cache.keys), cache.load_features()))


def _clean_rows(run_cli, tmp_path, backbone, contents: list[bytes], name: str) -> dict[str, np.ndarray]:
    """Rows of a clean, undisturbed embedding of exactly these bytes."""
    folder = tmp_path / name
    for i, data in enumerate(contents):
        (folder / "x").mkdir(parents=True, exist_ok=True)
        (folder / "x" / f"{i:03d}.png").write_bytes(data)
    code, _, err = _embed(run_cli, folder, backbone, tmp_path / f"{name}.h5")
    assert code == 0, err
    return _rows_by_key(tmp_path / f"{name}.h5")


def test_files_changed_during_the_run_never_leave_a_wrong_row(tmp_path, run_cli, tiny_model_file, monkeypatch):
    """Bytes are hashed when listed and decoded later: a file overwritten in between used to get
    its new bytes' features under its old key, reused forever after."""
    import headstart.embedder.engine as engine

    images = tmp_path / "imgs"
    make_class_folders(images, per_class=4, ext=".png")
    changed, deleted = images / "cats" / "cats_0_1.png", images / "dogs" / "dogs_0_2.png"
    original = changed.read_bytes()
    save_image(tmp_path / "other.png", photo_like(np.random.default_rng(9), (40, 48), (10, 200, 90)))
    new_bytes = (tmp_path / "other.png").read_bytes()
    all_contents = [p.read_bytes() for p in sorted(images.rglob("*.png"))] + [new_bytes]
    real_read = engine.read_bytes

    def meddling_read(path):
        path = Path(path)
        if path == changed and changed.read_bytes() == original:
            changed.write_bytes(new_bytes)  # overwritten after hashing, before decoding
            save_image(images / "cats" / "added_late.png", photo_like(np.random.default_rng(5), (40, 48)))
        if path == deleted:
            deleted.unlink()
        return real_read(path)

    monkeypatch.setattr(engine, "read_bytes", meddling_read)
    code, report, err = _embed(run_cli, images, tiny_model_file, tmp_path / "c.h5")
    monkeypatch.setattr(engine, "read_bytes", real_read)
    assert code == 1, err
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons["cats/cats_0_1.png"].startswith("changed since it was listed")
    assert reasons["dogs/dogs_0_2.png"] == "file vanished before it could be read"
    assert report["rows"] == 6 and report["embedded"] == 6

    clean = _clean_rows(run_cli, tmp_path, tiny_model_file, all_contents, "clean")
    stored = _rows_by_key(tmp_path / "c.h5")
    assert set(stored) <= set(clean)
    for key, row in stored.items():  # every row is the embedding of the bytes its key names
        np.testing.assert_allclose(row, clean[key], rtol=1e-5, atol=1e-6)

    # The rerun embeds the new bytes and the file added mid-run; restoring the original bytes
    # then embeds those too: no stale row was kept under either key.
    code, report, err = _embed(run_cli, images, tiny_model_file, tmp_path / "c.h5")
    assert code == 0 and report["embedded"] == 2, err
    changed.write_bytes(original)
    code, report, err = _embed(run_cli, images, tiny_model_file, tmp_path / "c.h5")
    assert code == 0 and report["embedded"] == 1, err
    clean = _clean_rows(run_cli, tmp_path, tiny_model_file,
                        all_contents + [(images / "cats" / "added_late.png").read_bytes()], "clean2")
    for key, row in _rows_by_key(tmp_path / "c.h5").items():
        np.testing.assert_allclose(row, clean[key], rtol=1e-5, atol=1e-6)


def test_a_tampered_converted_backbone_is_detected_and_converted_again(tmp_path, run_cli, tiny_model_file,
                                                                       monkeypatch):
    from headstart.embedder.runtimes.litert import convert
    from headstart.embedder.tf_runtime import import_keras

    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=3)
    code, _, err = _embed(run_cli, images, tiny_model_file, tmp_path / "a.h5", "--runtime", "litert")
    assert code == 0, err
    (stored,) = (tmp_path / "home" / "converted" / "litert").glob("*.tflite")
    keras = import_keras()  # a valid flatbuffer with other numbers: the same network, weights x1.5
    model = keras.models.load_model(tiny_model_file)
    model.set_weights([w * 1.5 for w in model.get_weights()])
    stored.write_bytes(convert(model))

    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "b.h5",
                           "--dtype", "float32", "--runtime", "litert")
    assert code == 0, err
    assert "does not match the SHA-256 recorded when it was made" in err and "converting" in err
    a, b = _rows_by_key(tmp_path / "a.h5"), _rows_by_key(tmp_path / "b.h5")
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=1e-6, atol=1e-7)


def test_identical_pixels_are_not_a_broken_backbone(tmp_path, run_cli, tiny_model_file):
    """Two blank scans (different bytes, the same pixels) give the same features, rightly."""
    from PIL import Image, PngImagePlugin

    folder = tmp_path / "blank" / "scans"
    folder.mkdir(parents=True)
    for i in range(2):
        info = PngImagePlugin.PngInfo()
        info.add_text("page", str(i))  # different bytes ...
        Image.new("RGB", (40, 48), (250, 250, 250)).save(folder / f"{i}.png", pnginfo=info)  # ... same pixels
    code, report, err = _embed(run_cli, tmp_path / "blank", tiny_model_file, tmp_path / "c.h5")
    assert code == 0, err
    assert report["rows"] == 2


def test_decompression_bombs_are_refused_from_the_header(tmp_path, run_cli, tiny_model_file):
    from PIL import Image

    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    Image.new("L", (12000, 8000)).save(images / "cats" / "bomb.png")  # ~100 KB that decodes to 96 MP
    assert (images / "cats" / "bomb.png").stat().st_size < 200_000
    code, report, err = _embed(run_cli, images, tiny_model_file, tmp_path / "c.h5")
    assert code == 1, err
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons == {"cats/bomb.png": "too large (12000x8000 = 96 MP, over the 89 MP limit; raise it with "
                                        "--max-pixels)"}
    code, report, _ = _embed(run_cli, images, tiny_model_file, tmp_path / "d.h5", "--max-pixels", "1000")
    assert code == 1 and len(report["skipped"]) == 5  # 40x48 = 1920 pixels each: all over the limit
    assert all(s["reason"].startswith("too large (48x40") or s["reason"].startswith("too large (12000x8000")
               for s in report["skipped"])


def test_nan_features_never_become_rows(tmp_path, run_cli):
    """A network that overflows on bright images: those images fail, the others are kept."""
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    inputs = keras.Input((48, 48, 3))
    x = keras.layers.Rescaling(1e34)(inputs)  # bright pixels overflow float32 when pooled: inf
    x = keras.layers.Conv2D(2, 1, kernel_initializer="ones", bias_initializer="ones")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    model.save(tmp_path / "overflow.keras")
    images = tmp_path / "imgs" / "x"
    rng = np.random.default_rng(0)
    for i in range(3):
        save_image(images / f"dark_{i}.png", rng.integers(0, 2, (48, 48, 3)).astype(np.uint8))
    save_image(images / "bright.png", np.full((48, 48, 3), 250, np.uint8))
    code, report, err = _embed(run_cli, images.parent, tmp_path / "overflow.keras", tmp_path / "c.h5")
    assert code == 1, err
    assert report["skipped"] == [{"path": "x/bright.png", "reason": "the backbone produced NaN or infinite "
                                                                    "features for it"}]
    cache = open_cache(tmp_path / "c.h5")
    assert cache.num_rows == 3 and np.isfinite(cache.load_features()).all()


def test_bad_engine_options_are_one_line(tmp_path, run_cli, tiny_model_file):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5",
                           "--workers", "0", "-q")
    assert code == 2 and "--workers must be at least 1" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.h5").exists()


def test_an_unknown_layer_on_an_existing_cache_is_named(tmp_path, run_cli, tiny_model_file):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    assert _embed(run_cli, images, tiny_model_file, tmp_path / "c.h5")[0] == 0
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5",
                           "--dtype", "float32", "--layer", "nosuch", "-q")
    assert code == 2 and "--layer 'nosuch' is not a layer of the backbone" in err
    assert "fingerprint mismatch" not in err


def test_os_errors_are_bad_input_with_the_path_not_internal_errors(tmp_path, run_cli, tiny_model_file):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    a_file = tmp_path / "notes.txt"
    a_file.write_text("a file, not a folder")
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", a_file / "c.h5", "-q")
    assert code == 2, err
    assert "internal error" not in err and str(a_file) in err and len(err.strip().splitlines()) == 1
