"""What every runtime shares: the network it is asked to run, and the forward pass it returns.

A runtime turns a :class:`Network` (a Keras network on pixels, identified by a key and built
only if needed) into a :class:`Forward`: ``float32 [B, S, S, 3]`` pixels in [0, 255] ->
``np.ndarray [B, ...]``. Runtimes give the same numbers within the parity tolerance they
are checked against, so the runtime is recorded on a cache but is not part of the
fingerprint. The registry and the choice between them live in :mod:`embedder.runtimes`.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np


@dataclass
class Network:
    """What to run, without building it: a kept converted copy may make building unnecessary."""

    key: str  # names its numbers: 'backbone-<fingerprint id>' or 'model-<file hash>'
    build: Callable[[], object]  # -> the Keras model (pixels [B, S, S, 3] in [0, 255] -> outputs)
    describe: dict = field(default_factory=dict)  # recorded beside converted copies
    mixed_precision: bool = False
    bfloat16: bool = False  # computes in bfloat16 (--precision bf16): OpenVINO on CPUs that have it
    # What another process needs to build it (a picklable ResolvedBackbone), for the runtimes
    # that run Keras on another backend in a worker process; None: only this process can.
    portable: object = None


@dataclass
class RuntimeOptions:
    """How to run it (nothing here changes the numbers beyond the parity tolerance)."""

    jit: bool | None = None  # XLA; None: on with a GPU, off without (XLA was slower on CPUs)
    devices: str | list[int] | None = None  # None: one device; 'all' or indices: MirroredStrategy
    threads: int | None = None  # LiteRT: threads of one interpreter (None: one interpreter per core)


@dataclass
class Forward:
    """A forward pass over batches of pixels, and how it was chosen."""

    fn: Callable[[np.ndarray], object]
    runtime: str
    image_size: int
    reason: str
    replicas: int = 1  # devices a batch is split over (global batch = per-device batch x replicas)
    jit: bool = False
    device: str = ""  # what computes, as reported: e.g. 'jax 0.10.2, cpu', '' when the runtime does not say
    on_gpu: bool = False  # known to run on a GPU (--batch-size auto then probes); the tf runtime asks TensorFlow
    # Optional hooks of runtimes that run elsewhere (a worker process, compiled shapes):
    allocate: Callable[[tuple], np.ndarray] | None = None  # a pixel buffer they read without a copy
    warm: Callable[[int], None] | None = None  # pay one-off costs for batches of up to N rows

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(images), dtype=np.float32)

    def buffer(self, shape: tuple) -> np.ndarray:
        """A float32 array of ``shape`` for the caller to fill with pixels and pass back (a
        worker's shared memory, so nothing is copied on the way; else plain memory)."""
        return self.allocate(shape) if self.allocate is not None else np.empty(shape, dtype=np.float32)

    def warm_up(self, rows: int) -> None:
        """Pay the first call's one-off costs now (XNNPACK packs its weights, XLA compiles the
        batch shape), where they are reported as set-up rather than inside the first batch."""
        if self.warm is not None:
            self.warm(rows)
        else:
            self(np.zeros((min(4, rows), self.image_size, self.image_size, 3), np.float32))


class Runtime:
    """One way to run a network. Subclasses set ``name`` and implement the two methods."""

    name: ClassVar[str] = ""

    def refuses(self, network: Network, options: RuntimeOptions, tf_only: list[str]) -> str | None:
        """Why this runtime cannot run ``network`` so (None: it can). ``tf_only`` lists the
        TensorFlow-only features asked for (several devices, XLA, mixed precision)."""
        return None

    def load(self, network: Network, model: Callable[[], object], options: RuntimeOptions,
             log: Callable[[str], None]) -> Forward:
        """The forward pass; ``model()`` builds (once) the Keras network when it is needed."""
        raise NotImplementedError


class ChunkPool:
    """Workers that each run one chunk of a batch at a time, side by side (LiteRT
    interpreters, OpenVINO infer requests: both release the GIL while they compute).

    A batch is cut into chunks of at most ``chunk`` images that idle workers take in turn, so
    one slowed by a busy core (the decoders share it) simply takes fewer; a small batch still
    goes to every worker. Results come back in order. Safe to call from several threads.
    """

    def __init__(self, workers: list, run: Callable[[object, np.ndarray], np.ndarray], chunk: int, name: str):
        self.count, self.chunk, self._run_on = len(workers), max(1, chunk), run
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for worker in workers:
            self._idle.put(worker)
        self._threads = ThreadPoolExecutor(self.count, thread_name_prefix=name) if self.count > 1 else None

    def __call__(self, images) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
        if self._threads is None or len(x) <= 1:
            return self._run(x)
        size = min(self.chunk, -(-len(x) // self.count))
        chunks = [x[i:i + size] for i in range(0, len(x), size)]
        return np.concatenate(list(self._threads.map(self._run, chunks)))

    def _run(self, x: np.ndarray) -> np.ndarray:
        worker = self._idle.get()
        try:
            return self._run_on(worker, x)
        finally:
            self._idle.put(worker)


def relative_max_difference(reference: np.ndarray, got: np.ndarray) -> float:
    """``max |got - reference| / max |reference|``: how a converted network's parity probe is
    scored. NaN or inf in ``got`` score NaN or inf, which fails any tolerance, as it should."""
    reference, got = np.asarray(reference, dtype=np.float64), np.asarray(got, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # inf - inf: NaN
        scale = max(float(np.abs(reference).max()), 1e-30)
        return float(np.abs(got - reference).max()) / scale
