"""``inspect map``: the embeddings in 2-D, coloured by class, with flagged images ringed.

PCA (default) is linear and exact: distances along its two axes are real, and it takes a
second on 100,000 rows. t-SNE (``--method tsne``, scikit-learn) shows local neighbourhoods
(clusters, strays) far better but is O(n log n) with a large constant, so it runs on a seeded
sample (``--max-points``, default 5,000) after a 50-D PCA. Flagged images -- the first
``--top`` lines of a report CSV given with ``--flag`` (they are sorted worst first), or
without ``--flag`` the top of a fresh outlier ranking -- are always drawn, on top, ringed.
Drawn on a bare matplotlib ``Figure`` (Agg): no display, no global pyplot state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from headstart.embedder.errors import UsageError

from .inventory import Inventory, default_report_path, unit_features
from .output import read_flagged_paths, save_png
from .pca import principal_axes
from .report import QualityReport

METHODS = ("pca", "tsne")
DEFAULT_POINTS = {"pca": 50_000, "tsne": 5_000}
DEFAULT_FLAG_TOP = 50
_TSNE_DIMS = 50
_LEGEND_MAX = 20


@dataclass
class MapReport(QualityReport):
    cache: str
    method: str
    points: int
    rows: int
    flagged_requested: int
    flagged_drawn: int
    flag_source: str
    missing_paths: int
    explained: list  # PCA: share of variance on each axis
    out: str


def _flagged_rows(inv: Inventory, flag_files: Sequence[str | Path], top: int | None, x: np.ndarray,
                  progress: bool) -> tuple[np.ndarray, int, int, str]:
    """(rows to ring, how many paths/images were asked for, how many paths are not in the cache, source)."""
    if flag_files:
        limit = DEFAULT_FLAG_TOP if top is None else top
        wanted: list[str] = []
        for name in flag_files:
            wanted.extend(read_flagged_paths(name, limit))
        row_of = dict(zip((str(p) for p in inv.cache.paths), (int(r) for r in inv.cache.rows)))
        rows = [row_of[p] for p in wanted if p in row_of]
        missing = len({p for p in wanted if p not in row_of})
        return np.unique(np.asarray(rows, dtype=np.int64)), len(set(wanted)), missing, \
            f"first {limit} lines of {', '.join(str(f) for f in flag_files)}"
    if not top:
        return np.zeros(0, np.int64), 0, 0, ""
    from .inventory import require_labels
    from .outliers import outlier_scores, rank_order

    require_labels(inv, "inspect map --top (ringing the top outliers)", min_classes=1)
    scores = outlier_scores(inv, x, progress=progress)
    order = rank_order(scores)[:top]
    return np.unique(scores.rows[order]), int(top), 0, f"top {top} of a fresh outlier ranking"


def _embed_2d(x: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, list]:
    axes, share, mean = principal_axes(x, center=True, seed=seed)
    dims = 2 if method == "pca" else min(_TSNE_DIMS, x.shape[1])
    top = axes[:, :dims].astype(np.float32)
    reduced = x @ top - (mean @ axes[:, :dims]).astype(np.float32)  # centred without an N x D temporary
    if method == "pca":
        return reduced, [float(s) for s in share[:2]]
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    perplexity = float(min(30.0, max(2.0, (len(x) - 1) / 3.0)))
    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=perplexity)
    with threadpool_limits(1):  # measured 2-3x faster than its default threads on 2 busy cores
        return tsne.fit_transform(reduced).astype(np.float32), []


def draw_map(inv: Inventory, out: str | Path | None = None, method: str = "pca", flag: Sequence[str | Path] = (),
             top: int | None = None, max_points: int | None = None, progress: bool = False) -> MapReport:
    """Project, sample, draw and write the PNG."""
    started = time.perf_counter()
    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if top is not None and top < 0:
        raise UsageError(f"--top must be 0 or more, got {top}")
    limit = DEFAULT_POINTS[method] if max_points is None else max_points
    if limit < 3:
        raise UsageError(f"--max-points must be at least 3, got {limit}")
    present = np.flatnonzero(inv.files > 0)
    if len(present) < 3:
        raise UsageError(f"cache {inv.cache.path} has {len(present)} images; a map needs at least 3")
    x = unit_features(inv.cache)
    flagged, requested, missing, source = _flagged_rows(inv, flag, top, x, progress)
    rest = np.setdiff1d(present, flagged)
    room = max(limit - len(flagged), 0)
    warnings = []
    if len(rest) > room:
        rng = np.random.default_rng(inv.seed)
        rest = np.sort(rng.choice(rest, room, replace=False))
        warnings.append(f"drew a seeded sample of {len(rest) + len(flagged):,} of {len(present):,} images "
                        f"(--max-points {limit:,})")
    if missing:
        warnings.append(f"{missing} flagged paths are not in this cache")
    chosen = np.concatenate([rest, flagged]).astype(np.int64)
    # PCA axes come from every row, t-SNE runs on the drawn ones only.
    if method == "pca":
        coords_all, explained = _embed_2d(x, "pca", inv.seed)
        coords = coords_all[chosen]
    else:
        coords, explained = _embed_2d(x[chosen], "tsne", inv.seed)
    del x
    out_path = Path(out) if out is not None else default_report_path(inv.cache, f"map-{method}.png")
    _draw(inv, coords, chosen, len(flagged), method, explained, source, out_path)
    return MapReport(cache=str(inv.cache.path), method=method, points=int(len(chosen)), rows=int(len(present)),
                     flagged_requested=requested, flagged_drawn=int(len(flagged)), flag_source=source,
                     missing_paths=missing, explained=explained, out=str(out_path),
                     seconds=time.perf_counter() - started, warnings=warnings)


def _draw(inv: Inventory, coords: np.ndarray, rows: np.ndarray, flagged: int, method: str, explained: list,
          source: str, path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    labels = inv.label[rows]
    classes = inv.classes
    present = [int(c) for c in np.unique(labels) if c >= 0]
    cmap = colormaps["tab10" if len(present) <= 10 else "tab20"]
    size = float(np.clip(4000.0 / max(len(rows), 1), 1.0, 25.0))
    fig = Figure(figsize=(10, 8))
    ax = fig.add_subplot()
    unlabelled = labels < 0
    if unlabelled.any():
        ax.scatter(coords[unlabelled, 0], coords[unlabelled, 1], s=size, c="#b0b0b0", linewidths=0,
                   label="unlabelled or conflicting", rasterized=True)
    for k, c in enumerate(present):
        mine = labels == c
        ax.scatter(coords[mine, 0], coords[mine, 1], s=size, color=cmap(k % cmap.N), linewidths=0,
                   label=classes[c] if len(present) <= _LEGEND_MAX else None, rasterized=True)
    if flagged:
        ring = coords[-flagged:]
        colour_of = {c: cmap(k % cmap.N) for k, c in enumerate(present)}
        fill = [colour_of.get(int(c), "#b0b0b0") for c in labels[-flagged:]]
        ax.scatter(ring[:, 0], ring[:, 1], s=max(size * 4, 14.0), c=fill, linewidths=0)  # own colour, on top
        ax.scatter(ring[:, 0], ring[:, 1], s=max(60.0, size * 6), facecolors="none", edgecolors="black",
                   linewidths=1.2, label=f"flagged ({flagged})")
    if method == "pca":
        ax.set_xlabel(f"PC 1 ({explained[0]:.1%} of variance)")
        ax.set_ylabel(f"PC 2 ({explained[1]:.1%} of variance)")
    else:
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
    total = int(np.sum(inv.files > 0))
    shown = f"{len(rows):,} images" if len(rows) == total else f"{len(rows):,} of {total:,} images (sample)"
    title = f"{Path(str(inv.cache.path)).name}: {shown}, {method.upper()}"
    if source:
        title += f"\nringed: {source}"
    ax.set_title(title, fontsize=10)
    if len(present) <= _LEGEND_MAX or flagged:
        legend = ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
        for handle in getattr(legend, "legend_handles", getattr(legend, "legendHandles", [])):
            if hasattr(handle, "set_sizes"):
                handle.set_sizes([30.0])  # legend markers readable whatever the point size
    fig.tight_layout()
    save_png(fig, path)
