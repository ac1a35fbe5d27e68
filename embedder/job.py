"""The batch job behind ``headstart embed run``: discover -> hash -> embed what's new -> cache.

The order matters for speed and safety: discovery and hashing are cheap and need no
TensorFlow, so a rerun over an unchanged folder finishes without even building the model;
every embedded batch is durable in a part file before the next one starts, so a killed
job loses at most the batch in flight.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import unicodedata
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .backbones import BackboneConfig, ResolvedBackbone, backbone_network, build_backbone, resolve
from .cache import STORAGE_DTYPES, CacheLocation, CacheWriter, Failure, FileRecord, open_cache
from .decode import DEFAULT_PIXEL_LIMIT, only_pixels_differ, recipe_for
from .defaults import CACHE_DIR, RUNTIME, STORAGE_DTYPE
from .discovery import UNLABELED, Listing, discover
from .engine import CHANGED, DEFAULT_BATCH_SIZE, Engine, Source
from .errors import EXIT_ATTENTION, EXIT_OK, CacheError, UsageError
from .fingerprint import describe, fingerprint_id
from .hashing import ListingKeys, listing_keys
from .progress import progress_bar
from .runtimes import RuntimeOptions
from .sanity import check_features
from .storage import location

DEFAULT_CACHE_DIR = Path(CACHE_DIR)
FLATTEN_WARN_DIM = 8192
MAX_VIEWS = 64


@dataclass
class EmbedOptions:
    """How to run the job (everything that does not change the numbers)."""

    cache: Path | None = None  # explicit cache file; default: derived under cache_dir
    cache_dir: Path = DEFAULT_CACHE_DIR
    dtype: str = STORAGE_DTYPE
    batch_size: int | None = DEFAULT_BATCH_SIZE  # per device; None: 'auto' (probed on a GPU)
    manifest: Path | None = None
    parallelism: int | None = None  # decode threads (--workers); default: the core count
    runtime: str = RUNTIME  # 'auto' or a name in embedder.runtimes.RUNTIMES
    pixel_limit: int = DEFAULT_PIXEL_LIMIT  # larger images are recorded failures ("too large")
    shard: tuple[int, int] | None = None  # (index, count): embed only this shard's files (by path)
    jit: bool | None = None  # XLA; None: on with a GPU, off without
    devices: str | list[int] | None = None  # None: one device; 'all' or indices: MirroredStrategy
    views: int | None = None  # augmented views per image; None: as many as the cache holds (0 if new)
    views_seed: int | None = None  # None: the cache's own seed, else 0
    rehash: bool = False  # read every file, even those whose stat record says unchanged
    progress: bool = True


@dataclass
class EmbedReport:
    cache_path: str
    fingerprint: dict
    images_root: str
    layout: str
    files: int = 0  # image files listed and usable
    rows: int = 0  # distinct contents in the cache
    embedded: int = 0  # rows computed by this run
    reused: int = 0  # files whose bytes were already embedded (or failed) before
    hashed: int = 0  # files read and hashed to find their keys
    hashed_bytes: int = 0
    unchanged: int = 0  # files not read: their stat record says they are as the last run saw them
    racy: int = 0  # files read again because they changed too shortly before their last run
    resumed_parts: int = 0  # part files an interrupted run had left
    duplicates: int = 0  # files whose bytes another file of this run also has
    skipped: list[dict] = field(default_factory=list)  # {path, reason}
    ignored_files: int = 0  # non-image files passed over
    label_conflicts: list[dict] = field(default_factory=list)  # {key, paths, labels}
    warnings: list[str] = field(default_factory=list)
    runtime: str = ""  # what ran the backbone this time ('' when nothing was embedded)
    runtime_device: str = ""  # the backend and device it ran on, where the runtime says (jax, torch)
    devices: int = 0  # how many devices ran it (MirroredStrategy when > 1)
    jit: bool = False
    rewritten: bool = False
    cache_write: str = ""  # 'unchanged' | 'appended' | 'tables' | 'rewritten' (embedder.cache.writer.FinishResult)
    cache_written_bytes: int = 0  # what this run's consolidation wrote
    cache_bytes: int = 0  # the cache file and the segment files it maps
    elapsed_s: float = 0.0
    setup_s: float = 0.0  # importing TensorFlow and building the backbone
    embed_s: float = 0.0  # the embedding loop itself
    rate: float = 0.0  # images/s of the embedding loop
    steady_rate: float = 0.0  # images/s after the first batch (which pays one-off kernel set-up)
    batch_size: int = 0  # per device, as used (after --batch-size auto)
    workers: int = 0  # decoding threads
    pixels: str = ""  # the pixel rule (embedder.decode): 'current' or 'legacy'
    batch_probe: dict = field(default_factory=dict)  # --batch-size auto on a GPU: batch -> images/s
    views: int = 0  # augmented views per image the cache holds
    views_seed: int | None = None
    views_embedded: int = 0  # views computed by this run
    views_s: float = 0.0
    views_rate: float = 0.0  # views/s
    views_missing: int = 0  # rows whose files are gone, so some of their views could not be made

    @property
    def exit_code(self) -> int:
        return EXIT_ATTENTION if self.skipped else EXIT_OK

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(Counter(s["reason"] for s in self.skipped).most_common())

    def to_dict(self) -> dict:
        data = asdict(self)
        data["skipped_by_reason"] = self.skipped_by_reason()
        data["exit_code"] = self.exit_code
        return data


def default_cache_path(listing_root: Path, resolved: ResolvedBackbone, dtype: str, cache_dir: Path,
                       shard: tuple[int, int] | None = None) -> Path:
    """``cache/<folder>-<root hash>-<backbone>-<fingerprint id>[-shardIofN].h5``: one file per
    image set and configuration (and shard), so a second backbone never clashes with the first."""
    root_id = hashlib.sha256(str(listing_root).encode()).hexdigest()[:6]
    storage = "" if dtype == "float16" else "-f32"
    part = f"-shard{shard[0]}of{shard[1]}" if shard else ""
    name = (f"{listing_root.name or 'images'}-{root_id}-{resolved.short_name}-"
            f"{fingerprint_id(resolved.fingerprint)}{storage}{part}.h5")
    return cache_dir / name


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (0-based: 0/3, 1/3, 2/3), as SLURM array and Kubernetes indexed jobs number."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    return check_shard((index, count))


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    index, count = shard
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {index}/{count}: the index counts from 0 and must be below the count")
    return None if count == 1 else (index, count)


SHARD_BY = "path"  # recorded on shard caches: how files were assigned (before: "key")


def path_shard(path: str, count: int) -> int:
    """Which of ``count`` shards a file belongs to, from its path relative to the images root
    (NFC-normalised, so two filesystems spelling an accent differently agree).

    Cheap on purpose: a worker picks its files before reading any, so N workers read the
    images once between them, not N times (a content key needs every file read first).
    Disjoint and complete whatever order each machine lists the files in. The same bytes
    under two paths may land in two shards: each embeds them, ``embed merge`` keeps one row.
    """
    name = unicodedata.normalize("NFC", str(path))
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:16], 16) % count


def in_shard(path: str, shard: tuple[int, int] | None) -> bool:
    return shard is None or path_shard(path, shard[1]) == shard[0]


def shard_listing(listing: Listing, shard: tuple[int, int] | None) -> Listing:
    """The part of ``listing`` (its files and its missing manifest rows) that ``shard`` owns;
    the classes stay whole, so every shard's cache names the same classes."""
    if shard is None:
        return listing
    from dataclasses import replace

    return replace(listing, files=[f for f in listing.files if in_shard(f.path, shard)],
                   missing=[(p, why) for p, why in listing.missing if in_shard(p, shard)])


