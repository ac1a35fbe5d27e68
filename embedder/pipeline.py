"""The input pipeline and the compiled forward pass that keep a backbone busy.

``tf.data`` reads, decodes and resizes images in parallel and prefetches batches while
the backbone works on the previous one; the forward pass is a ``tf.function`` with a
fixed signature (DESIGN.md: ``model.predict`` in a loop was 10-40% slower). Parallelism is
*fixed*, not AUTOTUNE: on 2 cores AUTOTUNE intermittently starved the model.

Bad files never stop the stream: an element whose read/decode fails is dropped
(``ignore_errors``), and since every element carries its index, the consumer sees exactly
which ones are missing and asks :func:`decode_error` why.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from .storage import getsize
from .tf_runtime import import_tf

DEFAULT_PREFETCH = 2


def default_parallelism() -> int:
    """Every core this process may run on: on a GPU box decoding is the bottleneck (one H200
    runs MobileNetV2 at 30-55k images/s; a 500x375 JPEG costs ~1 ms of a core to decode)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def load_image(tf, path, image_size: int):
    """Read one file -> float32 [S, S, 3] RGB in [0, 255].

    ``decode_image`` covers JPEG, PNG (8/16-bit, palette, alpha), GIF (first frame), BMP
    and WebP; ``channels=3`` turns grayscale and RGBA into RGB.
    """
    return tf.image.resize(decode_file(tf, path), [image_size, image_size], method="bilinear")


def decode_file(tf, path):
    """Read and decode one file -> uint8 [H, W, 3]."""
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def image_dataset(
    paths: Sequence[str],
    image_size: int,
    batch_size: int,
    parallelism: int | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    seeds: np.ndarray | None = None,
    augmentation=None,
):
    """Batches of ``(indices, images)``; indices point into ``paths``, failed files are absent.

    With ``seeds`` (``[len(paths), 2]``, see :mod:`embedder.augment`) each element is an
    augmented view of its file instead of the clean image; consecutive elements of the same
    file (its views) share one decode.
    """
    tf = import_tf()
    parallelism = parallelism or default_parallelism()
    indices = np.arange(len(paths), dtype=np.int64)
    names = np.asarray(list(paths), dtype=object)
    if seeds is None:
        ds = tf.data.Dataset.from_tensor_slices((indices, names))
        ds = ds.map(lambda i, p: (i, load_image(tf, p, image_size)),
                    num_parallel_calls=parallelism, deterministic=True)
        ds = ds.ignore_errors()
    else:
        ds = _views_dataset(tf, names, np.asarray(seeds, dtype=np.int64), image_size, parallelism, augmentation)
    ds = ds.batch(batch_size)
    if prefetch:
        ds = ds.prefetch(prefetch)
    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_optimization.map_parallelization = False
    options.threading.private_threadpool_size = parallelism
    return ds.with_options(options)


def _views_dataset(tf, names: np.ndarray, seeds: np.ndarray, image_size: int, parallelism: int, augmentation):
    """Elements ``(index, view)``: each run of consecutive equal paths is decoded once and
    augmented once per seed (decoding is ~40% of a view's CPU cost)."""
    from .augment import DEFAULT_AUGMENTATION, augment_image

    spec = augmentation or DEFAULT_AUGMENTATION
    starts = np.flatnonzero(np.r_[True, names[1:] != names[:-1]]) if len(names) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(names)]).astype(np.int64)
    longest = int(counts.max()) if len(counts) else 1
    grouped = np.zeros((len(starts), longest, 2), dtype=np.int64)
    for g, (start, count) in enumerate(zip(starts, counts)):
        grouped[g, :count] = seeds[start:start + count]
    signature = tf.TensorSpec([image_size, image_size, 3], tf.float32)

    def views(first, path, group_seeds, count):
        image = decode_file(tf, path)
        made = tf.map_fn(lambda seed: augment_image(tf, image, seed, image_size, spec), group_seeds[:count],
                         fn_output_signature=signature)
        return first + tf.range(count, dtype=tf.int64), made

    ds = tf.data.Dataset.from_tensor_slices((starts.astype(np.int64), names[starts] if len(names) else names,
                                             grouped, counts))
    ds = ds.map(views, num_parallel_calls=parallelism, deterministic=True)
    return ds.ignore_errors().unbatch()  # a file that fails drops all its views; the consumer asks why


