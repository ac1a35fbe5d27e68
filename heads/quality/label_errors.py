"""``inspect labels``: rank likely label errors by out-of-fold predicted probabilities.

Each labelled image is scored by a logistic regression that never saw it (k-fold,
stratified, seeded): ``score = P(most likely other label) - P(given label)``, in [-1, 1];
above 0 the model, trained on everything else, prefers another label. Ranking by it puts
flipped labels first (confident learning's "self-confidence" idea, with a margin).

* **Rows, not files.** Folds are drawn over distinct contents (keys): two paths of the same
  bytes can never sit in different folds, where one would "predict" its own copy. Every
  file of a row shares the row's probabilities, so the CSV has one line per distinct image
  and label (``files`` says how many paths carry it, ``same_bytes`` lists the others).
  Rows whose files disagree (a conflict) are left out of training, as ``head train`` does,
  and scored by the average of the fold models, once per label they carry.
* **Fast.** Features are standardised and, when big (over 30 million values, e.g. 23,000
  x 1,280), projected on their top ``dims`` principal axes (default 256) before fitting. Both steps use no label, so they cannot leak one into its
  own prediction; they make the k fits take seconds on 100,000 x 1,280 (at full width the
  solver is memory-bound: ~15 s per fold there). scikit-learn runs on one thread: with its
  OpenMP and OpenBLAS threads competing for 2 cores it was 6x slower.
"""

from __future__ import annotations

import time
import warnings as _warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.embedder.cache import open_h5
from headstart.embedder.cache.finite import nonfinite_mask
from headstart.embedder.errors import UsageError
from headstart.embedder.progress import progress_bar

from ..data import require_finite
from .inventory import (Inventory, default_report_path, labelled_units, other_paths, raw_features,
                        require_labels)
from .output import write_csv, write_report_gallery
from .pca import BASIS_ROWS, principal_axes
from .report import QualityReport

DEFAULT_FOLDS = 5
DEFAULT_DIMS = 256  # when the features are big (see FULL_WIDTH_VALUES)
FULL_WIDTH_VALUES = 30_000_000  # up to this many values (23,000 x 1,280) the model sees every feature
# Strong regularisation ranked flips best: 20 flipped hymenoptera labels (MobileNetV2, 396
# photos) in the top 20 at 0.83 (C 0.01) vs 0.77 (0.1) and 0.73 (1.0), mean of 3 seeds; on the
# 100,000-row benchmark 0.96 vs 0.95; and it converges faster.
DEFAULT_C = 0.01
TOL = 1e-3  # ranking unchanged against 1e-4 (precision@k within 0.01), 2-3x fewer iterations
MAX_ITER = 300
_BLOCK = 16384

HEADER = ["path", "label", "p_label", "suggested", "p_suggested", "score", "files", "conflict", "split", "key",
          "same_bytes"]


@dataclass
class LabelErrorsReport(QualityReport):
    cache: str
    images: int  # distinct (image, label) lines ranked
    rows_fitted: int
    classes: int
    folds: int
    dims: int
    C: float
    seed: int
    oof_accuracy: float
    suspicious: int  # lines where another label is more likely than the given one
    top: list
    out: str


