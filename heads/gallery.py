"""Galleries: what each CSV a person gets looks like, as a contact sheet beside it.

A gallery is made *from its CSV* (``misclassified.csv``, ``<cache>-label-errors.csv``,
``-outliers.csv``, ``-duplicates.csv``), so its tiles are the CSV's first lines in the CSV's
order (worst first), and it can be remade from the files alone (``headstart report`` does).
:data:`GALLERIES` is the table of kinds: each names the rows it shows and how one row
becomes a captioned cell. The PNG sits beside the CSV with the same stem.

A gallery needs the images: when none of the files it would show is under the images root
(the images moved, or the cache was made elsewhere), it is not written, and any older
gallery at that path is removed so it cannot be mistaken for this CSV's.
"""

from __future__ import annotations

import csv
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .contact_sheet import MAX_TILES, Cell, Picture, Resolver, Section, Sheet, any_exists, capped_title, write_sheet


@dataclass
class GalleryResult:
    """What :func:`write_gallery` did: the PNG (``""`` if none), tiles drawn, rows eligible, why not."""

    path: str
    tiles: int
    total: int
    note: str = ""

    @property
    def written(self) -> bool:
        return bool(self.path)


def _num(value, spec: str = ".2f") -> str:
    try:
        return format(float(value), spec)
    except (TypeError, ValueError):
        return "-"


def _picture(row: dict, resolve: Resolver, suffix: str = "") -> Picture:
    """The row's image under the images root given (which may be newer than the CSV's
    ``abs_path``: the images moved); the CSV's ``abs_path`` only when no root is known."""
    relative = row.get("path" + suffix, "")
    where = resolve(relative) if resolve.root else (row.get("abs_path" + suffix) or relative)
    return Picture(where, relative)


# ----------------------------------------------------------------------- one cell per row


def misclassified_cell(row: dict, resolve: Resolver) -> Cell:
    return Cell([_picture(row, resolve)], f"true: {row['true']}",
                [f"predicted: {row['predicted']}", f"with probability {_num(row['confidence'], '.3f')}"], tone="bad")


def label_suspect_cell(row: dict, resolve: Resolver) -> Cell:
    return Cell([_picture(row, resolve)], f"given: {row['label']}",
                [f"suggested: {row['suggested']} ({_num(row['p_suggested'])})",
                 f"p(given) {_num(row['p_label'])}, score {_num(row['score'])}"], tone="warn")


def outlier_cell(row: dict, resolve: Resolver) -> Cell:
    other = row.get("nearest_other_class") or "-"
    return Cell([_picture(row, resolve)], f"label: {row['label']}",
                [f"score {_num(row['score'], '.1f')} (z in class)", f"closest other: {other}"], tone="warn")


_PAIR_TONE = {"conflict": "bad", "exact": "neutral", "near": "warn"}


def duplicate_cell(row: dict, resolve: Resolver) -> Cell:
    kind = row["kind"]
    leak = row.get("leak", "")
    tone = "bad" if leak or kind == "conflict" else _PAIR_TONE.get(kind, "neutral")
    what = {"near": "near-duplicate", "exact": "same bytes", "conflict": "same bytes, 2 classes"}.get(kind, kind)
    headline = f"{what}, similarity {_num(row['similarity'], '.3f')}"
    splits = f"split: {row.get('split_a', '')} / {row.get('split_b', '')}" + (f"  LEAK {leak}" if leak else "")
    labels = f"label: {row.get('label_a') or '-'} / {row.get('label_b') or '-'}"
    return Cell([_picture(row, resolve, "_a"), _picture(row, resolve, "_b")], headline, [splits, labels], tone=tone)


# ------------------------------------------------------------------------- the kinds


@dataclass(frozen=True)
class GalleryKind:
    """One gallery: which CSV rows it shows (a prefix, in CSV order) and how."""

    what: str  # "misclassified images": completes "the first 48 of 310 ..."
    cell: Callable[[dict, Resolver], Cell]
    shows: Callable[[dict], bool] = lambda row: True  # the rows it shows are the CSV's first rows for which this holds
    order: str = ""  # said under the title


def _suspect(row: dict) -> bool:
    try:
        return float(row["score"]) > 0  # another label is more likely than the given one
    except (KeyError, ValueError):
        return False


def _scored(row: dict) -> bool:
    return row.get("score", "") != ""  # images alone in their class have no score


GALLERIES: dict[str, GalleryKind] = {
    "misclassified": GalleryKind("misclassified images", misclassified_cell,
                                 order="most confident mistakes first (often label errors)"),
    "label-errors": GalleryKind("likely label errors", label_suspect_cell, _suspect,
                                order="another label is more likely (out-of-fold); highest score first"),
    "outliers": GalleryKind("images furthest from their class", outlier_cell, _scored,
                            order="robust z-score of the distance to the class's nearest images; highest first"),
    "duplicates": GalleryKind("duplicate pairs", duplicate_cell,
                              order="leaks across the split first, then label conflicts, then near-copies"),
}


def gallery_path(csv_path: str | os.PathLike) -> Path:
    """``x.csv`` -> ``x.png``: the gallery sits beside its CSV."""
    return Path(csv_path).with_suffix(".png")


def _read_rows(csv_path: Path) -> Iterator[dict]:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def build_sheet(kind: str, rows: Iterable[dict], images_root: str | os.PathLike | None, title: str = "",
                limit: int = MAX_TILES) -> tuple[Sheet, int]:
    """The sheet of ``kind`` for CSV ``rows`` (dicts, in CSV order) and how many rows were eligible."""
    spec = GALLERIES[kind]
    resolve = Resolver(images_root)
    eligible = itertools.takewhile(spec.shows, rows)  # the rows shown are a prefix of the CSV
    shown = [spec.cell(row, resolve) for row in itertools.islice(eligible, limit)]
    total = len(shown) + sum(1 for _ in eligible)
    heading = capped_title(spec.what, len(shown), total)
    sheet = Sheet(title=f"{title}: {heading}" if title else heading[0].upper() + heading[1:],
                  subtitle=spec.order + (f"; images under {images_root}" if images_root else ""),
                  sections=[Section("", shown)])
    return sheet, total


def write_gallery(kind: str, csv_path: str | os.PathLike, images_root: str | os.PathLike | None,
                  out: str | os.PathLike | None = None, title: str = "", limit: int = MAX_TILES) -> GalleryResult:
    """Make the gallery of the CSV at ``csv_path`` (default: beside it, ``.png``)."""
    out_path = Path(out) if out is not None else gallery_path(csv_path)
    sheet, total = build_sheet(kind, _read_rows(Path(csv_path)), images_root, title, limit)
    cells = sheet.cells
    note = ""
    if not cells:
        note = f"no gallery: no {GALLERIES[kind].what}"
    elif images_root is None:
        note = "no gallery: the images root is not known"
    elif not any_exists([p.location for cell in cells for p in cell.pictures]):
        note = f"no gallery: none of the images is under {images_root} (moved?)"
    if note:
        _remove_stale(out_path)
        return GalleryResult("", 0, total, note)
    write_sheet(sheet, out_path)
    capped = f"; the first {len(cells)} of {total:,}" if total > len(cells) else ""
    return GalleryResult(str(out_path), len(cells), total, f"{len(cells)} tiles{capped}")


def _remove_stale(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
