"""The leaderboard: one line per run, sortable, so a user sees at a glance what worked.

Rows come from head.json alone (no model is loaded), so listing hundreds of runs is
instant, and runs of kinds this version does not know still show. Each row says what the
run was trained on (images root, backbone, classes, validation images): accuracies of runs
on different data sets are not comparable, so the table prints each data set as its own
group, and ``--cache`` keeps only the runs usable with one cache.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable

from headstart.embedder.errors import UsageError
from headstart.embedder.fingerprint import describe

from .params import describe_params
from .run_meta import RunMeta, RunMetaError

SORT_KEYS = ("accuracy", "f1", "loss", "time", "created", "name")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _record(meta: dict) -> RunMeta:
    try:
        return RunMeta.from_json(meta)
    except RunMetaError:
        return RunMeta(kind=str(meta.get("kind", "head")) if isinstance(meta, dict) else "head")


def leaderboard_rows(runs: Iterable[tuple[Path, dict]], base: Path | None = None) -> list[dict]:
    rows = []
    for path, meta in runs:
        record = _record(meta)
        metrics = record.metrics
        name = str(path)
        if base is not None:
            try:
                name = str(Path(path).relative_to(base))
            except ValueError:
                pass
        description = describe_params(record.params)
        if record.is_finetuned and record.finetuned_from:
            description = f"from {Path(record.finetuned_from).name} " + description
        if record.best_epoch and record.epochs_run:
            description += f" best={record.best_epoch}/{record.epochs_run}"
        n_val = metrics.get("n", record.val_images)
        rows.append({
            "run": name,
            "path": str(path),
            "kind": record.kind,
            "head": record.head_type if record.kind == "head" else record.kind,
            "params": description.strip(),
            "accuracy": record.val_accuracy,
            "macro_f1": _number(metrics.get("macro_f1")),
            "log_loss": _number(metrics.get("log_loss")),
            "n_val": n_val,
            "train_seconds": _number(record.train_seconds),
            "created": record.created,
            "cache": record.cache.path,
            "images_root": record.cache.images_root,
            "backbone": describe(record.fingerprint) if record.fingerprint else None,
            "classes": list(record.classes),
        })
    return rows


def runs_for_cache(runs: Iterable[tuple[Path, dict]], cache: str | os.PathLike) -> list[tuple[Path, dict]]:
    """The runs usable with ``cache``: its backbone fingerprint and, if it has labels, its classes
    (the runs :func:`heads.choose.choose_run` would consider for it)."""
    from .choose import Candidate, data_of, matching

    fingerprint, classes = data_of(cache)
    pairs = list(runs)
    candidates = [Candidate(path, _record(meta)) for path, meta in pairs]
    kept = {id(c) for c in matching(candidates, fingerprint, classes)}
    return [pair for pair, c in zip(pairs, candidates) if id(c) in kept]


def sort_rows(rows: list[dict], by: str = "accuracy") -> list[dict]:
    """Best first for accuracy/f1, lowest first for loss/time, newest first for created."""
    if by not in SORT_KEYS:
        raise UsageError(f"--sort must be one of {', '.join(SORT_KEYS)}, got {by!r}")
    if by == "name":
        return sorted(rows, key=lambda r: r["run"])
    if by == "created":
        return sorted(rows, key=lambda r: r["created"], reverse=True)
    field, descending = {"accuracy": ("accuracy", True), "f1": ("macro_f1", True), "loss": ("log_loss", False),
                         "time": ("train_seconds", False)}[by]
    present = [r for r in rows if r[field] is not None]
    absent = [r for r in rows if r[field] is None]
    present.sort(key=lambda r: (r[field], r["created"]), reverse=descending)
    return present + absent


def _group(row: dict) -> tuple:
    return row.get("images_root") or "", row.get("backbone") or "", tuple(row.get("classes") or ())


def _group_title(row: dict) -> str:
    classes = list(row.get("classes") or [])
    shown = ", ".join(classes[:6]) + (f" (+{len(classes) - 6} more)" if len(classes) > 6 else "")
    return (f"images {row.get('images_root') or '?'} | backbone {row.get('backbone') or '?'} | "
            f"{len(classes)} classes: {shown or '?'}")


def format_table(rows: list[dict]) -> list[str]:
    """The rows as text: one block per data set (images, backbone, classes), in the rows' order."""
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    width_run = max([len(r["run"]) for r in rows] + [3])
    width_head = max([len(r["head"]) for r in rows] + [4])
    width_params = min(max([len(r["params"]) for r in rows] + [6]), 60)
    header = (f"{'#':>3}  {'run':<{width_run}}  {'head':<{width_head}}  {'params':<{width_params}}  "
              f"{'val acc':>7}  {'n val':>6}  {'macro-F1':>8}  {'log-loss':>8}  {'train s':>8}")
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_group(r), []).append(r)
    lines = []
    for members in groups.values():
        if lines:
            lines.append("")
        lines.append(_group_title(members[0]))
        lines.append(header)
        for rank, r in enumerate(members, start=1):
            params = r["params"] if len(r["params"]) <= width_params else r["params"][: width_params - 1] + "…"
            n_val = r["n_val"] if isinstance(r["n_val"], int) else None
            lines.append(f"{rank:>3}  {r['run']:<{width_run}}  {r['head']:<{width_head}}  {params:<{width_params}}  "
                         f"{cell(r['accuracy'], '.4f'):>7}  {cell(n_val, ','):>6}  {cell(r['macro_f1'], '.4f'):>8}  "
                         f"{cell(r['log_loss'], '.4f'):>8}  {cell(r['train_seconds'], '.2f'):>8}")
    return lines
