"""predict (with the cache fast path) and export: the exported model predicts what
`headstart predict` predicts, for keras and savedmodel exactly, TFLite within tolerance."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import make_class_folders, photo_like, save_image

TFLITE_TOLERANCE = 1e-4  # absolute, on probabilities (float32 TFLite vs TensorFlow)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_file):
    from headstart import cli

    work = tmp_path_factory.mktemp("pe")
    images = work / "imgs"
    make_class_folders(images, classes=("cats", "dogs", "owls"), per_class=8, size=(48, 48))
    cache, run = work / "c.h5", work / "runs" / "dense"
    assert cli.main(["embed", "run", str(images), "-b", str(tiny_model_file), "--cache", str(cache), "-q"]) == 0
    assert cli.main(["head", "train", "--cache", str(cache), "--epochs", "30", "--hidden", "32",
                     "--val-fraction", "0.25", "--out", str(run), "-q"]) == 0
    new = work / "new"
    rng = np.random.default_rng(42)
    for i in range(5):
        save_image(new / f"unseen_{i}.png", photo_like(rng, (60, 70)))
    return {"work": work, "images": images, "cache": cache, "run": run, "new": new}


def _predict(run_cli, *args):
    code, out, err = run_cli("predict", *args, "--format", "json", "-q")
    return code, (json.loads(out) if out.strip() else []), err


def test_fast_path_uses_cached_features_and_agrees_with_the_backbone(run_cli, trained):
    code, cached, _ = _predict(run_cli, trained["images"], "--run", trained["run"])
    assert code == 0 and len(cached) == 24
    code, fresh, _ = _predict(run_cli, trained["images"], "--run", trained["run"], "--no-cache")
    assert code == 0
    by_path = {r["path"]: r for r in fresh}
    for row in cached:
        other = by_path[row["path"]]
        assert row["label"] == other["label"]
        # cached features are float16: probabilities agree to ~1e-3
        assert abs(row["probability"] - other["probability"]) < 1e-2
    code, out, err = run_cli("predict", trained["images"], trained["new"], "--run", trained["run"], "--format", "csv")
    assert code == 0
    assert "24 from the cache, 5 through the backbone" in err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows[0].keys() == {"path", "label", "probability", "top_k"} and len(rows) == 29
    assert rows[0]["top_k"].count(":") == 3


def test_bad_files_are_skipped_with_exit_1(tmp_path, run_cli, trained):
    folder = tmp_path / "mixed"
    shutil.copytree(trained["new"], folder)
    (folder / "broken.jpg").write_text("not an image")
    code, rows, err = _predict(run_cli, folder, "--run", trained["run"])
    assert code == 1 and len(rows) == 5
    assert "broken.jpg: not an image" in err


def _pixels(paths, size):
    from headstart.embedder.decode import CURRENT

    return np.stack([CURRENT.load(Path(p).read_bytes(), size) for p in paths])


def test_export_keras_and_savedmodel_equal_predict(tmp_path, run_cli, trained):
    from headstart.embedder.tf_runtime import import_keras, import_tf

    keras, tf = import_keras(), import_tf()
    files = sorted(trained["new"].glob("*.png"))
    code, rows, _ = _predict(run_cli, *files, "--run", trained["run"], "--top-k", "3")
    assert code == 0
    expected = np.asarray([[t["probability"] for t in sorted(r["top_k"], key=lambda t: t["label"])] for r in rows])
    pixels = _pixels(files, 48)

    assert run_cli("export", trained["run"], "--format", "keras", "--out", tmp_path / "k")[0] == 0
    model = keras.models.load_model(tmp_path / "k" / "model.keras")
    np.testing.assert_allclose(np.asarray(model(pixels)), expected, atol=1e-5)
    assert (tmp_path / "k" / "labels.txt").read_text().split() == ["cats", "dogs", "owls"]

    assert run_cli("export", trained["run"], "--format", "savedmodel", "--out", tmp_path / "s")[0] == 0
    loaded = tf.saved_model.load(str(tmp_path / "s" / "saved_model"))
    np.testing.assert_allclose(loaded.serve(tf.constant(pixels)).numpy(), expected, atol=1e-5)
    as_uint8 = np.round(pixels).astype(np.uint8)
    np.testing.assert_allclose(loaded.serve_uint8(tf.constant(as_uint8)).numpy(),
                               loaded.serve(tf.constant(as_uint8.astype(np.float32))).numpy(), atol=1e-6)


def _tflite_interpreter(path: Path):
    """LiteRT's interpreter (the maintained one), else TensorFlow's deprecated copy."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        from headstart.embedder.tf_runtime import import_tf

        Interpreter = import_tf().lite.Interpreter
    return Interpreter(model_path=str(path))


