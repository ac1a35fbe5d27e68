"""Head kinds: the registry is the one place a kind lives (protocol, options, errors, loading),
old run folders still load, ncm's rule and calibration, and logreg's cross-validated C."""

from __future__ import annotations

import inspect
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from headstart.embedder.cache import FileRecord, write_cache
from headstart.heads.kinds import FitReport, Head, get_kind, kind_names, make_head, option_table
from headstart.heads.kinds.arrays import l2_normalize
from feature_caches import FINGERPRINT, key_of, make_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("kinds") / "c.h5", per_class=30, separation=1.6)


def _blobs(classes: int, n: int = 240, dim: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(0, 1, (classes, dim)) * 2
    return (centers[y] + rng.normal(0, 1.2, (n, dim)) + 3.0).astype(np.float32), y


# ------------------------------------------------------------------------------ registry


def test_every_kind_follows_the_protocol(tmp_path):
    x, y = _blobs(3)
    assert set(kind_names()) == {"dense", "logreg", "svm", "knn", "ncm"}
    for name in kind_names():
        kind = get_kind(name)
        assert kind.name == name and issubclass(kind, Head)
        # hyper-parameters are exactly the __init__ arguments, defaults included
        signature = inspect.signature(kind.__init__).parameters
        assert kind.param_names() == [p for p in signature if p != "self"]
        assert kind().get_params() == {p: signature[p].default for p in kind.param_names()}
        assert set(kind.options) <= set(kind.param_names())
        extra = {"epochs": 3, "hidden": "8"} if name == "dense" else {}
        head = make_head(name, **extra)
        fitted = head.fit(x, y, num_classes=3, seed=0, validation=(x[:30], y[:30]) if kind.uses_validation else None)
        assert fitted is head and isinstance(head.report_, FitReport)
        folder = tmp_path / name
        folder.mkdir()
        assert head.save(folder) == kind.model_file
        again = kind.load(folder, kind.model_file)
        np.testing.assert_allclose(again.predict_proba(x[:20]), head.predict_proba(x[:20]), rtol=1e-5, atol=1e-6)
        assert head.clone().get_params() == head.get_params() and not hasattr(head.clone(), "report_")


def test_command_line_options_come_from_the_registry(run_cli):
    code, train_help, _ = run_cli("head", "train", "--help")
    assert code == 0
    code, sweep_help, _ = run_cli("head", "sweep", "--help")
    assert code == 0
    for name, (option, kinds) in option_table().items():
        assert option.flag in train_help and option.flag in sweep_help, option.flag
    for name in kind_names():
        assert name in train_help
    assert "logreg/svm" in " ".join(train_help.split())  # --C names the kinds it applies to


class PriorHead(Head):
    """A toy kind for the extension test: class frequencies, smoothed (it lives in this file)."""

    name = "prior"
    summary = "class frequencies"
    options = {}

    def __init__(self, smoothing: float = 1.0):
        self.smoothing = smoothing

    def fit(self, X, y, *, num_classes, seed=0, standardizer=None, validation=None, on_epoch=None):
        counts = np.bincount(y, minlength=num_classes) + float(self.smoothing)
        self.prior_ = counts / counts.sum()
        self.report_ = FitReport(info={"rows": int(len(y))})
        return self

    def predict_proba(self, X):
        return np.tile(self.prior_, (len(X), 1))

    def save(self, folder):
        np.save(Path(folder) / "prior.npy", self.prior_)
        return "prior.npy"

    @classmethod
    def load(cls, folder, model_file=None):
        head = cls()
        head.prior_ = np.load(Path(folder) / (model_file or "prior.npy"))
        return head


def test_a_new_kind_is_one_class_and_one_registry_line(tmp_path, cache, monkeypatch):
    """Register a kind from another module: training, head.json, loading, and the 'does not
    apply' errors all follow from the one registry line."""
    from headstart.embedder.errors import UsageError
    from headstart.heads.kinds import base
    from headstart.heads.params import make_params
    from headstart.heads.runs import load_run
    from headstart.heads.train import train_head

    monkeypatch.setitem(base.KINDS, "prior", f"{__name__}:PriorHead")
    assert sys.modules[__name__].PriorHead is get_kind("prior")
    report = train_head(make_params("prior", smoothing=2.0), cache=cache, out=tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "head.json").read_text())
    assert meta["head_type"] == "prior" and meta["model_file"] == "prior.npy"
    assert meta["params"]["smoothing"] == 2.0 and meta["fit_info"] == {"rows": report.split["counts"]["train"]}
    run = load_run(tmp_path / "run")
    np.testing.assert_allclose(run.predict_proba(np.zeros((2, 16))).sum(axis=1), 1.0)
    with pytest.raises(UsageError, match="--hidden does not apply to --head prior"):
        make_params("prior", hidden="8")
    with pytest.raises(UsageError, match="unknown head 'forest'; use one of dense, logreg, svm, knn, ncm, prior"):
        make_params("forest")