def run_embedding(
    images: str | Path,
    config: BackboneConfig,
    options: EmbedOptions | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> EmbedReport:
    """Embed every image under ``images`` that the cache does not hold yet."""
    options = options or EmbedOptions()
    if options.dtype not in STORAGE_DTYPES:
        raise UsageError(f"--dtype must be float16 or float32, got {options.dtype!r}")
    if options.batch_size is not None and options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.parallelism is not None and options.parallelism < 1:
        raise UsageError(f"--workers must be at least 1 (decoding threads), got {options.parallelism}")
    if options.views is not None and not 0 <= options.views <= MAX_VIEWS:
        raise UsageError(f"--views must be between 0 and {MAX_VIEWS}, got {options.views}")
    if options.views_seed is not None and options.views_seed < 0:
        raise UsageError(f"--views-seed must be a non-negative integer, got {options.views_seed}")
    started = time.perf_counter()
    named = CacheLocation.of(options.cache) if options.cache else None
    resolved = _resolve_for_cache(config, named, log)
    shard = check_shard(options.shard)
    listing = shard_listing(discover(images, options.manifest), shard)
    target = named or CacheLocation.of(default_cache_path(
        listing.root, resolved, options.dtype, location(options.cache_dir), shard))
    report = EmbedReport(str(target), resolved.fingerprint, str(listing.root), listing.layout,
                         ignored_files=listing.ignored_count, pixels=recipe_for(resolved.fingerprint).name,
                         warnings=list(listing.warnings))  # symlink loops, split-named classes: printed at the end
    extra_attrs = {"backbone_source": _source(config.backbone), "weights_source": _source(config.weights),
                   "layout": listing.layout, "shard": f"{shard[0]}/{shard[1]}" if shard else None,
                   "shard_by": SHARD_BY if shard else None}

    # A cache at a URL is written in a local staging folder and uploaded once finished.
    with target.staged(log) as local_cache, \
            _open_writer(local_cache, resolved, options, extra_attrs, not target.is_url) as writer:
        report.resumed_parts = writer.resumed_parts
        hashed = _hash_listing(listing, options.progress, None if options.rehash else writer.stat_record())
        report.hashed, report.hashed_bytes = hashed.hashed, hashed.hashed_bytes
        report.unchanged, report.racy = hashed.unchanged, hashed.racy
        stats = hashed.stats.tolist()
        failures: list[Failure] = [Failure(path, reason) for path, reason in listing.missing]
        records: list[FileRecord] = []
        label_index = listing.label_index()
        todo: dict[str, str] = {}  # key -> a path to decode it from
        for image, key, stat in zip(listing.files, hashed.keys, stats):
            if isinstance(key, OSError):
                failures.append(Failure(image.path, f"unreadable: {key.strerror or key}"))
                continue
            known = key in writer.known_keys or key in writer.known_failures
            if known:
                report.reused += 1
            elif key not in todo:
                todo[key] = image.path
            label = label_index[image.label] if image.label is not None else UNLABELED
            records.append(FileRecord(image.path, key, label, image.split, stat))

        if todo:  # a rerun after kill -9 need not read these files again
            _keep_stat_checkpoint(writer, listing, hashed)
        engine = _JobEngine(resolved, options, report, log)
        transient: dict[str, str] = {}  # key -> why its file could not be used this time (not kept as known)
        if todo:
            report.embedded = _embed_new(writer, engine, listing.root, todo, transient)
            report.rate = report.embedded / report.embed_s if report.embed_s > 0 else 0.0

        failed_keys = writer.known_failures
        kept: list[FileRecord] = []
        for record in records:
            if record.key in failed_keys:
                failures.append(Failure(record.path, failed_keys[record.key], record.key, record.stat))
            elif record.key in transient and record.key not in writer.known_keys:
                failures.append(Failure(record.path, transient[record.key]))  # no key: the next run tries again
            else:
                kept.append(record)
        _embed_views(writer, engine, listing.root, kept)
        report.label_conflicts = _label_conflicts(kept, listing.classes)
        report.duplicates = len(kept) - len({r.key for r in kept})  # as `embed info` counts them
        for name, value in (("runtime", report.runtime), ("jit", report.jit if report.runtime else None),
                            ("devices", report.devices or None), ("runtime_device", report.runtime_device or None)):
            # how the rows were computed; kept from the last run that embedded any
            writer.extra_attrs[name] = value if report.runtime else writer.existing_attrs.get(name)
        result = writer.finish(kept, listing.classes, failures, listing.root)

    report.files = len(kept)
    report.rows = result.num_rows
    if report.views:
        report.views_missing = result.views_missing
    report.rewritten = result.rewritten
    report.cache_write, report.cache_written_bytes = result.mode, result.written_bytes
    report.cache_bytes = result.size_bytes
    report.skipped = [{"path": f.path, "reason": f.reason} for f in failures]
    report.elapsed_s = time.perf_counter() - started
    return report


def _resolve_for_cache(config: BackboneConfig, target: CacheLocation | None,
                       log: Callable[[str], None]) -> ResolvedBackbone:
    """The config's fingerprint; continuing an existing cache (``--cache``) made with an older
    pixel rule uses that cache's rule, and says so, rather than refusing or mixing rows."""
    resolved = resolve(config)
    if config.pixels != "auto" or target is None:
        return resolved
    try:
        if not target.where.is_file():
            return resolved
        existing = open_cache(target).fingerprint
    except (CacheError, OSError):
        return resolved  # the writer reports what is wrong with it
    if only_pixels_differ(existing, resolved.fingerprint):
        recipe = recipe_for(existing)
        log(f"continuing {target} with the pixel rule it was made with ({recipe.name}); "
            f"embed into a new --cache to use the current one")
        from dataclasses import replace

        return resolve(replace(config, pixels=recipe.name))
    return resolved


@contextlib.contextmanager
def _open_writer(path, resolved: ResolvedBackbone, options: EmbedOptions, extra_attrs: dict, segments: bool):
    """The cache writer; a fingerprint mismatch caused by an unknown ``--layer`` names the layer.
    ``segments``: a big cache may gain rows as segment files (not one uploaded to a URL as one file)."""
    try:
        writer = CacheWriter(path, resolved.fingerprint, options.dtype, extra_attrs, segments=segments).__enter__()
    except CacheError as exc:
        if resolved.config.layer and "layer:" in str(exc):
            build_backbone(resolved)  # raises "--layer X is not a layer of the backbone (close: ...)"
        raise
    try:
        yield writer
    finally:
        writer.__exit__(None, None, None)


def _source(value: str) -> str:
    """A backbone/weights argument as later stages can reopen it: files become absolute."""
    path = Path(value).expanduser()
    return str(path.resolve()) if path.is_file() else value


def _hash_listing(listing: Listing, progress: bool, record=None) -> ListingKeys:
    """Every listed file's key: read and hashed, unless ``record`` (the cache's stat record)
    shows the file unchanged since the run that recorded it (:mod:`embedder.filestat`)."""
    relative = [f.path for f in listing.files]
    with progress_bar(len(relative), "hashing", progress and len(relative) >= 2000, unit="file") as bar:
        return listing_keys(listing.root, relative, record, on_done=bar.update)


def _keep_stat_checkpoint(writer: CacheWriter, listing: Listing, hashed: ListingKeys) -> None:
    read = np.flatnonzero(hashed.read) if hashed.read is not None else []
    writer.keep_stat_checkpoint([listing.files[i].path for i in read], [hashed.keys[i] for i in read],
                                hashed.stats[read])


class _JobEngine:
    """The engine for this job's backbone, started on first use and shared by the clean and
    the views passes (a rerun with nothing new to embed builds nothing)."""

    def __init__(self, resolved: ResolvedBackbone, options: EmbedOptions, report: EmbedReport,
                 log: Callable[[str], None]):
        self.resolved, self.options, self.report, self.log = resolved, options, report, log
        self._engine: Engine | None = None

    def get(self) -> Engine:
        if self._engine is None:
            options = self.options
            engine = Engine(backbone_network(self.resolved, self.log), recipe_for(self.resolved.fingerprint),
                            runtime=options.runtime, batch_size=options.batch_size, workers=options.parallelism,
                            pixel_limit=options.pixel_limit,
                            options=RuntimeOptions(jit=options.jit, devices=options.devices), log=self.log)
            engine.start()
            info, report = engine.info, self.report
            report.runtime, report.devices, report.jit = info.runtime, info.replicas, info.jit
            report.runtime_device = info.device
            report.batch_size, report.batch_probe, report.workers = info.batch_size, info.batch_probe, info.workers
            report.setup_s = info.setup_s
            self._engine = engine
        return self._engine


TRANSIENT_PREFIXES = (CHANGED, "file vanished", "unreadable")


def _refuse_mostly_non_finite(batch, what: str) -> None:
    """One image with NaN features is that image's failure; most of the first batch is a
    broken backbone, refused before anything is written (as the first-batch checks do)."""
    from .engine import NON_FINITE
    from .errors import BackboneError

    bad = sum(1 for _, reason in batch.failed if reason == NON_FINITE)
    if bad and bad * 2 > bad + len(batch.indices):
        raise BackboneError(f"{what} produced NaN/inf features for {bad} of the first batch's "
                            f"{bad + len(batch.indices)} images; the backbone is broken")


def _embed_new(writer: CacheWriter, job: _JobEngine, root: Path, todo: dict[str, str],
               transient: dict[str, str]) -> int:
    """Run the backbone over ``todo`` (key -> path), one durable part file per batch.

    Failures that say something about the bytes (undecodable, too large) are kept under the
    key, so later runs do not try again; failures of the moment (the file changed or vanished
    since it was hashed) go to ``transient``: reported now, retried next time.
    """

    engine = job.get()
    resolved, options, report, log = job.resolved, job.options, job.report, job.log
    keys = list(todo)
    sources = [Source(str(root / todo[k]), key=k) for k in keys]
    embedded = 0
    checked = False
    first_done = first_count = 0
    loop_started = time.perf_counter()
    resumed = writer.in_parts[0]
    with progress_bar(resumed + len(keys), "embedding", options.progress, unit="img", initial=resumed,
                      mininterval=0.5) as bar:
        for batch in engine.embed(sources, group_first_batch=True):
            if not checked:
                _refuse_mostly_non_finite(batch, describe(resolved.fingerprint))
            if not checked and len(batch.indices):
                check_features(batch.features, options.dtype, describe(resolved.fingerprint), batch.pixel_groups)
                _warn_if_flatten_is_big(resolved, batch.features.shape[1], len(writer.known_keys) + len(todo),
                                        options.dtype, report, log)
                checked = True
                first_done, first_count = time.perf_counter(), len(batch.indices)
            failed = {}
            for i, reason in batch.failed:
                if reason.startswith(TRANSIENT_PREFIXES):
                    transient[keys[i]] = reason
                else:
                    failed[keys[i]] = reason
            writer.add_part(batch.keys, batch.features, failed)
            embedded += len(batch.keys)
            bar.update(len(batch.keys) + len(batch.failed))
    loop_done = time.perf_counter()
    report.embed_s = loop_done - loop_started
    if checked and embedded > first_count and loop_done > first_done:
        report.steady_rate = (embedded - first_count) / (loop_done - first_done)
    return embedded


def _embed_views(writer: CacheWriter, job: _JobEngine, root: Path, kept: list[FileRecord]) -> None:
    """Embed the augmented views the cache lacks for this listing's images.

    Views are sticky: once a cache holds K views, later runs make them for new images too
    (with the cache's own seed), so every row that still has a file ends up with all K.
    """
    from .augment import DEFAULT_AUGMENTATION, view_seeds

    options, report, log = job.options, job.report, job.log
    existing = writer.existing_views
    if not options.views and not existing:
        return
    seed = options.views_seed if options.views_seed is not None else (existing or {}).get("seed", 0)
    wanted = options.views if options.views is not None else existing["count"]
    record = writer.set_views(wanted, seed, DEFAULT_AUGMENTATION.record())
    if existing and options.views is not None and options.views < existing["count"]:
        log(f"the cache already holds {existing['count']} views per image; keeping them")
    report.views, report.views_seed = record["count"], record["seed"]
    path_of: dict[str, str] = {}
    for file in kept:
        path_of.setdefault(file.key, file.path)
    todo = [(key, view) for key in path_of for view in range(record["count"]) if not writer.has_view(key, view)]
    if not todo:
        return
    engine = job.get()
    sources = [Source(str(root / path_of[key]), key=key) for key, _ in todo]
    seeds = view_seeds([k for k, _ in todo], [v for _, v in todo], record["seed"])
    started = time.perf_counter()
    resumed = writer.in_parts[1]
    with progress_bar(resumed + len(todo), "views", options.progress, unit="view", initial=resumed,
                      mininterval=0.5) as bar:
        for batch in engine.embed(sources, seeds=seeds):
            chosen = [todo[i] for i in batch.indices]
            writer.add_view_part([k for k, _ in chosen], [v for _, v in chosen], batch.features)
            report.views_embedded += len(chosen)
            for i, reason in batch.failed:  # the file changed or vanished since it was hashed
                log(f"warning: view {todo[i][1]} of {sources[i].path} could not be made: {reason}")
            bar.update(len(chosen) + len(batch.failed))
    report.views_s = time.perf_counter() - started
    report.views_rate = report.views_embedded / report.views_s if report.views_s > 0 else 0.0


def _warn_if_flatten_is_big(resolved: ResolvedBackbone, dim: int, images: int, dtype: str,
                            report: EmbedReport, log: Callable[[str], None]) -> None:
    if resolved.config.pooling == "flatten" and dim > FLATTEN_WARN_DIM:
        size_mb = dim * images * np.dtype(dtype).itemsize / 1e6
        warning = (f"pooling 'flatten' keeps {dim:,} values per image: about {size_mb:,.0f} MB of cache for "
                   f"{images:,} images ({dtype}); 'avg' keeps only the channel count")
        report.warnings.append(warning)
        log(f"warning: {warning}")


def _label_conflicts(records: list[FileRecord], classes: list[str]) -> list[dict]:
    """Same bytes under two different classes: worth a user's look."""
    by_key: dict[str, list[FileRecord]] = defaultdict(list)
    for record in records:
        if record.label != UNLABELED:
            by_key[record.key].append(record)
    conflicts = []
    for key, group in by_key.items():
        labels = sorted({classes[r.label] for r in group})
        if len(labels) > 1:
            conflicts.append({"key": key, "paths": [r.path for r in group], "labels": labels})
    return conflicts
