"""The near-duplicate threshold of ``inspect duplicates``, calibrated on each cache's own features.

A fixed cosine cannot serve every cache: how close distinct photos get depends on the
backbone (each spreads its features differently), on the images (thumbnails and look-alike
product shots crowd together) and on how many there are (more images, closer neighbours).
A fixed 0.90, chosen for MobileNetV2 on the hymenoptera photos, was reported to flag half
false pairs on low-resolution photos and 82 false "leaks" with another backbone (issue 12).

So the threshold is read off the cache. For a sample of rows, the cosine distance
``1 - cos`` to the nearest *other* row is what "distinct" looks like here, and its median
``m`` the typical distance. A pair is a near-duplicate when it is :data:`CLOSER` times
closer than that: ``cos >= 1 - m / CLOSER``. Near-copies in the cache pull the lower tail
down; rows whose nearest neighbour is a near-copy by this rule are set aside and the median
taken again, so they barely move it.

Measured (``benchmarks/duplicate_threshold.py``) on the 396 hymenoptera photos plus six
kinds of edited copy of each, at full size and as 64- and 32-pixel thumbnails:

* MobileNetV2 1.0 and 0.35 (ImageNet weights): the rule gives 0.88-0.94 (0.893 for 1.0 at
  full size, where 0.90 had been chosen by hand). No distinct pair reaches it in five of
  the six studies; one of 78,000 does on 32-pixel thumbnails with alpha 0.35, where 0.90
  let seven through. At full size it finds 98-100% of JPEG re-encodes and brightness
  changes, 94-99% of mirror images and 90-97% of 5% crops; on thumbnails fewer, as such
  edits change a tiny image more.
* ResNet50 with random weights: every pair of photos is above 0.98, so 0.90 called all
  78,210 pairs near; the rule gives 0.9987, lets at most one distinct pair through, and
  warns that the features barely tell images apart.
* Copies of 30% of the photos mixed in moved the threshold by 0.012 at most.

A cache of fewer than :data:`MIN_ROWS` rows has too few neighbours to read a median from:
it gets :data:`DEFAULT_THRESHOLD`. ``--threshold`` overrides both.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .rows import nonzero_rows

DEFAULT_THRESHOLD = 0.90  # MobileNetV2 1.0 on real photos (see the module notes); small caches
CLOSER = 3.0  # a near-duplicate is this many times closer than a typical nearest neighbour
SAMPLE_ROWS = 256  # rows whose nearest neighbours (among all rows) are measured: ~5% of the join at 100k rows
MIN_ROWS = 100  # below this, the median nearest-neighbour distance is too noisy: the default
# Above this median nearest-neighbour cosine, half the images have a very close neighbour: the
# features barely separate images, or most images have near-copies. Either way, say so.
CROWDED = 0.97
_COLUMNS = 8192  # rows multiplied at once against the sample (256 x 8192 float32: 8 MB)


@dataclass
class ThresholdChoice:
    """The threshold used and how it was chosen (``--json`` reports it under ``threshold_choice``)."""

    value: float
    source: str  # 'calibrated' | 'given' (--threshold) | 'default' (too few rows to calibrate)
    sample_rows: int = 0
    nearest_median: float | None = None  # median cosine of a sampled row to its nearest other row
    nearest_p90: float | None = None  # 90th percentile of the same (how close the closest typically get)
    sample_near_copies: int = 0  # sampled rows whose nearest neighbour is a near-copy (left out of the median)
    closer: float = CLOSER
    seconds: float = 0.0  # time spent calibrating
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.source == "given":
            return "given by --threshold"
        if self.source == "default":
            return (f"the default: {self.sample_rows:,} images are too few to calibrate on (under {MIN_ROWS}); "
                    f"--threshold overrides")
        distance = 1.0 - self.nearest_median
        return (f"calibrated on this cache: a typical image's nearest other image is at cosine "
                f"{self.nearest_median:.3f} (median of {self.sample_rows:,} sampled); near-duplicates are "
                f"{self.closer:g}x closer (1 - cosine <= {distance / self.closer:.3f}); --threshold overrides")

    def to_dict(self) -> dict:
        return {**asdict(self), "text": self.describe()}


def given_threshold(value: float) -> ThresholdChoice:
    return ThresholdChoice(value=float(value), source="given")


def nearest_other_cosine(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Cosine of each of ``rows`` to its nearest other row of the unit vectors ``x`` (exact:
    one pass over ``x`` in column blocks, so memory stays ``len(rows) x`` :data:`_COLUMNS`)."""
    best = np.full(len(rows), -np.inf, dtype=np.float32)
    left = np.ascontiguousarray(x[rows], dtype=np.float32)
    for start in range(0, len(x), _COLUMNS):
        block = left @ x[start:start + _COLUMNS].T
        mine = (rows >= start) & (rows < start + len(block.T))
        block[np.flatnonzero(mine), rows[mine] - start] = -np.inf  # not itself
        np.maximum(best, block.max(axis=1), out=best)
    return best


def _rule(median: float) -> float:
    return 1.0 - (1.0 - median) / CLOSER


def _distinct_median(nearest: np.ndarray, rounds: int = 10) -> tuple[float, int]:
    """Median nearest-neighbour cosine of the sampled rows that have no near-copy, and how
    many were set aside as having one.

    Rows whose nearest neighbour is a near-copy by the rule itself are set aside and the
    median taken again, until nothing changes (each round can only set more aside, so it
    ends). Near-copies then move the threshold only by the few just below it. More than
    half set aside would leave no "typical" image to read: the last estimate stands."""
    distinct = np.ones(len(nearest), dtype=bool)
    for _ in range(rounds):
        now = nearest < _rule(float(np.median(nearest[distinct])))
        if now.sum() < len(nearest) / 2 or np.array_equal(now, distinct):
            break
        distinct = now
    return float(np.median(nearest[distinct])), int(len(nearest) - distinct.sum())


def calibrate_threshold(x: np.ndarray, seed: int = 0, sample_rows: int = SAMPLE_ROWS) -> ThresholdChoice:
    """The threshold for the unit vectors ``x`` (one row per distinct image); see the module notes.

    Zero rows (similar to nothing) are left out of the sample. Deterministic given ``seed``.
    """
    started = time.perf_counter()
    n = len(x)
    nonzero = np.flatnonzero(nonzero_rows(x)) if n else np.zeros(0, np.int64)
    if len(nonzero) < MIN_ROWS:
        return ThresholdChoice(value=DEFAULT_THRESHOLD, source="default", sample_rows=int(len(nonzero)))
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(nonzero, min(sample_rows, len(nonzero)), replace=False))
    nearest = nearest_other_cosine(x, rows).astype(np.float64)
    median, set_aside = _distinct_median(nearest)
    value = float(np.clip(_rule(median), DEFAULT_THRESHOLD / 2, 1.0))
    choice = ThresholdChoice(value=round(value, 4), source="calibrated", sample_rows=len(rows),
                             nearest_median=round(median, 4), nearest_p90=round(float(np.quantile(nearest, 0.9)), 4),
                             sample_near_copies=set_aside, seconds=round(time.perf_counter() - started, 3))
    if median >= CROWDED:
        choice.warnings.append(
            f"half the sampled images have another image at cosine >= {median:.3f}: these features barely tell "
            f"images apart (random backbone weights?), or most images have near-copies; the calibrated threshold "
            f"{choice.value:g} keeps only the closest pairs; pass --threshold to choose another")
    return choice
