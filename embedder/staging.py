"""Caches at URLs (``--cache gs://b/c.h5``): written in a local staging folder, then uploaded.

h5py, ``fcntl`` locks and atomic renames need a POSIX filesystem, which object stores are
not. So a cache whose location is a URL (:mod:`embedder.storage`) is written exactly like a
local one, into a *staging folder* on this machine, and only the finished file travels:

* **Writing** (:func:`staged_cache`). The staged copy lives at
  ``<staging root>/<folder>-<hash of the URL's folder>/<file name>`` (the root is
  ``$HEADSTART_STAGING_DIR``, else ``$XDG_CACHE_HOME/headstart/staging``, else
  ``~/.cache/headstart/staging``), beside its part files, its lock and the LiteRT
  flatbuffers of that cache folder. On entry, if the URL holds a cache this copy does not
  match, it is downloaded first, so a rerun embeds only new images. After a successful run
  that changed the file, it is uploaded with ``tf.io.gfile.copy`` to a temporary name
  beside the target and ``tf.io.gfile.rename``-d over it: readers of the URL see the old
  cache or the new one, never a half-written one.
* **Crash and resume.** Nothing is uploaded unless the run succeeds. A killed run leaves
  its part files in the staging folder, and the same command on the same machine resumes
  from them (as for a local cache). A run killed after consolidating but before its upload
  finished leaves a finished copy that a rerun uploads without embedding anything.
* **Reading** (:func:`local_copy`, used by ``open_cache``). A cache at a URL is read from a
  local copy: the staged copy when it is exactly the URL's current version (same size and
  modification time as when it was last downloaded or uploaded), else a download into
  ``<staging folder>/downloads/``, reused while the URL's size and modification time stay
  the same (filesystems that keep no modification time compare sizes only).
* **One writer per URL.** The lock is local to a machine. Before uploading, the URL is
  checked again: if it changed since it was downloaded (another machine wrote it), the
  upload is refused rather than losing that machine's rows. Give each machine its own file
  (``--shard``) and ``embed merge`` them.

The staging folder is a local mirror: delete it whenever no run is writing, at the cost of
a download on the next run (and of the unfinished parts of an interrupted one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Callable, Iterator

from .atomic import TMP_MARKER, atomic_path, write_text_atomic
from .errors import CacheError
from .locking import FileLock
from .storage import UrlPath, is_url, location, translated_errors

STAGING_ENV = "HEADSTART_STAGING_DIR"
DOWNLOADS = "downloads"
STALE_UPLOAD_S = 24 * 3600  # a temporary upload older than this was left by a killed run


def staging_root() -> Path:
    """Where staged caches live on this machine (``$HEADSTART_STAGING_DIR`` overrides)."""
    if os.environ.get(STAGING_ENV):
        return Path(os.environ[STAGING_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart" / "staging"


def staging_folder(folder: UrlPath) -> Path:
    """The local folder that stands for the URL folder ``folder`` (one per URL folder, so
    every cache in it shares one LiteRT flatbuffer store)."""
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", folder.name or folder.scheme)[:40]
    return staging_root() / f"{label}-{digest}"


def staged_path(url: str | UrlPath) -> Path:
    """The staged local copy of the cache at ``url``."""
    url = location(url)
    return staging_folder(url.parent) / url.name


# -------------------------------------------------------------------------- bookkeeping


def _remote_stat(url: UrlPath) -> list[int] | None:
    """[size, mtime_ns] of the file at ``url``, None when there is none."""
    try:
        info = url.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CacheError(f"cannot reach {url}: {exc.strerror or exc}") from None
    if info.is_directory:
        raise CacheError(f"{url} is a folder; give the cache file's URL (or use --cache-dir)")
    return [info.st_size, info.st_mtime_ns]


def _local_stat(path: Path) -> list[int] | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return [info.st_size, info.st_mtime_ns]


def _sync_file(local: Path) -> Path:
    return local.with_name(local.name + ".sync.json")


def _read_sync(local: Path, url: UrlPath) -> dict | None:
    """What ``local`` was last in step with: {url, remote: [size, mtime] | None, local: [...]}."""
    try:
        data = json.loads(_sync_file(local).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("url") == str(url) else None


def _write_sync(local: Path, url: UrlPath, remote: list[int] | None) -> dict:
    data = {"url": str(url), "remote": remote, "local": _local_stat(local)}
    write_text_atomic(_sync_file(local), json.dumps(data) + "\n")
    return data


def _in_step(local: Path, sync: dict | None, remote: list[int] | None) -> bool:
    """``local`` is exactly the URL's current version (and nobody changed it since)."""
    return (sync is not None and remote is not None and sync.get("remote") == remote
            and sync.get("local") is not None and _local_stat(local) == sync.get("local"))


