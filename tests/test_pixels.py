"""The pixel rule (embedder.decode): upright, antialiased, scaled JPEG decoding, recorded in
the fingerprint; caches made by the older rule stay readable and are continued by their own."""

from __future__ import annotations

import io

import numpy as np
import pytest

from conftest import ASSETS, WEIGHTS_100, make_class_folders, needs_assets, photo_like
from headstart.embedder.decode import CURRENT, LEGACY, recipe_for


def _encoded(array: np.ndarray, fmt: str, orientation: int | None = None, **save) -> bytes:
    from PIL import Image

    image = Image.fromarray(array)
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        save["exif"] = exif.tobytes()
    out = io.BytesIO()
    image.save(out, format=fmt, **save)
    return out.getvalue()


def test_exif_orientation_is_applied():
    upright = photo_like(np.random.default_rng(0), (60, 80))
    sideways = np.ascontiguousarray(np.rot90(upright, k=1))  # stored turned left: orientation 6 turns it back
    decoded = CURRENT.decode(_encoded(sideways, "PNG", orientation=6))
    np.testing.assert_array_equal(decoded, upright)
    flipped = np.ascontiguousarray(upright[::-1, ::-1])  # orientation 3: rotated 180
    np.testing.assert_array_equal(CURRENT.decode(_encoded(flipped, "PNG", orientation=3)), upright)
    assert LEGACY.decode(_encoded(sideways, "PNG", orientation=6)).shape == sideways.shape  # the old rule ignored it


def test_large_jpegs_are_decoded_at_reduced_scale_and_resized_without_aliasing():
    from PIL import Image

    big = photo_like(np.random.default_rng(1), (1200, 1600))
    data = _encoded(big, "JPEG", quality=90)
    reduced = CURRENT.decode(data, at_least=224)
    assert reduced.shape == (300, 400, 3)  # 1/4 scale: the largest DCT reduction keeping both sides >= 224
    assert CURRENT.decode(data, at_least=700).shape == (1200, 1600, 3)  # 1/2 would go below 700 on one side
    pixels = CURRENT.load(data, 224)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.float32
    assert np.abs(pixels - np.asarray(full, np.float32)).mean() < 3.0  # DCT scaling is a good low-pass
    sampled = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.NEAREST),
                         np.float32)
    assert np.abs(pixels - sampled).mean() > np.abs(pixels - np.asarray(full, np.float32)).mean()


def test_sixteen_bit_and_palette_images_become_rgb():
    from PIL import Image

    grey16 = (np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 64)
    decoded = CURRENT.decode(_encoded(grey16, "PNG"))
    assert decoded.shape == (32, 32, 3) and decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded[..., 0], (grey16 >> 8).astype(np.uint8))
    palette = Image.fromarray(photo_like(np.random.default_rng(2), (32, 32))).convert("P")
    out = io.BytesIO()
    palette.save(out, format="GIF")
    assert CURRENT.decode(out.getvalue()).shape == (32, 32, 3)


def test_the_rule_is_named_by_the_fingerprint():
    from headstart.embedder.backbones import BackboneConfig, resolve

    current = resolve(BackboneConfig("VGG16", weights="none", image_size=32)).fingerprint
    legacy = resolve(BackboneConfig("VGG16", weights="none", image_size=32, pixels="legacy")).fingerprint
    assert recipe_for(current) is CURRENT and recipe_for(legacy) is LEGACY
    assert legacy["resize"] == "bilinear" and "decode" not in legacy  # what caches of format 1 carry


def test_a_cache_of_the_older_rule_is_continued_by_its_own_rule(tmp_path, run_cli, tiny_model_file):
    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.cache import open_cache
    from headstart.embedder.job import EmbedOptions, run_embedding

    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    old = run_embedding(images, BackboneConfig(str(tiny_model_file), pixels="legacy"),
                        EmbedOptions(cache=tmp_path / "c.h5", dtype="float32", progress=False))
    assert old.pixels == "legacy"
    make_class_folders(images, per_class=2, seed=5)  # new images for the old cache
    code, out, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5",
                             "--dtype", "float32")
    assert code == 0, err
    assert "with the pixel rule it was made with (legacy)" in err
    assert "embedded 4 new images" in out
    cache = open_cache(tmp_path / "c.h5")
    assert recipe_for(cache.fingerprint) is LEGACY and cache.num_rows == 8
    # the rows are what the old rule makes: TensorFlow's decode and plain bilinear resize
    from headstart.embedder.tf_runtime import import_keras

    model = import_keras().models.load_model(tiny_model_file)
    rows = dict(zip((str(k) for k in cache.keys), cache.load_features()))
    for path, row in zip(cache.paths, cache.rows):
        data = (images / str(path)).read_bytes()
        expected = np.asarray(model(LEGACY.load(data, 48)[None]))[0]
        np.testing.assert_allclose(rows[str(cache.keys[row])], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@needs_assets
def test_a_sideways_phone_photo_embeds_like_the_upright_one(tmp_path):
    """EXIF orientation 6 (stored sideways): cosine >= 0.99 to the upright photo with real
    weights (0.96 when the tag was ignored)."""
    from PIL import Image

    from headstart.embedder.backbones import BackboneConfig, backbone_network, resolve
    from headstart.embedder.engine import Engine, Source

    upright = np.asarray(Image.open(ASSETS / "photos" / "owl.jpg").convert("RGB"))
    sideways = np.ascontiguousarray(np.rot90(upright, k=1))
    (tmp_path / "upright.jpg").write_bytes(_encoded(upright, "JPEG", quality=95))
    (tmp_path / "sideways.jpg").write_bytes(_encoded(sideways, "JPEG", orientation=6, quality=95))
    cosines = {}
    for name in ("current", "legacy"):
        resolved = resolve(BackboneConfig("MobileNetV2", weights=str(WEIGHTS_100), pixels=name))
        engine = Engine(backbone_network(resolved), recipe_for(resolved.fingerprint))
        (batch,) = list(engine.embed([Source(tmp_path / "upright.jpg"), Source(tmp_path / "sideways.jpg")]))
        a, b = batch.features
        cosines[name] = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    assert cosines["current"] >= 0.99, cosines
    assert cosines["legacy"] < cosines["current"]
