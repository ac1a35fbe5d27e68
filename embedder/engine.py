"""The one entry point into the embedder: images in, features (and failures) out.

``embed run``, ``predict`` and ``finetune``'s checks all run networks over images through
:class:`Engine`; nothing else assembles a forward pass, a decoder and batches. It takes
sources (paths, or bytes) and a network, and yields batches of features in order, with the
entries that failed and why.

How an image becomes a row, per source:

1. **Read once, hash what is decoded.** The bytes are read once; their SHA-256 is the key
   the row is stored under, and those same bytes are decoded. A source that comes with an
   expected key (the job hashed every file first, to find what is new) and whose bytes no
   longer match it is a failure ("changed since it was listed"), never a row under the
   wrong key. (A file overwritten mid-run used to get the new bytes' features stored under
   the old bytes' key, reused forever after.)
2. **Decode** by the cache's pixel rule (:mod:`embedder.decode`): bombs refused from the
   header, scaled JPEG decoding, EXIF orientation, antialiased resize.
3. **Forward** through the runtime chosen for the network (:mod:`embedder.runtimes`).
4. **Check** every row: NaN or inf features make that entry a failure, not a row.

Decoding runs on a bounded thread pool (Pillow and hashlib release the GIL) a few batches
ahead of the forward pass, so the decoder is never idle while the network runs and memory
is bounded by batch size, never by the number of images. Probed values (batch size, image
size) are reported in :attr:`Engine.info`, never written back into the caller's options.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .decode import DEFAULT_PIXEL_LIMIT, DecodeError, PixelRecipe, allow_pixels
from .defaults import EMBED_BATCH_SIZE
from .devices import available_cores
from .errors import UsageError
from .hashing import key_of_bytes
from .runtimes import Forward, Network, RuntimeOptions, check_choice, load_forward
from .storage import is_url, open_file

DEFAULT_BATCH_SIZE = EMBED_BATCH_SIZE
PREFETCH_BATCHES = 2  # batches decoded ahead of the one the network runs on
CHANGED = "changed since it was listed (its bytes no longer match the hash taken then); rerun to embed its new bytes"
NON_FINITE = "the backbone produced NaN or infinite features for it"


def default_workers() -> int:
    """Every core: on a GPU box decoding is the bottleneck (one H200 runs MobileNetV2 at
    30-55k images/s; a 500x375 JPEG costs ~1 ms of a core to decode)."""
    return available_cores()


@dataclass(frozen=True, eq=False)
class Source:
    """One image: where its bytes are (reported in failures), optionally the key they must
    hash to; or the bytes themselves; or already decoded pixels (``uint8 [H, W, 3]``, upright,
    any size: only the resize of the pixel rule applies)."""

    path: str | Path
    key: str | None = None
    data: bytes | None = None
    pixels: np.ndarray | None = None


@dataclass
class Batch:
    indices: np.ndarray  # entries (sources, or views) embedded, in order
    features: np.ndarray  # [len(indices), D] float32
    failed: list[tuple[int, str]]  # (entry, reason) of entries that failed since the last batch
    keys: list[str]  # content key of each embedded entry's bytes
    pixel_groups: np.ndarray | None = None  # first batch only: equal ids = identical input pixels


@dataclass
class EngineInfo:
    """What the engine chose and measured; filled in by :meth:`Engine.start`."""

    runtime: str = ""
    reason: str = ""
    image_size: int = 0
    batch_size: int = 0  # per device, as used (after --batch-size auto)
    replicas: int = 1
    jit: bool = False
    device: str = ""  # what computed, when the runtime says (e.g. 'jax 0.10.2, cpu')
    workers: int = 0
    setup_s: float = 0.0  # building/converting/loading the network, and its first (warm-up) call
    batch_probe: dict = field(default_factory=dict)  # --batch-size auto on a GPU: batch -> images/s


class Engine:
    """A network's forward pass fed by the decode pool. The network is built on first use
    (:meth:`start`), so a job with nothing to embed builds nothing."""

    def __init__(self, network: Network, recipe: PixelRecipe, *, runtime: str = "auto",
                 batch_size: int | None = DEFAULT_BATCH_SIZE, workers: int | None = None,
                 pixel_limit: int = DEFAULT_PIXEL_LIMIT, options: RuntimeOptions | None = None,
                 log: Callable[[str], None] = lambda m: None):
        check_choice(runtime)
        if batch_size is not None and batch_size < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1 (decoding threads), got {workers}")
        if pixel_limit < 1:
            raise UsageError(f"--max-pixels must be positive, got {pixel_limit}")
        self.network, self.recipe, self.runtime = network, recipe, runtime
        self.batch_size, self.pixel_limit = batch_size, int(pixel_limit)
        self.options = options or RuntimeOptions()
        self.workers = workers or default_workers()
        self.log = log
        self.info = EngineInfo(workers=self.workers)
        self._forward: Forward | None = None
        self._augmenters: dict = {}

    # -- set-up ----------------------------------------------------------------------------

    def start(self) -> Forward:
        """Load the network on its runtime (once); measure that honestly as set-up time."""
        if self._forward is not None:
            return self._forward
        started = time.perf_counter()
        allow_pixels(self.pixel_limit)
        if self.recipe.needs_tensorflow:
            from .tf_runtime import import_tf

            import_tf()
        self.recipe.check_available()
        from .tf_runtime import tune_malloc

        tune_malloc()
        forward = load_forward(self.runtime, self.network, self.options, self.log)
        info = self.info
        info.runtime, info.reason, info.image_size = forward.runtime, forward.reason, forward.image_size
        info.replicas, info.jit, info.device = forward.replicas, forward.jit, forward.device
        self.log(f"runtime: {forward.runtime} ({forward.reason})")
        if self.batch_size is None:
            from .batch_size import probe_batch_size

            on_gpu = forward.on_gpu or (forward.runtime == "tf" and _tensorflow_sees_a_gpu())
            choice = probe_batch_size(forward, forward.image_size, on_gpu, forward.replicas, log=self.log)
            info.batch_size = choice.size
            info.batch_probe = {str(k): round(v, 1) for k, v in choice.rates.items()}
            self.log(f"--batch-size auto: {choice.size} per device ({choice.reason})")
        else:
            info.batch_size = self.batch_size
        # The first call pays one-off costs (XNNPACK packs its weights, kernels are chosen):
        # pay them here, where they are reported as set-up, not inside the first batch.
        forward.warm_up(info.batch_size * forward.replicas)
        info.setup_s = time.perf_counter() - started
        self._forward = forward
        return forward

    # -- running ---------------------------------------------------------------------------

    def embed(self, sources: Sequence[Source], seeds: np.ndarray | None = None, augmentation=None,
              group_first_batch: bool = False) -> Iterator[Batch]:
        """Features of every source (or, with ``seeds`` ``[len(sources), 2]``, of one augmented
        view per entry), in order. Consecutive entries of the same source (its views) share
        one read and one decode."""
        forward = self.start()
        size = forward.image_size
        capacity = self.info.batch_size * forward.replicas
        units = _units(sources)
        augment = self._augmenter(size, augmentation) if seeds is not None else None

        def prepare(unit: tuple[int, int]) -> tuple[str, list[np.ndarray]] | str:
            first, count = unit
            source = sources[first]
            try:
                if source.pixels is not None:
                    image = _as_rgb_uint8(source.pixels)
                    return key_of_bytes(image.tobytes()), [self.recipe.resize(image, size)]
                data = source.data if source.data is not None else read_bytes(source.path)
                key = verified_key(data, source.key)
                if augment is None:
                    return key, [self.recipe.load(data, size, self.pixel_limit)]
                image = self.recipe.decode(data, self.pixel_limit, at_least=2 * size)  # views crop first
                return key, [augment(image, seeds[i]) for i in range(first, first + count)]
            except (_ReadError, _Changed, DecodeError) as exc:
                return str(exc)

        pixels = forward.buffer((capacity, size, size, 3))  # a worker's shared memory: no copy per batch
        entries: list[int] = []
        keys: list[str] = []
        failed: list[tuple[int, str]] = []
        first_batch = True

        def run() -> Batch:
            nonlocal first_batch
            count = len(entries)
            features = forward(pixels[:count]) if count else np.zeros((0, 0), np.float32)
            groups = None
            if first_batch and group_first_batch and count:
                groups = _pixel_groups(pixels[:count])
            first_batch = False
            indices = np.asarray(entries, dtype=np.int64)
            out_keys = list(keys)
            if count:
                finite = np.isfinite(features).all(axis=1)
                if not finite.all():
                    failed.extend((int(i), NON_FINITE) for i in indices[~finite])
                    failed.sort()
                    indices, features = indices[finite], features[finite]
                    out_keys = [k for k, ok in zip(out_keys, finite) if ok]
                    groups = groups[finite] if groups is not None else None
            batch = Batch(indices, features, list(failed), out_keys, groups)
            entries.clear(), keys.clear(), failed.clear()
            return batch

        window = capacity * (PREFETCH_BATCHES + 1)
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode")
        try:
            pending: deque = deque()
            queued = 0
            unit_iter = iter(units)

            def fill() -> None:
                nonlocal queued
                while queued < window:
                    unit = next(unit_iter, None)
                    if unit is None:
                        return
                    pending.append((unit, pool.submit(prepare, unit)))
                    queued += unit[1]

            fill()
            while pending:
                (first, count), future = pending.popleft()
                result = future.result()
                queued -= count
                fill()
                if isinstance(result, str):
                    failed.extend((i, result) for i in range(first, first + count))
                    continue
                key, images = result
                for offset, image in enumerate(images):
                    pixels[len(entries)] = image
                    entries.append(first + offset)
                    keys.append(key)
                    if len(entries) == capacity:
                        yield run()
            if entries or failed:
                yield run()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _augmenter(self, size: int, augmentation):
        from .augment import DEFAULT_AUGMENTATION, compiled_augmenter

        spec = augmentation or DEFAULT_AUGMENTATION
        if (size, spec) not in self._augmenters:
            self._augmenters[(size, spec)] = compiled_augmenter(size, spec, antialias=self.recipe.antialias)
        return self._augmenters[(size, spec)]


class _ReadError(Exception):
    pass


class _Changed(Exception):
    pass


def verified_key(data: bytes, expected: str | None) -> str:
    """The key of the bytes about to be decoded; bytes that no longer hash to the key they
    were listed under are refused (the integrity check: benchmarks/embed_throughput.py
    measures its cost)."""
    key = key_of_bytes(data)
    if expected is not None and key != expected:
        raise _Changed(CHANGED)
    return key


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, or a _ReadError whose message is the recorded reason."""
    try:
        if is_url(path):
            with open_file(path, "rb") as fh:
                return fh.read()
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        raise _ReadError("file vanished before it could be read") from None
    except IsADirectoryError:
        raise _ReadError("unreadable: is a folder") from None
    except OSError as exc:
        raise _ReadError(f"unreadable: {exc.strerror or exc}") from None


def _as_rgb_uint8(pixels) -> np.ndarray:
    image = np.asarray(pixels)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise _ReadError(f"not an image array: shape {list(image.shape)} (expected [H, W, 3])")
    if image.dtype != np.uint8:
        image = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])


def _same_file(a: Source, b: Source) -> bool:
    return a.data is None and a.pixels is None and (a.path, a.key) == (b.path, b.key)


def _units(sources: Sequence[Source]) -> list[tuple[int, int]]:
    """(first entry, count) runs of consecutive entries with the same source."""
    units: list[tuple[int, int]] = []
    for i, source in enumerate(sources):
        if units and i > 0 and _same_file(source, sources[i - 1]):
            first, count = units[-1]
            units[-1] = (first, count + 1)
        else:
            units.append((i, 1))
    return units


def _pixel_groups(pixels: np.ndarray) -> np.ndarray:
    """An id per image; equal ids exactly when the input pixels are identical."""
    digests = [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in pixels]
    index: dict[bytes, int] = {}
    return np.asarray([index.setdefault(d, len(index)) for d in digests], dtype=np.int64)


def _tensorflow_sees_a_gpu() -> bool:
    from .tf_runtime import gpus_visible

    return gpus_visible()
