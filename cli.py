"""headstart's command line: a thin Typer layer. It parses, calls one function, formats.

Nothing here imports TensorFlow at module level, so ``--help`` and usage errors answer
instantly. Errors a user can act on (:class:`embedder.errors.HeadstartError`) print one
line and exit with their code (2 bad usage/input, 1 needs attention); anything else is a
bug, printed as one line too unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import inspect
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from headstart import __version__
from headstart.embedder import defaults
from headstart.embedder.backbones import PRECISIONS
from headstart.embedder.errors import EXIT_OK, EXIT_USAGE, HeadstartError
from headstart.embedder.runtimes import CHOICES as RUNTIME_CHOICES

# The root listing, in the order of the workflow, each command in one line that fits 80 columns.
WORKFLOW = {
    "embed": "Run a frozen backbone over images once, into an HDF5 cache.",
    "head": "Train, compare and re-evaluate small heads on a cache.",
    "finetune": "Fine-tune backbone and dense head end to end on the images.",
    "predict": "Class probabilities for new images, from any run.",
    "export": "One self-contained model (Keras, SavedModel, TFLite).",
    "eval": "Evaluate a run on labelled images.",
    "cache": "List caches and converted backbones; clean what nothing uses.",
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
cache_app = _typer("What headstart keeps on disk: caches and converted backbones; clean what nothing uses.")
app.add_typer(cache_app, name="cache")

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


def _show(summary, quiet: bool = False) -> None:
    """A command's summary: what happened on stdout (not with --quiet), problems on stderr."""
    if not quiet:
        for line in summary.out:
            typer.echo(line)
    for line in summary.err:
        _err(line)


def _log(quiet: bool, as_json: bool = False):
    """Where a command narrates (stderr), unless --quiet or --json asked for silence."""
    return (lambda message: None) if (quiet or as_json) else _err


# ------------------------------------------------------------------ shared option types


def Opt(*flags: str, help: str, choices=None, default_text: str | None = None):  # noqa: N802 - a type maker
    """One way to declare an option: its default shown as ``[default: ...]`` (a default computed
    at run time in words, through ``default_text``), its choices as the metavar
    (``[auto|tf|litert]``). The default itself is the parameter's (Typer's Annotated style)."""
    metavar = "[" + "|".join(choices) + "]" if choices else None
    return typer.Option(*flags, help=help, show_default=default_text if default_text is not None else True,
                        metavar=metavar)


CacheFile = Annotated[Optional[str], Opt("--cache", help="The cache file (or URL).", default_text=(
    "the newest under --cache-dir, if all its caches are of one image set and backbone (it says which)"))]
CacheDir = Annotated[str, Opt("--cache-dir", help="Where caches are (a folder or URL).")]
RunsDir = Annotated[Path, Opt("--runs-dir", help="Where runs are.")]
Images = Annotated[Optional[str], Opt("--images", help="Where the images are now, if they moved since "
                                                             "embedding.", default_text="the cache's images root")]
Quiet = Annotated[bool, Opt("--quiet", "-q", help="No progress bars; print only problems.")]
Json = Annotated[bool, Opt("--json", help="Print the report as JSON on stdout.")]
Seed = Annotated[int, Opt("--seed", help="Seed of the split (as for `head train`) and of "
                                                              "the draws.")]
TensorBoard = Annotated[Optional[Path], Opt("--tensorboard", help="Also write TensorBoard logs, loss and accuracy per "
                                            "epoch (train and validation), into DIR/<run folder name>/; view them "
                                            "with `tensorboard --logdir DIR` (pip install tensorboard).",
                                            default_text="none")]


def Out(help: str, default_text: str | None = None, short: bool = True):  # noqa: N802 - a type maker
    """``--out``/``-o``: where a command writes (the help says what)."""
    flags = ("--out", "-o") if short else ("--out",)
    return Annotated[Optional[Path], Opt(*flags, help=help, default_text=default_text)]


# ---------------------------------------------------------------------------- embed


