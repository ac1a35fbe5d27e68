"""``head train`` and ``head eval``: cache -> fitted head -> evaluated run folder, and back.

:func:`train_head` loads a cache once and hands the in-memory data to :func:`train_on`,
which :mod:`heads.sweep` also calls for every setting of a sweep. Only training rows reach
the fitting code; the validation rows are used for early stopping (dense) and evaluation,
test rows (when the layout has them) for a final, untouched evaluation.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from headstart.embedder.cache import CacheLocation, library_versions, open_cache
from headstart.embedder.defaults import CACHE_DIR, RUNS_DIR
from headstart.embedder.errors import EXIT_ATTENTION, EXIT_OK, UsageError
from headstart.embedder.fingerprint import describe, require_same

from .choose import choose_run, resolve_cache
from .data import LabelledFeatures, check_trainable, conflict_warning, load_labelled, training_views
from .evaluate import compute_metrics, summarize, write_evaluation
from .params import HeadParams
from .run_meta import CacheRef, RunMeta, SplitRecord
from .runs import RunWriter, load_run, new_run_path, timestamp
from .standardize import Standardizer
from .tensorboard import EpochScalars, chain, require_epochs, run_folder

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


@dataclass
class TrainReport:
    run: str
    head_type: str
    params: dict
    metrics: dict  # validation summary: accuracy, macro_f1, log_loss, top_k_accuracy, n
    per_class: dict
    split: dict
    classes: list
    cache: str
    fingerprint_text: str
    train_seconds: float
    total_seconds: float
    load_seconds: float = 0.0
    best_epoch: int | None = None
    epochs_run: int | None = None
    stopped_early: bool | None = None
    test_metrics: dict | None = None
    tensorboard: str | None = None  # the run's TensorBoard logs (--tensorboard)
    warnings: list = field(default_factory=list)
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_head(
    params: HeadParams,
    cache: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike = RUNS_DIR,
    cache_dir: str | os.PathLike = CACHE_DIR,
    log: Log = _quiet,
    progress: bool = False,
    tensorboard: str | os.PathLike | None = None,
) -> TrainReport:
    """Train one head on a cache and write its run folder (default: runs/<timestamp>-<head>);
    ``tensorboard``: a folder for the curves' TensorBoard logs (:mod:`heads.tensorboard`)."""
    if tensorboard is not None:
        require_epochs(params.head)
    started = time.perf_counter()
    cache_path = resolve_cache(cache, cache_dir, log)
    data = load_labelled(cache_path, params.val_fraction, params.seed)
    loaded = time.perf_counter()
    out = Path(out) if out is not None else new_run_path(runs_dir, params.head_type)
    report = train_on(data, params, out, log=log, progress=progress, tensorboard=tensorboard)
    report.load_seconds = loaded - started
    report.total_seconds = time.perf_counter() - started
    return report


def train_on(data: LabelledFeatures, params: HeadParams, out: Path, log: Log = _quiet,
             progress: bool = False, pictures: bool = True, tensorboard: str | os.PathLike | None = None) -> TrainReport:
    """Fit ``params`` on ``data``'s training rows, evaluate, and write the run folder ``out``.

    ``pictures``: the mistakes' contact sheet and ``report.html`` (about a second: the images
    are decoded again); a sweep leaves them to ``headstart report RUN``.
    """
    started = time.perf_counter()
    warnings = check_trainable(data)
    if "val_fraction" in params.given and data.split_source == "layout":
        warnings.append(f"--val-fraction {params.val_fraction:g} was not used: the cache's layout gives the "
                        f"validation split")
    x_train, y_train, _ = data.subset("train")
    split = data.split_record()
    if params.views:
        x_views, y_views, per_image = training_views(data, params.views)
        log(f"training on {len(y_train):,} images and {len(y_views):,} augmented views of them "
            f"({per_image} per image)")
        split["train_views"] = {"per_image": per_image, "examples": int(len(y_views))}
        x_train, y_train = np.concatenate([x_train, x_views]), np.concatenate([y_train, y_views])
    x_val, y_val, val_paths = data.subset("val")
    x_test, y_test, test_paths = data.subset("test")
    num_classes = len(data.classes)
    standardizer = Standardizer.fit(x_train) if params.standardize else None
    head = params.head.clone()  # params stay unfitted (a sweep, a rerun)

    # Library imports take seconds once per process; they are not the head's training time.
    type(head).preload()
    fit_started = time.perf_counter()
    board = run_folder(tensorboard, Path(out).name)
    with _epoch_bar(head, progress) as on_epoch, EpochScalars(board) if board else nullcontext() as scalars:
        head.fit(x_train, y_train, num_classes=num_classes, seed=params.seed, standardizer=standardizer,
                 validation=(x_val, y_val) if head.uses_validation else None, on_epoch=chain(on_epoch, scalars))
    train_seconds = time.perf_counter() - fit_started
    fitted = head.report_
    warnings.extend(fitted.warnings)

    proba_val = head.predict_proba(x_val)
    test_metrics = None
    if len(y_test):
        test_metrics = compute_metrics(y_test, head.predict_proba(x_test), data.classes)
    with RunWriter(out) as writer:
        metrics = write_evaluation(
            writer.folder, y_val, proba_val, data.classes, list(val_paths), history=fitted.history,
            best_epoch=fitted.best_epoch, extra={"split": "val", **({"test": test_metrics} if test_metrics else {})},
            images_root=data.images_root if pictures else None,
        )
        model_file = head.save(writer.folder)
        summary = summarize(metrics)
        if test_metrics:
            summary["test"] = summarize(test_metrics)
        sources = {"backbone": data.cache_attrs.get("backbone_source"),
                   "weights": data.cache_attrs.get("weights_source")}
        meta = RunMeta(
            kind="head",
            head_type=params.head_type,
            classes=list(data.classes),
            fingerprint=data.fingerprint,
            cache=CacheRef(path=data.cache_location.resolved(), images_root=data.images_root,
                           content_digest=data.cache_attrs.get("content_digest"), rows=int(len(data.keys)),
                           files=int(data.num_files)),
            feature_dim=data.dim,
            params=params.to_record(fitted=head),
            split=SplitRecord.from_json(split),
            metrics=summary,
            best_epoch=fitted.best_epoch,
            epochs_run=fitted.epochs_run,
            stopped_early=fitted.stopped_early,
            fit_info=dict(fitted.info),
            train_seconds=round(train_seconds, 4),
            model_file=model_file,
            warnings=warnings,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            versions=library_versions(),
            backbone_sources=sources if any(sources.values()) else None,
        )
        final = writer.commit(meta)
    if pictures:
        write_report_quietly(final, warnings, log)
    return TrainReport(
        run=str(final), head_type=params.head_type, params=meta.params, metrics=summary,
        per_class=metrics.get("per_class", {}), split=meta.split.to_json(), classes=list(data.classes),
        cache=str(data.cache_path), fingerprint_text=describe(data.fingerprint), train_seconds=train_seconds,
        total_seconds=time.perf_counter() - started, best_epoch=meta.best_epoch, epochs_run=meta.epochs_run,
        stopped_early=meta.stopped_early, test_metrics=summary.get("test"), warnings=warnings,
        tensorboard=str(board) if board else None,
        # Images left out of training (labelling conflicts) need a look, like skipped images do.
        exit_code=EXIT_ATTENTION if data.conflicts else EXIT_OK,
    )


def write_report_quietly(run_dir: Path, warnings: list, log: Log) -> None:
    """``report.html`` into a finished run; a report that cannot be made is a warning, never a
    failed run (the run is complete without it: ``headstart report RUN`` can make it later)."""
    from headstart.embedder.errors import HeadstartError

    from .run_report import write_run_report

    try:
        write_run_report(run_dir)
    except (HeadstartError, OSError) as exc:
        warnings.append(f"report.html was not written ({exc}); `headstart report {run_dir}` retries")
        log(f"warning: {warnings[-1]}")


class _epoch_bar:
    """A tqdm bar over epochs on stderr (a no-op when not wanted, or for kinds without epochs)."""

    def __init__(self, head, enabled: bool):
        self.head, self.enabled, self.bar = head, enabled and head.has_epochs, None

    def __enter__(self):
        if not self.enabled:
            return None
        from headstart.embedder.progress import progress_bar

        self.bar = progress_bar(int(self.head.epochs), f"{self.head.name} head", unit="epoch")  # only on a terminal

        def on_epoch(epoch: int, logs: dict) -> None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", val_loss=f"{logs['val_loss']:.3f}",
                                 val_acc=f"{logs['val_accuracy']:.3f}", refresh=False)

        return on_epoch

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------------- eval


@dataclass
class EvalReport:
    run: str
    cache: str
    split: str
    out: str
    metrics: dict
    per_class: dict
    recorded: dict  # the run's own head.json metrics, for comparison
    warnings: list = field(default_factory=list)
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


EVAL_SPLITS = ("auto", "all", "train", "val", "test")


def evaluate_run(
    run_path: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    split: str = "auto",
    out: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike = CACHE_DIR,
    log: Log = _quiet,
    runs_dir: str | os.PathLike = RUNS_DIR,
) -> EvalReport:
    """Re-evaluate a saved head on a cache of the same fingerprint.

    ``split="auto"``: on the run's own cache, its validation rows (the same split,
    reproduced from the recorded seed and fraction); on any other cache, every labelled row.
    Without ``run_path``, the cache (given, else the default one) chooses the run:
    :func:`heads.choose.choose_run` among the head runs of its fingerprint and classes.
    """
    if split not in EVAL_SPLITS:
        raise UsageError(f"--split must be one of {', '.join(EVAL_SPLITS)}, got {split!r}")
    if run_path is None:
        cache_path = resolve_cache(cache, cache_dir, log)
        opened = open_cache(cache_path)
        run = choose_run(runs_dir, cache=opened, kind="head", flag="RUN (a run folder)", log=log)
    else:
        run = load_run(run_path)
        if run.kind != "head":
            raise UsageError(f"run {run.path} is a {run.kind} run; `head eval` evaluates heads on cached features "
                             f"(use `headstart predict` on images)")
        recorded_cache = run.record.cache.path
        if cache is None and recorded_cache and (recorded := CacheLocation.of(recorded_cache)).where.is_file():
            cache_path = recorded
            log(f"using cache {cache_path} (the one the head was trained on)")
        else:
            cache_path = resolve_cache(cache, cache_dir, log, fingerprint=run.fingerprint)
        opened = open_cache(cache_path)
    require_same(opened.fingerprint, run.fingerprint, f"cache {cache_path}", f"run {run.path}")
    spec = run.record.split_spec
    data = load_labelled(opened, spec.val_fraction, spec.seed)
    recorded_cache = run.record.cache.path
    same_cache = bool(recorded_cache) and CacheLocation.of(recorded_cache).resolved() == cache_path.resolved()
    chosen = ("val" if same_cache else "all") if split == "auto" else split
    rows = data.rows() if chosen == "all" else data.rows(chosen)
    warnings = [conflict_warning(data.conflicts)] if data.conflicts else []
    known = {name: i for i, name in enumerate(run.classes)}
    mapping = np.asarray([known.get(name, -1) for name in data.classes], dtype=np.int64)
    y = mapping[data.labels[rows]] if len(rows) else np.zeros(0, dtype=np.int64)
    unknown = y < 0
    if unknown.any():
        names = sorted({data.classes[i] for i in data.labels[rows][unknown]})
        warnings.append(f"{int(unknown.sum())} images of classes the head does not know ({', '.join(names)}) "
                        f"were left out")
        rows, y = rows[~unknown], y[~unknown]
    if not len(rows):
        raise UsageError(f"no labelled images of the head's classes in the {chosen!r} split of {cache_path}; "
                         f"nothing to evaluate")
    proba = run.predict_proba(data.features[rows])
    out = Path(out) if out is not None else run.path / "evals" / f"{timestamp()}-{cache_path.stem}-{chosen}"
    metrics = write_evaluation(out, y, proba, run.classes, list(data.paths[rows]),
                               extra={"split": chosen, "run": str(run.path), "cache": str(cache_path)},
                               images_root=str(opened.images_root))
    return EvalReport(run=str(run.path), cache=str(cache_path), split=chosen, out=str(out),
                      metrics=summarize(metrics), per_class=metrics.get("per_class", {}),
                      recorded=dict(run.record.metrics), warnings=warnings,
                      exit_code=EXIT_ATTENTION if data.conflicts else EXIT_OK)
