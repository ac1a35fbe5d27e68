"""Per-feature standardisation, fitted on the training rows only.

Fitting the mean and scale on all rows would let the validation images shape the model a
little (leakage); so the statistics come from the training rows and travel with the head:
inside the Keras model as a fixed ``Normalization`` layer, or as arrays in ``model.npz``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_MIN_SCALE = 1e-6


@dataclass
class Standardizer:
    mean: np.ndarray  # [D] float32
    scale: np.ndarray  # [D] float32, never 0 (constant features get 1)

    @classmethod
    def fit(cls, x_train: np.ndarray) -> "Standardizer":
        x = np.asarray(x_train, dtype=np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < _MIN_SCALE] = 1.0
        return cls(mean.astype(np.float32), scale.astype(np.float32))

    @classmethod
    def identity(cls, dim: int) -> "Standardizer":
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean) / self.scale).astype(np.float32, copy=False)

    @property
    def variance(self) -> np.ndarray:
        """What ``keras.layers.Normalization`` takes (it divides by sqrt(variance))."""
        return (self.scale.astype(np.float64) ** 2).astype(np.float32)
