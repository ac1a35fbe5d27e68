"""``headstart eval RUN IMAGES``: any run, head or fine-tuned, on a labelled folder or manifest.

``head eval`` re-evaluates a head on a *cache*; this evaluates a run on *images*, the way a
user holds new labelled data: class folders (or train/val/test folders) or a CSV manifest.
The images go through the run's own pixel rule, backbone and head on the engine, exactly as
``predict`` sends them (:mod:`heads.inference`), and a head run takes the features of images
already in a cache of its fingerprint from there. So a fine-tuned run, which has no cached
features, is evaluated the same way as a head.

What it measures, and what it refuses:

* one example per distinct image (content key), as ``head train`` and ``head eval`` count:
  the same bytes under two paths are one image; the same bytes under two classes are a
  labelling conflict, left out and reported;
* the folder's classes must be the run's: a class the run does not know cannot be scored,
  and a class of the run missing from the folder changes what the macro averages mean, so
  either is a usage error (exit 2) that names the difference;
* images the run was trained on (its recorded cache and split, where that cache is still
  there) make the metrics optimistic: reported, exit 1.

It writes what ``head eval`` writes (:func:`heads.evaluate.write_evaluation`): metrics.json,
confusion.png, misclassified.csv and the mistakes as pictures, under ``RUN/evals/``.
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from headstart.embedder.defaults import CACHE_DIR, PREDICT_BATCH_SIZE, RUNTIME
from headstart.embedder.discovery import SPLITS, discover
from headstart.embedder.engine import Source
from headstart.embedder.errors import EXIT_ATTENTION, EXIT_OK, CacheError, UsageError
from headstart.embedder.hashing import hash_files
from headstart.embedder.progress import progress_bar

from .evaluate import summarize, write_evaluation
from .full_model import is_finetuned
from .runs import Run, timestamp

Log = Callable[[str], None]
EVAL_SPLITS = ("all", *SPLITS)
MAX_LISTED_CLASSES = 8


@dataclass
class EvalImagesOptions:
    manifest: str | Path | None = None  # CSV of path,label[,split], paths relative to the images folder
    split: str = "all"  # only the files the layout or manifest files under this split
    out: Path | None = None  # default: RUN/evals/<timestamp>-<folder>[-<split>]
    caches: Sequence[str | Path] = ()  # caches to look features up in first (head runs)
    cache_dir: Path = Path(CACHE_DIR)
    use_cache: bool = True
    runtime: str = RUNTIME
    batch_size: int = PREDICT_BATCH_SIZE
    workers: int | None = None
    devices: str | list[int] | None = None
    progress: bool = True


@dataclass
class EvalImagesReport:
    run: str
    kind: str  # 'head' or 'finetuned'
    images: str  # the images root; metrics.json's and misclassified.csv's paths are relative to it
    split: str
    out: str
    metrics: dict  # accuracy, macro_f1, log_loss, top_k_accuracy, n (distinct images)
    per_class: dict
    recorded: dict  # the run's own metrics (its validation split), for comparison
    labelled_files: int = 0  # files of the chosen split with a label
    unlabelled_files: int = 0  # files without a label: not evaluated
    duplicate_files: int = 0  # files whose bytes another evaluated file has: counted once
    conflicts: int = 0  # images left out: the same bytes under two classes
    seen_in_training: int | None = None  # evaluated images in the run's training split; None: unknown
    skipped: list[dict] = field(default_factory=list)  # files that could not be used, and why
    from_cache: int = 0
    through_backbone: int = 0
    runtime: str = ""
    elapsed_s: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_ATTENTION if (self.skipped or self.warnings) else EXIT_OK

    def to_dict(self) -> dict:
        data = asdict(self)
        data["exit_code"] = self.exit_code
        return data


def evaluate_images(run: Run, images: str | Path, options: EvalImagesOptions | None = None,
                    log: Log = lambda m: None) -> EvalImagesReport:
    """Evaluate ``run`` (a loaded :class:`heads.runs.Run`) on the labelled images under ``images``."""
    options = options or EvalImagesOptions()
    if options.split not in EVAL_SPLITS:
        raise UsageError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {options.split!r}")
    started = time.perf_counter()
    listing = discover(images, options.manifest)
    files = listing.files
    if options.split != "all":
        if not any(f.split for f in files):
            raise UsageError(f"--split {options.split}: {listing.root} gives no splits (no train/val/test folders, "
                             f"no split column in a manifest); evaluate every image with --split all")
        files = [f for f in files if f.split == options.split]
    labelled = [f for f in files if f.label is not None]
    if not labelled:
        where = f"the {options.split} split of {listing.root}" if options.split != "all" else str(listing.root)
        raise UsageError(f"no labelled images in {where}: eval needs class folders (or a manifest with labels) of "
                         f"the run's classes; for unlabelled images use `headstart predict`")
    _require_same_classes(sorted({f.label for f in labelled}), run, listing.root)

    report = EvalImagesReport(run=str(run.path), kind=run.kind, images=str(listing.root), split=options.split,
                              out="", metrics={}, per_class={}, recorded=dict(run.record.metrics),
                              labelled_files=len(labelled), unlabelled_files=len(files) - len(labelled),
                              skipped=[{"path": path, "reason": reason} for path, reason in listing.missing])
    keys = hash_files([listing.root / f.path for f in labelled])
    examples = _distinct_examples(labelled, keys, report)
    if not examples:
        raise UsageError(f"none of the {len(labelled)} labelled images in {listing.root} could be evaluated "
                         f"(see the reasons above with --json)")
    _check_training_overlap(run, [key for key, _, _ in examples], report, log)

    probabilities = _probabilities(run, listing.root, examples, options, report, log)
    done = [i for i, (key, _, _) in enumerate(examples) if key in probabilities]
    if not done:
        raise UsageError(f"none of the {len(examples)} images in {listing.root} could be decoded; "
                         f"{report.skipped[0]['path']}: {report.skipped[0]['reason']}")
    index = {name: i for i, name in enumerate(run.classes)}
    y = np.asarray([index[examples[i][2]] for i in done], dtype=np.int64)
    proba = np.stack([probabilities[examples[i][0]] for i in done])
    paths = [examples[i][1] for i in done]
    out = Path(options.out) if options.out is not None else _default_out(run, listing.root, options.split)
    extra = {"split": options.split, "run": str(run.path), "images": str(listing.root),
             "manifest": str(options.manifest) if options.manifest else None, "evaluated": "images"}
    metrics = write_evaluation(out, y, proba, run.classes, paths, extra=extra, images_root=listing.root)
    report.out, report.metrics, report.per_class = str(out), summarize(metrics), metrics.get("per_class", {})
    if report.skipped:
        report.warnings.append(f"{len(report.skipped)} files could not be used and are not in the metrics")
    report.elapsed_s = time.perf_counter() - started
    return report


# ------------------------------------------------------------------------------ checks


def _names(classes: Sequence[str]) -> str:
    shown = ", ".join(classes[:MAX_LISTED_CLASSES])
    return shown + (f" (+{len(classes) - MAX_LISTED_CLASSES} more)" if len(classes) > MAX_LISTED_CLASSES else "")


def _require_same_classes(found: list[str], run: Run, root: Path) -> None:
    """Exactly the run's classes, or a UsageError naming what differs."""
    unknown = sorted(set(found) - set(run.classes))
    absent = sorted(set(run.classes) - set(found))
    if not unknown and not absent:
        return
    parts = []
    if unknown:
        parts.append(f"not classes of the run: {_names(unknown)}")
    if absent:
        parts.append(f"classes of the run with no images here: {_names(absent)}")
    raise UsageError(f"the classes of {root} do not match those of run {run.path} ({'; '.join(parts)}); eval needs "
                     f"labelled images of exactly the run's classes ({_names(run.classes)})")


