"""What the ``inspect`` reports found about a cache, read back from their files for a run's page.

``inspect`` writes ``reports/<cache stem>-<kind>.csv`` (and ``-map-<method>.png``,
``-samples.png``). A run's report looks for those of its own cache and summarises each in a
sentence or two plus its first tiles. :data:`SUMMARIES` is the table of CSV kinds; a new
report kind adds a line there. A report older than the cache it describes may speak of
other images: it is marked as such rather than silently trusted.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from headstart.embedder.defaults import REPORTS_DIR

from .contact_sheet import Cell
from .gallery import build_sheet

FINDING_TILES = 12  # tiles per finding on the page (the full gallery PNG sits beside the CSV)


@dataclass
class Finding:
    kind: str  # 'duplicates' | 'label-errors' | 'outliers' | 'map-pca' | 'samples' ...
    path: Path
    modified: str  # ISO time of the file
    stale: bool  # written before the cache last changed
    summary: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    shown_of: int = 0  # rows eligible for the tiles
    picture: Path | None = None  # a PNG to show as is (map, samples)


def _rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _float(value, default: float = 0.0) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def summarise_duplicates(rows: list[dict]) -> list[str]:
    if not rows:
        return ["No duplicates: no exact copies, no label conflicts, no near-copies at the threshold used."]
    kinds = Counter(r.get("kind", "") for r in rows)
    leaks = sum(1 for r in rows if r.get("leak"))
    relabel = sum(1 for r in rows if r.get("kind") == "near" and r.get("label_a") != r.get("label_b"))
    lines = [f"{len(rows):,} lines: {kinds.get('near', 0):,} near-duplicate pairs, {kinds.get('exact', 0):,} exact "
             f"copies, {kinds.get('conflict', 0):,} label conflicts (the same bytes under two classes)."]
    if leaks:
        lines.append(f"{leaks:,} pairs straddle the train/validation/test split: the validation score is inflated by "
                     f"near-copies of training images.")
    if relabel:
        lines.append(f"{relabel:,} near-duplicate pairs carry different labels.")
    return lines


def summarise_label_errors(rows: list[dict]) -> list[str]:
    suspects = sum(1 for r in rows if _float(r.get("score"), -1.0) > 0)
    return [f"{len(rows):,} labelled images ranked; for {suspects:,} of them a model that never saw them prefers "
            f"another label."]


def summarise_outliers(rows: list[dict]) -> list[str]:
    scores = [_float(r.get("score"), float("nan")) for r in rows]
    far = sum(1 for s in scores if s >= 3.5)
    return [f"{len(rows):,} labelled images ranked by distance to their class; {far:,} are 3.5 or more spreads "
            f"(robust z) from their class."]


SUMMARIES: dict[str, Callable[[list[dict]], list[str]]] = {
    "duplicates": summarise_duplicates,
    "label-errors": summarise_label_errors,
    "outliers": summarise_outliers,
}
PICTURES = ("map-", "samples")  # PNG reports shown as they are


def candidate_dirs(run_dir: Path) -> list[Path]:
    """Where ``reports/`` may be: beside the runs folder (or a sweep's), then the working folder."""
    found, seen = [], set()
    for parent in list(Path(run_dir).resolve().parents)[:3] + [Path.cwd()]:
        folder = parent / REPORTS_DIR
        key = str(folder)
        if key not in seen and folder.is_dir():
            seen.add(key)
            found.append(folder)
    return found


def find_reports(stem: str, folders: Iterable[Path]) -> tuple[Path | None, list[Path]]:
    """The first folder holding reports of cache ``stem``, and those files (sorted)."""
    for folder in folders:
        files = sorted(p for p in folder.glob(f"{glob_escape(stem)}-*") if p.is_file())
        if files:
            return folder, files
    return None, []


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def read_findings(stem: str, files: Iterable[Path], images_root: str | None, cache_mtime: float | None,
                  tiles: int = FINDING_TILES) -> list[Finding]:
    """One :class:`Finding` per report file of cache ``stem`` (galleries' own PNGs are skipped:
    their CSVs are shown instead)."""
    findings = []
    for path in files:
        kind = path.name[len(stem) + 1:].rsplit(".", 1)[0]
        if path.suffix == ".csv" and kind in SUMMARIES:
            pass
        elif path.suffix == ".png" and kind.startswith(PICTURES):
            pass
        else:
            continue
        mtime = os.path.getmtime(path)
        finding = Finding(kind=kind, path=path,
                          modified=_dt.datetime.fromtimestamp(mtime).isoformat(sep=" ", timespec="minutes"),
                          stale=cache_mtime is not None and mtime < cache_mtime)
        if path.suffix == ".png":
            finding.picture = path
        else:
            try:
                rows = _rows(path)
            except (OSError, csv.Error, UnicodeDecodeError) as exc:
                finding.summary = [f"could not be read: {exc}"]
                findings.append(finding)
                continue
            finding.summary = SUMMARIES[kind](rows)
            try:
                sheet, total = build_sheet(kind, iter(rows), images_root, limit=tiles)
            except KeyError as exc:  # a CSV of another version, lacking a column
                finding.summary.append(f"(its lines lack the column {exc}: made by another headstart version?)")
            else:
                finding.cells, finding.shown_of = sheet.cells, total
        findings.append(finding)
    return findings