def test_export_tflite_within_tolerance(tmp_path, run_cli, trained):
    files = sorted(trained["new"].glob("*.png"))
    code, rows, _ = _predict(run_cli, *files, "--run", trained["run"])
    expected = np.asarray([[t["probability"] for t in sorted(r["top_k"], key=lambda t: t["label"])] for r in rows])
    assert run_cli("export", trained["run"], "--format", "tflite", "--out", tmp_path / "t")[0] == 0
    interpreter = _tflite_interpreter(tmp_path / "t" / "model.tflite")
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    got = []
    for image in _pixels(files, 48):
        interpreter.resize_tensor_input(inp["index"], [1, *image.shape])  # the model takes any size
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], image[None].astype(np.float32))
        interpreter.invoke()
        got.append(interpreter.get_tensor(out["index"])[0])
    np.testing.assert_allclose(np.asarray(got), expected, atol=TFLITE_TOLERANCE)


def test_export_and_predict_bad_input(tmp_path, run_cli, trained):
    code, _, err = run_cli("export", trained["run"], "--format", "onnx", "--out", tmp_path / "x")
    assert code == 2 and "unsupported export format 'onnx'" in err
    code, _, err = run_cli("predict", tmp_path / "nothing_here", "--run", trained["run"])
    assert code == 2 and "no such file or folder" in err
    code, _, err = run_cli("predict", trained["new"], "--run", tmp_path / "no_run")
    assert code == 2
    sk = tmp_path / "knn"
    assert run_cli("head", "train", "--cache", trained["cache"], "--head", "knn", "--out", sk, "-q")[0] == 0
    code, _, err = run_cli("export", sk, "--format", "keras", "--out", tmp_path / "y")
    assert code == 2 and "train a dense head first" in err
    code, rows, _ = _predict(run_cli, trained["new"], "--run", sk)  # scikit-learn heads do predict
    assert code == 0 and len(rows) == 5


def test_finetuned_runs_predict_and_export_too(tmp_path, run_cli, trained):
    code, out, err = run_cli("finetune", "--from", trained["run"], "--out", tmp_path / "ft", "--epochs", "1",
                             "--unfreeze", "1", "-q")
    assert code == 0, err
    files = sorted(trained["new"].glob("*.png"))
    code, rows, _ = _predict(run_cli, *files, "--run", tmp_path / "ft")
    assert code == 0 and len(rows) == 5
    assert run_cli("export", tmp_path / "ft", "--format", "keras", "--out", tmp_path / "k")[0] == 0
    from headstart.embedder.tf_runtime import import_keras

    model = import_keras().models.load_model(tmp_path / "k" / "model.keras")
    expected = np.asarray([[t["probability"] for t in sorted(r["top_k"], key=lambda t: t["label"])] for r in rows])
    np.testing.assert_allclose(np.asarray(model(_pixels(files, 48))), expected, atol=1e-5)


