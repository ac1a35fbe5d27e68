"""Backbone fingerprints: everything that changes the numbers a backbone produces.

A fingerprint is a flat JSON object (architecture, weights identity, input size, pooling,
preprocessing, output layer, computation dtype, ...). It is stored on every cache and
every run; rows or heads of two fingerprints never mix, and a mismatch is an error that
names both (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from .errors import CacheError

Fingerprint = Mapping[str, Any]


def canonical_json(fingerprint: Fingerprint) -> str:
    return json.dumps(dict(fingerprint), sort_keys=True, separators=(",", ":"))


def fingerprint_id(fingerprint: Fingerprint) -> str:
    """A short stable id, used in default cache names."""
    return hashlib.sha256(canonical_json(fingerprint).encode()).hexdigest()[:10]


def describe(fingerprint: Fingerprint) -> str:
    """One line a person can read: ``MobileNetV2 alpha=0.35 weights=imagenet:keras-3.15 224px avg float32``.

    The full object is always stored too; :func:`differences` names exact fields.
    """
    fp = dict(fingerprint)
    parts = [str(fp.pop("architecture", "?"))]
    if "alpha" in fp:
        parts.append(f"alpha={fp.pop('alpha'):g}")
    weights = str(fp.pop("weights", "?"))
    parts.append("weights=" + (weights[:19] + "…" if weights.startswith("sha256:") else weights))
    size = fp.pop("input_size", None)
    parts.append(f"{size}px" if size else "native-size")
    parts.append(str(fp.pop("pooling", "?")))
    layer = fp.pop("layer", "")
    if layer:
        parts.append(f"layer={layer}")
    parts.append(str(fp.pop("compute_dtype", "")))
    if fp.get("resize") == "bilinear" and "decode" not in fp:  # made before the pixel rule was recorded
        parts.append("legacy-pixels")
    for key in ("preprocessing", "resize", "decode", "jpeg_scaling", "orientation"):
        fp.pop(key, None)
    parts.extend(f"{k}={fp[k]}" for k in sorted(fp))
    return " ".join(p for p in parts if p)


def differences(a: Fingerprint, b: Fingerprint) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '-')} vs {b.get(k, '-')}" for k in keys if a.get(k) != b.get(k)]


def same(a: Fingerprint, b: Fingerprint) -> bool:
    return canonical_json(a) == canonical_json(b)


def require_same(have: Fingerprint, want: Fingerprint, have_what: str, want_what: str) -> None:
    """Raise a CacheError naming both fingerprints and what differs, unless they are equal."""
    if same(have, want):
        return
    diff = "; ".join(differences(have, want))
    raise CacheError(
        f"fingerprint mismatch: {have_what} is [{describe(have)}] but {want_what} is "
        f"[{describe(want)}] (differs in {diff})"
    )
