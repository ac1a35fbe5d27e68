"""Heads whose learned state is a few numeric arrays, saved as ``model.npz`` without pickle.

Pickle (and joblib) execute code when loaded, so a run folder someone hands you could run
anything. ``model.npz`` holds only numeric arrays (plus the kind's name), is read with
``allow_pickle=False``, and each kind's ``predict_proba`` is a few lines of numpy (for the
scikit-learn kinds, a re-implementation of scikit-learn's, tested against it).
Standardisation, when used, is stored as ``mean`` and ``scale`` and applied first.

The layout (array names, ``head_type``, ``format_version`` 1) is the one headstart has
always written, so run folders of older versions load unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from headstart.embedder.atomic import atomic_path

from ..standardize import Standardizer
from .base import FitReport, Head, ModelFileError

FORMAT_VERSION = 1
MODEL_FILE = "model.npz"


class ArrayHead(Head):
    """Base of the numpy kinds: subclasses implement ``_fit``, ``_arrays``, ``_restore``, ``_proba``."""

    model_file: ClassVar[str] = MODEL_FILE
    required_arrays: ClassVar[tuple[str, ...]] = ()

    # ------------------------------------------------------------ for subclasses

    def _fit(self, x: np.ndarray, y: np.ndarray, num_classes: int, seed: int) -> FitReport:
        """Fit on standardised float32 rows; set the learned ``*_`` attributes."""
        raise NotImplementedError

    def _arrays(self) -> dict[str, np.ndarray]:
        """The learned state as named numeric arrays."""
        raise NotImplementedError

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        """Set the learned state from ``_arrays()``'s output (shapes checked by the caller's reads)."""
        raise NotImplementedError

    def _proba(self, x: np.ndarray) -> np.ndarray:
        """Probabilities [N, C] of standardised float32 rows."""
        raise NotImplementedError

    # ------------------------------------------------------------ the protocol

    def fit(self, X, y, *, num_classes, seed=0, standardizer=None, validation=None, on_epoch=None):
        self.standardizer_ = standardizer
        x = standardizer.transform(X) if standardizer is not None else np.asarray(X, dtype=np.float32)
        self.feature_dim_ = int(x.shape[1])
        self.num_classes_ = int(num_classes)
        self.report_ = self._fit(x, np.asarray(y, dtype=np.int64), int(num_classes), int(seed))
        return self

    def predict_proba(self, X) -> np.ndarray:
        x = np.asarray(X, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim_:
            raise ValueError(f"features must be [N, {self.feature_dim_}], got {list(x.shape)}")
        if self.standardizer_ is not None:
            x = self.standardizer_.transform(x)
        return self._proba(x)

    def save(self, folder) -> str:
        arrays = dict(self._arrays())
        if self.standardizer_ is not None:
            arrays.update(mean=self.standardizer_.mean, scale=self.standardizer_.scale)
        with atomic_path(Path(folder) / MODEL_FILE) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, head_type=np.array(self.name), format_version=np.array(FORMAT_VERSION), **arrays)
        return MODEL_FILE

    @classmethod
    def load(cls, folder, model_file: str | None = None) -> "ArrayHead":
        path = Path(folder) / (model_file or MODEL_FILE)
        arrays = read_npz(path)
        kind = str(arrays.pop("head_type", ""))
        version = int(arrays.pop("format_version", 0))
        if version > FORMAT_VERSION:
            raise ModelFileError(f"model.npz format {version} is newer than this headstart understands")
        if kind != cls.name:
            raise ModelFileError(f"it holds a {kind or 'unnamed'} head, not a {cls.name} head")
        missing = [name for name in cls.required_arrays if name not in arrays]
        if missing:
            raise ModelFileError(f"{cls.name} head lacks the array {missing[0]!r}")
        head = cls()
        head.standardizer_ = (Standardizer(arrays.pop("mean").astype(np.float32), arrays.pop("scale").astype(np.float32))
                              if "mean" in arrays and "scale" in arrays else None)
        try:
            head._restore(arrays)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise ModelFileError(f"its {cls.name} arrays do not fit together ({exc})") from None
        if head.standardizer_ is not None and head.standardizer_.mean.shape != (head.feature_dim_,):
            raise ModelFileError("its standardisation arrays do not match the feature size")
        return head


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an npz file, never unpickling anything."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except Exception as exc:  # zip errors, pickled object arrays, truncation
        raise ModelFileError(f"not a readable model.npz ({type(exc).__name__}: {exc})") from None


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(z: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-z)) without overflow (as scipy.special.expit)."""
    return np.exp(-np.logaddexp(0.0, -z))


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length; all-zero rows stay zero (as sklearn's ``normalize``)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)
