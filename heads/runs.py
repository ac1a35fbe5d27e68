"""Run folders: written crash-safely, read back with checks, listed for the leaderboard.

A run folder holds everything needed to use a head with no other input: the model (its
kind's file: ``model.keras`` for dense heads, ``model.npz`` for the numpy kinds), ``head.json``
(classes, fingerprint, params, split, metrics: :class:`heads.run_meta.RunMeta`),
``metrics.json`` and the plots. Which kind reads the model is looked up in the kinds
registry (:mod:`heads.kinds`) by head.json's ``head_type``.

Crash safety: a run is assembled in a hidden sibling folder (``.NAME.tmp-PID``) and renamed
into place only once complete, ``head.json`` written last. So a folder named like a run
either is complete or has no ``head.json``, and :func:`load_run` says which file is missing.
A ``model_file`` that points outside its run folder (``../x``, an absolute path) marks a
damaged run: nothing is read from there.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from headstart.embedder.atomic import TMP_MARKER, fsync_dir, write_text_atomic
from headstart.embedder.defaults import RUNS_DIR
from headstart.embedder.errors import HeadstartError, UsageError
from headstart.embedder.hashing import file_sha256

from .kinds import KINDS, ModelFileError, get_kind
from .run_meta import FORMAT_VERSION, RunMeta, RunMetaError

RUN_META = "head.json"
_REQUIRED_META = ("classes", "fingerprint", "head_type", "feature_dim")


class RunError(HeadstartError):
    """A run folder is missing, incomplete, damaged, or of the wrong kind (exit 2)."""


@dataclass
class Run:
    """A loaded run folder: ``record`` is its head.json as a :class:`RunMeta` (``meta`` the
    JSON object as read, for tools). The model itself loads on first use."""

    path: Path
    meta: dict
    record: RunMeta = field(default=None)  # type: ignore[assignment]
    _head: Any = field(default=None, repr=False)

    def __post_init__(self):
        if self.record is None:
            self.record = RunMeta.from_json(self.meta)

    @property
    def kind(self) -> str:
        return self.record.kind

    @property
    def classes(self) -> list[str]:
        return list(self.record.classes)

    @property
    def fingerprint(self) -> dict:
        return dict(self.record.fingerprint)

    @property
    def head_type(self) -> str:
        return self.record.head_type

    @property
    def feature_dim(self) -> int:
        return int(self.record.feature_dim)

    @property
    def model_path(self) -> Path:
        name = self.record.model_file
        if name is None and self.kind == "head":
            name = get_kind(self.head_type).model_file
        return contained(self.path, name or "model.keras")

    def _require_head(self, what: str) -> None:
        if self.kind != "head":
            raise RunError(f"run {self.path} is a {self.kind} run; {what} needs a head trained on cached features "
                           f"(`headstart head train`)")

    def head(self):
        """The fitted head (a :class:`heads.kinds.Head` of the run's kind), loaded once."""
        self._require_head("a head")
        if self._head is None:
            try:
                self._head = get_kind(self.head_type).load(self.path, self.model_path.name)
            except ModelFileError as exc:
                raise RunError(f"run {self.path} is damaged: {self.model_path.name}: {exc}") from None
        return self._head

    def keras_head(self):
        """The dense head as a Keras model: features [D] float32 -> probabilities [C]."""
        self._require_head("a Keras head")
        if self.head_type != "dense":
            raise RunError(f"run {self.path} has a {self.head_type} head (scikit-learn), not a Keras model; "
                           f"train one with `headstart head train --head dense`")
        return self.head().model_

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities [N, C] for pooled features [N, D] of the run's fingerprint."""
        self._require_head("predicting from cached features")
        x = np.asarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.feature_dim:
            raise UsageError(f"run {self.path} expects features of {self.feature_dim} values per row, got "
                             f"shape {list(x.shape)}; were they made by another backbone?")
        return self.head().predict_proba(x)


def contained(folder: Path, name: str) -> Path:
    """``folder/name``, refused (RunError) unless it stays inside ``folder``: a run's files are
    its own, and a head.json naming ``../../x`` or ``/etc/x`` is damaged, not a pointer."""
    relative = Path(str(name))
    if not str(name).strip() or relative.is_absolute() or ".." in relative.parts:
        raise RunError(f"run {folder} is damaged: its model_file {str(name)!r} points outside the run folder")
    target = folder / relative
    try:
        inside = target.resolve().is_relative_to(folder.resolve())
    except OSError:
        inside = False
    if not inside:
        raise RunError(f"run {folder} is damaged: its model_file {str(name)!r} points outside the run folder")
    return target


def load_run(path: str | os.PathLike) -> Run:
    """Read and check a run folder; anything missing or damaged is a one-line RunError."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(_not_a_folder(path))
    meta_path = path / RUN_META
    if not meta_path.is_file():
        raise RunError(_not_a_run(path) or f"run {path} is incomplete: it has no {RUN_META} (written last, so the "
                                           f"run never finished); train it again")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"run {path} is damaged: {RUN_META} is not readable JSON ({_first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise RunError(f"run {path} is damaged: {RUN_META} is not a JSON object")
    try:
        record = RunMeta.from_json(meta)
    except RunMetaError as exc:
        raise RunError(f"run {path} is damaged: {RUN_META}: {exc}") from None
    run = Run(path=path, meta=meta, record=record)
    if run.kind != "head":
        if record.model_file:
            model = contained(path, record.model_file)
            if not model.exists():
                raise RunError(f"run {path} is incomplete: {record.model_file} is missing")
            _check_sha256(run, model)
        return run
    missing = [key for key in _REQUIRED_META if key not in meta]
    if missing:
        raise RunError(f"run {path} is incomplete: {RUN_META} lacks {missing[0]!r}")
    if run.head_type not in KINDS:
        raise RunError(f"run {path} has an unknown head type {run.head_type!r}; a newer headstart may read it")
    if record.format_version > FORMAT_VERSION:
        raise RunError(f"run {path} has run format {record.format_version}, newer than this headstart "
                       f"understands ({FORMAT_VERSION}); upgrade headstart")
    model = run.model_path
    if not model.is_file():
        raise RunError(f"run {path} is incomplete: {model.name} is missing")
    _check_sha256(run, model)
    return run


def _not_a_folder(path: Path) -> str:
    """Why ``path`` is no run folder: missing, or a file (a run's own file, a cache)."""
    if not path.exists():
        return f"run folder not found: {path}"
    if path.parent.joinpath(RUN_META).is_file():
        return f"{path} is a file of run {path.parent}; pass the run folder itself: {path.parent}"
    if path.suffix.lower() in (".h5", ".hdf5"):
        return (f"{path} is a file (a cache?), not a run folder; pass a run folder such as runs/<run> "
                f"(`headstart head list` lists them)")
    return f"{path} is a file, not a run folder; pass a run folder such as runs/<run>"


def _not_a_run(path: Path) -> str | None:
    """What a folder without head.json is, when it is something else than a run that never
    finished: a sweep's folder or a folder of runs, a cache folder, an unfinished fine-tune.
    The message says what to pass instead; None when it looks like an unfinished run."""
    runs = [folder for folder, _ in list_runs(path)]
    if runs:
        best = max(runs, key=lambda folder: val_accuracy(_meta_or_empty(folder)) or -1.0)
        sweep = all(_SWEEP_RUN.match(folder.name) for folder in runs) and all(f.parent == path for f in runs)
        what = "a sweep's folder" if sweep else "a folder of runs"
        return (f"{path} is {what} holding {len(runs)} runs, not a run; pass one of them, e.g. {best} (the best by "
                f"val accuracy); `headstart head list --runs-dir {path}` ranks them")
    caches = sorted(p.name for p in path.glob("*.h5"))
    if caches:
        from headstart.embedder.summaries import plural

        return (f"{path} is a cache folder ({plural(len(caches), '.h5 cache')}, e.g. {caches[0]}), not a run; "
                f"pass a run folder such as runs/<run> (`headstart head list` lists them), or the cache with --cache")
    from .finetune import CHECKPOINT_DIR, STATE_FILE

    if (path / CHECKPOINT_DIR / STATE_FILE).is_file():
        return (f"{path} is a fine-tune that has not finished; continue it with `headstart finetune --resume "
                f"--out {path}`")
    return None


_SWEEP_RUN = re.compile(r"^\d{2,}-[a-z0-9_]+$")  # what `head sweep` names its runs: 01-dense, 02-logreg...


def _meta_or_empty(folder: Path) -> dict:
    try:
        meta = json.loads((folder / RUN_META).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _check_sha256(run: Run, model: Path) -> None:
    expected = run.record.model_sha256
    if expected and file_sha256(model) != expected:
        raise RunError(f"run {run.path} is damaged: {model.name} does not match the checksum in {RUN_META}; "
                       f"retrain it or restore the file")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


# ------------------------------------------------------------------------------ listing


def _run_folders(runs_dir: Path) -> Iterator[tuple[Path, bool]]:
    """(folder, has head.json) for each candidate run folder, not descending into runs."""
    for root, dirs, files in os.walk(runs_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and TMP_MARKER not in d)
        here = Path(root)
        if here == runs_dir:
            continue
        if RUN_META in files:
            dirs[:] = []
            yield here, True
        elif any(not name.startswith(".") for name in files):
            yield here, False


def list_runs(runs_dir: str | os.PathLike = RUNS_DIR) -> list[tuple[Path, dict]]:
    """(path, head.json) of every readable run under ``runs_dir`` (any kind), oldest first."""
    found = []
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    for folder, complete in _run_folders(runs_dir):
        if not complete:
            continue
        try:
            meta = json.loads((folder / RUN_META).read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if isinstance(meta, dict):
            found.append((folder, meta))
    found.sort(key=lambda item: (str(item[1].get("created", "")), str(item[0])))
    return found


def incomplete_runs(runs_dir: str | os.PathLike = RUNS_DIR) -> list[Path]:
    """Folders under ``runs_dir`` holding files but no readable head.json."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    readable = {p for p, _ in list_runs(runs_dir)}
    return [folder for folder, _ in _run_folders(runs_dir) if folder not in readable]


def val_accuracy(meta: dict) -> float | None:
    metrics = meta.get("metrics") or {}
    value = metrics.get("accuracy", metrics.get("val_accuracy"))
    return float(value) if isinstance(value, (int, float)) else None


def best_run(runs_dir: str | os.PathLike = RUNS_DIR, head_type: str | None = None, kind: str | None = None) -> Run:
    """The run with the highest validation accuracy (ties: the newest).

    ``head_type`` restricts to head runs (kind "head") of that type, e.g. the dense head to
    fine-tune from; with neither filter every run counts, fine-tuned ones included.
    """
    candidates = []
    for path, meta in list_runs(runs_dir):
        run_kind = str(meta.get("kind", "head"))
        if kind is not None and run_kind != kind:
            continue
        if head_type is not None and (run_kind != "head" or meta.get("head_type") != head_type):
            continue
        accuracy = val_accuracy(meta)
        if accuracy is not None:
            candidates.append((accuracy, str(meta.get("created", "")), path))
    if not candidates:
        what = f"{head_type} head " if head_type else (f"{kind} " if kind else "")
        raise UsageError(f"no {what}run with a validation accuracy under {runs_dir}/; train one with "
                         f"`headstart head train`" + (f" --head {head_type}" if head_type else ""))
    candidates.sort(key=lambda item: (item[0], item[1]))
    return load_run(candidates[-1][2])


# ------------------------------------------------------------------------------ writing


def timestamp() -> str:
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def new_run_path(runs_dir: str | os.PathLike, label: str) -> Path:
    """``runs_dir/<timestamp>-<label>``, with -2, -3... if that name is taken."""
    runs_dir = Path(runs_dir)
    base = runs_dir / f"{timestamp()}-{label}"
    candidate, n = base, 1
    while candidate.exists() or any(runs_dir.glob(f".{candidate.name}{TMP_MARKER}*")):
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


class RunWriter:
    """Assemble a run in a hidden temporary folder; :meth:`commit` writes head.json and
    renames it into place. On an exception the temporary folder is removed.

    >>> with RunWriter(Path("runs/x")) as folder_writer:
    ...     model.save(folder_writer.folder / "model.keras")
    ...     folder_writer.commit(meta)
    """

    def __init__(self, final: str | os.PathLike):
        self.final = Path(final)
        self.folder = self.final.parent / f".{self.final.name}{TMP_MARKER}{os.getpid()}"
        self.committed = False

    def __enter__(self) -> "RunWriter":
        if self.final.exists() and (not self.final.is_dir() or any(self.final.iterdir())):
            raise UsageError(f"run folder {self.final} already exists; pass another --out or remove it")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(self.final)
        if self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir()
        return self

    def commit(self, meta: RunMeta) -> Path:
        """Write head.json (with the model's checksum) and move the run into place."""
        if meta.model_file:
            meta.model_sha256 = file_sha256(self.folder / meta.model_file)
        write_text_atomic(self.folder / RUN_META, json.dumps(meta.to_json(), indent=2, default=json_default) + "\n")
        fsync_dir(self.folder)
        if self.final.is_dir():
            self.final.rmdir()  # an empty folder the user made for us
        os.rename(self.folder, self.final)
        fsync_dir(self.final.parent)
        self.committed = True
        return self.final

    def __exit__(self, *exc) -> None:
        if not self.committed and self.folder.exists():
            shutil.rmtree(self.folder, ignore_errors=True)


def _remove_stale(final: Path) -> None:
    """Delete temporary folders that killed writers of this same run name left behind."""
    for entry in final.parent.glob(f".{final.name}{TMP_MARKER}*"):
        pid = entry.name.rsplit(TMP_MARKER, 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def json_default(value):
    """numpy scalars/arrays and paths, as JSON (for head.json and metrics.json)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
