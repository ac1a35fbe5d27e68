"""`headstart finetune`: warm-start the full network from a trained dense head, then train
the top of the backbone end to end on the images.

Following the keras.io transfer-learning guide:
  * **warm start** — the head is already trained on this backbone's features, so the first
    epochs refine the features instead of wrecking them with a random head's gradients.
    Before any step, the rebuilt backbone + head must reproduce the head's predictions on
    cached features (else the fingerprint is not honoured and we stop);
  * ``trainable`` vs ``training`` — the top N layers that own weights become trainable,
    everything below stays frozen, and BatchNormalization layers stay frozen *and* in
    inference mode (the backbone is called with ``training=False``), so their statistics
    are never updated by small fine-tuning batches;
  * a small learning rate (default 1e-5).

The split is exactly the head run's (:func:`heads.data.split_for` with the run's recorded
seed and fraction): validation images are never trained on.

Never below the start: before the first step the warm-started network is evaluated on the
validation images (epoch 0) and is a candidate like every epoch, so the kept model is the
best candidate by validation accuracy (ties: lower validation loss), the starting head
included; early stopping watches the validation loss. Both numbers are reported.

Every epoch is checkpointed crash-safely; ``--resume`` continues a killed fine-tune from its
last finished epoch. A fine-tune refused or stopped before its first epoch ends leaves
nothing behind, and a folder that a killed one left before then is simply started over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from headstart.embedder.atomic import atomic_path, write_text_atomic
from headstart.embedder.cache import CacheLocation, library_versions, open_cache
from headstart.embedder.defaults import (FINETUNE_BATCH_SIZE, FINETUNE_EPOCHS, FINETUNE_LR, FINETUNE_PATIENCE,
                                         FINETUNE_UNFREEZE, RUNS_DIR)
from headstart.embedder.devices import mirrored_strategy, select_devices
from headstart.embedder.errors import BackboneError, UsageError
from headstart.embedder.fingerprint import require_same
from headstart.embedder.hashing import hash_files
from headstart.embedder.storage import location

from .full_model import (FULL_MODEL_FILE, backbone_sources, compose, is_finetuned, pixel_recipe, require_keras_head,
                         resolve_backbone)

CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.json"
WARM_START_TOLERANCE = 0.02
PREPROCESS_PREFIX = "headstart_preprocess"


@dataclass
class FinetuneOptions:
    from_run: Path | None = None  # default: the best dense run under runs_dir
    runs_dir: Path = Path(RUNS_DIR)
    unfreeze: int = FINETUNE_UNFREEZE
    epochs: int = FINETUNE_EPOCHS
    lr: float = FINETUNE_LR
    batch_size: int = FINETUNE_BATCH_SIZE
    augment: bool = True
    images: Path | None = None  # where the images are now, if they moved since embedding
    cache: Path | None = None  # default: the cache the head was trained on
    out: Path | None = None
    seed: int = 0
    patience: int = FINETUNE_PATIENCE
    resume: bool = False
    devices: str | list[int] | None = None  # several devices: MirroredStrategy (batch_size is per device)
    tensorboard: Path | None = None  # TensorBoard logs go to tensorboard/<run folder name> (heads.tensorboard)
    progress: bool = True


@dataclass
class FinetuneReport:
    run_dir: str
    from_run: str
    unfrozen_layers: list[str] = field(default_factory=list)
    unfreeze_requested: int = 0
    unfreeze_clamped: bool = False
    warm_start: dict = field(default_factory=dict)
    train_images: int = 0
    val_images: int = 0
    skipped: list[dict] = field(default_factory=list)
    resumed_from_epoch: int = 0
    epochs_run: int = 0
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    head_metrics: dict = field(default_factory=dict)  # the head's own record (on cached features)
    start_metrics: dict = field(default_factory=dict)  # the warm start on the validation images (epoch 0)
    metrics: dict = field(default_factory=dict)  # the kept model on the validation images
    seconds_per_epoch: float = 0.0
    elapsed_s: float = 0.0
    tensorboard: str | None = None  # the run's TensorBoard logs
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------ layers


def _leaf_layers(layer) -> list:
    """All leaf layers under ``layer``, in the order the network applies them."""
    children = getattr(layer, "layers", None)
    if not children:
        return [layer]
    leaves = []
    for child in children:
        leaves.extend(_leaf_layers(child))
    return leaves


def weight_layers(backbone) -> list:
    """Layers that count for ``--unfreeze``: leaf layers that own weights, bottom to top.

    BatchNormalization layers never count (they stay frozen and in inference mode), nor do
    the fixed preprocessing layers headstart puts in front of the backbone.
    """
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    chosen = []
    for layer in _leaf_layers(backbone):
        if isinstance(layer, keras.layers.BatchNormalization) or layer.name.startswith(PREPROCESS_PREFIX):
            continue
        if layer.weights:
            chosen.append(layer)
    return chosen


def unfreeze_top(backbone, n: int) -> tuple[list[str], bool]:
    """Make exactly the top ``n`` weight layers trainable (clamped to how many exist)."""
    layers = weight_layers(backbone)
    clamped = n > len(layers)
    n = min(n, len(layers))
    top = set(id(l) for l in layers[len(layers) - n:]) if n else set()
    backbone.trainable = True  # containers trainable; leaves decide below
    for layer in _leaf_layers(backbone):
        layer.trainable = id(layer) in top
    return [l.name for l in layers[len(layers) - n:]], clamped


# -------------------------------------------------------------------------------- data


@dataclass
class _Examples:
    paths: list[str]
    labels: np.ndarray
    keys: list[str]
    rows: np.ndarray  # cache rows, for the warm-start check


def _select_examples(cache, run, images_root: Path, report: FinetuneReport) -> tuple[_Examples, _Examples]:
    """The run's own split of the cache (:func:`heads.data.split_for`, the function ``head train``
    used, with the run's recorded seed and fraction): one file per distinct labelled content."""
    from .data import split_for

    if list(cache.classes) != list(run.classes):
        raise UsageError(
            f"the cache's classes {cache.classes} differ from the run's {run.classes}; use the cache the head was trained on")
    split = split_for(cache, run.record.split_spec)
    row_label = split.table.label  # -1: unlabelled, or its files disagree (left out, as head train does)
    usable = np.flatnonzero((cache.labels >= 0) & (row_label[cache.rows] >= 0))
    _, first = np.unique(cache.rows[usable], return_index=True)
    order = np.sort(usable[first])  # the first labelled file of each row, in file order
    file_keys = cache.keys[cache.rows]
    full_paths = [images_root / str(cache.paths[i]) for i in order]
    now_keys = hash_files(full_paths)
    keep = []
    for i, now in zip(order, now_keys):
        if isinstance(now, OSError):
            report.skipped.append({"path": str(cache.paths[i]), "reason": "missing or unreadable now"})
        elif now != str(file_keys[i]):
            report.skipped.append({"path": str(cache.paths[i]), "reason": "changed since it was embedded"})
        else:
            keep.append(int(i))

    def build(side: str) -> _Examples:
        idx = [i for i in keep if split.split[cache.rows[i]] == side]
        return _Examples([str(images_root / str(cache.paths[i])) for i in idx],
                         np.asarray([int(row_label[cache.rows[i]]) for i in idx], dtype=np.int64),
                         [str(file_keys[i]) for i in idx], np.asarray([int(cache.rows[i]) for i in idx]))

    return build("train"), build("val")