def test_options_that_do_not_apply_to_ncm_are_refused(tmp_path, run_cli, cache):
    code, _, err = run_cli("head", "train", "--cache", cache, "--head", "ncm", "--C", "1", "--out", tmp_path / "r")
    assert code == 2 and "--C does not apply to --head ncm (only to logreg, svm)" in err
    code, _, err = run_cli("head", "sweep", "--cache", cache, "--head", "ncm,knn", "--lr", "1e-3")
    assert code == 2 and "--lr applies to none of the heads in this sweep (ncm, knn)" in err
    assert not (tmp_path / "r").exists()


def test_sweep_takes_every_kind_and_per_kind_grids(tmp_path, run_cli, cache):
    code, out, err = run_cli("head", "sweep", "--cache", cache, "--head", "knn,ncm,logreg", "--k", "3,5", "--C", "0.1",
                             "--out", tmp_path / "sw", "--json")
    assert code == 0, err
    runs = json.loads(out)["runs"]
    assert sorted((r["head_type"], r["params"].get("k"), r["params"].get("C")) for r in runs) == [
        ("knn", 3, None), ("knn", 5, None), ("logreg", None, 0.1), ("ncm", None, None)]
    assert all(r["metrics"]["accuracy"] > 0.7 for r in runs)


# --------------------------------------------------------------------- old run folders


def _old_head_json(head_type: str, model_file: str | None, classes, dim: int) -> dict:
    """head.json exactly as headstart wrote it before the kinds registry (format 1)."""
    meta = {
        "kind": "head", "format_version": 1, "head_type": head_type, "classes": list(classes),
        "fingerprint": FINGERPRINT,
        "cache": {"path": "/nowhere/c.h5", "images_root": "/nowhere/images", "content_digest": None, "rows": 90,
                  "files": 90},
        "feature_dim": dim,
        "params": {"head_type": head_type, "seed": 0, "val_fraction": 0.2, "standardize": True, "class_weight": "none",
                   "views": 0, "C": 1.0, "max_iter": 1000},
        "split": {"val_fraction": 0.2, "seed": 0, "source": "hash", "unit": "content key",
                  "counts": {"train": 72, "val": 18, "test": 0}, "per_class": {},
                  "excluded": {"unlabelled": 0, "label_conflicts": 0}},
        "metrics": {"accuracy": 0.9, "macro_f1": 0.9, "log_loss": 0.3, "top_k_accuracy": {}, "n": 18},
        "best_epoch": None, "epochs_run": None, "stopped_early": None, "fit_info": {"n_iter": 12},
        "train_seconds": 0.01, "warnings": [], "created": "2025-01-01T00:00:00+00:00", "versions": {"numpy": "1"},
    }
    if model_file is not None:
        meta["model_file"] = model_file
    return meta


