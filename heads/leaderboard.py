"""The leaderboard: one line per run, sortable, so a user sees at a glance what worked.

Rows come from head.json alone (no model is loaded), so listing hundreds of runs is
instant, and runs of kinds this version does not know (e.g. fine-tuned) still show.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from headstart.embedder.errors import UsageError

from .params import describe_params

SORT_KEYS = ("accuracy", "f1", "loss", "time", "created", "name")


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def leaderboard_rows(runs: Iterable[tuple[Path, dict]], base: Path | None = None) -> list[dict]:
    rows = []
    for path, meta in runs:
        metrics = meta.get("metrics") or {}
        kind = str(meta.get("kind", "head"))
        params = meta.get("params") or {}
        name = str(path)
        if base is not None:
            try:
                name = str(Path(path).relative_to(base))
            except ValueError:
                pass
        description = describe_params(params) if isinstance(params, dict) else ""
        if kind == "finetuned" and meta.get("finetuned_from"):
            description = f"from {Path(str(meta['finetuned_from'])).name} " + description
        best, ran = meta.get("best_epoch"), meta.get("epochs_run")
        if best and ran:
            description += f" best={best}/{ran}"
        rows.append({
            "run": name,
            "path": str(path),
            "kind": kind,
            "head": str(meta.get("head_type", "?")) if kind == "head" else kind,
            "params": description.strip(),
            "accuracy": _number(metrics.get("accuracy", metrics.get("val_accuracy"))),
            "macro_f1": _number(metrics.get("macro_f1")),
            "log_loss": _number(metrics.get("log_loss")),
            "n_val": metrics.get("n"),
            "train_seconds": _number(meta.get("train_seconds")),
            "created": str(meta.get("created", "")),
        })
    return rows


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


def format_table(rows: list[dict]) -> list[str]:
    def cell(value, fmt):
        return "-" if value is None else format(value, fmt)

    width_run = max([len(r["run"]) for r in rows] + [3])
    width_head = max([len(r["head"]) for r in rows] + [4])
    width_params = min(max([len(r["params"]) for r in rows] + [6]), 60)
    lines = [f"{'#':>3}  {'run':<{width_run}}  {'head':<{width_head}}  {'params':<{width_params}}  "
             f"{'val acc':>7}  {'macro-F1':>8}  {'log-loss':>8}  {'train s':>8}"]
    for rank, r in enumerate(rows, start=1):
        params = r["params"] if len(r["params"]) <= width_params else r["params"][: width_params - 1] + "…"
        lines.append(f"{rank:>3}  {r['run']:<{width_run}}  {r['head']:<{width_head}}  {params:<{width_params}}  "
                     f"{cell(r['accuracy'], '.4f'):>7}  {cell(r['macro_f1'], '.4f'):>8}  "
                     f"{cell(r['log_loss'], '.4f'):>8}  {cell(r['train_seconds'], '.2f'):>8}")
    return lines
