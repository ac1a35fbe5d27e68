"""Runtimes: what runs a network forward. One table, and the one place that chooses.

Adding a runtime is one module with a :class:`~embedder.runtimes.base.Runtime` subclass
plus one line in :data:`RUNTIMES`. ``--runtime auto`` (:func:`load_forward`) picks, and
says why:

* TensorFlow when a TensorFlow-only feature is asked for (several devices, ``--jit``,
  mixed precision) or a GPU is visible;
* otherwise LiteRT, when the network converts (and matches TensorFlow on a probe batch):
  about twice TensorFlow's rate on CPUs (benchmarks/embed_throughput.py);
* otherwise TensorFlow, naming what LiteRT refused;
* where TensorFlow is not installed at all (a GPU box with JAX or PyTorch): Keras 3 on JAX,
  else on PyTorch, where a GPU is likely; PyTorch first on CPUs, where XLA ran MobileNetV2
  about 10x slower than PyTorch (:mod:`embedder.runtimes.keras_backend`); naming what refused.

A runtime named explicitly insists: if it cannot run the network, that is a one-line error.
Runtimes give the same numbers within the parity tolerance, so the choice is recorded on the
cache but is not part of the fingerprint.
"""

from __future__ import annotations

from typing import Callable

from ..errors import UsageError
from .base import Forward, Network, Runtime, RuntimeOptions
from .keras_backend import KerasBackendRuntime
from .litert import ConversionError, LiteRTRuntime
from .tf import TensorFlowRuntime

RUNTIMES: dict[str, Runtime] = {runtime.name: runtime for runtime in (
    TensorFlowRuntime(), LiteRTRuntime(), KerasBackendRuntime("jax"), KerasBackendRuntime("torch"))}
CHOICES = ("auto", *RUNTIMES)
WITHOUT_TENSORFLOW = ("jax", "torch")  # the runtimes that need no TensorFlow

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
    if name == "auto" and not tensorflow_installed():
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

        if tf_only:
            return run_tf(f"{tf_only[0]} asked for")
        if gpu_likely() and _tensorflow_sees_a_gpu():  # the /proc check first: no TensorFlow import on CPUs
            return run_tf("a GPU is visible")
        try:
            forward = RUNTIMES["litert"].load(network, model, options, log)
        except (ConversionError, UsageError) as exc:
            return run_tf(f"LiteRT is not available for it ({exc})")
        forward.reason = f"no GPU is visible; {forward.reason}"
        return forward
    runtime = RUNTIMES[name]
    refusal = runtime.refuses(network, options, tf_only)
    if refusal:
        raise UsageError(refusal)
    if name == "tf":
        return run_tf("asked for")
    forward = runtime.load(network, model, options, log)
    forward.reason = f"asked for; {forward.reason}"
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
