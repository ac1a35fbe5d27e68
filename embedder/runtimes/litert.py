"""The LiteRT (TFLite + XNNPACK) runtime: the same backbone, 2x faster on CPUs.

On a 2-core CPU, `embed run` with TensorFlow runs MobileNetV2 at ~120 images/s; the same
Keras model converted to a TFLite flatbuffer and run by XNNPACK, one interpreter per core,
at ~250, with features equal within ~3e-5 (benchmarks/embed_throughput.py). So machines
without a GPU run backbones forward through LiteRT by default (``--runtime auto``).

A network is converted once per key (fingerprint) and library versions, and kept in the
per-user store (:mod:`embedder.runtimes.store`), verified by its SHA-256 on every load, so
later runs neither convert nor even build (or import) the Keras model. Every conversion is
checked against TensorFlow on a probe batch before it is used or kept: parity is what lets
the runtime stay out of the fingerprint (it is recorded on the cache, though).
"""

from __future__ import annotations

import contextlib
import io
from typing import Callable

import numpy as np

from ..devices import available_cores
from ..errors import BackboneError, UsageError
from .base import ChunkPool, Forward, Network, Runtime, RuntimeOptions, relative_max_difference
from .store import ConvertedStore

PARITY_TOLERANCE = 1e-4  # max |litert - tf| relative to max |tf| on the probe batch
_PROBE_BATCH = 2
MAX_INTERPRETERS = 4  # each holds its own packed weights (ResNet50: ~100 MB)
DEFAULT_CHUNK = 2  # images per invoke (MobileNetV2 end to end, batch 32, 2 cores: 2 -> 254/s, 1 -> 252, 4 -> 241)


class ConversionError(BackboneError):
    """The backbone does not convert to TFLite, or the conversion's numbers differ."""


