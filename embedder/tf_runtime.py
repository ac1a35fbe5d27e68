"""Importing TensorFlow quietly, once, only where it is needed.

TensorFlow takes seconds to import and prints C++ log lines (oneDNN notices, "no CUDA
drivers") that mean nothing to a user. The CLI must answer ``--help`` instantly, so only
functions that run a model call :func:`import_tf`.

TensorFlow is optional for embedding: ``embed run --runtime jax|torch`` runs on a machine
without it (a GPU box with JAX or PyTorch). So where it is missing, :func:`import_tf` is a
one-line :class:`~embedder.errors.UsageError` naming what needed it, never a traceback, and
:func:`tensorflow_installed` answers without importing it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading

_tf = None


_quiet_lock = threading.Lock()
_quiet_depth = 0
_quiet_saved: int | None = None


@contextlib.contextmanager
def quiet_stderr():
    """Silence file descriptor 2 (C++ logging) while TensorFlow loads its libraries.

    fd 2 is process-wide: nested or concurrent uses share one redirection, and the last
    to leave restores the real stderr (two threads each saving and restoring "their" fd 2
    could otherwise leave it pointing at /dev/null for good).
    """
    global _quiet_depth, _quiet_saved
    with _quiet_lock:
        if _quiet_depth == 0:
            try:
                sys.stderr.flush()
                saved = os.dup(2)
            except (OSError, ValueError):  # no real stderr (e.g. captured by a test harness)
                saved = None
            if saved is not None:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 2)
                os.close(devnull)
            _quiet_saved = saved
        _quiet_depth += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet_depth -= 1
            if _quiet_depth == 0 and _quiet_saved is not None:
                os.dup2(_quiet_saved, 2)
                os.close(_quiet_saved)
                _quiet_saved = None


def tensorflow_installed() -> bool:
    """Whether TensorFlow can be imported here (asked of the import system: nothing is loaded)."""
    import importlib.util

    if _tf is not None or "tensorflow" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def import_tf():
    """TensorFlow, imported with its start-up noise silenced; errors still surface.

    Missing TensorFlow is a :class:`UsageError`: what asked for it (a cache of the legacy
    pixel rule, a ``gs://`` path, ``--runtime tf``, a dense head) says so in one line.
    """
    global _tf
    if _tf is not None:
        return _tf
    if not tensorflow_installed():
        from .errors import UsageError

        raise UsageError("this needs TensorFlow, which is not installed here (pip install tensorflow); "
                         "embedding runs without it on --runtime jax or torch")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    _refuse_other_keras_backend()
    with quiet_stderr():
        import tensorflow as tf  # noqa: WPS433 - deliberate lazy import

        tf.get_logger().setLevel("ERROR")
    with contextlib.suppress(Exception):
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    _tf = tf
    return tf


def import_keras():
    import_tf()
    import keras

    _refuse_other_keras_backend()
    return keras


def _refuse_other_keras_backend() -> None:
    """Keras picks its backend once per process, at its first import: a process whose Keras
    runs on JAX or PyTorch cannot build TensorFlow models (the jax/torch runtimes keep
    Keras out of the main process, in a worker, for this reason)."""
    keras = sys.modules.get("keras")
    backend = getattr(getattr(keras, "config", None), "backend", None)
    if keras is not None and callable(backend) and backend() != "tensorflow":
        from .errors import UsageError

        raise UsageError(f"Keras runs on the {backend()} backend in this process (KERAS_BACKEND), so it cannot "
                         f"build TensorFlow models; unset KERAS_BACKEND (or set it to tensorflow) for this command")


def gpus_visible() -> bool:
    return bool(import_tf().config.list_physical_devices("GPU"))


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(threshold_bytes: int = 256 << 20) -> bool:
    """Stop glibc from mmap-ing (and page-faulting) fresh activation buffers every batch.

    DESIGN.md measured a third of a core lost to system time at large batches on CPU;
    raising the mmap and trim thresholds keeps freed buffers in the heap for reuse.
    Returns whether it took effect (False off glibc). Harmless to call twice.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok_mmap = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(min(threshold_bytes, 2**31 - 1)))
        ok_trim = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(min(2 * threshold_bytes, 2**31 - 1)))
    except (OSError, AttributeError):
        return False
    return bool(ok_mmap and ok_trim)
