"""`headstart head train/eval/list/sweep` end to end on generated caches (CPU, seconds)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from headstart.embedder.cache import open_cache
from headstart.heads.runs import best_run, list_runs, load_run
from feature_caches import FINGERPRINT, make_cache

FAST_DENSE = ("--epochs", "15", "--hidden", "32", "--lr", "1e-2")
RUN_FILES = {"head.json", "metrics.json", "confusion.png", "misclassified.csv"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """3 overlapping classes (so there are mistakes to list), 60 images each, 16 features."""
    return make_cache(tmp_path_factory.mktemp("heads") / "c.h5", per_class=60, separation=1.6)


def _train(run_cli, cache, out, *extra):
    code, stdout, err = run_cli("head", "train", "--cache", cache, "--out", out, "--json", *extra)
    assert code == 0, err
    return json.loads(stdout)


def _val_rows(cache_path, run):
    from headstart.heads.data import load_labelled

    split = run.meta["split"]
    data = load_labelled(cache_path, split["val_fraction"], split["seed"])
    x, y, paths = data.subset("val")
    return x, y


@pytest.mark.parametrize("head,extra", [("dense", FAST_DENSE), ("logreg", ()), ("svm", ()), ("knn", ("--k", "5"))])
def test_each_head_beats_chance_and_writes_a_complete_run(tmp_path, run_cli, cache, head, extra):
    report = _train(run_cli, cache, tmp_path / head, "--head", head, *extra)
    out = tmp_path / head
    files = {p.name for p in out.iterdir()}
    model = "model.keras" if head == "dense" else "model.npz"
    assert RUN_FILES | {model} <= files
    assert ("history.png" in files) == (head == "dense")
    assert not list(tmp_path.glob(".*"))  # the temporary folder was renamed away

    meta = json.loads((out / "head.json").read_text())
    assert meta["kind"] == "head" and meta["head_type"] == head and meta["classes"] == ["ants", "bees", "wasps"]
    assert meta["fingerprint"] == FINGERPRINT and meta["feature_dim"] == 16
    assert meta["cache"]["path"] == str(Path(cache).resolve()) and meta["cache"]["images_root"]
    assert meta["split"]["source"] == "hash" and meta["split"]["val_fraction"] == 0.2 and meta["split"]["seed"] == 0
    assert sum(meta["split"]["counts"].values()) == 180
    for key in ("seed", "val_fraction", "standardize"):
        assert key in meta["params"]
    assert meta["train_seconds"] > 0 and meta["created"] and meta["versions"]["numpy"]
    assert (meta["best_epoch"] is not None) == (head == "dense")

    accuracy = meta["metrics"]["accuracy"]
    assert accuracy > 0.7, accuracy  # chance is 1/3
    assert report["metrics"]["accuracy"] == accuracy

    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "log_loss", "per_class", "confusion_matrix", "top_k_accuracy"} <= set(metrics)
    assert set(metrics["per_class"]) == {"ants", "bees", "wasps"}
    assert {"precision", "recall", "f1", "support"} == set(metrics["per_class"]["ants"])
    with open(out / "misclassified.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and list(rows[0]) == ["path", "true", "predicted", "confidence", "abs_path"]  # resolvable paths
    assert len(rows) == metrics["misclassified"]

    # The run reloads with no other input and predicts what was evaluated.
    run = load_run(out)
    x_val, y_val = _val_rows(cache, run)
    proba = run.predict_proba(x_val)
    assert proba.shape == (len(y_val), 3)
    assert np.mean(proba.argmax(1) == y_val) == pytest.approx(accuracy)


def test_dense_head_is_a_keras_model_with_standardisation_inside(tmp_path, run_cli):
    # Validation rows are shifted by +50: statistics fitted on all rows would show it.
    layout = {name: ["val" if i % 4 == 0 else "train" for i in range(40)] for name in ("ants", "bees", "wasps")}
    cache = make_cache(tmp_path / "c.h5", per_class=40, splits=layout, offset={"val": 50.0})
    _train(run_cli, cache, tmp_path / "run", *FAST_DENSE, "--standardize", "--head", "dense")
    run = load_run(tmp_path / "run")
    head = run.keras_head()
    assert tuple(head.inputs[0].shape) == (None, 16) and head.inputs[0].dtype == "float32"
    assert tuple(head.outputs[0].shape) == (None, 3)
    first = head.layers[1]
    assert type(first).__name__ == "Normalization"
    opened = open_cache(cache)
    features = opened.file_features()
    train_mean = features[opened.splits == "train"].mean(axis=0)
    np.testing.assert_allclose(np.asarray(first.mean).reshape(-1), train_mean, rtol=1e-4, atol=1e-4)
    assert run.meta["split"]["source"] == "layout" and run.meta["split"]["counts"]["val"] == 30
    probabilities = np.asarray(head(features[:7]))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(run.predict_proba(features[:7]), probabilities, atol=1e-6)


def test_standardisation_and_fitting_see_training_rows_only(tmp_path, run_cli):
    from sklearn.linear_model import LogisticRegression

    layout = {name: ["val" if i % 4 == 0 else "train" for i in range(40)] for name in ("ants", "bees", "wasps")}
    cache = make_cache(tmp_path / "c.h5", per_class=40, splits=layout, offset={"val": 50.0})
    _train(run_cli, cache, tmp_path / "run", "--head", "logreg", "--standardize")
    with np.load(tmp_path / "run" / "model.npz", allow_pickle=False) as data:
        mean, scale, coef = data["mean"], data["scale"], data["coef"]
    opened = open_cache(cache)
    features, labels = opened.file_features(), opened.labels
    train = opened.splits == "train"
    np.testing.assert_allclose(mean, features[train].mean(axis=0), rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(mean - features.mean(axis=0)) > 5)  # all rows would include the +50 shift
    used_c = json.loads((tmp_path / "run" / "head.json").read_text())["params"]["C"]  # cross-validated
    reference = LogisticRegression(C=used_c, max_iter=1000, random_state=0).fit((features[train] - mean) / scale,
                                                                                labels[train])
    np.testing.assert_allclose(coef, reference.coef_, rtol=1e-4, atol=1e-5)


def test_same_seed_same_metrics_and_another_seed_differs(tmp_path, run_cli, cache):
    runs = [_train(run_cli, cache, tmp_path / name, *FAST_DENSE, "--seed", seed)
            for name, seed in (("a", "1"), ("b", "1"), ("c", "2"))]
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in "abc"]
    assert metrics[0]["history"] == metrics[1]["history"]
    assert runs[0]["metrics"] == runs[1]["metrics"] and runs[0]["best_epoch"] == runs[1]["best_epoch"]
    assert metrics[0]["history"]["loss"] != metrics[2]["history"]["loss"]


def test_eval_reproduces_metrics_and_refuses_another_fingerprint(tmp_path, run_cli, cache):
    _train(run_cli, cache, tmp_path / "run", "--head", "logreg")
    recorded = json.loads((tmp_path / "run" / "head.json").read_text())["metrics"]
    code, out, err = run_cli("head", "eval", tmp_path / "run", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["split"] == "val" and report["metrics"]["accuracy"] == pytest.approx(recorded["accuracy"])
    assert (Path(report["out"]) / "metrics.json").exists() and (Path(report["out"]) / "confusion.png").exists()

    # a new labelled set of the same backbone: every labelled image is evaluated
    fresh = make_cache(tmp_path / "fresh.h5", per_class=10, separation=1.6, prefix="new-")
    code, out, err = run_cli("head", "eval", tmp_path / "run", "--cache", fresh, "--json", "--out", tmp_path / "ev")
    assert code == 0, err
    assert json.loads(out)["split"] == "all" and json.loads(out)["metrics"]["n"] == 30

    other = make_cache(tmp_path / "other.h5", per_class=10, fingerprint=dict(FINGERPRINT, architecture="OtherNet"))
    code, out, err = run_cli("head", "eval", tmp_path / "run", "--cache", other)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "fingerprint mismatch" in err and "OtherNet" in err and "TestNet" in err


def test_sweep_list_and_best_run(tmp_path, run_cli, cache):
    runs = tmp_path / "runs"
    code, out, err = run_cli("head", "sweep", "--cache", cache, "--head", "dense,logreg", "--lr", "1e-2,1e-3",
                             "--hidden", "16", "--epochs", "8", "--C", "0.5", "--runs-dir", runs, "--out",
                             runs / "sw", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert len(report["runs"]) == 3  # 2 dense (lr) x 1 logreg (C); lr/hidden/epochs are not logreg's
    heads = sorted((r["head_type"], r["params"].get("lr"), r["params"].get("C")) for r in report["runs"])
    assert heads == [("dense", 0.001, None), ("dense", 0.01, None), ("logreg", None, 0.5)]
    splits = {json.dumps(json.loads((Path(r["run"]) / "head.json").read_text())["split"]) for r in report["runs"]}
    assert len(splits) == 1  # one split for the whole sweep
    board = [row["accuracy"] for row in report["leaderboard"]]
    assert board == sorted(board, reverse=True)

    # A fine-tuned run (written by another stage) and an unfinished folder show up gracefully.
    (runs / "ft").mkdir()
    (runs / "ft" / "head.json").write_text(json.dumps({"kind": "finetuned", "head_type": "dense", "metrics": {
        "accuracy": 0.99}, "finetuned_from": str(runs / "sw" / "01-dense"), "created": "2000-01-01T00:00:00"}))
    (runs / "broken").mkdir()
    (runs / "broken" / "metrics.json").write_text("{}")
    code, out, err = run_cli("head", "list", "--runs-dir", runs, "--json")
    assert code == 0
    listed = json.loads(out)
    assert [r["kind"] for r in listed["runs"]].count("finetuned") == 1 and len(listed["runs"]) == 4
    assert listed["runs"][0]["kind"] == "finetuned"  # sorted by val accuracy
    assert listed["incomplete"] == [str(runs / "broken")]
    code, out, err = run_cli("head", "list", "--runs-dir", runs, "--sort", "time")
    assert code == 0 and "finetuned" in out and "logreg" in out and "incomplete" in err
    times = [r["train_seconds"] for r in json.loads(run_cli("head", "list", "--runs-dir", runs, "--sort", "time",
                                                            "--json")[1])["runs"] if r["train_seconds"] is not None]
    assert times == sorted(times)

    assert len(list_runs(runs)) == 4
    assert best_run(runs).meta["kind"] == "finetuned"
    best_dense = best_run(runs, head_type="dense")
    assert best_dense.kind == "head" and best_dense.head_type == "dense"


def test_default_cache_is_the_newest_and_default_out_is_timestamped(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_cache(tmp_path / "cache" / "old.h5", per_class=20)
    newest = make_cache(tmp_path / "cache" / "new.h5", per_class=20, seed=1)
    code, out, err = run_cli("head", "train", "--head", "knn", "--k", "3")
    assert code == 0, err
    assert f"using cache {Path('cache') / 'new.h5'}" in err
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.endswith("-knn") and run.name[:8].isdigit()
    assert json.loads((run / "head.json").read_text())["cache"]["path"] == str(newest.resolve())
    assert "val:" in out and "accuracy" in out


def test_label_conflicts_are_left_out_with_exit_1(tmp_path, run_cli):
    from feature_caches import key_of

    cache = make_cache(tmp_path / "c.h5", per_class=20, extra=[
        ("wasps/copy_of_an_ant.jpg", key_of("0-ants-0"), 2, "", np.zeros(16))])
    code, out, err = run_cli("head", "train", "--cache", cache, "--head", "logreg", "--out", tmp_path / "r", "-q")
    assert code == 1
    assert "same bytes under different classes" in err and "copy_of_an_ant.jpg" in err
    meta = json.loads((tmp_path / "r" / "head.json").read_text())
    assert meta["split"]["excluded"]["label_conflicts"] == 1 and sum(meta["split"]["counts"].values()) == 59


def test_a_test_split_is_evaluated_separately_and_never_trained_on(tmp_path, run_cli):
    pattern = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    layout = {name: pattern * 3 for name in ("ants", "bees", "wasps")}
    cache = make_cache(tmp_path / "c.h5", per_class=30, splits=layout, separation=2.5)
    report = _train(run_cli, cache, tmp_path / "r", "--head", "svm")
    assert report["split"]["counts"] == {"train": 54, "val": 18, "test": 18}
    assert report["metrics"]["n"] == 18 and report["test_metrics"]["n"] == 18
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["test"]["n"] == 18
    code, out, err = run_cli("head", "eval", tmp_path / "r", "--split", "test", "--json", "--out", tmp_path / "ev")
    assert code == 0, err
    assert json.loads(out)["metrics"]["accuracy"] == pytest.approx(report["test_metrics"]["accuracy"])


def test_the_training_loop_matches_keras_fit():
    """The hand-written epoch loop is model.fit with class_weight, label smoothing and L2:
    full-batch steps from the same initial weights end at the same weights."""
    from headstart.embedder.tf_runtime import import_keras
    from headstart.heads.dense import build_dense_head
    from headstart.heads.kinds import make_head
    from headstart.heads.kinds.base import balanced_class_weights

    keras = import_keras()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 6)).astype(np.float32)
    y = (x[:, 0] > 0.3).astype(np.int64) + (x[:, 1] > 0.8)
    x_val, y_val = x[:16], y[:16]
    head = make_head("dense", epochs=4, hidden="8", dropout=0.0, l2=1e-2, label_smoothing=0.1, lr=1e-2,
                     batch_size=64, patience=0, class_weight="balanced")
    weights = balanced_class_weights(y, 3)
    ours = head.fit(x, y, num_classes=3, seed=3, validation=(x_val, y_val)).model_

    keras.utils.set_random_seed(3)
    initial = build_dense_head(6, 3, (8,), 0.0).get_weights()
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-2))(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", kernel_regularizer=keras.regularizers.L2(1e-2))(hidden)
    reference = keras.Model(inputs, outputs)
    reference.set_weights(initial)
    reference.compile(optimizer=keras.optimizers.Adam(1e-2),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1))
    reference.fit(x, np.eye(3)[y], batch_size=64, epochs=4, shuffle=False, verbose=0,
                  class_weight={i: float(w) for i, w in enumerate(weights)})
    for got, want in zip(ours.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