def compiled_forward(model, image_size: int, jit_compile: bool = False, strategy=None):
    """``model(x, training=False)`` as one traced graph for any batch size.

    With a ``tf.distribute`` strategy, each replica takes a contiguous slice of the batch
    and the results are gathered back in order (so a global batch is the per-device batch
    times the number of devices). ``jit_compile`` turns on XLA (measured slower on CPUs).
    """
    tf = import_tf()
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32)]

    if strategy is None:
        @tf.function(input_signature=signature, reduce_retracing=True, jit_compile=jit_compile)
        def forward(images):
            return model(images, training=False)
    else:
        replicas = strategy.num_replicas_in_sync

        @tf.function(jit_compile=jit_compile)
        def replica_step(images, share):
            start = tf.distribute.get_replica_context().replica_id_in_sync_group * share
            return model(images[start:start + share], training=False)

        @tf.function(input_signature=signature, reduce_retracing=True)
        def forward(images):
            # Pad to a multiple of the replica count: a replica given no rows at all (a last
            # batch smaller than the device count) makes TensorFlow's convolutions fail.
            rows = tf.shape(images)[0]
            share = (rows + replicas - 1) // replicas
            padded = tf.pad(images, [[0, share * replicas - rows], [0, 0], [0, 0], [0, 0]])
            return strategy.gather(strategy.run(replica_step, args=(padded, share)), axis=0)[:rows]

    forward.get_concrete_function()  # trace now (set-up time), not inside the first batch
    return forward


def decode_error(path: str, image_size: int) -> str:
    """Why ``path`` dropped out of the pipeline: decode it eagerly and keep the message."""
    tf = import_tf()
    try:
        if getsize(path) == 0:  # os.path.getsize, or tf.io.gfile for a URL
            return "empty file (0 bytes)"
        load_image(tf, tf.constant(path), image_size)
    except FileNotFoundError:
        return "file vanished before it could be read"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    except Exception as exc:  # tf.errors.* carry the decoder's own message
        message = getattr(exc, "message", None) or str(exc)
        return _clean_tf_message(message)
    return "could not be decoded in the pipeline (decodes on its own: transient?)"


def _clean_tf_message(message: str) -> str:
    text = " ".join(message.split())
    if "}}" in text:  # drop '{{function_node ...}}' prefixes
        text = text.split("}}", 1)[1].strip()
    text = text.split(" [Op:", 1)[0]
    if "Unknown image file format" in text:
        return "not an image (unknown file format)"
    if "jpeg::Uncompress failed" in text or "Premature end" in text:
        return "corrupt or truncated JPEG"
    return f"cannot decode: {text[:160]}"


@dataclass
class Batch:
    indices: np.ndarray  # into the paths given to the stream, in order
    features: np.ndarray  # [len(indices), D] float32
    failed: list[tuple[int, str]]  # (index, reason) of files dropped since the last batch


def embed_batches(forward, paths: Sequence[str], image_size: int, batch_size: int,
                  parallelism: int | None = None, seeds: np.ndarray | None = None,
                  augmentation=None) -> Iterator[Batch]:
    """Stream ``forward``'s features for ``paths`` in order, with the failed files' reasons.

    The dataset preserves order, so any index skipped between two batches (or after the
    last) is a file that could not be read or decoded.
    """
    expected = 0
    for indices, images in image_dataset(paths, image_size, batch_size, parallelism, seeds=seeds,
                                         augmentation=augmentation):
        idx = indices.numpy()
        features = np.asarray(forward(images), dtype=np.float32)
        present = set(idx.tolist())
        last = int(idx[-1]) if len(idx) else expected - 1
        failed = [(i, decode_error(paths[i], image_size)) for i in range(expected, last + 1) if i not in present]
        expected = last + 1
        yield Batch(idx, features, failed)
    if expected < len(paths):
        failed = [(i, decode_error(paths[i], image_size)) for i in range(expected, len(paths))]
        yield Batch(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), failed)
