"""The jax and torch runtimes (Keras 3 in a worker process) on a CPU: what the worker costs, and
how the runtimes compare end to end. JSON.

``--part transport``: one backbone on one backend, model only, batches of ``--batch`` random
pixels, three ways (each the median per-batch time over ``--rounds`` rounds):
  in_process: the worker's own model object (``worker.BackendModel``) called directly, in a
    process whose Keras was put on that backend before import: the alternative design,
    "choose the backend before the first ``import keras``", and the floor;
  worker_shared: through the worker, pixels in the shared-memory buffer the engine decodes
    into (what `embed run` does: no copy);
  worker_copy: through the worker from a plain array (copied into shared memory first: what a
    caller that does not use ``Forward.buffer`` pays).
  Plus the copy alone (one batch into shared memory), and the worker's start (process start,
  imports, model build) against the in-process build.

``--part embed``: `embed run` end to end on photo-like 500x375 JPEGs, per runtime (tf,
litert, jax, torch: those installed), MobileNetV2 with ``--weights`` (the real weights when
present): steady images/s (after the first batch), set-up seconds, and parity of each
runtime's features with TensorFlow's (relative max difference).

Both report the load average before and after: figures taken above ~1.5 on these 2-core
machines are not results.

    python benchmarks/keras_runtimes.py --part all --images 256
    python benchmarks/keras_runtimes.py --part transport --backends torch --image-size 96 --rounds 3  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ASSETS, REPO_ROOT, machine, photo_like_jpegs  # noqa: E402

WEIGHTS_035 = ASSETS / "weights" / "mobilenet_v2_0.35_224_imagenet_notop.weights.h5"


def load() -> float:
    return round(os.getloadavg()[0], 2)


def _resolved(args):
    from headstart.embedder.backbones import BackboneConfig, resolve

    weights = str(WEIGHTS_035) if WEIGHTS_035.is_file() else "imagenet"
    return resolve(BackboneConfig(weights=weights, alpha=0.35, image_size=args.image_size, precision="float32"))


def _median_batch_s(step, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def in_process_child(args) -> dict:
    """Runs with KERAS_BACKEND set by the parent: the model in this very process."""
    import numpy as np

    from headstart.embedder.runtimes.worker import BackendModel

    started = time.perf_counter()
    model = BackendModel(args.backend, _resolved(args), lambda m: None)
    build_s = time.perf_counter() - started
    model.warm(args.batch)
    pixels = np.random.default_rng(0).uniform(0, 255, (args.batch, args.image_size, args.image_size, 3)).astype("f4")
    batch_s = _median_batch_s(lambda: model.run(pixels, args.batch), args.rounds)
    return {"start_and_build_s": build_s, "batch_s": batch_s}


def transport(args, backend: str) -> dict:
    import numpy as np

    from headstart.embedder.backbones import backbone_network
    from headstart.embedder.runtimes import RuntimeOptions, load_forward

    result: dict = {"backend": backend, "batch": args.batch, "image_size": args.image_size, "load_before": load()}
    env = dict(os.environ, KERAS_BACKEND=backend)
    proc = subprocess.run([sys.executable, __file__, "--child-in-process", "--backend", backend,
                           "--batch", str(args.batch), "--image-size", str(args.image_size),
                           "--rounds", str(args.rounds)], capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        return {**result, "error": proc.stderr[-1500:]}
    inproc = json.loads(proc.stdout.strip().splitlines()[-1])

    started = time.perf_counter()
    forward = load_forward(backend, backbone_network(_resolved(args)), RuntimeOptions())
    worker_start_s = time.perf_counter() - started
    forward.warm_up(args.batch)
    shape = (args.batch, args.image_size, args.image_size, 3)
    plain = np.random.default_rng(0).uniform(0, 255, shape).astype("f4")
    shared = forward.buffer(shape)
    shared[:] = plain
    shared_s = _median_batch_s(lambda: forward(shared), args.rounds)
    copy_s = _median_batch_s(lambda: forward(plain), args.rounds)
    scratch = forward.buffer(shape)
    copy_only_s = _median_batch_s(lambda: np.copyto(scratch, plain), max(args.rounds, 20))
    result.update({
        "in_process": {"batch_s": inproc["batch_s"], "images_per_s": args.batch / inproc["batch_s"]},
        "worker_shared": {"batch_s": shared_s, "images_per_s": args.batch / shared_s},
        "worker_copy": {"batch_s": copy_s, "images_per_s": args.batch / copy_s},
        "copy_one_batch_s": copy_only_s, "batch_mb": plain.nbytes / 1e6,
        "worker_vs_in_process": shared_s / inproc["batch_s"],
        "in_process_build_s": inproc["start_and_build_s"], "worker_start_and_build_s": worker_start_s,
        "device": forward.device, "load_after": load(),
    })
    return result


def embed(args, runtimes: list[str]) -> dict:
    import h5py
    import numpy as np

    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.job import EmbedOptions, run_embedding

    work = Path(tempfile.mkdtemp(prefix="keras-runtimes-"))
    images = photo_like_jpegs(Path(tempfile.gettempdir()) / f"headstart-bench-jpegs-{args.images}", args.images)
    weights = str(WEIGHTS_035) if WEIGHTS_035.is_file() else "imagenet"
    out: dict = {"images": args.images, "weights": Path(weights).name, "results": {}}
    features = {}
    try:
        for runtime in runtimes:
            before = load()
            cache = work / f"{runtime}.h5"
            report = run_embedding(images, BackboneConfig(weights=weights, alpha=0.35, precision="float32"),
                                   EmbedOptions(cache=cache, runtime=runtime, dtype="float32", progress=False))
            with h5py.File(cache, "r") as h5:
                order = np.argsort(h5["embeddings/keys"][:])
                features[runtime] = h5["embeddings/features"][:][order].astype(np.float64)
            out["results"][runtime] = {"steady_images_per_s": report.steady_rate, "images_per_s": report.rate,
                                       "setup_s": report.setup_s, "device": report.runtime_device,
                                       "load_before": before, "load_after": load()}
        if "tf" in features:
            reference = features["tf"]
            for runtime, got in features.items():
                out["results"][runtime]["relative_max_difference_vs_tf"] = float(
                    np.abs(got - reference).max() / np.abs(reference).max())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("transport", "embed", "all"), default="all")
    parser.add_argument("--backends", default="jax,torch")
    parser.add_argument("--runtimes", default="tf,litert,jax,torch")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--child-in-process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_in_process:
        print(json.dumps(in_process_child(args)))
        return
    from headstart.embedder.runtimes.keras_backend import backend_installed

    out: dict = {"benchmark": "keras_runtimes", "machine": machine(), "load_start": load()}
    backends = [b for b in args.backends.split(",") if b and backend_installed(b)]
    if args.part in ("transport", "all"):
        out["transport"] = [transport(args, backend) for backend in backends]
    if args.part in ("embed", "all"):
        runtimes = [r for r in args.runtimes.split(",") if r in ("tf", "litert") or r in backends]
        out["embed"] = embed(args, runtimes)
    out["load_end"] = load()
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
