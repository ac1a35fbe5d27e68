"""scikit-learn heads as plain arrays, with prediction re-implemented in numpy.

Pickle (and joblib) execute code when loaded, so a run folder someone hands you could run
anything. ``model.npz`` holds only numeric arrays (loaded with ``allow_pickle=False``), and
each head's ``predict_proba`` is a few lines of numpy that reproduce scikit-learn's:

* logreg: ``softmax(x @ coef.T + intercept)``; binary: ``sigmoid`` of the single column.
* svm: one-vs-rest decision values, each through its Platt sigmoid
  ``1 / (1 + exp(a*d + b))`` (CalibratedClassifierCV, method="sigmoid"), then normalised;
  binary: ``[1 - p, p]``.
* knn: cosine k-nearest neighbours; probabilities are the neighbours' class shares.

Standardisation, when used, is stored as ``mean`` and ``scale`` and applied first.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from scipy.special import expit

from headstart.embedder.atomic import atomic_path

FORMAT_VERSION = 1
MODEL_FILE = "model.npz"
REQUIRED = {
    "logreg": ("coef", "intercept"),
    "svm": ("coef", "intercept", "calib_a", "calib_b"),
    "knn": ("train", "labels", "k", "n_classes"),
}
_CHUNK = 512  # query rows per similarity block (512 x 40,000 float32 = 80 MB)


class ModelFileError(ValueError):
    """model.npz is missing arrays, has the wrong shapes, or is not an npz file."""


class NumpyHead:
    """A fitted scikit-learn head as arrays; ``predict_proba(features) -> [N, C]``."""

    def __init__(self, head_type: str, arrays: dict[str, np.ndarray]):
        if head_type not in REQUIRED:
            raise ModelFileError(f"unknown head type {head_type!r}")
        missing = [name for name in REQUIRED[head_type] if name not in arrays]
        if missing:
            raise ModelFileError(f"{head_type} head lacks the array {missing[0]!r}")
        self.head_type = head_type
        self.arrays = {name: np.asarray(value) for name, value in arrays.items()}

    @property
    def feature_dim(self) -> int:
        key = "train" if self.head_type == "knn" else "coef"
        return int(self.arrays[key].shape[1])

    @property
    def num_classes(self) -> int:
        if self.head_type == "knn":
            return int(self.arrays["n_classes"])
        rows = self.arrays["coef"].shape[0]
        return 2 if rows == 1 else int(rows)

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        if "mean" in self.arrays:
            return (x - self.arrays["mean"]) / self.arrays["scale"]
        return x

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise ValueError(f"features must be [N, {self.feature_dim}], got {list(x.shape)}")
        x = self._standardize(x)
        if self.head_type == "knn":
            return self._knn(x.astype(np.float32, copy=False))
        decision = x.astype(np.float64) @ self.arrays["coef"].T.astype(np.float64) + self.arrays["intercept"]
        if self.head_type == "logreg":
            if decision.shape[1] == 1:
                p = expit(decision[:, 0])
                return np.stack([1.0 - p, p], axis=1)
            return softmax(decision)
        # svm: Platt-scaled one-vs-rest scores, as sklearn's _CalibratedClassifier combines them
        scores = expit(-(self.arrays["calib_a"] * decision + self.arrays["calib_b"]))
        if scores.shape[1] == 1:
            return np.stack([1.0 - scores[:, 0], scores[:, 0]], axis=1)
        total = scores.sum(axis=1, keepdims=True)
        uniform = np.full_like(scores, 1.0 / scores.shape[1])
        return np.divide(scores, total, out=uniform, where=total != 0)

    def _knn(self, x: np.ndarray) -> np.ndarray:
        train, labels = self.arrays["train"], self.arrays["labels"].astype(np.int64)
        k, c = int(self.arrays["k"]), int(self.arrays["n_classes"])
        out = np.zeros((len(x), c), dtype=np.float64)
        for start in range(0, len(x), _CHUNK):
            block = l2_normalize(x[start:start + _CHUNK])
            if k < train.shape[0]:
                distance = np.negative(block @ train.T)  # memory: chunk x training rows, reused in place
                nearest = np.argpartition(distance, k - 1, axis=1)[:, :k]
            else:
                nearest = np.broadcast_to(np.arange(train.shape[0]), (len(block), train.shape[0]))
            votes = labels[nearest]
            rows = np.repeat(np.arange(len(block)), votes.shape[1])
            np.add.at(out[start:start + len(block)], (rows, votes.ravel()), 1.0)
        return out / k

    def save(self, path: str | os.PathLike) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, head_type=np.array(self.head_type), format_version=np.array(FORMAT_VERSION),
                         **self.arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NumpyHead":
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise
        except Exception as exc:  # zip errors, pickled object arrays, truncation
            raise ModelFileError(f"not a readable model.npz ({type(exc).__name__}: {exc})") from None
        head_type = str(arrays.pop("head_type", ""))
        version = int(arrays.pop("format_version", 0))
        if version > FORMAT_VERSION:
            raise ModelFileError(f"model.npz format {version} is newer than this headstart understands")
        return cls(head_type, arrays)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (as sklearn's ``normalize``)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)
