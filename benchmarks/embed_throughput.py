"""Embedding throughput: is the backbone the bottleneck, and which runtime is fastest? JSON.

Every measurement runs in its own process (so its peak RSS is its own), on photo-like
500x375 JPEGs, at 224 px.

``--part pipeline`` (issue #2), MobileNetV2 on TensorFlow (``--runtime tf``):
  (a) model only: the compiled forward pass on pre-decoded images;
  (b) `embed run` end to end (at each --sizes count);
  (c) the tutorial way: keras.utils.load_img per image into one array, then model.predict;
  (d) a rerun of (b) on the unchanged folder.
  Targets: (b)/(a) >= 0.9, (b)/(c) >= 1.3, (b) RSS flat in the image count, (d) <= 5% of (b).

``--part devices`` (issue #5): with a GPU, images/s with mixed precision vs float32 for
MobileNetV2, EfficientNetB0 and ResNet50 (``--precision``, ``--devices``); on a CPU, the
2-logical-device run next to the 1-device run (no gain expected: it checks correctness).

``--part runtimes`` (issue #6): TensorFlow and LiteRT side by side for MobileNetV2,
EfficientNetB0 and ResNet50, model only and end to end, each also as a fraction of the
machine's measured float32 matmul peak (model FLOPs x images/s / peak FLOP/s), plus
TensorFlow model-only at the best CPU setting found (one intra-op thread, concurrent
calls), which `embed run` does not use.
  Target: MobileNetV2 end to end >= 90 images/s with LiteRT and >= 2x the TF path at its
  best; LiteRT end to end >= 0.9x its model-only rate.

    python benchmarks/embed_throughput.py --part all --sizes 1000,4000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    WEIGHTS_MOBILENET_V2, machine, matmul_peak_gflops, peak_rss_mb, photo_like_jpegs, run_child,
)

SCRIPT = Path(__file__).resolve()
RUNTIME_BACKBONES = ("MobileNetV2", "EfficientNetB0", "ResNet50")


def _config(backbone: str, weights: str):
    from headstart.embedder.backbones import BackboneConfig

    return BackboneConfig(backbone=backbone, weights=weights, image_size=224)


def _time_batches(forward, batches: list, images: int) -> tuple[int, float]:
    """Run ``forward`` over ``batches`` again and again until ``images`` are done: (done, seconds)."""
    done, start = 0, time.perf_counter()
    while done < images:
        for x in batches:
            forward(x)
            done += int(x.shape[0])
    return done, time.perf_counter() - start


def child_model(backbone: str, weights: str, runtime: str, batch: int, images: int, folder: str, work: str) -> dict:
    """The network alone, on real images decoded and resized before the clock starts."""
    import numpy as np

    from headstart.embedder.backbones import backbone_network, resolve
    from headstart.embedder.decode import recipe_for
    from headstart.embedder.engine import Engine
    from headstart.embedder.tf_runtime import tune_malloc

    tune_malloc()
    resolved = resolve(_config(backbone, weights))
    recipe = recipe_for(resolved.fingerprint)
    setup_started = time.perf_counter()
    forward = Engine(backbone_network(resolved), recipe, runtime=runtime, batch_size=batch).start()
    setup = time.perf_counter() - setup_started  # tf: build + trace; litert: load (or convert + check) + warm-up
    paths = sorted(Path(folder).rglob("*.jpg"))[: 4 * batch]
    decoded = [np.stack([recipe.load(p.read_bytes(), 224) for p in paths[i:i + batch]])
               for i in range(0, len(paths), batch)]
    forward(decoded[0])  # warm-up
    done, elapsed = _time_batches(forward, decoded, images)
    return {"images": done, "seconds": elapsed, "rate": done / elapsed, "runtime": forward.runtime,
            "layout": forward.reason, "setup_seconds": setup, "peak_rss_mb": peak_rss_mb()}


def child_model_tf_concurrent(backbone: str, weights: str, batch: int, images: int, folder: str,
                              chunk: int = 4) -> dict:
    """TensorFlow at the best CPU setting found, which `embed run` does not use: one
    intra-op thread, and one concurrent call per core, each on a chunk of the batch (the
    same idea as LiteRT's interpreter pool). It needs the thread settings before TensorFlow
    starts, which a library cannot impose on its host process; here it is the fairest
    "TensorFlow at its own best" for the LiteRT comparison."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from headstart.embedder.backbones import build_backbone, resolve
    from headstart.embedder.decode import CURRENT
    from headstart.embedder.devices import available_cores
    from headstart.embedder.runtimes.tf import compiled_forward
    from headstart.embedder.tf_runtime import import_tf, tune_malloc

    tune_malloc()
    tf = import_tf()
    cores = available_cores()
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    forward = compiled_forward(build_backbone(resolve(_config(backbone, weights))), 224)
    paths = sorted(Path(folder).rglob("*.jpg"))[: 4 * batch]
    decoded = [np.stack([CURRENT.load(p.read_bytes(), 224) for p in paths[i:i + batch]])
               for i in range(0, len(paths), batch)]
    workers = ThreadPoolExecutor(cores)

    def run(x):
        return np.concatenate(list(workers.map(lambda i: forward(x[i:i + chunk]).numpy(),
                                               range(0, len(x), chunk))))

    run(decoded[0])
    run(decoded[0])  # warm-up: one trace per chunk shape
    done, elapsed = _time_batches(run, decoded, images)
    return {"images": done, "seconds": elapsed, "rate": done / elapsed,
            "layout": f"{cores} concurrent calls x 1 intra-op thread, chunks of {chunk}"}


def child_embed(backbone: str, weights: str, runtime: str, batch: int, folder: str, cache: str, dtype: str,
                precision: str = "float32", devices: str = "", logical_cpus: int = 0, verify: str = "on") -> dict:
    """`embed run` end to end. ``verify off`` skips the engine's integrity check (hashing the
    bytes it decodes against their key), to measure what that check costs."""
    from headstart.embedder.devices import parse_devices
    from headstart.embedder.job import EmbedOptions, run_embedding
    from headstart.embedder.tf_runtime import import_tf

    if verify == "off":
        import headstart.embedder.engine as engine

        engine.verified_key = lambda data, expected: expected
    import_started = time.perf_counter()
    tf = import_tf()  # a fixed cost of any TensorFlow approach; (c) pays it outside its clock too
    if logical_cpus > 1:  # split this CPU into logical devices, as the tests do
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    start = time.perf_counter()
    config = _config(backbone, weights)
    config.precision = precision
    report = run_embedding(folder, config,
                           EmbedOptions(cache=Path(cache), batch_size=batch, dtype=dtype, runtime=runtime,
                                        devices=parse_devices(devices or None), progress=False))
    wall = time.perf_counter() - start
    return {"images": report.files, "embedded": report.embedded, "runtime": report.runtime,
            "devices": report.devices, "compute_dtype": report.fingerprint["compute_dtype"],
            "loop_seconds": report.embed_s, "setup_seconds": report.setup_s, "wall_seconds": wall,
            "loop_rate": report.rate, "steady_rate": report.steady_rate, "wall_rate": report.files / wall,
            "tf_import_seconds": start - import_started, "peak_rss_mb": peak_rss_mb()}


def child_naive(weights: str, folder: str) -> dict:
    """The seed tutorial's way: load every image with keras.utils.load_img, then predict."""
    import numpy as np

    from headstart.embedder.backbones import build_backbone, resolve
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    start = time.perf_counter()
    model = build_backbone(resolve(_config("MobileNetV2", weights)))
    paths = sorted(Path(folder).rglob("*.jpg"))
    arrays = [keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224))) for p in paths]
    data = np.stack(arrays)
    load_done = time.perf_counter()
    model.predict(data, batch_size=32, verbose=0)
    wall = time.perf_counter() - start
    return {"images": len(paths), "load_seconds": load_done - start, "wall_seconds": wall,
            "wall_rate": len(paths) / wall, "peak_rss_mb": peak_rss_mb()}


