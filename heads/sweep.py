"""``head sweep``: many heads and settings on one in-memory copy of the features.

Each option takes a comma-separated list of alternatives (``--head dense,logreg --lr
1e-3,3e-4``; hidden layers inside one alternative are joined with ``x``: ``--hidden
1024,512x256,0``). Every head type gets the cartesian product of the options that apply to
it; an option that applies to none of the chosen heads is an error. All runs share one
split (from the first ``--seed``), so the leaderboard compares like with like.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from headstart.embedder.errors import EXIT_ATTENTION, EXIT_OK, UsageError

from .data import load_labelled
from .leaderboard import leaderboard_rows, sort_rows
from .params import APPLIES, FLAGS, HEAD_TYPES, HeadParams, make_params, parse_hidden
from .runs import timestamp
from .train import TrainReport, resolve_cache, train_on

_PARSERS: dict[str, Callable[[str], Any]] = {
    "epochs": int, "batch_size": int, "lr": float, "dropout": float, "l2": float, "label_smoothing": float,
    "patience": int, "C": float, "max_iter": int, "k": int, "seed": int, "class_weight": str,
    "hidden": parse_hidden, "standardize": lambda v: _parse_bool(v), "views": lambda v: _parse_views(v),
}


def _parse_views(value: str) -> int:
    """``0``/``none`` (clean rows only), ``all`` (every cached view), or ``N`` (the first N)."""
    text = value.strip().lower()
    if text in ("none", "off"):
        return 0
    if text == "all":
        return -1
    views = int(text)
    if views < 0:
        raise ValueError(text)
    return views


def _parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise UsageError(f"--standardize takes on/off values, got {value!r}")


def parse_grid(options: dict[str, str | None]) -> dict[str, list]:
    """{"lr": "1e-3,3e-4"} -> {"lr": [0.001, 0.0003]}; None values are dropped."""
    grid: dict[str, list] = {}
    for name, text in options.items():
        if text is None:
            continue
        if name == "head":
            values = [v.strip().lower() for v in str(text).split(",") if v.strip()]
            bad = [v for v in values if v not in HEAD_TYPES]
            if bad or not values:
                raise UsageError(f"--head takes a list of {', '.join(HEAD_TYPES)}, got {text!r}")
            grid["head"] = list(dict.fromkeys(values))
            continue
        parse = _PARSERS[name]
        values = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            try:
                values.append(parse(part.strip()))
            except ValueError:
                raise UsageError(f"{FLAGS[name]}: cannot read {part.strip()!r}") from None
        if not values:
            raise UsageError(f"{FLAGS[name]} needs at least one value")
        grid[name] = list(dict.fromkeys(values))
    return grid


def expand(grid: dict[str, list], val_fraction: float | None = None) -> list[HeadParams]:
    """Every setting of the sweep, validated (a bad value fails before anything trains)."""
    grid = dict(grid)
    heads = grid.pop("head", ["dense"])
    unused = [name for name in grid if not any(name in APPLIES[h] for h in heads)]
    if unused:
        raise UsageError(f"{FLAGS[unused[0]]} applies to none of the heads in this sweep ({', '.join(heads)})")
    settings = []
    for head in heads:
        names = [name for name in grid if name in APPLIES[head]]
        for combo in itertools.product(*(grid[name] for name in names)):
            options = dict(zip(names, combo))
            if "hidden" in options:
                options["hidden"] = "x".join(str(w) for w in options["hidden"]) or "0"
            settings.append(make_params(head, val_fraction=val_fraction, **options))
    return settings


@dataclass
class SweepReport:
    out: str
    cache: str
    runs: list[dict]  # TrainReport dicts, in training order
    leaderboard: list[dict]
    total_seconds: float
    warnings: list = field(default_factory=list)
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        return {"out": self.out, "cache": self.cache, "runs": self.runs, "leaderboard": self.leaderboard,
                "total_seconds": self.total_seconds, "warnings": self.warnings, "exit_code": self.exit_code}


def run_sweep(
    grid: dict[str, list],
    cache: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike = "runs",
    val_fraction: float | None = None,
    cache_dir: str | os.PathLike = "cache",
    log: Callable[[str], None] = lambda m: None,
    progress: bool = False,
    sort: str = "accuracy",
) -> SweepReport:
    """Train every setting on one load of the cache; runs go to ``out/NN-<head>``."""
    started = time.perf_counter()
    settings = expand(grid, val_fraction)
    sort_rows([], sort)  # validate --sort before the work
    cache_path = resolve_cache(cache, cache_dir, log)
    first = settings[0]
    data = load_labelled(cache_path, first.val_fraction, first.seed)
    out = Path(out) if out is not None else Path(runs_dir) / f"{timestamp()}-sweep"
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"sweep folder {out} already exists; pass another --out or remove it")
    log(f"sweep: {len(settings)} settings on {len(data.rows('train')):,} training and "
        f"{len(data.rows('val')):,} validation images -> {out}/")
    reports: list[TrainReport] = []
    warnings: list[str] = []
    for i, params in enumerate(settings, start=1):
        log(f"[{i}/{len(settings)}] {params.head_type} {params.describe()}")
        report = train_on(data, params, out / f"{i:02d}-{params.head_type}", log=log, progress=progress)
        reports.append(report)
        warnings.extend(w for w in report.warnings if w not in warnings)
    runs = [(Path(r.run), _meta_of(r)) for r in reports]
    board = sort_rows(leaderboard_rows(runs, base=out), sort)
    return SweepReport(out=str(out), cache=str(cache_path), runs=[r.to_dict() for r in reports], leaderboard=board,
                       total_seconds=time.perf_counter() - started, warnings=warnings,
                       exit_code=EXIT_ATTENTION if any(r.exit_code for r in reports) else EXIT_OK)


def _meta_of(report: TrainReport) -> dict:
    import json

    return json.loads((Path(report.run) / "head.json").read_text(encoding="utf-8"))
