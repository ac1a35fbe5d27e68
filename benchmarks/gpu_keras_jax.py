"""Backbone forward-pass images/s on a GPU under Keras 3 on JAX: mixed precision vs float32 (issue #5). JSON.

For a machine that has a GPU and JAX but no TensorFlow: our embed pipeline needs
TensorFlow (tf.data), so this measures the part the GPU changes, the backbone's forward
pass, with Keras on its JAX backend. It imports only numpy, keras, jax and the standard
library (never tensorflow, never our ``embedder`` package).

Each model is what ``embedder.backbones.build_backbone`` builds, rebuilt here from plain
Keras layers: pixels float32 [B, S, S, 3] in [0, 255] -> the family's preprocessing as
layers inside the model (MobileNetV2: x/127.5 - 1; ResNet50: RGB->BGR minus the caffe
mean as a fixed 1x1 convolution; EfficientNetB0 does its own) -> ``keras.applications``
backbone (include_top=False, pooling='avg', weights=None) -> under a mixed policy, a
float32 ``Activation('linear')`` so features leave as float32. Weights are random (drawn
with numpy from each layer's own initializer, see ``build_model``), then every
BatchNormalization's statistics are set from one batch (``calibrate_batchnorm``) so the
activations have a trained network's scale; the mixed models get the float32 model's
weights, so their features can be compared on the same input.

How it is run: ``model.stateless_call(trainable, non_trainable, x, training=False)``
under ``jax.jit``, lowered and compiled ahead of time for each batch size (so trace and
XLA compile times are measured apart from running). The weights are arguments of the
compiled function, not constants folded into it; this is what Keras' own JAX
``predict_step`` runs, without ``predict_on_batch``'s per-call host<->device conversion
(``--with-keras-predict`` times that too, for comparison). The function takes uint8
pixels and casts them to float32 on the device.

Per backbone x precision x batch size:
  device_resident: the same uint8 batch already on the device; only forward passes are
    timed (async dispatch, block_until_ready at the end of each round; median of rounds);
  h2d_pipelined: each step puts a fresh host uint8 batch on the device, runs the model
    and fetches the previous step's features to host numpy (what an embed loop pays,
    with one batch in flight);
  h2d_serial: put, run, fetch, one batch at a time (nothing overlaps);
  parity_vs_float32: the features against float32's on the same batch (relative L2 per
    image, cosine, max abs); ``feature_abs_mean`` says the features are not ~0 (without the
    BatchNorm calibration, ``--no-bn-calibrate``, MobileNetV2's are ~1e-12 and float16
    flushes them to 0).
Precisions: float32 (JAX's default matmul/conv precision, which on recent NVIDIA GPUs
may use TF32, like TensorFlow's default), mixed_float16, mixed_bfloat16, and
float32_highest (float32 with ``jax.default_matmul_precision('highest')``: true float32,
only at the first batch size).

Work runs in priority order (the first two batch sizes for every backbone and
precision, then float32_highest, then the other batch sizes) and stops before a step that would
not fit in ``--time-budget-s`` (estimated from the backbone's previous steps), so the
JSON of what was done is always printed; with ``--out`` it is also rewritten after every
step, and SIGINT/SIGTERM end the run cleanly.

    KERAS_BACKEND=jax python benchmarks/gpu_keras_jax.py --time-budget-s 360 --out gpu.json
    KERAS_BACKEND=jax python benchmarks/gpu_keras_jax.py --quick      # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import signal
import statistics
import sys
import time
import warnings

if os.environ.setdefault("KERAS_BACKEND", "jax") != "jax":
    sys.exit(f"gpu_keras_jax.py needs KERAS_BACKEND=jax, got {os.environ['KERAS_BACKEND']!r}")

START = time.perf_counter()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

BACKBONES = ("MobileNetV2", "EfficientNetB0", "ResNet50")
PREPROCESSING = {"MobileNetV2": "tf", "EfficientNetB0": "none", "ResNet50": "caffe"}
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16", "float32_highest")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def _stop(signum, frame):  # SIGTERM -> the same clean stop as Ctrl-C / timeout -s INT
    raise KeyboardInterrupt(f"signal {signum}")


# ----------------------------------------------------------------------------- models


def _preprocessing(mode: str):
    """The family's preprocess_input as layers inside the model (as embedder.backbones does)."""
    seq = keras.Sequential(name=f"preprocess_{mode}")
    if mode == "tf":
        seq.add(keras.layers.Rescaling(1.0 / 127.5, offset=-1.0))
    elif mode == "caffe":  # RGB -> BGR and minus the BGR mean: a fixed 1x1 convolution
        permute = np.zeros((1, 1, 3, 3), dtype="float32")
        for out_channel, in_channel in enumerate((2, 1, 0)):
            permute[0, 0, in_channel, out_channel] = 1.0
        conv = keras.layers.Conv2D(3, 1, trainable=False)
        conv.build((None, None, None, 3))
        conv.set_weights([permute, -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
        seq.add(conv)
    else:
        seq.add(keras.layers.Identity())
    return seq


def build_model(backbone: str, policy: str, size: int, seed: int = 0, fast_init: bool = True):
    """pixels [0, 255] float32 -> pooled float32 features, built under ``policy``; and how
    its weights were initialised.

    ``fast_init``: Keras on JAX initialises every variable eagerly, and each new weight
    shape costs an XLA compile of its initializer (~160 for EfficientNetB0: tens of
    seconds, on a GPU too). Instead the layers are built in a ``keras.StatelessScope``
    (variables left uninitialised) and each variable gets a numpy draw from its own
    initializer's distribution (VarianceScaling family, normal, truncated normal, uniform,
    constants; anything else runs the Keras initializer). Same distributions, other draws,
    no compiles. This uses two private Keras attributes (``_initializer``, ``_initialize``);
    on an error it falls back to the plain build.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    mixed = policy.startswith("mixed")
    try:
        keras.utils.set_random_seed(seed)
        preprocess = _preprocessing(PREPROCESSING[backbone])  # built eagerly: it sets its own weights
        preprocess.build((None, size, size, 3))
        scope = keras.StatelessScope(initialize_variables=False) if fast_init else contextlib.nullcontext()
        with scope, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            base = getattr(keras.applications, backbone)(
                include_top=False, weights=None, input_shape=(size, size, 3), pooling="avg")
            inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
            x = base(preprocess(inputs), training=False)
            if mixed:
                x = keras.layers.Activation("linear", dtype="float32", name="features_float32")(x)
            model = keras.Model(inputs, x, name=f"{backbone}_{policy}")
    finally:
        keras.config.set_dtype_policy(previous)
    init = {"method": "keras eager initializers"}
    if fast_init:
        try:
            rng = np.random.default_rng(seed)
            counts: dict = {}
            for variable in model.variables:
                if getattr(variable, "_value", 0) is not None:
                    continue
                value, how = _numpy_init(variable._initializer, tuple(int(d) for d in variable.shape),
                                         variable.dtype, rng)
                variable._initialize(value)
                counts[how] = counts.get(how, 0) + 1
            init = {"method": "numpy draws from each variable's initializer", "variables": counts}
        except Exception as exc:  # private API changed: build the plain way
            log(f"fast init failed ({type(exc).__name__}: {exc}); plain build")
            init = None
        _forget_uninitialised()
        if init is None:
            return build_model(backbone, policy, size, seed, fast_init=False)
    model.trainable = False
    return model, init


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


def calibrate_batchnorm(model, pixels_u8) -> int:
    """Set every BatchNormalization's moving mean/variance to the statistics it sees on
    ``pixels_u8`` (one training-mode pass with momentum 0, jitted).

    Random weights with fresh BatchNorm (mean 0, variance 1) give features that shrink
    layer after layer (MobileNetV2's ~1e-12: float16 flushes them to 0, so no precision
    comparison means anything). Calibrated, activations are normalised as in a trained
    network. Returns the number of BatchNormalization layers set.
    """
    norms = [layer for layer in _all_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return 0
    momenta = [layer.momentum for layer in norms]
    model.trainable = True  # a frozen BatchNormalization ignores training=True
    try:
        for layer in norms:
            layer.momentum = 0.0
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        @jax.jit
        def statistics(trainable, non_trainable, x):
            _, updated = model.stateless_call(trainable, non_trainable, x.astype(jnp.float32), training=True)
            return updated

        updated = statistics(trainable, non_trainable, jnp.asarray(pixels_u8))
        for variable, value in zip(model.non_trainable_variables, updated):
            variable.assign(value)
    finally:
        for layer, momentum in zip(norms, momenta):
            layer.momentum = momentum
        model.trainable = False
    return len(norms)


def _fans(shape: tuple) -> tuple[float, float]:
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    if len(shape) == 2:
        return float(shape[0]), float(shape[1])
    receptive = float(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, shape, mean, stddev):
    """Normal draws re-drawn until within 2 standard deviations (as jax.random.truncated_normal)."""
    values = rng.standard_normal(shape)
    bad = np.abs(values) > 2.0
    while bad.any():
        values[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(values) > 2.0
    return values * stddev + mean


def _numpy_init(initializer, shape: tuple, dtype, rng):
    """A device array drawn from ``initializer``'s distribution with numpy, and which rule made it."""
    inits = keras.initializers
    if isinstance(initializer, inits.VarianceScaling):
        fan_in, fan_out = _fans(shape)
        fan = {"fan_in": fan_in, "fan_out": fan_out}.get(initializer.mode, (fan_in + fan_out) / 2.0)
        scale = initializer.scale / max(1.0, fan)
        if initializer.distribution == "truncated_normal":
            value = _truncated_normal(rng, shape, 0.0, math.sqrt(scale) / 0.87962566103423978)
        elif initializer.distribution == "untruncated_normal":
            value = rng.standard_normal(shape) * math.sqrt(scale)
        else:
            limit = math.sqrt(3.0 * scale)
            value = rng.uniform(-limit, limit, shape)
        how = f"VarianceScaling({initializer.mode},{initializer.distribution})"
    elif isinstance(initializer, inits.TruncatedNormal):
        value, how = _truncated_normal(rng, shape, initializer.mean, initializer.stddev), "TruncatedNormal"
    elif isinstance(initializer, inits.RandomNormal):
        value, how = rng.normal(initializer.mean, initializer.stddev, shape), "RandomNormal"
    elif isinstance(initializer, inits.RandomUniform):
        value, how = rng.uniform(initializer.minval, initializer.maxval, shape), "RandomUniform"
    elif isinstance(initializer, inits.Zeros):
        value, how = np.zeros(shape), "Zeros"
    elif isinstance(initializer, inits.Ones):
        value, how = np.ones(shape), "Ones"
    elif isinstance(initializer, inits.Constant) and np.ndim(initializer.value) == 0:
        value, how = np.full(shape, float(initializer.value)), "Constant"
    else:  # e.g. a seed generator's state: the Keras initializer itself
        return initializer(shape, dtype=dtype), f"keras:{type(initializer).__name__}"
    return jax.device_put(np.asarray(value, dtype=np.dtype(dtype))), how


def _forget_uninitialised() -> None:
    """Drop the variables that StatelessScope registered for a later deferred init."""
    try:
        from keras.src.backend.common import global_state

        pending = global_state.get_global_attribute("uninitialized_variables") or []
        global_state.set_global_attribute("uninitialized_variables",
                                          [v for v in pending if getattr(v, "_value", 0) is None])
    except Exception:
        pass


def share_weights(target, source) -> bool:
    """Give ``target`` the weights of ``source`` (same architecture, other policy)."""
    src, dst = source.get_weights(), target.weights
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src, dst)):
        return False
    target.set_weights(src)
    return True


