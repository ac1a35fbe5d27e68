"""Principal axes from the ``D x D`` second-moment matrix of a row sample.

Every report that projects (the similarity bound, the label model, the map) needs an
orthonormal basis ordered by energy. A ``D x D`` matrix from at most ``sample`` rows keeps
this cheap (20,000 x 1,280 is ~0.07 TFLOP) and bounded in memory. Any orthonormal basis keeps
the similarity bound exact; a sample only makes it a little less tight.
"""

from __future__ import annotations

import numpy as np

BASIS_ROWS = 20000
_BLOCK = 8192


def principal_axes(x: np.ndarray, center: bool = False, sample: int = BASIS_ROWS, seed: int = 0):
    """``(axes [D, D] with columns by decreasing energy, energy share [D], mean [D])``.

    ``center=False`` gives the uncentred axes (they minimise the residual norm of the rows
    themselves, which is what a bound on dot products needs); ``center=True`` is ordinary PCA.
    """
    n, d = x.shape
    rows = np.arange(n) if n <= sample else np.sort(np.random.default_rng(seed).choice(n, sample, replace=False))
    mean = np.zeros(d, dtype=np.float64)
    if center and len(rows):
        for start in range(0, len(rows), _BLOCK):
            mean += x[rows[start:start + _BLOCK]].sum(axis=0, dtype=np.float64)
        mean /= len(rows)
    gram = np.zeros((d, d), dtype=np.float64)
    mean32 = mean.astype(np.float32)
    for start in range(0, len(rows), _BLOCK):
        block = np.asarray(x[rows[start:start + _BLOCK]], dtype=np.float32)
        if center:
            block = block - mean32
        gram += (block.T @ block).astype(np.float64)
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    values = np.maximum(values[order], 0.0)
    total = values.sum()
    share = values / total if total > 0 else np.zeros_like(values)
    return vectors[:, order], share, mean
