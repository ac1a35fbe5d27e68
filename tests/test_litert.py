"""The LiteRT runtime: same numbers as TensorFlow (1e-4 relative), converted once per
fingerprint and reused, a clear fallback or error when a network does not convert."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import ASSETS, WEIGHTS_035, WEIGHTS_100, make_class_folders, needs_assets
from headstart.embedder.cache import open_cache
from headstart.embedder.runtimes.base import relative_max_difference

RELATIVE = 1e-4


def _embed(run_cli, images, cache, runtime, *backbone):
    code, out, err = run_cli("embed", "run", images, *backbone, "--cache", cache, "--dtype", "float32",
                             "--runtime", runtime, "--json", "-q")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("backbone", [["-b", "VGG16", "--weights", "none", "--image-size", "32"], "tiny"])
def test_litert_and_tensorflow_embed_the_same_features(tmp_path, run_cli, tiny_model_file, backbone):
    backbone = ["-b", str(tiny_model_file)] if backbone == "tiny" else backbone
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=5)
    tf_report = _embed(run_cli, images, tmp_path / "tf.h5", "tf", *backbone)
    lite_report = _embed(run_cli, images, tmp_path / "lite.h5", "litert", *backbone)
    assert tf_report["runtime"] == "tf" and lite_report["runtime"] == "litert"
    assert tf_report["fingerprint"] == lite_report["fingerprint"]  # the runtime is not part of it
    tf_cache, lite_cache = open_cache(tmp_path / "tf.h5"), open_cache(tmp_path / "lite.h5")
    assert lite_cache.attrs["runtime"] == "litert" and tf_cache.attrs["runtime"] == "tf"
    assert list(tf_cache.paths) == list(lite_cache.paths)
    assert relative_max_difference(tf_cache.file_features(), lite_cache.file_features()) <= RELATIVE


def test_flatbuffer_is_converted_once_and_reused(tmp_path, run_cli, tiny_model_file, monkeypatch):
    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))  # an empty per-user store
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5",
                           "--runtime", "litert")
    assert code == 0 and "converting the backbone to LiteRT" in err
    flatbuffers = list((tmp_path / "home" / "converted" / "litert").glob("backbone-*.tflite"))
    assert len(flatbuffers) == 1
    stamp = flatbuffers[0].stat().st_mtime_ns
    sidecar = json.loads(flatbuffers[0].with_name(flatbuffers[0].name + ".json").read_text())
    assert sidecar["parity_relative_difference"] <= RELATIVE

    make_class_folders(images, per_class=2, seed=3)  # new images: the backbone must run again
    code, out, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5",
                             "--runtime", "auto")
    assert code == 0, err
    assert "converting" not in err and "building" not in err  # neither converted nor even built
    assert "runtime: litert (no GPU is visible; " in err and " interpreter" in err
    assert flatbuffers[0].stat().st_mtime_ns == stamp


def test_auto_falls_back_to_tensorflow_when_conversion_fails(tmp_path, run_cli, tiny_model_file, monkeypatch):
    import headstart.embedder.runtimes.litert as litert

    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))  # nothing converted yet

    def refuse(model):
        raise litert.ConversionError(f"{model.name} does not convert to TFLite: unsupported op (simulated)")

    monkeypatch.setattr(litert, "convert", refuse)
    import headstart.embedder.runtimes.openvino as openvino_runtime  # auto's next choice (tests/test_openvino.py)

    monkeypatch.setattr(openvino_runtime, "installed", lambda: False)
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, out, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "a.h5")
    assert code == 0
    assert "runtime: tf (LiteRT is not available for it" in err and "unsupported op (simulated)" in err
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "b.h5",
                           "--runtime", "litert", "-q")
    assert code == 2 and "does not convert to TFLite" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("embed", "run", images, "--runtime", "onnx", "--cache", tmp_path / "c.h5", "-q")
    assert code == 2 and "--runtime must be one of auto, tf, litert" in err


def test_predict_is_the_same_on_both_runtimes(tmp_path, run_cli, tiny_model_file):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=6)
    assert run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5", "-q")[0] == 0
    assert run_cli("head", "train", "--cache", tmp_path / "c.h5", "--epochs", "5", "--hidden", "8",
                   "--out", tmp_path / "run", "-q")[0] == 0
    results = {}
    for runtime in ("tf", "litert"):
        code, out, _ = run_cli("predict", images, "--run", tmp_path / "run", "--no-cache", "--runtime", runtime,
                               "--format", "json", "-q")
        assert code == 0
        results[runtime] = np.asarray([r["probability"] for r in json.loads(out)])
    np.testing.assert_allclose(results["litert"], results["tf"], atol=1e-4)


# One member per family of the registry. CI converts one family per kind of op (depthwise and
# ReLU6, squeeze-excitation and swish, residual sums, concatenated asymmetric branches, dense
# concatenation, layer norm and GELU): the whole list costs ~8 minutes on 2 cores, more than
# the rest of the suite can spare, and every first use of a conversion is parity-probed anyway.
# HEADSTART_TEST_ALL_FAMILIES=1 converts them all (do it when a family is added or TF moves).
ALL_FAMILIES = [("MobileNet", 32), ("MobileNetV2", 32), ("MobileNetV3Small", 32), ("MobileNetV3Large", 32),
                ("EfficientNetB0", 32), ("EfficientNetV2B0", 32), ("ResNet50", 32), ("ResNet50V2", 32),
                ("VGG16", 32), ("InceptionV3", 75), ("InceptionResNetV2", 75), ("Xception", 71),
                ("DenseNet121", 32), ("ConvNeXtTiny", 32)]
OP_KINDS = ("MobileNetV2", "EfficientNetB0", "ResNet50", "InceptionV3", "DenseNet121", "ConvNeXtTiny")
FAMILIES = ALL_FAMILIES if os.environ.get("HEADSTART_TEST_ALL_FAMILIES") == "1" else [
    (name, size) for name, size in ALL_FAMILIES if name in OP_KINDS]


@pytest.mark.slow
@pytest.mark.parametrize("name, size", FAMILIES)
def test_every_registered_family_converts_with_parity(name, size):
    """Random weights, generated pixels: LiteRT within 1e-4 (relative) of TensorFlow.
    One member per family of the registry (members differ in width/depth, not in ops)."""
    from headstart.embedder.backbones import BackboneConfig, build_backbone, resolve
    from headstart.embedder.runtimes.litert import LiteRTForward, check_parity, convert

    model = build_backbone(resolve(BackboneConfig(name, weights="none", image_size=size)))
    assert check_parity(model, LiteRTForward(convert(model)), size, seed=1) <= RELATIVE


@pytest.mark.slow
@needs_assets
@pytest.mark.parametrize("alpha, weights", [(0.35, WEIGHTS_035), (1.0, WEIGHTS_100)])
def test_real_weights_on_real_photos_have_parity(alpha, weights):
    from headstart.embedder.backbones import BackboneConfig, build_backbone, resolve
    from headstart.embedder.decode import CURRENT
    from headstart.embedder.runtimes.litert import LiteRTForward, convert
    from headstart.embedder.runtimes.tf import compiled_forward

    model = build_backbone(resolve(BackboneConfig("MobileNetV2", weights=str(weights), alpha=alpha)))
    photos = sorted((ASSETS / "photos").glob("*.jpg"))
    pixels = np.stack([CURRENT.load(p.read_bytes(), 224) for p in photos])
    reference = compiled_forward(model, 224)(pixels).numpy()
    got = LiteRTForward(convert(model))(pixels)
    assert np.abs(reference).max() > 1  # real features, not the ~1e-12 of random weights
    assert relative_max_difference(reference, got) <= RELATIVE


def test_interpreter_pool_keeps_order_and_numbers(tiny_model_file):
    """Several interpreters taking chunks of a batch (ragged last chunk included), and
    several callers at once, give each image exactly the features one interpreter gives it."""
    from concurrent.futures import ThreadPoolExecutor

    from headstart.embedder.runtimes.litert import LiteRTForward, convert
    from headstart.embedder.tf_runtime import import_keras

    flatbuffer = convert(import_keras().models.load_model(tiny_model_file))
    pixels = np.random.default_rng(0).uniform(0, 255, (7, 48, 48, 3)).astype(np.float32)
    one = LiteRTForward(flatbuffer, threads=1)
    assert one.interpreters == 1
    reference = np.concatenate([one(pixels[i:i + 1]) for i in range(len(pixels))])
    assert np.abs(reference - reference[::-1]).max() > 0  # distinct rows: a swap would show

    pool = LiteRTForward(flatbuffer, interpreters=3, threads=1, chunk=2)
    np.testing.assert_allclose(pool(pixels), reference, rtol=0, atol=1e-6)
    np.testing.assert_allclose(pool(pixels[:3]), reference[:3], rtol=0, atol=1e-6)  # smaller than a round
    np.testing.assert_allclose(pool(pixels[:1]), reference[:1], rtol=0, atol=1e-6)
    with ThreadPoolExecutor(3) as callers:
        outputs = list(callers.map(lambda k: pool(pixels[k:]), range(3)))
    for k, got in enumerate(outputs):
        np.testing.assert_allclose(got, reference[k:], rtol=0, atol=1e-6)


@pytest.mark.parametrize("cores, layout", [(1, (1, 1)), (2, (2, 1)), (3, (3, 1)), (6, (4, 1)), (16, (4, 4))])
def test_default_layout_is_one_interpreter_per_core_up_to_a_cap(cores, layout):
    from headstart.embedder.runtimes.litert import default_layout

    assert default_layout(cores) == layout


def test_quiet_stderr_from_two_threads_restores_the_real_stderr():
    """fd 2 is process-wide: overlapping silencers (A in, B in, A out, B out) must leave the
    real stderr in place, not the /dev/null one thread saw when it came in."""
    import os
    import threading

    from headstart.embedder.tf_runtime import quiet_stderr

    before = os.fstat(2)
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def first():
        with quiet_stderr():
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def second():
        a_in.wait(10)
        with quiet_stderr():
            b_in.set()
            a_out.wait(10)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)
