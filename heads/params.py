"""Hyper-parameters of a head: one validated record, defaults per head type.

Options that do not apply to the chosen head are refused rather than silently ignored
(``--hidden`` with ``--head logreg`` is a contradiction, exit 2), so a run's recorded
``params`` always describe what actually trained.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from headstart.embedder.errors import UsageError

from .splits import check_val_fraction

HEAD_TYPES = ("dense", "logreg", "svm", "knn")
CLASS_WEIGHTS = ("none", "balanced")

# C for the linear heads. logreg keeps scikit-learn's 1.0. For the SVM, 0.01 was as accurate
# or better than LinearSVC's 1.0 on hymenoptera (0.948 vs 0.935 val) and on 40,000 x 1,280
# synthetic pooled features (0.944 vs 0.909), and converges ~5x faster.
DEFAULT_C = {"logreg": 1.0, "svm": 0.01}
COMMON = ("seed", "val_fraction", "standardize", "class_weight", "views")
APPLIES = {
    "dense": COMMON + ("epochs", "batch_size", "lr", "hidden", "dropout", "l2", "label_smoothing", "patience"),
    "logreg": COMMON + ("C", "max_iter"),
    "svm": COMMON + ("C", "max_iter"),
    "knn": ("seed", "val_fraction", "standardize", "views", "k"),
}
FLAGS = {
    "seed": "--seed", "val_fraction": "--val-fraction", "standardize": "--standardize",
    "class_weight": "--class-weight", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
    "hidden": "--hidden", "dropout": "--dropout", "l2": "--l2", "label_smoothing": "--label-smoothing",
    "patience": "--patience", "C": "--C", "max_iter": "--max-iter", "k": "--k", "views": "--views",
}


@dataclass
class HeadParams:
    head_type: str = "dense"
    seed: int = 0
    val_fraction: float = 0.2
    # Off by default: on the hymenoptera set (MobileNetV2 features) it cost every head type
    # 0-2 points of val accuracy; it stays an option for features of very unequal scales.
    standardize: bool = False
    class_weight: str = "none"
    # Augmented views of the training images (from `embed run --views K`) trained on beside
    # the clean rows: 0 = none, -1 = all the cache holds, N = the first N of each image.
    views: int = 0
    # dense
    epochs: int = 50
    batch_size: int | None = None  # None: chosen from the training-set size (see dense.auto_batch_size)
    lr: float = 1e-3
    hidden: tuple[int, ...] = (1024,)
    dropout: float = 0.5
    l2: float = 0.0
    label_smoothing: float = 0.0
    patience: int = 10  # epochs without val-loss improvement; 0 = no early stopping
    # logreg / svm
    C: float | None = None  # None: DEFAULT_C of the head
    max_iter: int = 1000
    # knn
    k: int | None = None  # None: min(10, training rows)
    given: tuple[str, ...] = field(default=(), repr=False)  # the options the user set explicitly

    def to_record(self) -> dict[str, Any]:
        """The hyper-parameters that apply to this head, as head.json stores them."""
        values = asdict(self)
        record = {"head_type": self.head_type}
        for name in APPLIES[self.head_type]:
            value = values[name]
            record[name] = list(value) if isinstance(value, tuple) else value
        return record

    def describe(self) -> str:
        return describe_params(self.to_record())


def parse_hidden(values: Iterable[str | int] | str | int | None) -> tuple[int, ...] | None:
    """``1024`` | ``512,256`` | ``512x256`` | repeated values -> layer widths; ``0`` -> linear."""
    if values is None:
        return None
    if isinstance(values, (str, int)):
        values = [values]
    widths: list[int] = []
    for value in values:
        for part in str(value).replace("x", ",").replace("+", ",").split(","):
            part = part.strip()
            if not part:
                continue
            try:
                width = int(part)
            except ValueError:
                raise UsageError(f"--hidden takes layer widths like 1024 or 512,256 (0 = linear), got {value!r}") from None
            if width < 0:
                raise UsageError(f"--hidden widths must be >= 0, got {width}")
            widths.append(width)
    if not widths:
        raise UsageError("--hidden needs at least one width (0 = linear)")
    if 0 in widths and len(widths) > 1:
        raise UsageError(f"--hidden 0 means a linear head; it cannot be combined with other widths ({values})")
    return () if widths == [0] else tuple(widths)


def make_params(head_type: str = "dense", **options: Any) -> HeadParams:
    """Validated parameters; ``options`` holds what the user set (None = not set)."""
    head_type = str(head_type).strip().lower()
    if head_type not in HEAD_TYPES:
        raise UsageError(f"unknown head {head_type!r}; use one of {', '.join(HEAD_TYPES)}")
    given = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(set(given) - set(FLAGS))
    if unknown:
        raise ValueError(f"unknown head option {unknown[0]!r}")
    wrong = [name for name in given if name not in APPLIES[head_type]]
    if wrong:
        users = [h for h in HEAD_TYPES if wrong[0] in APPLIES[h]]
        raise UsageError(f"{FLAGS[wrong[0]]} does not apply to --head {head_type} (only to "
                         f"{', '.join(users)}); drop it or choose another head")
    values = dict(given)
    if "hidden" in values:
        values["hidden"] = parse_hidden(values["hidden"])
    if head_type in DEFAULT_C:
        values.setdefault("C", DEFAULT_C[head_type])
    params = HeadParams(head_type=head_type, given=tuple(sorted(given)), **values)
    _validate(params)
    return params


def _validate(p: HeadParams) -> None:
    def need(ok: bool, message: str) -> None:
        if not ok:
            raise UsageError(message)

    p.val_fraction = check_val_fraction(p.val_fraction)
    need(isinstance(p.seed, int) and p.seed >= 0, f"--seed must be a non-negative integer, got {p.seed}")
    p.class_weight = str(p.class_weight).lower()
    need(p.class_weight in CLASS_WEIGHTS, f"--class-weight must be none or balanced, got {p.class_weight!r}")
    need(int(p.epochs) >= 1, f"--epochs must be at least 1, got {p.epochs}")
    need(p.batch_size is None or int(p.batch_size) >= 1, f"--batch-size must be at least 1, got {p.batch_size}")
    need(_finite(p.lr) and p.lr > 0, f"--lr must be a positive number, got {p.lr}")
    need(_finite(p.dropout) and 0 <= p.dropout < 1, f"--dropout must be in [0, 1), got {p.dropout}")
    need(_finite(p.l2) and p.l2 >= 0, f"--l2 must be >= 0, got {p.l2}")
    need(_finite(p.label_smoothing) and 0 <= p.label_smoothing < 1,
         f"--label-smoothing must be in [0, 1), got {p.label_smoothing}")
    need(int(p.patience) >= 0, f"--patience must be >= 0 (0 = no early stopping), got {p.patience}")
    need(p.C is None or (_finite(p.C) and p.C > 0), f"--C must be a positive number, got {p.C}")
    need(int(p.max_iter) >= 1, f"--max-iter must be at least 1, got {p.max_iter}")
    need(p.k is None or int(p.k) >= 1, f"--k must be at least 1, got {p.k}")
    need(isinstance(p.views, int) and p.views >= -1, f"--max-views must be at least 1, got {p.views}")
    if p.head_type == "dense" and not p.hidden and "dropout" in p.given and p.dropout > 0:
        raise UsageError("--dropout applies after hidden layers, and --hidden 0 has none; drop one of them")
    if p.head_type == "dense" and "patience" in p.given and p.patience > 0 and p.patience >= p.epochs:
        raise UsageError(f"--patience {p.patience} can never trigger within --epochs {p.epochs}; "
                         f"use --patience 0 to turn early stopping off")


def views_option(views: bool, max_views: int | None) -> int | None:
    """``--views [--max-views N]`` as the ``views`` parameter (None when not asked for)."""
    if max_views is not None:
        if not views:
            raise UsageError("--max-views applies with --views; add --views")
        if max_views < 1:
            raise UsageError(f"--max-views must be at least 1, got {max_views}")
        return int(max_views)
    return -1 if views else None


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


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
        if name in skip_default and value == skip_default[name]:
            continue
        if name == "hidden":
            value = "x".join(str(v) for v in value) if value else "0"
        elif name == "standardize":
            parts.append("std")
            continue
        elif name == "views" and value == -1:
            value = "all"
        elif isinstance(value, float):
            value = f"{value:g}"
        parts.append(f"{label}={value}")
    return " ".join(parts)
