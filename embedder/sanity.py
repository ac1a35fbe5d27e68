"""Refuse garbage features before they fill a cache.

A randomly initialised Keras MobileNetV2 gives pooled features of ~1e-12, which are
exactly 0 in float16 (DESIGN.md): a cache of zeros that trains heads to chance, silently.
The first batch is therefore checked for NaN/inf, all-zero, constant across images, and
values that the storage dtype would flush to zero.
"""

from __future__ import annotations

import numpy as np

from .errors import BackboneError

_FLOAT16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal float16, ~6.1e-5


def check_features(features: np.ndarray, storage_dtype: str, what: str,
                   pixel_groups: np.ndarray | None = None) -> None:
    """Raise BackboneError if ``features`` ([B, D] float32) look degenerate.

    ``pixel_groups`` (equal ids: identical input pixels) limits the "same features for every
    image" check to images whose pixels differ: two blank scans (different bytes, the same
    pixels) rightly give the same features, and must not stop a run.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.size == 0:
        return
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise BackboneError(f"{what} produced {bad} NaN/inf feature values in the first batch; the backbone is broken")
    peak = float(np.abs(x).max())
    if peak == 0.0:
        raise BackboneError(
            f"{what} produced all-zero features in the first batch; check the weights "
            f"(a randomly initialised network or a wrong --layer can do this)"
        )
    if pixel_groups is not None:
        _, first = np.unique(np.asarray(pixel_groups), return_index=True)
        x = x[np.sort(first)]  # one image per distinct input
    if x.shape[0] > 1:
        spread = float(np.abs(x - x[0]).max())
        if spread <= 1e-6 * peak:
            raise BackboneError(
                f"{what} produced the same features for every distinct image of the first batch; "
                f"the backbone ignores its input (check the weights and --layer)"
            )
    if storage_dtype == "float16":
        nonzero = x[x != 0]
        flushed = float(np.mean(np.abs(nonzero) < _FLOAT16_TINY)) if nonzero.size else 0.0
        if peak < 1e-3 or flushed > 0.5:
            raise BackboneError(
                f"{what} features are tiny (largest |value| {peak:.2g}; {flushed:.0%} would underflow in "
                f"float16), typical of random weights; use real --weights, or --dtype float32 if they are meant to be"
            )
