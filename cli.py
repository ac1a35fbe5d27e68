"""headstart's command line: a thin Typer layer. It parses, calls one function, formats.

Nothing here imports TensorFlow at module level, so ``--help`` and usage errors answer
instantly. Errors a user can act on (:class:`embedder.errors.HeadstartError`) print one
line and exit with their code (2 bad usage/input, 1 needs attention); anything else is a
bug, printed as one line too unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer

from headstart import __version__
from headstart.embedder.errors import EXIT_OK, EXIT_USAGE, HeadstartError

# The root listing, in the order of the workflow, each command in one line that fits 80 columns.
WORKFLOW = {
    "embed": "Run a frozen backbone over images once, into an HDF5 cache.",
    "head": "Train, compare and re-evaluate small heads on a cache.",
    "finetune": "Fine-tune backbone and dense head end to end on the images.",
    "predict": "Class probabilities for new images, from any run.",
    "export": "One self-contained model (Keras, SavedModel, TFLite).",
    "eval": "Evaluate a run on labelled images.",
    "inspect": "Data quality: duplicates, leakage, label errors, outliers.",
    "report": "A run's report.html: metrics, plots, mistakes as pictures.",
}
_SETTINGS = {"help_option_names": ["-h", "--help"]}  # inherited by every sub-command


class _Group(typer.core.TyperGroup):
    """Lists sub-commands in full (click cuts them at ~45 characters with '...')."""

    summaries: dict = {}

    def format_commands(self, ctx, formatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, self.summaries.get(name) or command.get_short_help_str(limit=1000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class _RootGroup(_Group):
    """The root: commands in workflow order, and its --version option shared by every command."""

    summaries = WORKFLOW

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        version = next((p for p in self.params if p.name == "version"), None)
        if version is not None:
            _share_option(self, version)

    def list_commands(self, ctx) -> list:
        rank = {name: k for k, name in enumerate(WORKFLOW)}
        return sorted(self.commands, key=lambda name: (rank.get(name, len(rank)), name))


def _share_option(group, option) -> None:
    """Give ``option`` to every command under ``group`` (so `headstart head train --version` works)."""
    for command in group.commands.values():
        if all(p.name != option.name for p in command.params):
            command.params.append(option)
        if hasattr(command, "commands"):
            _share_option(command, option)


def _typer(help: str, **kwargs) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True, cls=_Group, context_settings=_SETTINGS, **kwargs)


app = typer.Typer(
    name="headstart",
    help="Transfer learning on images: embed once with a frozen backbone, then train heads in seconds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    cls=_RootGroup,
    context_settings=_SETTINGS,
)
embed_app = _typer("Run a frozen backbone over images into an HDF5 cache.")
head_app = _typer("Train and compare heads on a cache.")
app.add_typer(embed_app, name="embed")
app.add_typer(head_app, name="head")
inspect_app = _typer("Data quality from a cache: duplicates and split leakage, label errors, outliers, a 2-D map, "
                     "class samples.")
app.add_typer(inspect_app, name="inspect")

EXIT_INTERNAL = 3
_state = {"debug": False}


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _emit_json(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"headstart {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for unexpected errors."),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, expose_value=False,
                                 help="Print headstart's version and exit."),
) -> None:
    _state["debug"] = debug


# ---------------------------------------------------------------------------- embed


@embed_app.command("run")
def embed_run(
    images: str = typer.Argument(..., help="Folder of images: class folders, train/val/test folders, or loose files; "
                                           "a URL (gs://...) is read with tf.io.gfile."),
    backbone: str = typer.Option("MobileNetV2", "--backbone", "-b",
                                 help="A registered name (see `embed backbones`) or a .keras model file."),
    weights: str = typer.Option("imagenet", help="imagenet (downloads once), none (random, from --seed), or a weights file."),
    alpha: Optional[float] = typer.Option(None, help="Width multiplier for MobileNet families (e.g. 0.35)."),
    layer: Optional[str] = typer.Option(None, help="Take features from this layer instead of the backbone's output."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Square input size; default: the backbone's native size."),
    pooling: str = typer.Option("avg", help="avg, max, or flatten (flatten keeps the whole last feature map: big)."),
    batch_size: str = typer.Option("32", "--batch-size", help="Images per batch (also the most a crash can "
                                                              "lose), or auto: probed on a GPU, 32 on CPUs."),
    cache: Optional[str] = typer.Option(None, help="Cache file (or URL); default: cache/<folder>-<backbone>-<id>.h5."),
    cache_dir: str = typer.Option("cache", "--cache-dir", help="Where default cache files go (a folder or URL)."),
    dtype: str = typer.Option("float16", help="Storage dtype of the features: float16 or float32."),
    manifest: Optional[str] = typer.Option(None, help="CSV of path,label[,split] (paths relative to IMAGES)."),
    seed: int = typer.Option(0, help="Seed for --weights none."),
    workers: Optional[int] = typer.Option(None, help="Decoding threads; default: the number of cores."),
    max_pixels: int = typer.Option(89_478_485, "--max-pixels", help="Images with more pixels (read from the "
                                                                   "header) are skipped as too large, not decoded."),
    runtime: str = typer.Option("auto", help="auto (OpenVINO for --precision bf16; else LiteRT when no GPU is "
                                             "visible and the backbone converts, then OpenVINO, then TensorFlow), "
                                             "tf, litert, or openvino (pip install 'headstart[openvino]'). "
                                             "Same numbers within 1e-4 in float32; says which ran and why."),
    shard: Optional[str] = typer.Option(None, help="I/N: embed only shard I (0-based) of N, a partition by content "
                                                   "key; one cache per shard, then `embed merge`."),
    precision: str = typer.Option("auto", help="float32; mixed (Keras mixed_float16, GPUs); or bf16 (bfloat16 on "
                                               "OpenVINO: ~2x float32's rate on CPUs with AVX512_BF16 or AMX, an "
                                               "error on others). auto: mixed on a GPU, float32 on a CPU. Part of "
                                               "the fingerprint: bf16 and float32 rows never mix."),
    jit: Optional[bool] = typer.Option(None, "--jit/--no-jit", help="XLA compilation; default: on with a GPU, off on "
                                                                     "CPUs (measured slower there)."),
    devices: Optional[str] = typer.Option(None, help="all, or indices like 0,1: run on several GPUs (logical CPUs "
                                                     "without one) with MirroredStrategy; --batch-size is per device."),
    views: Optional[int] = typer.Option(None, "--views", help="Also cache K augmented views per image (flip, crop/zoom, "
                                                              "rotation, brightness/contrast) for `head train --views`; "
                                                              "default: as many as the cache holds."),
    views_seed: Optional[int] = typer.Option(None, "--views-seed", help="Seed of the views; default: the cache's own, "
                                                                        "or 0."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; print only problems."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Embed every image once; reruns embed only what is new, and resume after a crash."""
    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.job import EmbedOptions, parse_shard, run_embedding

    from headstart.embedder.devices import parse_devices

    config = BackboneConfig(backbone=backbone, weights=weights, image_size=image_size, pooling=pooling,
                            layer=layer, alpha=alpha, seed=seed, precision=precision)
    from headstart.embedder.batch_size import parse_batch_size

    options = EmbedOptions(cache=cache, cache_dir=cache_dir, dtype=dtype, batch_size=parse_batch_size(batch_size, 32),
                           manifest=manifest, parallelism=workers, runtime=runtime, pixel_limit=max_pixels,
                           shard=parse_shard(shard) if shard else None, jit=jit, devices=parse_devices(devices),
                           views=views, views_seed=views_seed, progress=not quiet and not as_json)
    log = (lambda m: None) if (quiet or as_json) else _err
    report = run_embedding(images, config, options, log=log)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _print_embed_report(report, quiet)
    raise typer.Exit(report.exit_code)


