"""The worker process of the jax and torch runtimes: Keras 3 on that backend, and nothing else.

Keras picks its backend once per process, when it is first imported, and a process that
embeds on JAX must not import TensorFlow at all. The main process may already hold
TensorFlow's Keras (a test session, ``predict`` with a dense head, a notebook), so the
network runs here, in a process started with ``KERAS_BACKEND`` set before anything imports
Keras (:mod:`embedder.runtimes.keras_backend` starts it). Pixels arrive in shared memory
(the engine decodes straight into it), features go back over a pipe.

Protocol: length-prefixed pickles on two pipes (never stdout, where Keras prints download
progress). Requests ``{"op": "load" | "warm" | "run" | "close", ...}``; every request gets
one reply ``{"ok": True, ...}`` or ``{"ok": False, "error", "kind", "exit_code"}``, possibly
preceded by ``{"log": message}`` lines. End of input (the main process exited or was
killed) ends the worker. Ctrl-C is the main process's to handle: the worker ignores SIGINT.

    python -m headstart.embedder.runtimes.worker jax IN_FD OUT_FD
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys
import time
from typing import BinaryIO, Callable

_HEADER = struct.Struct("<Q")


def send(stream: BinaryIO, message: dict) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    stream.flush()


def receive(stream: BinaryIO) -> dict:
    """The next message; EOFError when the other side has gone."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("pipe closed")
    (length,) = _HEADER.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("pipe closed mid-message")
    return pickle.loads(data)


# ----------------------------------------------------------------------------- the network


def build_deferred(keras, build: Callable[[], object], log: Callable[[str], None]):
    """``build()`` without running every variable's initializer first, on JAX.

    Keras on JAX initialises each variable eagerly, and each new weight shape costs an XLA
    compile of its initializer: building MobileNetV2 took 16-40 s on these CPUs before its
    weights were even loaded over those values. Built inside a ``StatelessScope``, variables
    stay unset and the weight loading is recorded as the scope's updates; each variable then
    takes its loaded value, and only those the weights did not set run their initializer
    (as a plain build would). This leans on Keras internals (``_value``, ``_initialize``,
    the uninitialised-variable list): any surprise falls back to the plain build.
    """
    from keras.src.backend.common import global_state

    def pending():
        return global_state.get_global_attribute("uninitialized_variables") or []

    before = list(pending())
    try:
        with keras.StatelessScope(initialize_variables=False) as scope:
            model = build()
        for variable in model.variables:
            if getattr(variable, "_value", None) is None:
                loaded = scope.get_current_value(variable)
                if loaded is not None:
                    variable._initialize(loaded)
                else:
                    variable._deferred_initialize()
        if any(getattr(v, "_value", None) is None for v in model.variables):
            raise RuntimeError("a variable was left without a value")
    except Exception as exc:
        from ..errors import HeadstartError

        global_state.set_global_attribute("uninitialized_variables", before)
        if isinstance(exc, HeadstartError):
            raise
        log(f"fast build failed ({type(exc).__name__}: {' '.join(str(exc).split())[:120]}); building plainly")
        return build()
    global_state.set_global_attribute("uninitialized_variables",
                                      [v for v in pending() if getattr(v, "_value", None) is None])
    return model


class BackendModel:
    """The backbone on this process's Keras backend: ``run(pixels [B, S, S, 3]) -> [B, D]``."""

    def __init__(self, backend: str, resolved, log: Callable[[str], None]):
        import keras

        if keras.config.backend() != backend:
            from ..errors import UsageError

            raise UsageError(f"the {backend} worker's Keras runs on {keras.config.backend()}")
        from ..backbones import build_backbone, describe_architecture

        self.backend = backend
        started = time.perf_counter()
        log(f"building {describe_architecture(resolved)} with Keras {keras.__version__} on {backend}")
        if backend == "jax":
            model = build_deferred(keras, lambda: build_backbone(resolved, keras=keras), log)
        else:
            import torch

            torch.set_grad_enabled(False)
            model = build_backbone(resolved, keras=keras)
        self.build_s = time.perf_counter() - started
        self.model = model
        self.image_size = int(model.inputs[0].shape[1])
        self.keras = keras
        self._compiled: dict[int, object] = {}
        self._capacity = 0
        if backend == "jax":
            import jax

            self._jax = jax
            self._trainable = [v.value for v in model.trainable_variables]
            self._non_trainable = [v.value for v in model.non_trainable_variables]

            def forward(trainable, non_trainable, pixels):
                return model.stateless_call(trainable, non_trainable, pixels, training=False)[0]

            self._jit = jax.jit(forward)
        self.device, self.on_gpu = self._describe_device()

    def _describe_device(self) -> tuple[str, bool]:
        if self.backend == "jax":
            import jax

            device = jax.devices()[0]
            kind = f" ({device.device_kind})" if device.platform != "cpu" else ""
            return f"jax {jax.__version__}, {device.platform}{kind}", device.platform == "gpu"
        import torch

        if torch.cuda.is_available():
            return f"torch {torch.__version__}, cuda ({torch.cuda.get_device_name(0)})", True
        return f"torch {torch.__version__}, cpu ({torch.get_num_threads()} threads)", False

    # -- JAX: one compiled executable per batch shape ---------------------------------------

    def _bucket(self, rows: int) -> int:
        """The compiled batch size a batch of ``rows`` runs at: the smallest already compiled
        that holds it (padding a short last batch costs less than an XLA compile: seconds
        of a CPU for MobileNetV2), else a new one, a power of two up to the capacity."""
        compiled = [size for size in self._compiled if size >= rows]
        if compiled:
            return min(compiled)
        bucket = 1
        while bucket < rows:
            bucket *= 2
        return min(bucket, max(self._capacity, rows))

    def _executable(self, rows: int):
        if rows not in self._compiled:
            spec = self._jax.ShapeDtypeStruct((rows, self.image_size, self.image_size, 3), "float32")
            self._compiled[rows] = self._jit.lower(self._trainable, self._non_trainable, spec).compile()
        return self._compiled[rows]

    def warm(self, rows: int) -> float:
        """Compile (JAX) and run the full batch shape once; returns the seconds it took."""
        import numpy as np

        started = time.perf_counter()
        self._capacity = max(self._capacity, rows)
        self.run(np.zeros((rows, self.image_size, self.image_size, 3), np.float32), rows)
        return time.perf_counter() - started

    def run(self, pixels, rows: int):
        """Features of ``pixels[:rows]``; ``pixels`` may hold more rows (stale ones: BatchNorm
        runs in inference mode, so rows never affect each other), which pad a JAX batch up to
        its compiled size without a copy."""
        import numpy as np

        if self.backend == "jax":
            bucket = self._bucket(rows)
            x = pixels[:bucket] if len(pixels) >= bucket else _padded(pixels[:rows], bucket)
            out = self._executable(bucket)(self._trainable, self._non_trainable, x)
            return np.asarray(out, dtype=np.float32)[:rows]
        out = self.model(pixels[:rows], training=False)
        return np.asarray(self.keras.ops.convert_to_numpy(out), dtype=np.float32)


