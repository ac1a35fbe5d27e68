"""A few images predicted at once: a dense head runs in numpy (read from model.keras
without Keras), and `predict` on the LiteRT path imports neither TensorFlow nor
scikit-learn/scipy."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, make_class_folders, photo_like, save_image

HEAVY = ("tensorflow", "keras", "sklearn", "scipy")


def _keras_head(path: Path, dim: int, classes: int, hidden, dropout: float, standardize: bool, seed: int):
    """A head as heads.dense builds it, with random weights (so every layer matters), saved."""
    from headstart.embedder.tf_runtime import import_keras
    from headstart.heads.dense import build_dense_head
    from headstart.heads.standardize import Standardizer

    keras = import_keras()
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    standardizer = Standardizer.fit(rng.normal(3.0, 2.0, (64, dim)).astype(np.float32)) if standardize else None
    model = build_dense_head(dim, classes, hidden, dropout, standardizer)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    model.save(path)
    return model


@pytest.mark.parametrize("hidden, dropout, standardize", [((32,), 0.5, False), ((24, 12), 0.0, True), ((), 0.0, True)])
def test_numpy_dense_head_equals_keras(tmp_path, hidden, dropout, standardize):
    from headstart.heads.kinds.dense import DenseHead
    from headstart.heads.kinds.keras_mlp import read_keras_mlp

    model = _keras_head(tmp_path / "model.keras", 40, 5, hidden, dropout, standardize, seed=len(hidden))
    x = np.random.default_rng(1).normal(3.0, 3.0, (300, 40)).astype(np.float32)
    expected = np.asarray(model(x, training=False))
    mlp = read_keras_mlp(tmp_path / "model.keras")
    assert (mlp.feature_dim, mlp.num_classes, len(mlp.layers)) == (40, 5, len(hidden) + 1)
    np.testing.assert_allclose(mlp.predict_proba(x), expected, atol=1e-5, rtol=0)
    head = DenseHead.load(tmp_path)
    np.testing.assert_allclose(head.predict_proba(x), expected, atol=1e-5, rtol=0)
    assert head.feature_dim_ == 40
    assert head.model_.count_params() == model.count_params()  # the Keras model still loads on demand


def test_files_the_numpy_path_does_not_run_load_with_keras(tmp_path):
    from headstart.embedder.tf_runtime import import_keras
    from headstart.heads.kinds.base import ModelFileError
    from headstart.heads.kinds.dense import DenseHead
    from headstart.heads.kinds.keras_mlp import Unsupported, read_keras_mlp

    keras = import_keras()
    inputs = keras.Input((6,), name="features")
    x = keras.layers.Dense(4, activation="tanh", name="hidden_1")(inputs)  # not an activation headstart uses
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(x))
    folder = tmp_path / "tanh"
    folder.mkdir()
    model.save(folder / "model.keras")
    with pytest.raises(Unsupported, match="tanh"):
        read_keras_mlp(folder / "model.keras")
    x = np.random.default_rng(0).normal(size=(9, 6)).astype(np.float32)
    np.testing.assert_allclose(DenseHead.load(folder).predict_proba(x), np.asarray(model(x)), atol=1e-6)

    damaged = tmp_path / "damaged"
    damaged.mkdir()
    with zipfile.ZipFile(folder / "model.keras") as src, zipfile.ZipFile(damaged / "model.keras", "w") as dst:
        dst.writestr("config.json", src.read("config.json"))  # no weights file
    with pytest.raises(ModelFileError, match="cannot be loaded"):
        DenseHead.load(damaged)
    (damaged / "model.keras").write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match="cannot be loaded"):
        DenseHead.load(damaged)


_CHILD = """
import json, sys
from headstart import cli
code = cli.main(sys.argv[1:])
heavy = sorted(m for m in {heavy!r} if m in sys.modules)
print(json.dumps({{"code": code, "heavy": heavy}}), file=sys.stderr)
"""


def test_predict_with_a_dense_head_on_litert_imports_no_tensorflow(tmp_path, run_cli, tiny_model_file):
    images = tmp_path / "imgs"
    seen = make_class_folders(images, classes=("cats", "dogs", "owls"), per_class=6, size=(48, 48))[0]
    cache, run = tmp_path / "c.h5", tmp_path / "run"
    # In this process: the backbone converts to LiteRT once (kept in the session's HEADSTART_HOME).
    assert run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", cache, "--runtime", "litert",
                   "-q")[0] == 0
    assert run_cli("head", "train", "--cache", cache, "--epochs", "5", "--hidden", "16", "--standardize",
                   "--out", run, "-q")[0] == 0
    new = save_image(tmp_path / "new" / "one.jpg", photo_like(np.random.default_rng(5), (60, 70)))
    # `seen` is in the cache: its features come from there (h5py); the new image goes
    # through the backbone (LiteRT).
    args = ["predict", str(new), str(seen), "--run", str(run), "--cache", str(cache), "--runtime", "litert",
            "--format", "json"]
    code, out, _ = run_cli(*args)
    assert code == 0
    in_process = json.loads(out)
    assert len(in_process) == 2

    child = subprocess.run([sys.executable, "-c", _CHILD.format(heavy=HEAVY), *args], capture_output=True, text=True,
                           cwd=REPO_ROOT, timeout=300)  # HEADSTART_HOME (the session's store) is inherited
    status = json.loads(child.stderr.strip().splitlines()[-1])
    assert status["code"] == 0, child.stderr[-2000:]
    assert status["heavy"] == []  # no TensorFlow, Keras, scikit-learn or scipy on this path
    assert "1 from the cache, 1 through the backbone (litert)" in child.stderr
    got = json.loads(child.stdout)
    assert [r["label"] for r in got] == [r["label"] for r in in_process]
    assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in in_process], abs=1e-5)
