"""`headstart predict`: class probabilities for image files, from a head or fine-tuned run.

Same input pipeline, progress bar and bad-file handling as the embedding job. Fast path for
head runs: images whose bytes are already in a cache of the run's fingerprint are not
pushed through the backbone again; their cached features go straight to the head.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from headstart.embedder.cache import open_cache
from headstart.embedder.discovery import discover
from headstart.embedder.errors import EXIT_ATTENTION, EXIT_OK, CacheError, UsageError
from headstart.embedder.fingerprint import same
from headstart.embedder.hashing import hash_files
from headstart.embedder.storage import location

from .full_model import is_finetuned, load_full_model, resolve_backbone


@dataclass
class PredictOptions:
    top_k: int = 3
    batch_size: int = 32
    caches: Sequence[Path] = ()  # extra caches to look features up in
    cache_dir: Path = Path("cache")
    use_cache: bool = True
    runtime: str = "auto"  # 'auto' | 'tf' | 'litert'
    devices: str | list[int] | None = None  # several devices: MirroredStrategy (batch_size is per device)
    progress: bool = True


@dataclass
class PredictReport:
    run: str
    predictions: list[dict] = field(default_factory=list)  # path, label, probability, top_k
    skipped: list[dict] = field(default_factory=list)
    from_cache: int = 0
    through_backbone: int = 0
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


def list_inputs(inputs: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """(name to report, file) for every image among ``inputs`` (files and folders)."""
    found: list[tuple[str, Path]] = []
    for item in inputs:
        path = location(item).expanduser()
        if path.is_dir():
            listing = discover(path)
            found.extend((str(location(item) / f.path), listing.root / f.path) for f in listing.files)
        elif path.is_file():
            found.append((str(item), path))
        else:
            raise UsageError(f"no such file or folder: {item}")
    if not found:
        raise UsageError("no images to predict")
    return found


def _cached_features(keys: list[str], fingerprint: dict, candidates: list[Path]) -> dict[str, np.ndarray]:
    """Features for as many ``keys`` as caches of the same fingerprint hold."""
    wanted = set(keys)
    found: dict[str, np.ndarray] = {}
    for path in candidates:
        if not wanted - set(found):
            break
        try:
            cache = open_cache(path)
        except CacheError:
            continue
        if not same(cache.fingerprint, fingerprint):
            continue
        row_of = {str(k): i for i, k in enumerate(cache.keys)}
        hits = [k for k in wanted - set(found) if k in row_of]
        if not hits:
            continue
        rows = np.asarray([row_of[k] for k in hits])
        block = cache.read_rows(rows)
        found.update(zip(hits, block))
    return found


def _candidate_caches(meta: dict, options: PredictOptions) -> list[Path]:
    paths = [location(p) for p in options.caches]
    recorded = (meta.get("cache") or {}).get("path")
    if recorded:
        paths.append(location(recorded))
    if Path(options.cache_dir).is_dir():
        paths.extend(sorted(Path(options.cache_dir).glob("*.h5")))
    unique: list[Path] = []
    for p in paths:
        if p.is_file() and p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
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
    from tqdm import tqdm

    options = options or PredictOptions()
    if options.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {options.top_k}")
    started = time.perf_counter()
    report = PredictReport(run=str(run.path))
    files = list_inputs(inputs)
    keys = hash_files([p for _, p in files])
    classes = list(run.classes)

    usable: list[int] = []
    for i, key in enumerate(keys):
        if isinstance(key, OSError):
            report.skipped.append({"path": files[i][0], "reason": f"unreadable: {key.strerror or key}"})
        else:
            usable.append(i)

    finetuned = is_finetuned(run.meta)
    cached: dict[str, np.ndarray] = {}
    if options.use_cache and not finetuned:
        cached = _cached_features([keys[i] for i in usable], run.fingerprint, _candidate_caches(run.meta, options))
    probabilities: dict[int, np.ndarray] = {}
    from_cache = [i for i in usable if keys[i] in cached]
    if from_cache:
        feats = np.stack([cached[keys[i]] for i in from_cache]).astype(np.float32)
        for i, p in zip(from_cache, run.predict_proba(feats)):
            probabilities[i] = p
    report.from_cache = len(from_cache)

    todo = [i for i in usable if i not in probabilities]
    if todo:
        from headstart.embedder.pipeline import embed_batches

        backbone_started = time.perf_counter()
        forward, to_probabilities = _forward_for(run, finetuned, options, log)
        report.runtime = forward.runtime
        paths = [str(files[i][1]) for i in todo]
        with tqdm(total=len(todo), desc="predicting", unit="img", disable=not options.progress,
                  dynamic_ncols=True, mininterval=0.5) as bar:
            for batch in embed_batches(forward, paths, forward.image_size, options.batch_size * forward.replicas):
                out = batch.features if to_probabilities is None else to_probabilities(batch.features)
                for j, p in zip(batch.indices, out):
                    probabilities[todo[j]] = p
                for j, reason in batch.failed:
                    report.skipped.append({"path": files[todo[j]][0], "reason": reason})
                bar.update(len(batch.indices) + len(batch.failed))
        report.through_backbone = sum(1 for i in todo if i in probabilities)
        report.backbone_s = time.perf_counter() - backbone_started

    done = [i for i in range(len(files)) if i in probabilities]
    if done:
        matrix = np.stack([probabilities[i] for i in done])
        report.predictions = top_k_rows([files[i][0] for i in done], matrix, classes, options.top_k)
    report.elapsed_s = time.perf_counter() - started
    return report


def _forward_for(run, finetuned: bool, options: PredictOptions, log):
    """Fine-tuned runs: the whole network on pixels gives probabilities. Head runs: the
    backbone gives features, then the head (Keras or numpy) gives probabilities."""
    from headstart.embedder.backbones import build_backbone
    from headstart.embedder.hashing import content_key
    from headstart.embedder.litert import fingerprint_key
    from headstart.embedder.runtime import make_forward

    if finetuned:
        model_file = Path(run.path) / run.meta.get("model_file", "model.keras")
        key = f"model-{content_key(model_file)[:16]}"
        forward = make_forward(options.runtime, key, lambda: load_full_model(run)[0], Path(options.cache_dir),
                               describe={"run": str(run.path)}, log=log, devices=options.devices,
                               mixed_precision=run.fingerprint.get("compute_dtype") == "mixed_float16")
        return forward, None
    resolved = resolve_backbone(run.meta)
    forward = make_forward(options.runtime, fingerprint_key(run.fingerprint), lambda: build_backbone(resolved),
                           Path(options.cache_dir), describe=run.fingerprint, log=log, devices=options.devices,
                           mixed_precision=run.fingerprint.get("compute_dtype") == "mixed_float16")
    return forward, run.predict_proba


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
    return None

