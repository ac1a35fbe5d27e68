"""The HDF5 embedding cache: the contract between the embedding stage and everything after.

Schema (DESIGN.md; ``format_version`` 1)::

    /embeddings/features  [N, D] float16|float32, chunked by rows
    /embeddings/keys      [N]    str   content hash of each row
    /files/paths          [M]    str   every image file, relative to the images root
    /files/rows           [M]    int   its row in /embeddings
    /files/labels         [M]    int   index into /classes, -1 if unlabeled
    /files/splits         [M]    str   train/val/test, or '' when the layout gives none
    /classes              [C]    str   class names, sorted
    /failures/paths, /failures/reasons   [F] str   files that could not be used, and why
    /failures/keys        [F]    str   (extra) their content keys, '' if unreadable
    /embeddings/views     [N, K, D]    (extra, ``embed run --views K``) augmented views per row
    /embeddings/views_done [N, K] bool (extra) which views exist (a row whose file is gone
                                       from the folder cannot get new ones)
    root attributes: format_version, fingerprint (JSON), images_root, created, versions, ...

The package has one module per idea: :mod:`.schema` (names, attributes, file layout),
:mod:`.reader` (:func:`open_cache`), :mod:`.writer` (:class:`CacheWriter`, crash-safe) and
:mod:`.finite` (finding rows that hold NaN or inf) and :mod:`.location` (where a cache is, local
or at a URL, resolved once). Import from the package itself; the
names below are its public surface.
"""

from ..errors import CacheError, CacheLockedError
from .finite import NonFinite, describe_nonfinite, find_nonfinite, nonfinite_mask, require_finite_rows
from .location import CacheLocation
from .reader import Cache, latest_cache, open_cache, open_h5
from .schema import (
    FORMAT_VERSION, REQUIRED_DATASETS, STORAGE_DTYPES, content_digest, library_versions, lock_path_for,
    parts_dir_for, write_root_attrs, write_tables,
)
from .writer import CacheWriter, Failure, FileRecord, FinishResult, write_cache

__all__ = [
    "FORMAT_VERSION", "REQUIRED_DATASETS", "STORAGE_DTYPES", "Cache", "CacheError", "CacheLocation", "CacheLockedError",
    "CacheWriter", "Failure", "FileRecord", "FinishResult", "NonFinite", "content_digest", "describe_nonfinite",
    "find_nonfinite", "latest_cache", "library_versions", "lock_path_for", "nonfinite_mask", "open_cache", "open_h5",
    "parts_dir_for", "require_finite_rows", "write_cache", "write_root_attrs", "write_tables",
]
