"""``inspect duplicates``: the same bytes twice, the same bytes under two classes, near-copies,
and -- the one that silently inflates a validation score -- near-copies on both sides of the split.

* **exact**: one key (content hash) under several paths. ``head train`` uses such bytes once,
  so they cannot leak; but bytes filed under two splits of the layout (``train/`` and
  ``val/``) are reported, since other tools would leak them.
* **conflict**: the same bytes under two classes; ``head train`` leaves them out.
* **near**: two distinct keys whose cosine similarity is >= ``threshold`` (re-encodes,
  resizes, small crops, bursts). Found exactly by :mod:`.similarity`.
* **leakage**: a near pair of two rows that ``head train`` uses (labelled, no conflict) in
  different splits, computed with the split ``head train`` will use (the layout's, else the
  hash rule with the same ``--val-fraction`` and ``--seed``): the model is validated (or
  tested) on a near-copy of a training image.

The threshold is calibrated on each cache's own features (:mod:`.threshold`: a pair is
near when it is 3x closer than a typical image is to its nearest other image), because how
close distinct photos get depends on the backbone, the images and their number; the report
says how it was chosen. ``--threshold`` overrides it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.embedder.errors import EXIT_ATTENTION, EXIT_OK, UsageError
from headstart.embedder.progress import progress_bar

from .inventory import Inventory, default_report_path, unit_rows
from .output import write_csv, write_report_gallery
from .report import QualityReport
from .similarity import JoinStats, similar_pairs
from .threshold import ThresholdChoice, calibrate_threshold, given_threshold

DEFAULT_MAX_PAIRS = 100_000  # CSV lines; every pair is still counted
# Near-copies are rare: when more than this share of all pairs is "near", the features (not
# the images) are the story, and the report says so.
SUSPICIOUS_PAIR_SHARE = 0.05
MAX_EXPECTED_PAIRS = 20_000_000  # beyond this the threshold is refused up front: nothing "near" about it
_KEEP_LIMIT = 5_000_000  # pairs held in memory (16 bytes each); past it only leaking pairs are kept
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2}

HEADER = ["kind", "similarity", "leak", "label_a", "label_b", "split_a", "split_b", "path_a", "path_b", "group",
          "key_a", "key_b", "note"]
# CSV order: what needs a decision first.
_RANK = {"near-leak": 0, "conflict": 1, "exact-split": 2, "near-mislabel": 3, "near": 4, "exact": 5}


@dataclass
class DuplicatesReport(QualityReport):
    cache: str
    rows: int
    files: int
    threshold: float
    threshold_choice: dict  # how the threshold was chosen (ThresholdChoice.to_dict())
    splits: dict
    exact: dict
    conflicts: dict
    near: dict
    leakage: dict
    out: str
    csv_rows: int
    csv_total: int
    capped: bool
    method: dict


def check_threshold(threshold: float) -> float:
    value = float(threshold)
    if not (0.0 < value <= 1.0) or value != value:
        raise UsageError(f"--threshold must be a cosine similarity in (0, 1], got {threshold}")
    return value


class _PairStore:
    """Collects verified pairs: all of them up to a limit, then only the leaking ones (counted all)."""

    def __init__(self, inv: Inventory, limit: int = _KEEP_LIMIT):
        self.inv, self.limit = inv, limit
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.kept = 0
        self.total = 0
        self.leaking = 0
        self.dropped = 0

    def leak_mask(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        inv = self.inv
        return inv.labelled[i] & inv.labelled[j] & (inv.split[i] != inv.split[j])

    def __call__(self, i: np.ndarray, j: np.ndarray, sims: np.ndarray) -> None:
        self.total += len(i)
        leak = self.leak_mask(i, j)
        self.leaking += int(leak.sum())
        if self.kept + len(i) > self.limit:
            keep = leak
            self.dropped += int((~keep).sum())
            i, j, sims = i[keep], j[keep], sims[keep]
        if len(i):
            self.parts.append((i.astype(np.int32), j.astype(np.int32), sims))
            self.kept += len(i)

    def arrays(self):
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        return tuple(np.concatenate([p[k] for p in self.parts]) for k in range(3))


def _groups(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Group id per row (connected components of the near pairs), 0 for rows in no pair;
    groups numbered from 1 by decreasing size."""
    group = np.zeros(n, dtype=np.int64)
    if not len(i):
        return group
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, local = np.unique(np.concatenate([i, j]), return_inverse=True)
    local = np.asarray(local).reshape(-1)
    li, lj = local[: len(i)], local[len(i):]
    graph = coo_matrix((np.ones(len(li), dtype=np.int8), (li, lj)), shape=(len(nodes), len(nodes)))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    order = np.argsort(-sizes, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(1, len(order) + 1)
    group[nodes] = rank[component]
    return group


def applies_leak(inv: Inventory) -> bool:
    """Leakage is about head train's split, which needs labelled rows."""
    return bool(np.any(inv.labelled))


def _split_pair(inv: Inventory, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """'train-val' style names of the rows' splits, in train < val < test order (vectorised)."""
    code = np.zeros(inv.num_rows, dtype=np.int64)
    for name, value in SPLIT_ORDER.items():
        code[inv.split == name] = value
    lo, hi = np.minimum(code[i], code[j]), np.maximum(code[i], code[j])
    names = np.asarray([f"{a}-{b}" for a in SPLIT_ORDER for b in SPLIT_ORDER], dtype=object)
    return names[lo * len(SPLIT_ORDER) + hi]


def _given(split) -> str:
    split = str(split)
    return "val" if split == "validation" else split


def _exact_records(inv: Inventory, group: np.ndarray) -> tuple[list[tuple], dict, dict]:
    """One CSV record per extra file of a shared key, paired with the key's first file."""
    c = inv.cache
    order = np.argsort(c.rows, kind="stable")
    rows_sorted = c.rows[order]
    starts = np.flatnonzero(np.r_[True, rows_sorted[1:] != rows_sorted[:-1]])
    ends = np.r_[starts[1:], len(order)]
    classes = c.classes
    records = []
    shared_keys = extra_files = across_splits = 0
    conflict_keys = conflict_files = 0
    for s, e in zip(starts, ends):
        if e - s < 2:
            continue
        files = order[s:e]
        row = int(c.rows[files[0]])
        shared_keys += 1
        extra_files += len(files) - 1
        given = {_given(c.splits[f]) for f in files} - {""}
        if len(given) > 1:
            across_splits += 1
        if inv.conflict[row]:
            conflict_keys += 1
            conflict_files += len(files)
        first = files[0]
        for f in files[1:]:
            la, lb = int(c.labels[first]), int(c.labels[f])
            ga, gb = _given(c.splits[first]), _given(c.splits[f])
            sa, sb = ga or str(inv.split[row]), gb or str(inv.split[row])
            note = ""
            if la >= 0 and lb >= 0 and la != lb:
                kind, rank = "conflict", _RANK["conflict"]
                note = "same bytes under two classes: head train leaves them out"
            elif ga and gb and ga != gb:
                kind, rank = "exact", _RANK["exact-split"]
                note = f"same bytes filed under {sa} and {sb}: head train keeps one copy, in {inv.split[row]}"
            else:
                kind, rank = "exact", _RANK["exact"]
            leak = f"{sa}-{sb}" if rank == _RANK["exact-split"] else ""
            records.append((rank, -1.0, kind, 1.0, leak, classes[la] if la >= 0 else "", classes[lb] if lb >= 0 else "",
                            sa, sb, str(c.paths[first]), str(c.paths[f]), int(group[row]), str(c.keys[row]),
                            str(c.keys[row]), note))
    exact = {"keys": shared_keys, "extra_files": extra_files, "keys_across_splits": across_splits}
    conflicts = {"applies": inv.has_labels, "keys": conflict_keys, "files": conflict_files}
    return records, exact, conflicts


def find_duplicates(inv: Inventory, threshold: float | None = None, out: str | Path | None = None,
                    max_pairs: int = DEFAULT_MAX_PAIRS, progress: bool = False) -> DuplicatesReport:
    """Run every check and write the CSV (worst first, at most ``max_pairs`` lines).

    ``threshold`` None: calibrated on the cache's features (:func:`.threshold.calibrate_threshold`).
    """
    started = time.perf_counter()
    given = None if threshold is None else check_threshold(threshold)
    if max_pairs < 0:
        raise UsageError(f"--max-pairs must be 0 or more, got {max_pairs}")
    out_path = Path(out) if out is not None else default_report_path(inv.cache, "duplicates.csv")
    features = unit_rows(inv.cache)  # float16 as stored; float32 a block at a time
    choice: ThresholdChoice = given_threshold(given) if given is not None else calibrate_threshold(features, inv.seed)
    threshold = choice.value
    store = _PairStore(inv)

    def refuse_explosion(stats: JoinStats) -> None:
        if stats.estimated_pairs > MAX_EXPECTED_PAIRS:
            n = inv.num_rows
            share = stats.estimated_pairs / max(n * (n - 1) / 2, 1)
            which = "--threshold" if choice.source == "given" else f"the {choice.source} threshold"
            raise UsageError(f"{which} {threshold:g} would match about {stats.estimated_pairs:.2g} pairs "
                             f"({share:.0%} of all pairs of {n:,} images): that is similarity, not duplication; "
                             f"raise --threshold")

    with progress_bar(0, "near-duplicates", progress, unit="pair", unit_scale=True) as bar:
        stats = similar_pairs(features, threshold, store, seed=inv.seed, progress=bar, check_estimate=refuse_explosion)
    del features
    i, j, sims = store.arrays()
    group = _groups(inv.num_rows, i, j)
    # Exact duplicates join their row's group (they are the same row); a row of several files
    # without near pairs gets a group of its own.
    multi = np.flatnonzero((inv.files > 1) & (group == 0))
    group[multi] = group.max() + 1 + np.arange(len(multi))

    records, exact, conflicts = _exact_records(inv, group)
    applies = applies_leak(inv)
    labelled_pair = inv.labelled[i] & inv.labelled[j]
    leak = store.leak_mask(i, j)
    mislabel = labelled_pair & (inv.label[i] != inv.label[j])
    rank = np.where(leak, _RANK["near-leak"], np.where(mislabel, _RANK["near-mislabel"], _RANK["near"]))
    order = np.lexsort((-sims, rank))[:max_pairs]  # worst first; the rest is only counted
    split_names = _split_pair(inv, i, j)
    label_a, label_b = inv.label_name(i[order]), inv.label_name(j[order])
    keys = inv.cache.keys
    for n, k in enumerate(order):
        a, b = int(i[k]), int(j[k])
        if leak[k]:
            note = f"head train uses one in {inv.split[a]} and the other in {inv.split[b]}"
        elif mislabel[k]:
            note = "near-copies with different labels"
        else:
            note = ""
        records.append((int(rank[k]), -float(sims[k]), "near", float(sims[k]), split_names[k] if leak[k] else "",
                        label_a[n], label_b[n], inv.split[a], inv.split[b], inv.path[a], inv.path[b],
                        int(group[a]), str(keys[a]), str(keys[b]), note))
    total_records = len(records) - len(order) + len(i)
    records.sort(key=lambda r: (r[0], r[1]))
    written = write_csv(out_path, HEADER, (r[2:] for r in records[:max_pairs]), images_root=inv.cache.images_root)
    shown = write_report_gallery("duplicates", out_path, inv.cache)

    names, counts = np.unique(split_names[leak].astype(str), return_counts=True) if leak.any() else ((), ())
    by_split = {str(a): int(b) for a, b in zip(names, counts)}
    in_groups = group[group > 0]
    sizes = np.bincount(in_groups) if len(in_groups) else np.zeros(1, np.int64)
    near_rows = np.unique(np.concatenate([i, j])) if len(i) else np.zeros(0, np.int64)
    warnings = list(choice.warnings)
    if store.dropped:
        warnings.append(f"{store.total:,} near pairs found; only the first {store.kept:,} (and every leaking pair) "
                        f"were kept for the CSV and groups; raise --threshold to see them all")
    if total_records > max_pairs:
        warnings.append(f"the CSV holds the first {max_pairs:,} of {total_records:,} lines (worst first); "
                        f"raise --max-pairs for more")
    all_pairs = inv.num_rows * (inv.num_rows - 1) // 2
    if inv.num_rows >= 10 and store.total > SUSPICIOUS_PAIR_SHARE * all_pairs:
        warnings.append(f"{store.total / all_pairs:.0%} of all pairs of images are 'near-duplicates' at "
                        f"{threshold:g}: these features barely tell images apart (random backbone weights?), so the "
                        f"pairs mean little; raise --threshold or use another backbone")
    leaking = store.leaking if applies else 0
    needs_attention = leaking > 0 or conflicts["keys"] > 0
    return DuplicatesReport(
        cache=str(inv.cache.path),
        rows=inv.num_rows,
        files=int(len(inv.cache.paths)),
        threshold=threshold,
        threshold_choice=choice.to_dict(),
        splits={"source": inv.split_source, "val_fraction": inv.val_fraction, "seed": inv.seed},
        exact=exact,
        conflicts=conflicts,
        near={"pairs": store.total, "rows": int(len(near_rows)), "groups": int(len(np.unique(group[near_rows]))),
              "largest_group_rows": int(sizes.max()) if len(in_groups) else 0,
              "pairs_with_different_labels": int(mislabel.sum())},
        leakage={"applies": applies, "pairs": leaking,
                 "by_splits": dict(sorted(by_split.items())) if applies else {},
                 "reason": "" if applies else "the cache has no labels, so head train has no split to leak across"},
        out=str(out_path),
        csv_rows=written,
        csv_total=total_records,
        capped=total_records > max_pairs or store.dropped > 0,
        method=stats.to_dict(),
        seconds=time.perf_counter() - started,
        warnings=warnings,
        exit_code=EXIT_ATTENTION if needs_attention else EXIT_OK,
        **shown,
    )
