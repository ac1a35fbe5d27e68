"""What headstart keeps on disk, and what may go: ``headstart cache list`` and ``cache clean``.

Two places fill up unseen: the cache folder (caches, plus what interrupted runs leave: part
folders and lock files, and the flatbuffers earlier versions kept in ``<cache folder>/litert/``)
and the per-user store of converted backbones (``$HEADSTART_HOME/converted/<runtime>/``,
:mod:`embedder.runtimes.store`), which nothing used to report.

The clean rule, the only place it is decided:

- a finished cache (``*.h5``) is never removed, nor anything of a cache a writer holds the
  lock of (:mod:`embedder.locking`): that cache is in use;
- a lock file no process holds is a ``kill -9`` leftover: removed (as a writer would, by
  taking it and releasing it, so it never races a writer that starts meanwhile);
- a part folder (``<cache>.parts``) is an interrupted run's resumable work: removed when no
  writer holds its cache's lock and nothing in it changed for ``unused_days`` days (a
  rerun of the same command resumes it until then);
- ``<cache folder>/litert/`` flatbuffers: always removed (no version since reads them);
- a converted backbone is *orphaned* when no cache in the cache folder was made with its
  network (its key, ``backbone-<id>``, is :func:`embedder.backbones.network_key` of a cache's
  fingerprint), and it was not loaded for ``unused_days`` days (its record's ``last_used``).
  A fine-tuned model's (``model-<hash>``, made by ``predict``) has no cache: only its age
  counts. While a cache folder holds files that are not readable caches, the backbone-keyed
  ones are kept (their cache may be among them) and the report says so.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import TMP_MARKER
from .cache import open_cache
from .cache.schema import lock_path_for, parts_dir_for
from .errors import CacheError, CacheLockedError, UsageError
from .locking import FileLock
from .runtimes.store import CONVERTED, headstart_home
from .storage import is_url

LEGACY_FLATBUFFERS = "litert"  # <cache folder>/litert/: where versions before the store kept them
PARTS_SUFFIX = ".parts"
LOCK_SUFFIX = ".lock"
SIDECAR_SUFFIX = ".json"


@dataclass
class CacheEntry:
    path: str
    images_root: str
    backbone: str  # the fingerprint in words
    network_key: str
    rows: int
    size_bytes: int
    last_used: str  # the later of the file's access and change times, as the file system keeps them
    in_use: bool  # a writer holds its lock
    pending_parts: bool  # an interrupted run left parts to resume


@dataclass
class ConvertedEntry:
    path: str
    runtime: str
    key: str
    describes: str  # what the network is, as recorded at conversion
    size_bytes: int  # the file and its record
    created: str
    last_used: str
    caches: list[str] = field(default_factory=list)  # caches in the cache folder made with its network


@dataclass
class Survey:
    cache_dir: str
    converted_dir: str
    caches: list[CacheEntry] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # *.h5 files that are not readable caches
    converted: list[ConvertedEntry] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Removal:
    path: str
    what: str  # "converted backbone", "part folder", "lock file", "old flatbuffer"
    size_bytes: int
    why: str


@dataclass
class CleanReport:
    cache_dir: str
    converted_dir: str
    unused_days: float
    dry_run: bool
    removals: list[Removal] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # what the rule spared and why, one line each
    warnings: list[str] = field(default_factory=list)

    @property
    def size_bytes(self) -> int:
        return sum(r.size_bytes for r in self.removals)

    def to_dict(self) -> dict:
        return dict(asdict(self), size_bytes=self.size_bytes)


# ---------------------------------------------------------------------------------- listing


def survey(cache_dir: str | os.PathLike, home: str | os.PathLike | None = None) -> Survey:
    """The caches in ``cache_dir`` and the converted backbones kept for this user."""
    folder = _local_folder(cache_dir)
    converted_root = Path(home) / CONVERTED if home is not None else headstart_home() / CONVERTED
    found = Survey(str(folder), str(converted_root))
    for path in sorted(p for p in folder.glob("*.h5") if p.is_file() and TMP_MARKER not in p.name):
        entry = _cache_entry(path)
        if entry is None:
            found.unreadable.append(str(path))
        else:
            found.caches.append(entry)
    used_by: dict[str, list[str]] = {}
    for cache in found.caches:
        used_by.setdefault(cache.network_key, []).append(cache.path)
    for runtime in sorted(p for p in converted_root.iterdir() if p.is_dir()) if converted_root.is_dir() else []:
        for path in sorted(p for p in runtime.iterdir() if p.is_file() and not p.name.endswith(SIDECAR_SUFFIX)):
            if TMP_MARKER in path.name:  # an atomic write under way (or killed): not a kept file
                continue
            meta = _read_json(_sidecar(path))
            key = str(meta.get("key") or "")
            found.converted.append(ConvertedEntry(
                path=str(path), runtime=runtime.name, key=key, describes=_describes(meta.get("for")),
                size_bytes=_size(path) + _size(_sidecar(path)), created=str(meta.get("created") or ""),
                last_used=str(meta.get("last_used") or _iso(path.stat().st_mtime)),
                caches=used_by.get(key, [])))
    return found


def _cache_entry(path: Path) -> CacheEntry | None:
    from .backbones import network_key
    from .fingerprint import describe

    try:
        cache = open_cache(path)
    except CacheError:
        return None
    stat = path.stat()
    return CacheEntry(path=str(path), images_root=str(cache.attrs.get("images_root", "")),
                      backbone=describe(cache.fingerprint), network_key=network_key(dict(cache.fingerprint)),
                      rows=int(cache.num_rows), size_bytes=stat.st_size,
                      last_used=_iso(max(stat.st_atime, stat.st_mtime)), in_use=_lock_held(lock_path_for(path)),
                      pending_parts=parts_dir_for(path).is_dir())


# ---------------------------------------------------------------------------------- cleaning


def plan_clean(cache_dir: str | os.PathLike, unused_days: float, home: str | os.PathLike | None = None,
               now: float | None = None) -> CleanReport:
    """What :func:`clean` would remove under the module's rule, and what it spares and why."""
    if unused_days < 0:
        raise UsageError(f"--unused-days must be 0 or more, not {unused_days:g}")
    found = survey(cache_dir, home)
    folder = Path(found.cache_dir)
    now = _dt.datetime.now(_dt.timezone.utc).timestamp() if now is None else now
    cutoff = now - unused_days * 86400
    report = CleanReport(found.cache_dir, found.converted_dir, unused_days, dry_run=True)
    age = f"unused for {unused_days:g} days" if unused_days else "unused"

    if found.unreadable:
        report.warnings.append(
            f"{len(found.unreadable)} file(s) in {folder} are not readable caches ({', '.join(found.unreadable[:3])}); "
            f"converted backbones of this cache folder's kind (backbone-…) are kept, since one of them may be theirs")
    for item in found.converted:
        if item.caches:
            continue
        if found.unreadable and not item.key.startswith("model-"):
            continue
        if _timestamp(item.last_used) > cutoff:
            report.kept.append(f"{item.path}: no cache uses it, but it was used {item.last_used} "
                               f"(kept until {age})")
            continue
        report.removals.append(Removal(item.path, "converted backbone", item.size_bytes,
                                       f"no cache in {folder} was made with it; last used {item.last_used}"))

    if folder.is_dir():
        for parts in sorted(p for p in folder.glob("*" + PARTS_SUFFIX) if p.is_dir()):
            cache = parts.with_name(parts.name[: -len(PARTS_SUFFIX)])
            if _lock_held(lock_path_for(cache)):
                report.kept.append(f"{parts}: a writer is filling it now (it holds {lock_path_for(cache).name})")
                continue
            changed = _newest_change(parts)
            if changed > cutoff:
                report.kept.append(f"{parts}: an interrupted run's work, changed {_iso(changed)}; rerun its "
                                   f"command to resume it (kept until {age})")
                continue
            report.removals.append(Removal(str(parts), "part folder", _tree_size(parts),
                                           f"an interrupted run's parts, untouched since {_iso(changed)}"))
        for lock in sorted(p for p in folder.glob("*" + LOCK_SUFFIX) if p.is_file()):
            if _lock_held(lock):
                continue
            report.removals.append(Removal(str(lock), "lock file", _size(lock),
                                           "no process holds it (left by a killed run)"))
        legacy = folder / LEGACY_FLATBUFFERS
        if legacy.is_dir():
            for path in sorted(p for p in legacy.iterdir() if p.is_file()):
                report.removals.append(Removal(str(path), "old flatbuffer", _size(path),
                                               "kept beside caches by earlier versions; converted backbones now "
                                               f"live in {found.converted_dir}"))
    return report