def _standardised_projection(features: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """Standardise in place (statistics of all rows: no label involved), then project on the
    top ``dims`` principal axes (``dims`` 0 or >= D keeps every feature)."""
    n, d = features.shape
    total = np.zeros(d, np.float64)
    squares = np.zeros(d, np.float64)
    for start in range(0, n, _BLOCK):
        block = features[start:start + _BLOCK].astype(np.float64)
        total += block.sum(axis=0)
        squares += np.einsum("ij,ij->j", block, block)
    mean = total / n
    scale = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
    scale[scale < 1e-6] = 1.0
    for start in range(0, n, _BLOCK):
        features[start:start + _BLOCK] -= mean.astype(np.float32)
        features[start:start + _BLOCK] /= scale.astype(np.float32)
    if not dims or dims >= d:
        return features
    axes, _, _ = principal_axes(features, center=False, seed=seed)
    return features @ axes[:, :dims].astype(np.float32)


def standardised_projection(cache, dims: int, seed: int) -> np.ndarray:
    """The label model's input: standardised features, projected on ``dims`` principal axes.

    Small caches go through :func:`_standardised_projection` in memory. Big ones (over
    :data:`FULL_WIDTH_VALUES` values, projected) are streamed from the file in two passes --
    statistics, then standardise and project a block at a time -- so memory is the
    ``N x dims`` result, not the features as float32 (5.1 GB at a million rows). The
    statistics, the sample the axes come from and the axes are the same as in memory."""
    n, d = cache.num_rows, cache.dim
    if not dims or dims >= d or n * d <= FULL_WIDTH_VALUES:
        return _standardised_projection(raw_features(cache), dims, seed)
    sample = np.arange(n) if n <= BASIS_ROWS else np.sort(np.random.default_rng(seed).choice(n, BASIS_ROWS,
                                                                                            replace=False))
    total = np.zeros(d, np.float64)
    squares = np.zeros(d, np.float64)
    kept = np.empty((len(sample), d), dtype=np.float32)
    bad = 0
    with open_h5(cache._file) as h5:
        data = h5["embeddings/features"]
        for start in range(0, n, _BLOCK):
            stored = data[start:start + _BLOCK]
            bad += int(nonfinite_mask(stored).sum())
            block = stored.astype(np.float64)
            total += block.sum(axis=0)
            squares += np.einsum("ij,ij->j", block, block)
            a, b = np.searchsorted(sample, [start, start + len(stored)])
            kept[a:b] = stored[sample[a:b] - start]
        if bad:
            require_finite(np.full((bad, 1), np.nan, np.float32), cache.path)  # raises, with the count
        mean = total / n
        scale = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
        scale[scale < 1e-6] = 1.0
        mean32, scale32 = mean.astype(np.float32), scale.astype(np.float32)
        kept -= mean32
        kept /= scale32
        axes, _, _ = principal_axes(kept, center=False, sample=len(kept), seed=seed)
        top = axes[:, :dims].astype(np.float32)
        out = np.empty((n, dims), dtype=np.float32)
        for start in range(0, n, _BLOCK):
            block = data[start:start + _BLOCK].astype(np.float32)
            block -= mean32
            block /= scale32
            out[start:start + len(block)] = block @ top
    return out


def _fit_predict(x_train, y_train, x_test, num_classes: int, C: float, seed: int) -> tuple[np.ndarray, bool]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    out = np.zeros((len(x_test), num_classes), dtype=np.float64)
    seen = np.unique(y_train)
    if len(seen) < 2:  # a fold that saw one class only can only predict that class
        out[:, seen] = 1.0
        return out, False
    model = LogisticRegression(C=C, tol=TOL, max_iter=MAX_ITER, random_state=seed)
    # One thread: scikit-learn's OpenMP loss and OpenBLAS threads fight over 2 cores; measured
    # 6x faster single-threaded (80,000 x 256, 10 classes: 1.0 s vs 6.0 s).
    with threadpool_limits(1), _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x_train, y_train)
        if len(x_test):
            out[:, model.classes_] = model.predict_proba(x_test)
    return out, any(issubclass(w.category, ConvergenceWarning) for w in caught)


