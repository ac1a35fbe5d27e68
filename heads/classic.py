"""scikit-learn heads: logistic regression, a calibrated linear SVM, cosine kNN.

Each is fitted with scikit-learn on the (optionally standardised) training rows, then
exported to a :class:`heads.numpy_heads.NumpyHead`: plain arrays plus a numpy
``predict_proba`` that reproduces scikit-learn's. Validation metrics are computed with
that exported predictor, so they describe exactly what the run folder will reload.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from headstart.embedder.errors import UsageError

from .numpy_heads import MODEL_FILE, NumpyHead, l2_normalize
from .params import HeadParams
from .standardize import Standardizer

DEFAULT_K = 10
CALIBRATION_FOLDS = 3


@dataclass
class ClassicFit:
    head: NumpyHead
    estimator: object
    head_type: str
    info: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    history: dict | None = None
    best_epoch: int | None = None
    model_file: str = MODEL_FILE

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.head.predict_proba(features)

    def save(self, folder: Path) -> str:
        self.head.save(Path(folder) / MODEL_FILE)
        return MODEL_FILE


def fit_classic(x_train: np.ndarray, y_train: np.ndarray, num_classes: int, params: HeadParams,
                standardizer: Standardizer | None = None) -> ClassicFit:
    """Fit the scikit-learn head ``params.head_type`` on raw features (standardised here)."""
    x = standardizer.transform(x_train) if standardizer is not None else np.asarray(x_train, np.float32)
    y = np.asarray(y_train, dtype=np.int64)
    extra = {"mean": standardizer.mean, "scale": standardizer.scale} if standardizer is not None else {}
    fit = {"logreg": _fit_logreg, "svm": _fit_svm, "knn": _fit_knn}[params.head_type]
    return fit(x, y, num_classes, params, extra)


def preload() -> None:
    """Import the scikit-learn modules the heads use (so timings measure fitting only)."""
    import sklearn.calibration  # noqa: F401
    import sklearn.linear_model  # noqa: F401
    import sklearn.model_selection  # noqa: F401
    import sklearn.neighbors  # noqa: F401


def _class_weight(params: HeadParams):
    return "balanced" if params.class_weight == "balanced" else None


def _fit_logreg(x, y, num_classes, params, extra) -> ClassicFit:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=float(params.C), max_iter=int(params.max_iter),
                               class_weight=_class_weight(params), random_state=int(params.seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    notes = []
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        notes.append(f"logistic regression did not converge in {params.max_iter} iterations; raise --max-iter"
                     + ("" if params.standardize else " or add --standardize"))
    head = NumpyHead("logreg", {"coef": model.coef_.astype(np.float64),
                                "intercept": model.intercept_.astype(np.float64), **extra})
    return ClassicFit(head, model, "logreg", info={"n_iter": int(np.max(model.n_iter_))}, warnings=notes)


def _fit_svm(x, y, num_classes, params, extra) -> ClassicFit:
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import StratifiedKFold

    from .linear_svm import SquaredHingeSVC

    smallest = int(np.bincount(y, minlength=num_classes).min())
    if smallest < 2:
        raise UsageError("--head svm calibrates its probabilities by cross-validation and needs at least 2 "
                         "training images in every class; add images or use --head logreg")
    folds = StratifiedKFold(n_splits=min(CALIBRATION_FOLDS, smallest), shuffle=True, random_state=int(params.seed))
    svm = SquaredHingeSVC(C=float(params.C), max_iter=int(params.max_iter), class_weight=_class_weight(params))
    model = CalibratedClassifierCV(svm, method="sigmoid", ensemble=False, cv=folds)
    model.fit(x, y)
    calibrated = model.calibrated_classifiers_[0]
    final = calibrated.estimator
    notes = []
    if not final.converged_:
        notes.append(f"the linear SVM did not converge in {params.max_iter} iterations; raise --max-iter")
    head = NumpyHead("svm", {
        "coef": final.coef_.astype(np.float64),
        "intercept": final.intercept_.astype(np.float64),
        "calib_a": np.asarray([c.a_ for c in calibrated.calibrators], dtype=np.float64),
        "calib_b": np.asarray([c.b_ for c in calibrated.calibrators], dtype=np.float64),
        **extra,
    })
    return ClassicFit(head, model, "svm", info={"n_iter": final.n_iter_, "calibration_folds": folds.n_splits},
                      warnings=notes)


def _fit_knn(x, y, num_classes, params, extra) -> ClassicFit:
    from sklearn.neighbors import KNeighborsClassifier

    k = params.k if params.k is not None else min(DEFAULT_K, len(y))
    if k > len(y):
        raise UsageError(f"--k {k} is more than the {len(y)} training images; use a smaller --k")
    params.k = int(k)
    # scikit-learn's fit only stores the rows; it is kept as the reference the numpy
    # predictor is tested against.
    model = KNeighborsClassifier(n_neighbors=int(k), metric="cosine", algorithm="brute").fit(x, y)
    head = NumpyHead("knn", {"train": l2_normalize(x), "labels": y.astype(np.int32),
                             "k": np.array(int(k)), "n_classes": np.array(int(num_classes)), **extra})
    return ClassicFit(head, model, "knn", info={"k": int(k)})