def _dataset(examples: _Examples, num_classes: int, size: int, batch: int, training: bool, augment: bool, seed: int,
             drop_remainder: bool = False, recipe=None):
    """Batches of (pixels, one-hot labels), the pixels made by the run's own rule (``recipe``)."""
    from headstart.embedder.devices import available_cores
    from headstart.embedder.tf_runtime import import_keras, import_tf

    tf, keras = import_tf(), import_keras()
    load = _pixel_loader(recipe, size)

    def pixels(path):
        image = tf.numpy_function(load, [path], tf.float32, stateful=False)
        image.set_shape([size, size, 3])
        return image

    ds = tf.data.Dataset.from_tensor_slices((np.asarray(examples.paths, dtype=object), examples.labels))
    if training:
        ds = ds.shuffle(len(examples.paths), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda p, y: (pixels(p), tf.one_hot(y, num_classes)),
                num_parallel_calls=available_cores(), deterministic=True)
    ds = ds.ignore_errors().batch(batch, drop_remainder=drop_remainder)
    if training and augment:
        augmenter = augmentation(keras, seed)
        ds = ds.map(lambda x, y: (augmenter(x, training=True), y), num_parallel_calls=1, deterministic=True)
    return ds.prefetch(2)


def augmentation(keras, seed: int):
    """Mild, label-preserving changes (flip, small rotation/zoom/contrast) on [0, 255] pixels."""
    return keras.Sequential([
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.05, seed=seed + 1),
        keras.layers.RandomZoom(0.1, seed=seed + 2),
        keras.layers.RandomContrast(0.1, seed=seed + 3),
    ], name="augmentation")