def _print_embed_report(report, quiet: bool) -> None:
    from headstart.embedder.fingerprint import describe

    out = _err if quiet else typer.echo
    if not quiet:
        if report.embedded:
            steady = f"; {report.steady_rate:.1f} after the first batch" if report.steady_rate else ""
            typer.echo(f"embedded {report.embedded:,} new images in {report.embed_s:.1f} s ({report.rate:.1f} img/s"
                       f"{steady}) plus {report.setup_s:.1f} s of model set-up")
        else:
            typer.echo("nothing new to embed: the cache already holds every image's bytes")
        if report.views_embedded:
            typer.echo(f"embedded {report.views_embedded:,} augmented views in {report.views_s:.1f} s "
                       f"({report.views_rate:.1f} views/s)")
        if report.views:
            missing = (f"; {report.views_missing:,} rows whose files are gone lack some"
                       if report.views_missing else "")
            typer.echo(f"views: {report.views} per image (seed {report.views_seed}){missing}")
        typer.echo(f"reused {report.reused:,}; skipped {len(report.skipped):,}; total {report.elapsed_s:.1f} s")
        extra = f", {report.duplicates:,} duplicate files" if report.duplicates else ""
        typer.echo(f"cache: {report.cache_path} ({report.rows:,} rows for {report.files:,} files{extra}, "
                   f"{report.cache_bytes / 1e6:.1f} MB)")
        runtime = f" (runtime: {report.runtime})" if report.runtime else ""
        typer.echo(f"backbone: {describe(report.fingerprint)}{runtime}")
        if report.resumed_parts:
            typer.echo(f"resumed: {report.resumed_parts} batches from an interrupted run were kept")
        if report.ignored_files:
            typer.echo(f"ignored {report.ignored_files:,} non-image files")
    for warning in report.warnings:
        out(f"warning: {warning}")
    if report.skipped:
        out(f"skipped {len(report.skipped):,} files (listed in the cache's /failures):")
        for reason, count in report.skipped_by_reason().items():
            example = next(s["path"] for s in report.skipped if s["reason"] == reason)
            out(f"  {count:>6,}  {reason}  (e.g. {example})")
    if report.label_conflicts:
        out(f"label conflicts: {len(report.label_conflicts)} images have the same bytes under different classes:")
        for conflict in report.label_conflicts[:5]:
            out(f"  {', '.join(conflict['paths'])}  ({' vs '.join(conflict['labels'])})")


