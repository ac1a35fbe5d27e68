"""What to train: a head of some kind (with its hyper-parameters) plus the run-level settings.

The run-level settings apply to every kind: the split (``seed``, ``val_fraction``), feature
standardisation, and the cached augmented views to train on. Everything else is a kind's
hyper-parameter, declared by the kind itself (:mod:`heads.kinds`). Options that do not
apply to the chosen head are refused rather than silently ignored (``--hidden`` with
``--head logreg`` is a contradiction, exit 2), so a run's recorded ``params`` always
describe what actually trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from headstart.embedder.errors import UsageError

from .kinds.base import Head, Option, get_kind, make_head
from .splits import DEFAULT_SEED, DEFAULT_VAL_FRACTION, check_val_fraction


def parse_bool(value: Any) -> bool:
    text = str(value).strip().lower()
    if text in ("on", "true", "yes", "1"):
        return True
    if text in ("off", "false", "no", "0"):
        return False
    raise UsageError(f"--standardize takes on/off values, got {value!r}")


def parse_views(value: Any) -> int:
    """``0``/``none`` (clean rows only), ``all`` (every cached view), or ``N`` (the first N)."""
    text = str(value).strip().lower()
    if text in ("none", "off"):
        return 0
    if text == "all":
        return -1
    views = int(text)
    if views < 0:
        raise ValueError(text)
    return views


# The settings every kind shares (their flags are declared by the commands themselves).
COMMON: dict[str, Option] = {
    "seed": Option("--seed", "seed", int, int, example="0,1,2"),
    "val_fraction": Option("--val-fraction", "validation fraction", float, float),
    "standardize": Option("--standardize", "standardise features", parse_bool, bool, example="on,off"),
    "views": Option("--views", "augmented views per training image", parse_views, int, example="0,4,all"),
}


def _dense() -> Head:
    return get_kind("dense")()


@dataclass
class HeadParams:
    """One validated training setting: ``head`` (an unfitted kind instance) and the run-level settings."""

    head: Head = field(default_factory=_dense)
    seed: int = DEFAULT_SEED
    val_fraction: float = DEFAULT_VAL_FRACTION
    # Off by default: on the hymenoptera set (MobileNetV2 features) it cost every head type
    # 0-2 points of val accuracy; it stays an option for features of very unequal scales.
    standardize: bool = False
    # Augmented views of the training images (from `embed run --views K`) trained on beside
    # the clean rows: 0 = none, -1 = all the cache holds, N = the first N of each image.
    views: int = 0
    given: tuple[str, ...] = field(default=(), repr=False)  # the options the user set explicitly

    @property
    def head_type(self) -> str:
        return self.head.name

    def to_record(self, fitted: Head | None = None) -> dict[str, Any]:
        """The settings as head.json stores them (``fitted``: the trained head, whose record
        holds the values chosen while fitting, e.g. a cross-validated C)."""
        record: dict[str, Any] = {"head_type": self.head_type, "seed": self.seed, "val_fraction": self.val_fraction,
                                  "standardize": self.standardize, "views": self.views}
        record.update((fitted or self.head).fitted_params())
        return record

    def describe(self) -> str:
        return describe_params(self.to_record())


def make_params(head_type: str = "dense", **options: Any) -> HeadParams:
    """Validated parameters; ``options`` holds what the user set (None = not set): the
    run-level settings of :data:`COMMON` and the kind's hyper-parameters."""
    kind = get_kind(head_type)
    given = {name: value for name, value in options.items() if value is not None}
    head = make_head(kind.name, **{name: value for name, value in given.items() if name not in COMMON})
    common = {name: value for name, value in given.items() if name in COMMON}
    params = HeadParams(head=head, given=tuple(sorted(given)), **common)
    params.val_fraction = check_val_fraction(params.val_fraction)
    if not (isinstance(params.seed, int) and params.seed >= 0):
        raise UsageError(f"--seed must be a non-negative integer, got {params.seed}")
    if not (isinstance(params.views, int) and params.views >= -1):
        raise UsageError(f"--max-views must be at least 1, got {params.views}")
    params.standardize = bool(params.standardize)
    return params


def views_option(views: bool, max_views: int | None) -> int | None:
    """``--views [--max-views N]`` as the ``views`` parameter (None when not asked for)."""
    if max_views is not None:
        if not views:
            raise UsageError("--max-views applies with --views; add --views")
        if max_views < 1:
            raise UsageError(f"--max-views must be at least 1, got {max_views}")
        return int(max_views)
    return -1 if views else None


def describe_params(record: Mapping[str, Any]) -> str:
    """A compact one-line summary for tables: ``hidden=1024 drop=0.5 lr=0.001 ...``."""
    short = {"hidden": "hidden", "dropout": "drop", "lr": "lr", "batch_size": "batch", "l2": "l2",
             "label_smoothing": "smooth", "C": "C", "k": "k", "class_weight": "cw", "standardize": "std",
             "epochs": "epochs", "views": "views"}
    skip_default = {"l2": 0.0, "label_smoothing": 0.0, "class_weight": "none", "standardize": False, "views": 0}
    parts = []
    for name, label in short.items():
        if name not in record:
            continue
        value = record[name]
        if value is None or (name in skip_default and value == skip_default[name]):
            continue  # None: chosen while fitting (the fitted record holds the value)
        if name == "hidden":
            value = "x".join(str(v) for v in value) if value else "0"
        elif name == "standardize":
            parts.append("std")
            continue
        elif name == "views" and value == -1:
            value = "all"
        elif isinstance(value, float):
            value = f"{value:g}"
        if name == "C" and record.get("C_chosen_by") not in (None, "--C"):
            value = f"{value} ({record['C_chosen_by']})"
        parts.append(f"{label}={value}")
    return " ".join(parts)