@embed_app.command("run")
def embed_run(
    images: Annotated[str, typer.Argument(help="Folder of images: class folders, train/val/test folders, or loose "
                                               "files; a URL (gs://...) is read with tf.io.gfile.")],
    backbone: Annotated[str, Opt("--backbone", "-b", help="A registered name (see `embed backbones`) or a .keras "
                                                          "model file.")] = defaults.BACKBONE,
    weights: Annotated[str, Opt("--weights", help="imagenet (downloads once), none (random, from --seed), or a "
                                                  "weights file.")] = defaults.WEIGHTS,
    alpha: Annotated[Optional[float], Opt("--alpha", help="Width multiplier of the MobileNet families.",
                                          default_text="1.0")] = None,
    layer: Annotated[Optional[str], Opt("--layer", help="Take features from this layer instead of the "
                                                              "backbone's output.")] = None,
    image_size: Annotated[Optional[int], Opt("--image-size", help="Square input size.",
                                             default_text="the backbone's native size")] = None,
    pooling: Annotated[str, Opt("--pooling", choices=("avg", "max", "flatten"),
                                help="How a feature map becomes a vector (flatten keeps it whole: big).")] = "avg",
    batch_size: Annotated[str, Opt("--batch-size", help="Images per batch (also "
                                   "the most a crash can lose), or auto: probed on a GPU, 32 on CPUs.")] = "32",
    cache: Annotated[Optional[str], Opt("--cache", help="The cache file (or URL) to write.",
                                        default_text="<cache-dir>/<folder>-<hash>-<backbone>-<id>.h5")] = None,
    cache_dir: Annotated[str, Opt("--cache-dir", help="Where default cache files go (a folder "
                                                                          "or URL).")] = defaults.CACHE_DIR,
    dtype: Annotated[str, Opt("--dtype", choices=("float16", "float32"),
                              help="Storage dtype of the features.")] = defaults.STORAGE_DTYPE,
    manifest: Annotated[Optional[str], Opt("--manifest", help="CSV of path,label[,split] (paths relative to "
                                                                    "IMAGES) instead of folders.")] = None,
    seed: Annotated[int, Opt("--seed", help="Seed of --weights none.")] = 0,
    workers: Annotated[Optional[int], Opt("--workers", help="Decoding threads.",
                                          default_text="the number of cores")] = None,
    max_pixels: Annotated[int, Opt("--max-pixels", help="Images with more pixels (read from "
                                   "the header) are skipped as too large, never decoded.")] = defaults.PIXEL_LIMIT,
    runtime: Annotated[str, Opt("--runtime", choices=RUNTIME_CHOICES,
                                help="What runs the backbone: auto takes OpenVINO for --precision bf16; else "
                                     "LiteRT when no GPU is visible and the backbone converts, then OpenVINO, "
                                     "else TensorFlow (without TensorFlow installed: jax, else torch), and says "
                                     "which and why. openvino: pip install 'headstart[openvino]'. jax/torch: "
                                     "Keras 3 on that backend in a worker process, no TensorFlow needed. Same "
                                     "numbers within 1e-4 in float32.")] = defaults.RUNTIME,
    decode: Annotated[str, Opt("--decode", choices=("pillow", "nvjpeg"),
                               help="pillow: CPU threads (a cache made another way keeps its own rule); nvjpeg: "
                                    "JPEGs decoded on a CUDA GPU (torchvision): other pixels, so another "
                                    "fingerprint.")] = "pillow",
    shard: Annotated[Optional[str], Opt("--shard", help="I/N: embed only shard I (0-based) of N, a partition "
                                                              "of the files by path (each machine reads only its "
                                                              "own); one cache per shard, then `embed merge`.")] = None,
    precision: Annotated[str, Opt("--precision", choices=PRECISIONS,
                                  help="Computation dtype: mixed is Keras mixed_float16 (GPUs); bf16 is bfloat16 "
                                       "on OpenVINO (~2x float32's rate on CPUs with AVX512_BF16 or AMX, an error "
                                       "on others); auto: mixed on a GPU, float32 on a CPU. Part of the "
                                       "fingerprint: rows of two precisions never mix.")] = defaults.PRECISION,
    jit: Annotated[Optional[bool], Opt("--jit/--no-jit", help="XLA compilation.",
                                       default_text="on with a GPU, off on CPUs (measured slower there)")] = None,
    devices: Annotated[Optional[str], Opt("--devices", help="all, or indices like 0,1: several GPUs (logical "
                                          "CPUs without one) with MirroredStrategy; --batch-size is per "
                                          "device.")] = None,
    views: Annotated[Optional[int], Opt("--views", help="Also cache K augmented views per image (flip, "
                                        "crop/zoom, rotation, brightness/contrast) for `head train --views`.",
                                        default_text="as many as the cache holds")] = None,
    views_seed: Annotated[Optional[int], Opt("--views-seed", help="Seed of the views.",
                                             default_text="the cache's own, or 0")] = None,
    rehash: Annotated[bool, Opt("--rehash", help="Read and hash every file, even those whose size, times and "
                                "inode say they are unchanged since the last run.")] = False,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Embed every image once; reruns embed only what is new, and resume after a crash."""
    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.batch_size import parse_batch_size
    from headstart.embedder.decode import decode_choice
    from headstart.embedder.devices import parse_devices
    from headstart.embedder.job import EmbedOptions, parse_shard, run_embedding
    from headstart.embedder.summaries import embed_run as summary

    config = BackboneConfig(backbone=backbone, weights=weights, image_size=image_size, pooling=pooling,
                            layer=layer, alpha=alpha, seed=seed, precision=precision, pixels=decode_choice(decode))
    options = EmbedOptions(cache=cache, cache_dir=cache_dir, dtype=dtype,
                           batch_size=parse_batch_size(batch_size, defaults.EMBED_BATCH_SIZE), manifest=manifest,
                           parallelism=workers, runtime=runtime, pixel_limit=max_pixels,
                           shard=parse_shard(shard) if shard else None, jit=jit, devices=parse_devices(devices),
                           views=views, views_seed=views_seed, rehash=rehash, progress=not quiet and not as_json)
    report = run_embedding(images, config, options, log=_log(quiet, as_json))
    if as_json:
        _emit_json(report.to_dict())
    else:
        _show(summary(report), quiet)
    raise typer.Exit(report.exit_code)


@embed_app.command("merge")
def embed_merge(
    out: Annotated[str, typer.Argument(help="The merged cache to write (a new file).")],
    shards: Annotated[List[str], typer.Argument(help="Shard caches from `embed run --shard I/N`.")],
    virtual: Annotated[bool, Opt("--virtual", help="Map the shards' features with an HDF5 virtual dataset "
                                                          "instead of copying them (the shards must stay put).")] = False,
    images_root: Annotated[Optional[str], Opt("--images-root", help="Images root to record, if the shards "
                                                                          "name different ones.")] = None,
    as_json: Json = False,
) -> None:
    """Combine shard caches into one; checks fingerprints and that no key differs between shards."""
    from dataclasses import asdict

    from headstart.embedder.merge import merge_caches
    from headstart.embedder.summaries import embed_merge as summary

    report = merge_caches(out, shards, virtual=virtual, images_root=images_root, log=_log(False, as_json))
    if as_json:
        _emit_json(asdict(report))
    else:
        _show(summary(report))


@embed_app.command("info")
def embed_info(
    cache: Annotated[Optional[str], typer.Argument(help="A cache file.", show_default="the newest under ./cache/")] = None,
    as_json: Json = False,
) -> None:
    """What a cache holds: fingerprint, counts per class and split, failures, size.

    Exit 1 when rows hold NaN/inf features (rerun embed run to embed them again).
    """
    from headstart.embedder.cache import latest_cache
    from headstart.embedder.errors import EXIT_ATTENTION
    from headstart.embedder.info import cache_info
    from headstart.embedder.summaries import embed_info as summary

    info = cache_info(cache or latest_cache(defaults.CACHE_DIR))
    if as_json:
        _emit_json(info)
    else:
        _show(summary(info))
    raise typer.Exit(EXIT_ATTENTION if info["warnings"] else EXIT_OK)


@embed_app.command("backbones")
def embed_backbones(as_json: Json = False) -> None:
    """List the registered backbones, their native input size and preprocessing."""
    from headstart.embedder.backbones import registry_table
    from headstart.embedder.summaries import backbones_table

    rows = registry_table()
    if as_json:
        _emit_json({"backbones": rows})
    else:
        _show(backbones_table(rows))


# ----------------------------------------------------------------------------- head


def _head_kinds_help() -> str:
    from headstart.heads.kinds import get_kind, kind_names

    return ", ".join(f"{name} ({get_kind(name).summary})" for name in kind_names()) + "."


def _default_text(kind, name: str) -> str:
    """A kind's default for one hyper-parameter, as help text: its ``default_text``, else the value."""
    text = getattr(kind, "default_text", {}).get(name)
    if text is not None:
        return text
    value = kind.defaults()[name]
    if isinstance(value, tuple):
        return "x".join(str(v) for v in value) or "0"
    return format(value, "g") if isinstance(value, float) else str(value)


def _kind_parameters(sweep: bool) -> list[inspect.Parameter]:
    """One option per hyper-parameter of the head kinds, read from their registry (heads.kinds)."""
    from headstart.heads.kinds import get_kind, option_table

    parameters = []
    for name, (option, kinds) in option_table().items():
        defaults_ = [(kind, _default_text(get_kind(kind), name)) for kind in kinds]
        default = (defaults_[0][1] if len({text for _, text in defaults_}) == 1
                   else ", ".join(f"{kind}: {text}" for kind, text in defaults_))
        text = f"{'/'.join(kinds)}: {option.help}."
        if sweep:
            annotation = Optional[str]
            text += f" Alternatives, e.g. {option.example}." if option.example else ""
        else:
            annotation = Optional[List[str]] if option.multiple else Optional[option.type]
            text += " Repeatable, or comma-separated (512,256)." if option.multiple else ""
        parameters.append(inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation,
                                            default=typer.Option(None, option.flag, help=text, show_default=default)))
    return parameters


