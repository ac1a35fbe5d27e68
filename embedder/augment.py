"""Augmented views of an image, reproducible from (content key, view index, seed).

Cached features normally rule augmentation out: TensorFlow's old ``retrain.py`` switched
its bottleneck cache off when asked to distort images, and training became ~100x slower.
Here each image gets K augmented *views* that are embedded once and cached beside the
clean features (``/embeddings/views``), so heads can train on them at cached speed.

Every random choice uses TensorFlow's *stateless* ops, seeded from a hash of
``"<seed>:<key>:<view>"``: a view depends on nothing but the image's bytes, its index and
the seed — not on batch order, thread timing, shards or which run computed it — so a rerun
reproduces it exactly and views ``0..K-1`` of a K=4 cache are the first four of K=8.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

import numpy as np

AUGMENTATION_VERSION = 1


@dataclass(frozen=True)
class Augmentation:
    """What a view may do to an image. Mild on purpose: a view must still show its class."""

    min_area: float = 0.6  # random crop keeps 60-100% of the image area ...
    aspect: tuple[float, float] = (3 / 4, 4 / 3)  # ... at this aspect-ratio range, then resizes (zoom)
    flip: bool = True  # left-right
    max_rotation_deg: float = 10.0
    max_brightness: float = 0.1  # fraction of the 0-255 range added or subtracted
    contrast: tuple[float, float] = (0.8, 1.2)

    def record(self) -> dict:
        """What the cache stores, so views from two recipes are never mixed."""
        data = asdict(self)
        data["aspect"] = [round(v, 6) for v in self.aspect]
        data["contrast"] = list(self.contrast)
        data["version"] = AUGMENTATION_VERSION
        return data


DEFAULT_AUGMENTATION = Augmentation()


def view_seed(key: str, view: int, seed: int) -> tuple[int, int]:
    """The stateless seed pair of one view (two non-negative int32 values)."""
    digest = hashlib.sha256(f"{int(seed)}:{key}:{int(view)}".encode()).digest()
    return (int.from_bytes(digest[:4], "little") & 0x7FFFFFFF,
            int.from_bytes(digest[4:8], "little") & 0x7FFFFFFF)


def view_seeds(keys, views, seed: int) -> np.ndarray:
    """``[E, 2]`` int64 seeds for parallel lists of keys and view indices."""
    return np.asarray([view_seed(k, v, seed) for k, v in zip(keys, views)], dtype=np.int64).reshape(-1, 2)


def augment_image(tf, image, seed, image_size: int, spec: Augmentation = DEFAULT_AUGMENTATION,
                  antialias: bool = False):
    """One view of a decoded uint8 ``[H, W, 3]`` image -> float32 ``[S, S, 3]`` in [0, 255].

    The crop happens before the resize, at the image's own resolution, so zooming in does
    not blur more than the clean path's resize does; ``antialias`` follows the cache's pixel
    rule (:mod:`embedder.decode`), so views are resized as the clean images are.
    """
    seed = tf.cast(seed, tf.int64)

    def sub(i: int):  # an independent stateless seed per random choice
        return tf.stack([seed[0], seed[1] + 7919 * (i + 1)])

    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=sub(0),
        min_object_covered=0.0, aspect_ratio_range=list(spec.aspect), area_range=[spec.min_area, 1.0],
        max_attempts=20, use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, size)
    image = tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=antialias)
    if spec.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=sub(1))
    if spec.max_rotation_deg > 0:
        limit = math.radians(spec.max_rotation_deg)
        angle = tf.random.stateless_uniform([], seed=sub(2), minval=-limit, maxval=limit)
        image = _rotate(tf, image, angle, image_size)
    if spec.max_brightness > 0:
        image = tf.image.stateless_random_brightness(image, spec.max_brightness * 255.0, seed=sub(3))
    if spec.contrast != (1.0, 1.0):
        image = tf.image.stateless_random_contrast(image, spec.contrast[0], spec.contrast[1], seed=sub(4))
    return tf.clip_by_value(image, 0.0, 255.0)


def compiled_augmenter(image_size: int, spec: Augmentation = DEFAULT_AUGMENTATION, antialias: bool = False):
    """``(uint8 [H, W, 3], int64 [2]) -> float32 [S, S, 3]`` as one traced function, safe to call
    from the engine's decoding threads (each call runs the graph; no retracing per image size)."""
    from .tf_runtime import import_tf

    tf = import_tf()

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64)])
    def augment(image, seed):
        return augment_image(tf, image, seed, image_size, spec, antialias)

    augment.get_concrete_function()
    return lambda image, seed: augment(image, np.asarray(seed, dtype=np.int64)).numpy()


def _rotate(tf, image, angle, size: int):
    """Rotate about the centre, reflecting at the borders (no black corners to learn from)."""
    cos, sin = tf.cos(angle), tf.sin(angle)
    centre = (size - 1) / 2.0
    # Output pixel (x, y) samples input (a0*x + a1*y + a2, b0*x + b1*y + b2).
    x_offset = centre - (cos * centre - sin * centre)
    y_offset = centre - (sin * centre + cos * centre)
    transform = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])[tf.newaxis]
    rotated = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis], transforms=tf.cast(transform, tf.float32),
        output_shape=tf.constant([size, size], tf.int32), fill_value=0.0, interpolation="BILINEAR",
        fill_mode="REFLECT")
    return rotated[0]