def backbone_layer_name(model) -> str:
    return next(layer.name for layer in model.layers if isinstance(layer, keras.Model)
                and not layer.name.startswith("preprocess_"))


def conv_compute_dtype(model) -> str:
    """The compute dtype of the backbone's first convolution: what the network really runs in."""
    base = model.get_layer(backbone_layer_name(model))
    conv = next(layer for layer in base.layers if isinstance(layer, keras.layers.Conv2D))
    return str(conv.compute_dtype)


def forward_fn(model):
    def forward(trainable, non_trainable, pixels_u8):
        outputs, _ = model.stateless_call(trainable, non_trainable, pixels_u8.astype(jnp.float32),
                                          training=False)
        return outputs

    return jax.jit(forward)


def _flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        value = float(cost.get("flops", 0.0)) if cost else 0.0
        return value if value > 0 else None
    except Exception:  # cost analysis is best effort: some versions/platforms lack it
        return None


# ----------------------------------------------------------------------------- timing


def _rounds(step, min_time: float, rounds: int, batch: int) -> dict:
    """Images/s of ``step(n)`` (runs n steps and waits for them), over ``rounds`` rounds."""
    started = time.perf_counter()
    step(1)
    once = max(time.perf_counter() - started, 1e-6)
    n = max(2, math.ceil(min_time / once))
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        step(n)
        rates.append(n * batch / (time.perf_counter() - started))
    return {"images_per_s": statistics.median(rates), "best_images_per_s": max(rates),
            "worst_images_per_s": min(rates), "steps_per_round": n, "rounds": rounds,
            "ms_per_batch": 1000.0 * batch / statistics.median(rates)}


