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

from headstart.embedder.defaults import CACHE_DIR, RUNS_DIR
from headstart.embedder.errors import EXIT_ATTENTION, EXIT_OK, UsageError

from .choose import resolve_cache
from .data import load_labelled
from .kinds.base import Option, get_kind, kind_names, option_table
from .leaderboard import leaderboard_rows, sort_rows
from .params import COMMON, HeadParams, make_params
from .runs import timestamp
from .train import TrainReport, train_on


def grid_options() -> dict[str, Option]:
    """Every option a sweep takes alternatives for: the run-level ones and every kind's."""
    return {**{name: option for name, (option, _) in option_table().items()}, **COMMON}


def parse_grid(options: dict[str, str | None]) -> dict[str, list]:
    """{"lr": "1e-3,3e-4"} -> {"lr": [0.001, 0.0003]}; None values are dropped.

    Each value is read by the parser its kind declared (:class:`heads.kinds.Option`)."""
    known = grid_options()
    grid: dict[str, list] = {}
    for name, text in options.items():
        if text is None:
            continue
        if name == "head":
            values = [v.strip().lower() for v in str(text).split(",") if v.strip()]
            bad = [v for v in values if v not in kind_names()]
            if bad or not values:
                raise UsageError(f"--head takes a list of {', '.join(kind_names())}, got {text!r}")
            grid["head"] = list(dict.fromkeys(values))
            continue
        option = known[name]
        values = []
        for part in str(text).split(","):
            if not part.strip():
                continue
            try:
                values.append(option.parse(part.strip()))
            except ValueError:
                raise UsageError(f"{option.flag}: cannot read {part.strip()!r}") from None
        if not values:
            raise UsageError(f"{option.flag} needs at least one value")
        grid[name] = list(dict.fromkeys(values))
    return grid


def _applies(name: str, head: str) -> bool:
    return name in COMMON or name in get_kind(head).param_names()


def expand(grid: dict[str, list], val_fraction: float | None = None) -> list[HeadParams]:
    """Every setting of the sweep, validated (a bad value fails before anything trains)."""
    grid = dict(grid)
    heads = grid.pop("head", ["dense"])
    unused = [name for name in grid if not any(_applies(name, h) for h in heads)]
    if unused:
        raise UsageError(f"{grid_options()[unused[0]].flag} applies to none of the heads in this sweep "
                         f"({', '.join(heads)})")
    settings = []
    for head in heads:
        names = [name for name in grid if _applies(name, head)]
        for combo in itertools.product(*(grid[name] for name in names)):
            settings.append(make_params(head, val_fraction=val_fraction, **dict(zip(names, combo))))
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
    runs_dir: str | os.PathLike = RUNS_DIR,
    val_fraction: float | None = None,
    cache_dir: str | os.PathLike = CACHE_DIR,
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
        report = train_on(data, params, out / f"{i:02d}-{params.head_type}", log=log, progress=progress,
                          pictures=False)  # `headstart report RUN` draws any of them
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
