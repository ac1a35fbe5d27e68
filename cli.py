"""headstart's command line: a thin Typer layer. It parses, calls one function, formats.

Nothing here imports TensorFlow at module level, so ``--help`` and usage errors answer
instantly. Errors a user can act on (:class:`embedder.errors.HeadstartError`) print one
line and exit with their code (2 bad usage/input, 1 needs attention); anything else is a
bug, printed as one line too unless ``--debug`` asks for the traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from embedder.errors import EXIT_OK, HeadstartError

app = typer.Typer(
    name="headstart",
    help="Transfer learning on images: embed once with a frozen backbone, then train heads in seconds.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
embed_app = typer.Typer(help="Run a frozen backbone over images into an HDF5 cache.", no_args_is_help=True)
head_app = typer.Typer(help="Train and compare heads on a cache.", no_args_is_help=True)
app.add_typer(embed_app, name="embed")
app.add_typer(head_app, name="head")

EXIT_INTERNAL = 3
_state = {"debug": False}


def _err(message: str) -> None:
    typer.echo(message, err=True)


def _emit_json(data: dict) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for unexpected errors."),
) -> None:
    _state["debug"] = debug


# ---------------------------------------------------------------------------- embed


@embed_app.command("run")
def embed_run(
    images: Path = typer.Argument(..., help="Folder of images: class folders, train/val/test folders, or loose files."),
    backbone: str = typer.Option("MobileNetV2", "--backbone", "-b",
                                 help="A registered name (see `embed backbones`) or a .keras model file."),
    weights: str = typer.Option("imagenet", help="imagenet (downloads once), none (random, from --seed), or a weights file."),
    alpha: Optional[float] = typer.Option(None, help="Width multiplier for MobileNet families (e.g. 0.35)."),
    layer: Optional[str] = typer.Option(None, help="Take features from this layer instead of the backbone's output."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Square input size; default: the backbone's native size."),
    pooling: str = typer.Option("avg", help="avg, max, or flatten (flatten keeps the whole last feature map: big)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per forward pass (also the most a crash can lose)."),
    cache: Optional[Path] = typer.Option(None, help="Cache file; default: cache/<folder>-<backbone>-<id>.h5."),
    cache_dir: Path = typer.Option(Path("cache"), "--cache-dir", help="Where default cache files go."),
    dtype: str = typer.Option("float16", help="Storage dtype of the features: float16 or float32."),
    manifest: Optional[Path] = typer.Option(None, help="CSV of path,label[,split] (paths relative to IMAGES)."),
    seed: int = typer.Option(0, help="Seed for --weights none."),
    workers: Optional[int] = typer.Option(None, help="Parallel decode calls; default: the number of cores."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars; print only problems."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Embed every image once; reruns embed only what is new, and resume after a crash."""
    from embedder.backbones import BackboneConfig
    from embedder.job import EmbedOptions, run_embedding

    config = BackboneConfig(backbone=backbone, weights=weights, image_size=image_size, pooling=pooling,
                            layer=layer, alpha=alpha, seed=seed)
    options = EmbedOptions(cache=cache, cache_dir=cache_dir, dtype=dtype, batch_size=batch_size,
                           manifest=manifest, parallelism=workers, progress=not quiet and not as_json)
    log = (lambda m: None) if (quiet or as_json) else _err
    report = run_embedding(images, config, options, log=log)
    if as_json:
        _emit_json(report.to_dict())
    else:
        _print_embed_report(report, quiet)
    raise typer.Exit(report.exit_code)


def _print_embed_report(report, quiet: bool) -> None:
    from embedder.fingerprint import describe

    out = _err if quiet else typer.echo
    if not quiet:
        rate = f" ({report.rate:.1f} img/s)" if report.embedded else ""
        typer.echo(
            f"embedded {report.embedded:,} new images in {report.embed_s:.1f} s{rate}, after {report.setup_s:.1f} s "
            f"of model set-up; "
            f"reused {report.reused:,}; skipped {len(report.skipped):,}; total {report.elapsed_s:.1f} s"
        )
        extra = f", {report.duplicates:,} duplicate files" if report.duplicates else ""
        typer.echo(f"cache: {report.cache_path} ({report.rows:,} rows for {report.files:,} files{extra}, "
                   f"{report.cache_bytes / 1e6:.1f} MB)")
        typer.echo(f"backbone: {describe(report.fingerprint)}")
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


@embed_app.command("info")
def embed_info(
    cache: Optional[Path] = typer.Argument(None, help="Cache file; default: the newest under ./cache/."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """What a cache holds: fingerprint, counts per class and split, failures, size."""
    from embedder.cache import latest_cache
    from embedder.info import cache_info

    path = cache or latest_cache()
    info = cache_info(path)
    if as_json:
        _emit_json(info)
        return
    typer.echo(f"cache:       {info['path']} ({info['size_bytes'] / 1e6:.1f} MB on disk, format {info['format_version']})")
    typer.echo(f"backbone:    {info['fingerprint_text']}")
    typer.echo(f"images:      {info['images_root']} ({info['layout'] or 'layout unknown'})")
    typer.echo(f"features:    {info['rows']:,} rows x {info['dim']:,} {info['storage_dtype']}")
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
    from embedder.backbones import registry_table

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


@head_app.command("train")
def head_train() -> None:
    """Train a head on a cache (not yet available)."""
    raise HeadstartError("`headstart head train` is not yet available in this version")


@app.command("finetune")
def finetune() -> None:
    """Fine-tune backbone + head end to end on the images (not yet available)."""
    raise HeadstartError("`headstart finetune` is not yet available in this version")


# ----------------------------------------------------------------------------- main


def main(argv: Optional[List[str]] = None) -> int:
    """Console entry point: run the app, turning errors into one line and an exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="headstart", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except HeadstartError as exc:
        _err(f"headstart: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _err("headstart: interrupted; finished batches are kept, rerun the same command to resume")
        return 130
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
    return result if isinstance(result, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