def _padded(x, rows: int):
    import numpy as np

    out = np.zeros((rows, *x.shape[1:]), dtype=np.float32)
    out[:len(x)] = x
    return out


# ----------------------------------------------------------------------------- shared memory


class _Buffers:
    """Shared-memory pixel buffers the main process created, mapped by name (once each).

    Mapped directly (``shm_open`` + ``mmap``) rather than through ``SharedMemory``: before
    Python 3.13 attaching registers the block with a resource tracker of this process (one
    more process), which would unlink the main process's block when this one exits.
    """

    def __init__(self):
        self._mapped: dict[str, object] = {}

    def view(self, name: str, shape: tuple):
        import numpy as np

        if name not in self._mapped:
            self._mapped[name] = _map(name)
        return np.ndarray(shape, dtype=np.float32, buffer=self._mapped[name])

    def forget(self, name: str) -> None:
        self._mapped.pop(name, None)  # unmapped once no array uses it


def _map(name: str):
    import mmap

    try:
        import _posixshmem

        fd = _posixshmem.shm_open("/" + name.lstrip("/"), os.O_RDWR, mode=0o600)
    except ImportError:  # not POSIX: the standard way, tracker and all
        from multiprocessing import shared_memory

        return shared_memory.SharedMemory(name=name).buf
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- the loop


def serve(backend: str, inbox: BinaryIO, outbox: BinaryIO) -> int:
    from ..errors import HeadstartError

    model: BackendModel | None = None
    buffers = _Buffers()

    def log(message: str) -> None:
        send(outbox, {"log": message})

    while True:
        try:
            request = receive(inbox)
        except EOFError:
            return 0
        op = request.get("op")
        try:
            if op == "close":
                send(outbox, {"ok": True})
                return 0
            if op == "load":
                model = BackendModel(backend, request["network"], log)
                reply = {"image_size": model.image_size, "device": model.device, "on_gpu": model.on_gpu,
                         "build_s": model.build_s}
            elif model is None:
                raise RuntimeError(f"{op!r} before 'load'")
            elif op == "warm":
                reply = {"seconds": model.warm(int(request["rows"]))}
            elif op == "run":
                pixels = buffers.view(request["buffer"], tuple(request["shape"]))
                reply = {"features": model.run(pixels, int(request["rows"]))}
            elif op == "forget":
                buffers.forget(request["buffer"])
                reply = {}
            else:
                raise RuntimeError(f"unknown request {op!r}")
            send(outbox, {"ok": True, **reply})
        except HeadstartError as exc:
            send(outbox, {"ok": False, "error": str(exc), "kind": type(exc).__name__, "exit_code": exc.exit_code})
        except Exception as exc:  # a bug or a backend failure: one line to the main process
            text = " ".join(str(exc).split())[:300]
            send(outbox, {"ok": False, "error": f"{type(exc).__name__}: {text}", "kind": "BackboneError",
                          "exit_code": None})


def main(argv: list[str]) -> int:
    backend, in_fd, out_fd = argv[0], int(argv[1]), int(argv[2])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process handles Ctrl-C and then closes us
    os.environ["KERAS_BACKEND"] = backend  # before anything imports Keras
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with os.fdopen(in_fd, "rb") as inbox, os.fdopen(out_fd, "wb") as outbox:
        return serve(backend, inbox, outbox)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