def test_run_folders_written_by_earlier_versions_still_load_and_predict(tmp_path):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import LinearSVC

    from headstart.embedder.tf_runtime import import_keras
    from headstart.heads.runs import load_run

    x, y = _blobs(3, n=90)
    x_new, _ = _blobs(3, n=25, seed=1)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    z = (x - mean) / scale

    def folder(name, head_type, arrays, model_file="model.npz"):
        path = tmp_path / name
        path.mkdir()
        np.savez(path / "model.npz", head_type=np.array(head_type), format_version=np.array(1), mean=mean,
                 scale=scale, **arrays)
        (path / "head.json").write_text(json.dumps(_old_head_json(head_type, model_file, "abc", 12)))
        return load_run(path)

    logreg = LogisticRegression(max_iter=1000).fit(z, y)
    run = folder("logreg", "logreg", {"coef": logreg.coef_, "intercept": logreg.intercept_}, model_file=None)
    expected = logreg.predict_proba((x_new - mean) / scale)
    np.testing.assert_allclose(run.predict_proba(x_new), expected, rtol=1e-5, atol=1e-6)

    svm = CalibratedClassifierCV(LinearSVC(C=0.01), method="sigmoid", ensemble=False, cv=3).fit(z, y)
    calibrated = svm.calibrated_classifiers_[0]
    run = folder("svm", "svm", {"coef": calibrated.estimator.coef_, "intercept": calibrated.estimator.intercept_,
                                "calib_a": np.array([c.a_ for c in calibrated.calibrators]),
                                "calib_b": np.array([c.b_ for c in calibrated.calibrators])})
    np.testing.assert_allclose(run.predict_proba(x_new), svm.predict_proba((x_new - mean) / scale), rtol=1e-5,
                               atol=1e-6)

    knn = KNeighborsClassifier(n_neighbors=5, metric="cosine", algorithm="brute").fit(z, y)
    run = folder("knn", "knn", {"train": l2_normalize(z), "labels": y.astype(np.int32), "k": np.array(5),
                                "n_classes": np.array(3)})
    np.testing.assert_allclose(run.predict_proba(x_new), knn.predict_proba((x_new - mean) / scale), atol=1e-9)

    keras = import_keras()
    keras.utils.set_random_seed(0)
    inputs = keras.Input((12,), dtype="float32", name="features")
    hidden = keras.layers.Dense(8, activation="relu", name="hidden_1")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden)
    model = keras.Model(inputs, outputs, name="headstart_head")
    dense = tmp_path / "dense"
    dense.mkdir()
    model.save(dense / "model.keras")
    (dense / "head.json").write_text(json.dumps(dict(_old_head_json("dense", "model.keras", "abc", 12),
                                                     best_epoch=7, epochs_run=17, stopped_early=True)))
    run = load_run(dense)
    np.testing.assert_allclose(run.predict_proba(x_new), np.asarray(model(x_new)), atol=1e-6)
    assert run.keras_head().name == "headstart_head" and run.record.best_epoch == 7


# ---------------------------------------------------------------------------------- ncm


def _few_shot(per_class: int, seed: int, classes: int = 10, dim: int = 64, noise: float = 2.0):
    rng = np.random.default_rng(seed)
    centers = np.abs(np.random.default_rng(99).normal(0, 1, (classes, dim)))
    y = np.repeat(np.arange(classes), per_class)
    return (centers[y] + rng.normal(0, noise, (len(y), dim))).astype(np.float32), y


