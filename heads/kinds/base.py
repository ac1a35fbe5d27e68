"""Head kinds: the protocol every head follows, and the table that names them.

In the spirit of scikit-learn's estimators:

* a kind's hyper-parameters are the arguments of its ``__init__``, and their defaults live
  there and nowhere else (``__init__`` only stores them; :meth:`Head.check` validates);
* ``fit(X, y, num_classes=...)`` returns the fitted head; learned state ends in ``_``
  (``report_`` holds what the run folder records about the fit);
* ``predict_proba(X) -> [N, C]``; ``save(folder)`` writes the model file and returns its
  name; ``Kind.load(folder, model_file)`` reads a saved head back (it predicts; its
  hyper-parameters are in head.json).

Adding a kind is one module in this package plus one line in :data:`KINDS`, and an
:class:`Option` for each hyper-parameter a user may set on the command line. ``head train``
and ``head sweep`` (their flags and the sweep grid), head.json's ``params``, and the
"--hidden does not apply to --head logreg" errors are all read from this table.

Importing a kind module is cheap: TensorFlow and scikit-learn load inside ``fit``/``load``.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from headstart.embedder.errors import UsageError

# name -> "module:Class". The order is the order of --head's help and of the option flags.
KINDS: dict[str, str] = {
    "dense": "headstart.heads.kinds.dense:DenseHead",
    "logreg": "headstart.heads.kinds.logreg:LogRegHead",
    "svm": "headstart.heads.kinds.svm:SVMHead",
    "knn": "headstart.heads.kinds.knn:KNNHead",
    "ncm": "headstart.heads.kinds.ncm:NCMHead",
}


@dataclass(frozen=True)
class Option:
    """How a user sets one hyper-parameter from the command line.

    ``parse`` reads one value from text (a sweep alternative such as ``512x256``); ``type``
    is what ``head train`` converts its value to; ``multiple``: repeatable in ``head train``
    (``--hidden 512 --hidden 256``), the list is handed to ``parse``.
    """

    flag: str
    help: str
    parse: Callable[[Any], Any] = str
    type: type = str
    multiple: bool = False
    example: str = ""  # alternatives for `head sweep`'s help, e.g. "0.1,1,10"


def _lower(value: Any) -> str:
    return str(value).strip().lower()


# Options several kinds share are declared once, here.
CLASS_WEIGHT = Option("--class-weight", "none or balanced (weights n/(C*n_c) in the training loss)",
                      _lower, str, example="none,balanced")
C_OPTION = Option("--C", "inverse regularisation strength", float, float, example="0.01,0.1,1")
MAX_ITER = Option("--max-iter", "solver iterations", int, int)
CLASS_WEIGHTS = ("none", "balanced")


@dataclass
class FitReport:
    """What a fit tells the run folder besides the model: warnings, solver facts, curves."""

    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)  # head.json's fit_info (iterations, chosen values, ...)
    history: dict | None = None  # per-epoch lists: loss, accuracy, val_loss, val_accuracy
    best_epoch: int | None = None
    epochs_run: int | None = None
    stopped_early: bool | None = None


class Head:
    """The protocol of a head kind (see the module docstring)."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""  # a few words for --head's help
    model_file: ClassVar[str] = "model.npz"
    options: ClassVar[Mapping[str, Option]] = {}  # hyper-parameter -> its flag
    uses_validation: ClassVar[bool] = False  # fit takes the validation rows (early stopping)
    has_epochs: ClassVar[bool] = False  # fit calls on_epoch(epoch, logs) once per epoch

    # ------------------------------------------------------------- hyper-parameters

    @classmethod
    def param_names(cls) -> list[str]:
        """The hyper-parameters: the arguments of ``__init__``, in order."""
        return list(cls.defaults())

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """``{name: default}`` of the hyper-parameters, read from ``__init__``'s signature."""
        return {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.param_names()}

    def clone(self) -> "Head":
        """An unfitted head with the same hyper-parameters (a sweep reuses its settings)."""
        return type(self)(**self.get_params())

    def check(self, given: frozenset[str] | set[str] = frozenset()) -> None:
        """Validate (and normalise) the hyper-parameters; raise UsageError naming the flag.

        ``given``: the names the user set explicitly (some contradictions only matter then).
        """

    def fitted_params(self) -> dict[str, Any]:
        """The hyper-parameters as head.json records them: what actually trained (a value
        chosen during fitting, such as a default batch size or a cross-validated C, resolved)."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in self.get_params().items()}

    # --------------------------------------------------------------------- protocol

    @classmethod
    def preload(cls) -> None:
        """Import the libraries ``fit`` needs, so a fit's timing measures fitting only."""

    def fit(self, X: np.ndarray, y: np.ndarray, *, num_classes: int, seed: int = 0, standardizer=None,
            validation: tuple[np.ndarray, np.ndarray] | None = None,
            on_epoch: Callable[[int, dict], None] | None = None) -> "Head":
        """Fit on training rows ``X [N, D]``, labels ``y [N]`` in ``0..num_classes-1``.

        ``standardizer`` (fitted on the training rows) is applied first and saved with the
        head. ``validation``: the validation rows, given only to kinds that ``uses_validation``.
        """
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def save(self, folder: str | Path) -> str:
        """Write the model file into ``folder``; return its name (head.json's ``model_file``)."""
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | Path, model_file: str | None = None) -> "Head":
        """A saved head, ready to predict. Raises :class:`ModelFileError` if the file is damaged."""
        raise NotImplementedError


