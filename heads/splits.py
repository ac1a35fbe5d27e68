"""Which images train and which validate: a pure function of content keys and a seed.

Fine-tuning must hold out exactly the images ``head train`` held out, and adding images must
never move an old image across the line (or a head would be validated on images an earlier
head trained on). So a side is decided per *content key*, never per path or list position,
and the same bytes under two paths always land on the same side.

* The layout or manifest gave splits (any non-empty entry): they are used as given, and
  unmarked entries train. Bytes filed under two splits go to the most held-out one
  (test > val > train): nothing is both trained on and evaluated on. If the layout names no
  ``val`` image at all (say ``train/`` and ``test/`` only), validation rows are carved out
  of its training rows by the hash rule below; the source is then ``layout+hash``.
* Otherwise a hash bucket: ``u = sha256("<seed>:<key>")`` read as a number in [0, 1), and
  ``u < val_fraction`` validates. An image's side depends on its own key and the seed only,
  which is what makes it stable when images are added. Because the hash ignores the label,
  every class is split in the same proportion in expectation: stratified without letting one
  image's side depend on another's (any rule that did, e.g. "at least one per class", would
  move old images when new ones arrive). A small class can still end with no validation
  image; callers warn about that.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from headstart.embedder.defaults import VAL_FRACTION
from headstart.embedder.errors import UsageError

SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = VAL_FRACTION
DEFAULT_SEED = 0
# How held out a split name is: bytes filed under two splits go to the most held-out one.
SPLIT_PRIORITY = {"": 0, "train": 1, "val": 2, "validation": 2, "test": 3}
_NAMES = {0: "train", 1: "train", 2: "val", 3: "test"}


@dataclass(frozen=True)
class SplitSpec:
    """What decides a hash split: the validation fraction and the seed.

    :meth:`of_run` is the one rule for reading them back from a run, so ``head eval``,
    ``finetune`` and anything else that reproduces a run's split agree on the fallback.
    """

    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = DEFAULT_SEED

    @classmethod
    def of_run(cls, split: Mapping[str, Any] | None, params: Mapping[str, Any] | None = None) -> "SplitSpec":
        """A run's split: what head.json's ``split`` records, else its ``params``, else the defaults
        (runs have recorded ``split`` since the first format; the fallbacks are for hand-made files)."""
        split, params = dict(split or {}), dict(params or {})

        def pick(name: str, default):
            for source in (split, params):
                if source.get(name) is not None:
                    return source[name]
            return default

        return cls(val_fraction=float(pick("val_fraction", DEFAULT_VAL_FRACTION)),
                   seed=int(pick("seed", DEFAULT_SEED)))


def check_val_fraction(val_fraction: float) -> float:
    value = float(val_fraction)
    if not 0.0 < value < 1.0:
        raise UsageError(f"--val-fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    return value


def hash_unit(keys: Sequence[str], seed: int = 0) -> np.ndarray:
    """Each key's position in [0, 1): the first 8 bytes of sha256("<seed>:<key>")."""
    out = np.empty(len(keys), dtype=np.float64)
    prefix = f"{int(seed)}:".encode()
    for i, key in enumerate(keys):
        digest = hashlib.sha256(prefix + str(key).encode()).digest()
        out[i] = int.from_bytes(digest[:8], "big") / 2.0**64
    return out


def split_source(given_splits: Sequence[str]) -> str:
    """``layout`` when the splits given name a val set, ``layout+hash`` when they name
    others only, ``hash`` when none were given."""
    given = {str(s) for s in given_splits} - {""}
    if not given:
        return "hash"
    return "layout" if given & {"val", "validation"} else "layout+hash"


def assign_splits(
    keys: Sequence[str],
    labels: Sequence[int],
    given_splits: Sequence[str],
    val_fraction: float = VAL_FRACTION,
    seed: int = 0,
) -> np.ndarray:
    """'train'/'val'/'test' for every entry (one per file or per row; duplicates of a key
    always get the same answer). ``labels`` are accepted for the contract and length-checked,
    but deliberately unused: relabelling an image must not move it across the line.
    """
    keys = np.asarray([str(k) for k in keys], dtype=object)
    given = np.asarray([str(s) for s in given_splits], dtype=object)
    if not (len(keys) == len(given) == len(labels)):
        raise ValueError("keys, labels and given_splits must have the same length")
    val_fraction = check_val_fraction(val_fraction)
    unknown = sorted({s for s in given if s not in SPLIT_PRIORITY})
    if unknown:
        raise UsageError(f"unknown split name {unknown[0]!r} in the cache; use train, val or test")
    source = split_source(given)
    unique_keys, inverse = np.unique(keys, return_inverse=True) if len(keys) else (keys, np.zeros(0, int))
    inverse = np.asarray(inverse).reshape(-1)
    if source == "hash":
        in_val = hash_unit(unique_keys, seed) < val_fraction
        per_key = np.where(in_val, "val", "train").astype(object)
        return per_key[inverse]
    # Layout: the most held-out split any copy of the bytes was filed under.
    priority = np.fromiter((SPLIT_PRIORITY[s] for s in given), dtype=np.int64, count=len(given))
    best = np.zeros(len(unique_keys), dtype=np.int64)
    np.maximum.at(best, inverse, priority)
    per_key = np.asarray([_NAMES[int(p)] for p in best], dtype=object)
    if source == "layout+hash":
        carve = (per_key == "train") & (hash_unit(unique_keys, seed) < val_fraction)
        per_key[carve] = "val"
    return per_key[inverse]
