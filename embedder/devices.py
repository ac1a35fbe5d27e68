"""Which devices run a network: one device, or several through tf.distribute.MirroredStrategy.

Defaults that depend on having a GPU (mixed precision, XLA) must be known before TensorFlow
is imported (they are part of the fingerprint or the cache name, and an unchanged rerun
never imports TensorFlow), so :func:`gpu_likely` answers from the NVIDIA driver's /proc
entries and CUDA_VISIBLE_DEVICES alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import UsageError


def available_cores() -> int:
    """Every core this process may run on (its affinity mask, which a container or taskset sets)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def gpu_likely() -> bool:
    """An NVIDIA GPU is present and not hidden (no TensorFlow import)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def parse_devices(spec: str | None) -> str | list[int] | None:
    """``None``/``""`` (one device), ``"all"``, or ``"0,1,..."`` (indices)."""
    if spec is None or spec == "":
        return None
    if spec == "all":
        return "all"
    try:
        indices = [int(x) for x in spec.split(",")]
    except ValueError:
        raise UsageError(f"--devices must be 'all' or comma-separated indices like 0,1; got {spec!r}") from None
    if any(i < 0 for i in indices) or len(set(indices)) != len(indices):
        raise UsageError(f"--devices {spec}: indices must be distinct and non-negative")
    return indices


def select_devices(spec: str | list[int] | None) -> list[str]:
    """TensorFlow device names: the GPUs asked for, or logical CPUs when there is no GPU."""
    from .tf_runtime import import_tf

    if spec is None:
        return []
    tf = import_tf()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    pool = gpus or [d.name for d in tf.config.list_logical_devices("CPU")]
    kind = "GPU" if gpus else "CPU"
    if spec == "all":
        return pool
    missing = [i for i in spec if i >= len(pool)]
    if missing:
        raise UsageError(f"--devices: no {kind} {missing[0]} (visible: {len(pool)} {kind} device(s))")
    return [pool[i] for i in spec]


_strategies: dict[tuple[str, ...], object] = {}


def mirrored_strategy(devices: list[str]):
    """A MirroredStrategy over ``devices``, or None for one device or none named.

    One strategy per device set and process: two strategies over the same devices number
    their collective ops independently, and TensorFlow then aborts mismatched collectives.
    """
    if len(devices) < 2:
        return None
    key = tuple(devices)
    if key not in _strategies:
        from .tf_runtime import import_tf

        _strategies[key] = import_tf().distribute.MirroredStrategy(devices=devices)
    return _strategies[key]
