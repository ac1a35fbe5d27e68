"""Feature rows kept as the cache stores them, handed out as float32 a block at a time.

At a million rows of 1,280, float32 unit vectors take 5.1 GB, and a report then needs room
for its own arrays besides; float16, as caches store them, takes half. :class:`UnitRows`
holds the stored values and each row's norm, and indexing it (``x[rows]``, ``x[a:b]``)
returns float32 unit vectors: the same numbers, bit for bit, as normalising every row at
once, so the reports read it as they read an array. Only a block or a gathered subset is
ever float32 at a time.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 16384


class UnitRows:
    """Rows as float32 unit vectors on indexing (a zero row stays zero: it is similar to nothing)."""

    dtype = np.dtype(np.float32)
    ndim = 2

    def __init__(self, stored: np.ndarray, divisor: np.ndarray, nonzero: np.ndarray):
        self.stored = stored  # [N, D] as the cache stores them
        self.divisor = divisor  # [N] float32: each row's norm, 1 for a zero row
        self.nonzero = nonzero  # [N] bool

    @classmethod
    def of(cls, stored: np.ndarray) -> "UnitRows":
        norms = np.empty(len(stored), dtype=np.float64)
        for start in range(0, len(stored), _BLOCK):
            block = stored[start:start + _BLOCK].astype(np.float32)
            norms[start:start + len(block)] = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        return cls(stored, np.where(norms > 0, norms, 1.0).astype(np.float32), norms > 0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.stored.shape

    def __len__(self) -> int:
        return len(self.stored)

    def __getitem__(self, index) -> np.ndarray:
        block = self.stored[index].astype(np.float32)
        divisor = self.divisor[index]
        return block / (divisor[..., None] if np.ndim(divisor) else divisor)


def as_rows(x):
    """``x`` as the reports use it: :class:`UnitRows` as they are, anything else as a float32 array."""
    return x if isinstance(x, UnitRows) else np.ascontiguousarray(x, dtype=np.float32)


def nonzero_rows(x) -> np.ndarray:
    """Which rows are not all zero."""
    if isinstance(x, UnitRows):
        return x.nonzero
    return np.einsum("ij,ij->i", x, x) > 0