class ModelFileError(ValueError):
    """A model file is missing arrays, has the wrong shapes, or is not what it claims."""


# ----------------------------------------------------------------------------- registry


def kind_names() -> tuple[str, ...]:
    return tuple(KINDS)


def get_kind(name: str) -> type[Head]:
    """The class registered as ``name``; an unknown name is a UsageError listing the kinds."""
    key = str(name).strip().lower()
    if key not in KINDS:
        raise UsageError(f"unknown head {name!r}; use one of {', '.join(KINDS)}")
    module, _, attr = KINDS[key].partition(":")
    return getattr(importlib.import_module(module), attr)


def option_table() -> dict[str, tuple[Option, list[str]]]:
    """Every hyper-parameter any kind exposes: name -> (its Option, the kinds that take it).

    Two kinds exposing the same name must declare the same flag (they share one option).
    """
    table: dict[str, tuple[Option, list[str]]] = {}
    for kind_name in KINDS:
        kind = get_kind(kind_name)
        for name, option in kind.options.items():
            if name not in kind.param_names():
                raise TypeError(f"{kind.__name__}.options names {name!r}, which is not an __init__ argument")
            if name in table:
                if table[name][0].flag != option.flag:
                    raise TypeError(f"{name!r} has two flags: {table[name][0].flag} and {option.flag}")
                table[name][1].append(kind_name)
            else:
                table[name] = (option, [kind_name])
    return table


def make_head(name: str, **values: Any) -> Head:
    """An unfitted, validated head of kind ``name``; ``values`` holds what the user set.

    A value for a hyper-parameter the kind does not take is refused, naming the kinds that do
    take it, so a run's recorded params always describe what trained.
    """
    kind = get_kind(name)
    accepted = set(kind.param_names())
    table = option_table()
    for key in values:
        if key not in accepted:
            if key not in table:
                raise ValueError(f"unknown head option {key!r}")
            option, users = table[key]
            raise UsageError(f"{option.flag} does not apply to --head {kind.name} (only to {', '.join(users)}); "
                             f"drop it or choose another head")
    head = kind(**values)
    head.check(frozenset(values))
    return head


# ------------------------------------------------------------------------- small shared helpers


def balanced_class_weights(y: np.ndarray, num_classes: int) -> np.ndarray:
    """'balanced': n / (C * n_c), as scikit-learn and Keras users know it (0 for absent classes)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 0.0)


def need(ok: bool, message: str) -> None:
    """Raise a UsageError with ``message`` unless ``ok`` (for :meth:`Head.check`)."""
    if not ok:
        raise UsageError(message)


def finite_number(value: Any) -> bool:
    try:
        return bool(np.isfinite(float(value)))
    except (TypeError, ValueError):
        return False


def check_class_weight(head: Head) -> None:
    head.class_weight = str(head.class_weight).lower()
    need(head.class_weight in CLASS_WEIGHTS, f"--class-weight must be none or balanced, got {head.class_weight!r}")