def _pixel_loader(recipe, size: int):
    """path (bytes or str) -> float32 [size, size, 3] by the pixel rule (embedder.decode)."""
    from headstart.embedder.decode import CURRENT
    from headstart.embedder.engine import read_bytes

    recipe = recipe or CURRENT

    def load(path) -> np.ndarray:
        name = path.decode() if isinstance(path, bytes) else str(path)
        return recipe.load(read_bytes(name), size)

    return load


def _load_images(paths: list[str], size: int, recipe=None) -> np.ndarray:
    load = _pixel_loader(recipe, size)
    return np.stack([load(p) for p in paths])


# --------------------------------------------------------------------------- warm start


def check_warm_start(backbone, model, run, cache, examples: _Examples, size: int, count: int = 8) -> dict:
    """The composed network must reproduce the head on cached features before any step."""
    n = min(count, len(examples.paths))
    if n == 0:
        return {"images": 0}
    images = _load_images(examples.paths[:n], size, pixel_recipe(run.meta))
    features_now = np.asarray(backbone(images, training=False))
    features_cached = cache.read_rows(examples.rows[:n])
    probs_now = np.asarray(model(images, training=False))
    probs_head = run.predict_proba(features_cached)
    scale = max(float(np.abs(features_cached).max()), 1e-12)
    feature_diff = float(np.abs(features_now - features_cached).max()) / scale
    prob_diff = float(np.abs(probs_now - probs_head).max())
    result = {"images": n, "feature_relative_diff": feature_diff, "probability_max_abs_diff": prob_diff}
    if feature_diff > WARM_START_TOLERANCE or prob_diff > WARM_START_TOLERANCE:
        raise BackboneError(
            f"warm-start check failed: the rebuilt backbone + head do not reproduce the cached predictions "
            f"(feature difference {feature_diff:.3g} relative, probability difference {prob_diff:.3g}); "
            f"the cache's fingerprint is not honoured, re-embed the images with this installation")
    return result


# ------------------------------------------------------------------------- checkpoints


