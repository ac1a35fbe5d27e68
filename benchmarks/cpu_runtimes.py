"""CPU runtimes side by side (issue 16): LiteRT float32, OpenVINO float32 and bfloat16. JSON.

For MobileNetV2 (the real weights in ../shared/assets when present), EfficientNetB0 and
ResNet50 (random weights: the speed does not depend on the values), at 224 px, batch 32:

* ``model``: the network alone on decoded images; and the first-use costs one by one
  (building the Keras model, converting it, compiling or loading it, the first batch).
* ``embed``: `embed run` end to end on photo-like 500x375 JPEGs, twice: the first time with
  an empty store of converted backbones (set-up includes the conversion), the second with
  it filled (set-up is loading and compiling); the steady rate is the second run's.
* ``accuracy`` (hymenoptera, when present): caches from LiteRT float32, OpenVINO float32 and
  OpenVINO bfloat16 (default float16 storage, as users get it), the cosine of each image's
  bf16 features to its float32 ones, and val accuracy of the default dense head and of
  logistic regression (C = 0.01, 0.1, 1 as in the issue; 1 is the default) on each.

Every measurement runs in its own process, ``--repeats`` times, interleaved across runtimes
(the machine is shared and noisy); each result records the load average it ran under.
Where the CPU cannot compute in bfloat16 (no AVX512_BF16/AMX), those entries say so and
are skipped. Targets: MobileNetV2 `embed run` with OpenVINO bf16 >= 1.8x LiteRT float32
(steady state), bf16 features at cosine >= 0.98 to float32, head accuracy within 0.5 point.

    python benchmarks/cpu_runtimes.py --images 512 --repeats 3 > benchmarks/results/cpu_runtimes_2core.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ASSETS, WEIGHTS_MOBILENET_V2, machine, peak_rss_mb, photo_like_jpegs, run_child  # noqa: E402

SCRIPT = Path(__file__).resolve()
BACKBONES = ("MobileNetV2", "EfficientNetB0", "ResNet50")
CONFIGS = (("litert", "float32"), ("openvino", "float32"), ("openvino", "bf16"))
HYMENOPTERA = ASSETS / "data" / "hymenoptera"
LOGREG_C = (0.01, 0.1, 1.0)


def _config(backbone: str, weights: str, precision: str):
    from headstart.embedder.backbones import BackboneConfig

    return BackboneConfig(backbone=backbone, weights=weights, image_size=224, precision=precision)


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------ children


def child_model(backbone: str, weights: str, runtime: str, precision: str, batch: int, images: int,
                folder: str) -> dict:
    """The network alone, and what its first use costs, piece by piece."""
    import numpy as np

    from headstart.embedder.backbones import build_backbone, resolve
    from headstart.embedder.decode import recipe_for
    from headstart.embedder.tf_runtime import import_tf, tune_malloc

    tune_malloc()
    load_before = _load()
    resolved = resolve(_config(backbone, weights, precision))
    recipe = recipe_for(resolved.fingerprint)
    paths = sorted(Path(folder).rglob("*.jpg"))[: 4 * batch]
    decoded = [np.stack([recipe.load(p.read_bytes(), 224) for p in paths[i:i + batch]])
               for i in range(0, len(paths), batch)]
    started = time.perf_counter()
    import_tf()
    costs = {"tensorflow_import_s": time.perf_counter() - started}
    started = time.perf_counter()
    model = build_backbone(resolved)
    costs["keras_build_s"] = time.perf_counter() - started
    started = time.perf_counter()
    if runtime == "litert":
        from headstart.embedder.runtimes.litert import LiteRTForward, convert

        flatbuffer = convert(model)
        costs["convert_s"] = time.perf_counter() - started
        started = time.perf_counter()
        forward = LiteRTForward(flatbuffer)
        costs["load_s"] = time.perf_counter() - started
        layout = forward.layout
    else:
        from headstart.embedder.runtimes.openvino import OpenVINOForward, convert, pack

        ov_model = convert(model)
        costs["convert_s"] = time.perf_counter() - started
        costs["stored_bytes"] = len(pack(ov_model))
        compute_dtype = resolved.fingerprint["compute_dtype"]
        forward = OpenVINOForward(ov_model, compute_dtype)
        costs["compile_s"] = forward.compile_s
        layout = forward.layout
    started = time.perf_counter()
    forward(decoded[0])
    costs["first_batch_s"] = time.perf_counter() - started
    reference = np.asarray(model(decoded[0], training=False))
    got = forward(decoded[0])
    relative = float(np.abs(got - reference).max() / max(np.abs(reference).max(), 1e-30))
    cosine = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    done, start = 0, time.perf_counter()
    while done < images:
        for x in decoded:
            forward(x)
            done += len(x)
    elapsed = time.perf_counter() - start
    return {"rate": done / elapsed, "images": done, "layout": layout, "first_use": costs,
            "vs_tensorflow_float32": {"max_relative_difference": relative, "min_cosine": float(cosine.min()),
                                      "mean_cosine": float(cosine.mean())},
            "load_before": load_before, "load_after": _load(), "peak_rss_mb": peak_rss_mb()}


def child_embed(backbone: str, weights: str, runtime: str, precision: str, batch: int, folder: str,
                cache: str) -> dict:
    """`embed run` end to end (as the CLI runs it, through the engine)."""
    from headstart.embedder.job import EmbedOptions, run_embedding

    load_before = _load()
    start = time.perf_counter()
    dtype = "float32" if weights == "none" else "float16"  # random MobileNetV2 features underflow float16
    report = run_embedding(folder, _config(backbone, weights, precision),
                           EmbedOptions(cache=Path(cache), batch_size=batch, runtime=runtime, dtype=dtype,
                                        progress=False))
    wall = time.perf_counter() - start
    return {"embedded": report.embedded, "runtime": report.runtime,
            "compute_dtype": report.fingerprint["compute_dtype"], "setup_s": report.setup_s,
            "steady_rate": report.steady_rate, "loop_rate": report.rate, "wall_s": wall,
            "load_before": load_before, "load_after": _load(), "peak_rss_mb": peak_rss_mb()}


def child_heads(cache: str, work: str) -> dict:
    """Val accuracy of the default dense head and of logistic regression (C as in the issue) on one cache."""
    from headstart.heads.params import make_params
    from headstart.heads.train import train_head

    runs = Path(work)
    result = {"dense": train_head(make_params("dense"), cache=cache, out=runs / "dense").metrics["accuracy"]}
    for c in LOGREG_C:
        result[f"logreg_C={c:g}"] = train_head(make_params("logreg", C=c), cache=cache,
                                               out=runs / f"logreg-{c:g}").metrics["accuracy"]
    return result


def child_cosines(reference: str, other: str) -> dict:
    """Per image (matched by content key): cosine of ``other``'s features to ``reference``'s."""
    import numpy as np

    from headstart.embedder.cache import open_cache

    a, b = open_cache(reference), open_cache(other)
    rows = {k: i for i, k in enumerate(b.keys)}
    order = [rows[k] for k in a.keys]
    x = np.asarray(a.read_rows(np.arange(len(a.keys))), dtype=np.float64)
    y = np.asarray(b.read_rows(np.asarray(order)), dtype=np.float64)
    cosine = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    relative = float(np.abs(x - y).max() / np.abs(x).max())
    return {"images": len(order), "mean_cosine": float(cosine.mean()), "min_cosine": float(cosine.min()),
            "max_relative_difference": relative}


# -------------------------------------------------------------------------------- parts


def _bf16_skip() -> str | None:
    from headstart.embedder.runtimes.openvino import bf16_refusal

    return bf16_refusal()


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def speed_part(out: dict, work: Path, backbones: list[str], images: int, e2e_images: int, repeats: int,
               batch: int) -> None:
    folder = photo_like_jpegs(work / f"images-{e2e_images}", e2e_images)
    skip = _bf16_skip()
    configs = [(r, p) for r, p in CONFIGS if not (p == "bf16" and skip)]
    result = out["speed"] = {}
    for backbone in backbones:
        weights = str(WEIGHTS_MOBILENET_V2) if backbone == "MobileNetV2" and WEIGHTS_MOBILENET_V2.is_file() else "none"
        entry = result[backbone] = {"weights": "imagenet (shared asset)" if weights != "none" else "none (random)"}
        runs: dict[str, dict] = {f"{r} {p}": {"model": [], "embed_first": [], "embed": []} for r, p in configs}
        for _ in range(repeats):  # interleaved: a noisy minute hurts every runtime alike
            for runtime, precision in configs:
                name = f"{runtime} {precision}"
                home = work / f"home-{runtime}-{precision}"
                shutil.rmtree(home, ignore_errors=True)
                os.environ["HEADSTART_HOME"] = str(home)  # an empty store: the first use converts
                runs[name]["model"].append(run_child(SCRIPT, "model", backbone, weights, runtime, precision,
                                                     str(batch), str(images), str(folder)))
                for key in ("embed_first", "embed"):
                    cache = work / f"cache-{backbone}-{runtime}-{precision}.h5"
                    shutil.rmtree(cache.with_name(cache.name + ".parts"), ignore_errors=True)
                    cache.unlink(missing_ok=True)
                    runs[name][key].append(run_child(SCRIPT, "embed", backbone, weights, runtime, precision,
                                                     str(batch), str(folder), str(cache)))
        for name, got in runs.items():
            entry[name] = {
                "model_only_rate": _median([r["rate"] for r in got["model"]]),
                "end_to_end_steady_rate": _median([r["steady_rate"] for r in got["embed"]]),
                "model_only_rates": [round(r["rate"], 1) for r in got["model"]],
                "end_to_end_steady_rates": [round(r["steady_rate"], 1) for r in got["embed"]],
                "layout": got["model"][0]["layout"],
                "first_use": got["model"][0]["first_use"],
                "embed_setup_s_first_use": _median([r["setup_s"] for r in got["embed_first"]]),
                "embed_setup_s_from_store": _median([r["setup_s"] for r in got["embed"]]),
                "vs_tensorflow_float32": got["model"][0]["vs_tensorflow_float32"],
                "load_averages": [r["load_before"] for r in got["model"] + got["embed"]],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in got["embed"]),
            }
        base = entry["litert float32"]
        for name in entry:
            if isinstance(entry[name], dict) and name != "litert float32" and "model_only_rate" in entry[name]:
                entry[name]["over_litert_float32"] = {
                    "model_only": entry[name]["model_only_rate"] / base["model_only_rate"],
                    "end_to_end": entry[name]["end_to_end_steady_rate"] / base["end_to_end_steady_rate"]}
        if skip:
            entry["openvino bf16"] = {"skipped": skip}
    mobilenet = result.get("MobileNetV2", {}).get("openvino bf16", {})
    if "over_litert_float32" in mobilenet:
        out["targets"] = {"mobilenetv2_end_to_end_bf16_over_litert>=1.8":
                          mobilenet["over_litert_float32"]["end_to_end"] >= 1.8}


def accuracy_part(out: dict, work: Path, weights: str) -> None:
    if not HYMENOPTERA.is_dir():
        out["accuracy"] = {"skipped": f"no hymenoptera set at {HYMENOPTERA}"}
        return
    skip = _bf16_skip()
    result = out["accuracy"] = {  # the storage dtype is child_embed's
        "images": str(HYMENOPTERA), "backbone": "MobileNetV2 1.0, 224 px",
        "weights": "imagenet (shared asset)" if weights != "none" else "none (random: a check that it runs)",
        "storage": "float16 (the default)" if weights != "none" else "float32"}
    os.environ["HEADSTART_HOME"] = str(work / "home-accuracy")
    caches = {}
    for runtime, precision in CONFIGS:
        name = f"{runtime} {precision}"
        if precision == "bf16" and skip:
            result[name] = {"skipped": skip}
            continue
        cache = work / f"hymenoptera-{runtime}-{precision}.h5"
        shutil.rmtree(cache.with_name(cache.name + ".parts"), ignore_errors=True)
        cache.unlink(missing_ok=True)
        run_child(SCRIPT, "embed", "MobileNetV2", weights, runtime, precision, "32", str(HYMENOPTERA), str(cache))
        caches[name] = cache
        result[name] = {"val_accuracy": run_child(SCRIPT, "heads", str(cache), str(work / f"runs-{runtime}-{precision}"))}
    if "openvino float32" in caches:
        result["openvino float32 vs litert float32"] = run_child(SCRIPT, "cosines", str(caches["litert float32"]),
                                                                 str(caches["openvino float32"]))
    if "openvino bf16" in caches:
        result["openvino bf16 vs openvino float32"] = run_child(SCRIPT, "cosines", str(caches["openvino float32"]),
                                                                str(caches["openvino bf16"]))
        f32, bf16 = result["openvino float32"]["val_accuracy"], result["openvino bf16"]["val_accuracy"]
        result["bf16_minus_float32_points"] = {k: round(100 * (bf16[k] - f32[k]), 2) for k in f32}
        out.setdefault("targets", {})["head_accuracy_within_0.5_point"] = all(
            abs(v) <= 0.5 for v in result["bf16_minus_float32_points"].values())
        out["targets"]["bf16_cosine>=0.98"] = result["openvino bf16 vs openvino float32"]["min_cosine"] >= 0.98


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, args = sys.argv[2], sys.argv[3:]
        if kind == "model":
            result = child_model(args[0], args[1], args[2], args[3], int(args[4]), int(args[5]), args[6])
        elif kind == "embed":
            result = child_embed(args[0], args[1], args[2], args[3], int(args[4]), args[5], args[6])
        elif kind == "heads":
            result = child_heads(args[0], args[1])
        else:
            result = child_cosines(args[0], args[1])
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "accuracy", "all"), default="all")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--images", type=int, default=256, help="images per model-only measurement")
    parser.add_argument("--e2e-images", type=int, default=512, help="JPEGs embedded end to end")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="cpu-runtimes-"))
    work.mkdir(parents=True, exist_ok=True)
    from headstart.embedder.runtimes.openvino import cpu_bfloat16

    info = machine()
    from importlib import metadata

    for dist in ("openvino", "ai-edge-litert"):
        try:
            info["versions"][dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    info["bfloat16"] = cpu_bfloat16() or "no (neither AVX512_BF16 nor AMX)"
    out: dict = {"machine": info, "batch_size": args.batch_size, "load_at_start": _load()}
    if args.part in ("speed", "all"):
        speed_part(out, work, args.backbones.split(","), args.images, args.e2e_images, args.repeats, args.batch_size)
    if args.part in ("accuracy", "all"):
        weights = str(WEIGHTS_MOBILENET_V2) if WEIGHTS_MOBILENET_V2.is_file() else "none"
        accuracy_part(out, work, weights)
    out["load_at_end"] = _load()
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
