"""The per-user store of converted backbones: converted once per machine, verified on every load.

Converting a backbone (TFLite for LiteRT) takes 10-30 s, and used to be repeated for every
cache folder (the flatbuffer was kept beside the cache) and again by ``predict``. Now each
conversion is kept once, in ``$HEADSTART_HOME/converted/<runtime>/`` (default
``~/.cache/headstart``), named by the network's key (its fingerprint id, or its model file's
hash) plus the library versions that made it, so an upgrade converts afresh.

A converted file is trusted only as far as its hash: the SHA-256 recorded when it was made
is checked on every load, and a mismatch (a file changed from outside: scaling its weights
by 1.5 once gave features off by 154% under the right fingerprint) is reported and the file
converted again. Every new conversion is checked against TensorFlow on a probe batch before
it is stored (by the runtime that makes it).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..atomic import atomic_path, write_text_atomic

HOME_ENV = "HEADSTART_HOME"
CONVERTED = "converted"


def headstart_home() -> Path:
    """Per-user state: ``$HEADSTART_HOME``, else ``$XDG_CACHE_HOME/headstart``, else ``~/.cache/headstart``."""
    if os.environ.get(HOME_ENV):
        return Path(os.environ[HOME_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "headstart"


def versions_tag(packages: tuple[str, ...]) -> str:
    """A short id of the installed versions of ``packages`` (a converter's output depends on them)."""
    from importlib import metadata

    found = {}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[name] = metadata.version(name)
    return hashlib.sha256(json.dumps(found, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class StoredFile:
    path: Path
    meta: dict  # the sidecar: key, sha256, size, created, last_used, and what the runtime recorded

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


class ConvertedStore:
    """``load``/``save`` of converted networks for one runtime (``suffix``: the file type)."""

    def __init__(self, runtime: str, suffix: str, version_packages: tuple[str, ...], root: Path | None = None):
        self.runtime, self.suffix = runtime, suffix
        self.version_packages = version_packages
        self.folder = (root or headstart_home() / CONVERTED) / runtime

    def path_for(self, key: str) -> Path:
        return self.folder / f"{key}-{versions_tag(self.version_packages)}{self.suffix}"

    @staticmethod
    def sidecar(path: Path) -> Path:
        return path.with_name(path.name + ".json")

    def load(self, key: str, log: Callable[[str], None] = lambda m: None) -> bytes | None:
        """The stored bytes for ``key`` when their hash matches the record; else None (and a
        damaged or unrecorded file is removed, so the caller converts again)."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            meta = json.loads(self.sidecar(path).read_text(encoding="utf-8"))
            expected = str(meta["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            log(f"the converted backbone {path} has no readable record of its hash; converting it again")
            self.remove(path)
            return None
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != expected:
            log(f"the converted backbone {path} does not match the SHA-256 recorded when it was made "
                f"(changed since); converting it again")
            self.remove(path)
            return None
        with contextlib.suppress(OSError):  # `headstart cache list` shows when each was last used
            meta["last_used"] = _now()
            write_text_atomic(self.sidecar(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return data

    def save(self, key: str, data: bytes, meta: dict) -> Path:
        """Keep ``data`` for ``key`` (atomically; its hash recorded beside it)."""
        path = self.path_for(key)
        record = dict(meta, key=key, runtime=self.runtime, sha256=hashlib.sha256(data).hexdigest(),
                      bytes=len(data), created=_now(), last_used=_now())
        with atomic_path(path, keep_suffix=True) as tmp:
            tmp.write_bytes(data)
        write_text_atomic(self.sidecar(path), json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        return path

    def remove(self, path: Path) -> None:
        for target in (path, self.sidecar(path)):
            with contextlib.suppress(FileNotFoundError):
                target.unlink()

    def entries(self) -> list[StoredFile]:
        """Every stored file of this runtime, with its record (an unreadable record: empty)."""
        found = []
        if not self.folder.is_dir():
            return found
        for path in sorted(self.folder.glob(f"*{self.suffix}")):
            try:
                meta = json.loads(self.sidecar(path).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                meta = {}
            found.append(StoredFile(path, meta if isinstance(meta, dict) else {}))
        return found


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