def clean(cache_dir: str | os.PathLike, unused_days: float, dry_run: bool = False,
          home: str | os.PathLike | None = None, now: float | None = None) -> CleanReport:
    """Remove what :func:`plan_clean` finds (nothing with ``dry_run``). A part folder is removed
    under its cache's lock, so a writer starting meanwhile either waits for us or is seen and spared."""
    report = plan_clean(cache_dir, unused_days, home, now)
    report.dry_run = dry_run
    if dry_run:
        return report
    done = []
    for removal in report.removals:
        path = Path(removal.path)
        try:
            _REMOVERS[removal.what](path)
        except CacheLockedError:
            report.kept.append(f"{path}: a writer took it meanwhile")
            continue
        done.append(removal)
    legacy = Path(report.cache_dir) / LEGACY_FLATBUFFERS
    with contextlib.suppress(OSError):
        legacy.rmdir()  # only when empty
    report.removals = done
    return report


def _remove_converted(path: Path) -> None:
    for target in (path, _sidecar(path)):
        target.unlink(missing_ok=True)


def _remove_parts(parts: Path) -> None:
    cache = parts.with_name(parts.name[: -len(PARTS_SUFFIX)])
    with FileLock(lock_path_for(cache), lambda holder: f"{cache} is being written (pid {holder})"):
        shutil.rmtree(parts)


