"""Find the images under a root and what DESIGN.md says they are: label and split.

Three layouts, checked in this order:

* a CSV manifest (``path,label[,split]``), when one is given;
* split folders: the root's only sub-folders are ``train/``, ``val/`` (or ``valid/``,
  ``validation/``; any case) and ``test/``, each holding class folders;
* class folders: ``root/<class>/...`` (nested folders belong to their top class).

Images directly in the root (or directly in a split folder) are unlabeled (label -1).
Nothing here opens an image: decoding problems are found later, by the pipeline.

Symbolic links are followed, to files and to folders, but no folder is entered twice (by
its real path): a link back to a folder above it (``root/zz -> root``) would otherwise list
every image again under a phantom class, and a link to a folder already listed would file
its images twice. Such links are skipped and reported in :attr:`Listing.warnings`, as are
class folders named like splits (``val/`` among ordinary classes).
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
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
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
    warnings: list[str] = field(default_factory=list)  # one line each, for the user to read

    @property
    def ignored_count(self) -> int:
        return sum(self.ignored.values())

    def label_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


class _Walker:
    """Lists folders and files below a root, following symbolic links but entering no folder
    twice (by real path); what it skipped, and why, ends up in :attr:`warnings`.

    A link to a folder that is reachable without links (anywhere under the root) is skipped
    however early the walk meets it, so a link never files a real folder's images under its
    own class. At a URL (object stores have no links) it is a plain walk.
    """

    def __init__(self, root: Path):
        self.root = root
        self.remote = storage.is_url(root)
        self._entered: set[str] = set() if self.remote else {os.path.realpath(root)}
        self._real_tree: set[str] | None = None
        self._loops: list[str] = []
        self._repeats: list[str] = []
        self._unreadable: list[str] = []

    def _real_folders(self) -> set[str]:
        """Real paths of the folders reachable from the root without a link (computed once,
        when the first link to a folder turns up)."""
        if self._real_tree is None:
            self._real_tree = set()
            for dirpath, dirnames, _ in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if not _is_hidden(d)]
                self._real_tree.add(os.path.realpath(dirpath))
        return self._real_tree

    def _enter(self, folder: Path, is_link: bool) -> bool:
        """Whether to walk into ``folder`` (remembering it), else record why not."""
        real = os.path.realpath(folder)
        if real not in self._entered and not (is_link and real in self._real_folders()):
            self._entered.add(real)
            return True
        parent = os.path.realpath(folder.parent)
        inside = parent == real or parent.startswith(real.rstrip(os.sep) + os.sep)
        (self._loops if inside else self._repeats).append(_relative(folder, self.root))
        return False

    def scan(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """(sub-folders to enter, files) directly in ``folder``, each sorted; hidden names skipped."""
        if self.remote:  # one listing, not a request per entry
            dirs, files = storage.scan(folder, IMAGE_EXTENSIONS)
            return [folder / d for d in dirs if not _is_hidden(d)], [folder / f for f in files if not _is_hidden(f)]
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not _is_hidden(e.name)), key=lambda e: e.name)
        except OSError as exc:
            where = _relative(folder, self.root) if folder != self.root else str(folder)
            self._unreadable.append(f"{where} ({exc.strerror or exc})")
            return [], []
        dirs, files = [], []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links; a broken link counts as a file (unreadable later)
            except OSError:
                is_dir = False
            if not is_dir:
                files.append(folder / entry.name)
            elif self._enter(folder / entry.name, entry.is_symlink()):
                dirs.append(folder / entry.name)
        return dirs, files

    def files_below(self, folder: Path) -> list[Path]:
        """Every file below ``folder`` (already entered): each folder's files, then its
        sub-folders in name order, depth first."""
        found: list[Path] = []
        stack = [folder]
        while stack:
            dirs, files = self.scan(stack.pop())
            found.extend(files)
            stack.extend(reversed(dirs))
        return found

    @property
    def warnings(self) -> list[str]:
        out = []
        if self._loops:
            out.append(f"{_some(self._loops)}: a link back to a folder that contains it (a loop); not followed")
        if self._repeats:
            out.append(f"{_some(self._repeats)}: a link to a folder listed already; not followed, so its images "
                       f"are listed once")
        if self._unreadable:
            out.append(f"cannot list {_some(self._unreadable)}: the images there are left out")
        return out


def _some(items: list[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


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
    walker = _Walker(root)
    subfolders, loose = walker.scan(root)
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
    for path in loose:
        add(path, None, "")
    if split_layout:
        layout = "split-folders"
        for split_dir in subfolders:
            split = SPLIT_FOLDERS[split_dir.name.lower()]
            class_dirs, split_loose = walker.scan(split_dir)
            for path in split_loose:
                add(path, None, split)
            for class_dir in class_dirs:
                for path in walker.files_below(class_dir):
                    add(path, class_dir.name, split)
    else:
        layout = "class-folders" if subfolders else "unlabeled"
        for class_dir in subfolders:
            for path in walker.files_below(class_dir):
                add(path, class_dir.name, "")
    classes = sorted({f.label for f in files if f.label is not None})
    if not classes:
        layout = "unlabeled"
    warnings = walker.warnings + _split_named_classes(classes, layout, sorted(p.name for p in subfolders))
    return Listing(root=root, files=files, classes=classes, layout=layout, ignored=ignored, warnings=warnings)


def _split_named_classes(classes: list[str], layout: str, top: list[str]) -> list[str]:
    """A class folder named like a split is usually a split the layout could not read as one."""
    named = [c for c in classes if c.lower() in SPLIT_FOLDERS]
    if not named:
        return []
    them = ", ".join(f"{c}/" for c in named)
    if layout == "split-folders":
        return [f"class folders named like splits inside the split folders ({them}); check the layout: "
                f"root/train|val|test/<class>/..."]
    others = [f"{t}/" for t in top if t not in named]
    why = f"it also holds {_some(others, 3)}" if others else "two of its folders name the same split"
    return [f"class folders named like splits ({them}): every top folder is read as a class because {why}; "
            f"for splits, the images root must hold only train/, val/ (or valid/, validation/) and test/"]


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