def time_device_resident(run, x_dev, batch, min_time, rounds):
    dispatch = []

    def step(n):
        out = None
        started = time.perf_counter()
        for _ in range(n):
            out = run(x_dev)
        dispatch.append((time.perf_counter() - started) / n)
        out.block_until_ready()

    result = _rounds(step, min_time, rounds, batch)
    # Host time to enqueue one call; near ms_per_batch means the host, not the GPU, sets the pace.
    result["host_dispatch_ms_per_batch"] = 1000.0 * statistics.median(dispatch[1:])
    return result


def time_h2d_pipelined(run, hosts, batch, min_time, device):
    def step(n):
        previous = None
        for i in range(n):
            out = run(jax.device_put(hosts[i % len(hosts)], device))
            if previous is not None:
                np.asarray(previous)
            previous = out
        np.asarray(previous)

    return _rounds(step, min_time, 1, batch)


def time_h2d_serial(run, hosts, batch, min_time, device):
    def step(n):
        for i in range(n):
            np.asarray(run(jax.device_put(hosts[i % len(hosts)], device)))

    return _rounds(step, min_time, 1, batch)


def time_transfer(hosts, batch, min_time, device) -> dict:
    def step(n):
        for i in range(n):
            jax.device_put(hosts[i % len(hosts)], device).block_until_ready()

    result = _rounds(step, min_time, 1, batch)
    result["gb_per_s"] = result["images_per_s"] * hosts[0][0].nbytes / 1e9
    return result


