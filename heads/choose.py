"""Defaults that pick a cache or a run, never across data sets.

A command that is not told which cache or run to use takes one by default, and a default
that silently crosses data sets is worse than none: bee photos predicted by a head trained
on another class set, or a head trained on the cache an accidental ``embed run --backbone X``
has just written. So (DESIGN.md, "Defaults never guess across data sets"):

* :func:`resolve_cache` takes the newest cache under ``cache/`` only while every cache there
  belongs to one (images root, backbone fingerprint) group, and always says what it took;
  otherwise it refuses and lists the groups.
* :func:`choose_run` takes the best run (validation accuracy; ties: the newest) among the
  runs made for the data at hand: the same backbone fingerprint and, for labelled inputs,
  the same class set. When none fits, or the fitting runs belong to more than one
  (fingerprint, class set) group, it refuses and lists the candidates.

Refusals are UsageErrors (exit 2) whose first line says what to pass instead (--cache,
--run, --from); the candidates follow, one per line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from headstart.embedder.cache import Cache, CacheLocation, latest_cache, open_cache
from headstart.embedder.defaults import CACHE_DIR, RUNS_DIR
from headstart.embedder.errors import CacheError, UsageError
from headstart.embedder.fingerprint import canonical_json, describe, same
from headstart.embedder.storage import location

from .run_meta import RunMeta, RunMetaError
from .runs import Run, list_runs, load_run

Log = Callable[[str], None]
MAX_LISTED = 12


def _quiet(_: str) -> None:
    pass


# -------------------------------------------------------------------------------- caches


@dataclass
class CacheSummary:
    path: Path
    images_root: str
    fingerprint: dict
    rows: int
    mtime_ns: int

    @property
    def group(self) -> tuple[str, str]:
        return self.images_root, canonical_json(self.fingerprint)

    def line(self) -> str:
        return f"  {self.path}  images {self.images_root}  {self.rows:,} rows  [{describe(self.fingerprint)}]"


def resolve_cache(cache: str | os.PathLike | None, cache_dir: str | os.PathLike = CACHE_DIR, log: Log = _quiet,
                  fingerprint: dict | None = None) -> CacheLocation:
    """The cache to use: the one given, else the newest under ``cache_dir`` (and say which),
    resolved once into the location everything below takes.

    Args:
      cache: the cache the user named (``--cache``); used as is.
      cache_dir: where default caches live.
      log: where to say which cache was taken (path, images root, rows, backbone).
      fingerprint: only caches of this backbone fingerprint count (e.g. the run's, for ``head eval``).

    Raises CacheError when the folder holds no readable cache, and UsageError when its caches
    (of ``fingerprint``, if given) belong to more than one (images root, fingerprint) group.
    """
    if cache is not None:
        return CacheLocation.of(cache)
    newest = latest_cache(cache_dir)  # raises "no cache found under ..." when there is none
    summaries, unreadable = _summaries(location(cache_dir))
    if not summaries:
        open_cache(newest)  # raises its own reason (not HDF5, unfinished, ...)
        raise CacheError(f"no readable cache under {cache_dir}/; pass --cache PATH")
    if unreadable:
        log(f"ignoring {len(unreadable)} unreadable .h5 files under {cache_dir}/ (e.g. {unreadable[0]})")
    if fingerprint is not None:
        summaries = [s for s in summaries if same(s.fingerprint, fingerprint)]
        if not summaries:
            raise CacheError(f"no cache under {cache_dir}/ was made with the backbone [{describe(fingerprint)}]; "
                             f"pass --cache PATH")
    groups: dict[tuple[str, str], list[CacheSummary]] = {}
    for summary in summaries:
        groups.setdefault(summary.group, []).append(summary)
    if len(groups) > 1:
        newest_of = [max(members, key=lambda s: s.mtime_ns) for members in groups.values()]
        newest_of.sort(key=lambda s: -s.mtime_ns)
        raise UsageError(
            f"the caches under {cache_dir}/ were made from {len(groups)} different image sets or backbones, so "
            f"there is no safe default; pass --cache PATH (the newest of each):\n"
            + "\n".join(s.line() for s in newest_of[:MAX_LISTED]))
    chosen = max(summaries, key=lambda s: s.mtime_ns)
    log(f"using cache {chosen.path} (the newest under {cache_dir}/: images {chosen.images_root}, "
        f"{chosen.rows:,} rows, backbone [{describe(chosen.fingerprint)}])")
    return CacheLocation.of(chosen.path)


def _summaries(folder) -> tuple[list[CacheSummary], list[Path]]:
    readable, unreadable = [], []
    for path in sorted(p for p in folder.glob("*.h5") if p.is_file()):
        try:
            opened = open_cache(path)
        except CacheError:
            unreadable.append(path)
            continue
        readable.append(CacheSummary(path, str(opened.attrs.get("images_root", "")), dict(opened.fingerprint),
                                     int(opened.num_rows), int(path.stat().st_mtime_ns)))
    return readable, unreadable


# ---------------------------------------------------------------------------------- runs


@dataclass
class Candidate:
    """A readable run folder, as the default selection sees it."""

    path: Path
    meta: RunMeta

    @property
    def group(self) -> tuple[str, tuple[str, ...]]:
        return canonical_json(self.meta.fingerprint), tuple(self.meta.classes)

    @property
    def rank(self) -> tuple[float, str]:
        accuracy = self.meta.val_accuracy
        return (accuracy if accuracy is not None else -1.0), self.meta.created

    def line(self) -> str:
        accuracy = self.meta.val_accuracy
        backbone = describe(self.meta.fingerprint) if self.meta.fingerprint else "backbone unknown"
        return (f"  {self.path}  [{backbone}]  classes {_classes_text(self.meta.classes)}  "
                f"val acc {'-' if accuracy is None else format(accuracy, '.4f')}")


def _classes_text(classes: Sequence[str], most: int = 5) -> str:
    if not classes:
        return "unknown"
    shown = ", ".join(classes[:most])
    return shown + (f" (+{len(classes) - most} more)" if len(classes) > most else "")


def run_candidates(runs_dir: str | os.PathLike = RUNS_DIR, kind: str | None = None,
                   head_type: str | None = None) -> list[Candidate]:
    """Every readable run under ``runs_dir`` of ``kind`` ("head" or "finetuned") and ``head_type``."""
    found = []
    for path, raw in list_runs(runs_dir):
        try:
            meta = RunMeta.from_json(raw)
        except RunMetaError:
            continue
        if kind is not None and meta.kind != kind:
            continue
        if head_type is not None and (meta.kind != "head" or meta.head_type != head_type):
            continue
        found.append(Candidate(path, meta))
    return found


def matching(candidates: Sequence[Candidate], fingerprint: dict | None = None,
             classes: Sequence[str] | None = None) -> list[Candidate]:
    """The candidates made for this fingerprint (if given) and exactly these classes (if given)."""
    out = []
    for c in candidates:
        if fingerprint is not None and not (c.meta.fingerprint and same(c.meta.fingerprint, fingerprint)):
            continue
        if classes is not None and list(c.meta.classes) != list(classes):
            continue
        out.append(c)
    return out


def data_of(cache: Cache | str | os.PathLike) -> tuple[dict, list[str] | None]:
    """(fingerprint, classes) a cache stands for; classes only when it has labelled files."""
    opened = cache if isinstance(cache, Cache) else open_cache(cache)
    labelled = bool(len(opened.labels)) and bool((opened.labels >= 0).any())
    return dict(opened.fingerprint), (list(opened.classes) if labelled else None)


def choose_run(runs_dir: str | os.PathLike = RUNS_DIR, *, fingerprint: dict | None = None,
               classes: Sequence[str] | None = None, cache: Cache | str | os.PathLike | None = None,
               kind: str | None = None, head_type: str | None = None, flag: str = "--run RUN",
               log: Log = _quiet) -> Run:
    """The run a command uses when none is named: the best by validation accuracy (ties: the
    newest) among the runs made for the data at hand.

    Args:
      runs_dir: where runs live (searched like ``head list``: sweeps' runs count too).
      fingerprint: the backbone fingerprint of the features or images at hand; only runs
        trained on it count. ``None``: unknown (e.g. images before any backbone ran).
      classes: the class names of labelled inputs, in cache order; only runs with exactly
        these classes count. ``None``: unlabelled inputs, any class set.
      cache: a cache at hand (a :class:`Cache` or its path): supplies ``fingerprint``, and
        ``classes`` when it has labelled files (explicit arguments win).
      kind: "head" or "finetuned" to consider only runs of that kind; ``head_type``: e.g.
        "dense", only head runs of that type (what ``finetune`` starts from).
      flag: how the user names a run explicitly, for the messages ("--run RUN", "--from RUN").
      log: where to say which run was taken, and why.

    Returns the loaded :class:`heads.runs.Run`.

    Raises UsageError (exit 2) when no run fits, or when the runs that fit were trained on more
    than one (fingerprint, class set): choosing among them would be a guess. The message lists
    the candidates (path, backbone, classes, val accuracy) and says to pass ``flag``.

    Example (``predict`` on images, before any backbone has run: no fingerprint yet)::

        run = choose_run("runs", log=print)  # refuses if runs of several data sets are there
    
    """
    if cache is not None:
        cache_fingerprint, cache_classes = data_of(cache)
        fingerprint = cache_fingerprint if fingerprint is None else fingerprint
        classes = cache_classes if classes is None else classes
    what = f"{head_type} head " if head_type else (f"{kind} " if kind else "")
    everything = run_candidates(runs_dir, kind, head_type)
    if not everything:
        raise UsageError(f"no {what}run under {runs_dir}/; train one with `headstart head train`"
                         + (f" --head {head_type}" if head_type else "") + f", or pass {flag}")
    fit = matching(everything, fingerprint, classes)
    wanted = _data_text(fingerprint, classes)
    if not fit:
        raise UsageError(f"none of the {len(everything)} {what}runs under {runs_dir}/ was trained on {wanted}; "
                         f"train one, or pass {flag} to use one anyway:\n" + _listing(everything))
    groups = {c.group for c in fit}
    if len(groups) > 1:
        raise UsageError(f"the {len(fit)} {what}runs under {runs_dir}/ that could fit {wanted} were trained on "
                         f"{len(groups)} different data sets (backbone or classes), so there is no safe default; "
                         f"pass {flag} to choose one:\n" + _listing(fit))
    best = max(fit, key=lambda c: c.rank)
    accuracy = best.meta.val_accuracy
    log(f"using run {best.path} (the best by val accuracy"
        + (f", {accuracy:.4f}" if accuracy is not None else "")
        + f", of {len(fit)} {what}runs under {runs_dir}/ for [{describe(best.meta.fingerprint)}], classes "
        f"{_classes_text(best.meta.classes)})")
    return load_run(best.path)


def _data_text(fingerprint: dict | None, classes: Sequence[str] | None) -> str:
    parts = []
    if fingerprint is not None:
        parts.append(f"this backbone [{describe(fingerprint)}]")
    if classes is not None:
        parts.append(f"these classes ({_classes_text(classes)})")
    return " and ".join(parts) if parts else "one data set"


def _listing(candidates: Sequence[Candidate]) -> str:
    ordered = sorted(candidates, key=lambda c: (c.group, str(c.path)))
    lines = [c.line() for c in ordered[:MAX_LISTED]]
    if len(ordered) > MAX_LISTED:
        lines.append(f"  ... and {len(ordered) - MAX_LISTED} more (see `headstart head list`)")
    return "\n".join(lines)
