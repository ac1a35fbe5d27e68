"""How good is a classifier, honestly: metrics, and the files a person looks at.

:func:`write_evaluation` is shared by every stage that ends with class probabilities (heads,
fine-tuning, ``head eval``). Given true labels, probabilities, class names and the file
paths it writes ``metrics.json`` (accuracy, top-k, macro-F1, per-class precision/recall/F1,
the confusion matrix, log-loss), ``confusion.png``, ``misclassified.csv`` (path, true,
predicted, confidence; the most confident mistakes first, as those are often label errors)
and, given a training history, ``history.png``. Given the images root, the CSV also gets an
``abs_path`` column and the mistakes are shown in ``misclassified.png`` (:mod:`heads.gallery`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from headstart.embedder.atomic import write_text_atomic

from .runs import json_default

TOP_K = (3, 5)
_EPS = 1e-15


def compute_metrics(y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Metrics of probabilities ``proba [N, C]`` against labels ``y_true [N]`` (class indices).

    Counts are per example given. top-k accuracy is reported for each k in (3, 5) below C.
    log-loss is the mean negative log-probability of the true class (clipped at 1e-15).
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    classes = [str(c) for c in classes]
    c = len(classes)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    p = np.asarray(proba, dtype=np.float64).reshape(len(y), c) if len(y) else np.zeros((0, c))
    metrics: dict[str, Any] = {"n": int(len(y)), "classes": classes}
    if not len(y):
        metrics.update({"accuracy": None, "macro_f1": None, "log_loss": None, "top_k_accuracy": {},
                        "per_class": {}, "confusion_matrix": [[0] * c for _ in range(c)], "misclassified": 0})
        return metrics
    predicted = p.argmax(axis=1)
    labels = list(range(c))
    precision, recall, f1, support = precision_recall_fscore_support(y, predicted, labels=labels, zero_division=0)
    present = support > 0
    # Macro-F1 over the classes present in y_true or predicted, scikit-learn's default.
    counted = present | np.isin(labels, predicted)
    true_p = np.clip(p[np.arange(len(y)), y] / np.maximum(p.sum(axis=1), _EPS), _EPS, 1.0)
    order = np.argsort(-p, axis=1)
    metrics.update({
        "accuracy": float(np.mean(predicted == y)),
        "macro_f1": float(np.mean(f1[counted])) if counted.any() else 0.0,
        "weighted_f1": float(np.average(f1, weights=support)) if support.sum() else 0.0,
        "log_loss": float(-np.mean(np.log(true_p))) + 0.0,  # never -0.0
        "top_k_accuracy": {str(k): float(np.mean((order[:, :k] == y[:, None]).any(axis=1))) for k in TOP_K if k < c},
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": confusion_matrix(y, predicted, labels=labels).tolist(),
        "misclassified": int(np.sum(predicted != y)),
    })
    return metrics


def summarize(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers head.json and the leaderboard carry."""
    keys = ("accuracy", "macro_f1", "log_loss", "top_k_accuracy", "n")
    return {k: metrics[k] for k in keys if k in metrics}


MISCLASSIFIED_COLUMNS = ["path", "true", "predicted", "confidence"]


def misclassified_rows(y_true, proba, classes, paths) -> list[dict]:
    y = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(proba, dtype=np.float64)
    if not len(y):
        return []
    predicted = p.argmax(axis=1)
    wrong = np.flatnonzero(predicted != y)
    wrong = wrong[np.argsort(-p[wrong, predicted[wrong]], kind="stable")]
    return [{"path": str(paths[i]), "true": classes[y[i]], "predicted": classes[predicted[i]],
             "confidence": round(float(p[i, predicted[i]]), 6)} for i in wrong]


def write_evaluation(
    out_dir: str | os.PathLike,
    y_true: Sequence[int],
    proba: np.ndarray,
    classes: Sequence[str],
    paths: Sequence[str],
    history: Mapping[str, Sequence[float]] | Any | None = None,
    best_epoch: int | None = None,
    extra: Mapping[str, Any] | None = None,
    title: str | None = None,
    images_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Compute metrics and write metrics.json, confusion.png, misclassified.csv (and history.png).

    ``history`` is a dict of per-epoch lists (``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``), or a ``keras.callbacks.History``. ``extra`` is merged into
    metrics.json (e.g. ``{"test": {...}}``). ``images_root``, the folder ``paths`` are
    relative to, adds the ``abs_path`` column and ``misclassified.png`` (written when
    there are mistakes and their images are there). Returns the metrics dict.
    """
    from . import plots
    from .contact_sheet import Resolver
    from .gallery import write_gallery

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = [str(c) for c in classes]
    if len(paths) != len(np.asarray(y_true).reshape(-1)):
        raise ValueError("paths and y_true differ in length")
    metrics = compute_metrics(y_true, proba, classes)
    history = getattr(history, "history", history)
    if history:
        metrics["history"] = {k: [float(v) for v in values] for k, values in dict(history).items()}
        if best_epoch is None and history.get("val_loss"):
            losses = [v if np.isfinite(v) else np.inf for v in history["val_loss"]]
            best_epoch = int(np.argmin(losses)) + 1
        metrics["best_epoch"] = best_epoch
    if extra:
        metrics.update(dict(extra))
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=json_default) + "\n")
    wrong = misclassified_rows(y_true, proba, classes, paths)
    columns = list(MISCLASSIFIED_COLUMNS)
    if images_root is not None:  # without it, the CSV exactly as before: no absolute paths to give
        resolve = Resolver(images_root)
        columns.append("abs_path")
        for row in wrong:
            row["abs_path"] = resolve(row["path"])
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(wrong)
    write_text_atomic(out / "misclassified.csv", buffer.getvalue())
    if images_root is not None:
        split = (extra or {}).get("split")
        write_gallery("misclassified", out / "misclassified.csv", images_root,
                      title=f"{split} split" if isinstance(split, str) and split else "")
    plots.confusion_png(out / "confusion.png", np.asarray(metrics["confusion_matrix"]), classes,
                        title or _confusion_title(metrics))
    if history:
        plots.history_png(out / "history.png", metrics["history"], best_epoch)
    return metrics


def _confusion_title(metrics: Mapping[str, Any]) -> str:
    if metrics.get("accuracy") is None:
        return "no labelled examples"
    return f"accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} (n={metrics['n']})"

