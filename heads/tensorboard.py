"""TensorBoard logs of the training curves, as Keras users know them.

``--tensorboard DIR`` on ``head train`` and ``finetune`` writes one folder per run,
``DIR/<run folder name>/``, laid out as Keras's ``TensorBoard`` callback lays it out:
``train/`` and ``validation/`` event files, each with the scalars ``epoch_loss`` and
``epoch_accuracy`` (so ``val_loss`` is ``validation/epoch_loss``). ``tensorboard --logdir
DIR`` then overlays the runs, and the train and validation curves of each.

Steps are headstart's epoch numbers, as history.png and the logs count them: 1 is the first
epoch; a fine-tune's warm start, measured before any step, is validation step 0.

Neither loop can use the Keras callback: the dense head trains in its own loop (no
``model.fit``: :mod:`heads.dense`), and the callback's ``tf.summary.scalar`` needs the
``tensorboard`` package, which is not a dependency. So the scalars are written with
TensorFlow's core ``tf.summary.write`` and the scalar plugin's metadata: TensorBoard reads
them as it reads its own; it is needed only to view them (``pip install tensorboard``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping

from headstart.embedder.errors import UsageError

SIDES = {"train": "", "validation": "val_"}  # event folder -> prefix of its keys in the logs
METRICS = ("loss", "accuracy")
SCALARS_PLUGIN = "scalars"


class EpochScalars:
    """Per-epoch loss and accuracy of one run, written as they come (``on_epoch``-shaped:
    ``board(epoch, {"loss": .., "accuracy": .., "val_loss": .., "val_accuracy": ..})``).
    Values that are missing or not finite (no validation rows) are not written."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._writers: dict = {}

    def __call__(self, epoch: int, logs: Mapping[str, float]) -> None:
        from headstart.embedder.tf_runtime import import_tf

        tf = import_tf()
        for side, prefix in SIDES.items():
            for metric in METRICS:
                value = logs.get(prefix + metric)
                if value is None or not math.isfinite(float(value)):
                    continue
                with self._writer(side).as_default():
                    tf.summary.write(f"epoch_{metric}", tf.constant(float(value), tf.float32), step=int(epoch),
                                     metadata=_scalar_metadata())
        for writer in self._writers.values():
            writer.flush()

    def _writer(self, side: str):
        if side not in self._writers:
            from headstart.embedder.tf_runtime import import_tf

            (self.folder / side).mkdir(parents=True, exist_ok=True)
            self._writers[side] = import_tf().summary.create_file_writer(str(self.folder / side))
        return self._writers[side]

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def __enter__(self) -> "EpochScalars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_folder(root: str | Path | None, run_name: str) -> Path | None:
    """Where a run's logs go: ``root/<run name>`` (None: no logs asked for)."""
    return None if root is None else Path(root) / run_name


def require_epochs(head) -> None:
    """``--tensorboard`` logs per-epoch curves: refused for a head fit in one go."""
    if not head.has_epochs:
        raise UsageError(f"--tensorboard logs a curve per epoch, and a {head.name} head is fit in one go, with no "
                         f"epochs; use --head dense, or drop --tensorboard")


def chain(*callbacks):
    """One ``on_epoch`` calling each of ``callbacks`` that is not None (None if none is)."""
    present = [c for c in callbacks if c is not None]
    if not present:
        return None

    def on_epoch(epoch: int, logs: dict) -> None:
        for callback in present:
            callback(epoch, logs)

    return on_epoch


def _scalar_metadata():
    """What TensorBoard's scalar summaries carry: the scalars plugin, an empty (version 0)
    plugin content, the scalar data class."""
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=SCALARS_PLUGIN))
    metadata.data_class = summary_pb2.DATA_CLASS_SCALAR
    return metadata
