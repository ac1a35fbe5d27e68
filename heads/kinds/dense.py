"""``--head dense``: a Keras MLP, [standardise] -> Dense(relu) -> Dropout ... -> Dense(C, softmax).

The saved ``model.keras`` takes the pooled feature vector ``[D]`` (float32) and returns
class probabilities ``[C]``; standardisation, when used, is its first layer, so
``head(backbone(images))`` is the whole classifier (what ``finetune`` and ``export`` build).
The model and its fast training loop live in :mod:`heads.dense`; this module is the kind:
its hyper-parameters, their checks, and the run-folder protocol.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Iterable

import numpy as np

from headstart.embedder.errors import UsageError

from .base import (CLASS_WEIGHT, FitReport, Head, ModelFileError, Option, balanced_class_weights,
                   check_class_weight, finite_number, need)

MODEL_FILE = "model.keras"


def parse_hidden(values: Iterable[str | int] | str | int | None) -> tuple[int, ...] | None:
    """``1024`` | ``512,256`` | ``512x256`` | repeated values | a tuple of widths -> layer widths;
    ``0`` (or an empty tuple) -> linear."""
    if values is None:
        return None
    if isinstance(values, tuple) and not values:
        return ()
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


class DenseHead(Head):
    name = "dense"
    summary = "Keras MLP"
    model_file = MODEL_FILE
    uses_validation = True
    has_epochs = True
    options = {
        "epochs": Option("--epochs", "most epochs; early stopping may end sooner", int, int),
        "batch_size": Option("--batch-size", "rows per step", int, int),
        "lr": Option("--lr", "Adam learning rate", float, float, example="1e-3,3e-4"),
        "hidden": Option("--hidden", "hidden layer widths; 0 = linear", parse_hidden, str, multiple=True,
                         example="1024,512x256,0 (x joins the layers of one head)"),
        "dropout": Option("--dropout", "dropout after each hidden layer", float, float),
        "l2": Option("--l2", "L2 penalty on the kernels", float, float),
        "label_smoothing": Option("--label-smoothing", "label smoothing of the cross-entropy", float, float),
        "patience": Option("--patience", "epochs without val-loss improvement before stopping; the best "
                                         "epoch's weights are kept; 0 = no early stopping", int, int),
        "class_weight": CLASS_WEIGHT,
    }
    default_text: ClassVar[dict] = {"batch_size": "the smallest of 32..1024 giving <= 16 steps an epoch"}

    def __init__(self, epochs: int = 50, batch_size: int | None = None, lr: float = 1e-3,
                 hidden: tuple[int, ...] = (1024,), dropout: float = 0.5, l2: float = 0.0,
                 label_smoothing: float = 0.0, patience: int = 10, class_weight: str = "none"):
        self.epochs = epochs
        self.batch_size = batch_size  # None: heads.dense.auto_batch_size of the training rows
        self.lr = lr
        self.hidden = hidden
        self.dropout = dropout
        self.l2 = l2
        self.label_smoothing = label_smoothing
        self.patience = patience  # measured in epochs; 0 = off
        self.class_weight = class_weight

    def check(self, given=frozenset()) -> None:
        self.hidden = parse_hidden(self.hidden)
        need(int(self.epochs) >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.batch_size is None or int(self.batch_size) >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(finite_number(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        need(finite_number(self.dropout) and 0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}")
        need(finite_number(self.l2) and self.l2 >= 0, f"--l2 must be >= 0, got {self.l2}")
        need(finite_number(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        need(int(self.patience) >= 0, f"--patience must be >= 0 (0 = no early stopping), got {self.patience}")
        check_class_weight(self)
        if not self.hidden and "dropout" in given and self.dropout > 0:
            raise UsageError("--dropout applies after hidden layers, and --hidden 0 has none; drop one of them")
        if "patience" in given and self.patience > 0 and self.patience >= self.epochs:
            raise UsageError(f"--patience {self.patience} can never trigger within --epochs {self.epochs}; "
                             f"use --patience 0 to turn early stopping off")

    @classmethod
    def preload(cls) -> None:
        from headstart.embedder.tf_runtime import import_tf

        import_tf()

    def fit(self, X, y, *, num_classes, seed=0, standardizer=None, validation=None, on_epoch=None) -> "DenseHead":
        from ..dense import train_dense

        y = np.asarray(y, dtype=np.int64)
        x_val, y_val = validation if validation is not None else (np.zeros((0, X.shape[1]), np.float32),
                                                                  np.zeros(0, np.int64))
        weights = balanced_class_weights(y, num_classes) if self.class_weight == "balanced" else None
        fit = train_dense(X, y, x_val, y_val, num_classes, epochs=int(self.epochs), batch_size=self.batch_size,
                          lr=float(self.lr), hidden=tuple(parse_hidden(self.hidden)), dropout=float(self.dropout),
                          l2=float(self.l2), label_smoothing=float(self.label_smoothing),
                          patience=int(self.patience), seed=int(seed), class_weights=weights,
                          standardizer=standardizer, on_epoch=on_epoch)
        self.model_ = fit.model
        self.batch_size_ = fit.batch_size
        self.report_ = FitReport(history=fit.history, best_epoch=fit.best_epoch, epochs_run=fit.epochs_run,
                                 stopped_early=fit.stopped_early)
        return self

    def fitted_params(self) -> dict[str, Any]:
        record = super().fitted_params()
        if hasattr(self, "batch_size_"):
            record["batch_size"] = self.batch_size_
        return record

    def predict_proba(self, X) -> np.ndarray:
        mlp = getattr(self, "_mlp", None)
        if mlp is not None:  # a loaded head: numpy, no TensorFlow (heads.kinds.keras_mlp)
            return mlp.predict_proba(X)
        from ..dense import predict_keras

        return predict_keras(self.model_, X)

    def save(self, folder) -> str:
        self.model_.save(Path(folder) / MODEL_FILE)
        return MODEL_FILE

    @classmethod
    def load(cls, folder, model_file: str | None = None) -> "DenseHead":
        """Read without Keras when the file is the chain headstart builds (it predicts in
        numpy, equal to Keras within float32 rounding); the Keras model itself loads on first
        use of :attr:`model_` (fine-tuning, export). Any other file loads with Keras now."""
        from .keras_mlp import Damaged, Unsupported, read_keras_mlp

        path = Path(folder) / (model_file or MODEL_FILE)
        head = cls()
        head._path = path
        try:
            head._mlp = read_keras_mlp(path)
        except Damaged as exc:
            raise ModelFileError(f"cannot be loaded ({exc})") from None
        except Unsupported:
            head.model_ = _load_keras(path)
        return head

    @property
    def model_(self):
        """The Keras model (loaded from the run folder on first use by a loaded head)."""
        if getattr(self, "_keras", None) is None and getattr(self, "_path", None) is not None:
            self._keras = _load_keras(self._path)
        if getattr(self, "_keras", None) is None:
            raise AttributeError("model_")  # unfitted, as scikit-learn's fitted attributes
        return self._keras

    @model_.setter
    def model_(self, model) -> None:
        self._keras, self._mlp = model, None  # a freshly fitted model predicts through Keras

    @property
    def feature_dim_(self) -> int:
        mlp = getattr(self, "_mlp", None)
        if mlp is not None:
            return mlp.feature_dim
        return int(self.model_.inputs[0].shape[-1])


def _load_keras(path: Path):
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        lines = str(exc).strip().splitlines()
        raise ModelFileError(f"cannot be loaded ({type(exc).__name__}: "
                             f"{lines[0][:200] if lines else ''})") from None