@embed_app.command("merge")
def embed_merge(
    out: str = typer.Argument(..., help="The merged cache to write (a new file)."),
    shards: List[str] = typer.Argument(..., help="Shard caches from `embed run --shard I/N`."),
    virtual: bool = typer.Option(False, "--virtual", help="Map the shards' features with an HDF5 virtual dataset "
                                                          "instead of copying them (the shards must stay put)."),
    images_root: Optional[str] = typer.Option(None, "--images-root", help="Images root to record, if the shards "
                                                                           "name different ones."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Combine shard caches into one; checks fingerprints and that no key differs between shards."""
    from dataclasses import asdict

    from headstart.embedder.merge import merge_caches

    report = merge_caches(out, shards, virtual=virtual, images_root=images_root, log=(lambda m: None) if as_json else _err)
    if as_json:
        _emit_json(asdict(report))
        return
    for warning in report.warnings:
        _err(f"warning: {warning}")
    kind = "virtual dataset over the shards" if report.virtual else "copy"
    typer.echo(f"merged {len(report.shards)} shards into {report.out} ({kind}): {report.rows:,} rows, "
               f"{report.files:,} files, {report.failures:,} failures, {report.size_bytes / 1e6:.1f} MB")


@embed_app.command("info")
def embed_info(
    cache: Optional[str] = typer.Argument(None, help="Cache file; default: the newest under ./cache/."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """What a cache holds: fingerprint, counts per class and split, failures, size."""
    from headstart.embedder.cache import latest_cache
    from headstart.embedder.info import cache_info

    path = cache or latest_cache()
    info = cache_info(path)
    if as_json:
        _emit_json(info)
        return
    typer.echo(f"cache:       {info['path']} ({info['size_bytes'] / 1e6:.1f} MB on disk, format {info['format_version']})")
    typer.echo(f"backbone:    {info['fingerprint_text']}")
    typer.echo(f"images:      {info['images_root']} ({info['layout'] or 'layout unknown'})")
    typer.echo(f"features:    {info['rows']:,} rows x {info['dim']:,} {info['storage_dtype']}")
    if info["views"]:
        typer.echo(f"views:       {info['views']['count']} augmented views per row (seed {info['views']['seed']})")
    typer.echo(f"files:       {info['files']:,} ({info['duplicate_files']:,} share bytes with another)")
    typer.echo(f"written:     created {info['created']}, updated {info['updated']}")
    splits = sorted({s for counts in info["counts"].values() for s in counts})
    width = max([len(n) for n in info["counts"]] + [5])
    typer.echo("")
    typer.echo(f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in splits) + f"  {'total':>7}")
    for name, counts in info["counts"].items():
        cells = "  ".join(f"{counts.get(s, 0):>7,}" for s in splits)
        typer.echo(f"{name:<{width}}  {cells}  {sum(counts.values()):>7,}")
    if info["failures"]:
        typer.echo(f"\nfailures: {info['failures']:,}")
        for reason, count in info["failures_by_reason"].items():
            typer.echo(f"  {count:>6,}  {reason}")
    if info["pending_parts"]:
        typer.echo(f"\nunfinished: {info['pending_parts']} part files from an interrupted run; rerun embed to finish")


@embed_app.command("backbones")
def embed_backbones(as_json: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List the registered backbones, their native input size and preprocessing."""
    from headstart.embedder.backbones import registry_table

    rows = registry_table()
    if as_json:
        _emit_json({"backbones": rows})
        return
    typer.echo(f"{'name':<20} {'size':>5} {'min':>4}  {'preprocessing':<13} alpha")
    for row in rows:
        typer.echo(f"{row['name']:<20} {row['native_size']:>5} {row['min_size']:>4}  "
                   f"{row['preprocessing']:<13} {'yes' if row['alpha'] else ''}")
    typer.echo("\nAlso: any .keras model file (--backbone PATH), fed RGB pixels in [0, 255].")


# ----------------------------------------------------------------------------- head


_HEAD_HELP = {
    "cache": "Cache file; default: the newest under ./cache/ (named on stderr).",
    "head": "dense (Keras), logreg, svm (linear, calibrated probabilities) or knn (cosine).",
    "epochs": "dense: most epochs [50]; early stopping may end sooner.",
    "batch_size": "dense: rows per step [the smallest of 32..1024 giving <= 16 steps an epoch].",
    "lr": "dense: Adam learning rate [1e-3].",
    "hidden": "dense: hidden layer widths, repeatable or 512,256 [1024]; 0 = linear.",
    "dropout": "dense: dropout after each hidden layer [0.5].",
    "l2": "dense: L2 penalty on the kernels [0].",
    "label_smoothing": "dense: label smoothing of the cross-entropy [0].",
    "patience": "dense: epochs without val-loss improvement before stopping; the best epoch's weights are kept "
                "[10]; 0 = no early stopping.",
    "class_weight": "none or balanced (weights n/(C*n_c) in the training loss) [none]; not knn.",
    "standardize": "Standardise features with training-row statistics (stored with the head) [off].",
    "C": "logreg/svm: inverse regularisation strength [logreg 1.0, svm 0.01].",
    "max_iter": "logreg/svm: solver iterations [1000].",
    "k": "knn: neighbours [min(10, training images)].",
    "val_fraction": "Share of images held out for validation when the layout gives no val split [0.2].",
    "seed": "Seed for the split, initialisation, shuffling and dropout [0].",
}


@head_app.command("train")
def head_train(
    cache: Optional[str] = typer.Option(None, help=_HEAD_HELP["cache"]),
    head: str = typer.Option("dense", "--head", help=_HEAD_HELP["head"]),
    epochs: Optional[int] = typer.Option(None, help=_HEAD_HELP["epochs"]),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help=_HEAD_HELP["batch_size"]),
    lr: Optional[float] = typer.Option(None, "--lr", help=_HEAD_HELP["lr"]),
    hidden: Optional[List[str]] = typer.Option(None, "--hidden", help=_HEAD_HELP["hidden"]),
    dropout: Optional[float] = typer.Option(None, help=_HEAD_HELP["dropout"]),
    l2: Optional[float] = typer.Option(None, "--l2", help=_HEAD_HELP["l2"]),
    label_smoothing: Optional[float] = typer.Option(None, "--label-smoothing", help=_HEAD_HELP["label_smoothing"]),
    patience: Optional[int] = typer.Option(None, help=_HEAD_HELP["patience"]),
    class_weight: Optional[str] = typer.Option(None, "--class-weight", help=_HEAD_HELP["class_weight"]),
    standardize: Optional[bool] = typer.Option(None, "--standardize/--no-standardize", help=_HEAD_HELP["standardize"]),
    c: Optional[float] = typer.Option(None, "--C", help=_HEAD_HELP["C"]),
    max_iter: Optional[int] = typer.Option(None, "--max-iter", help=_HEAD_HELP["max_iter"]),
    k: Optional[int] = typer.Option(None, "--k", help=_HEAD_HELP["k"]),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help=_HEAD_HELP["val_fraction"]),
    seed: Optional[int] = typer.Option(None, help=_HEAD_HELP["seed"]),
    views: bool = typer.Option(False, "--views", help="Also train on the cached augmented views of the training "
                                                      "images (`embed run --views K`); validation stays clean."),
    max_views: Optional[int] = typer.Option(None, "--max-views", help="With --views: use only the first N views "
                                                                      "of each image [all]."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder; default: runs/<timestamp>-<head>."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where default run folders go."),
    cache_dir: str = typer.Option("cache", "--cache-dir", help="Where to look for the newest cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress; print only problems."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Train one head on a cache; write runs/<name>/ (model, head.json, metrics, plots).

    Exit 1 when images had to be left out (same bytes under two classes).
    """
    from headstart.heads.params import make_params, views_option
    from headstart.heads.train import train_head

    params = make_params(head, epochs=epochs, batch_size=batch_size, lr=lr, hidden=hidden or None, dropout=dropout,
                         l2=l2, label_smoothing=label_smoothing, patience=patience, class_weight=class_weight,
                         standardize=standardize, C=c, max_iter=max_iter, k=k, val_fraction=val_fraction, seed=seed,
                         views=views_option(views, max_views))
    report = train_head(params, cache=cache, out=out, runs_dir=runs_dir, cache_dir=cache_dir,
                        log=(lambda m: None) if (quiet or as_json) else _err, progress=not quiet and not as_json)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _print_train_report(report, quiet)
    raise typer.Exit(report.exit_code)


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _print_train_report(report, quiet: bool) -> None:
    if not quiet:
        from headstart.heads.params import describe_params

        counts = report.split["counts"]
        m = report.metrics
        epochs = ""
        if report.best_epoch is not None:
            epochs = (f", kept epoch {report.best_epoch} of {report.epochs_run}"
                      + (" (early stop)" if report.stopped_early else ""))
        typer.echo(f"run:    {report.run}")
        typer.echo(f"head:   {report.head_type} {describe_params(report.params)}{epochs}")
        test = f" / {counts['test']:,} test" if counts.get("test") else ""
        extra = report.split.get("train_views")
        extra = f" (+{extra['examples']:,} augmented views)" if extra else ""
        typer.echo(f"data:   {counts['train']:,} train{extra} / {counts['val']:,} val{test} images, "
                   f"{len(report.classes)} classes (split: {report.split['source']}); {report.cache}")
        top = "".join(f"  top-{k} {v:.4f}" for k, v in (m.get("top_k_accuracy") or {}).items())
        typer.echo(f"val:    accuracy {_fmt(m.get('accuracy'))}  macro-F1 {_fmt(m.get('macro_f1'))}  "
                   f"log-loss {_fmt(m.get('log_loss'))}{top}")
        if report.test_metrics:
            t = report.test_metrics
            typer.echo(f"test:   accuracy {_fmt(t.get('accuracy'))}  macro-F1 {_fmt(t.get('macro_f1'))}  "
                       f"log-loss {_fmt(t.get('log_loss'))}")
        weakest = sorted(((v["recall"], name) for name, v in report.per_class.items() if v["support"]))[:3]
        if weakest and weakest[0][0] < 1.0:
            typer.echo("weakest: " + ", ".join(f"{name} (recall {r:.2f})" for r, name in weakest))
        typer.echo(f"time:   trained in {report.train_seconds:.1f} s (load {report.load_seconds:.1f} s, "
                   f"total {report.total_seconds:.1f} s)")
    for warning in report.warnings:
        _err(f"warning: {warning}")


@head_app.command("eval")
def head_eval(
    run: Path = typer.Argument(..., help="A head run folder."),
    cache: Optional[str] = typer.Option(None, help="Cache of the same backbone fingerprint; default: the run's own "
                                                    "cache, else the newest under ./cache/."),
    split: str = typer.Option("auto", help="auto (the run's val split on its own cache, every labelled image on "
                                           "another), all, train, val or test."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write metrics and plots; "
                                                          "default: RUN/evals/<timestamp>-<cache>-<split>/."),
    cache_dir: str = typer.Option("cache", "--cache-dir", help="Where to look for the newest cache."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only problems."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Re-evaluate a saved head on a cache of the same fingerprint: its own, or a new labelled set."""
    from headstart.heads.train import evaluate_run

    report = evaluate_run(run, cache=cache, split=split, out=out, cache_dir=cache_dir,
                          log=(lambda m: None) if (quiet or as_json) else _err)
    if as_json:
        _emit_json(report.to_dict())
    elif not quiet:
        m, r = report.metrics, report.recorded
        typer.echo(f"run {report.run} on {report.cache} ({report.split}, {m['n']:,} images)")
        typer.echo(f"accuracy {_fmt(m.get('accuracy'))}  macro-F1 {_fmt(m.get('macro_f1'))}  "
                   f"log-loss {_fmt(m.get('log_loss'))}   (recorded at training: accuracy {_fmt(r.get('accuracy'))})")
        typer.echo(f"wrote {report.out}/")
    for warning in report.warnings:
        _err(f"warning: {warning}")
    raise typer.Exit(report.exit_code)


@head_app.command("list")
def head_list(
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where runs live."),
    sort: str = typer.Option("accuracy", help="accuracy, f1, loss, time, created or name."),
    limit: Optional[int] = typer.Option(None, help="Show only the first N."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Leaderboard of the runs under ./runs/: head, key parameters, val accuracy, macro-F1, time."""
    from headstart.heads.leaderboard import format_table, leaderboard_rows, sort_rows
    from headstart.heads.runs import incomplete_runs, list_runs

    rows = sort_rows(leaderboard_rows(list_runs(runs_dir), base=runs_dir), sort)
    if limit is not None:
        rows = rows[: max(limit, 0)]
    unfinished = [str(p) for p in incomplete_runs(runs_dir)]
    if as_json:
        _emit_json({"runs": rows, "incomplete": unfinished})
        return
    if not rows:
        typer.echo(f"no runs under {runs_dir}/; train one with `headstart head train`")
    else:
        for line in format_table(rows):
            typer.echo(line)
    if unfinished:
        _err(f"{len(unfinished)} incomplete run folders (no head.json) not listed, e.g. {unfinished[0]}")


@head_app.command("sweep")
def head_sweep(
    head: str = typer.Option("dense", "--head", help="Comma-separated heads, e.g. dense,logreg,svm,knn."),
    epochs: Optional[str] = typer.Option(None, help="Comma-separated alternatives, as every option below."),
    batch_size: Optional[str] = typer.Option(None, "--batch-size"),
    lr: Optional[str] = typer.Option(None, "--lr", help="e.g. 1e-3,3e-4"),
    hidden: Optional[str] = typer.Option(None, "--hidden", help="e.g. 1024,512x256,0 (x joins layers of one head)."),
    dropout: Optional[str] = typer.Option(None),
    l2: Optional[str] = typer.Option(None, "--l2"),
    label_smoothing: Optional[str] = typer.Option(None, "--label-smoothing"),
    patience: Optional[str] = typer.Option(None),
    class_weight: Optional[str] = typer.Option(None, "--class-weight", help="e.g. none,balanced"),
    standardize: Optional[str] = typer.Option(None, "--standardize", help="e.g. on,off"),
    c: Optional[str] = typer.Option(None, "--C", help="e.g. 0.1,1,10"),
    max_iter: Optional[str] = typer.Option(None, "--max-iter"),
    k: Optional[str] = typer.Option(None, "--k", help="e.g. 5,10,20"),
    seed: Optional[str] = typer.Option(None, help="e.g. 0,1,2 (the split always uses the first)."),
    views: Optional[str] = typer.Option(None, "--views", help="Cached augmented views per training image, e.g. "
                                                              "0,4,all (0: clean rows only)."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help=_HEAD_HELP["val_fraction"]),
    cache: Optional[str] = typer.Option(None, help=_HEAD_HELP["cache"]),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the sweep's runs; default: runs/<timestamp>-sweep."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    cache_dir: str = typer.Option("cache", "--cache-dir"),
    sort: str = typer.Option("accuracy", help="Leaderboard order: accuracy, f1, loss, time, created or name."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Train several heads/settings on one in-memory copy of the features; print the leaderboard."""
    from headstart.heads.leaderboard import format_table
    from headstart.heads.sweep import parse_grid, run_sweep

    grid = parse_grid({"head": head, "epochs": epochs, "batch_size": batch_size, "lr": lr, "hidden": hidden,
                       "dropout": dropout, "l2": l2, "label_smoothing": label_smoothing, "patience": patience,
                       "class_weight": class_weight, "standardize": standardize, "C": c, "max_iter": max_iter,
                       "k": k, "seed": seed, "views": views})
    report = run_sweep(grid, cache=cache, out=out, runs_dir=runs_dir, val_fraction=val_fraction, cache_dir=cache_dir,
                       log=(lambda m: None) if (quiet or as_json) else _err, progress=False, sort=sort)
    if as_json:
        _emit_json(report.to_dict())
    else:
        if not quiet:
            for line in format_table(report.leaderboard):
                typer.echo(line)
            typer.echo(f"{len(report.runs)} runs in {report.out}/ ({report.total_seconds:.1f} s)")
        for warning in report.warnings:
            _err(f"warning: {warning}")
    raise typer.Exit(report.exit_code)


# -------------------------------------------------------------------------- inspect


_INSPECT_HELP = {
    "cache": "Cache file; default: the newest under ./cache/ (named on stderr).",
    "cache_dir": "Where to look for the newest cache.",
    "json": "Print the summary as JSON on stdout.",
    "quiet": "No progress bars; print only problems.",
    "seed": "Seed of the folds and samples.",
}


def _inspect_log(quiet: bool, as_json: bool):
    return (lambda m: None) if (quiet or as_json) else _err


def _inspect_done(report, as_json: bool, quiet: bool, lines, problems=None) -> None:
    """Print the report (JSON, or the given lines; with --quiet only the problems, on stderr),
    its warnings, and exit with its code."""
    if as_json:
        _emit_json(report.to_dict())
    elif not quiet:
        for line in lines():
            typer.echo(line)
        for line in _picture_lines(report):
            typer.echo(line)
    elif problems is not None:
        for line in problems():
            _err(line)
    if not as_json:
        for warning in report.warnings:
            _err(f"warning: {warning}")
    raise typer.Exit(report.exit_code)


def _picture_lines(report):
    """Where the report's images are (its CSV's paths are relative to it) and its gallery."""
    if getattr(report, "images_root", ""):
        csv = str(getattr(report, "out", "")).endswith(".csv")
        yield (f"images:     {report.images_root}" + (" (the CSV's paths are relative to it; its abs_path columns "
                                                      "have them whole)" if csv else ""))
    if getattr(report, "gallery", ""):
        note = f" ({report.gallery_note})" if getattr(report, "gallery_note", "") else ""
        yield f"gallery:    {report.gallery}{note}"
    elif getattr(report, "gallery_note", ""):
        yield f"gallery:    {report.gallery_note}"


@inspect_app.command("duplicates")
def inspect_duplicates(
    threshold: Optional[float] = typer.Option(None, help="Cosine similarity from which two distinct images are "
                                                         "near-duplicates [0.90: with MobileNetV2 on real photos, no "
                                                         "two distinct photos reached 0.87, while 97% of JPEG "
                                                         "re-encodes and 91% of mirror images were above 0.90]."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="As for `head train`, so leakage is reported "
                                                                   "on the split it will use."),
    seed: int = typer.Option(0, help="As for `head train`: the split's seed."),
    max_pairs: Optional[int] = typer.Option(None, "--max-pairs", help="Most CSV lines, worst first; every pair is "
                                                                      "still counted [100000]."),
    cache: Optional[str] = typer.Option(None, help=_INSPECT_HELP["cache"]),
    cache_dir: str = typer.Option("cache", "--cache-dir", help=_INSPECT_HELP["cache_dir"]),
    out: Optional[Path] = typer.Option(None, "--out", help="CSV to write; default: reports/<cache>-duplicates.csv."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_INSPECT_HELP["quiet"]),
    as_json: bool = typer.Option(False, "--json", help=_INSPECT_HELP["json"]),
) -> None:
    """Exact duplicates, label conflicts, near-duplicates, and near-duplicates across train/val/test (leakage).

    Exit 1 when leakage or label conflicts were found.
    """
    from headstart.heads.quality.commands import inspect_duplicates as run

    report = run(cache, cache_dir, threshold, val_fraction, seed, out, max_pairs, progress=not quiet and not as_json,
                 log=_inspect_log(quiet, as_json))

    def lines():
        e, c, n, leak, m = report.exact, report.conflicts, report.near, report.leakage, report.method
        split = "from the layout" if report.splits["source"] == "layout" else (
            f"{report.splits['source']}, val-fraction {report.splits['val_fraction']:g}, seed {report.splits['seed']}")
        yield f"cache:      {report.cache} ({report.rows:,} images in {report.files:,} files; split {split})"
        yield (f"exact:      {e['keys']:,} images under several paths ({e['extra_files']:,} extra files)"
               + (f"; {e['keys_across_splits']:,} filed under two splits" if e["keys_across_splits"] else ""))
        yield (f"conflicts:  {c['keys']:,} images under two classes ({c['files']:,} files); head train leaves them out"
               if c["applies"] else "conflicts:  do not apply (the cache has no labels)")
        yield (f"near:       {n['pairs']:,} pairs with cosine >= {report.threshold:g} among {n['rows']:,} images in "
               f"{n['groups']:,} groups (largest: {n['largest_group_rows']:,} images); "
               f"{n['pairs_with_different_labels']:,} pairs carry different labels")
        if leak["applies"]:
            detail = ", ".join(f"{k} {v:,}" for k, v in leak["by_splits"].items())
            yield f"leakage:    {leak['pairs']:,} near-duplicate pairs straddle the split" + (f": {detail}" if detail else "")
        else:
            yield f"leakage:    does not apply ({leak['reason']})"
        how = (f"PCA bound at rank {m['rank']} ({m['residual_energy']:.0%} of the energy outside it), "
               f"{m['candidates']:,} candidates verified" if m["method"] == "pca-bound" else "exact pass")
        capped = f" of {report.csv_total:,}" if report.capped else ""
        yield f"wrote:      {report.out} ({report.csv_rows:,}{capped} lines, worst first)"
        yield f"method:     {how}; {report.seconds:.1f} s"

    def problems():  # what exit code 1 means, for --quiet
        if report.leakage["applies"] and report.leakage["pairs"]:
            yield f"leakage: {report.leakage['pairs']:,} near-duplicate pairs straddle the split (see {report.out})"
        if report.conflicts["applies"] and report.conflicts["keys"]:
            yield f"conflicts: {report.conflicts['keys']:,} images under two classes (see {report.out})"

    _inspect_done(report, as_json, quiet, lines, problems)


@inspect_app.command("labels")
def inspect_labels(
    folds: Optional[int] = typer.Option(None, help="Folds of the out-of-fold logistic regression [5]."),
    dims: Optional[int] = typer.Option(None, help="Principal axes of the standardised features the model sees; "
                                                  "0 = every feature [every feature up to 30 million values, "
                                                  "e.g. 23,000 x 1,280; else 256]."),
    c: Optional[float] = typer.Option(None, "--C", help="Inverse regularisation strength [0.01: ranked flipped "
                                                        "labels best]."),
    seed: int = typer.Option(0, help=_INSPECT_HELP["seed"]),
    top: int = typer.Option(10, help="How many to print."),
    cache: Optional[str] = typer.Option(None, help=_INSPECT_HELP["cache"]),
    cache_dir: str = typer.Option("cache", "--cache-dir", help=_INSPECT_HELP["cache_dir"]),
    out: Optional[Path] = typer.Option(None, "--out", help="CSV to write; default: reports/<cache>-label-errors.csv."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_INSPECT_HELP["quiet"]),
    as_json: bool = typer.Option(False, "--json", help=_INSPECT_HELP["json"]),
) -> None:
    """Rank likely label errors: each image's given label vs out-of-fold predicted probabilities."""
    from headstart.heads.quality.commands import inspect_labels as run

    report = run(cache, cache_dir, folds, dims, c, seed, out, progress=not quiet and not as_json,
                 log=_inspect_log(quiet, as_json))

    def lines():
        yield (f"ranked {report.images:,} labelled images: {report.folds}-fold logistic regression on {report.dims} "
               f"dims, out-of-fold accuracy {report.oof_accuracy:.4f}")
        yield f"another label is more likely for {report.suspicious:,} of them; the first {min(top, report.images)}:"
        yield f"  {'score':>6}  {'p(label)':>8}  {'label -> suggested (p)':<32} path"
        for r in report.top[:top]:
            change = f"{r['label']} -> {r['suggested']} ({r['p_suggested']:.2f})"
            yield f"  {r['score']:>6.3f}  {r['p_label']:>8.3f}  {change:<32} {r['path']}"
        yield f"wrote {report.out} (worst first; {report.seconds:.1f} s)"

    _inspect_done(report, as_json, quiet, lines)


@inspect_app.command("outliers")
def inspect_outliers(
    k: Optional[int] = typer.Option(None, "--k", help="Nearest same-class neighbours averaged [10]."),
    max_reference: Optional[int] = typer.Option(None, "--max-reference", help="Most neighbours-to-be per class; "
                                                                              "bigger classes are sampled [5000]."),
    seed: int = typer.Option(0, help=_INSPECT_HELP["seed"]),
    top: int = typer.Option(10, help="How many to print."),
    cache: Optional[str] = typer.Option(None, help=_INSPECT_HELP["cache"]),
    cache_dir: str = typer.Option("cache", "--cache-dir", help=_INSPECT_HELP["cache_dir"]),
    out: Optional[Path] = typer.Option(None, "--out", help="CSV to write; default: reports/<cache>-outliers.csv."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_INSPECT_HELP["quiet"]),
    as_json: bool = typer.Option(False, "--json", help=_INSPECT_HELP["json"]),
) -> None:
    """Rank images far from their class (mean cosine distance to the k nearest same-class images)."""
    from headstart.heads.quality.commands import inspect_outliers as run

    report = run(cache, cache_dir, k, max_reference, seed, out, progress=not quiet and not as_json,
                 log=_inspect_log(quiet, as_json))

    def lines():
        yield f"ranked {report.images:,} labelled images in {report.classes} classes by distance to their class (k={report.k})"
        yield f"  {'score':>6}  {'dist':>6}  {'label':<16} {'closest other class':<20} path"
        for r in report.top[:top]:
            score = f"{r['score']:.2f}" if r["score"] != "" else "-"
            dist = f"{r['knn_distance']:.3f}" if r["knn_distance"] != "" else "-"
            yield f"  {score:>6}  {dist:>6}  {r['label']:<16} {r['nearest_other_class']:<20} {r['path']}"
        yield f"wrote {report.out} (score: robust z within the class; {report.seconds:.1f} s)"

    _inspect_done(report, as_json, quiet, lines)


@inspect_app.command("map")
def inspect_map(
    method: str = typer.Option("pca", help="pca (all rows, linear) or tsne (scikit-learn, on a sample)."),
    flag: Optional[List[Path]] = typer.Option(None, "--flag", help="Ring the images of a CSV from inspect "
                                                                   "labels/outliers/duplicates (repeatable)."),
    top: Optional[int] = typer.Option(None, help="With --flag: how many of each CSV's first lines to ring [50]; "
                                                 "without: ring the top N of a fresh outlier ranking [none]."),
    max_points: Optional[int] = typer.Option(None, "--max-points", help="Most images drawn (a seeded sample; "
                                                                        "ringed ones always) [pca 50000, tsne 5000]."),
    seed: int = typer.Option(0, help=_INSPECT_HELP["seed"]),
    cache: Optional[str] = typer.Option(None, help=_INSPECT_HELP["cache"]),
    cache_dir: str = typer.Option("cache", "--cache-dir", help=_INSPECT_HELP["cache_dir"]),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write; default: reports/<cache>-map-<method>.png."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_INSPECT_HELP["quiet"]),
    as_json: bool = typer.Option(False, "--json", help=_INSPECT_HELP["json"]),
) -> None:
    """A 2-D projection of the embeddings as a PNG, coloured by class, flagged images ringed."""
    from headstart.heads.quality.commands import inspect_map as run

    report = run(cache, cache_dir, method, flag or [], top, max_points, seed, out, progress=not quiet and not as_json,
                 log=_inspect_log(quiet, as_json))

    def lines():
        axes = (f" (PC1 {report.explained[0]:.1%}, PC2 {report.explained[1]:.1%} of the variance)"
                if report.explained else "")
        ringed = f"; {report.flagged_drawn:,} ringed: {report.flag_source}" if report.flag_source else ""
        yield (f"wrote {report.out}: {report.points:,} of {report.rows:,} images, {report.method.upper()}{axes}"
               f"{ringed} ({report.seconds:.1f} s)")

    _inspect_done(report, as_json, quiet, lines)


@inspect_app.command("samples")
def inspect_samples(
    per_class: Optional[int] = typer.Option(None, "--per-class", help="Images drawn per class: one line of the "
                                                                      "sheet [6]."),
    max_classes: Optional[int] = typer.Option(None, "--max-classes", help="Most classes shown, in sorted order "
                                                                          "[16]."),
    seed: int = typer.Option(0, help="Seed of the draw (and of head train's split, shown per image)."),
    images: Optional[str] = typer.Option(None, help="Where the images are now, if they moved since embedding."),
    cache: Optional[str] = typer.Option(None, help=_INSPECT_HELP["cache"]),
    cache_dir: str = typer.Option("cache", "--cache-dir", help=_INSPECT_HELP["cache_dir"]),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG to write; default: reports/<cache>-samples.png."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=_INSPECT_HELP["quiet"]),
    as_json: bool = typer.Option(False, "--json", help=_INSPECT_HELP["json"]),
) -> None:
    """A contact sheet of a few images of each class, to see what the classes hold."""
    from headstart.heads.quality.commands import inspect_samples as run

    report = run(cache, cache_dir, per_class, max_classes, seed, images, out, log=_inspect_log(quiet, as_json))

    def lines():
        shown = f"the first {report.groups_shown} of {report.groups}" if report.groups_shown < report.groups else \
            f"all {report.groups}"
        yield (f"drew {report.tiles} images ({report.per_class} per group, seed {report.seed}) of {shown} groups "
               f"({report.classes} classes" + (", unlabelled or conflicting images)" if report.groups > report.classes
                                               else ")"))

    _inspect_done(report, as_json, quiet, lines)


# ------------------------------------------------------------------------- finetune


@app.command("finetune")
def finetune(
    from_run: Optional[Path] = typer.Option(None, "--from", help="Head run to start from; default: the best dense run under ./runs/."),
    unfreeze: int = typer.Option(4, help="Make the top N backbone layers that own weights trainable. A 'layer' is a "
                                         "Keras layer with weights (Conv2D, DepthwiseConv2D, Dense...); "
                                         "BatchNormalization layers never count: they stay frozen and in inference "
                                         "mode. N larger than the backbone has is clamped, with a warning."),
    epochs: int = typer.Option(10, help="Most epochs; early stopping on validation loss restores the best."),
    lr: float = typer.Option(1e-5, help="Learning rate (Adam); keep it small."),
    batch_size: int = typer.Option(16, "--batch-size"),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random flip, small rotation/zoom/contrast."),
    images: Optional[str] = typer.Option(None, help="Where the images are now, if they moved since embedding."),
    cache: Optional[str] = typer.Option(None, help="The cache the head was trained on, if it moved."),
    out: Optional[Path] = typer.Option(None, help="Run folder; default: runs/<timestamp>-finetune."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir", help="Where runs live."),
    seed: int = typer.Option(0),
    patience: int = typer.Option(3, help="Epochs without val-loss improvement before stopping."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted fine-tune (the one in --out, "
                                                         "or the newest unfinished one)."),
    devices: Optional[str] = typer.Option(None, help="all, or indices like 0,1: train on several GPUs with "
                                                     "MirroredStrategy; --batch-size is per device."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Fine-tune backbone + head end to end on the images, warm-started from a dense head."""
    from headstart.embedder.devices import parse_devices
    from headstart.heads.finetune import FinetuneOptions, finetune as run_finetune

    options = FinetuneOptions(from_run=from_run, runs_dir=runs_dir, unfreeze=unfreeze, epochs=epochs, lr=lr,
                              batch_size=batch_size, augment=augment, images=images, cache=cache, out=out, seed=seed,
                              patience=patience, resume=resume, devices=parse_devices(devices),
                              progress=not quiet and not as_json)
    report = run_finetune(options, log=(lambda m: None) if (quiet or as_json) else _err)
    if as_json:
        _emit_json(report.to_dict())
        return
    for warning in report.warnings:
        _err(f"warning: {warning}")
    if quiet:
        return
    before = report.head_metrics.get("accuracy")
    after = report.metrics.get("accuracy")
    change = f" (head alone: {before:.4f})" if isinstance(before, (int, float)) else ""
    typer.echo(f"fine-tuned {report.run_dir} from {report.from_run}: {report.epochs_run} epochs, best {report.best_epoch}, "
               f"{report.seconds_per_epoch:.1f} s/epoch")
    if isinstance(after, (int, float)):
        typer.echo(f"val accuracy {after:.4f}{change} on {report.val_images} images; "
                   f"macro-F1 {report.metrics.get('macro_f1', float('nan')):.4f}")


# -------------------------------------------------------------------- predict, export


@app.command("predict")
def predict(
    inputs: List[str] = typer.Argument(..., help="Image files and/or folders (or URLs)."),
    run: Optional[Path] = typer.Option(None, "--run", help="Head or fine-tuned run; default: the best run under ./runs/."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
    fmt: str = typer.Option("csv", "--format", help="csv or json."),
    top_k: int = typer.Option(3, "--top-k", help="How many classes to list per image."),
    batch_size: int = typer.Option(32, "--batch-size"),
    cache: List[str] = typer.Option([], "--cache", help="Also look features up in this cache (repeatable)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Push every image through the backbone."),
    runtime: str = typer.Option("auto", help="auto, tf, litert or openvino, as for `embed run`; the precision "
                                             "is the run's own (a bf16 run needs OpenVINO and a bf16 CPU)."),
    devices: Optional[str] = typer.Option(None, help="all, or indices like 0,1, as for `embed run`."),
    workers: Optional[int] = typer.Option(None, help="Decoding threads; default: the number of cores."),
    runs_dir: Path = typer.Option(Path("runs"), "--runs-dir"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Class probabilities for images: path, top-1 label, its probability, the top-k."""
    from headstart.heads.inference import PredictOptions, predict_images, write_predictions
    from headstart.heads.runs import best_run, load_run

    chosen = load_run(run) if run else best_run(runs_dir)
    if run is None and not quiet:
        _err(f"using run {chosen.path} (the best by val accuracy under {runs_dir}/)")
    from headstart.embedder.devices import parse_devices

    options = PredictOptions(top_k=top_k, batch_size=batch_size, caches=cache, use_cache=not no_cache,
                             runtime=runtime, devices=parse_devices(devices), workers=workers, progress=not quiet)
    report = predict_images(inputs, chosen, options, log=(lambda m: None) if quiet else _err)
    text = write_predictions(report, out, fmt)
    if text is not None:
        typer.echo(text, nl=False)
    if report.skipped:
        _err(f"skipped {len(report.skipped)} files:")
        for item in report.skipped[:20]:
            _err(f"  {item['path']}: {item['reason']}")
    if not quiet:
        runtime = f" ({report.runtime})" if report.runtime else ""
        _err(f"predicted {len(report.predictions)} images in {report.elapsed_s:.1f} s "
             f"({report.from_cache} from the cache, {report.through_backbone} through the backbone{runtime})")
    raise typer.Exit(report.exit_code)


@app.command("export")
def export(
    run: Path = typer.Argument(..., help="Head (dense) or fine-tuned run folder."),
    fmt: str = typer.Option("keras", "--format", help="keras, savedmodel or tflite."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the model, labels.txt and export.json into."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One self-contained model on raw RGB pixels [0, 255] -> class probabilities, plus labels.txt."""
    from headstart.heads.export import FORMATS, export_run
    from headstart.heads.runs import load_run

    if fmt not in FORMATS:
        raise HeadstartError(f"unsupported export format {fmt!r}; use one of {', '.join(FORMATS)}")
    info = export_run(load_run(run), fmt, out)
    if as_json:
        _emit_json(info)
    else:
        typer.echo(f"exported {info['artifact']} ({fmt}; input {info['input']['shape']} RGB 0-255; "
                   f"{len(info['classes'])} classes in {Path(out) / 'labels.txt'})")


# --------------------------------------------------------------------------- report


@app.command("report")
def report(
    run: Path = typer.Argument(..., help="A head or fine-tuned run folder."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="HTML file to write; default: RUN/report.html."),
    reports: Optional[Path] = typer.Option(None, "--reports", help="Folder of `inspect` reports to include; default: "
                                                                   "reports/ beside the runs folder, or in the "
                                                                   "working folder."),
    images: Optional[str] = typer.Option(None, help="Where the images are now, if they moved since embedding."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only problems."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Write a run's report.html: metrics, per-class table, plots, mistakes as pictures, inspect findings.

    One self-contained file (images inlined), readable offline in any browser.
    """
    from headstart.heads.run_report import write_run_report

    result = write_run_report(run, out=out, reports_dir=reports, images=images)
    if as_json:
        _emit_json(result.to_dict())
    elif not quiet:
        typer.echo(f"wrote {result.out}")
        typer.echo(f"images:   {result.images_root or 'unknown'} (the run's paths are relative to it)")
        if not result.errors:
            typer.echo("mistakes: none")
        elif not result.error_tiles:
            typer.echo(f"mistakes: {result.errors:,} listed without pictures (their images were not found)")
        else:
            capped = f"the first {result.error_tiles} of " if result.errors > result.error_tiles else ""
            typer.echo(f"mistakes: {capped}{result.errors:,} shown as pictures")
        found = ", ".join(Path(p).name for p in result.findings)
        typer.echo(f"inspect:  {found} (from {result.reports_dir})" if found else
                   "inspect:  no report on this run's cache found (run `headstart inspect ...` to add them)")
    if not as_json:
        for note in result.notes:
            _err(f"note: {note}")
    raise typer.Exit(result.exit_code)


# ----------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point: run the app, turning errors into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    interrupted = _CtrlC()
    try:
        with interrupted:
            result = app(args=args, prog_name="headstart", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except HeadstartError as exc:
        _err(f"headstart: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        return _interrupted(args)
    except OSError as exc:  # disk full, a read-only folder, --out under a file: bad input, not a bug
        if "--debug" in args:
            raise
        _err(f"headstart: error: {_os_error_line(exc)}")
        return EXIT_USAGE
    except Exception as exc:  # click's usage errors (Typer vendors click), and genuine bugs
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            return exc.exit_code
        if type(exc).__name__ == "Abort":
            _err("headstart: aborted")
            return 130
        if "--debug" in args:
            raise
        _err(f"headstart: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return EXIT_INTERNAL
    if interrupted.seen:  # Typer turns Ctrl-C into a silent exit code 130; say what it means
        return _interrupted(args)
    return result if isinstance(result, int) else EXIT_OK


class _CtrlC:
    """Notes a Ctrl-C (SIGINT) while a command runs; it still raises KeyboardInterrupt.

    Only where Python's own handler is in place (not where SIGINT is ignored, e.g. a
    background job, nor outside the main thread)."""

    def __init__(self):
        self.seen = False
        self._previous = None

    def _handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _os_error_line(exc: OSError) -> str:
    """``cannot write <path>: No space left on device (errno 28)``: the path and the OS's reason."""
    import errno as _errno

    reason = exc.strerror or str(exc)
    where = exc.filename if exc.filename is not None else ""
    if exc.filename2 is not None:
        where = f"{where} -> {exc.filename2}"
    hint = {_errno.ENOSPC: "free some space or write elsewhere", _errno.EROFS: "write to another folder",
            _errno.EACCES: "check the permissions or write elsewhere", _errno.ENOTDIR: "a part of the path is a file",
            _errno.EDQUOT: "free some space or write elsewhere"}.get(exc.errno)
    text = f"{where}: {reason}" if where else reason
    return text + (f" ({hint})" if hint else "")


def _interrupted(args: List[str]) -> int:
    if args[:2] == ["embed", "run"]:
        _err("headstart: interrupted; the finished batches are kept: rerun the same command to resume")
    else:
        _err("headstart: interrupted")
    return 130


if __name__ == "__main__":
    sys.exit(main())
