"""Find the images under a root and what DESIGN.md says they are: label and split.

Three layouts, checked in this order:

* a CSV manifest (``path,label[,split]``), when one is given;
* split folders: the root's only sub-folders are ``train/``, ``val/`` (or ``validation/``)
  and ``test/``, each holding class folders;
* class folders: ``root/<class>/...`` (nested folders belong to their top class).

Images directly in the root (or directly in a split folder) are unlabeled (label -1).
Nothing here opens an image: decoding problems are found later, by the pipeline.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import storage
from .errors import UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
SPLITS = ("train", "val", "test")
UNLABELED = -1


@dataclass(frozen=True)
class ImageFile:
    """One image file: its path relative to the images root, and what the layout says."""

    path: str  # relative to the images root, '/'-separated
    label: str | None  # class name, or None when unlabeled
    split: str  # 'train' | 'val' | 'test' | '' (not given by the layout)


@dataclass
class Listing:
    """Everything discovery found: images, their classes, and what it passed over."""

    root: Path
    files: list[ImageFile]
    classes: list[str]
    layout: str  # 'class-folders' | 'split-folders' | 'manifest' | 'unlabeled'
    ignored: Counter = field(default_factory=Counter)  # extension -> count of non-images
    missing: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    @property
    def ignored_count(self) -> int:
        return sum(self.ignored.values())

    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk_files(folder: Path) -> list[Path]:
    """All non-hidden files below ``folder``, sorted, following no directory symlinks."""
    found = []
    walk = storage.walk(folder, IMAGE_EXTENSIONS) if storage.is_url(folder) else os.walk(folder)
    for dirpath, dirnames, filenames in walk:
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        base = storage.location(dirpath)
        found.extend(base / f for f in sorted(filenames) if not _is_hidden(f))
    return found


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _subfolders(folder: Path) -> list[Path]:
    if storage.is_url(folder):  # one listing, not a request per entry
        return [folder / d for d in storage.scan(folder, IMAGE_EXTENSIONS)[0] if not _is_hidden(d)]
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _loose_files(folder: Path) -> list[Path]:
    if storage.is_url(folder):
        return [folder / f for f in storage.scan(folder, IMAGE_EXTENSIONS)[1] if not _is_hidden(f)]
    return sorted(p for p in folder.iterdir() if p.is_file() and not _is_hidden(p.name))


def discover(root: str | os.PathLike, manifest: str | os.PathLike | None = None) -> Listing:
    """List the images under ``root`` with labels and splits; raise UsageError if none.

    ``root`` and ``manifest`` may be URLs (:mod:`embedder.storage`); ``Listing.root`` is then
    a :class:`~embedder.storage.UrlPath`.
    """
    root = storage.location(root).expanduser()
    if not root.exists():
        raise UsageError(f"images folder not found: {root}")
    if not root.is_dir():
        raise UsageError(f"not a folder: {root} (give the folder that holds the images)")
    root = root.resolve()
    if manifest is not None:
        listing = _from_manifest(root, storage.location(manifest).expanduser())
    else:
        listing = _from_folders(root)
    if not listing.files and not listing.missing:
        extra = ""
        if listing.ignored_count:
            kinds = ", ".join(f"{ext or '(none)'} x{n}" for ext, n in listing.ignored.most_common(5))
            extra = f"; ignored {listing.ignored_count} other files ({kinds})"
        raise UsageError(
            f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case{extra})"
        )
    return listing


def _from_folders(root: Path) -> Listing:
    subfolders = _subfolders(root)
    names = {p.name.lower() for p in subfolders}
    ignored: Counter = Counter()
    files: list[ImageFile] = []

    def add(path: Path, label: str | None, split: str) -> None:
        if is_image_name(path.name):
            files.append(ImageFile(_relative(path, root), label, split))
        else:
            ignored[path.suffix.lower()] += 1

    split_layout = bool(subfolders) and names <= set(SPLIT_FOLDERS) and len(names) == len(subfolders)
    split_layout = split_layout and len({SPLIT_FOLDERS[n] for n in names}) == len(names)
    if split_layout:
        layout = "split-folders"
        for path in _loose_files(root):
            add(path, None, "")
        for split_dir in subfolders:
            split = SPLIT_FOLDERS[split_dir.name.lower()]
            for path in _loose_files(split_dir):
                add(path, None, split)
            for class_dir in _subfolders(split_dir):
                for path in _walk_files(class_dir):
                    add(path, class_dir.name, split)
    else:
        layout = "class-folders" if subfolders else "unlabeled"
        for path in _loose_files(root):
            add(path, None, "")
        for class_dir in subfolders:
            for path in _walk_files(class_dir):
                add(path, class_dir.name, "")
    classes = sorted({f.label for f in files if f.label is not None})
    if not classes:
        layout = "unlabeled"
    return Listing(root=root, files=files, classes=classes, layout=layout, ignored=ignored)


def _from_manifest(root: Path, manifest: Path) -> Listing:
    """Read ``path,label[,split]`` rows; bad rows are a usage error, missing files are skipped."""
    if not manifest.is_file():
        raise UsageError(f"manifest not found: {manifest}")
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read manifest {manifest}: {exc}") from None
    rows = list(csv.reader(text.splitlines()))
    start = 0
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        header = [c.strip().lower() for c in rows[0]]
        if header[:2] != ["path", "label"] or header[2:] not in ([], ["split"]):
            raise UsageError(
                f"{manifest}:1: header must be 'path,label' or 'path,label,split', got {','.join(rows[0])!r}"
            )
        start = 1
    files: list[ImageFile] = []
    missing: list[tuple[str, str]] = []
    ignored: Counter = Counter()
    seen: set[str] = set()
    remote = storage.is_url(root)
    for line_no, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) not in (2, 3):
            raise UsageError(
                f"{manifest}:{line_no}: expected 'path,label[,split]', got {len(row)} fields: {','.join(row)!r}"
            )
        raw_path, label = row[0].strip(), row[1].strip()
        split = row[2].strip().lower() if len(row) == 3 else ""
        if not raw_path:
            raise UsageError(f"{manifest}:{line_no}: empty path")
        if split and split not in SPLIT_FOLDERS:
            raise UsageError(
                f"{manifest}:{line_no}: unknown split {row[2].strip()!r} (use train, val or test, or leave it empty)"
            )
        split = SPLIT_FOLDERS.get(split, "")
        path = storage.location(raw_path)
        full = path if path.is_absolute() else root / path
        try:
            rel = _relative(full.resolve(), root)
        except (ValueError, TypeError):  # TypeError: a URL against a local root, or the reverse
            raise UsageError(
                f"{manifest}:{line_no}: {raw_path} is outside the images root {root}; paths must lie under it"
            ) from None
        if rel in seen:
            raise UsageError(f"{manifest}:{line_no}: {raw_path} is listed twice")
        seen.add(rel)
        if not is_image_name(rel):
            ignored[Path(rel).suffix.lower()] += 1
            continue
        # At a URL that check is one request per row: there, the hashing step reports a
        # missing file as unreadable instead.
        if not remote and not full.is_file():
            missing.append((rel, "listed in the manifest but not found"))
            continue
        files.append(ImageFile(rel, label or None, split))
    classes = sorted({f.label for f in files if f.label is not None})
    return Listing(root=root, files=files, classes=classes, layout="manifest", ignored=ignored, missing=missing)
