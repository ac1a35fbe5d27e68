"""Backbones: preprocessing parity with Keras, fingerprints, determinism, real weights."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import HYMENOPTERA, WEIGHTS_035, needs_assets
from headstart.embedder.backbones import REGISTRY, BackboneConfig, build_backbone, preprocessing_layers, resolve


@pytest.mark.parametrize(
    "mode, keras_module",
    [("tf", "mobilenet_v2"), ("torch", "densenet"), ("caffe", "resnet50"), ("caffe", "vgg16"), ("tf", "xception")],
)
def test_preprocessing_layers_match_keras_preprocess_input(mode, keras_module):
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    ours = np.asarray(preprocessing_layers(keras, mode)(pixels))
    theirs = getattr(keras.applications, keras_module).preprocess_input(pixels.copy())
    np.testing.assert_allclose(ours, np.asarray(theirs), rtol=1e-5, atol=1e-4)


def test_every_registered_family_declares_the_preprocessing_keras_uses():
    """Families whose Keras model preprocesses internally are marked 'none'."""
    inside = ("EfficientNet", "ConvNeXt", "MobileNetV3")
    for name, spec in REGISTRY.items():
        assert (spec.preprocessing == "none") == name.startswith(inside), name


def test_fingerprint_covers_everything_that_changes_numbers():
    base = resolve(BackboneConfig("MobileNetV2", weights="none", alpha=0.35)).fingerprint
    assert base == {
        "architecture": "MobileNetV2", "alpha": 0.35, "weights": "none:seed=0", "input_size": 224,
        "pooling": "avg", "preprocessing": "tf", "layer": "", "compute_dtype": "float32",
        # how bytes become pixels (embedder.decode): part of the numbers too
        "decode": "pillow", "jpeg_scaling": "dct", "orientation": "exif", "resize": "bilinear-antialias",
    }
    for change in ({"pooling": "max"}, {"image_size": 160}, {"seed": 1}, {"layer": "block_16_project"},
                   {"alpha": 0.5}, {"pixels": "legacy"}):
        other = resolve(BackboneConfig(**{"backbone": "MobileNetV2", "weights": "none", "alpha": 0.35, **change}))
        assert other.fingerprint != base, change
    assert resolve(BackboneConfig("mobilenet_v2", weights="none", alpha=0.35)).fingerprint == base  # aliases
    assert resolve(BackboneConfig("ResNet50")).fingerprint["weights"].startswith("imagenet:keras-")


def test_random_weights_are_reproducible_from_the_seed():
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")

    def features(seed):
        model = build_backbone(resolve(BackboneConfig("VGG16", weights="none", image_size=32, seed=seed)))
        return np.asarray(model(pixels, training=False))

    first, again, other = features(3), features(3), features(4)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_weights_file_fingerprint_is_its_hash(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"abc")
    fp = resolve(BackboneConfig("MobileNetV2", weights=str(weights))).fingerprint
    assert fp["weights"] == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.slow
@needs_assets
def test_real_weights_give_useful_features(tmp_path, run_cli):
    """MobileNetV2 alpha 0.35 on hymenoptera: logistic regression >= 0.85 on the val folder,
    well above the same network with random weights."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from headstart.embedder.cache import open_cache

    def val_accuracy(name, *weights_args, dtype="float16"):
        cache = tmp_path / f"{name}.h5"
        code, _, err = run_cli("embed", "run", HYMENOPTERA, "-b", "MobileNetV2", "--alpha", "0.35", *weights_args,
                               "--cache", cache, "--dtype", dtype, "-q", "--batch-size", "16")
        assert code == 0, err
        c = open_cache(cache)
        x, y, split = c.file_features(), c.labels, c.splits
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        clf.fit(x[split == "train"], y[split == "train"])
        return clf.score(x[split == "val"], y[split == "val"])

    pretrained = val_accuracy("pretrained", "--weights", str(WEIGHTS_035))
    random = val_accuracy("random", "--weights", "none", dtype="float32")  # float16 would (rightly) be refused
    assert pretrained >= 0.85, pretrained
    assert pretrained - random >= 0.1, (pretrained, random)


def test_config_is_rebuilt_from_fingerprint_and_sources(tmp_path):
    from headstart.embedder.backbones import config_from_fingerprint
    from headstart.embedder.errors import CacheError, UsageError

    random = resolve(BackboneConfig("VGG16", weights="none", image_size=48, pooling="max", seed=5)).fingerprint
    assert config_from_fingerprint(random).fingerprint == random

    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"pretend weights")
    from_file = resolve(BackboneConfig("MobileNetV2", weights=str(weights), alpha=0.35)).fingerprint
    assert config_from_fingerprint(from_file, weights_source=str(weights)).fingerprint == from_file
    with pytest.raises(UsageError, match="weights file .* is gone"):
        config_from_fingerprint(from_file, weights_source=str(tmp_path / "moved.h5"))
    weights.write_bytes(b"other bytes now")  # same path, other content: refused, naming both
    with pytest.raises(CacheError, match="fingerprint mismatch"):
        config_from_fingerprint(from_file, weights_source=str(weights))


def test_a_backbone_source_is_one_class_and_one_table_line(monkeypatch):
    """docs/architecture.md's recipe: a source registered in SOURCES claims its --backbone
    values, names its network in the fingerprint, is rebuilt from that fingerprint (finetune,
    predict, export), and builds the network; the other sources are untouched."""
    from headstart.embedder import backbones

    class ZooSource(backbones.BackboneSource):
        name = "zoo"

        def claims(self, backbone):
            return backbone.startswith("zoo:")

        def owns(self, fingerprint):
            return str(fingerprint.get("architecture", "")).startswith("zoo:")

        def identify(self, config):
            return None, 32, {"architecture": config.backbone, "weights": f"none:seed={config.seed}",
                              "input_size": 32, "preprocessing": "none"}

        def recreate(self, fingerprint, backbone_source, weights_source):
            return fingerprint["architecture"], "none", int(fingerprint["weights"].split("=")[1])

        def build(self, keras, resolved):
            keras.utils.set_random_seed(resolved.config.seed)
            inputs = keras.Input((32, 32, 3))
            return keras.Model(inputs, keras.layers.Conv2D(5, 3)(inputs)), 32

    monkeypatch.setattr(backbones, "SOURCES", {"zoo": ZooSource(), **backbones.SOURCES})
    resolved = resolve(BackboneConfig(backbone="zoo:tiny", weights="none", seed=4))
    assert resolved.source == "zoo" and resolved.fingerprint["architecture"] == "zoo:tiny"
    again = backbones.config_from_fingerprint(resolved.fingerprint)
    assert again.fingerprint == resolved.fingerprint and again.config.seed == 4
    model = build_backbone(resolved)
    assert tuple(model.outputs[0].shape) == (None, 5)
    assert resolve(BackboneConfig(backbone="MobileNetV2", weights="none")).source == "keras.applications"
    with pytest.raises(Exception, match="unknown backbone"):
        resolve(BackboneConfig(backbone="zo:tiny"))
