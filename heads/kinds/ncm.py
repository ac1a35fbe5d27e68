"""``--head ncm``: nearest class mean on L2-normalised features, with calibrated probabilities.

A strong few-shot baseline with nothing to tune: each class is the mean direction of its
training rows, and an image goes to the class whose mean is most cosine-similar.

The rule, exactly:

* rows are L2-normalised (after standardisation, if asked for): ``u = x / |x|``;
* class ``c``'s prototype is the normalised mean of its training rows:
  ``m_c = sum(u_i, y_i = c) / |sum(u_i, y_i = c)|``;
* ``p(c | x) = softmax_c(beta * cos(u, m_c))``: a softmax over cosine similarities with an
  inverse temperature ``beta = 1 / T``.

``beta`` is fitted on the training rows by minimising the log-loss of their labels, with
each row scored *leave-one-out*: its own class's prototype is recomputed without it
(``sum_c - u_i``), so the fit sees similarities like a new image's, not the optimistic ones
of a row that pulled its own mean towards itself (with few images per class, that pull
would make the probabilities overconfident). The log-loss is convex in ``beta``, so a
bounded 1-D search finds its minimum. Rows of a class with a single training image have
no leave-one-out prototype and are left out of that fit; if no class has two images,
``beta`` falls back to :data:`FALLBACK_BETA` and a warning says so. Argmax predictions do
not depend on ``beta``; only the confidences do.
"""

from __future__ import annotations

import numpy as np

from .arrays import ArrayHead, l2_normalize, softmax
from .base import FitReport

BETA_BOUNDS = (1e-2, 1e4)  # inverse temperature: from nearly uniform to nearly one-hot
FALLBACK_BETA = 10.0


class NCMHead(ArrayHead):
    name = "ncm"
    summary = "nearest class mean by cosine, a few-shot baseline"
    options = {}
    required_arrays = ("means", "beta")

    def __init__(self):
        pass  # nothing to tune; beta is fitted

    def _fit(self, x, y, num_classes, seed) -> FitReport:
        u = l2_normalize(x).astype(np.float64)
        sums = np.zeros((num_classes, u.shape[1]))
        np.add.at(sums, y, u)
        counts = np.bincount(y, minlength=num_classes)
        self.means_ = l2_normalize(sums).astype(np.float32)
        notes = []
        usable = counts[y] >= 2
        if usable.any():
            similarity = u[usable] @ l2_normalize(sums).astype(np.float64).T
            own = y[usable]
            rows = np.arange(len(own))
            loo = sums[own] - u[usable]  # each row's own prototype without it
            norms = np.linalg.norm(loo, axis=1)
            similarity[rows, own] = np.einsum("ij,ij->i", u[usable], loo) / np.where(norms > 0, norms, 1.0)
            self.beta_, loss = _fit_beta(similarity, own)
            how = f"leave-one-out log-loss on {int(usable.sum())} training images"
        else:
            self.beta_, loss = FALLBACK_BETA, None
            how = "default (no class has 2 training images)"
            notes.append(f"ncm: no class has 2 training images, so its confidence could not be calibrated "
                         f"(used beta={FALLBACK_BETA:g}); its predictions are unaffected")
        self.beta_chosen_by_ = how
        info = {"beta": float(self.beta_), "beta_chosen_by": how}
        if loss is not None:
            info["loo_log_loss"] = round(float(loss), 6)
        return FitReport(warnings=notes, info=info)

    def _arrays(self):
        return {"means": self.means_, "beta": np.array(float(self.beta_))}

    def _restore(self, arrays):
        self.means_ = np.asarray(arrays["means"], dtype=np.float32)
        self.beta_ = float(arrays["beta"])
        if self.means_.ndim != 2 or not np.isfinite(self.beta_) or self.beta_ <= 0:
            raise ValueError(f"means {list(self.means_.shape)}, beta {self.beta_}")
        self.feature_dim_ = int(self.means_.shape[1])
        self.num_classes_ = int(self.means_.shape[0])

    def _proba(self, x):
        similarity = l2_normalize(x).astype(np.float64) @ self.means_.T.astype(np.float64)
        return softmax(self.beta_ * similarity)


def _fit_beta(similarity: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The inverse temperature minimising the mean log-loss of ``softmax(beta * similarity)``."""
    from scipy.optimize import minimize_scalar
    from scipy.special import logsumexp

    rows = np.arange(len(labels))

    def loss(log_beta: float) -> float:
        z = np.exp(log_beta) * similarity
        return float(np.mean(logsumexp(z, axis=1) - z[rows, labels]))

    low, high = np.log(BETA_BOUNDS[0]), np.log(BETA_BOUNDS[1])
    result = minimize_scalar(loss, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x)), float(result.fun)