def interpreter_class():
    """LiteRT's maintained interpreter; TensorFlow's deprecated copy if it is missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter
    except ImportError:
        from .tf_runtime import import_tf

        interpreter = getattr(import_tf().lite, "Interpreter", None)
        if interpreter is None:
            raise UsageError("no TFLite interpreter: `pip install ai-edge-litert`, or use --runtime tf") from None
        return interpreter


def convert(model) -> bytes:
    """Float32 flatbuffer of a Keras model (weights frozen in, no quantisation)."""
    from ..tf_runtime import import_tf, quiet_stderr

    tf = import_tf()
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        with quiet_stderr(), contextlib.redirect_stdout(io.StringIO()):
            return converter.convert()
    except Exception as exc:
        raise ConversionError(f"{model.name} does not convert to TFLite: {' '.join(str(exc).split())[:200]}") from None


def default_layout(cores: int) -> tuple[int, int]:
    """``(interpreters, threads each)`` for ``cores``: one single-threaded interpreter per
    core, up to :data:`MAX_INTERPRETERS`, then more threads each.

    Why not one interpreter with every core: XNNPACK's threads meet at a barrier after
    every layer, and a whole batch's activations spill out of cache. On 2 cores, two
    1-thread interpreters taking small chunks ran MobileNetV2 at 271-283 images/s (model
    only) against 230 for one 2-thread interpreter; `embed run` went from ~200 to ~254
    images/s. Only the 2-core layout was measured. Each interpreter holds its own packed
    copy of the weights, hence the cap.
    """
    interpreters = max(1, min(cores, MAX_INTERPRETERS))
    return interpreters, max(1, cores // interpreters)


class _Interpreter:
    """One LiteRT interpreter; its input is resized only when the batch size changes
    (cheap: alternating 3- and 4-image inputs cost nothing measurable).

    Built in the caller's thread, with XNNPACK applied there and then: the delegate
    announces itself on fd 2 when first applied, and silencing fd 2 later, from a worker
    thread, would also swallow what the main thread prints meanwhile. Later resizes
    print nothing.
    """

    def __init__(self, flatbuffer: bytes, threads: int):
        from ..tf_runtime import quiet_stderr

        with quiet_stderr():  # "INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
            self._interpreter = interpreter_class()(model_content=flatbuffer, num_threads=threads)
            self._interpreter.allocate_tensors()
        details = self._interpreter.get_input_details()[0]
        self._input = details["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self.image_size = int(details["shape"][1])
        self._batch = int(details["shape"][0])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, list(x.shape), strict=False)
            self._interpreter.allocate_tensors()
            self._batch = x.shape[0]
        self._interpreter.set_tensor(self._input, x)
        self._interpreter.invoke()  # releases the GIL: interpreters run side by side
        return self._interpreter.get_tensor(self._output).copy()


class LiteRTForward:
    """``forward(images [B, S, S, 3] float32) -> np.ndarray [B, D]`` through a small pool
    of interpreters (see :func:`default_layout`) that take chunks of a batch in turn
    (:class:`~embedder.runtimes.base.ChunkPool`). Safe to call from several threads.
    """

    def __init__(self, flatbuffer: bytes, threads: int | None = None, interpreters: int | None = None,
                 chunk: int = DEFAULT_CHUNK):
        default_count, default_threads = default_layout(available_cores())
        self.interpreters = interpreters or (1 if threads else default_count)
        self.threads = threads or default_threads
        self.chunk = max(1, chunk)
        pool = [_Interpreter(flatbuffer, self.threads) for _ in range(self.interpreters)]
        self.image_size = pool[0].image_size
        self._pool = ChunkPool(pool, lambda interpreter, x: interpreter(x), self.chunk, "litert")

    @property
    def layout(self) -> str:
        """E.g. '2 interpreters x 1 thread', as `embed run` reports its runtime choice."""
        interpreters = f"{self.interpreters} interpreter{'s' if self.interpreters > 1 else ''}"
        return f"{interpreters} x {self.threads} thread{'s' if self.threads > 1 else ''}"

    def __call__(self, images) -> np.ndarray:
        return self._pool(images)


def check_parity(model, forward: LiteRTForward, image_size: int, seed: int = 0) -> float:
    """Relative max difference between TensorFlow and LiteRT on a probe batch of pixels."""
    probe = np.random.default_rng(seed).uniform(0, 255, (_PROBE_BATCH, image_size, image_size, 3)).astype(np.float32)
    reference = np.asarray(model(probe, training=False), dtype=np.float64)
    got = np.asarray(forward(probe), dtype=np.float64)
    if got.shape != reference.shape:
        raise ConversionError(f"LiteRT output shape {got.shape} differs from TensorFlow's {reference.shape}")
    return relative_max_difference(reference, got)


def store() -> ConvertedStore:
    # A flatbuffer depends on the converter (TensorFlow) and the Keras that built the model.
    return ConvertedStore("litert", ".tflite", ("tensorflow", "tensorflow-cpu", "keras"))


class LiteRTRuntime(Runtime):
    name = "litert"

    def refuses(self, network: Network, options: RuntimeOptions, tf_only: list[str]) -> str | None:
        if tf_only:
            return f"--runtime litert cannot run {tf_only[0]}; use --runtime tf (or auto)"
        return None

    def load(self, network: Network, model: Callable[[], object], options: RuntimeOptions,
             log: Callable[[str], None]) -> Forward:
        """From the store (hash-verified), or converted now, checked against TensorFlow, and kept."""
        kept = store()
        data = kept.load(network.key, log)
        forward = None
        if data is not None:
            try:
                forward = LiteRTForward(data, options.threads)
            except Exception:  # a verified file the interpreter refuses: a LiteRT upgrade? convert again
                kept.remove(kept.path_for(network.key))
        if forward is None:
            keras_model = model()
            log("converting the backbone to LiteRT (once per configuration on this machine)")
            data = convert(keras_model)
            forward = LiteRTForward(data, options.threads)
            difference = check_parity(keras_model, forward, forward.image_size)
            if not difference <= PARITY_TOLERANCE:
                raise ConversionError(f"LiteRT features differ from TensorFlow's by {difference:.2g} (relative; "
                                      f"allowed {PARITY_TOLERANCE:g})")
            kept.save(network.key, data, {"for": network.describe, "parity_relative_difference": difference})
        return Forward(forward, "litert", forward.image_size, forward.layout)