def child_flops(backbone: str) -> dict:
    """Float operations of one forward pass at 224 px, counted on the frozen graph."""
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    from headstart.embedder.backbones import build_backbone, resolve
    from headstart.embedder.tf_runtime import import_tf

    tf = import_tf()
    model = build_backbone(resolve(_config(backbone, "none")))
    fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(
        tf.TensorSpec([1, 224, 224, 3], tf.float32))
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    profile = tf.compat.v1.profiler.profile(graph=convert_variables_to_constants_v2(fn).graph,
                                            run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    return {"gflop_per_image": profile.total_float_ops / 1e9}


def child_peak() -> dict:
    return {"matmul_peak_gflops": matmul_peak_gflops()}


def _fresh(cache: Path) -> Path:
    for stale in (cache, cache.with_name(cache.name + ".parts")):
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    return cache


def pipeline_part(out: dict, work: Path, weights: str, dtype: str, bs: str, sizes: list[int],
                  naive_sizes: list[int]) -> None:
    folders = {n: photo_like_jpegs(work / f"images-{n}", n) for n in sorted(set(sizes) | set(naive_sizes))}
    n0 = sizes[0]
    runs = out["pipeline"] = {}
    model_args = ("model", "MobileNetV2", weights, "tf", bs, str(n0), str(folders[n0]), str(work))
    runs["a_model_only"] = run_child(SCRIPT, *model_args)
    for n in sizes:
        cache = _fresh(work / f"cache-tf-{n}.h5")
        runs[f"b_embed_{n}"] = run_child(SCRIPT, "embed", "MobileNetV2", weights, "tf", bs, str(folders[n]),
                                         str(cache), dtype)
        if n == n0:
            runs["d_rerun"] = run_child(SCRIPT, "embed", "MobileNetV2", weights, "tf", bs, str(folders[n]),
                                        str(cache), dtype)
    for n in naive_sizes:
        runs[f"c_naive_{n}"] = run_child(SCRIPT, "naive", weights, str(folders[n]))
    runs["a_model_only_again"] = run_child(SCRIPT, *model_args)  # noisy machine: average two
    b, c, d = runs[f"b_embed_{n0}"], runs[f"c_naive_{naive_sizes[0]}"], runs["d_rerun"]
    a_rate = (runs["a_model_only"]["rate"] + runs["a_model_only_again"]["rate"]) / 2
    ratios = {
        "b_steady_over_a": b["steady_rate"] / a_rate,
        "b_loop_over_a": b["loop_rate"] / a_rate,
        "b_wall_over_a": b["wall_rate"] / a_rate,
        "b_over_c_wall": b["wall_rate"] / c["wall_rate"],
        "d_over_b_wall": d["wall_seconds"] / b["wall_seconds"],
    }
    out["pipeline_ratios"] = ratios
    out["pipeline_targets"] = {"b_steady_over_a>=0.9": ratios["b_steady_over_a"] >= 0.9,
                               "b_over_c>=1.3": ratios["b_over_c_wall"] >= 1.3,
                               "d_over_b<=0.05": ratios["d_over_b_wall"] <= 0.05}


def runtimes_part(out: dict, work: Path, weights_mobilenet: str, batches: dict[str, int],
                  images: dict[str, int]) -> None:
    peak = run_child(SCRIPT, "peak")["matmul_peak_gflops"]
    result = out["runtimes"] = {"matmul_peak_gflops": peak}
    for backbone in images:
        n = images[backbone]
        folder = photo_like_jpegs(work / f"images-{n}", n)
        weights = weights_mobilenet if backbone == "MobileNetV2" else "none"
        dtype = "float16" if weights != "none" and backbone == "MobileNetV2" else "float32"
        gflop = run_child(SCRIPT, "flops", backbone)["gflop_per_image"]
        entry = result[backbone] = {"gflop_per_image": gflop, "images": n, "weights": weights if weights == "none"
                                    else "imagenet (shared asset)"}
        for runtime in ("tf", "litert"):
            bs = str(batches[runtime])
            lite_dir = work / f"litert-{runtime}"
            shutil.rmtree(lite_dir, ignore_errors=True)  # each runtime converts (or not) from scratch
            os.environ["HEADSTART_HOME"] = str(lite_dir)  # its own empty store of converted backbones
            model = run_child(SCRIPT, "model", backbone, weights, runtime, bs, str(n), str(folder), str(lite_dir))
            cache = _fresh(lite_dir / f"cache-{backbone}.h5")
            embed = run_child(SCRIPT, "embed", backbone, weights, runtime, bs, str(folder), str(cache), dtype)
            entry[runtime] = {
                "batch_size": batches[runtime],
                "layout": model["layout"],
                "model_only_rate": model["rate"],
                "first_setup_seconds": model["setup_seconds"],
                "end_to_end_steady_rate": embed["steady_rate"],
                "end_to_end_loop_rate": embed["loop_rate"],
                "end_to_end_wall_rate": embed["wall_rate"],
                "setup_seconds_with_kept_flatbuffer": embed["setup_seconds"],
                "model_only_fraction_of_peak": model["rate"] * gflop / peak,
                "end_to_end_fraction_of_peak": embed["steady_rate"] * gflop / peak,
                "peak_rss_mb": embed["peak_rss_mb"],
            }
        tuned = run_child(SCRIPT, "model_tf_concurrent", backbone, weights, str(batches["tf"]), str(n), str(folder))
        entry["tf_best_found"] = {"model_only_rate": tuned["rate"], "layout": tuned["layout"],
                                  "model_only_fraction_of_peak": tuned["rate"] * gflop / peak}
        entry["litert_over_tf_end_to_end"] = (entry["litert"]["end_to_end_steady_rate"]
                                              / entry["tf"]["end_to_end_steady_rate"])
        # TensorFlow's best: its fastest model-only rate, an upper bound on its end to end
        tf_best = max(entry["tf"]["model_only_rate"], tuned["rate"])
        entry["litert_end_to_end_over_tf_best_model_only"] = entry["litert"]["end_to_end_steady_rate"] / tf_best
        entry["litert_end_to_end_over_model_only"] = (entry["litert"]["end_to_end_steady_rate"]
                                                      / entry["litert"]["model_only_rate"])
    mobilenet = result.get("MobileNetV2")
    if mobilenet is None:
        return
    out["runtime_targets"] = {
        "mobilenetv2_litert_end_to_end>=90": mobilenet["litert"]["end_to_end_steady_rate"] >= 90,
        "mobilenetv2_litert_over_tf>=2": mobilenet["litert_over_tf_end_to_end"] >= 2,
        "mobilenetv2_litert_over_tf_best>=2": mobilenet["litert_end_to_end_over_tf_best_model_only"] >= 2,
        "litert_end_to_end_over_model_only>=0.9": mobilenet["litert_end_to_end_over_model_only"] >= 0.9,
    }


def integrity_part(out: dict, work: Path, weights: str, dtype: str, images: int, rounds: int) -> None:
    """What the engine's integrity check (hash the bytes it decodes, compare with their key)
    costs `embed run`: MobileNetV2 on LiteRT, with and without it, interleaved (noisy machine)."""
    folder = photo_like_jpegs(work / f"images-{images}", images)
    os.environ["HEADSTART_HOME"] = str(work / "home-integrity")
    runs: dict[str, list] = {"on": [], "off": []}
    for _ in range(rounds):
        for verify in ("on", "off"):
            cache = _fresh(work / f"cache-integrity-{verify}.h5")
            result = run_child(SCRIPT, "embed", "MobileNetV2", weights, "litert", "32", str(folder), str(cache), dtype,
                               "float32", "", "0", verify)
            runs[verify].append(result["steady_rate"])
    on, off = sum(runs["on"]) / rounds, sum(runs["off"]) / rounds
    out["integrity"] = {"images": images, "steady_rate_checked": runs["on"], "steady_rate_unchecked": runs["off"],
                        "mean_checked": on, "mean_unchecked": off, "cost": 1 - on / off,
                        "target_cost<=0.02": 1 - on / off <= 0.02}


def devices_part(out: dict, work: Path, weights_mobilenet: str, bs: str, images: int, devices: str,
                 precisions: list[str]) -> None:
    """With a GPU: mixed precision against float32 per backbone (on --devices). Without
    one: MobileNetV2 on 2 logical CPU devices next to 1 device (correctness, not speed)."""
    from headstart.embedder.devices import gpu_likely

    folder = photo_like_jpegs(work / f"images-{images}", images)
    result = out["devices"] = {"gpu": gpu_likely()}
    if gpu_likely():
        for backbone in RUNTIME_BACKBONES:
            weights = weights_mobilenet if backbone == "MobileNetV2" else "none"
            for precision in precisions:
                cache = _fresh(work / f"cache-gpu-{backbone}-{precision}.h5")
                run = run_child(SCRIPT, "embed", backbone, weights, "tf", bs, str(folder), str(cache), "float32",
                                precision, devices, "0")
                result[f"{backbone}_{precision}"] = {k: run[k] for k in (
                    "steady_rate", "loop_rate", "wall_rate", "devices", "compute_dtype", "peak_rss_mb")}
        return
    for label, device_arg, logical in (("one_device", "", "0"), ("two_logical_cpus", "all", "2")):
        cache = _fresh(work / f"cache-cpu-{label}.h5")
        run = run_child(SCRIPT, "embed", "MobileNetV2", weights_mobilenet, "tf", bs, str(folder), str(cache),
                        "float32", "float32", device_arg, logical)
        result[label] = {k: run[k] for k in ("steady_rate", "loop_rate", "wall_rate", "devices", "peak_rss_mb")}
    result["two_over_one"] = result["two_logical_cpus"]["steady_rate"] / result["one_device"]["steady_rate"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "pipeline", "runtimes", "devices", "integrity"), default="all")
    parser.add_argument("--integrity-images", type=int, default=1000, help="images for --part integrity")
    parser.add_argument("--integrity-rounds", type=int, default=3, help="interleaved runs each, for --part integrity")
    parser.add_argument("--devices", default="all", help="for --part devices on a GPU machine: all, or 0,1,...")
    parser.add_argument("--precision", default="mixed,float32", help="for --part devices on a GPU machine")
    parser.add_argument("--device-images", type=int, default=500, help="images for --part devices")
    parser.add_argument("--sizes", default="1000,4000", help="image counts for (b); the first is used for (a, c, d)")
    parser.add_argument("--naive-sizes", default=None, help="image counts for (c); default: the first size")
    parser.add_argument("--runtime-images", default="1000,500,200",
                        help="images per backbone for the runtime comparison (MobileNetV2,EfficientNetB0,ResNet50)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch for the pipeline part")
    parser.add_argument("--backbones", default=",".join(RUNTIME_BACKBONES), help="for --part runtimes")
    parser.add_argument("--runtime-batch-sizes", default="tf=16,litert=32",
                        help="batch per runtime for the runtime part (each its fastest end to end here)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "headstart-bench"))
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        kind, *rest = args.child
        children = {"model": child_model, "model_tf_concurrent": child_model_tf_concurrent, "embed": child_embed,
                    "naive": child_naive, "flops": child_flops, "peak": child_peak}
        print(json.dumps(children[kind](*[int(r) if r.isdigit() else r for r in rest])))
        return

    work = Path(args.workdir)
    real = WEIGHTS_MOBILENET_V2.is_file()
    weights = str(WEIGHTS_MOBILENET_V2) if real else "none"
    dtype = "float16" if real else "float32"  # random MobileNetV2 features underflow float16
    bs = str(args.batch_size)
    out: dict = {"benchmark": "embed_throughput", "machine": machine(), "image": "photo-like JPEG 500x375 -> 224",
                 "mobilenetv2_weights": "imagenet (shared asset)" if real else "none (random; speed is the same)",
                 "batch_size": args.batch_size}
    if args.part in ("all", "pipeline"):
        sizes = [int(s) for s in args.sizes.split(",")]
        naive_sizes = [int(s) for s in (args.naive_sizes or str(sizes[0])).split(",")]
        pipeline_part(out, work, weights, dtype, bs, sizes, naive_sizes)
    if args.part in ("all", "integrity"):
        integrity_part(out, work, weights, dtype, args.integrity_images, args.integrity_rounds)
    if args.part in ("all", "devices"):
        devices_part(out, work, weights, bs, args.device_images, args.devices, args.precision.split(","))
    if args.part in ("all", "runtimes"):
        counts = dict(zip(RUNTIME_BACKBONES, (int(n) for n in args.runtime_images.split(","))))
        counts = {b: n for b, n in counts.items() if b in args.backbones.split(",")}
        batches = {k: int(v) for k, v in (pair.split("=") for pair in args.runtime_batch_sizes.split(","))}
        out["runtime_batch_sizes"] = batches
        runtimes_part(out, work, weights, batches, counts)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
