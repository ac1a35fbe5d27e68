"""Head speed: is trying a head a matter of seconds once features are cached? Prints JSON.

On 50,000 x 1,280 cached features (float16 on disk, 10 classes, the default 20% hash
split: ~40,000 training rows), measured in one run, each in its own process (so peak RSS
is its own):

  load      open the cache and read the features as float32; then rows, labels, split
  dense     the default head (Dense 1024 relu -> Dropout 0.5 -> softmax, Adam, batch from
            the data size) for 50 epochs with early stopping off; also --hidden 128 and
            --hidden 0 (linear) for scale
  logreg, svm, knn, ncm   `head train` with each head's defaults (fit, and the whole command;
            logreg's includes choosing C by 5-fold cross-validation)
  backbone  one epoch of training the same dense head *through* the frozen MobileNetV2
            (alpha 1.0, 224 px) on JPEGs (decode + forward + head update), measured on a
            subset of photo-like 500x375 images and scaled to the training rows

Targets (issue #3): dense 50 epochs <= 10 s; a cached epoch >= 100x faster than a
through-backbone epoch.

    python benchmarks/head_speed.py [--rows 50000] [--images 256]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import WEIGHTS_MOBILENET_V2, machine, matmul_peak_gflops, peak_rss_mb, photo_like_jpegs, run_child  # noqa: E402

SCRIPT = Path(__file__).resolve()
DIM, CLASSES = 1280, 10


def make_cache(path: Path, rows: int, seed: int = 0) -> Path:
    """Non-negative, ReLU-pooled-like features in 10 overlapping clusters (not separable)."""
    import hashlib

    import numpy as np

    from headstart.embedder.cache import FileRecord, write_cache

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 1, (CLASSES, DIM)).astype(np.float32)
    labels = rng.integers(0, CLASSES, rows)
    features = np.maximum(0.0, 0.12 * centers[labels] + rng.normal(0, 1, (rows, DIM)).astype(np.float32))
    keys = [hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(rows)]
    files = [FileRecord(f"class_{c:02d}/img_{i:06d}.jpg", k, int(c), "") for i, (k, c) in enumerate(zip(keys, labels))]
    if path.exists():
        path.unlink()
    write_cache(path, {"architecture": "synthetic", "weights": "none", "input_size": 224, "pooling": "avg",
                       "compute_dtype": "float32"}, keys, features, files,
                [f"class_{c:02d}" for c in range(CLASSES)], path.parent, dtype="float16")
    return path


def child_load(cache: str) -> dict:
    from headstart.embedder.cache import open_cache
    from headstart.heads.data import load_labelled

    start = time.perf_counter()
    opened = open_cache(cache)
    features = opened.load_features("float32")
    read = time.perf_counter() - start
    data = load_labelled(opened, 0.2, 0)
    total = time.perf_counter() - start
    return {"rows": int(features.shape[0]), "dim": int(features.shape[1]), "read_float32_seconds": read,
            "load_labelled_seconds": total, "train_rows": len(data.rows("train")), "val_rows": len(data.rows("val")),
            "peak_rss_mb": peak_rss_mb()}


def child_dense(cache: str, hidden: str) -> dict:
    """The product's dense kind (heads.kinds.dense, fitted by heads.dense.train_dense) with per-epoch timestamps."""
    from headstart.embedder.tf_runtime import import_tf
    from headstart.heads.data import load_labelled
    from headstart.heads.kinds import make_head

    import_tf()
    data = load_labelled(cache, 0.2, 0)
    x, y, _ = data.subset("train")
    xv, yv, _ = data.subset("val")
    head = make_head("dense", epochs=50, patience=0, hidden=hidden)
    stamps = []
    start = time.perf_counter()
    head.fit(x, y, num_classes=CLASSES, validation=(xv, yv), on_epoch=lambda e, logs: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    fit = head.report_
    return {"hidden": hidden, "epochs": fit.epochs_run, "batch_size": head.batch_size_, "train_rows": int(len(x)),
            "seconds_50_epochs": total, "first_epoch_seconds": stamps[0] - start, "steady_epoch_seconds": steady,
            "val_accuracy": fit.history["val_accuracy"][-1], "peak_rss_mb": peak_rss_mb()}


def child_head(cache: str, head: str, out: str) -> dict:
    """`headstart head train --head HEAD` as the CLI runs it (defaults), minus the CLI layer."""
    from headstart.heads.params import make_params
    from headstart.heads.train import train_head

    start = time.perf_counter()
    report = train_head(make_params(head), cache=cache, out=out)
    return {"head": head, "fit_seconds": report.train_seconds, "command_seconds": time.perf_counter() - start,
            "val_accuracy": report.metrics["accuracy"], "warnings": report.warnings, "peak_rss_mb": peak_rss_mb()}


def child_backbone(folder: str, weights: str, batch: int, train_rows: int) -> dict:
    """Train the default dense head through the frozen backbone, decoding JPEGs each step."""
    import numpy as np

    from concurrent.futures import ThreadPoolExecutor

    from headstart.embedder.backbones import BackboneConfig, build_backbone, resolve
    from headstart.embedder.decode import CURRENT
    from headstart.embedder.devices import available_cores
    from headstart.embedder.tf_runtime import import_keras, import_tf, tune_malloc
    from headstart.heads.dense import build_dense_head

    tf, keras = import_tf(), import_keras()
    tune_malloc()
    backbone = build_backbone(resolve(BackboneConfig(backbone="MobileNetV2", weights=weights, image_size=224)))
    backbone.trainable = False
    head = build_dense_head(int(backbone.outputs[0].shape[-1]), CLASSES)
    paths = sorted(str(p) for p in Path(folder).rglob("*.jpg"))
    labels = tf.constant(np.arange(len(paths)) % CLASSES, dtype=tf.int32)
    optimizer = keras.optimizers.Adam(1e-3)
    loss_fn = keras.losses.CategoricalCrossentropy()

    @tf.function(reduce_retracing=True)
    def step(images, indices):
        features = backbone(images, training=False)
        y = tf.one_hot(tf.gather(labels, indices), CLASSES)
        with tf.GradientTape() as tape:
            loss = loss_fn(y, head(features, training=True))
        grads = tape.gradient(loss, head.trainable_variables)
        optimizer.apply_gradients(zip(grads, head.trainable_variables))
        return loss

    pool = ThreadPoolExecutor(available_cores())

    def image_batches():  # decoded by the embedding's own pixel rule, on every core
        for i in range(0, len(paths), batch):
            chunk = paths[i:i + batch]
            yield (np.arange(i, i + len(chunk)),
                   np.stack(list(pool.map(lambda p: CURRENT.load(Path(p).read_bytes(), 224), chunk))))

    batches = image_batches()
    indices, images = next(batches)
    step(images, indices).numpy()  # warm-up: tracing and first allocations, not timed
    done, start = 0, time.perf_counter()
    for indices, images in batches:
        step(images, indices).numpy()
        done += int(images.shape[0])
    elapsed = time.perf_counter() - start
    per_image = elapsed / done
    return {"images_timed": done, "batch_size": batch, "seconds": elapsed, "images_per_second": done / elapsed,
            "epoch_seconds_scaled": per_image * train_rows, "train_rows": train_rows, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--images", type=int, default=256, help="images for the through-backbone epoch")
    parser.add_argument("--batch-size", type=int, default=32, help="batch for the through-backbone epoch")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "headstart-bench"))
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        fn = {"load": child_load, "dense": child_dense, "head": child_head, "backbone": child_backbone,
              "make_cache": lambda path, rows: {"path": str(make_cache(Path(path), rows))}}[kind]
        print(json.dumps(fn(*[int(r) if r.isdigit() else r for r in rest])))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    real = WEIGHTS_MOBILENET_V2.is_file()
    weights = str(WEIGHTS_MOBILENET_V2) if real else "none"
    started = time.perf_counter()
    # In a child: the ~0.8 GB of building the features would otherwise become every later
    # child's floor (a child's ru_maxrss starts from its parent's peak).
    cache = Path(run_child(SCRIPT, "make_cache", str(work / f"head-speed-{args.rows}.h5"), str(args.rows))["path"])
    out: dict = {"benchmark": "head_speed", "machine": machine(), "rows": args.rows, "dim": DIM, "classes": CLASSES,
                 "cache_mb": round(cache.stat().st_size / 1e6, 1), "cache_write_seconds": time.perf_counter() - started,
                 "runs": {}}
    runs = out["runs"]
    runs["load"] = run_child(SCRIPT, "load", str(cache))
    runs["dense"] = run_child(SCRIPT, "dense", str(cache), "1024")
    runs["dense_hidden_128"] = run_child(SCRIPT, "dense", str(cache), "128")
    runs["dense_linear"] = run_child(SCRIPT, "dense", str(cache), "0")
    for head in ("logreg", "svm", "knn", "ncm"):
        target = work / f"run-{head}"
        shutil.rmtree(target, ignore_errors=True)
        runs[head] = run_child(SCRIPT, "head", str(cache), head, str(target))
        shutil.rmtree(target, ignore_errors=True)
    folder = photo_like_jpegs(work / f"images-{args.images}", args.images)
    runs["backbone"] = run_child(SCRIPT, "backbone", str(folder), weights, str(args.batch_size),
                                 str(runs["load"]["train_rows"]))
    out["backbone_weights"] = "imagenet (shared asset)" if real else "none (random; the speed is the same)"

    dense, backbone = runs["dense"], runs["backbone"]
    out["summary"] = {
        "load_features_seconds": runs["load"]["read_float32_seconds"],
        "dense_50_epochs_seconds": dense["seconds_50_epochs"],
        "dense_steady_epoch_seconds": dense["steady_epoch_seconds"],
        "dense_hidden_128_50_epochs_seconds": runs["dense_hidden_128"]["seconds_50_epochs"],
        "dense_linear_50_epochs_seconds": runs["dense_linear"]["seconds_50_epochs"],
        "logreg_fit_seconds": runs["logreg"]["fit_seconds"],
        "svm_fit_seconds": runs["svm"]["fit_seconds"],
        "knn_fit_seconds": runs["knn"]["fit_seconds"],
        "ncm_fit_seconds": runs["ncm"]["fit_seconds"],
        "backbone_epoch_seconds": backbone["epoch_seconds_scaled"],
        "cached_over_backbone_epoch_speedup": backbone["epoch_seconds_scaled"] / dense["steady_epoch_seconds"],
    }
    # The floor for the default dense head: forward (x @ W1) and the weight gradient (x^T @ dH)
    # each cost 2 * rows * 1280 * 1024 flops per epoch (the input needs no gradient).
    flops = 2 * 2 * dense["train_rows"] * DIM * 1024 * 50
    out["summary"]["dense_50_epochs_gflop"] = flops / 1e9
    out["summary"]["dense_achieved_gflops"] = flops / 1e9 / dense["seconds_50_epochs"]
    peak = matmul_peak_gflops()
    out["summary"]["matmul_peak_gflops"] = peak
    out["summary"]["dense_50_epochs_lower_bound_seconds"] = flops / 1e9 / peak
    out["targets"] = {
        "dense_50_epochs<=10s": dense["seconds_50_epochs"] <= 10,
        "cached_epoch>=100x_faster": out["summary"]["cached_over_backbone_epoch_speedup"] >= 100,
    }
    out["total_seconds"] = time.perf_counter() - started
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