def _download(url: UrlPath, local: Path) -> None:
    from .storage import _gfile

    try:
        with atomic_path(local) as tmp, translated_errors(url):
            _gfile().copy(str(url), str(tmp), overwrite=True)
    except OSError as exc:
        raise CacheError(f"cannot download {url}: {exc.strerror or exc}") from None


def _upload(local: Path, url: UrlPath) -> None:
    """Copy to a temporary name beside ``url``, then rename over it (readers never see a
    partial file: the rename is atomic, or a server-side copy of a complete object)."""
    from .storage import _gfile

    gfile = _gfile()
    tmp = url.with_name(f"{url.name}{TMP_MARKER}{os.getpid()}-{secrets.token_hex(4)}")
    try:
        with translated_errors(url):
            if not url.parent.is_dir():
                gfile.makedirs(str(url.parent))
            _remove_stale_uploads(url)
            gfile.copy(str(local), str(tmp), overwrite=True)
            gfile.rename(str(tmp), str(url), overwrite=True)
    except OSError as exc:
        with contextlib.suppress(Exception):
            gfile.remove(str(tmp))
        raise CacheError(f"cannot upload the cache to {url}: {exc.strerror or exc}; the finished cache is kept "
                         f"at {local}: rerun the same command to retry the upload") from None


def _remove_stale_uploads(url: UrlPath) -> None:
    """Temporary uploads a killed run left beside ``url`` (a day old: not a live upload)."""
    with contextlib.suppress(Exception):
        for entry in url.parent.iterdir():
            if entry.name.startswith(url.name + TMP_MARKER):
                info = entry.stat()
                if info.st_mtime_ns == 0 or time.time() - info.st_mtime_ns / 1e9 > STALE_UPLOAD_S:
                    entry.unlink(missing_ok=True)


def _staging_lock(local: Path, url: UrlPath) -> FileLock:
    return FileLock(local.with_name(local.name + ".staging-lock"), lambda holder: (
        f"cache {url} is being written by another headstart process on this machine (pid {holder}); "
        f"wait for it to finish, or pass --cache to write elsewhere"))


# ------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def staged_cache(target: str | os.PathLike | UrlPath,
                 log: Callable[[str], None] = lambda message: None) -> Iterator[Path]:
    """The local file to write the cache ``target`` into; for a URL, uploaded on success.

    A local ``target`` is yielded as it is. For a URL: take the staging lock, bring the
    staged copy in step with the URL (download it if the URL holds another version), yield
    the staged path, and after a successful block upload it if the block changed it.
    """
    target = location(target)
    if not is_url(target):
        yield target
        return
    local = staged_path(target)
    with _staging_lock(local, target):
        remote = _remote_stat(target)
        sync = _read_sync(local, target)
        if local.exists() and sync is not None and sync.get("remote") == remote:
            # The URL's version, or a newer one an interrupted run finished but did not upload.
            if remote is None:
                log(f"an interrupted run finished {local} but did not upload it; this run will")
        elif remote is None:
            local.unlink(missing_ok=True)  # a copy of a file since removed from the URL
            sync = _write_sync(local, target, None)
        else:
            log(f"downloading {target} to {local}")
            _download(target, local)
            sync = _write_sync(local, target, remote)
        yield local
        if not local.exists() or _local_stat(local) == sync.get("local"):
            return  # unchanged: nothing to upload
        now = _remote_stat(target)
        if now != sync.get("remote"):
            raise CacheError(
                f"{target} changed while this run worked on a copy of it (another writer?); not overwriting it. "
                f"This run's cache is at {local}; rerun to add its images to the new version, and give each "
                f"machine its own cache file (--shard, then `embed merge`)")
        log(f"uploading {local} to {target}")
        _upload(local, target)
        _write_sync(local, target, _remote_stat(target))


# ------------------------------------------------------------------------------- reading


def local_copy(url: str | UrlPath) -> Path:
    """A local file holding the cache at ``url``'s current version (see the module notes)."""
    url = location(url)
    remote = _remote_stat(url)
    staged = staged_path(url)
    if remote is None:
        parts = staged.with_name(staged.name + ".parts")
        if parts.is_dir() and any(p.name.startswith("part-") for p in parts.iterdir()):
            raise CacheError(f"cache {url} is unfinished: an interrupted `headstart embed run` on this machine left "
                             f"parts in {parts}; rerun the same command to resume it")
        raise CacheError(f"cache not found: {url}")
    if _in_step(staged, _read_sync(staged, url), remote):
        return staged
    copy = staged.parent / DOWNLOADS / staged.name
    if not _in_step(copy, _read_sync(copy, url), remote):
        _download(url, copy)
        _write_sync(copy, url, remote)
    return copy


def pending_parts(url: str | UrlPath) -> Path:
    """Where an interrupted run on this machine keeps the part files of the cache at ``url``."""
    staged = staged_path(url)
    return staged.with_name(staged.name + ".parts")
