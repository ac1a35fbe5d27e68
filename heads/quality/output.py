"""Writing the reports: CSV tables and a PNG, each atomically (temporary name, fsync, rename).

A report a user opens is therefore either the previous complete one or the new complete
one, even if the command is killed mid-write.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

from headstart.embedder.atomic import atomic_path


PATH_COLUMNS = ("path", "path_a", "path_b")


def absolute_columns(header: Sequence[str]) -> list[str]:
    """The columns :func:`write_csv` appends for ``images_root``: ``abs_<name>`` per path column."""
    return [f"abs_{name}" for name in header if name in PATH_COLUMNS]


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence],
              images_root: str | os.PathLike | None = None) -> int:
    """Write ``header`` and ``rows``; floats get 6 significant digits. Returns the data rows written.

    Paths in a cache are relative to its images root, which a CSV opened elsewhere cannot
    know: given ``images_root``, each path column (``path``, ``path_a``, ``path_b``) gets an
    ``abs_`` twin at the end, so every line opens as is; the existing columns stay first.
    """
    from headstart.heads.contact_sheet import Resolver

    count = 0
    wanted = [k for k, name in enumerate(header) if name in PATH_COLUMNS] if images_root is not None else []
    resolve = Resolver(images_root)
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(list(header) + (absolute_columns(header) if wanted else []))
            for row in rows:
                values = [f"{v:.6g}" if isinstance(v, float) else v for v in row]
                writer.writerow(values + [resolve(values[k]) for k in wanted])
                count += 1
    return count


def save_png(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=dpi)


def read_flagged_paths(path: str | os.PathLike, limit: int | None) -> list[str]:
    """Paths named in a CSV written by an ``inspect`` report (or any CSV with a ``path`` column).

    Reads the ``path`` column, or ``path_a``/``path_b`` (duplicates), of the first ``limit``
    data rows (the reports are sorted worst first); ``None`` reads them all.
    """
    from headstart.embedder.errors import UsageError

    path = Path(path)
    try:
        fh = open(path, newline="", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read --flag file {path}: {exc.strerror or exc}") from None
    with fh:
        reader = csv.DictReader(fh)
        columns = [c for c in (reader.fieldnames or []) if c in ("path", "path_a", "path_b")]
        if not columns:
            raise UsageError(f"--flag file {path} has no 'path' column (nor path_a/path_b); pass a CSV written by "
                             f"`headstart inspect labels|outliers|duplicates`")
        found: list[str] = []
        for i, record in enumerate(reader):
            if limit is not None and i >= limit:
                break
            found.extend(record[c] for c in columns if record.get(c))
    return found


def write_report_gallery(kind: str, csv_path: str | os.PathLike, cache) -> dict:
    """The gallery of a report's CSV, beside it; returns the report's ``images_root``,
    ``gallery`` and ``gallery_note`` fields."""
    from headstart.heads.gallery import write_gallery

    root = str(cache.images_root)
    result = write_gallery(kind, csv_path, root, title=Path(str(cache.path)).name)
    return {"images_root": root, "gallery": result.path, "gallery_note": result.note}
