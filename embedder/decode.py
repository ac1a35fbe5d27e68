"""One rule for turning an image file's bytes into the pixels a network sees.

Every path that feeds a network uses it: ``embed run`` (clean images and augmented views),
``predict``, ``finetune``; the exported models carry the same resize as layers. A cache's
rows, a prediction and an export therefore see the same pixels, and the rule is part of
the backbone fingerprint (DESIGN.md), so rows made two ways never mix.

The current rule (:data:`CURRENT`), measured on camera-size photos (benchmarks/photos.py):

* **Read once.** The caller hands over the bytes it hashed (:mod:`embedder.engine`): the
  pixels of a row always come from the bytes of its key.
* **Refuse bombs from the header.** Width x height is read before anything is decoded; an
  image over the pixel limit (default :data:`DEFAULT_PIXEL_LIMIT`, Pillow's own ~89 MP) is
  a recorded failure, so a 48 KB PNG that decodes to 20000x20000 never allocates 1.2 GB.
* **Scaled JPEG decoding.** A JPEG at least twice the target size in both dimensions is
  decoded at 1/2, 1/4 or 1/8 scale by libjpeg's DCT scaling (Pillow's ``draft``), keeping
  both dimensions at or above the target. Entropy decoding still reads every byte, but the
  inverse DCT, colour conversion and the resize work on a fraction of the pixels.
* **Upright.** The EXIF orientation tag is applied (phone photos are often stored sideways).
* **Antialiased resize** to ``size x size`` (the aspect ratio is not kept, as in
  ``keras.utils.image_dataset_from_directory``): Pillow's bilinear filter, whose support
  widens with the reduction factor. Plain bilinear sampling of a 4000x3000 photo at 224 px
  aliases (mean absolute difference 13.8/255 against an antialiased resize).

:data:`LEGACY` is the rule caches made before it carry (TensorFlow's ``decode_image``,
bilinear sampling without antialiasing, EXIF ignored): such caches stay readable, and a run
that continues one uses their own rule (it needs TensorFlow).
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .defaults import PIXEL_LIMIT

DEFAULT_PIXEL_LIMIT = PIXEL_LIMIT  # Pillow's Image.MAX_IMAGE_PIXELS: 0.25 GiB of 32-bit pixels
# What Pillow may decode: the formats discovery lists (.jpg .jpeg .png .gif .bmp .webp), plus
# MPO (the multi-picture JPEG many cameras write) and TIFF-encoded files named .jpg.
DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF"})
PIXEL_FIELDS = ("decode", "jpeg_scaling", "orientation", "resize")


class DecodeError(Exception):
    """The bytes are not an image this rule decodes; the message is the recorded reason."""


@dataclass(frozen=True)
class PixelRecipe:
    """How bytes become ``float32 [S, S, 3]`` RGB pixels in [0, 255]."""

    name: str
    fingerprint: Mapping[str, str]  # the fields it contributes to the backbone fingerprint
    antialias: bool
    needs_tensorflow: bool

    def decode(self, data: bytes, limit: int = DEFAULT_PIXEL_LIMIT, at_least: int | None = None) -> np.ndarray:
        """Upright ``uint8 [H, W, 3]``, decoded at reduced scale where that keeps both sides
        ``>= at_least`` (views crop first, so they ask for more than the target size)."""
        raise NotImplementedError

    def resize(self, image: np.ndarray, size: int) -> np.ndarray:
        """``uint8 [H, W, 3]`` -> ``float32 [size, size, 3]``."""
        raise NotImplementedError

    def load(self, data: bytes, size: int, limit: int = DEFAULT_PIXEL_LIMIT) -> np.ndarray:
        return self.resize(self.decode(data, limit, at_least=size), size)

    def check_available(self) -> None:
        """Raise a one-line UsageError when this machine cannot make these pixels."""


class _PillowRecipe(PixelRecipe):
    def decode(self, data, limit=DEFAULT_PIXEL_LIMIT, at_least=None):
        from PIL import Image, ImageOps

        image = _open(data, limit)
        try:
            if at_least and image.format in ("JPEG", "MPO"):
                image.draft("RGB", (at_least, at_least))  # largest DCT reduction keeping both sides >= at_least
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "palette images with transparency ... RGBA"
                ImageOps.exif_transpose(image, in_place=True)  # reads the EXIF tag only; no copy when upright
                return _to_rgb_array(image)  # decodes (truncation errors surface here)
        except DecodeError:
            raise
        except Image.DecompressionBombError:
            raise DecodeError(_too_large(image.size, limit)) from None
        except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error...
            raise DecodeError(_decode_reason(exc, image.format)) from None

    def resize(self, image, size):
        from PIL import Image

        if image.shape[0] == size and image.shape[1] == size:
            return image.astype(np.float32)
        resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
        return np.asarray(resized, dtype=np.float32)


class _TensorFlowRecipe(PixelRecipe):
    """What caches of format 1 were made with (tf.data: decode_image + bilinear, no antialias)."""

    def decode(self, data, limit=DEFAULT_PIXEL_LIMIT, at_least=None):
        _open(data, limit)  # the header's size, before TensorFlow allocates anything
        tf = _tf()
        try:
            image = tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)
        except Exception as exc:  # tf.errors.InvalidArgumentError carries the decoder's message
            raise DecodeError(_clean_tf_message(getattr(exc, "message", None) or str(exc))) from None
        return image.numpy()

    def resize(self, image, size):
        tf = _tf()
        return tf.image.resize(image, [size, size], method="bilinear").numpy().astype(np.float32, copy=False)


class _NvjpegRecipe(_PillowRecipe):
    """JPEGs decoded by nvjpeg on a CUDA GPU and resized there (:mod:`embedder.nvjpeg`); other
    formats decoded by Pillow. Its own fingerprint: nvjpeg's pixels are not libjpeg's."""

    def load(self, data, size, limit=DEFAULT_PIXEL_LIMIT):
        from . import nvjpeg

        return nvjpeg.resize(nvjpeg.decode_upright(data, limit, self._pillow), size)

    def decode(self, data, limit=DEFAULT_PIXEL_LIMIT, at_least=None):
        from . import nvjpeg

        # Full size (nvjpeg has no DCT scaling), copied to the host: what views crop from.
        return nvjpeg.decode_upright(data, limit, self._pillow).permute(1, 2, 0).contiguous().cpu().numpy()

    def resize(self, image, size):
        from . import nvjpeg

        return nvjpeg.resize(nvjpeg.to_tensor(image), size)

    def check_available(self) -> None:
        from .nvjpeg import require_cuda

        require_cuda()

    def _pillow(self, data, limit):
        return _PillowRecipe.decode(self, data, limit)


CURRENT = _PillowRecipe(
    "current",
    {"decode": "pillow", "jpeg_scaling": "dct", "orientation": "exif", "resize": "bilinear-antialias"},
    antialias=True, needs_tensorflow=False)
LEGACY = _TensorFlowRecipe("legacy", {"resize": "bilinear"}, antialias=False, needs_tensorflow=True)
NVJPEG = _NvjpegRecipe(
    "nvjpeg",
    {"decode": "nvjpeg", "jpeg_scaling": "none", "orientation": "exif", "resize": "torch-bilinear-antialias"},
    antialias=True, needs_tensorflow=False)
RECIPES = {recipe.name: recipe for recipe in (CURRENT, LEGACY, NVJPEG)}


DECODE_CHOICES = {"pillow": "auto", "nvjpeg": "nvjpeg"}  # `embed run --decode` -> BackboneConfig.pixels


def decode_choice(decode: str) -> str:
    """``--decode pillow|nvjpeg`` as a pixel rule name ('auto': the current rule, or a continued
    cache's own)."""
    if decode not in DECODE_CHOICES:
        from .errors import UsageError

        raise UsageError(f"--decode must be one of {', '.join(DECODE_CHOICES)}, got {decode!r}")
    return DECODE_CHOICES[decode]


def recipe_for(fingerprint: Mapping[str, object]) -> PixelRecipe:
    """The rule a fingerprint was made with (one without a ``decode`` field is legacy)."""
    for recipe in RECIPES.values():
        if all(fingerprint.get(k) == v for k, v in recipe.fingerprint.items()) and \
                all(k in recipe.fingerprint for k in PIXEL_FIELDS if k in fingerprint):
            return recipe
    from .errors import CacheError

    described = {k: fingerprint.get(k) for k in PIXEL_FIELDS if k in fingerprint}
    raise CacheError(f"unknown pixel rule {described}; a newer headstart made this, upgrade headstart")


def only_pixels_differ(a: Mapping[str, object], b: Mapping[str, object]) -> bool:
    """Whether two fingerprints name the same network and differ only in how pixels are made."""
    keys = set(a) | set(b)
    return any(a.get(k) != b.get(k) for k in keys) and \
        all(a.get(k) == b.get(k) for k in keys if k not in PIXEL_FIELDS)


# ------------------------------------------------------------------------------ helpers


def _open(data: bytes, limit: int):
    """Pillow's lazy open: reads the header only. Checks format and pixel count."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise DecodeError("not an image (unknown file format)") from None
    except Image.DecompressionBombError as exc:  # Pillow's own check, at twice its limit
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)) / 1e6:.0f} MP" if found else "over Pillow's limit"
        raise DecodeError(f"too large ({pixels}, over the {limit / 1e6:.0f} MP limit; raise it with --max-pixels)"
                          ) from None
    except Exception as exc:
        raise DecodeError(_decode_reason(exc)) from None
    if image.format not in DECODABLE_FORMATS:
        raise DecodeError(f"unsupported image format {image.format}")
    width, height = image.size
    if width * height > limit:
        raise DecodeError(_too_large(image.size, limit))
    return image


def allow_pixels(limit: int) -> None:
    """Let Pillow open images up to ``limit`` pixels (its own check refuses twice its
    ``MAX_IMAGE_PIXELS``); only ever raised, and only when a user raises ``--max-pixels``."""
    from PIL import Image

    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = int(limit)


def _too_large(size: tuple[int, int], limit: int) -> str:
    width, height = size
    return (f"too large ({width}x{height} = {width * height / 1e6:.0f} MP, over the {limit / 1e6:.0f} MP limit; "
            f"raise it with --max-pixels)")


def _to_rgb_array(image) -> np.ndarray:
    """Any mode -> uint8 RGB. 16- and 32-bit greyscale keep their top 8 bits (as TensorFlow's
    uint8 decoding does); alpha is dropped, not composited (as before)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        grey = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "I":
        grey = np.clip(np.asarray(image, dtype=np.int64) >> 8, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def _decode_reason(exc: BaseException, image_format: str | None = None) -> str:
    text = _first_line(exc)
    low = text.lower()
    if "truncated" in low or "broken data stream" in low or "premature end" in low:
        kind = {"MPO": "JPEG"}.get(image_format or "", image_format or "image")
        return f"corrupt or truncated {kind}"
    return f"cannot decode: {text[:160]}"


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


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _tf():
    from .tf_runtime import import_tf

    return import_tf()


# ------------------------------------------------------------------- inside exported models


def keras_resize_layer(keras, recipe: PixelRecipe, size: int):
    """The rule's resize as a standard Keras layer (any input size -> ``size x size``), so an
    exported ``.keras``/SavedModel model loads anywhere and resizes as ``embed run`` does."""
    return keras.layers.Resizing(size, size, interpolation="bilinear", antialias=recipe.antialias,
                                 name="headstart_resize")


def tf_resize_builtin_ops(tf, images, size: int, recipe: PixelRecipe):
    """The same resize from ops every TFLite interpreter has (``float32 [B, H, W, 3]``, any H, W).

    TFLite has no antialiased resize (TensorFlow's ScaleAndTranslate), so the triangle filter
    is written out: per axis, a ``[size, n]`` matrix of tent weights whose support widens
    with the reduction factor, centred on each output pixel (half-pixel centres), rows
    normalised; then two matrix products. The legacy rule is plain bilinear sampling,
    which TFLite has built in.
    """
    if not recipe.antialias:
        return tf.image.resize(images, [size, size], method="bilinear")

    def tent(n):
        n = tf.cast(n, tf.float32)
        scale = n / size
        support = tf.maximum(scale, 1.0)
        centres = (tf.range(size, dtype=tf.float32) + 0.5) * scale
        positions = tf.range(n, dtype=tf.float32) + 0.5
        weights = tf.nn.relu(1.0 - tf.abs(positions[None, :] - centres[:, None]) / support)
        return weights / tf.reduce_sum(weights, axis=1, keepdims=True)

    shape = tf.shape(images)
    rows, cols = tent(shape[1]), tent(shape[2])  # [size, H], [size, W]
    x = tf.einsum("sh,bhwc->bswc", rows, images)
    return tf.einsum("tw,bswc->bstc", cols, x)
