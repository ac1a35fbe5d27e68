"""Embedding throughput: is the backbone the bottleneck? Prints JSON.

Measured in one run, each in its own process (so peak RSS is its own):
  (a) model only: the compiled forward pass on pre-decoded tensors;
  (b) `embed run` end to end on photo-like 500x375 JPEGs (at each --sizes count);
  (c) the tutorial way: keras.utils.load_img per image into one array, then model.predict;
  (d) a rerun of (b) on the unchanged folder.
Targets (issue #2): (b)/(a) >= 0.9, (b)/(c) >= 1.3, (b) RSS flat in the image count,
(d) <= 5% of (b).

    python benchmarks/embed_throughput.py --sizes 1000,4000
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
from common import WEIGHTS_MOBILENET_V2, machine, peak_rss_mb, photo_like_jpegs, run_child  # noqa: E402

SCRIPT = Path(__file__).resolve()


def _backbone_args(weights: str) -> dict:
    return {"backbone": "MobileNetV2", "weights": weights, "image_size": 224}


def child_model(weights: str, batch: int, images: int, folder: str) -> dict:
    """The model alone, on real images decoded (and resized) before the clock starts."""
    from embedder.backbones import BackboneConfig, build_backbone, resolve
    from embedder.pipeline import compiled_forward, image_dataset
    from embedder.tf_runtime import tune_malloc

    tune_malloc()
    model = build_backbone(resolve(BackboneConfig(**_backbone_args(weights))))
    forward = compiled_forward(model, 224)
    paths = sorted(str(p) for p in Path(folder).rglob("*.jpg"))[: 4 * batch]
    decoded = [images_ for _, images_ in image_dataset(paths, 224, batch)]
    forward(decoded[0]).numpy()  # warm-up
    done, start = 0, time.perf_counter()
    while done < images:
        for x in decoded:
            forward(x).numpy()
            done += int(x.shape[0])
    elapsed = time.perf_counter() - start
    return {"images": done, "seconds": elapsed, "rate": done / elapsed, "peak_rss_mb": peak_rss_mb()}


def child_embed(weights: str, batch: int, folder: str, cache: str, dtype: str) -> dict:
    from embedder.backbones import BackboneConfig
    from embedder.job import EmbedOptions, run_embedding

    from embedder.tf_runtime import import_tf

    import_started = time.perf_counter()
    import_tf()  # a fixed cost of any TensorFlow approach; (c) pays it outside its clock too
    start = time.perf_counter()
    report = run_embedding(folder, BackboneConfig(**_backbone_args(weights)),
                           EmbedOptions(cache=Path(cache), batch_size=batch, dtype=dtype, progress=False))
    wall = time.perf_counter() - start
    return {"images": report.files, "embedded": report.embedded, "loop_seconds": report.embed_s,
            "setup_seconds": report.setup_s, "wall_seconds": wall, "loop_rate": report.rate,
            "steady_rate": report.steady_rate, "tf_import_seconds": start - import_started,
            "wall_rate": report.files / wall, "peak_rss_mb": peak_rss_mb()}


def child_naive(weights: str, folder: str) -> dict:
    """The seed tutorial's way: load every image with keras.utils.load_img, then predict."""
    import numpy as np

    from embedder.backbones import BackboneConfig, build_backbone, resolve
    from embedder.tf_runtime import import_keras

    keras = import_keras()
    start = time.perf_counter()
    model = build_backbone(resolve(BackboneConfig(**_backbone_args(weights))))
    paths = sorted(Path(folder).rglob("*.jpg"))
    arrays = [keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224))) for p in paths]
    data = np.stack(arrays)
    load_done = time.perf_counter()
    model.predict(data, batch_size=32, verbose=0)
    wall = time.perf_counter() - start
    return {"images": len(paths), "load_seconds": load_done - start, "wall_seconds": wall,
            "wall_rate": len(paths) / wall, "peak_rss_mb": peak_rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,4000", help="image counts for (b); the first is used for (a, c, d)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "headstart-bench"))
    parser.add_argument("--naive-sizes", default=None, help="image counts for (c); default: the first size")
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        result = {"model": child_model, "embed": child_embed, "naive": child_naive}[kind](
            *[int(r) if r.isdigit() else r for r in rest])
        print(json.dumps(result))
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    naive_sizes = [int(s) for s in (args.naive_sizes or str(sizes[0])).split(",")]
    work = Path(args.workdir)
    real = WEIGHTS_MOBILENET_V2.is_file()
    weights = str(WEIGHTS_MOBILENET_V2) if real else "none"
    dtype = "float16" if real else "float32"  # random MobileNetV2 features underflow float16
    bs = str(args.batch_size)
    out: dict = {"benchmark": "embed_throughput", "machine": machine(), "backbone": "MobileNetV2 1.0 @224",
                 "weights": "imagenet (shared asset)" if real else "none (random; speed is the same)",
                 "batch_size": args.batch_size, "runs": {}}
    folders = {n: photo_like_jpegs(work / f"images-{n}", n) for n in sorted(set(sizes) | set(naive_sizes))}
    n0 = sizes[0]
    model_args = ("model", weights, bs, str(n0), str(folders[n0]))
    out["runs"]["a_model_only"] = run_child(SCRIPT, *model_args)
    for n in sizes:
        cache = work / f"cache-{n}.h5"
        for stale in (cache, cache.with_name(cache.name + ".parts")):
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        out["runs"][f"b_embed_{n}"] = run_child(SCRIPT, "embed", weights, bs, str(folders[n]), str(cache), dtype)
        if n == n0:
            out["runs"]["d_rerun"] = run_child(SCRIPT, "embed", weights, bs, str(folders[n]), str(cache), dtype)
    for n in naive_sizes:
        out["runs"][f"c_naive_{n}"] = run_child(SCRIPT, "naive", weights, str(folders[n]))
    # The machine is noisy: measure (a) again at the end and compare against the mean.
    out["runs"]["a_model_only_again"] = run_child(SCRIPT, *model_args)

    runs = out["runs"]
    b, c, d = runs[f"b_embed_{n0}"], runs[f"c_naive_{naive_sizes[0]}"], runs["d_rerun"]
    a_rate = (runs["a_model_only"]["rate"] + runs["a_model_only_again"]["rate"]) / 2
    out["ratios"] = {
        "b_steady_over_a": b["steady_rate"] / a_rate,
        "b_loop_over_a": b["loop_rate"] / a_rate,
        "b_wall_over_a": b["wall_rate"] / a_rate,
        "b_over_c_wall": b["wall_rate"] / c["wall_rate"],
        "d_over_b_wall": d["wall_seconds"] / b["wall_seconds"],
    }
    out["peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in runs.items()}
    out["targets"] = {"b_steady_over_a>=0.9": out["ratios"]["b_steady_over_a"] >= 0.9,
                      "b_over_c>=1.3": out["ratios"]["b_over_c_wall"] >= 1.3,
                      "d_over_b<=0.05": out["ratios"]["d_over_b_wall"] <= 0.05}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
