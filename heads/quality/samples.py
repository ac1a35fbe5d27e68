"""``inspect samples``: a seeded sample of each class's images on one contact sheet.

The first look at a data set, before any number: are the classes what their names say, is
one folder full of scans or blank frames? It is an ``inspect`` command, not an option of
``embed run``, because it reads only a cache (labels, paths, ``head train``'s split) and the
images, writes into ``reports/`` like the other reports, and can be rerun at will with
another ``--seed``; ``embed run`` stays as fast and as quiet as it was.

One row per class (``--per-class`` images, default 6: one line of the sheet), classes in
their sorted order, at most ``--max-classes`` of them (the title says when some are left
out). Images are drawn per row (distinct content), so a file copied twice is drawn once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.embedder.errors import UsageError

from ..contact_sheet import Cell, Picture, Resolver, Section, Sheet, any_exists, write_sheet
from .inventory import Inventory, default_report_path
from .report import QualityReport

DEFAULT_PER_CLASS = 6
DEFAULT_MAX_CLASSES = 16
MAX_PER_CLASS = 48


@dataclass
class SamplesReport(QualityReport):
    cache: str
    classes: int  # classes with images
    groups: int  # those classes, plus a group of unlabelled images and one of conflicting ones, if any
    groups_shown: int
    per_class: int
    tiles: int
    seed: int
    out: str


def _sample(rows: np.ndarray, count: int, seed: int, salt: int) -> np.ndarray:
    if len(rows) <= count:
        return rows
    rng = np.random.default_rng([seed, salt])
    return np.sort(rng.choice(rows, count, replace=False))


def class_samples(inv: Inventory, out: str | Path | None = None, per_class: int = DEFAULT_PER_CLASS,
                  max_classes: int = DEFAULT_MAX_CLASSES, images: str | Path | None = None) -> SamplesReport:
    """Draw the sample and write the sheet (default ``reports/<cache>-samples.png``)."""
    started = time.perf_counter()
    if not 1 <= per_class <= MAX_PER_CLASS:
        raise UsageError(f"--per-class must be between 1 and {MAX_PER_CLASS}, got {per_class}")
    if max_classes < 1:
        raise UsageError(f"--max-classes must be at least 1, got {max_classes}")
    root = str(images) if images is not None else str(inv.cache.images_root)
    resolve = Resolver(root)
    present = inv.files > 0
    groups = [(name, np.flatnonzero(present & (inv.label == c))) for c, name in enumerate(inv.classes)]
    groups = [(name, rows) for name, rows in groups if len(rows)]
    labelled_groups = len(groups)
    extra = [("no label", np.flatnonzero(present & (inv.label < 0) & ~inv.conflict)),
             ("the same bytes under two classes", np.flatnonzero(present & inv.conflict))]
    groups += [(name, rows) for name, rows in extra if len(rows)]
    if not groups:
        raise UsageError(f"cache {inv.cache.path} lists no image files; nothing to show")
    shown = groups[:max_classes]
    sections = []
    for salt, (name, rows) in enumerate(shown):
        chosen = _sample(rows, per_class, inv.seed, salt)
        drawn = "all shown" if len(chosen) == len(rows) else f"{len(chosen)} drawn at random (seed {inv.seed})"
        cells = [Cell([Picture(resolve(str(inv.path[r])), str(inv.path[r]))], details=[f"split: {inv.split[r]}"])
                 for r in chosen]
        sections.append(Section(f"{name}: {len(rows):,} image{'s' if len(rows) != 1 else ''}, {drawn}", cells))
    locations = [p.location for s in sections for cell in s.cells for p in cell.pictures]
    if not any_exists(locations):
        raise UsageError(f"none of the sampled images of cache {inv.cache.path} is under {root}; if the images "
                         f"moved, pass --images with where they are now")
    others = [name for name, _ in groups[labelled_groups:]]
    what = f"{labelled_groups} classes" + (f" (also: {', '.join(others)})" if others else "")
    title = f"{Path(str(inv.cache.path)).name}: samples of {what}"
    if len(shown) < len(groups):
        title += (f" (the first {len(shown)} of {len(groups)} {'groups' if others else 'classes'}; raise "
                  f"--max-classes for more)")
    sheet = Sheet(title, sections, subtitle=f"images under {root}; split as head train assigns it")
    out_path = Path(out) if out is not None else default_report_path(inv.cache, "samples.png")
    write_sheet(sheet, out_path)
    return SamplesReport(cache=str(inv.cache.path), classes=labelled_groups, groups=len(groups), groups_shown=len(shown),
                         per_class=per_class, tiles=len(locations), seed=inv.seed, out=str(out_path),
                         images_root=root, gallery=str(out_path), seconds=time.perf_counter() - started)