def _distinct_examples(labelled, keys, report: EvalImagesReport) -> list[tuple[str, str, str]]:
    """(key, path, label) once per distinct content, in file order; unreadable files are
    skipped, and contents filed under two classes are left out (as head train leaves them)."""
    first: dict[str, tuple[str, str]] = {}
    labels: dict[str, set[str]] = {}
    for file, key in zip(labelled, keys):
        if isinstance(key, OSError):
            report.skipped.append({"path": file.path, "reason": f"unreadable: {key.strerror or key}"})
            continue
        labels.setdefault(key, set()).add(file.label)
        if key in first:
            report.duplicate_files += 1
        else:
            first[key] = (file.path, file.label)
    conflicting = {key for key, names in labels.items() if len(names) > 1}
    if conflicting:
        report.conflicts = len(conflicting)
        example = next(k for k in first if k in conflicting)
        report.warnings.append(f"{len(conflicting)} images are filed under two classes (the same bytes, e.g. "
                               f"{first[example][0]} as {' and '.join(sorted(labels[example]))}) and are left out")
    return [(key, path, label) for key, (path, label) in first.items() if key not in conflicting]


def _check_training_overlap(run: Run, keys: list[str], report: EvalImagesReport, log: Log) -> None:
    """How many of the images the run was trained on (its recorded cache and split): metrics
    on those are optimistic. Unknown (None) when that cache is no longer where it was."""
    from headstart.embedder.cache import open_cache
    from headstart.embedder.fingerprint import same
    from headstart.embedder.storage import location

    from .data import split_for

    recorded = run.record.cache.path
    if not recorded:
        return
    try:
        path = location(recorded)
        if not path.is_file():
            return
        cache = open_cache(path)
        if not same(cache.fingerprint, run.fingerprint):
            return
        split = split_for(cache, run.record.split_spec)
    except (CacheError, OSError, ValueError) as exc:
        log(f"note: could not check which images the run trained on ({exc})")
        return
    trained = {str(k) for k, side in zip(cache.keys, split.split) if side == "train"}
    report.seen_in_training = sum(1 for key in keys if key in trained)
    if report.seen_in_training:
        report.warnings.append(f"{report.seen_in_training} of the {len(keys)} images were in the run's training "
                               f"split, so these metrics are optimistic; evaluate on images it never trained on")


