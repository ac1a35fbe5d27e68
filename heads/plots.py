"""The two pictures of a run: the confusion matrix and the training curves.

Drawn on a bare ``matplotlib.figure.Figure`` (Agg, no pyplot), so nothing touches a
display or global plotting state, and written crash-safely like every run file.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from headstart.embedder.atomic import atomic_path


def _save(fig, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fig.savefig(fh, format="png", dpi=100)


def confusion_png(path, matrix: np.ndarray, classes: Sequence[str], title: str = "") -> None:
    """Rows: true class; columns: predicted. Colour is the row share, numbers are counts."""
    from matplotlib.figure import Figure

    c = len(classes)
    matrix = np.asarray(matrix, dtype=np.int64).reshape(c, c)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * c + 2.5), 30.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ticks = np.arange(c)
    labels = [name if len(name) <= 18 else name[:17] + "…" for name in classes]
    font = 9 if c <= 20 else 6
    ax.set_xticks(ticks, labels, rotation=90 if c > 6 else 45, ha="right" if c <= 6 else "center", fontsize=font)
    ax.set_yticks(ticks, labels, fontsize=font)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= 30:
        for i in range(c):
            for j in range(c):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=font,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def history_png(path, history: Mapping[str, Sequence[float]], best_epoch: int | None = None) -> None:
    """Loss and accuracy per epoch, train and validation, with the kept epoch marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(10, 4))
    epochs = max([len(values or []) for values in history.values()] + [best_epoch or 1])
    for index, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, index + 1)
        for prefix, style in (("", "-"), ("val_", "--")):
            values = list(history.get(prefix + metric) or [])
            if values:  # markers while there are few epochs: one epoch is a point, not an invisible line
                ax.plot(range(1, len(values) + 1), values, style, label=("val " if prefix else "train ") + metric,
                        marker="o" if len(values) <= 20 else None, markersize=4)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle=":", label=f"kept: epoch {best_epoch}")
        ax.set_xlim(0.5, epochs + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs: no 0.96, 0.98
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