def test_a_batch_of_only_bad_files_loses_nothing(tmp_path, run_cli, trained):
    """Predict the good files, list the bad ones, exit 1 (a batch holding only undecodable
    files used to fail the whole command: 'expects features of ... got shape [0, 0]')."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_bad.jpg").write_text("not an image")
    (folder / "b_bad.png").write_bytes(b"")
    for f in sorted(trained["new"].glob("*.png"))[:3]:
        shutil.copy(f, folder / f"z_{f.name}")
    code, rows, err = _predict(run_cli, folder, "--run", trained["run"], "--batch-size", "2", "--no-cache")
    assert code == 1, err
    assert sorted(Path(r["path"]).name for r in rows) == [f"z_unseen_{i}.png" for i in range(3)]
    assert "a_bad.jpg: not an image" in err and "b_bad.png: empty file" in err


def test_a_named_cache_that_does_not_fit_is_an_error(tmp_path, run_cli, trained, tiny_model_file):
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"not hdf5 at all")
    code, _, err = run_cli("predict", trained["images"], "--run", trained["run"], "--cache", damaged, "-q")
    assert code == 2 and "--cache" in err and "damaged" in err and len(err.strip().splitlines()) == 1
    other = tmp_path / "other.h5"  # the same images embedded at another size: another fingerprint
    assert run_cli("embed", "run", trained["images"], "-b", tiny_model_file, "--pooling", "max",
                   "--cache", other, "-q")[0] == 0
    code, _, err = run_cli("predict", trained["images"], "--run", trained["run"], "--cache", other, "-q")
    assert code == 2 and "fingerprint mismatch" in err and "pooling" in err
    code, _, err = run_cli("predict", trained["images"], "--run", trained["run"], "--cache", tmp_path / "none.h5")
    assert code == 2 and "no such cache file" in err


def test_nan_rows_in_a_cache_are_refused_not_printed(tmp_path, run_cli, trained):
    """NaN features gave NaN probabilities with exit 0; every reader checks the rows it uses."""
    import h5py

    poisoned = tmp_path / "poisoned.h5"
    shutil.copy(trained["cache"], poisoned)
    with h5py.File(poisoned, "r+") as h5:
        features = h5["embeddings/features"]
        features[0] = np.nan
    code, out, err = run_cli("predict", trained["images"], "--run", trained["run"], "--cache", poisoned)
    assert code == 2 and not out
    assert "1 of the 24 feature rows to use hold NaN or inf" in err
    assert "headstart embed run" in err


def test_exported_models_resize_inside_like_predict(tmp_path, run_cli, trained):
    """Full-size images, no resizing by the caller: every format agrees with predict (it once
    took a fixed size, and a caller's own resize rule could flip a class)."""
    from PIL import Image

    from headstart.embedder.tf_runtime import import_keras, import_tf

    big = tmp_path / "big"
    rng = np.random.default_rng(3)
    for i in range(4):
        save_image(big / f"photo_{i}.jpg", photo_like(rng, (150 + 20 * i, 210)))
    files = sorted(big.glob("*.jpg"))
    code, rows, _ = _predict(run_cli, *files, "--run", trained["run"], "--no-cache")
    assert code == 0
    expected = np.asarray([[t["probability"] for t in sorted(r["top_k"], key=lambda t: t["label"])] for r in rows])
    full = [np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) for f in files]  # as a user decodes

    keras, tf = import_keras(), import_tf()
    assert run_cli("export", trained["run"], "--format", "keras", "--out", tmp_path / "k")[0] == 0
    model = keras.models.load_model(tmp_path / "k" / "model.keras")
    got = np.concatenate([np.asarray(model(image[None])) for image in full])
    np.testing.assert_allclose(got, expected, atol=2e-3)  # JPEG DCT scaling and uint8 rounding differ slightly
    assert (got.argmax(1) == expected.argmax(1)).all()

    assert run_cli("export", trained["run"], "--format", "savedmodel", "--out", tmp_path / "s")[0] == 0
    loaded = tf.saved_model.load(str(tmp_path / "s" / "saved_model"))
    got = np.concatenate([loaded.serve(tf.constant(image[None])).numpy() for image in full])
    np.testing.assert_allclose(got, expected, atol=2e-3)

    assert run_cli("export", trained["run"], "--format", "tflite", "--out", tmp_path / "t")[0] == 0
    interpreter = _tflite_interpreter(tmp_path / "t" / "model.tflite")
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    got = []
    for image in full:
        interpreter.resize_tensor_input(inp["index"], [1, *image.shape])
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        got.append(interpreter.get_tensor(out["index"])[0])
    np.testing.assert_allclose(np.asarray(got), expected, atol=2e-3)