def rank_label_errors(inv: Inventory, out: str | Path | None = None, folds: int = DEFAULT_FOLDS,
                      dims: int | None = None, C: float = DEFAULT_C, progress: bool = False,
                      top: int = 10) -> LabelErrorsReport:
    """Fit ``folds`` models, score every labelled image out of fold, write the CSV worst first.

    ``dims``: principal axes kept; 0 = every feature; None = every feature up to
    :data:`FULL_WIDTH_VALUES` values, else :data:`DEFAULT_DIMS`.
    """
    started = time.perf_counter()
    require_labels(inv, "inspect labels", min_classes=2)
    if folds < 2:
        raise UsageError(f"--folds must be at least 2, got {folds}")
    if dims is None:
        dims = 0 if inv.num_rows * inv.cache.dim <= FULL_WIDTH_VALUES else DEFAULT_DIMS
    if dims < 0:
        raise UsageError(f"--dims must be 0 (all features) or more, got {dims}")
    if not C > 0:
        raise UsageError(f"--C must be positive, got {C}")
    fit_rows = np.flatnonzero(inv.labelled)
    y = inv.label[fit_rows]
    counts = np.bincount(y, minlength=len(inv.classes))
    present = counts > 0
    if len(fit_rows) < folds:
        raise UsageError(f"--folds {folds} needs at least {folds} labelled images; the cache has {len(fit_rows)}")
    warnings = []
    small = [inv.classes[c] for c in np.flatnonzero(present & (counts < folds))]
    if small:
        warnings.append(f"{len(small)} classes have fewer images than --folds {folds} (e.g. {small[0]!r}): some of "
                        f"their images are scored by a model that saw none of their class, and rank high")
    features = standardised_projection(inv.cache, dims, inv.seed)
    num_classes = len(inv.classes)
    probs = np.zeros((inv.num_rows, num_classes), dtype=np.float64)

    fold_of = _stratified_folds(y, folds, inv.seed)
    conflict_rows = np.flatnonzero(inv.conflict)
    unconverged = False
    with progress_bar(folds, "label model folds", progress, unit="fold", unit_scale=True) as bar:
        for f in range(folds):
            test = fold_of == f
            p_test, bad = _fit_predict(features[fit_rows[~test]], y[~test],
                                       np.concatenate([features[fit_rows[test]], features[conflict_rows]]),
                                       num_classes, C, inv.seed)
            probs[fit_rows[test]] = p_test[: int(test.sum())]
            probs[conflict_rows] += p_test[int(test.sum()):] / folds
            unconverged |= bad
            bar.update(1)
    if unconverged:
        warnings.append(f"the logistic regression did not fully converge in {MAX_ITER} iterations; the ranking "
                        f"is still usable (lower --C to regularise more)")
    del features

    rows, labels, first, copies = labelled_units(inv)
    p_label = probs[rows, labels]
    others = probs[rows].copy()
    others[np.arange(len(rows)), labels] = -1.0
    suggested = others.argmax(axis=1)
    p_suggested = others[np.arange(len(rows)), suggested]
    score = p_suggested - p_label
    order = np.lexsort((first, -score))
    c = inv.cache
    names = inv.classes
    also = other_paths(inv, rows, labels, first, copies)
    records = [(str(c.paths[first[k]]), names[labels[k]], float(p_label[k]), names[suggested[k]],
                float(p_suggested[k]), float(score[k]), int(copies[k]), "yes" if inv.conflict[rows[k]] else "",
                str(inv.split[rows[k]]), str(c.keys[rows[k]]), also.get(int(k), "")) for k in order]
    out_path = Path(out) if out is not None else default_report_path(c, "label-errors.csv")
    write_csv(out_path, HEADER, records, images_root=c.images_root)
    shown = write_report_gallery("label-errors", out_path, c)
    oof = float(np.mean(probs[fit_rows].argmax(axis=1) == y))
    return LabelErrorsReport(
        cache=str(c.path), images=len(records), rows_fitted=int(len(fit_rows)), classes=int(present.sum()),
        folds=folds, dims=int(min(dims, c.dim) if dims else c.dim), C=float(C), seed=inv.seed, oof_accuracy=oof,
        suspicious=int(np.sum(score > 0)), top=[dict(zip(HEADER, r)) for r in records[:top]], out=str(out_path),
        seconds=time.perf_counter() - started, warnings=warnings, **shown,
    )


def _stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Fold index per row: each class dealt round-robin over the folds in a seeded order."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(y), dtype=np.int64)
    offset = 0
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        fold_of[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # staggers small classes over different folds
    return fold_of