def test_ncm_predicts_the_nearest_normalised_class_mean():
    x, y = _few_shot(5, seed=0)
    head = make_head("ncm").fit(x, y, num_classes=10)
    queries, _ = _few_shot(20, seed=1)
    units = x / np.linalg.norm(x, axis=1, keepdims=True)
    means = np.stack([units[y == c].mean(axis=0) for c in range(10)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    cosine = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ means.T
    proba = head.predict_proba(queries)
    np.testing.assert_array_equal(proba.argmax(axis=1), cosine.argmax(axis=1))
    expected = np.exp(head.beta_ * (cosine - cosine.max(axis=1, keepdims=True)))
    np.testing.assert_allclose(proba, expected / expected.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(head.predict_proba(queries * 7.5), proba, rtol=1e-5, atol=1e-7)  # cosine: scale-free


@pytest.mark.parametrize("per_class", [5, 20])
def test_ncm_probabilities_are_calibrated_not_overconfident(per_class):
    """beta is fitted leave-one-out: held-out confidence tracks held-out accuracy (fitting it on
    the rows' own similarities made the mean confidence 0.68-0.79 for an accuracy of 0.42-0.63)."""
    x, y = _few_shot(per_class, seed=0)
    x_test, y_test = _few_shot(200, seed=1)
    head = make_head("ncm").fit(x, y, num_classes=10)
    proba = head.predict_proba(x_test)
    accuracy = np.mean(proba.argmax(axis=1) == y_test)
    confidence = proba.max(axis=1).mean()
    assert 0.3 < accuracy < 0.8  # a case where calibration matters
    assert confidence <= accuracy + 0.05, (confidence, accuracy)
    if per_class >= 20:
        assert abs(confidence - accuracy) < 0.08, (confidence, accuracy)
    log_loss = -np.mean(np.log(proba[np.arange(len(y_test)), y_test]))
    assert log_loss < np.log(10)  # better than knowing nothing
    assert head.report_.info["beta_chosen_by"].startswith("leave-one-out")


def test_ncm_with_one_image_per_class_says_its_confidence_is_uncalibrated(tmp_path):
    x, y = _few_shot(1, seed=0, classes=4)
    head = make_head("ncm").fit(x, y, num_classes=4)
    assert head.report_.warnings and "could not be calibrated" in head.report_.warnings[0]
    np.testing.assert_array_equal(head.predict_proba(x).argmax(axis=1), y)
    head.save(tmp_path)
    with np.load(tmp_path / "model.npz", allow_pickle=False) as data:
        assert set(data.files) == {"head_type", "format_version", "means", "beta"}
        assert all(data[name].dtype.kind in "fiuU" for name in data.files)
    with zipfile.ZipFile(tmp_path / "model.npz") as archive:
        assert all(name.endswith(".npy") for name in archive.namelist())


def test_ncm_trains_from_the_command_line(tmp_path, run_cli, cache):
    code, out, err = run_cli("head", "train", "--cache", cache, "--head", "ncm", "--standardize", "--out",
                             tmp_path / "r", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["head_type"] == "ncm" and report["metrics"]["accuracy"] > 0.8
    meta = json.loads((tmp_path / "r" / "head.json").read_text())
    assert meta["model_file"] == "model.npz" and meta["fit_info"]["beta"] > 0


# ------------------------------------------------------------------------ logreg's C


def _noisy_label_cache(path: Path, seed: int = 0) -> Path:
    """Training labels 40% flipped, validation clean: C=1.0 fits the noise, a small C does not."""
    rng = np.random.default_rng(seed)
    dim, classes = 64, 3
    centers = np.random.default_rng(5).normal(0, 0.4, (classes, dim))
    keys, features, files = [], [], []
    for split, per_class in (("train", 30), ("val", 100)):
        y = np.repeat(np.arange(classes), per_class)
        x = centers[y] + rng.normal(0, 1, (len(y), dim))
        if split == "train":
            flip = rng.random(len(y)) < 0.4
            y[flip] = rng.integers(0, classes, flip.sum())
        for i, (row, label) in enumerate(zip(x, y)):
            key = key_of(f"{split}-{i}")
            keys.append(key)
            features.append(row)
            files.append(FileRecord(f"{split}/c{label}/{i}.jpg", key, int(label), split))
    write_cache(path, FINGERPRINT, keys, np.asarray(features, np.float32), files, ["c0", "c1", "c2"],
                path.parent / "images", dtype="float32")
    return path


def test_logreg_chooses_C_by_cross_validation_and_records_how(tmp_path, run_cli):
    noisy = _noisy_label_cache(tmp_path / "noisy.h5")
    code, out, err = run_cli("head", "train", "--cache", noisy, "--head", "logreg", "--out", tmp_path / "cv")
    assert code == 0, err
    meta = json.loads((tmp_path / "cv" / "head.json").read_text())
    chosen, cv = meta["params"]["C"], meta["fit_info"]["cv"]
    assert meta["params"]["C_chosen_by"] == "5-fold CV" and cv["folds"] == 5
    best = max(range(len(cv["C"])), key=lambda j: (cv["accuracy"][j], -cv["log_loss"][j]))
    assert chosen == cv["C"][best] < 1.0
    assert f"C={chosen:g} (5-fold CV)" in out  # the train summary says what was used and how

    code, _, err = run_cli("head", "train", "--cache", noisy, "--head", "logreg", "--C", "1", "--out", tmp_path / "c1")
    assert code == 0, err
    given = json.loads((tmp_path / "c1" / "head.json").read_text())
    assert given["params"]["C"] == 1.0 and given["params"]["C_chosen_by"] == "--C" and "cv" not in given["fit_info"]
    assert meta["metrics"]["accuracy"] > given["metrics"]["accuracy"] + 0.05, (meta["metrics"], given["metrics"])

    code, _, _ = run_cli("head", "train", "--cache", noisy, "--head", "logreg", "--out", tmp_path / "again")
    assert json.loads((tmp_path / "again" / "head.json").read_text())["params"]["C"] == chosen  # seeded


def test_logreg_falls_back_to_C_1_when_a_class_cannot_be_cross_validated():
    x, y = _blobs(3, n=31)
    y[y == 2] = 1
    y[0] = 2  # class 2 has a single training image
    head = make_head("logreg").fit(x, y, num_classes=3)
    assert head.C_ == 1.0 and head.fitted_params()["C_chosen_by"].startswith("default")
    assert any("could not be cross-validated" in w for w in head.report_.warnings)