def _remove_lock(lock: Path) -> None:
    # Taking and releasing the lock removes its file the way a writer does (embedder.locking):
    # a writer that holds it meanwhile makes this fail, and its file stays.
    with FileLock(lock, lambda holder: f"{lock} is held (pid {holder})"):
        pass


_REMOVERS = {
    "converted backbone": _remove_converted,
    "part folder": _remove_parts,
    "lock file": _remove_lock,
    "old flatbuffer": lambda path: path.unlink(missing_ok=True),
}


# ---------------------------------------------------------------------------------- helpers


def _local_folder(cache_dir: str | os.PathLike) -> Path:
    if is_url(str(cache_dir)):
        raise UsageError(f"cache list and cache clean look at a folder on this machine, not {cache_dir}")
    return Path(cache_dir)


def _lock_held(lock: Path) -> bool:
    """Whether a process holds ``lock`` now (probed without creating or removing it)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describes(recorded) -> str:
    if isinstance(recorded, dict):
        from .fingerprint import describe

        with contextlib.suppress(Exception):
            return describe(recorded)
    return str(recorded or "")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _tree_size(folder: Path) -> int:
    return sum(_size(p) for p in folder.rglob("*") if p.is_file())


def _newest_change(folder: Path) -> float:
    times = [folder.stat().st_mtime] + [p.stat().st_mtime for p in folder.rglob("*")]
    return max(times)


def _iso(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="seconds")


def _timestamp(iso: str) -> float:
    try:
        moment = _dt.datetime.fromisoformat(iso)
    except ValueError:
        return 0.0  # unreadable: as old as can be
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=_dt.timezone.utc)
    return moment.timestamp()