def parity(features: np.ndarray, reference: np.ndarray) -> dict:
    a, r = features.astype(np.float64), reference.astype(np.float64)
    diff = np.abs(a - r)
    row_ref = np.linalg.norm(r, axis=1)
    row_rel = np.linalg.norm(a - r, axis=1) / np.maximum(row_ref, 1e-30)
    cos = (a * r).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * row_ref, 1e-30)
    return {
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_over_max_abs_ref": float(diff.max() / max(np.abs(r).max(), 1e-30)),
        "row_rel_l2_median": float(np.median(row_rel)),
        "row_rel_l2_max": float(row_rel.max()),
        "cosine_min": float(cos.min()),
        "nonfinite": int((~np.isfinite(features)).sum()),
        "zero_fraction": float((features == 0).mean()),
        "reference_zero_fraction": float((reference == 0).mean()),
    }


def feature_stats(features: np.ndarray) -> dict:
    f = features.astype(np.float64)
    return {"feature_dim": int(features.shape[1]), "feature_abs_mean": float(np.abs(f).mean()),
            "feature_abs_max": float(np.abs(f).max()), "feature_std": float(f.std()),
            "nonfinite": int((~np.isfinite(features)).sum())}


# ----------------------------------------------------------------------------- machine


def machine() -> dict:
    devices = jax.devices()
    info = {
        "jax_devices": [str(d) for d in devices],
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "gpu": devices[0].platform == "gpu",
        "jax": jax.__version__,
        "jaxlib": getattr(__import__("jaxlib"), "__version__", ""),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu": "",
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "env": {k: os.environ[k] for k in ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                            "XLA_FLAGS", "CUDA_VISIBLE_DEVICES") if k in os.environ},
    }
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        stats = devices[0].memory_stats() or {}
        info["device_memory_limit_gb"] = round(stats.get("bytes_limit", 0) / 1e9, 2)
    except Exception:
        pass
    return info


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="float32 is the reference; float32_highest runs only at the first batch size")
    parser.add_argument("--batch-sizes", default=None,
                        help="order of work: the first two for every backbone and precision, then "
                             "float32_highest at the first, then the rest (default 256,64,512; --quick 4,2)")
    parser.add_argument("--image-size", type=int, default=None, help="default 224; --quick 64")
    parser.add_argument("--min-time-s", type=float, default=None, help="per timing round (default 0.6; --quick 0.05)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the device-resident timing (default 3)")
    parser.add_argument("--time-budget-s", type=float, default=0.0,
                        help="stop before a step that would end past this many seconds from start (0: none)")
    parser.add_argument("--first-step-estimate-s", type=float, default=40.0,
                        help="assumed cost of a backbone's first step (build + compile + timing)")
    parser.add_argument("--with-keras-predict", action="store_true",
                        help="also time model.predict_on_batch (host numpy in and out) at the first batch size")
    parser.add_argument("--no-bn-calibrate", action="store_true",
                        help="keep fresh BatchNorm statistics (features of random weights then shrink to ~0)")
    parser.add_argument("--calibration-images", type=int, default=None, help="default 16; --quick 4")
    parser.add_argument("--plain-init", action="store_true",
                        help="let Keras initialise the weights eagerly (one XLA compile per weight shape)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test for a CPU")
    parser.add_argument("--out", default="", help="also write the JSON here (rewritten after every step)")
    args = parser.parse_args()
    defaults = ({"image_size": 64, "batch_sizes": "4,2", "min_time_s": 0.05, "rounds": 2, "calibration_images": 4}
                if args.quick else
                {"image_size": 224, "batch_sizes": "256,64,512", "min_time_s": 0.6, "rounds": 3,
                 "calibration_images": 16})
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)

    signal.signal(signal.SIGTERM, _stop)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    for p in precisions:
        if p not in PRECISIONS:
            sys.exit(f"unknown precision {p!r}; use {', '.join(PRECISIONS)}")
    deadline = START + args.time_budget_s if args.time_budget_s > 0 else math.inf
    device = jax.devices()[0]
    size = args.image_size

    out: dict = {
        "benchmark": "gpu_keras_jax", "issue": 5,
        "method": "keras.Model.stateless_call under jax.jit, AOT-compiled per batch size; weights passed as "
                  "arguments; uint8 pixels cast to float32 on device; random weights (weights=None)",
        "machine": machine(),
        "config": {"backbones": backbones, "precisions": precisions, "batch_sizes": batch_sizes,
                   "image_size": size, "min_time_s": args.min_time_s, "rounds": args.rounds,
                   "time_budget_s": args.time_budget_s, "quick": args.quick},
        "transfer_h2d_uint8": {}, "results": [], "skipped": [], "errors": [],
        "notes": [
            "float32 uses JAX's default matmul/conv precision (may be TF32 on Ampere/Hopper, like TF's default); "
            "float32_highest forces full float32",
            "speedup_vs_float32 compares device_resident images/s at the same batch size",
            "random weights (numpy draws from each layer's initializer) with BatchNorm statistics set from one "
            "batch of random pixels, unless bn_calibrated_layers is absent; parity is per-image relative L2",
        ],
    }
    log(f"{out['machine']['device_kind']} ({out['machine']['platform']}), jax {jax.__version__}, "
        f"keras {keras.__version__}, {os.cpu_count()} CPUs")

    def write() -> None:
        out["elapsed_s"] = time.perf_counter() - START
        out["table"] = table(out["results"])
        if args.out:
            tmp = args.out + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(out, fh, indent=2)
            os.replace(tmp, args.out)

    # Work in priority order.
    def sweep(sizes):
        return [(bs, b, p) for bs in sizes for b in backbones for p in precisions if p != "float32_highest"]

    steps = sweep(batch_sizes[:2])
    steps += [(batch_sizes[0], b, "float32_highest") for b in backbones if "float32_highest" in precisions]
    steps += sweep(batch_sizes[2:])

    rng = np.random.default_rng(0)
    largest = max(batch_sizes)
    host_pool = [rng.integers(0, 256, (largest, size, size, 3), dtype=np.uint8) for _ in range(2)]
    models: dict = {}
    weights_shared: dict = {}
    references: dict = {}  # (backbone, batch) -> float32 features on host_pool[0][:batch]
    f32_rates: dict = {}
    cost: dict = {}  # backbone -> seconds of its last step
    interrupted = False

    def get_model(backbone: str, precision: str):
        policy = "float32" if precision == "float32_highest" else precision
        key = (backbone, policy)
        if key not in models:
            started = time.perf_counter()
            model, init = build_model(backbone, policy, size, fast_init=not args.plain_init)
            info = {"build_s": time.perf_counter() - started, "init": init}
            reference = models.get((backbone, "float32"))
            if reference is not None and policy != "float32":
                weights_shared[key] = share_weights(model, reference[0])
                info["weights"] = "float32 model's" if weights_shared[key] else "own (could not share)"
            elif not args.no_bn_calibrate:
                started = time.perf_counter()
                calibration = host_pool[1][:min(args.calibration_images, largest)]
                info["bn_calibrated_layers"] = calibrate_batchnorm(model, calibration)
                info["bn_calibrate_s"] = time.perf_counter() - started
            models[key] = (model, info)
        return models[key]

    try:
        for bs in batch_sizes:
            if time.perf_counter() > deadline:
                break
            hosts = [h[:bs] for h in host_pool]
            out["transfer_h2d_uint8"][str(bs)] = time_transfer(hosts, bs, args.min_time_s, device)

        for bs, backbone, precision in steps:
            estimate = cost.get(backbone, args.first_step_estimate_s) * 1.15
            if time.perf_counter() + estimate > deadline:
                out["skipped"].append({"backbone": backbone, "precision": precision, "batch_size": bs,
                                       "reason": f"time budget (estimate {estimate:.0f}s)"})
                log(f"skip {backbone} {precision} bs={bs}: time budget")
                continue
            step_started = time.perf_counter()
            log(f"{backbone} {precision} bs={bs}: build/compile")
            try:
                model, model_info = get_model(backbone, precision)
                policy_key = (backbone, "float32" if precision == "float32_highest" else precision)
                trainable = [v.value for v in model.trainable_variables]
                non_trainable = [v.value for v in model.non_trainable_variables]
                x_dev = jax.device_put(host_pool[0][:bs], device)
                started = time.perf_counter()
                if precision == "float32_highest":
                    with jax.default_matmul_precision("highest"):
                        lowered = forward_fn(model).lower(trainable, non_trainable, x_dev)
                else:
                    lowered = forward_fn(model).lower(trainable, non_trainable, x_dev)
                lower_s = time.perf_counter() - started
                started = time.perf_counter()
                compiled = lowered.compile()
                compile_s = time.perf_counter() - started

                def run(x, compiled=compiled, trainable=trainable, non_trainable=non_trainable):
                    return compiled(trainable, non_trainable, x)

                started = time.perf_counter()
                features = np.asarray(run(x_dev))
                first_run_s = time.perf_counter() - started
                run(x_dev).block_until_ready()  # warm-up
                flops = _flops(compiled)
                result = {
                    "backbone": backbone, "precision": precision, "batch_size": bs, "image_size": size,
                    "policy": model.get_layer(backbone_layer_name(model)).dtype_policy.name,
                    "conv_compute_dtype": conv_compute_dtype(model),
                    "output_dtype": str(features.dtype),
                    "weights_shared_with_float32": precision in ("float32", "float32_highest")
                    or weights_shared.get(policy_key, False),
                    "model": model_info, "trace_lower_s": lower_s, "compile_s": compile_s,
                    "first_run_s": first_run_s,
                    "gflop_per_image_xla": flops / bs / 1e9 if flops else None,
                    **feature_stats(features),
                }
                result["device_resident"] = time_device_resident(run, x_dev, bs, args.min_time_s, args.rounds)
                hosts = [h[:bs] for h in host_pool]
                result["h2d_pipelined"] = time_h2d_pipelined(run, hosts, bs, args.min_time_s, device)
                result["h2d_serial"] = time_h2d_serial(run, hosts, bs, args.min_time_s, device)
                rate = result["device_resident"]["images_per_s"]
                if flops:
                    result["achieved_tflop_per_s_xla"] = flops / bs * rate / 1e12
                if precision == "float32":
                    references[(backbone, bs)] = features
                    f32_rates[(backbone, bs)] = rate
                else:
                    if (backbone, bs) in references:
                        result["parity_vs_float32"] = parity(features, references[(backbone, bs)])
                    if (backbone, bs) in f32_rates:
                        result["speedup_vs_float32"] = rate / f32_rates[(backbone, bs)]
                if args.with_keras_predict and bs == batch_sizes[0]:
                    host = host_pool[0][:bs].astype(np.float32)
                    started = time.perf_counter()
                    model.predict_on_batch(host)
                    result["keras_predict_on_batch_first_call_s"] = time.perf_counter() - started

                    def predict_step(n, host=host, model=model):
                        for _ in range(n):
                            model.predict_on_batch(host)

                    result["keras_predict_on_batch"] = _rounds(predict_step, args.min_time_s, 1, bs)
                del compiled, lowered
                result["step_s"] = time.perf_counter() - step_started
                out["results"].append(result)
                log(f"  {rate:10.1f} img/s resident | {result['h2d_pipelined']['images_per_s']:10.1f} with h2d "
                    f"| compile {compile_s:5.1f}s | step {result['step_s']:5.1f}s"
                    + (f" | rel_l2 {result['parity_vs_float32']['row_rel_l2_median']:.2e}"
                       if "parity_vs_float32" in result else ""))
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one failing step (e.g. out of memory) must not lose the others
                out["errors"].append({"backbone": backbone, "precision": precision, "batch_size": bs,
                                      "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"})
                log(f"  error: {type(exc).__name__}: {str(exc)[:300]}")
            cost[backbone] = time.perf_counter() - step_started
            write()
    except KeyboardInterrupt as exc:
        interrupted = True
        out["errors"].append({"error": f"interrupted ({str(exc) or 'SIGINT'}); results so far kept"})
        log("interrupted: writing what was done")

    done = {(r["backbone"], r["precision"], r["batch_size"]) for r in out["results"]}
    failed = {(e.get("backbone"), e.get("precision"), e.get("batch_size")) for e in out["errors"]}
    skipped = {(s["backbone"], s["precision"], s["batch_size"]) for s in out["skipped"]}
    for bs, backbone, precision in steps:
        if (backbone, precision, bs) not in done | failed | skipped:
            out["skipped"].append({"backbone": backbone, "precision": precision, "batch_size": bs,
                                   "reason": "not reached (interrupted)"})
    try:
        stats = device.memory_stats() or {}
        out["device_peak_memory_gb"] = round(stats.get("peak_bytes_in_use", 0) / 1e9, 2)
    except Exception:
        pass
    out["complete"] = not interrupted and not out["skipped"] and not out["errors"]
    write()
    print_table(out["table"])
    print(json.dumps(out, indent=2), flush=True)