# ------------------------------------------------------------------------ probabilities


def _probabilities(run: Run, root: Path, examples: list[tuple[str, str, str]], options: EvalImagesOptions,
                   report: EvalImagesReport, log: Log) -> dict[str, np.ndarray]:
    """key -> class probabilities: from cached features (head runs), else through the engine
    with the run's pixel rule and runtime, as ``predict`` does."""
    from .inference import PredictOptions, _cached_features, _candidate_caches, _engine_for

    finetuned = is_finetuned(run.meta)
    if options.caches and (finetuned or not options.use_cache):
        why = "a fine-tuned run takes images, not cached features" if finetuned else "--no-cache was given"
        raise UsageError(f"--cache cannot be used here: {why}")
    predict_options = PredictOptions(batch_size=options.batch_size, caches=list(options.caches),
                                     cache_dir=Path(options.cache_dir), use_cache=options.use_cache,
                                     runtime=options.runtime, devices=options.devices, workers=options.workers,
                                     progress=options.progress)
    keys = [key for key, _, _ in examples]
    probabilities: dict[str, np.ndarray] = {}
    if options.use_cache and not finetuned:
        cached = _cached_features(keys, run.fingerprint, _candidate_caches(run.meta, predict_options), str(run.path))
        hits = [key for key in keys if key in cached]
        if hits:
            found = run.predict_proba(np.stack([cached[key] for key in hits]).astype(np.float32))
            probabilities.update(zip(hits, found))
        report.from_cache = len(hits)
    todo = [example for example in examples if example[0] not in probabilities]
    if not todo:
        return probabilities
    engine, to_probabilities = _engine_for(run, finetuned, predict_options, log)
    sources = [Source(str(root / path), key=key) for key, path, _ in todo]
    with progress_bar(len(todo), "evaluating", options.progress, unit="img", mininterval=0.5) as bar:
        for batch in engine.embed(sources):
            if len(batch.indices):
                out = batch.features if to_probabilities is None else to_probabilities(batch.features)
                for j, p in zip(batch.indices, out):
                    probabilities[todo[j][0]] = p
            for j, reason in batch.failed:
                report.skipped.append({"path": todo[j][1], "reason": reason})
            bar.update(len(batch.indices) + len(batch.failed))
    report.runtime = engine.info.runtime
    report.through_backbone = sum(1 for key, _, _ in todo if key in probabilities)
    return probabilities


def _default_out(run: Run, root: Path, split: str) -> Path:
    """``RUN/evals/<timestamp>-<folder>[-<split>]``, with -2, -3... if that name is taken."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", root.name) or "images"
    base = run.path / "evals" / (f"{timestamp()}-{name}" + ("" if split == "all" else f"-{split}"))
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
