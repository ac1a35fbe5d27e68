"""``--head logreg``: multinomial logistic regression, its C chosen by cross-validation.

The regularisation strength matters on real features and has no safe constant default:
scikit-learn's C=1.0 lost 3-6 points of val accuracy to C=0.01 on flowers5 MobileNetV2
features. So unless ``--C`` is given, C is chosen on the *training* rows by stratified
k-fold cross-validation (k = 5, fewer when a class has fewer training images; seeded) over
the log grid :data:`C_GRID`: highest mean out-of-fold accuracy, ties to the lower mean
log-loss. The search walks the grid upwards, each fold's model warm-starting from the last
value, and stops two values past the best (large C is both the slowest to fit and, past the
best, only more overfitted): about 2 s on hymenoptera's 245 x 1,280 rows. On large sets the search runs on a stratified, seeded sample of
:data:`CV_MAX_ROWS` training rows, and the final fit uses every row with the C it chose
(scikit-learn's penalty does not grow with the rows while the summed loss does, so the
same C regularises the full set a little less, as more data warrants). A class with a single training image cannot be cross-validated: C then falls
back to 1.0, and a warning says so.

Probabilities: ``softmax(x @ coef.T + intercept)``; binary: ``sigmoid`` of the one column.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np

from .arrays import ArrayHead, sigmoid, softmax
from .base import C_OPTION, CLASS_WEIGHT, MAX_ITER, FitReport, check_class_weight, finite_number, need

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
CV_FOLDS = 5
CV_MAX_ROWS = 2000  # rows the C search sees at most (it costs up to folds x grid fits)
PATIENCE = 2  # grid values past the best before the search stops
FALLBACK_C = 1.0  # scikit-learn's default, when the training rows are too few to cross-validate


class LogRegHead(ArrayHead):
    name = "logreg"
    summary = "logistic regression, C by cross-validation"
    options = {"C": C_OPTION, "max_iter": MAX_ITER, "class_weight": CLASS_WEIGHT}
    default_text: ClassVar[dict] = {"C": "chosen by 5-fold CV on the training images"}
    required_arrays = ("coef", "intercept")

    def __init__(self, C: float | None = None, max_iter: int = 1000, class_weight: str = "none"):
        self.C = C  # None: cross-validated over C_GRID
        self.max_iter = max_iter
        self.class_weight = class_weight

    def check(self, given=frozenset()) -> None:
        need(self.C is None or (finite_number(self.C) and float(self.C) > 0), f"--C must be a positive number, got {self.C}")
        need(int(self.max_iter) >= 1, f"--max-iter must be at least 1, got {self.max_iter}")
        check_class_weight(self)

    @classmethod
    def preload(cls) -> None:
        import sklearn.linear_model  # noqa: F401
        import sklearn.model_selection  # noqa: F401

    def _model(self, C: float, seed: int, warm_start: bool = False):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=float(C), max_iter=int(self.max_iter), warm_start=warm_start,
                                  class_weight="balanced" if self.class_weight == "balanced" else None,
                                  random_state=int(seed))

    def _fit(self, x, y, num_classes, seed) -> FitReport:
        from sklearn.exceptions import ConvergenceWarning

        notes, info = [], {}
        if self.C is not None:
            self.C_, self.C_chosen_by_ = float(self.C), "--C"
        else:
            self.C_, self.C_chosen_by_, info["cv"] = self._cross_validate(x, y, seed)
            if info["cv"] is None:
                del info["cv"]
                notes.append(f"C could not be cross-validated (a class has a single training image); used "
                             f"C={FALLBACK_C:g}: pass --C to choose it")
        model = self._model(self.C_, seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model.fit(x, y)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            notes.append(f"logistic regression did not converge in {self.max_iter} iterations; raise --max-iter"
                         " or add --standardize")
        self.estimator_ = model  # the scikit-learn model, for tests; not saved
        self.coef_ = model.coef_.astype(np.float64)
        self.intercept_ = model.intercept_.astype(np.float64)
        info["n_iter"] = int(np.max(model.n_iter_))
        return FitReport(warnings=notes, info=info)

    def _cross_validate(self, x, y, seed):
        """(C, how it was chosen, the fold scores) by stratified k-fold CV over C_GRID."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.model_selection import StratifiedKFold

        smallest = int(np.bincount(y)[np.unique(y)].min())
        folds = min(CV_FOLDS, smallest)
        if folds < 2:
            return FALLBACK_C, "default (too few images per class to cross-validate)", None
        total = len(y)
        rows = _stratified_sample(y, CV_MAX_ROWS, folds, seed)
        x, y = x[rows], y[rows]
        splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed)).split(x, y))
        models = [self._model(C_GRID[0], seed, warm_start=True) for _ in splits]
        accuracy = np.full((folds, len(C_GRID)), np.nan)
        log_loss = np.full((folds, len(C_GRID)), np.nan)
        best = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # the refit on every row reports its own
            for j, C in enumerate(C_GRID):  # upwards: each fold's model warm-starts from the last C
                for f, ((train, test), model) in enumerate(zip(splits, models)):
                    model.set_params(C=C).fit(x[train], y[train])
                    proba = model.predict_proba(x[test])
                    column = np.searchsorted(model.classes_, y[test])
                    accuracy[f, j] = np.mean(model.classes_[proba.argmax(axis=1)] == y[test])
                    log_loss[f, j] = -np.mean(np.log(np.clip(proba[np.arange(len(test)), column], 1e-15, 1.0)))
                if _score(accuracy, log_loss, j) > _score(accuracy, log_loss, best):
                    best = j
                elif j - best >= PATIENCE:
                    break  # past the best for PATIENCE values: larger C (slow to fit) only overfits more
        tried = j + 1
        scores = {"folds": folds, "rows": int(len(y)), "C": list(C_GRID[:tried]),
                  "accuracy": [round(float(v), 6) for v in accuracy[:, :tried].mean(axis=0)],
                  "log_loss": [round(float(v), 6) for v in log_loss[:, :tried].mean(axis=0)]}
        how = f"{folds}-fold CV" + (f" on {len(y):,} of {total:,} rows" if len(y) < total else "")
        return float(C_GRID[best]), how, scores

    def fitted_params(self) -> dict:
        record = super().fitted_params()
        if hasattr(self, "C_"):
            record["C"] = self.C_
            record["C_chosen_by"] = self.C_chosen_by_
        return record

    def _arrays(self):
        return {"coef": self.coef_, "intercept": self.intercept_}

    def _restore(self, arrays):
        self.coef_ = np.asarray(arrays["coef"], dtype=np.float64)
        self.intercept_ = np.asarray(arrays["intercept"], dtype=np.float64).reshape(-1)
        if self.coef_.ndim != 2 or len(self.intercept_) != self.coef_.shape[0]:
            raise ValueError(f"coef {list(self.coef_.shape)} and intercept {list(self.intercept_.shape)}")
        self.feature_dim_ = int(self.coef_.shape[1])
        self.num_classes_ = 2 if self.coef_.shape[0] == 1 else int(self.coef_.shape[0])

    def _proba(self, x):
        decision = x.astype(np.float64) @ self.coef_.T + self.intercept_
        if decision.shape[1] == 1:
            p = sigmoid(decision[:, 0])
            return np.stack([1.0 - p, p], axis=1)
        return softmax(decision)


def _score(accuracy: np.ndarray, log_loss: np.ndarray, j: int) -> tuple[float, float]:
    """How good grid value ``j`` is: mean out-of-fold accuracy, ties to the lower log-loss."""
    return float(accuracy[:, j].mean()), -float(log_loss[:, j].mean())


def _stratified_sample(y: np.ndarray, most: int, per_class_floor: int, seed: int) -> np.ndarray:
    """Indices of at most ~``most`` rows (all of them if there are fewer), the same share of
    every class but never fewer than ``per_class_floor`` of one (so every fold sees it); seeded."""
    if len(y) <= most:
        return np.arange(len(y))
    rng = np.random.default_rng(int(seed))
    share = most / len(y)
    chosen = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        take = min(len(members), max(per_class_floor, int(round(share * len(members)))))
        chosen.append(rng.choice(members, size=take, replace=False))
    return np.sort(np.concatenate(chosen))