def _with_kind_options(sweep: bool):
    """Give a command (which takes ``**kind_options``) the head kinds' options, right after --head.

    Typer reads a command's options from its signature, so the registry's options are
    spliced into it: adding a kind adds its flags to `head train` and `head sweep`."""

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        fixed = [p for p in signature.parameters.values() if p.kind is not p.VAR_KEYWORD]
        at = [p.name for p in fixed].index("head") + 1
        command.__signature__ = signature.replace(parameters=fixed[:at] + _kind_parameters(sweep) + fixed[at:])
        return command

    return decorate


def _given(options: dict) -> dict:
    """Options the user did not set come as None (or an empty list, for repeatable ones)."""
    return {name: (None if value in ([], ()) else value) for name, value in options.items()}


ValFraction = Annotated[Optional[float], Opt("--val-fraction", default_text=str(defaults.VAL_FRACTION),
                                             help="Share of images held out for validation when the layout gives "
                                                  "no val split.")]


@head_app.command("train")
@_with_kind_options(sweep=False)
def head_train(
    cache: CacheFile = None,
    head: Annotated[str, Opt("--head", help=_head_kinds_help())] = "dense",
    standardize: Annotated[Optional[bool], Opt("--standardize/--no-standardize", default_text="off",
                                               help="Standardise features with training-row statistics (stored "
                                                    "with the head).")] = None,
    val_fraction: ValFraction = None,
    seed: Annotated[Optional[int], Opt("--seed", default_text=str(defaults.SPLIT_SEED),
                                       help="Seed of the split, initialisation, shuffling and dropout.")] = None,
    views: Annotated[bool, Opt("--views", help="Also train on the cached augmented views of the training "
                                                      "images (`embed run --views K`); validation stays "
                                                      "clean.")] = False,
    max_views: Annotated[Optional[int], Opt("--max-views", default_text="all",
                                            help="With --views: use only the first N views of each image.")] = None,
    out: Out("The run folder.", "<runs-dir>/<timestamp>-<head>", short=False) = None,
    runs_dir: RunsDir = Path(defaults.RUNS_DIR),
    cache_dir: CacheDir = defaults.CACHE_DIR,
    tensorboard: TensorBoard = None,
    quiet: Quiet = False,
    as_json: Json = False,
    **kind_options,
) -> None:
    """Train one head on a cache; write runs/<name>/ (model, head.json, metrics, plots, report.html).

    Exit 1 when images had to be left out (same bytes under two classes).
    """
    from headstart.heads.params import make_params, views_option
    from headstart.heads.summaries import head_train as summary
    from headstart.heads.train import train_head

    params = make_params(head, standardize=standardize, val_fraction=val_fraction, seed=seed,
                         views=views_option(views, max_views), **_given(kind_options))
    report = train_head(params, cache=cache, out=out, runs_dir=runs_dir, cache_dir=cache_dir,
                        log=_log(quiet, as_json), progress=not quiet and not as_json, tensorboard=tensorboard)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _show(summary(report), quiet)
    raise typer.Exit(report.exit_code)


