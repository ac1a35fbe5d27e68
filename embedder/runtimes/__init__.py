"""Runtimes: what runs a network forward. One table, and the one place that chooses.

Adding a runtime is one module with a :class:`~embedder.runtimes.base.Runtime` subclass
plus one line in :data:`RUNTIMES`. ``--runtime auto`` (:func:`load_forward`) picks, and
says why:

* TensorFlow when a TensorFlow-only feature is asked for (several devices, ``--jit``,
  mixed precision);
* OpenVINO for bfloat16 (``--precision bf16``): the one runtime that computes in it, on CPUs
  with AVX512_BF16 or AMX; elsewhere that is an error, never float32 rows under a bf16
  fingerprint;
* TensorFlow when a GPU is visible;
* otherwise the first of :data:`CPU_FLOAT32_ORDER` that converts the network (and matches
  TensorFlow on a probe batch): LiteRT, then OpenVINO, each about twice TensorFlow's rate
  on CPUs, LiteRT the faster of the two in float32 (benchmarks/cpu_runtimes.py);
* otherwise TensorFlow, naming what the others refused;
* where TensorFlow is not installed at all (a GPU box with JAX or PyTorch): Keras 3 on JAX,
  else on PyTorch, where a GPU is likely; PyTorch first on CPUs, where XLA ran MobileNetV2
  about 10x slower than PyTorch (:mod:`embedder.runtimes.keras_backend`); naming what refused.

A runtime named explicitly insists: if it cannot run the network, that is a one-line error.
Runtimes give the same numbers within the parity tolerance, so the choice is recorded on the
cache but is not part of the fingerprint (the precision is).
"""

from __future__ import annotations

from typing import Callable

from ..errors import UsageError
from .base import Forward, Network, Runtime, RuntimeOptions
from .keras_backend import KerasBackendRuntime
from .litert import ConversionError, LiteRTRuntime
from .openvino import OpenVINORuntime
from .tf import TensorFlowRuntime

RUNTIMES: dict[str, Runtime] = {runtime.name: runtime for runtime in (
    TensorFlowRuntime(), LiteRTRuntime(), OpenVINORuntime(), KerasBackendRuntime("jax"), KerasBackendRuntime("torch"))}
CHOICES = ("auto", *RUNTIMES)
WITHOUT_TENSORFLOW = ("jax", "torch")  # the runtimes that need no TensorFlow
LABELS = {"tf": "TensorFlow", "litert": "LiteRT", "openvino": "OpenVINO", "jax": "Keras 3 on JAX",
          "torch": "Keras 3 on PyTorch"}
# Float32 on CPUs, fastest first, and why: what `embed run` says when auto picks it. Measured in
# issue 16 (MobileNetV2 224 px, batch 32, 2 cores of an AVX-512 EPYC): LiteRT 300 images/s, OpenVINO
# 284, TensorFlow 107; benchmarks/cpu_runtimes.py measures it again.
CPU_FLOAT32_ORDER = ("litert", "openvino")
CPU_FLOAT32_WHY = {"litert": "the fastest in float32 on CPUs (measured: ~1.05x OpenVINO, ~2.8x TensorFlow)",
                   "openvino": "the next fastest in float32 on CPUs (measured: ~2.7x TensorFlow)"}

__all__ = ["CHOICES", "RUNTIMES", "ConversionError", "Forward", "Network", "Runtime", "RuntimeOptions",
           "check_choice", "load_forward"]


def check_choice(name: str) -> str:
    if name not in CHOICES:
        raise UsageError(f"--runtime must be one of {', '.join(CHOICES)}, got {name!r}")
    return name


