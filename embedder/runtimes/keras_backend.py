"""The jax and torch runtimes: the same Keras backbone on Keras 3's JAX or PyTorch backend.

For the GPU machines that have JAX or PyTorch but no TensorFlow. The network runs in a
worker process (:mod:`embedder.runtimes.worker`) started with ``KERAS_BACKEND`` set, because
Keras picks its backend once per process and the main process may already hold
TensorFlow's Keras (a test session, ``predict`` with a dense head, a notebook). Neither
process imports TensorFlow for the job: discovery, hashing, decoding, the cache writer and
the report never needed it.

Why a worker rather than choosing the backend before the first ``import keras`` in the main
process: the latter works only where nothing has imported Keras yet, and fails everywhere
else; the worker works in every process, for one memory copy less than a pipe would cost:
the engine decodes straight into shared memory the worker reads
(benchmarks/keras_runtimes.py measures the worker against the same forward pass in-process).

Numbers: the same ``keras.applications`` network and weights; features equal TensorFlow's
within the parity tolerance (relative max difference for MobileNetV2 on real weights: 4-6e-6
on photos, 2-4e-5 on uniform random pixels; tests/test_keras_runtimes.py), so the runtime is recorded on the cache but is not part of
the fingerprint. What would change the numbers is refused: ``--weights none`` (each backend
draws its own random weights from the same seed). Mixed precision (``--precision mixed``)
is Keras' own on either backend. JAX compiles the forward pass with XLA once, for the full
batch, at set-up; a short last batch is padded to it rather than compiled again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import threading
import weakref
from typing import Callable

import numpy as np

from ..errors import BackboneError, CacheError, UsageError
from .base import Forward, Network, Runtime, RuntimeOptions
from .worker import receive, send

_ERRORS = {cls.__name__: cls for cls in (UsageError, BackboneError, CacheError)}
_STDERR_TAIL = 600


def backend_installed(backend: str) -> bool:
    """Keras 3 and the backend's package importable here (asked without importing them)."""
    package = {"jax": "jax", "torch": "torch"}[backend]
    try:
        return all(importlib.util.find_spec(name) is not None for name in ("keras", package))
    except (ImportError, ValueError):
        return False


class KerasBackendRuntime(Runtime):
    """Keras 3 on ``backend`` ('jax' or 'torch'), in a worker process."""

    def __init__(self, backend: str):
        self.name = backend
        self.backend = backend

    def refuses(self, network: Network, options: RuntimeOptions, tf_only: list[str]) -> str | None:
        runtime = f"--runtime {self.name}"
        if options.devices is not None:
            return f"{runtime} runs on one device; several devices (--devices) need --runtime tf"
        if options.jit is not None and bool(options.jit) != (self.backend == "jax"):
            return (f"{runtime} always compiles with XLA; --no-jit applies to --runtime tf" if self.backend == "jax"
                    else f"{runtime} does not compile with XLA; --jit needs --runtime tf or jax")
        if network.portable is None:
            return f"{runtime} runs backbones only; this network (a fine-tuned model) runs on --runtime tf or litert"
        weights = str(network.describe.get("weights", ""))
        if weights.startswith("none"):
            return (f"{runtime} cannot use --weights none: {self.backend} draws other random weights than "
                    f"TensorFlow from the same seed, under the same fingerprint; use imagenet, a weights file, "
                    f"or --runtime tf")
        if not backend_installed(self.backend):
            extra = "pip install 'headstart[jax]'" if self.backend == "jax" else "pip install 'headstart[torch]'"
            return f"{runtime} needs Keras 3 and {self.backend}, which are not installed here ({extra})"
        return None

    def load(self, network: Network, model: Callable[[], object], options: RuntimeOptions,
             log: Callable[[str], None]) -> Forward:
        worker = Worker(self.backend, log)
        try:
            info = worker.request({"op": "load", "network": network.portable})
        except BaseException:
            worker.close()
            raise
        forward = WorkerForward(worker, int(info["image_size"]))
        reason = f"Keras on {info['device']}; model built in {info['build_s']:.1f} s"
        return Forward(forward, self.name, forward.image_size, reason, jit=self.backend == "jax",
                       device=str(info["device"]), on_gpu=bool(info["on_gpu"]), allocate=forward.allocate,
                       warm=forward.warm)