@head_app.command("eval")
def head_eval(
    run: Annotated[Optional[Path], typer.Argument(help="A head run folder.", show_default=(
        "the best head run under ./runs/ for the cache's backbone and classes"))] = None,
    cache: Annotated[Optional[str], Opt("--cache", help="A cache of the run's backbone fingerprint.",
                                        default_text="the run's own cache, else the newest of its backbone")] = None,
    split: Annotated[str, Opt("--split", choices=("auto", "all", "train", "val", "test"),
                              help="auto: the run's val split on its own cache, every labelled image on "
                                   "another.")] = "auto",
    out: Out("Where to write metrics and plots.", "RUN/evals/<timestamp>-<cache>-<split>/", short=False) = None,
    runs_dir: RunsDir = Path(defaults.RUNS_DIR),
    cache_dir: CacheDir = defaults.CACHE_DIR,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Re-evaluate a saved head on a cache of the same fingerprint: its own, or a new labelled set."""
    from headstart.heads.summaries import head_eval as summary
    from headstart.heads.train import evaluate_run

    report = evaluate_run(run, cache=cache, split=split, out=out, cache_dir=cache_dir, runs_dir=runs_dir,
                          log=_log(quiet, as_json))
    if as_json:
        _emit_json(report.to_dict())
    else:
        _show(summary(report), quiet)
    raise typer.Exit(report.exit_code)


@head_app.command("list")
def head_list(
    runs_dir: RunsDir = Path(defaults.RUNS_DIR),
    cache: Annotated[Optional[str], Opt("--cache", help="Only runs usable with this cache: its backbone "
                                                              "fingerprint and (if labelled) its classes.")] = None,
    sort: Annotated[str, Opt("--sort", choices=("accuracy", "f1", "loss", "time", "created", "name"),
                             help="Order of the rows.")] = "accuracy",
    limit: Annotated[Optional[int], Opt("--limit", help="Show only the first N.", default_text="all")] = None,
    as_json: Json = False,
) -> None:
    """Leaderboard of the runs, grouped by images, backbone and classes: head, key parameters, val accuracy,
    macro-F1, time."""
    from headstart.heads.leaderboard import leaderboard_rows, runs_for_cache, sort_rows
    from headstart.heads.runs import incomplete_runs, list_runs
    from headstart.heads.summaries import head_list as summary

    runs = list_runs(runs_dir)
    if cache is not None:
        runs = runs_for_cache(runs, cache)
    rows = sort_rows(leaderboard_rows(runs, base=runs_dir), sort)
    if limit is not None:
        rows = rows[: max(limit, 0)]
    unfinished = [str(p) for p in incomplete_runs(runs_dir)]
    if as_json:
        _emit_json({"runs": rows, "incomplete": unfinished})
    else:
        _show(summary(rows, runs_dir, cache, unfinished))


@head_app.command("sweep")
@_with_kind_options(sweep=True)
def head_sweep(
    head: Annotated[str, Opt("--head", help="Comma-separated heads: " + _head_kinds_help() + " Every "
                                                     "option below takes comma-separated alternatives.")] = "dense",
    standardize: Annotated[Optional[str], Opt("--standardize", help="e.g. on,off.", default_text="off")] = None,
    seed: Annotated[Optional[str], Opt("--seed", help="e.g. 0,1,2 (the split always uses the first).",
                                       default_text=str(defaults.SPLIT_SEED))] = None,
    views: Annotated[Optional[str], Opt("--views", help="Cached augmented views per training image, e.g. "
                                                              "0,4,all (0: clean rows only).", default_text="0")] = None,
    val_fraction: ValFraction = None,
    cache: CacheFile = None,
    out: Out("Folder for the sweep's runs.", "<runs-dir>/<timestamp>-sweep", short=False) = None,
    runs_dir: RunsDir = Path(defaults.RUNS_DIR),
    cache_dir: CacheDir = defaults.CACHE_DIR,
    sort: Annotated[str, Opt("--sort", choices=("accuracy", "f1", "loss", "time", "created", "name"),
                             help="Leaderboard order.")] = "accuracy",
    quiet: Quiet = False,
    as_json: Json = False,
    **kind_options,
) -> None:
    """Train several heads/settings on one in-memory copy of the features; print the leaderboard."""
    from headstart.heads.summaries import head_sweep as summary
    from headstart.heads.sweep import parse_grid, run_sweep

    grid = parse_grid({"head": head, "standardize": standardize, "seed": seed, "views": views, **kind_options})
    report = run_sweep(grid, cache=cache, out=out, runs_dir=runs_dir, val_fraction=val_fraction, cache_dir=cache_dir,
                       log=_log(quiet, as_json), progress=False, sort=sort)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _show(summary(report), quiet)
    raise typer.Exit(report.exit_code)


# -------------------------------------------------------------------------- inspect


InspectSeed = Annotated[int, Opt("--seed", help="Seed of the folds and samples.")]
Top = Annotated[int, Opt("--top", help="How many to print.")]


def _inspect_done(report, as_json: bool, quiet: bool, lines: list[str], problems: list[str] = ()) -> None:
    """Print the report (JSON, or its lines; with --quiet only the problems), and exit with its code."""
    from headstart.heads.summaries import inspect as summary

    if as_json:
        _emit_json(report.to_dict())
    else:
        _show(summary(report, lines, quiet, problems), quiet)
    raise typer.Exit(report.exit_code)


@inspect_app.command("duplicates")
def inspect_duplicates(
    threshold: Annotated[Optional[float], Opt("--threshold", help="Cosine similarity from which two distinct "
                                              "images are near-duplicates.", default_text=(
                                                  "calibrated on the cache: pairs 3x closer (in 1 - cosine) than a "
                                                  "typical image's nearest other image; 0.90 under 100 images"))] = None,
    val_fraction: Annotated[float, Opt("--val-fraction", help="As for `head train`, so "
                                       "leakage is reported on the split it will use.")] = defaults.VAL_FRACTION,
    seed: Seed = defaults.SPLIT_SEED,
    max_pairs: Annotated[Optional[int], Opt("--max-pairs", default_text="100000",
                                            help="Most CSV lines, worst first; every pair is still counted.")] = None,
    cache: CacheFile = None,
    cache_dir: CacheDir = defaults.CACHE_DIR,
    out: Out("CSV to write.", "reports/<cache>-duplicates.csv", short=False) = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Exact duplicates, label conflicts, near-duplicates, and near-duplicates across train/val/test (leakage).

    Exit 1 when leakage or label conflicts were found.
    """
    from headstart.heads.quality.commands import inspect_duplicates as run
    from headstart.heads.summaries import inspect_duplicates as describe

    report = run(cache, cache_dir, threshold, val_fraction, seed, out, max_pairs, progress=not quiet and not as_json,
                 log=_log(quiet, as_json))
    lines, problems = describe(report)
    _inspect_done(report, as_json, quiet, lines, problems)


@inspect_app.command("labels")
def inspect_labels(
    folds: Annotated[Optional[int], Opt("--folds", default_text="5",
                                        help="Folds of the out-of-fold logistic regression.")] = None,
    dims: Annotated[Optional[int], Opt("--dims", help="Principal axes of the standardised features the model "
                                       "sees; 0 = every feature.", default_text=(
                                           "every feature up to 30 million values, e.g. 23,000 x 1,280; else "
                                           "256"))] = None,
    c: Annotated[Optional[float], Opt("--C", help="Inverse regularisation strength.",
                                      default_text="0.01: ranked flipped labels best")] = None,
    seed: InspectSeed = 0,
    top: Top = 10,
    cache: CacheFile = None,
    cache_dir: CacheDir = defaults.CACHE_DIR,
    out: Out("CSV to write.", "reports/<cache>-label-errors.csv", short=False) = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Rank likely label errors: each image's given label vs out-of-fold predicted probabilities."""
    from headstart.heads.quality.commands import inspect_labels as run
    from headstart.heads.summaries import inspect_labels as describe

    report = run(cache, cache_dir, folds, dims, c, seed, out, progress=not quiet and not as_json,
                 log=_log(quiet, as_json))
    _inspect_done(report, as_json, quiet, describe(report, top))


@inspect_app.command("outliers")
def inspect_outliers(
    k: Annotated[Optional[int], Opt("--k", help="Nearest same-class neighbours averaged.",
                                    default_text="10")] = None,
    max_reference: Annotated[Optional[int], Opt("--max-reference", default_text="5000",
                                                help="Most neighbours-to-be per class; bigger classes are "
                                                     "sampled.")] = None,
    seed: InspectSeed = 0,
    top: Top = 10,
    cache: CacheFile = None,
    cache_dir: CacheDir = defaults.CACHE_DIR,
    out: Out("CSV to write.", "reports/<cache>-outliers.csv", short=False) = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Rank images far from their class (mean cosine distance to the k nearest same-class images)."""
    from headstart.heads.quality.commands import inspect_outliers as run
    from headstart.heads.summaries import inspect_outliers as describe

    report = run(cache, cache_dir, k, max_reference, seed, out, progress=not quiet and not as_json,
                 log=_log(quiet, as_json))
    _inspect_done(report, as_json, quiet, describe(report, top))


@inspect_app.command("map")
def inspect_map(
    method: Annotated[str, Opt("--method", choices=("pca", "tsne"),
                               help="pca: all rows, linear; tsne: scikit-learn, on a sample.")] = "pca",
    flag: Annotated[Optional[List[Path]], Opt("--flag", help="Ring the images of a CSV from inspect "
                                              "labels/outliers/duplicates (repeatable).")] = None,
    top: Annotated[Optional[int], Opt("--top", help="With --flag: how many of each CSV's first lines to "
                                      "ring; without: ring the top N of a fresh outlier ranking.",
                                      default_text="with --flag 50, without none")] = None,
    max_points: Annotated[Optional[int], Opt("--max-points", default_text="pca 50000, tsne 5000",
                                             help="Most images drawn (a seeded sample; ringed ones "
                                                  "always).")] = None,
    seed: InspectSeed = 0,
    cache: CacheFile = None,
    cache_dir: CacheDir = defaults.CACHE_DIR,
    out: Out("PNG to write.", "reports/<cache>-map-<method>.png", short=False) = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """A 2-D projection of the embeddings as a PNG, coloured by class, flagged images ringed."""
    from headstart.heads.quality.commands import inspect_map as run
    from headstart.heads.summaries import inspect_map as describe

    report = run(cache, cache_dir, method, flag or [], top, max_points, seed, out, progress=not quiet and not as_json,
                 log=_log(quiet, as_json))
    _inspect_done(report, as_json, quiet, describe(report))


@inspect_app.command("samples")
def inspect_samples(
    per_class: Annotated[Optional[int], Opt("--per-class", default_text="6",
                                            help="Images drawn per class: one line of the sheet.")] = None,
    max_classes: Annotated[Optional[int], Opt("--max-classes", default_text="16",
                                              help="Most classes shown, in sorted order.")] = None,
    seed: Annotated[int, Opt("--seed", help="Seed of the draw (and of head train's split, shown per "
                                               "image).")] = 0,
    images: Images = None,
    cache: CacheFile = None,
    cache_dir: CacheDir = defaults.CACHE_DIR,
    out: Out("PNG to write.", "reports/<cache>-samples.png", short=False) = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """A contact sheet of a few images of each class, to see what the classes hold."""
    from headstart.heads.quality.commands import inspect_samples as run
    from headstart.heads.summaries import inspect_samples as describe

    report = run(cache, cache_dir, per_class, max_classes, seed, images, out, log=_log(quiet, as_json))
    _inspect_done(report, as_json, quiet, describe(report))


# ------------------------------------------------------------------------- finetune


@app.command("finetune")
def finetune(
    from_run: Annotated[Optional[Path], Opt("--from", help="Dense head run to start from; refused when the "
                                            "candidates are of several data sets.", default_text=(
                                                "the best dense run under --runs-dir (of --cache's backbone and "
                                                "classes, if given)"))] = None,
    unfreeze: Annotated[int, Opt("--unfreeze", help="Make the top N backbone layers "
                                 "that own weights trainable (Conv2D, DepthwiseConv2D, Dense...); BatchNormalization "
                                 "layers never count: they stay frozen and in inference mode. N larger than the "
                                 "backbone has is clamped, with a warning.")] = defaults.FINETUNE_UNFREEZE,
    epochs: Annotated[int, Opt("--epochs", help="Most epochs; early stopping on "
                               "validation loss.")] = defaults.FINETUNE_EPOCHS,
    lr: Annotated[float, Opt("--lr", help="Learning rate (Adam); keep it "
                             "small.")] = defaults.FINETUNE_LR,
    batch_size: Annotated[int, Opt("--batch-size", help="Images per training "
                                   "step.")] = defaults.FINETUNE_BATCH_SIZE,
    augment: Annotated[bool, Opt("--augment/--no-augment", help="Random flip, small "
                                 "rotation/zoom/contrast.", default_text="on")] = True,
    images: Images = None,
    cache: Annotated[Optional[str], Opt("--cache", help="The cache the head was trained on, if it "
                                                              "moved.")] = None,
    out: Out("The run folder.", "<runs-dir>/<timestamp>-finetune", short=False) = None,
    runs_dir: RunsDir = Path(defaults.RUNS_DIR),
    seed: Annotated[int, Opt("--seed", help="Seed of the shuffling and augmentation.")] = 0,
    patience: Annotated[int, Opt("--patience", help="Epochs without val-loss "
                                 "improvement before stopping. The model kept is the best by val accuracy (ties: "
                                 "val loss) of every epoch and the warm start, so it is never worse than the "
                                 "starting head.")] = defaults.FINETUNE_PATIENCE,
    resume: Annotated[bool, Opt("--resume", help="Continue an interrupted fine-tune (the one in --out, or "
                                                        "the newest unfinished one).")] = False,
    devices: Annotated[Optional[str], Opt("--devices", help="all, or indices like 0,1: train on several GPUs "
                                          "with MirroredStrategy; --batch-size is per device.")] = None,
    tensorboard: TensorBoard = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Fine-tune backbone + head end to end on the images, warm-started from a dense head."""
    from headstart.embedder.devices import parse_devices
    from headstart.heads.finetune import FinetuneOptions, finetune as run_finetune
    from headstart.heads.summaries import finetune as summary

    options = FinetuneOptions(from_run=from_run, runs_dir=runs_dir, unfreeze=unfreeze, epochs=epochs, lr=lr,
                              batch_size=batch_size, augment=augment, images=images, cache=cache, out=out, seed=seed,
                              patience=patience, resume=resume, devices=parse_devices(devices),
                              tensorboard=tensorboard, progress=not quiet and not as_json)
    report = run_finetune(options, log=_log(quiet, as_json))
    if as_json:
        _emit_json(report.to_dict())
    else:
        _show(summary(report), quiet)


# -------------------------------------------------------------------- predict, export


@app.command("predict")
def predict(
    inputs: Annotated[List[str], typer.Argument(help="Image files and/or folders (or URLs).")],
    run: Annotated[Optional[Path], Opt("--run", help="A head or fine-tuned run.", default_text=(
        "the best run under --runs-dir, if all of them are of one data set (or of the classes of a labelled "
        "folder given)"))] = None,
    out: Out("Write the predictions here instead of stdout.") = None,
    fmt: Annotated[Optional[str], Opt("--format", choices=("csv", "json"), help="Format of the predictions.",
                                      default_text="by --out's extension, else csv")] = None,
    top_k: Annotated[int, Opt("--top-k", help="How many classes to list per "
                              "image.")] = defaults.TOP_K,
    min_prob: Annotated[Optional[float], Opt("--min-prob", help="Label an image 'unknown' when its top "
                                             "class is less probable than P (a hot dog is not an ant).")] = None,
    batch_size: Annotated[int, Opt("--batch-size",
                                   help="Images per batch.")] = defaults.PREDICT_BATCH_SIZE,
    cache: Annotated[List[str], Opt("--cache", help="Look features up in this cache first (repeatable); it "
                                    "must be of the run's backbone.")] = [],  # noqa: B006 - Typer's list default
    no_cache: Annotated[bool, Opt("--no-cache", help="Push every image through the backbone.")] = False,
    runtime: Annotated[str, Opt("--runtime", choices=RUNTIME_CHOICES,
                                help="As for `embed run` (jax/torch: head runs; the pixels and the "
                                     "precision follow the run's own: a bf16 run needs OpenVINO and a bf16 "
                                     "CPU).")] = defaults.RUNTIME,
    devices: Annotated[Optional[str], Opt("--devices", help="all, or indices like 0,1, as for `embed "
                                                                  "run`.")] = None,
    workers: Annotated[Optional[int], Opt("--workers", help="Decoding threads.",
                                          default_text="the number of cores")] = None,
    runs_dir: RunsDir = Path(defaults.RUNS_DIR),
    quiet: Quiet = False,
    as_json: Annotated[bool, Opt("--json", help="Print a summary as JSON on stdout (counts, failures, "
                                                       "timing; the predictions too unless --out).")] = False,
) -> None:
    """Class probabilities for images: path, top-1 label, its probability, the top-k.

    Exit 1 when some files could not be used (they are listed).
    """
    from headstart.embedder.devices import parse_devices
    from headstart.heads.inference import PredictOptions, predict_images, prediction_format, write_predictions
    from headstart.heads.summaries import predict as summary

    fmt = prediction_format(fmt, out)
    chosen = _run_for_predict(run, runs_dir, inputs, _log(quiet, as_json))
    options = PredictOptions(top_k=top_k, batch_size=batch_size, caches=cache, use_cache=not no_cache,
                             runtime=runtime, devices=parse_devices(devices), workers=workers, min_prob=min_prob,
                             progress=not quiet and not as_json)
    report = predict_images(inputs, chosen, options, log=_log(quiet, as_json))
    text = write_predictions(report, out, fmt)
    if as_json:
        data = report.to_dict()
        if out is not None:
            data.pop("predictions")
        _emit_json(data)
    elif text is not None:
        typer.echo(text, nl=False)
    _show(summary(report, quiet or as_json), True)
    raise typer.Exit(report.exit_code)


def _run_for_predict(run, runs_dir, inputs, log):
    """The run named, else the one choose_run picks (for one labelled folder: of its classes)."""
    from headstart.heads.choose import choose_run
    from headstart.heads.runs import load_run

    if run is not None:
        return load_run(run)
    classes = None
    if len(inputs) == 1:
        from headstart.embedder.discovery import discover
        from headstart.embedder.errors import UsageError
        from headstart.embedder.storage import location

        folder = location(inputs[0])
        if folder.is_dir():
            try:
                classes = discover(folder).classes or None
            except UsageError:
                classes = None
    return choose_run(runs_dir, classes=classes, log=log)


@app.command("export")
def export(
    run: Annotated[Path, typer.Argument(help="A dense head or fine-tuned run folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the model, labels.txt and export.json "
                                                              "into.")],
    fmt: Annotated[str, Opt("--format", choices=("keras", "savedmodel", "tflite"),
                            help="The model's format.")] = "keras",
    as_json: Json = False,
) -> None:
    """One self-contained model: any-size RGB images [0, 255] -> class probabilities, plus labels.txt."""
    from headstart.heads.export import FORMATS, export_run
    from headstart.heads.runs import load_run

    if fmt not in FORMATS:
        raise HeadstartError(f"unsupported export format {fmt!r}; use one of {', '.join(FORMATS)}")
    info = export_run(load_run(run), fmt, out)
    if as_json:
        _emit_json(info)
    else:
        typer.echo(f"exported {info['artifact']} ({fmt}; input {info['input']['shape']} RGB 0-255, "
                   f"{info['input']['resize']}; {len(info['classes'])} classes in {Path(out) / 'labels.txt'})")


# ----------------------------------------------------------------------------- eval


@app.command("eval")
def eval_images(
    run: Annotated[Path, typer.Argument(help="A head or fine-tuned run folder.")],
    images: Annotated[str, typer.Argument(help="Labelled images of exactly the run's classes: class folders, "
                                               "train/val/test folders, or (with --manifest) the folder its paths "
                                               "are relative to.")],
    manifest: Annotated[Optional[str], Opt("--manifest", help="CSV of path,label[,split] (paths relative to "
                                                                    "IMAGES) instead of folders.")] = None,
    split: Annotated[str, Opt("--split", choices=("all", "train", "val", "test"),
                              help="Only the images the layout or manifest files under this split.")] = "all",
    out: Out("Where to write metrics and plots.", "RUN/evals/<timestamp>-<folder>[-<split>]/") = None,
    cache: Annotated[List[str], Opt("--cache", help="Head runs: look features up in this cache first "
                                    "(repeatable); it must be of the run's backbone.")] = [],  # noqa: B006
    no_cache: Annotated[bool, Opt("--no-cache", help="Push every image through the backbone.")] = False,
    cache_dir: Annotated[str, Opt("--cache-dir", help="Caches searched for the images' features (head "
                                                      "runs), besides the run's own.")] = defaults.CACHE_DIR,
    runtime: Annotated[str, Opt("--runtime", choices=("auto", "tf", "litert"),
                                help="As for `embed run`.")] = defaults.RUNTIME,
    batch_size: Annotated[int, Opt("--batch-size", help="Images per batch.")] = defaults.PREDICT_BATCH_SIZE,
    workers: Annotated[Optional[int], Opt("--workers", help="Decoding threads.",
                                          default_text="the number of cores")] = None,
    devices: Annotated[Optional[str], Opt("--devices", help="all, or indices like 0,1, as for `embed "
                                                                  "run`.")] = None,
    quiet: Quiet = False,
    as_json: Json = False,
) -> None:
    """Evaluate any run, head or fine-tuned, on labelled images: metrics, confusion.png, the mistakes as pictures.

    Images go through the run's own pixel rule and backbone (features of images already in a cache of its backbone
    are read from there). One example per distinct image, as `head eval` counts. Exit 2 when the images' classes
    are not the run's; exit 1 when files were skipped, images are filed under two classes, or some were in the
    run's training split.
    """
    from headstart.embedder.devices import parse_devices
    from headstart.heads.evaluate_images import EvalImagesOptions, evaluate_images
    from headstart.heads.runs import load_run
    from headstart.heads.summaries import eval_images as summary

    options = EvalImagesOptions(manifest=manifest, split=split, out=out, caches=cache, cache_dir=Path(cache_dir),
                                use_cache=not no_cache, runtime=runtime, batch_size=batch_size, workers=workers,
                                devices=parse_devices(devices), progress=not quiet and not as_json)
    report = evaluate_images(load_run(run), images, options, log=_log(quiet, as_json))
    if as_json:
        _emit_json(report.to_dict())
    else:
        _show(summary(report), quiet)
    raise typer.Exit(report.exit_code)


# --------------------------------------------------------------------------- cache


@cache_app.command("list")
def cache_list(
    cache_dir: Annotated[str, Opt("--cache-dir", help="The cache folder.")] = defaults.CACHE_DIR,
    as_json: Json = False,
) -> None:
    """The caches (images, backbone, rows, size, last used) and the converted backbones kept in $HEADSTART_HOME.

    Exit 1 when a *.h5 file in the cache folder is not a readable cache.
    """
    from headstart.embedder.errors import EXIT_ATTENTION
    from headstart.embedder.housekeeping import survey
    from headstart.embedder.summaries import cache_list as summary

    found = survey(cache_dir)
    if as_json:
        _emit_json(found.to_dict())
    else:
        _show(summary(found))
    raise typer.Exit(EXIT_ATTENTION if found.unreadable else EXIT_OK)


@cache_app.command("clean")
def cache_clean(
    cache_dir: Annotated[str, Opt("--cache-dir", help="The cache folder.")] = defaults.CACHE_DIR,
    dry_run: Annotated[bool, Opt("--dry-run", help="Say what would be removed, and how much space, and "
                                                   "remove nothing.")] = False,
    unused_days: Annotated[float, Opt("--unused-days", help="Age past which an orphaned converted backbone or an "
                                                            "interrupted run's parts may go.")]
    = defaults.CLEAN_UNUSED_DAYS,
    as_json: Json = False,
) -> None:
    """Remove orphaned converted backbones, stale part folders and lock files, and old cache/litert/ flatbuffers.

    Never a finished cache, nor anything of a cache a writer is filling. A converted backbone goes when no cache in
    the cache folder was made with its network and it was not loaded for --unused-days; an interrupted run's parts
    (<cache>.parts/) go when untouched that long (until then, rerunning its command resumes it); a lock file goes
    when no process holds it; cache/litert/ (kept by earlier versions) always goes.
    """
    from headstart.embedder.housekeeping import clean
    from headstart.embedder.summaries import cache_clean as summary

    report = clean(cache_dir, unused_days, dry_run=dry_run)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _show(summary(report))


# --------------------------------------------------------------------------- report


@app.command("report")
def report(
    run: Annotated[Path, typer.Argument(help="A head or fine-tuned run folder.")],
    out: Out("HTML file to write.", "RUN/report.html") = None,
    reports: Annotated[Optional[Path], Opt("--reports", help="Folder of `inspect` reports to include.",
                                           default_text="reports/ beside the runs folder, or in the working "
                                                        "folder")] = None,
    images: Images = None,
    quiet: Annotated[bool, Opt("--quiet", "-q", help="Print only problems.")] = False,
    as_json: Annotated[bool, Opt("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Write a run's report.html: metrics, per-class table, plots, mistakes as pictures, inspect findings.

    One self-contained file (images inlined), readable offline in any browser.
    """
    from headstart.heads.run_report import write_run_report
    from headstart.heads.summaries import run_report as summary

    result = write_run_report(run, out=out, reports_dir=reports, images=images)
    if as_json:
        _emit_json(result.to_dict())
    else:
        _show(summary(result), quiet)
    raise typer.Exit(result.exit_code)


# ------------------------------------------------------------------------ reference


def cli_reference(width: int = 100) -> str:
    """Every command's --help as one Markdown page: docs/cli.md is this text (a test checks it).

    Regenerate it with
    ``python -c "from headstart.cli import cli_reference; print(cli_reference(), end='')" > docs/cli.md``.
    """
    root = typer.main.get_command(app)
    sections = ["# Command-line reference\n\nGenerated from `headstart --help` and every command's `--help` "
                "(`headstart.cli.cli_reference`); `tests/test_docs.py` fails when it differs, so it cannot drift.\n"]

    def walk(command, name: str, parent) -> None:
        settings = dict(command.context_settings or {}, terminal_width=width, max_content_width=width)
        ctx = typer.Context(command, info_name=name, parent=parent, **settings)
        title = ctx.command_path
        sections.append(f"## `{title}`\n\n```\n{command.get_help(ctx).rstrip()}\n```\n")
        if hasattr(command, "list_commands"):  # a group (Typer's vendored click)
            for sub in command.list_commands(ctx):
                walk(command.get_command(ctx, sub), sub, ctx)

    walk(root, "headstart", None)
    return "\n".join(sections)


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
