"""Where files live: a local path, or a URL on a filesystem TensorFlow reads (``gs://``, ...).

Image roots, manifests and caches may be given as ``scheme://...`` for any scheme the
installed TensorFlow registers in ``tf.io.gfile`` (``gs://`` in standard builds, ``ram://``
in every build; ``s3://``/``hdfs://`` with tensorflow-io). Such a location is a
:class:`UrlPath`: the slice of :mod:`pathlib`'s API that headstart uses, implemented with
``tf.io.gfile``, so code written against ``Path`` (``root / name``, ``.name``,
``.is_file()``, ``.relative_to()``...) works on both. Local paths stay plain ``Path`` objects
and keep the standard library's fast calls; TensorFlow is imported only when a URL is used.

This module is the one place that decides "is this a URL" (:func:`is_url`, :func:`location`).
Never pass a URL to ``pathlib.Path``: it collapses ``gs://b/x`` into ``gs:/b/x``. Errors of
``tf.io.gfile`` are turned into the matching ``OSError`` so callers handle one kind.
Caches need more than this (h5py and locks need a POSIX file): see :mod:`embedder.staging`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Iterable, Iterator

# At least two characters, so that a Windows drive ("C:/") is never taken for a scheme.
_URL_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+)://(.*)$", re.DOTALL)
_READ_BLOCK = 1 << 20


def _gfile():
    from .tf_runtime import import_tf

    return import_tf().io.gfile


@contextlib.contextmanager
def translated_errors(target: object) -> Iterator[None]:
    """Raise ``tf.errors`` of ``tf.io.gfile`` as the OSError a local call would raise."""
    from .tf_runtime import import_tf

    errors = import_tf().errors
    try:
        yield
    except errors.NotFoundError:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(target)) from None
    except errors.PermissionDeniedError:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target)) from None
    except errors.UnauthenticatedError as exc:
        raise PermissionError(errno.EACCES, f"not authenticated: {_message(exc)}", str(target)) from None
    except errors.OpError as exc:
        raise OSError(errno.EIO, _message(exc), str(target)) from None


def _message(exc: Exception) -> str:
    text = " ".join(str(getattr(exc, "message", "") or exc).split())
    return text[:200] or type(exc).__name__


def is_url(value: object) -> bool:
    """Whether ``value`` names a location on a ``tf.io.gfile`` filesystem (``scheme://...``).

    ``file://`` URLs are local paths (see :func:`location`), so they are not URLs here.
    """
    if isinstance(value, UrlPath):
        return True
    if not isinstance(value, str):
        return False
    match = _URL_RE.match(value)
    return match is not None and match.group(1).lower() != "file"


def location(value: str | os.PathLike) -> Path | "UrlPath":
    """``value`` as a :class:`UrlPath` when it is a URL, else as a local ``Path``."""
    if isinstance(value, (UrlPath, Path)):
        return value
    if isinstance(value, str):
        match = _URL_RE.match(value)
        if match is not None:
            if match.group(1).lower() == "file":
                return Path(match.group(2))  # file:///x -> /x
            return UrlPath(value)
    return Path(value)


class UrlPath:
    """A file or folder at a URL, with the part of ``pathlib.Path``'s API headstart uses.

    The part after ``scheme://`` is handled as a POSIX path (duplicate and trailing
    slashes dropped). It has no ``__fspath__`` on purpose: handing one to ``open`` or
    ``h5py`` fails at once instead of creating a local file named ``gs:``.
    """

    __slots__ = ("scheme", "_path")

    def __init__(self, url: str | "UrlPath"):
        if isinstance(url, UrlPath):
            self.scheme, self._path = url.scheme, url._path
            return
        match = _URL_RE.match(str(url))
        if match is None:
            raise ValueError(f"not a URL: {url!r}")
        self.scheme = match.group(1).lower()
        self._path = PurePosixPath(match.group(2))

    @classmethod
    def _make(cls, scheme: str, path: PurePosixPath) -> "UrlPath":
        made = cls.__new__(cls)
        made.scheme, made._path = scheme, path
        return made

    # -- pure path operations ----------------------------------------------------------

    def __str__(self) -> str:
        rest = str(self._path)
        return f"{self.scheme}://{'' if rest == '.' else rest}"

    def __repr__(self) -> str:
        return f"UrlPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UrlPath) and str(self) == str(other)

    def __lt__(self, other: "UrlPath") -> bool:
        return str(self) < str(other)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, other: str | os.PathLike) -> "UrlPath":
        if is_url(other):
            return UrlPath(str(other))
        return self._make(self.scheme, self._path / os.fspath(other))

    def as_posix(self) -> str:
        return str(self)

    @property
    def name(self) -> str:
        return self._path.name

    @property
    def suffix(self) -> str:
        return self._path.suffix

    @property
    def suffixes(self) -> list[str]:
        return self._path.suffixes

    @property
    def stem(self) -> str:
        return self._path.stem

    @property
    def parent(self) -> "UrlPath":
        return self._make(self.scheme, self._path.parent)

    def with_name(self, name: str) -> "UrlPath":
        return self._make(self.scheme, self._path.with_name(name))

    def with_suffix(self, suffix: str) -> "UrlPath":
        return self._make(self.scheme, self._path.with_suffix(suffix))

    def relative_to(self, other: object) -> PurePosixPath:
        if not isinstance(other, UrlPath) or other.scheme != self.scheme:
            raise ValueError(f"{self} is not under {other}")
        return self._path.relative_to(other._path)

    def is_absolute(self) -> bool:
        return True

    def expanduser(self) -> "UrlPath":
        return self

    def resolve(self) -> "UrlPath":
        return self

    absolute = resolve

    # -- filesystem operations (tf.io.gfile) ---------------------------------------------

    def exists(self) -> bool:
        with contextlib.suppress(OSError):
            with translated_errors(self):
                return bool(_gfile().exists(str(self)))
        return False

    def is_dir(self) -> bool:
        with contextlib.suppress(OSError):
            with translated_errors(self):
                return bool(_gfile().isdir(str(self)))
        return False

    def is_file(self) -> bool:
        with contextlib.suppress(OSError):
            return not self.stat().is_directory
        return False

    def stat(self) -> SimpleNamespace:
        """``st_size`` and ``st_mtime_ns`` (0 where the filesystem keeps no time), as ``os.stat``."""
        with translated_errors(self):
            info = _gfile().stat(str(self))
        return SimpleNamespace(st_size=int(info.length), st_mtime_ns=int(info.mtime_nsec),
                               is_directory=bool(info.is_directory))

    def iterdir(self) -> Iterator["UrlPath"]:
        with translated_errors(self):
            names = _gfile().listdir(str(self))
        for name in names:
            yield self / name.rstrip("/")

    def glob(self, pattern: str) -> list["UrlPath"]:
        with translated_errors(self):
            found = _gfile().glob(f"{self}/{pattern}")
        return sorted(UrlPath(p) for p in found)

    def open(self, mode: str = "rb", encoding: str | None = None):
        return open_file(self, mode, encoding=encoding)

    def read_bytes(self) -> bytes:
        with open_file(self, "rb") as fh:
            return fh.read()

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        with translated_errors(self):
            _gfile().makedirs(str(self))

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            with translated_errors(self):
                _gfile().remove(str(self))
        except FileNotFoundError:
            if not missing_ok:
                raise


class _GFileIO:
    """A ``tf.io.gfile.GFile`` whose errors (raised lazily, on first read) are OSErrors."""

    def __init__(self, url: UrlPath, mode: str):
        self._url = url
        with translated_errors(url):
            self._fh = _gfile().GFile(str(url), mode)

    def read(self, size: int = -1):
        with translated_errors(self._url):
            return self._fh.read(size)

    def write(self, data) -> None:
        with translated_errors(self._url):
            self._fh.write(data)

    def close(self) -> None:
        with translated_errors(self._url):
            self._fh.close()

    def __enter__(self) -> "_GFileIO":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_file(path: str | os.PathLike | UrlPath, mode: str = "rb", encoding: str | None = None):
    """``open()`` for local paths; ``tf.io.gfile.GFile`` (errors as OSError) for URLs."""
    if not is_url(path):
        return open(path, mode, encoding=encoding) if "b" not in mode else open(path, mode)
    if "b" not in mode:
        raise ValueError("URLs are opened in binary mode; decode the bytes")
    return _GFileIO(location(path), mode)


def getsize(path: str | os.PathLike | UrlPath) -> int:
    """Size in bytes; raises FileNotFoundError (or another OSError) like ``os.path.getsize``."""
    if not is_url(path):
        return os.path.getsize(path)
    return location(path).stat().st_size


def scan(folder: Path | UrlPath, file_suffixes: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Names of the sub-folders and of the files directly in ``folder``, each sorted.

    On object stores every "is it a folder?" is a request, so a URL listing asks only
    where it must: names ending in ``/`` (how GCS lists folders) are folders, names ending
    in one of ``file_suffixes`` (any case) are taken to be files, the rest are checked.
    """
    dirs: list[str] = []
    files: list[str] = []
    if not is_url(folder):
        with os.scandir(folder) as entries:
            for entry in entries:
                (dirs if entry.is_dir() else files).append(entry.name)
        return sorted(dirs), sorted(files)
    url = location(folder)
    suffixes = tuple(s.lower() for s in file_suffixes)
    with translated_errors(url):
        names = _gfile().listdir(str(url))
    for name in names:
        if not name.strip("/"):
            continue
        if name.endswith("/"):
            dirs.append(name.rstrip("/"))
        elif suffixes and name.lower().endswith(suffixes):
            files.append(name)
        elif (url / name).is_dir():
            dirs.append(name)
        else:
            files.append(name)
    return sorted(set(dirs)), sorted(set(files) - set(dirs))


def walk(top: UrlPath, file_suffixes: Iterable[str] = ()) -> Iterator[tuple[UrlPath, list[str], list[str]]]:
    """``os.walk`` for a URL folder, top-down: prune by editing the yielded folder names."""
    suffixes = tuple(file_suffixes)
    dirs, files = scan(top, suffixes)
    yield top, dirs, files
    for name in dirs:
        yield from walk(top / name, suffixes)
