"""Every pair of rows with cosine similarity >= t: exact, blocked, never an ``N x N`` matrix.

All pairs of 100,000 x 1,280 rows are 6.4e12 multiply-adds: over 30 s at the ~200 GFLOP/s
a 2-core machine reaches in float32, and that is before reading 5e9 results. So the rows
(unit vectors) are first projected onto their top ``r`` principal axes ``V``. Writing
``x = Px + e_x`` (``Px = V V^T x``, ``e_x`` orthogonal to it),

    <x, y> = <V^T x, V^T y> + <e_x, e_y>  <=  <V^T x, V^T y> + |e_x| |e_y|     (Cauchy-Schwarz)

and the right-hand side is one dot product of the *augmented* vectors ``[V^T x, |e_x|]``
(``r + 1`` numbers). A blocked pass over those (``N^2 (r+1)`` instead of ``N^2 D``) keeps
every pair whose bound reaches ``t`` minus a rounding slack; no pair above ``t`` can be
dropped. The candidates are then verified in full dimension, pair by pair (a gather) or as a
dense sub-block where they are dense. Embeddings concentrate their energy in a few
directions, so few pairs survive the bound (measured: 1 in 10^5 at r = 64 for a MobileNetV2-like
spectrum at t = 0.9).

How tight the bound is depends on the data, so ``r`` is chosen per run: the bound's
candidate rate is measured on a sample of rows for r in :data:`RANKS`, and a cost model
(the pass, plus verifying the expected candidates) picks the cheapest, or the plain exact
pass (``r = D``) when no rank pays. Memory: the features, their ``N x r`` projection, and
one tile of :data:`ROW_BLOCK` x :data:`COL_BLOCK` (64 MB of float32).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from .pca import principal_axes
from .rows import as_rows

RANKS = (32, 64, 128, 256)
SLACK = 1e-4  # covers float32 rounding in the bound (|error| ~1e-6 here), so the bound stays an upper bound
ROW_BLOCK = 2048
COL_BLOCK = 8192  # a tile is ROW_BLOCK x COL_BLOCK float32 = 64 MB
SAMPLE_ROWS = 512  # rows whose candidate rates (against all rows) choose the rank
SMALL = 4096  # below this many rows the exact pass is cheap: no planning
SCAN_COST = 8.0  # flop-equivalents per tile entry: finding the tile's max, and candidates
GATHER_COST = 100.0  # a gathered pair costs ~this many times its 2*D flops (memory-bound)
_GATHER = 4096  # pairs verified per gather chunk (2 x 4096 x D floats)

Emit = Callable[[np.ndarray, np.ndarray, np.ndarray], None]


@dataclass
class JoinStats:
    """How the join ran: what ``--json`` reports under ``method``."""

    method: str = "exact"  # 'pca-bound' | 'exact'
    rank: int = 0  # principal axes used by the bound (0: exact pass)
    residual_energy: float = 0.0  # mean |e_x|^2 at that rank (share of the rows' energy outside it)
    sample_candidate_rate: dict = field(default_factory=dict)  # rank -> share of pairs the bound keeps
    estimated_pairs: float = 0.0  # from the exact similarities of a row sample
    candidates: int = 0  # pairs the bound kept (all pairs scanned by the exact pass are not counted)
    dense_blocks: int = 0  # tiles whose candidates were verified as one dense product
    pairs: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _augmented(coords: np.ndarray, norms2: np.ndarray, upto: int) -> np.ndarray:
    """``[V_r^T x, |e_x|]`` rows as float32 (residual norms from float64 sums)."""
    head = coords[:, :upto]
    energy = np.einsum("ij,ij->i", head, head, dtype=np.float64)
    residual = np.sqrt(np.maximum(norms2 - energy, 0.0))
    out = np.empty((len(coords), upto + 1), dtype=np.float32)
    out[:, :upto] = head
    out[:, upto] = residual
    return out


def _sample_rate(aug: np.ndarray, sample: np.ndarray, threshold: float) -> float:
    """Share of (sample row, other row) pairs whose value reaches ``threshold``."""
    hits = 0
    rows = aug[sample]
    for start in range(0, len(aug), COL_BLOCK):
        hits += int(np.count_nonzero(rows @ aug[start:start + COL_BLOCK].T >= threshold))
    hits -= int(np.count_nonzero(np.einsum("ij,ij->i", rows, rows) >= threshold))  # self-pairs
    return hits / max(len(sample) * (len(aug) - 1), 1)


def plan_join(x: np.ndarray, threshold: float, seed: int = 0, rank: int | None = None):
    """Choose the method and rank (``rank`` forces one; tests use it), return
    ``(stats, matrix to scan, its candidate threshold)``."""
    n, d = x.shape
    stats = JoinStats()
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, min(n, SAMPLE_ROWS), replace=False))
    exact_rate = _sample_rate(x, sample[: SAMPLE_ROWS // 2], threshold)
    stats.estimated_pairs = exact_rate * n * (n - 1) / 2
    ranks = [r for r in RANKS if 2 * r <= d] if rank is None else [min(int(rank), d)]
    if rank is None and (n <= SMALL or not ranks):
        return stats, x, threshold
    axes, _, _ = principal_axes(x, center=False, seed=seed)
    top = axes[:, : ranks[-1]]
    coords = np.empty((n, ranks[-1]), dtype=np.float32)
    norms2 = np.empty(n, dtype=np.float64)
    for start in range(0, n, 8192):
        block = x[start:start + 8192].astype(np.float64)
        coords[start:start + len(block)] = block @ top
        norms2[start:start + len(block)] = np.einsum("ij,ij->i", block, block)
    best_cost, best = 2.0 * d + SCAN_COST, None
    for r in ranks:
        aug = _augmented(coords, norms2, r)
        rate = _sample_rate(aug, sample, threshold - SLACK)
        stats.sample_candidate_rate[str(r)] = rate
        cost = 2.0 * (r + 1) + SCAN_COST + rate * GATHER_COST * 2.0 * d
        if cost < best_cost or rank is not None:
            best_cost, best = cost, (r, aug)
    if best is None:
        return stats, x, threshold
    r, aug = best
    stats.method, stats.rank = "pca-bound", r
    stats.residual_energy = float(np.mean(aug[:, r].astype(np.float64) ** 2))
    return stats, np.ascontiguousarray(aug), threshold - SLACK


def _verify(x: np.ndarray, gi: np.ndarray, gj: np.ndarray, stats: JoinStats) -> np.ndarray:
    """Exact cosine of candidate pairs: one dense product where they are dense, else gathered."""
    ua, ia = np.unique(gi, return_inverse=True)
    ub, ib = np.unique(gj, return_inverse=True)
    if len(ua) * len(ub) <= GATHER_COST * len(gi):
        stats.dense_blocks += 1
        return (x[ua] @ x[ub].T)[ia.reshape(-1), ib.reshape(-1)]
    sims = np.empty(len(gi), dtype=np.float32)
    for start in range(0, len(gi), _GATHER):
        stop = start + _GATHER
        sims[start:stop] = np.einsum("ij,ij->i", x[gi[start:stop]], x[gj[start:stop]])
    return sims


def similar_pairs(x: np.ndarray, threshold: float, emit: Emit, seed: int = 0, progress=None,
                  check_estimate: Callable[[JoinStats], None] | None = None, rank: int | None = None) -> JoinStats:
    """Call ``emit(i, j, cosine)`` (arrays, ``i < j``) for every pair of rows of the unit
    vectors ``x`` with cosine >= ``threshold``; return how it went.

    ``progress`` is a tqdm-like bar (``total`` is set here, in pairs). ``check_estimate`` sees
    the plan (with ``estimated_pairs``) before the long pass, and may raise to refuse it.
    """
    started = time.perf_counter()
    x = as_rows(x)  # an array, or UnitRows (float16 kept, float32 a block at a time)
    n = len(x)
    if n < 2:
        return JoinStats(seconds=time.perf_counter() - started)
    stats, scan, cut = plan_join(x, threshold, seed, rank)
    if check_estimate is not None:
        check_estimate(stats)
    exact = stats.method == "exact"
    if progress is not None:
        progress.total = n * (n - 1) // 2
        progress.refresh()
    tile = np.empty((ROW_BLOCK, COL_BLOCK), dtype=np.float32)
    # Pairs (i, j) with j <= i of a tile that straddles the diagonal: masked out before the
    # scan, so self-pairs (always "candidates") never make a tile look busy.
    lower = np.tril(np.ones((ROW_BLOCK, ROW_BLOCK), dtype=bool))
    for i0 in range(0, n, ROW_BLOCK):
        i1 = min(i0 + ROW_BLOCK, n)
        left = scan[i0:i1]
        for j0 in range(i0, n, COL_BLOCK):
            j1 = min(j0 + COL_BLOCK, n)
            out = tile[: i1 - i0, : j1 - j0]
            np.matmul(left, scan[j0:j1].T, out=out)
            if j0 == i0:
                w = min(i1 - i0, j1 - j0)
                np.copyto(out[:, :w], -np.inf, where=lower[: i1 - i0, :w])
            # Row maxima first (one cheap pass): only rows holding a candidate are searched.
            hot = np.flatnonzero(out.max(axis=1) >= cut)
            if not len(hot):
                continue
            sub = out[hot]
            hi, jj = np.nonzero(sub >= cut)
            gi, gj = hot[hi] + i0, jj + j0
            if not len(gi):
                continue
            if exact:
                sims = sub[hi, jj]
            else:
                stats.candidates += len(gi)
                sims = _verify(x, gi, gj, stats)
                keep = sims >= threshold
                gi, gj, sims = gi[keep], gj[keep], sims[keep]
            if len(gi):
                stats.pairs += len(gi)
                emit(gi.astype(np.int64), gj.astype(np.int64), sims.astype(np.float32))
        if progress is not None:
            done = (i1 - i0) * (n - i1) + (i1 - i0) * (i1 - i0 - 1) // 2
            progress.update(done)
    stats.seconds = time.perf_counter() - started
    return stats
