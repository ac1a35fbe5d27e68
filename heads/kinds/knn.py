"""``--head knn``: cosine k-nearest neighbours over the training rows.

model.npz keeps the training rows (unit length), their labels, k and the number of classes.
Probabilities are the k neighbours' class shares (scikit-learn's ``KNeighborsClassifier``
with ``metric="cosine"``, uniform weights; tested against it).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from headstart.embedder.errors import UsageError

from .arrays import ArrayHead, l2_normalize
from .base import FitReport, Option, need

DEFAULT_K = 10
_CHUNK = 512  # query rows per similarity block (512 x 40,000 float32 = 80 MB)


class KNNHead(ArrayHead):
    name = "knn"
    summary = "cosine k-nearest neighbours"
    options = {"k": Option("--k", "neighbours", int, int, example="5,10,20")}
    default_text: ClassVar[dict] = {"k": f"min({DEFAULT_K}, training images)"}
    required_arrays = ("train", "labels", "k", "n_classes")

    def __init__(self, k: int | None = None):
        self.k = k  # None: min(DEFAULT_K, training rows)

    def check(self, given=frozenset()) -> None:
        need(self.k is None or int(self.k) >= 1, f"--k must be at least 1, got {self.k}")

    @classmethod
    def preload(cls) -> None:
        import sklearn.neighbors  # noqa: F401

    def _fit(self, x, y, num_classes, seed) -> FitReport:
        from sklearn.neighbors import KNeighborsClassifier

        k = int(self.k) if self.k is not None else min(DEFAULT_K, len(y))
        if k > len(y):
            raise UsageError(f"--k {k} is more than the {len(y)} training images; use a smaller --k")
        # scikit-learn's fit only stores the rows; it is kept as the reference the numpy
        # predictor is tested against.
        self.estimator_ = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(x, y)
        self.k_ = k
        self.train_ = l2_normalize(x)
        self.labels_ = y.astype(np.int32)
        return FitReport(info={"k": k})

    def fitted_params(self) -> dict:
        record = super().fitted_params()
        if hasattr(self, "k_"):
            record["k"] = self.k_
        return record

    def _arrays(self):
        return {"train": self.train_, "labels": self.labels_, "k": np.array(self.k_),
                "n_classes": np.array(self.num_classes_)}

    def _restore(self, arrays):
        self.train_ = np.asarray(arrays["train"], dtype=np.float32)
        self.labels_ = np.asarray(arrays["labels"]).astype(np.int64).reshape(-1)
        self.k_ = int(arrays["k"])
        self.num_classes_ = int(arrays["n_classes"])
        if self.train_.ndim != 2 or len(self.labels_) != len(self.train_) or not 1 <= self.k_ <= len(self.train_):
            raise ValueError(f"train {list(self.train_.shape)}, labels {list(self.labels_.shape)}, k {self.k_}")
        self.feature_dim_ = int(self.train_.shape[1])

    def _proba(self, x):
        train, labels, k = self.train_, self.labels_.astype(np.int64), self.k_
        out = np.zeros((len(x), self.num_classes_), dtype=np.float64)
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
