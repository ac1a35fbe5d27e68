"""The cache file's contract: format version, dataset names, root attributes, file layout.

Everything here is what other stages and outside tools rely on (DESIGN.md, "The cache"):
changing a name means a new :data:`FORMAT_VERSION` and a clear error, or a migration, for
old files. The reader and the writer both build on it; neither defines a name of its own.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import h5py
import numpy as np

from .. import __version__
from ..filestat import NO_STAT, STAT_DTYPE, settled
from ..fingerprint import Fingerprint, canonical_json, describe

if TYPE_CHECKING:
    from .writer import Failure, FileRecord

FORMAT_VERSION = 1
STORAGE_DTYPES = ("float16", "float32")
COPY_ROWS = 16384  # rows moved per block when copying or scanning features
PART_RE = re.compile(r"^part-(\d{6,})\.npz$")
VIEWS_PART_RE = re.compile(r"^views-(\d{6,})\.npz$")
STR_DTYPE = h5py.string_dtype("utf-8")

REQUIRED_DATASETS = (
    "embeddings/features",
    "embeddings/keys",
    "files/paths",
    "files/rows",
    "files/labels",
    "files/splits",
    "classes",
    "failures/paths",
    "failures/reasons",
)


def parts_dir_for(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".parts")


def lock_path_for(cache_path: Path) -> Path:
    return cache_path.with_name(cache_path.name + ".lock")



def write_tables(h5: h5py.File, row_keys: Sequence[str], key_to_row: Mapping[str, int],
                 files: Sequence[FileRecord], classes: Sequence[str], failures: Sequence[Failure]) -> None:
    """Everything of the schema but /embeddings/features."""

    def strings(values) -> np.ndarray:
        return np.asarray(list(values), dtype=object)

    h5.create_dataset("embeddings/keys", data=strings(row_keys), dtype=STR_DTYPE)
    h5.create_dataset("files/paths", data=strings(f.path for f in files), dtype=STR_DTYPE)
    h5.create_dataset("files/rows", data=np.asarray([key_to_row[f.key] for f in files], dtype=np.int64))
    h5.create_dataset("files/labels", data=np.asarray([f.label for f in files], dtype=np.int64))
    h5.create_dataset("files/splits", data=strings(f.split for f in files), dtype=STR_DTYPE)
    h5.create_dataset("classes", data=strings(classes), dtype=STR_DTYPE)
    h5.create_dataset("failures/paths", data=strings(f.path for f in failures), dtype=STR_DTYPE)
    h5.create_dataset("failures/reasons", data=strings(f.reason for f in failures), dtype=STR_DTYPE)
    h5.create_dataset("failures/keys", data=strings(f.key for f in failures), dtype=STR_DTYPE)
    h5.create_dataset("files/stat", data=stat_table(files))
    h5.create_dataset("failures/stat", data=stat_table(failures))


def stat_table(entries) -> np.ndarray:
    """``/files/stat`` (or ``/failures/stat``): each entry's stat record (:mod:`embedder.filestat`),
    size -1 where it has none."""
    return np.array([e.stat if e.stat is not None else NO_STAT for e in entries], dtype=STAT_DTYPE)


def write_root_attrs(h5: h5py.File, fingerprint: Fingerprint, dtype: str, images_root: str, digest: str,
                     created: str, extra: Mapping[str, object]) -> None:
    attrs = {
        "format_version": FORMAT_VERSION,
        "fingerprint": canonical_json(fingerprint),
        "fingerprint_text": describe(fingerprint),
        "images_root": images_root,
        "created": created,
        "updated": now(),
        "storage_dtype": dtype,
        "content_digest": digest,
        "key_algorithm": "sha256",
        "headstart_version": __version__,
        "versions": json.dumps(library_versions(), sort_keys=True),
    }
    attrs.update({k: v for k, v in extra.items() if v is not None})
    for name, value in attrs.items():
        h5.attrs[name] = value



def content_digest(files, classes, failures, images_root, num_rows) -> str:
    """A digest of everything but the features, to skip rewriting an unchanged cache.

    It covers the stat records too (a touched file keeps its key but needs its new stat kept,
    or every later run reads it again), but of ``checked_ns`` only whether the record is
    settled: a racy record read again and still racy changes nothing worth a rewrite."""
    h = hashlib.sha256()
    h.update(f"{images_root}\0{num_rows}\0".encode())
    for name in classes:
        h.update(f"c\0{name}\0".encode())
    for f in files:
        h.update(f"f\0{f.path}\0{f.key}\0{f.label}\0{f.split}\0".encode())
    for f in failures:
        h.update(f"x\0{f.path}\0{f.key}\0{f.reason}\0".encode())
    for entries in (files, failures):
        table = stat_table(entries)
        ok = settled(table)
        table["checked_ns"] = 0
        h.update(table.tobytes())
        h.update(ok.tobytes())
    return h.hexdigest()


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers, read without importing them."""
    from importlib import metadata

    versions = {"headstart": __version__}
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "numpy", "h5py", "scikit-learn"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions

