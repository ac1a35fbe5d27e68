"""`headstart predict`: class probabilities for image files, from a head or fine-tuned run.

The same engine as the embedding job (:mod:`embedder.engine`): the same pixel rule (the
run's own, from its fingerprint), runtimes, progress and bad-file handling. Fast path for
head runs: images whose bytes are already in a cache of the run's fingerprint are not
pushed through the backbone again; their cached features go straight to the head. A cache
named with ``--cache`` must be readable, of the run's fingerprint and free of NaN/inf in
the rows used: anything else is an error, not a silent fallback.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from headstart.embedder.cache import CacheLocation, open_cache
from headstart.embedder.cache.finite import require_finite_rows
from headstart.embedder.defaults import CACHE_DIR, PREDICT_BATCH_SIZE, RUNTIME, TOP_K
from headstart.embedder.discovery import discover, is_image_name
from headstart.embedder.engine import Engine, Source
from headstart.embedder.errors import EXIT_ATTENTION, EXIT_OK, CacheError, UsageError
from headstart.embedder.fingerprint import require_same, same
from headstart.embedder.hashing import hash_files
from headstart.embedder.storage import location

from .full_model import finetuned_network, is_finetuned, pixel_recipe, resolve_backbone


@dataclass
class PredictOptions:
    top_k: int = TOP_K
    batch_size: int = PREDICT_BATCH_SIZE
    caches: Sequence[Path] = ()  # caches to look features up in first (each must fit the run)
    cache_dir: Path = Path(CACHE_DIR)
    use_cache: bool = True
    runtime: str = RUNTIME  # 'auto' or a name in embedder.runtimes.RUNTIMES
    devices: str | list[int] | None = None  # several devices: MirroredStrategy (batch_size is per device)
    workers: int | None = None  # decoding threads
    min_prob: float | None = None  # below it, an image's label is 'unknown' (its top_k stay)
    progress: bool = True


@dataclass
class PredictReport:
    run: str
    predictions: list[dict] = field(default_factory=list)  # path, label, probability, top_k
    skipped: list[dict] = field(default_factory=list)
    from_cache: int = 0
    through_backbone: int = 0
    ignored: dict = field(default_factory=dict)  # extension -> files passed over (not images by name)
    min_prob: float | None = None
    unknown: int = 0  # images labelled 'unknown' (top class below min_prob)
    out: str = ""  # where the predictions were written ('' : stdout)
    runtime: str = ""
    elapsed_s: float = 0.0
    backbone_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return EXIT_ATTENTION if self.skipped else EXIT_OK

    @property
    def rate(self) -> float:
        return len(self.predictions) / self.elapsed_s if self.elapsed_s else 0.0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["exit_code"], data["rate"] = self.exit_code, self.rate
        return data


def list_inputs(inputs: Sequence[str | Path], ignored: dict | None = None) -> list[tuple[str, Path]]:
    """(name to report, file) for every image among ``inputs`` (files and folders); files in
    folders that are not images by their extension are counted into ``ignored``."""
    from collections import Counter

    found: list[tuple[str, Path]] = []
    passed_over: Counter = Counter()
    for item in inputs:
        path = location(item).expanduser()
        if path.is_dir():
            try:
                listing = discover(path)
            except UsageError:
                listing = None  # a folder without images: counted below, an error only if nothing is left
                passed_over.update(_other_files(path))
            if listing is not None:
                found.extend((str(location(item) / f.path), listing.root / f.path) for f in listing.files)
                passed_over.update(listing.ignored)
        elif path.is_file():
            found.append((str(item), path))
        else:
            raise UsageError(f"no such file or folder: {item}")
    if ignored is not None:
        ignored.update(passed_over)
    if not found:
        kinds = ", ".join(f"{ext or '(none)'} x{n}" for ext, n in passed_over.most_common(5))
        raise UsageError("no images to predict" + (f" (passed over {sum(passed_over.values())} files that are "
                                                    f"not images by their extension: {kinds})" if kinds else ""))
    return found


def _other_files(folder: Path):
    import os

    for _, _, names in os.walk(folder):
        for name in names:
            if not name.startswith(".") and not is_image_name(name):
                yield Path(name).suffix.lower()


def _cached_features(keys: list[str], fingerprint: dict, candidates: list[tuple[Path, bool]],
                     run_path: str) -> dict[str, np.ndarray]:
    """Features for as many ``keys`` as caches of the same fingerprint hold.

    ``candidates`` are (cache, named by the user). A cache the user named must open, carry the
    run's fingerprint and hold finite rows, or this raises; the others (the run's own cache,
    the cache folder) are simply skipped when they do not fit. Rows with NaN/inf are refused
    whichever cache they come from: a NaN probability printed with exit 0 is a silent wrong
    answer.
    """
    wanted = set(keys)
    found: dict[str, np.ndarray] = {}
    for path, named in candidates:
        if not wanted - set(found):
            break
        try:
            cache = open_cache(path)
        except CacheError as exc:
            if named:
                raise CacheError(f"--cache {path}: {exc}") from None
            continue
        if not same(cache.fingerprint, fingerprint):
            if named:
                require_same(cache.fingerprint, fingerprint, f"--cache {path}", f"run {run_path}")
            continue
        row_of = {str(k): i for i, k in enumerate(cache.keys)}
        hits = [k for k in wanted - set(found) if k in row_of]
        if not hits:
            continue
        rows = np.asarray([row_of[k] for k in hits])
        block = cache.read_rows(rows)
        require_finite_rows(cache, features=block)
        found.update(zip(hits, block))
    return found


def _candidate_caches(meta: dict, options: PredictOptions) -> list[tuple[CacheLocation, bool]]:
    """(cache, named by the user), the named ones first, each once."""
    named = []
    for p in options.caches:
        where = CacheLocation.of(p)
        if not where.where.is_file():
            raise UsageError(f"--cache {p}: no such cache file")
        named.append((where, True))
    others = []
    recorded = (meta.get("cache") or {}).get("path")
    if recorded:
        others.append(CacheLocation.of(recorded))
    if Path(options.cache_dir).is_dir():
        others.extend(CacheLocation.of(p) for p in sorted(Path(options.cache_dir).glob("*.h5")))
    unique: list[tuple[CacheLocation, bool]] = []
    seen: set = set()
    for where, flag in named + [(p, False) for p in others]:
        if where.where.is_file() and where.resolved() not in seen:
            seen.add(where.resolved())
            unique.append((where, flag))
    return unique


def top_k_rows(names: list[str], probabilities: np.ndarray, classes: list[str], k: int) -> list[dict]:
    k = max(1, min(k, len(classes)))
    order = np.argsort(-probabilities, axis=1)[:, :k]
    rows = []
    for name, probs, idx in zip(names, probabilities, order):
        rows.append({
            "path": name,
            "label": classes[idx[0]],
            "probability": float(probs[idx[0]]),
            "top_k": [{"label": classes[j], "probability": float(probs[j])} for j in idx],
        })
    return rows


def predict_images(inputs: Sequence[str | Path], run, options: PredictOptions | None = None,
                   log: Callable[[str], None] = lambda m: None) -> PredictReport:
    """Predict every image in ``inputs`` with the run (a :class:`heads.runs.Run`)."""
    from headstart.embedder.progress import progress_bar

    options = options or PredictOptions()
    if options.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {options.top_k}")
    if options.min_prob is not None and not 0.0 <= options.min_prob <= 1.0:
        raise UsageError(f"--min-prob is a probability between 0 and 1, got {options.min_prob}")
    started = time.perf_counter()
    report = PredictReport(run=str(run.path), min_prob=options.min_prob)
    files = list_inputs(inputs, report.ignored)
    keys = hash_files([p for _, p in files])
    classes = list(run.classes)

    usable: list[int] = []
    for i, key in enumerate(keys):
        if isinstance(key, OSError):
            report.skipped.append({"path": files[i][0], "reason": f"unreadable: {key.strerror or key}"})
        else:
            usable.append(i)

    finetuned = is_finetuned(run.meta)
    if options.caches and (finetuned or not options.use_cache):
        why = "a fine-tuned run takes images, not cached features" if finetuned else "--no-cache was given"
        raise UsageError(f"--cache cannot be used here: {why}")
    cached: dict[str, np.ndarray] = {}
    if options.use_cache and not finetuned:
        cached = _cached_features([keys[i] for i in usable], run.fingerprint, _candidate_caches(run.meta, options),
                                  str(run.path))
    probabilities: dict[int, np.ndarray] = {}
    from_cache = [i for i in usable if keys[i] in cached]
    if from_cache:
        feats = np.stack([cached[keys[i]] for i in from_cache]).astype(np.float32)
        for i, p in zip(from_cache, run.predict_proba(feats)):
            probabilities[i] = p
    report.from_cache = len(from_cache)

    todo = [i for i in usable if i not in probabilities]
    if todo:
        backbone_started = time.perf_counter()
        engine, to_probabilities = _engine_for(run, finetuned, options, log)
        sources = [Source(str(files[i][1]), key=keys[i]) for i in todo]
        with progress_bar(len(todo), "predicting", options.progress, unit="img", mininterval=0.5) as bar:
            for batch in engine.embed(sources):
                if len(batch.indices):
                    out = batch.features if to_probabilities is None else to_probabilities(batch.features)
                    for j, p in zip(batch.indices, out):
                        probabilities[todo[j]] = p
                for j, reason in batch.failed:
                    report.skipped.append({"path": files[todo[j]][0], "reason": reason})
                bar.update(len(batch.indices) + len(batch.failed))
        report.runtime = engine.info.runtime
        report.through_backbone = sum(1 for i in todo if i in probabilities)
        report.backbone_s = time.perf_counter() - backbone_started

    done = [i for i in range(len(files)) if i in probabilities]
    if done:
        matrix = np.stack([probabilities[i] for i in done])
        report.predictions = top_k_rows([files[i][0] for i in done], matrix, classes, options.top_k)
        report.unknown = mark_unknown(report.predictions, options.min_prob)
    report.elapsed_s = time.perf_counter() - started
    return report


UNKNOWN = "unknown"


def mark_unknown(rows: list[dict], min_prob: float | None) -> int:
    """Label rows whose top class is less probable than ``min_prob`` 'unknown' (a hot dog or an
    owl, shown to an ants-vs-bees head, got ants or bees at 0.68-0.91: a head only knows its
    classes). The top-k keep the classes and their probabilities. Returns how many."""
    if min_prob is None:
        return 0
    count = 0
    for row in rows:
        if row["probability"] < min_prob:
            row["label"] = UNKNOWN
            count += 1
    return count


def prediction_format(fmt: str | None, out: Path | None) -> str:
    """``--format`` when given, else the ``--out`` file's extension (.json: json), else csv."""
    if fmt is not None:
        if fmt not in ("csv", "json"):
            raise UsageError(f"--format must be csv or json, got {fmt!r}")
        return fmt
    return "json" if out is not None and Path(out).suffix.lower() == ".json" else "csv"


def predict_arrays(images: Sequence[np.ndarray], run, options: PredictOptions | None = None,
                   log: Callable[[str], None] = lambda m: None) -> list[dict]:
    """Predictions for decoded images (upright RGB ``[H, W, 3]``, any size, as a notebook holds
    them): the run's resize, backbone and head, as for files. Rows are named by index."""
    options = options or PredictOptions(progress=False)
    engine, to_probabilities = _engine_for(run, is_finetuned(run.meta), options, log)
    sources = [Source(f"array {i}", pixels=image) for i, image in enumerate(images)]
    probabilities: dict[int, np.ndarray] = {}
    for batch in engine.embed(sources):
        if batch.failed:
            raise UsageError(f"image {batch.failed[0][0]}: {batch.failed[0][1]}")
        if len(batch.indices):
            out = batch.features if to_probabilities is None else to_probabilities(batch.features)
            probabilities.update(zip(batch.indices.tolist(), out))
    matrix = np.stack([probabilities[i] for i in range(len(images))]) if images else np.zeros((0, len(run.classes)))
    return top_k_rows([str(i) for i in range(len(images))], matrix, list(run.classes), options.top_k)


def _engine_for(run, finetuned: bool, options: PredictOptions, log) -> tuple[Engine, Callable | None]:
    """Fine-tuned runs: the whole network on pixels gives probabilities. Head runs: the
    backbone gives features, then the head (Keras or numpy) gives probabilities."""
    from headstart.embedder.backbones import backbone_network
    from headstart.embedder.runtimes import RuntimeOptions

    if finetuned:
        network, to_probabilities = finetuned_network(run), None
    else:
        network, to_probabilities = backbone_network(resolve_backbone(run.meta), log), run.predict_proba
    engine = Engine(network, pixel_recipe(run.meta), runtime=options.runtime, batch_size=options.batch_size,
                    workers=options.workers, options=RuntimeOptions(devices=options.devices), log=log)
    return engine, to_probabilities


def write_predictions(report: PredictReport, out: Path | None, fmt: str) -> str | None:
    """CSV (path,label,probability,top_k) or JSON; to ``out`` or returned as text."""
    import csv
    import io
    import json

    if fmt == "json":
        text = json.dumps(report.predictions, indent=2) + "\n"
    elif fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "probability", "top_k"])
        for row in report.predictions:
            top = ";".join(f"{t['label']}:{t['probability']:.6f}" for t in row["top_k"])
            writer.writerow([row["path"], row["label"], f"{row['probability']:.6f}", top])
        text = buffer.getvalue()
    else:
        raise UsageError(f"--format must be csv or json, got {fmt!r}")
    if out is None:
        return text
    from headstart.embedder.atomic import write_text_atomic

    write_text_atomic(out, text)
    report.out = str(out)
    return None