def table(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        parity_ = r.get("parity_vs_float32", {})
        rows.append({
            "backbone": r["backbone"], "precision": r["precision"], "batch": r["batch_size"],
            "img_s_device_resident": round(r["device_resident"]["images_per_s"], 1),
            "img_s_h2d_pipelined": round(r["h2d_pipelined"]["images_per_s"], 1),
            "img_s_h2d_serial": round(r["h2d_serial"]["images_per_s"], 1),
            "speedup_vs_float32": round(r["speedup_vs_float32"], 3) if "speedup_vs_float32" in r else None,
            "compile_s": round(r["compile_s"], 2),
            "trace_lower_s": round(r["trace_lower_s"], 2),
            "rel_l2_vs_float32": parity_.get("row_rel_l2_median"),
            "cosine_min_vs_float32": parity_.get("cosine_min"),
            "feature_abs_mean": r["feature_abs_mean"],
        })
    return rows


def print_table(rows: list[dict]) -> None:
    header = (f"{'backbone':<15}{'precision':<17}{'batch':>6}{'img/s dev':>12}{'img/s h2d':>12}"
              f"{'img/s ser':>12}{'x f32':>7}{'compile':>9}{'rel_l2':>10}{'|feat|':>10}")
    print(header, file=sys.stderr)
    for r in rows:
        speed = f"{r['speedup_vs_float32']:.2f}" if r["speedup_vs_float32"] is not None else "-"
        rel = f"{r['rel_l2_vs_float32']:.1e}" if r["rel_l2_vs_float32"] is not None else "-"
        print(f"{r['backbone']:<15}{r['precision']:<17}{r['batch']:>6}{r['img_s_device_resident']:>12.1f}"
              f"{r['img_s_h2d_pipelined']:>12.1f}{r['img_s_h2d_serial']:>12.1f}{speed:>7}"
              f"{r['compile_s']:>8.1f}s{rel:>10}{r['feature_abs_mean']:>10.2e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
