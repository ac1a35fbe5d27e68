"""The OpenVINO runtime: float32 with TensorFlow's numbers (1e-4 relative), converted once per
fingerprint and reused; bfloat16 (--precision bf16) only where the CPU computes in it, in its
own fingerprint, never silently float32; and `--runtime auto` choosing among them, saying why.

The bfloat16 numeric tests need a CPU with AVX512_BF16 or AMX and skip elsewhere; the
refusals on other CPUs are tested everywhere (the CPU check simulated where needed).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import HYMENOPTERA, WEIGHTS_100, make_class_folders, needs_assets

pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install 'headstart[openvino]'")

from headstart.embedder.cache import open_cache  # noqa: E402
from headstart.embedder.runtimes import openvino as ov_runtime  # noqa: E402
from headstart.embedder.runtimes.base import relative_max_difference  # noqa: E402

RELATIVE = 1e-4
BF16_CPU = ov_runtime.cpu_bfloat16()
needs_bf16 = pytest.mark.skipif(BF16_CPU is None, reason="this CPU has neither AVX512_BF16 nor AMX: "
                                                         "it cannot compute in bfloat16")
VGG = ["-b", "VGG16", "--weights", "none", "--image-size", "32"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _embed(run_cli, images, cache, *args):
    code, out, err = run_cli("embed", "run", images, *args, "--cache", cache, "--dtype", "float32", "--json", "-q")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def no_bf16_cpu(monkeypatch):
    """Simulate a CPU without bfloat16 (whatever this one has)."""
    monkeypatch.setattr(ov_runtime, "cpu_bfloat16", lambda: None)


# -------------------------------------------------------------------- float32


@pytest.mark.parametrize("backbone", [VGG, "tiny"])
def test_openvino_embeds_tensorflows_features(tmp_path, run_cli, tiny_model_file, backbone):
    backbone = ["-b", str(tiny_model_file)] if backbone == "tiny" else backbone
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=5)
    tf_report = _embed(run_cli, images, tmp_path / "tf.h5", *backbone, "--runtime", "tf")
    ov_report = _embed(run_cli, images, tmp_path / "ov.h5", *backbone, "--runtime", "openvino")
    assert ov_report["runtime"] == "openvino"
    assert ov_report["fingerprint"] == tf_report["fingerprint"]  # float32 either way: the runtime is not in it
    assert ov_report["fingerprint"]["compute_dtype"] == "float32"
    tf_cache, ov_cache = open_cache(tmp_path / "tf.h5"), open_cache(tmp_path / "ov.h5")
    assert ov_cache.attrs["runtime"] == "openvino"
    assert list(tf_cache.paths) == list(ov_cache.paths)
    assert np.abs(tf_cache.file_features()).max() > 1e-3  # features worth comparing
    assert relative_max_difference(tf_cache.file_features(), ov_cache.file_features()) <= RELATIVE


def test_model_is_converted_once_kept_verified_and_reused(tmp_path, run_cli, tiny_model_file, monkeypatch):
    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))  # an empty per-user store
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5",
                           "--runtime", "openvino")
    assert code == 0, err
    assert "converting the backbone to OpenVINO" in err and "runtime: openvino (asked for; float32, " in err
    kept = list((tmp_path / "home" / "converted" / "openvino").glob("backbone-*.ov.zip"))
    assert len(kept) == 1
    record = json.loads(kept[0].with_name(kept[0].name + ".json").read_text())
    assert record["parity_relative_difference"] <= RELATIVE
    stamp = kept[0].stat().st_mtime_ns

    make_class_folders(images, per_class=2, seed=3)  # new images: the backbone must run again
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5",
                           "--runtime", "openvino")
    assert code == 0, err
    assert "converting" not in err and "building" not in err  # neither converted nor even built
    assert kept[0].stat().st_mtime_ns == stamp

    data = bytearray(kept[0].read_bytes())  # changed from outside: refused, converted afresh
    data[len(data) // 2] ^= 0xFF
    kept[0].write_bytes(bytes(data))
    make_class_folders(images, per_class=2, seed=4)
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5",
                           "--runtime", "openvino")
    assert code == 0, err
    assert "does not match the SHA-256" in err and "converting the backbone to OpenVINO" in err


def test_request_pool_keeps_order_and_numbers(tiny_model_file):
    """Several infer requests taking chunks of a batch (ragged last chunk included), and
    several callers at once, give each image exactly the features one request gives it."""
    from concurrent.futures import ThreadPoolExecutor

    from headstart.embedder.tf_runtime import import_keras

    ov_model = ov_runtime.convert(import_keras().models.load_model(tiny_model_file))
    pixels = np.random.default_rng(0).uniform(0, 255, (7, 48, 48, 3)).astype(np.float32)
    one = ov_runtime.OpenVINOForward(ov_model, threads=1)
    assert one.requests == 1 and one.streams == 1
    reference = np.concatenate([one(pixels[i:i + 1]) for i in range(len(pixels))])
    assert np.abs(reference - reference[::-1]).max() > 0  # distinct rows: a swap would show

    pool = ov_runtime.OpenVINOForward(ov_model, chunk=2)
    for count in (7, 3, 1):  # more than a round, less than a round, one
        np.testing.assert_allclose(pool(pixels[:count]), reference[:count], rtol=0, atol=1e-5)
    with ThreadPoolExecutor(3) as callers:
        outputs = list(callers.map(lambda k: pool(pixels[k:]), range(3)))
    for k, got in enumerate(outputs):
        np.testing.assert_allclose(got, reference[k:], rtol=0, atol=1e-5)


def test_stored_form_round_trips_without_halving_the_weights(tiny_model_file):
    """The store keeps the IR whole: OpenVINO's save_model would halve the weights to float16
    by default, which would put float16-rounded numbers under a float32 fingerprint."""
    from headstart.embedder.tf_runtime import import_keras

    model = import_keras().models.load_model(tiny_model_file)
    ov_model = ov_runtime.convert(model)
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 48, 48, 3)).astype(np.float32)
    direct = ov_runtime.OpenVINOForward(ov_model)(pixels)
    stored = ov_runtime.OpenVINOForward(ov_runtime.unpack(ov_runtime.pack(ov_model)))(pixels)
    np.testing.assert_array_equal(stored, direct)
    assert relative_max_difference(np.asarray(model(pixels)), stored) <= 1e-5


def test_float32_is_compiled_in_float32_on_every_cpu(tiny_model_file):
    """OpenVINO computes in bfloat16 by default on CPUs that have it: a float32 fingerprint
    must still get float32 (the precision is set, and read back from the compiled model)."""
    from headstart.embedder.tf_runtime import import_keras

    forward = ov_runtime.OpenVINOForward(ov_runtime.convert(import_keras().models.load_model(tiny_model_file)))
    assert ov_runtime.compute_precisions(forward._compiled) == {"f32"}
    assert forward.layout.startswith("float32, ")


# One family per kind of op the converter must get right: depthwise convolutions and ReLU6,
# squeeze-excitation and swish, residual sums, concatenated branches with asymmetric kernels,
# dense concatenation, layer norm and GELU. tests/test_litert.py builds every registered family;
# here each conversion costs tens of seconds, and every first use is parity-probed anyway.
FAMILIES = [("MobileNetV2", 32), ("EfficientNetB0", 32), ("ResNet50", 32), ("InceptionV3", 75),
            ("DenseNet121", 32), ("ConvNeXtTiny", 32)]


@pytest.mark.parametrize("name, size", FAMILIES)
def test_every_registered_family_converts_with_parity(name, size):
    """Random weights, generated pixels: OpenVINO float32 within 1e-4 (relative) of TensorFlow.
    One member per family of the registry (members differ in width/depth, not in ops)."""
    from headstart.embedder.backbones import BackboneConfig, build_backbone, resolve

    model = build_backbone(resolve(BackboneConfig(name, weights="none", image_size=size)))
    forward = ov_runtime.OpenVINOForward(ov_runtime.convert(model))
    assert ov_runtime.check_parity(model, forward, seed=1) <= RELATIVE


def test_predict_is_the_same_on_openvino_and_litert(tmp_path, run_cli, tiny_model_file):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=6)
    assert run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "c.h5", "-q")[0] == 0
    assert run_cli("head", "train", "--cache", tmp_path / "c.h5", "--epochs", "5", "--hidden", "8",
                   "--out", tmp_path / "run", "-q")[0] == 0
    results = {}
    for runtime in ("litert", "openvino"):
        code, out, err = run_cli("predict", images, "--run", tmp_path / "run", "--no-cache", "--runtime", runtime,
                                 "--format", "json")
        assert code == 0, err
        assert f"through the backbone ({runtime})" in err
        results[runtime] = np.asarray([r["probability"] for r in json.loads(out)])
    assert len(results["openvino"]) == 12
    np.testing.assert_allclose(results["openvino"], results["litert"], atol=1e-4)


def test_views_run_through_openvino(tmp_path, run_cli, tiny_model_file):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=3)
    report = _embed(run_cli, images, tmp_path / "v.h5", "-b", str(tiny_model_file), "--runtime", "openvino",
                    "--views", "2")
    assert report["runtime"] == "openvino" and report["views_embedded"] == 12
    assert open_cache(tmp_path / "v.h5").num_views == 2


# ------------------------------------------------------------ --runtime auto


def test_auto_takes_openvino_when_litert_cannot_convert(tmp_path, run_cli, tiny_model_file, monkeypatch):
    import headstart.embedder.runtimes.litert as litert

    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))

    def refuse(model):
        raise litert.ConversionError(f"{model.name} does not convert to TFLite: unsupported op (simulated)")

    monkeypatch.setattr(litert, "convert", refuse)
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, out, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "a.h5")
    assert code == 0, err
    assert "runtime: openvino (no GPU is visible; LiteRT is not available for it (" in err
    assert ("does not convert to TFLite: unsupported op (simulated)); the next fastest in float32 on CPUs "
            "(measured: ") in err and "); float32, " in err
    assert "(runtime: openvino)" in out


def test_auto_picks_litert_for_float32_on_cpus_and_says_why(tmp_path, run_cli, tiny_model_file, monkeypatch):
    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "a.h5")
    assert code == 0, err
    assert "runtime: litert (no GPU is visible; the fastest in float32 on CPUs (measured: " in err


def test_auto_names_every_refusal_before_falling_back_to_tensorflow(tmp_path, run_cli, tiny_model_file,
                                                                     monkeypatch):
    import headstart.embedder.runtimes.litert as litert

    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(litert, "convert", lambda model: (_ for _ in ()).throw(
        litert.ConversionError("no TFLite (simulated)")))
    monkeypatch.setattr(ov_runtime, "installed", lambda: False)
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "a.h5")
    assert code == 0, err
    assert ("runtime: tf (LiteRT is not available for it (no TFLite (simulated)); OpenVINO is not available "
            "for it (OpenVINO is not installed: pip install 'headstart[openvino]'") in err
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", tmp_path / "b.h5",
                           "--runtime", "openvino", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "OpenVINO is not installed: pip install 'headstart[openvino]'" in err


def test_openvino_refuses_what_only_tensorflow_runs(tmp_path, run_cli):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, _, err = run_cli("embed", "run", images, *VGG, "--precision", "mixed", "--runtime", "openvino",
                           "--cache", tmp_path / "m.h5", "-q")
    assert code == 2 and "--runtime openvino cannot run mixed precision" in err


# ---------------------------------------------------------------- bfloat16


def test_precision_bf16_is_its_own_fingerprint():
    from headstart.embedder.backbones import BackboneConfig, backbone_network, config_from_fingerprint, resolve
    from headstart.embedder.fingerprint import describe

    f32 = resolve(BackboneConfig("VGG16", weights="none", image_size=32, precision="float32"))
    bf16 = resolve(BackboneConfig("VGG16", weights="none", image_size=32, precision="bf16"))
    assert bf16.fingerprint["compute_dtype"] == "bfloat16" and f32.fingerprint["compute_dtype"] == "float32"
    assert {k for k in f32.fingerprint if f32.fingerprint[k] != bf16.fingerprint[k]} == {"compute_dtype"}
    assert "bfloat16" in describe(bf16.fingerprint)
    assert config_from_fingerprint(bf16.fingerprint).fingerprint == bf16.fingerprint  # predict/finetune rebuild it
    network = backbone_network(bf16)
    assert network.bfloat16 and not network.mixed_precision
    assert network.key != backbone_network(f32).key  # converted copies are kept apart too
    assert not backbone_network(f32).bfloat16


def test_bf16_rows_never_land_in_a_float32_cache(tmp_path, run_cli):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    _embed(run_cli, images, tmp_path / "c.h5", *VGG, "--precision", "float32")
    make_class_folders(images, per_class=2, seed=5)  # new images to embed
    code, _, err = run_cli("embed", "run", images, *VGG, "--precision", "bf16", "--cache", tmp_path / "c.h5", "-q")
    assert code == 2 and "fingerprint mismatch" in err and "compute_dtype: float32 vs bfloat16" in err
    assert len(open_cache(tmp_path / "c.h5").keys) == 4  # untouched


@pytest.mark.parametrize("runtime", ["auto", "openvino"])
def test_bf16_is_a_one_line_error_on_a_cpu_without_it(tmp_path, run_cli, no_bf16_cpu, runtime):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, out, err = run_cli("embed", "run", images, *VGG, "--precision", "bf16", "--runtime", runtime,
                             "--cache", tmp_path / "b.h5")
    assert code == 2 and out == ""
    line = err.strip().splitlines()[-1]
    assert "--precision bf16 needs a CPU with AVX512_BF16 or AMX" in line and "use --precision float32" in line
    assert "Traceback" not in err
    assert not (tmp_path / "b.h5").exists()  # no cache of float32 rows under a bf16 fingerprint


@pytest.mark.parametrize("runtime", ["tf", "litert", "jax", "torch"])
def test_bf16_runs_on_openvino_only(tmp_path, run_cli, runtime, tiny_model_file):
    """Every other runtime refuses bf16 before computing anything: float32 rows must never
    land under a bf16 fingerprint (the Keras 3 runtimes included)."""
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, _, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--precision", "bf16", "--runtime", runtime,
                           "--cache", tmp_path / "b.h5", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"--runtime {runtime} cannot compute in bfloat16; --precision bf16 runs on --runtime openvino" in err


def test_bf16_without_openvino_says_how_to_install_it(tmp_path, run_cli, monkeypatch):
    monkeypatch.setattr(ov_runtime, "installed", lambda: False)
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=2)
    code, _, err = run_cli("embed", "run", images, *VGG, "--precision", "bf16", "--cache", tmp_path / "b.h5", "-q")
    assert code == 2 and "runs on OpenVINO, which is not installed: pip install 'headstart[openvino]'" in err


def test_a_bf16_compile_that_is_not_bf16_is_refused(tiny_model_file, monkeypatch):
    """OpenVINO compiles in float32, silently, when asked for bfloat16 on a CPU without it:
    what the compiled layers run in is read back and must be what was asked for."""
    from headstart.embedder.tf_runtime import import_keras

    ov_model = ov_runtime.convert(import_keras().models.load_model(tiny_model_file))
    if BF16_CPU is None:  # the real thing: this CPU falls back to float32
        with pytest.raises(ov_runtime.PrecisionError, match="asked to compute in bfloat16 but compiled .* in f32"):
            ov_runtime.OpenVINOForward(ov_model, "bfloat16")
    else:  # a bf16 CPU: simulate the fallback
        monkeypatch.setattr(ov_runtime, "compute_precisions", lambda compiled: {"f32"})
        with pytest.raises(ov_runtime.PrecisionError, match="asked to compute in bfloat16"):
            ov_runtime.OpenVINOForward(ov_model, "bfloat16")


def test_bf16_probe_refuses_features_far_from_float32():
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(12, 5))

    def reference(x):
        return x.reshape(len(x), -1)[:, :12] @ weights

    assert ov_runtime.cosine_agreement(reference, lambda x: reference(x) * 1.01, 4) > 0.999
    assert ov_runtime.cosine_agreement(reference, lambda x: rng.normal(size=(len(x), 5)), 4) < ov_runtime.BF16_MIN_COSINE
    assert ov_runtime.cosine_agreement(reference, lambda x: np.full((len(x), 5), np.nan), 4) < 0


def test_cpu_bfloat16_needs_openvino_and_the_instructions(monkeypatch):
    class FakeCore:
        def __init__(self, capabilities):
            self.capabilities = capabilities

        def get_property(self, device, name):
            return self.capabilities

    cases = [(["FP32", "BF16"], {"avx512f", "avx512_bf16"}, "AVX512_BF16"),
             (["FP32", "BF16"], {"amx_bf16", "avx512_bf16"}, "AMX-BF16"),
             (["FP32", "BF16"], {"avx512f"}, None),  # OpenVINO would emulate it: not what bf16 is for
             (["FP32"], {"avx512_bf16"}, None)]
    for capabilities, flags, expected in cases:
        monkeypatch.setattr(ov_runtime, "core", lambda c=capabilities: FakeCore(c))
        monkeypatch.setattr(ov_runtime, "_cpu_flags", lambda f=flags: f)
        ov_runtime.cpu_bfloat16.cache_clear()
        assert ov_runtime.cpu_bfloat16() == expected
    ov_runtime.cpu_bfloat16.cache_clear()


@needs_bf16
def test_bf16_embeds_close_to_float32_and_says_so(tmp_path, run_cli, tiny_model_file, monkeypatch):
    monkeypatch.setenv("HEADSTART_HOME", str(tmp_path / "home"))
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=5)
    f32 = _embed(run_cli, images, tmp_path / "f32.h5", "-b", str(tiny_model_file), "--runtime", "openvino")
    code, out, err = run_cli("embed", "run", images, "-b", tiny_model_file, "--precision", "bf16",
                             "--cache", tmp_path / "bf16.h5", "--dtype", "float32")
    assert code == 0, err
    assert f"runtime: openvino (bfloat16 runs on OpenVINO only; bfloat16 ({BF16_CPU})" in err
    assert "bfloat16 (runtime: openvino)" in out
    bf16 = open_cache(tmp_path / "bf16.h5")
    assert bf16.fingerprint["compute_dtype"] == "bfloat16" and f32["fingerprint"]["compute_dtype"] == "float32"
    reference = open_cache(tmp_path / "f32.h5").file_features()
    assert _cosines(bf16.file_features(), reference).min() >= 0.98
    assert relative_max_difference(reference, bf16.file_features()) > 0  # really computed otherwise
    kept = list((tmp_path / "home" / "converted" / "openvino").glob("*.ov.zip.json"))
    assert any("bfloat16_min_cosine_to_float32" in json.loads(p.read_text()) for p in kept)


@needs_bf16
@needs_assets
def test_bf16_on_real_photos_keeps_features_and_predictions(tmp_path, run_cli):
    images = HYMENOPTERA / "val"
    backbone = ["-b", "MobileNetV2", "--weights", str(WEIGHTS_100)]
    _embed(run_cli, images, tmp_path / "f32.h5", *backbone, "--runtime", "openvino")
    _embed(run_cli, images, tmp_path / "bf16.h5", *backbone, "--precision", "bf16")
    f32, bf16 = open_cache(tmp_path / "f32.h5"), open_cache(tmp_path / "bf16.h5")
    assert np.abs(f32.file_features()).max() > 1  # real features
    cosine = _cosines(bf16.file_features(), f32.file_features())
    assert cosine.min() >= 0.98 and cosine.mean() >= 0.99

    assert run_cli("head", "train", "--cache", tmp_path / "bf16.h5", "--head", "logreg", "--out",
                   tmp_path / "run", "-q")[0] == 0
    code, out, err = run_cli("predict", images, "--run", tmp_path / "run", "--no-cache", "--format", "json")
    assert code == 0 and "through the backbone (openvino)" in err
    fresh = {r["path"]: r["probability"] for r in json.loads(out)}
    code, out, _ = run_cli("predict", images, "--run", tmp_path / "run", "--cache", tmp_path / "bf16.h5",
                           "--format", "json", "-q")
    cached = {r["path"]: r["probability"] for r in json.loads(out)}
    assert fresh.keys() == cached.keys() and len(fresh) == 153
    # The same bf16 computation again (the cache keeps its float32 output); only kernels chosen
    # per chunk size may differ, within bfloat16's rounding.
    difference = np.abs(np.asarray([fresh[k] for k in fresh]) - np.asarray([cached[k] for k in fresh]))
    assert difference.mean() < 0.01