def _state_path(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / STATE_FILE


def _read_state(run_dir: Path) -> dict | None:
    path = _state_path(run_dir)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def _write_state(run_dir: Path, state: dict) -> None:
    write_text_atomic(_state_path(run_dir), json.dumps(state, indent=2))


def find_unfinished(runs_dir: Path) -> Path | None:
    candidates = [p.parent.parent for p in Path(runs_dir).glob(f"*/{CHECKPOINT_DIR}/{STATE_FILE}")
                  if not (p.parent.parent / "head.json").exists()]
    return max(candidates, key=lambda p: _state_path(p).stat().st_mtime_ns) if candidates else None


def _better(candidate: dict, best: dict) -> bool:
    """The kept model: the highest val accuracy, ties to the lower val loss (the warm start,
    epoch 0, is a candidate too, so fine-tuning never ends below its starting head)."""
    def key(entry: dict) -> tuple[float, float]:
        accuracy = entry.get("val_accuracy")
        return (accuracy if accuracy is not None and np.isfinite(accuracy) else -np.inf,
                -entry.get("val_loss", np.inf) if np.isfinite(entry.get("val_loss", np.inf)) else -np.inf)

    return key(candidate) > key(best)


def _save_best(model, folder: Path, state: dict, epoch: int, logs: dict) -> None:
    best_file = folder / f"best-{epoch:04d}.weights.h5"
    with atomic_path(best_file, keep_suffix=True) as tmp:
        model.save_weights(str(tmp))
    state["best"] = {"val_loss": float(logs["val_loss"]), "val_accuracy": float(logs["val_accuracy"]),
                     "epoch": epoch, "weights": best_file.name}


def _evaluate_start(model, run_dir: Path, val_ds, state: dict, log) -> dict:
    """Epoch 0: the warm-started network on the validation images, before any step; it is
    the first candidate for the kept model."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        scores = model.evaluate(val_ds, verbose=0, return_dict=True)
    start = {"val_loss": float(scores["loss"]), "val_accuracy": float(scores["accuracy"])}
    _save_best(model, run_dir / CHECKPOINT_DIR, state, 0, start)
    state["start"] = start
    state["lowest_val_loss"] = start["val_loss"]
    _write_state(run_dir, state)
    log(f"epoch 0 (the warm start): val_loss {start['val_loss']:.4f} val_acc {start['val_accuracy']:.3f}")
    return start


def _make_checkpointer(keras, run_dir: Path, state: dict, patience: int, log: Callable[[str], None], bar_factory):
    """Per epoch: save the model (with optimizer state) and, if it is the best candidate so far,
    its weights, atomically; then the state that points at them. Stop early when val_loss has
    not improved for ``patience`` epochs."""
    folder = run_dir / CHECKPOINT_DIR

    class Checkpointer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._epoch_started = time.perf_counter()
            self._bar = bar_factory(epoch)

        def on_train_batch_end(self, batch, logs=None):
            if self._bar is not None:
                self._bar.update(1)

        def on_epoch_end(self, epoch, logs=None):
            if self._bar is not None:
                self._bar.close()
            logs = {k: float(v) for k, v in (logs or {}).items()}
            logs["epoch"] = epoch + 1
            logs["seconds"] = time.perf_counter() - self._epoch_started
            state["history"].append(logs)
            val_loss = logs.get("val_loss", float("inf"))
            if _better(logs, state["best"]):
                _save_best(self.model, folder, state, epoch + 1, logs)
            lowest = state.get("lowest_val_loss", state["best"].get("val_loss", float("inf")))
            if val_loss < lowest:
                state["lowest_val_loss"] = val_loss
                state["wait"] = 0
            else:
                state["wait"] += 1
            model_file = folder / f"epoch-{epoch + 1:04d}.keras"
            with atomic_path(model_file, keep_suffix=True) as tmp:
                self.model.save(str(tmp))
            state["epochs_done"] = epoch + 1
            state["model_file"] = model_file.name
            if state["wait"] >= patience:
                state["stopped_early"] = True
                self.model.stop_training = True
            _write_state(run_dir, state)
            _remove_stale_checkpoints(folder, state)
            log(f"epoch {epoch + 1}: loss {logs.get('loss', float('nan')):.4f} acc {logs.get('accuracy', float('nan')):.3f} "
                f"val_loss {val_loss:.4f} val_acc {logs.get('val_accuracy', float('nan')):.3f} ({logs['seconds']:.1f} s)")

    return Checkpointer()


def _epoch_scalars(run_dir: Path, options: FinetuneOptions, opts: dict):
    """The run's TensorBoard writer (:mod:`heads.tensorboard`), or None: ``--tensorboard`` of
    this command, else the one the interrupted fine-tune was started with (``--resume``)."""
    from .tensorboard import EpochScalars, run_folder

    folder = run_folder(options.tensorboard or opts.get("tensorboard"), run_dir.name)
    return EpochScalars(folder) if folder else None


def _scalars_callback(keras, board):
    """Each epoch's loss and accuracy (train and validation) to TensorBoard, numbered as the
    history counts epochs (1 = the first)."""

    class EpochScalarsCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            board(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

    return EpochScalarsCallback()


def _remove_stale_checkpoints(folder: Path, state: dict) -> None:
    keep = {STATE_FILE, state.get("model_file"), state["best"].get("weights")}
    for entry in folder.iterdir():
        if entry.name not in keep and ".tmp-" not in entry.name:
            entry.unlink(missing_ok=True)


# --------------------------------------------------------------------------------- main


def _pick_source_run(options: FinetuneOptions, log):
    from .choose import choose_run
    from .runs import load_run

    if options.from_run is not None:
        run = load_run(options.from_run)
    else:
        run = choose_run(options.runs_dir, kind="head", head_type="dense", cache=options.cache, flag="--from RUN", log=log)
    if is_finetuned(run.meta):
        raise UsageError(f"{run.path} is already a fine-tuned run; fine-tune from a head run")
    require_keras_head(run)
    return run


def finetune(options: FinetuneOptions, log: Callable[[str], None] = lambda m: None) -> FinetuneReport:
    """Fine-tune from a dense head run; write a run folder like a head's."""
    if options.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {options.epochs}")
    if options.unfreeze < 0:
        raise UsageError(f"--unfreeze must be 0 or more, got {options.unfreeze}")
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {options.batch_size}")
    if not options.lr > 0:
        raise UsageError(f"--lr must be positive, got {options.lr}")

    from .runs import load_run

    run_dir, state = _prepare_run_dir(options, log)
    run = load_run(state["options"]["from_run"]) if options.resume else _pick_source_run(options, log)
    if options.resume:
        return _finetune_in(run_dir, state, run, options, log)
    state["options"]["from_run"] = str(run.path)
    made = _start_run_dir(run_dir, state)
    try:
        return _finetune_in(run_dir, state, run, options, log)
    except BaseException:
        # Refused, failed or interrupted before an epoch finished: nothing of value to resume.
        if state["epochs_done"] == 0 and not (run_dir / "head.json").exists():
            shutil.rmtree(run_dir if made else run_dir / CHECKPOINT_DIR, ignore_errors=True)
        raise


def _finetune_in(run_dir: Path, state: dict, run, options: FinetuneOptions, log) -> FinetuneReport:
    from headstart.embedder.backbones import build_backbone
    from headstart.embedder.tf_runtime import import_keras

    started = time.perf_counter()
    opts = state["options"]
    report = FinetuneReport(run_dir=str(run_dir), from_run=str(run.path), unfreeze_requested=opts["unfreeze"],
                            head_metrics=dict(run.record.metrics))

    cache_path = CacheLocation.of(opts["cache"] or run.record.cache.path or "")
    if not cache_path.where.is_file():
        raise UsageError(f"the head's cache {cache_path} is gone; pass --cache with a cache of the same fingerprint")
    cache = open_cache(cache_path)
    require_same(cache.fingerprint, run.fingerprint, f"cache {cache_path}", f"run {run.path}")
    images_root = location(opts["images"] or cache.images_root)
    if not images_root.is_dir():
        raise UsageError(f"images folder {images_root} is gone; pass --images with where the images are now")
    train, val = _select_examples(cache, run, images_root, report)
    report.train_images, report.val_images = len(train.paths), len(val.paths)
    if report.skipped:
        report.warnings.append(f"{len(report.skipped)} images are missing or changed since embedding and are left out")
    if not train.paths:
        raise UsageError("no training images left to fine-tune on")
    if not val.paths:
        raise UsageError("the run's split has no validation images; fine-tuning needs them for early stopping")

    keras = import_keras()
    resolved = resolve_backbone(run.meta)
    num_classes = len(run.classes)
    strategy = mirrored_strategy(select_devices(opts.get("devices")))
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    fresh = state["epochs_done"] == 0 and not state.get("model_file")
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if fresh:
            keras.utils.set_random_seed(opts["seed"])
            backbone = build_backbone(resolved)
            size = int(backbone.inputs[0].shape[1])  # a model file's own size is known once built
            model = compose(backbone, run.keras_head(), name="headstart_finetuned")
            report.warm_start = check_warm_start(backbone, model, run, cache, val if val.paths else train, size)
            state["warm_start"] = report.warm_start
            names, clamped = unfreeze_top(backbone, opts["unfreeze"])
            state["unfrozen_layers"], state["unfreeze_clamped"] = names, clamped
            loss = keras.losses.CategoricalCrossentropy(
                label_smoothing=float(run.record.params.get("label_smoothing") or 0.0))
            model.compile(optimizer=keras.optimizers.Adam(opts["lr"]), loss=loss, metrics=["accuracy"])
        else:
            keras.utils.set_random_seed(opts["seed"] + state["epochs_done"])
            model_file = run_dir / CHECKPOINT_DIR / state["model_file"]
            model = keras.models.load_model(model_file, compile=True)
            size = int(model.inputs[0].shape[1])
            report.resumed_from_epoch = state["epochs_done"]
            report.warm_start = state.get("warm_start", {})
            log(f"resuming {run_dir} after epoch {state['epochs_done']}")
    report.unfrozen_layers = state["unfrozen_layers"]
    report.unfreeze_clamped = state["unfreeze_clamped"]
    if report.unfreeze_clamped:
        report.warnings.append(f"--unfreeze {opts['unfreeze']} exceeds the backbone's {len(report.unfrozen_layers)} "
                               f"layers with weights; unfroze all of them")
    log(f"unfrozen ({len(report.unfrozen_layers)}): {', '.join(report.unfrozen_layers) or 'none (head only)'}")

    batch = opts["batch_size"] * replicas  # --batch-size is per device
    # Several devices: Keras splits each batch over the replicas and fails on uneven or empty
    # slices, so under MirroredStrategy the batches fit() sees are whole multiples of the
    # device count: training drops the ragged last batch (other images each epoch, as it
    # reshuffles) and the validation loss that drives early stopping skips at most
    # devices-1 images. The final metrics use every validation image.
    if replicas > 1 and min(len(train.paths), len(val.paths)) < batch:
        raise UsageError(f"{replicas} devices with --batch-size {opts['batch_size']} need at least {batch} "
                         f"training and validation images each; lower --batch-size or --devices")
    recipe = pixel_recipe(run.meta)
    val_ds = _dataset(val, num_classes, size, batch, False, False, opts["seed"], recipe=recipe)
    train_ds = _dataset(train, num_classes, size, batch, True, opts["augment"], opts["seed"] + state["epochs_done"],
                        drop_remainder=replicas > 1, recipe=recipe)
    fit_val_ds = _dataset(val, num_classes, size, batch, False, False, opts["seed"], drop_remainder=True,
                          recipe=recipe) if replicas > 1 else val_ds
    steps = len(train.paths) // batch if replicas > 1 else -(-len(train.paths) // batch)
    board = _epoch_scalars(run_dir, options, opts)
    report.tensorboard = str(board.folder) if board else None
    if fresh:
        start = _evaluate_start(model, run_dir, fit_val_ds, state, log)
        if board:
            board(0, start)  # the warm start: validation step 0
    report.start_metrics = dict(state.get("start") or {})

    def bar_factory(epoch):
        from headstart.embedder.progress import progress_bar

        return progress_bar(steps, f"epoch {epoch + 1}/{opts['epochs']}", options.progress, unit="batch")

    finished = state.get("stopped_early") or state["epochs_done"] >= opts["epochs"]
    if not finished:
        checkpointer = _make_checkpointer(keras, run_dir, state, opts["patience"], log, bar_factory)
        callbacks = [checkpointer] + ([_scalars_callback(keras, board)] if board else [])
        with warnings.catch_warnings():
            # tf.data after ignore_errors() has no known length; Keras warns at every epoch end
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            model.fit(train_ds, validation_data=fit_val_ds, epochs=opts["epochs"], initial_epoch=state["epochs_done"],
                      callbacks=callbacks, verbose=0, shuffle=False)
    if board:
        board.close()
    best = state["best"]
    if best.get("weights"):
        with warnings.catch_warnings():  # the epoch-0 weights predate the optimizer's state; it is not needed now
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model.load_weights(str(run_dir / CHECKPOINT_DIR / best["weights"]))
    report.history = state["history"]
    report.epochs_run = state["epochs_done"]
    report.best_epoch = int(best.get("epoch") or 0)
    report.seconds_per_epoch = float(np.mean([h["seconds"] for h in state["history"]])) if state["history"] else 0.0
    if report.best_epoch == 0 and report.start_metrics:
        log("no epoch beat the warm start on the validation images; kept the starting head's network")

    report.metrics = _finish_run(run_dir, model, run, cache, val, val_ds, state, report, images_root)
    report.elapsed_s = time.perf_counter() - started
    return report


def _prepare_run_dir(options: FinetuneOptions, log) -> tuple[Path, dict]:
    """The unfinished run folder and its state (``--resume``), or a new folder's path and
    fresh state (nothing is created yet: :func:`_start_run_dir` does, once the source run is known)."""
    if options.resume:
        run_dir = Path(options.out) if options.out else find_unfinished(options.runs_dir)
        if run_dir is None:
            raise UsageError(f"--resume: no unfinished fine-tune under {options.runs_dir}/ (pass --out RUN_DIR)")
        if (run_dir / "head.json").exists():
            raise UsageError(f"--resume: {run_dir} is already finished")
        state = _read_state(run_dir)
        if state is None:
            raise UsageError(f"--resume: {run_dir} holds no fine-tune checkpoint (it stopped before its first "
                             f"epoch); run the same command without --resume to start it again")
        return run_dir, state
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(options.out) if options.out else Path(options.runs_dir) / f"{stamp}-finetune"
    previous = _read_state(run_dir)
    if previous is not None and not (run_dir / "head.json").exists() and previous.get("epochs_done", 0) > 0:
        raise UsageError(f"an unfinished fine-tune is in {run_dir}; pass --resume to continue it, or another --out")
    if run_dir.exists() and any(p for p in run_dir.iterdir() if not _started_only(p)):
        raise UsageError(f"--out {run_dir} exists and is not empty; choose another folder")
    state = {
        "options": {
            "from_run": str(options.from_run) if options.from_run else None,
            "unfreeze": options.unfreeze, "epochs": options.epochs, "lr": options.lr,
            "batch_size": options.batch_size, "augment": options.augment, "seed": options.seed,
            "patience": options.patience, "images": str(options.images) if options.images else None,
            "cache": str(options.cache) if options.cache else None,
            "devices": options.devices,
            "tensorboard": str(options.tensorboard) if options.tensorboard else None,
        },
        "epochs_done": 0, "history": [], "best": {"val_loss": float("inf")}, "wait": 0,
        "model_file": None, "unfrozen_layers": [], "unfreeze_clamped": False,
    }
    return run_dir, state


def _started_only(entry: Path) -> bool:
    """A checkpoint folder a fine-tune left before finishing its first epoch (killed): no
    finished epoch in it, so a new fine-tune may start over in its place."""
    if entry.name != CHECKPOINT_DIR or not entry.is_dir():
        return False
    state = _read_state(entry.parent)
    return state is None or state.get("epochs_done", 0) == 0


def _start_run_dir(run_dir: Path, state: dict) -> bool:
    """Create the run folder (over what a killed fine-tune left before its first epoch) and
    write the first state, so ``--resume`` finds it from now on. True if the folder is new."""
    made = not run_dir.exists()
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    (run_dir / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    _write_state(run_dir, state)
    return made


def _finish_run(run_dir: Path, model, run, cache, val: _Examples, val_ds, state: dict, report: FinetuneReport,
                images_root: Path) -> dict:
    """Evaluate on the validation images, write the run folder (head.json last), drop checkpoints."""
    from .evaluate import summarize, write_evaluation
    from .run_meta import CacheRef, RunMeta
    from .runs import file_sha256, json_default

    probabilities, labels = [], []
    for images, onehot in val_ds:
        probabilities.append(np.asarray(model(images, training=False)))
        labels.append(np.argmax(onehot.numpy(), axis=1))
    probabilities = np.concatenate(probabilities) if probabilities else np.zeros((0, len(run.classes)))
    labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    val_paths = [str(location(p).relative_to(images_root)) for p in val.paths][: len(labels)]
    history = {k: [h[k] for h in state["history"] if k in h] for k in ("loss", "accuracy", "val_loss", "val_accuracy")}
    metrics = write_evaluation(run_dir, labels, probabilities, list(run.classes), val_paths, history=history,
                               best_epoch=int(state["best"].get("epoch") or 0), images_root=images_root)
    model.save(run_dir / FULL_MODEL_FILE)
    backbone, weights = backbone_sources(run.meta)
    meta = RunMeta(
        kind="finetuned",
        head_type="dense",
        finetuned_from=str(run.path),
        classes=list(run.classes),
        fingerprint=run.fingerprint,
        cache=CacheRef(path=str(cache.path), images_root=str(images_root),
                       content_digest=cache.attrs.get("content_digest"), rows=int(cache.num_rows),
                       files=int(len(cache.paths))),
        backbone_sources={"backbone": backbone, "weights": weights},
        feature_dim=run.record.feature_dim,
        input_size=int(model.inputs[0].shape[1]),
        params=dict(state["options"], finetuned_from=str(run.path)),
        split=run.record.split,
        unfrozen_layers=state["unfrozen_layers"],
        unfreeze_clamped=state["unfreeze_clamped"],
        warm_start=state.get("warm_start", {}),
        model_file=FULL_MODEL_FILE,
        model_sha256=file_sha256(run_dir / FULL_MODEL_FILE),
        metrics=summarize(metrics),
        head_metrics=report.head_metrics,
        start_metrics=report.start_metrics or None,
        best_epoch=int(state["best"].get("epoch") or 0),
        epochs_run=state["epochs_done"],
        stopped_early=bool(state.get("stopped_early", False)),
        history=state["history"],
        train_seconds=float(sum(h["seconds"] for h in state["history"])),
        seconds_per_epoch=report.seconds_per_epoch,
        train_images=report.train_images,
        val_images=report.val_images,
        skipped=report.skipped,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        versions=library_versions(),
    )
    write_text_atomic(run_dir / "head.json", json.dumps(meta.to_json(), indent=2, default=json_default) + "\n")
    shutil.rmtree(run_dir / CHECKPOINT_DIR, ignore_errors=True)
    from .train import write_report_quietly

    write_report_quietly(run_dir, report.warnings, lambda m: None)
    return meta.metrics
