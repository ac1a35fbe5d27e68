"""scikit-learn heads: the arrays in model.npz, re-read with allow_pickle=False, predict exactly
what scikit-learn predicts; and the metrics agree with scikit-learn's."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from headstart.heads.evaluate import compute_metrics, misclassified_rows
from headstart.heads.kinds import get_kind, make_head
from headstart.heads.linear_svm import SquaredHingeSVC
from headstart.heads.standardize import Standardizer


def _blobs(classes: int, n: int = 240, dim: int = 12, seed: int = 0, overlap: float = 1.2):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(0, 1, (classes, dim)) * 2
    x = (centers[y] + rng.normal(0, overlap, (n, dim)) + 3.0).astype(np.float32)  # offset: standardising matters
    return x, y


@pytest.mark.parametrize("head", ["logreg", "svm", "knn"])
@pytest.mark.parametrize("classes", [2, 4])
@pytest.mark.parametrize("standardize", [False, True])
def test_reloaded_numpy_predictor_equals_sklearn_predict_proba(tmp_path, head, classes, standardize):
    x, y = _blobs(classes)
    x_new, _ = _blobs(classes, n=97, seed=1)
    fit = make_head(head, **({"k": 7} if head == "knn" else {}))
    scaler = Standardizer.fit(x) if standardize else None
    fit.fit(x, y, num_classes=classes, standardizer=scaler)
    assert fit.save(tmp_path) == "model.npz"
    reloaded = get_kind(head).load(tmp_path)
    expected = fit.estimator_.predict_proba(scaler.transform(x_new) if scaler else x_new)
    got = reloaded.predict_proba(x_new)
    assert got.shape == (97, classes)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-9)
    assert np.mean(got.argmax(1) == fit.estimator_.predict(scaler.transform(x_new) if scaler else x_new)) == 1.0


def test_model_npz_holds_only_numeric_arrays(tmp_path):
    x, y = _blobs(3)
    make_head("svm").fit(x, y, num_classes=3, standardizer=Standardizer.fit(x)).save(tmp_path)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as data:  # would raise on object arrays
        kinds = {name: data[name].dtype.kind for name in data.files}
    assert set(kinds) == {"head_type", "format_version", "coef", "intercept", "calib_a", "calib_b", "mean", "scale"}
    assert all(kind in "fiuU" for kind in kinds.values()), kinds
    with zipfile.ZipFile(tmp_path / "model.npz") as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())


def test_squared_hinge_svc_solves_linearsvc_objective():
    from sklearn.svm import LinearSVC

    for classes in (2, 3):
        x, y = _blobs(classes, n=200, dim=8, overlap=2.0)
        x = x.astype(np.float64)
        reference = LinearSVC(C=0.5, dual=False, tol=1e-10, max_iter=100000).fit(x, y)
        ours = SquaredHingeSVC(C=0.5, tol=1e-10, max_iter=100000).fit(x, y)
        assert ours.converged_
        np.testing.assert_allclose(ours.decision_function(x), reference.decision_function(x), atol=1e-5)


def test_metrics_agree_with_sklearn():
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, log_loss, top_k_accuracy_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 300)
    logits = rng.normal(0, 1, (300, 6)) + 2.0 * np.eye(6)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    classes = [f"c{i}" for i in range(6)]
    m = compute_metrics(y, proba, classes)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, proba.argmax(1)))
    assert m["macro_f1"] == pytest.approx(f1_score(y, proba.argmax(1), average="macro"))
    assert m["log_loss"] == pytest.approx(log_loss(y, proba, labels=range(6)))
    assert m["top_k_accuracy"]["3"] == pytest.approx(top_k_accuracy_score(y, proba, k=3, labels=range(6)))
    assert m["top_k_accuracy"]["5"] == pytest.approx(top_k_accuracy_score(y, proba, k=5, labels=range(6)))
    assert m["confusion_matrix"] == confusion_matrix(y, proba.argmax(1)).tolist()
    assert sum(v["support"] for v in m["per_class"].values()) == 300
    rows = misclassified_rows(y, proba, classes, [f"p{i}" for i in range(300)])
    assert len(rows) == m["misclassified"]
    confidences = [r["confidence"] for r in rows]
    assert confidences == sorted(confidences, reverse=True)  # the most confident mistakes first
    empty = compute_metrics([], np.zeros((0, 6)), classes)
    assert empty["n"] == 0 and empty["accuracy"] is None
    two = compute_metrics([0, 1], np.array([[0.9, 0.1], [0.2, 0.8]]), ["a", "b"])
    assert two["top_k_accuracy"] == {} and two["accuracy"] == 1.0