class Worker:
    """One worker process and its two pipes. Requests are answered in order, one at a time."""

    def __init__(self, backend: str, log: Callable[[str], None]):
        self.backend, self.log = backend, log
        to_worker_r, to_worker_w = os.pipe()
        from_worker_r, from_worker_w = os.pipe()
        self._stderr = tempfile.TemporaryFile()  # the worker's own messages: shown only if it fails
        env = dict(os.environ, KERAS_BACKEND=backend)
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # JAX takes 75% of a GPU's memory up front by default; the main process may need some
        # of it (--decode nvjpeg decodes there). Set it to true to get JAX's default back.
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "headstart.embedder.runtimes.worker", backend,
                 str(to_worker_r), str(from_worker_w)],
                pass_fds=(to_worker_r, from_worker_w), stdin=subprocess.DEVNULL, stdout=self._stderr,
                stderr=self._stderr, env=env, close_fds=True)
        finally:
            os.close(to_worker_r)
            os.close(from_worker_w)
        self._out = os.fdopen(to_worker_w, "wb")
        self._in = os.fdopen(from_worker_r, "rb")
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _shutdown, self.process, self._out, self._in, self._stderr)

    def request(self, message: dict) -> dict:
        with self._lock:
            try:
                send(self._out, message)
                while True:
                    reply = receive(self._in)
                    if "log" in reply:
                        self.log(str(reply["log"]))
                        continue
                    break
            except (EOFError, BrokenPipeError, OSError):
                raise BackboneError(self._died()) from None
        if not reply.get("ok"):
            kind = _ERRORS.get(reply.get("kind"), BackboneError)
            raise kind(str(reply.get("error")), reply.get("exit_code"))
        return reply

    def _died(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            code = None
        tail = ""
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 4000))
            lines = [line for line in self._stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
            tail = " ".join(lines[-1].split())[:_STDERR_TAIL] if lines else ""
        how = f"exited with code {code}" if code is not None and code >= 0 else \
            f"was killed (signal {-code})" if code is not None else "stopped answering"
        return (f"the {self.backend} worker process {how}" + (f": {tail}" if tail else "")
                + "; the batches finished before it are kept")

    def close(self) -> None:
        self._finalizer()


def _shutdown(process, to_worker, from_worker, stderr) -> None:
    """Close the pipes (the worker exits at end of input), then make sure it is gone."""
    for stream in (to_worker, from_worker):
        with contextlib.suppress(Exception):
            stream.close()
    try:
        process.wait(timeout=5)
    except Exception:
        with contextlib.suppress(Exception):
            process.kill()
            process.wait(timeout=5)
    with contextlib.suppress(Exception):
        stderr.close()


class WorkerForward:
    """``forward(images [B, S, S, 3] float32) -> np.ndarray [B, D]`` through the worker.

    Pixels travel in shared memory: :meth:`allocate` gives the engine buffers to decode into
    (then a batch costs no copy at all); any other array is first copied into a scratch one.
    """

    def __init__(self, worker: Worker, image_size: int):
        self.worker, self.image_size = worker, image_size
        self._blocks: list = []  # every block made, unlinked when this forward goes
        self._owner: dict[int, tuple] = {}  # data address of an array we handed out -> (block, its shape)
        self._scratch = None
        self._finalizer = weakref.finalize(self, _release, self._blocks)

    def allocate(self, shape: tuple) -> np.ndarray:
        from multiprocessing import shared_memory

        nbytes = int(np.prod(shape)) * 4
        block = shared_memory.SharedMemory(create=True, size=max(nbytes, 1))
        self._blocks.append(block)
        array = np.ndarray(shape, dtype=np.float32, buffer=block.buf)
        self._owner[array.__array_interface__["data"][0]] = (block, tuple(shape))
        return array

    def warm(self, rows: int) -> None:
        self.worker.request({"op": "warm", "rows": int(rows)})

    def __call__(self, images) -> np.ndarray:
        x = images if isinstance(images, np.ndarray) else np.asarray(images)
        rows = len(x)
        if rows == 0:
            return np.zeros((0, 0), np.float32)
        owner = self._owner.get(x.__array_interface__["data"][0])  # a view from the start of our buffer: no copy
        if owner is None or x.dtype != np.float32 or not x.flags.c_contiguous or x.shape[1:] != owner[1][1:]:
            if self._scratch is None or self._scratch.shape[0] < rows or self._scratch.shape[1:] != x.shape[1:]:
                self._scratch = self.allocate((rows, *x.shape[1:]))
            self._scratch[:rows] = x
            owner = self._owner[self._scratch.__array_interface__["data"][0]]
        block, shape = owner
        reply = self.worker.request({"op": "run", "buffer": block.name, "shape": shape, "rows": rows})
        return reply["features"]


def _release(blocks: list) -> None:
    for block in blocks:
        with contextlib.suppress(Exception):
            block.close()
        with contextlib.suppress(Exception):
            block.unlink()
    blocks.clear()