def load_forward(name: str, network: Network, options: RuntimeOptions | None = None,
                 log: Callable[[str], None] = lambda m: None) -> Forward:
    """The forward pass of ``network`` on runtime ``name`` (or the one ``auto`` picks)."""
    from ..devices import mirrored_strategy, select_devices
    from ..tf_runtime import tensorflow_installed

    check_choice(name)
    options = options or RuntimeOptions()
    if network.bfloat16 and name not in ("auto", "openvino"):  # never float32 rows under a bf16 fingerprint
        raise UsageError(f"--runtime {name} cannot compute in bfloat16; --precision bf16 runs on "
                         f"--runtime openvino (or auto)")
    if name == "auto" and not tensorflow_installed():
        if network.bfloat16:
            raise UsageError("--precision bf16 runs on OpenVINO, which converts the backbone with TensorFlow; "
                             "TensorFlow is not installed here")
        return _without_tensorflow(network, options, log)
    if name in WITHOUT_TENSORFLOW:  # nothing below (devices, strategies) may import TensorFlow for these
        runtime = RUNTIMES[name]
        refusal = runtime.refuses(network, options, [])
        if refusal:
            raise UsageError(refusal)
        forward = runtime.load(network, lambda: None, options, log)
        forward.reason = f"asked for; {forward.reason}"
        return forward
    device_names = select_devices(options.devices)
    strategy = mirrored_strategy(device_names)
    tf_only = [why for why, on in (("several devices", strategy is not None), ("--jit", bool(options.jit)),
                                   ("mixed precision", network.mixed_precision)) if on]
    built: list = []

    def model():
        if not built:
            if strategy is not None:
                with strategy.scope():
                    built.append(network.build())
            else:
                built.append(network.build())
        return built[0]

    def run_tf(reason: str) -> Forward:
        forward = RUNTIMES["tf"].load(network, model, options, log, strategy=strategy, device_names=device_names)
        forward.reason = "; ".join(r for r in (reason, forward.reason) if r)
        return forward

    if name == "auto":
        from ..devices import gpu_likely

        if network.bfloat16:  # before anything that would send it to TensorFlow's float32
            return _insist("openvino", network, model, options, log, "bfloat16 runs on OpenVINO only", tf_only)
        if tf_only:
            return run_tf(f"{tf_only[0]} asked for")
        if gpu_likely() and _tensorflow_sees_a_gpu():  # the /proc check first: no TensorFlow import on CPUs
            return run_tf("a GPU is visible")
        refused: list[str] = []
        for candidate in CPU_FLOAT32_ORDER:
            runtime = RUNTIMES[candidate]
            try:
                refusal = runtime.refuses(network, options, [])
                if refusal:
                    raise UsageError(refusal)
                forward = runtime.load(network, model, options, log)
            except (ConversionError, UsageError) as exc:
                refused.append(f"{LABELS[candidate]} is not available for it ({exc})")
                continue
            forward.reason = "; ".join(["no GPU is visible", *refused, CPU_FLOAT32_WHY[candidate],
                                        forward.reason])
            return forward
        return run_tf("; ".join(refused))
    if name == "tf":
        return run_tf("asked for")
    return _insist(name, network, model, options, log, "asked for", tf_only)


def _insist(name: str, network: Network, model, options: RuntimeOptions, log, why: str,
            tf_only: list[str] | None = None) -> Forward:
    """Runtime ``name`` or a one-line error saying why it cannot run ``network``."""
    runtime = RUNTIMES[name]
    refusal = runtime.refuses(network, options, tf_only or [])
    if refusal:
        raise UsageError(refusal)
    forward = runtime.load(network, model, options, log)
    forward.reason = f"{why}; {forward.reason}"
    return forward


def _without_tensorflow(network: Network, options: RuntimeOptions, log: Callable[[str], None]) -> Forward:
    """``auto`` where TensorFlow is not installed: jax then torch with a GPU, torch then jax without."""
    from ..devices import gpu_likely

    refusals = []
    for name in WITHOUT_TENSORFLOW if gpu_likely() else tuple(reversed(WITHOUT_TENSORFLOW)):
        runtime = RUNTIMES[name]
        refusal = runtime.refuses(network, options, [])
        if refusal is None:
            forward = runtime.load(network, lambda: None, options, log)
            forward.reason = f"TensorFlow is not installed; {forward.reason}"
            return forward
        refusals.append(refusal)
    raise UsageError("TensorFlow is not installed here, and no other runtime can run this: " + "; ".join(refusals))


def _tensorflow_sees_a_gpu() -> bool:
    from ..tf_runtime import gpus_visible

    return gpus_visible()
