"""``inspect outliers``: images far from the rest of their class.

An image's distance to its class is the mean cosine distance to its ``k`` nearest
neighbours among the class's other images, in full dimension (a local measure: a class
made of several clusters is not penalised, a lone image is). Classes differ in how spread
they are, so the ranking score is that distance as a robust z-score within the class,
``(d - median) / (1.4826 * MAD)``: "how many spreads out", comparable across classes.
Also reported: whether the image is closer to another class's centroid than to its own
(a hint that it is mislabelled rather than odd).

Cost is bounded by sampling each class's *reference* set to ``max_reference`` images
(seeded): every image is scored, against at most that many neighbours, in blocks of rows;
100,000 x 1,280 with 5,000 references costs ~1.3 TFLOP. A class smaller than that is
scored exactly. Rows, not files: copies of the same bytes are one image (never each
other's neighbour), scored once per label they carry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.embedder.errors import UsageError
from headstart.embedder.progress import progress_bar

from .inventory import Inventory, default_report_path, labelled_units, other_paths, require_labels, unit_rows
from .output import write_csv, write_report_gallery
from .report import QualityReport

DEFAULT_K = 10
DEFAULT_REFERENCE = 5000
_QUERY_BLOCK = 2048

HEADER = ["path", "label", "score", "knn_distance", "class_median", "nearest_other_class", "own_centroid_similarity",
          "other_centroid_similarity", "files", "split", "key", "same_bytes"]


@dataclass
class OutlierScores:
    """Per (row, label) unit, as :func:`heads.quality.inventory.labelled_units` lists them."""

    rows: np.ndarray
    labels: np.ndarray
    first_file: np.ndarray
    files: np.ndarray
    distance: np.ndarray  # mean cosine distance to the k nearest same-class images (NaN: no other image)
    score: np.ndarray  # robust z within the class (NaN as above)
    class_median: np.ndarray
    own_centroid: np.ndarray
    other_centroid: np.ndarray
    other_class: np.ndarray
    sampled_classes: list


@dataclass
class OutliersReport(QualityReport):
    cache: str
    images: int
    classes: int
    k: int
    max_reference: int
    sampled_classes: list
    top: list
    out: str


def outlier_scores(inv: Inventory, x: np.ndarray, k: int = DEFAULT_K, max_reference: int = DEFAULT_REFERENCE,
                   progress: bool = False) -> OutlierScores:
    """Score every labelled image against its own class (``x``: the rows as unit vectors)."""
    if k < 1:
        raise UsageError(f"--k must be at least 1, got {k}")
    if max_reference < 2:
        raise UsageError(f"--max-reference must be at least 2, got {max_reference}")
    rows, labels, first, files = labelled_units(inv)
    num_classes = len(inv.classes)
    distance = np.full(len(rows), np.nan)
    score = np.full(len(rows), np.nan)
    median = np.full(len(rows), np.nan)
    centroids = np.zeros((num_classes, x.shape[1]), dtype=np.float32)
    sampled = []
    with progress_bar(len(rows), "outliers", progress, unit="img", unit_scale=True) as bar:
        for c in np.unique(labels):
            units = np.flatnonzero(labels == c)
            members = rows[units]  # distinct rows (units are unique per (row, label))
            centroid = x[members].mean(axis=0, dtype=np.float64)
            norm = np.linalg.norm(centroid)
            centroids[c] = centroid / norm if norm > 0 else centroid
            reference = members
            if len(members) > max_reference:
                rng = np.random.default_rng([inv.seed, int(c)])
                reference = np.sort(rng.choice(members, max_reference, replace=False))
                sampled.append(inv.classes[int(c)])
            else:
                reference = np.sort(members)
            ref_x = x[reference]
            for start in range(0, len(units), _QUERY_BLOCK):
                block = units[start:start + _QUERY_BLOCK]
                query = rows[block]
                sims = x[query] @ ref_x.T
                pos = np.minimum(np.searchsorted(reference, query), len(reference) - 1)
                is_self = reference[pos] == query
                sims[np.flatnonzero(is_self), pos[is_self]] = -np.inf
                available = len(reference) - is_self.astype(np.int64)
                kk = int(min(k, available.min()))
                if kk >= 1:
                    top = np.partition(sims, len(reference) - kk, axis=1)[:, len(reference) - kk:]
                    distance[block] = 1.0 - top.mean(axis=1, dtype=np.float64)
                bar.update(len(block))
            d = distance[units]
            ok = np.isfinite(d)
            if ok.any():
                med = float(np.median(d[ok]))
                mad = 1.4826 * float(np.median(np.abs(d[ok] - med)))
                spread = mad if mad > 1e-9 else max(float(np.std(d[ok])), 1e-9)
                median[units] = med
                score[units] = (d - med) / spread
    sims_to_centroids = np.empty((len(rows), num_classes), dtype=np.float32)
    for start in range(0, len(rows), _QUERY_BLOCK * 8):  # in blocks: x[rows] whole would copy every row
        sims_to_centroids[start:start + _QUERY_BLOCK * 8] = x[rows[start:start + _QUERY_BLOCK * 8]] @ centroids.T
    own = sims_to_centroids[np.arange(len(rows)), labels]
    sims_to_centroids[np.arange(len(rows)), labels] = -np.inf
    present = np.zeros(num_classes, dtype=bool)
    present[np.unique(labels)] = True
    sims_to_centroids[:, ~present] = -np.inf
    other_class = sims_to_centroids.argmax(axis=1)
    other = sims_to_centroids[np.arange(len(rows)), other_class]
    return OutlierScores(rows=rows, labels=labels, first_file=first, files=files, distance=distance, score=score,
                         class_median=median, own_centroid=own, other_centroid=other, other_class=other_class,
                         sampled_classes=sampled)


def rank_order(scores: OutlierScores) -> np.ndarray:
    """Most outlying first; images with no other image in their class last."""
    key = np.where(np.isfinite(scores.score), -scores.score, np.inf)
    return np.lexsort((scores.first_file, key))


def rank_outliers(inv: Inventory, out: str | Path | None = None, k: int = DEFAULT_K,
                  max_reference: int = DEFAULT_REFERENCE, progress: bool = False, top: int = 10) -> OutliersReport:
    started = time.perf_counter()
    require_labels(inv, "inspect outliers", min_classes=1)
    x = unit_rows(inv.cache)  # float16 as stored; float32 a block at a time
    s = outlier_scores(inv, x, k, max_reference, progress)
    del x
    c = inv.cache
    names = inv.classes
    many_classes = int(np.sum(np.bincount(s.labels) > 0)) > 1
    also = other_paths(inv, s.rows, s.labels, s.first_file, s.files)
    records = []
    for u in rank_order(s):
        other_name = names[s.other_class[u]] if many_classes else ""
        other_sim = float(s.other_centroid[u]) if many_classes else ""
        records.append((str(c.paths[s.first_file[u]]), names[s.labels[u]], _num(s.score[u]), _num(s.distance[u]),
                        _num(s.class_median[u]), other_name, float(s.own_centroid[u]), other_sim,
                        int(s.files[u]), str(inv.split[s.rows[u]]), str(c.keys[s.rows[u]]), also.get(int(u), "")))
    out_path = Path(out) if out is not None else default_report_path(c, "outliers.csv")
    write_csv(out_path, HEADER, records, images_root=c.images_root)
    shown = write_report_gallery("outliers", out_path, c)
    warnings = []
    lonely = int(np.sum(~np.isfinite(s.distance)))
    if lonely:
        warnings.append(f"{lonely} images are alone in their class and have no score (listed last)")
    if s.sampled_classes:
        warnings.append(f"{len(s.sampled_classes)} classes have more than {max_reference:,} images; their images "
                        f"were compared with a seeded sample of {max_reference:,} (raise --max-reference for more)")
    return OutliersReport(
        cache=str(c.path), images=len(records), classes=int(np.sum(np.bincount(s.labels) > 0)), k=k,
        max_reference=max_reference, sampled_classes=s.sampled_classes,
        top=[dict(zip(HEADER, r)) for r in records[:top]], out=str(out_path),
        seconds=time.perf_counter() - started, warnings=warnings, **shown,
    )


def _num(value) -> float | str:
    return float(value) if np.isfinite(value) else ""
