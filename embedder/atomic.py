"""Crash-safe file replacement: write to a temporary name, fsync, rename, fsync the folder.

A reader (or a rerun after ``kill -9``) therefore sees either the old file or the complete
new one, never a half-written one. Temporary files carry a recognisable suffix so that a
later run can clean up what a killed one left behind.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

TMP_MARKER = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a no-op where directories can't be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_path_for(path: Path, keep_suffix: bool = False) -> Path:
    """``name.tmp-PID``, or ``stem.tmp-PID.ext`` for writers that insist on an extension
    (Keras wants ``.keras`` / ``.weights.h5``)."""
    if keep_suffix and path.suffixes:
        suffixes = "".join(path.suffixes)
        stem = path.name[: -len(suffixes)]
        return path.with_name(f"{stem}{TMP_MARKER}{os.getpid()}{suffixes}")
    return path.with_name(f"{path.name}{TMP_MARKER}{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it atomically becomes ``path``.

    On an exception the temporary file is removed and ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(final, keep_suffix)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def remove_stale_temps(folder: Path, stem: str | None = None) -> int:
    """Delete temporary files that killed writers left in ``folder``; return how many."""
    removed = 0
    if not folder.is_dir():
        return 0
    for entry in folder.iterdir():
        if TMP_MARKER in entry.name and (stem is None or entry.name.startswith(stem)):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed += 1
    return removed
