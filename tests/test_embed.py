"""`headstart embed run` end to end on tiny generated images (CPU, seconds)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, make_class_folders, photo_like, save_image
from headstart.embedder.cache import CacheWriter, open_cache


def _embed(run_cli, images, model, cache, *extra):
    return run_cli("embed", "run", images, "--backbone", model, "--cache", cache, "--quiet", "--json",
                   "--batch-size", "4", *extra)


def _report(out):
    return json.loads(out)


def _features_by_path(cache_path):
    cache = open_cache(cache_path)
    feats = cache.file_features()
    return {p: feats[i] for i, p in enumerate(cache.paths)}


def test_every_supported_format_becomes_rgb(tmp_path, tiny_model_file, run_cli):
    rng = np.random.default_rng(0)
    img = photo_like(rng, (40, 40))
    root = tmp_path / "imgs" / "things"
    save_image(root / "a.jpg", img)
    save_image(root / "b.JPEG", photo_like(rng, (40, 40)))
    save_image(root / "gray.png", img, mode="L")
    save_image(root / "rgba.png", img, mode="RGBA")
    save_image(root / "palette.png", img, mode="P")
    save_image(root / "deep16.png", (rng.random((40, 40)) * 65535).astype(np.uint16))
    save_image(root / "x.bmp", photo_like(rng, (40, 40)))
    save_image(root / "x.webp", photo_like(rng, (40, 40)))
    from PIL import Image

    frames = [Image.fromarray(photo_like(rng, (40, 40))) for _ in range(2)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    save_image(root / "png_named.jpg", photo_like(rng, (40, 40)), fmt="PNG")  # content decides, not the name
    (root / "readme.txt").write_text("not an image")

    code, out, err = _embed(run_cli, tmp_path / "imgs", tiny_model_file, tmp_path / "c.h5")
    report = _report(out)
    assert code == 0, err
    assert report["skipped"] == [] and report["files"] == 10 and report["ignored_files"] == 1
    feats = open_cache(tmp_path / "c.h5").load_features()
    assert feats.shape == (10, 8) and np.isfinite(feats).all()


def test_bad_files_are_skipped_reported_and_exit_1(tmp_path, tiny_model_file, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=3)
    (root / "cats" / "zero.jpg").write_bytes(b"")
    (root / "cats" / "text.jpg").write_text("definitely not a jpeg")
    good = (root / "dogs" / "dogs_0_0.jpg").read_bytes()
    (root / "dogs" / "truncated.jpg").write_bytes(good[: len(good) // 2])

    code, out, err = _embed(run_cli, root, tiny_model_file, tmp_path / "c.h5")
    report = _report(out)
    assert code == 1
    reasons = {s["path"]: s["reason"] for s in report["skipped"]}
    assert reasons == {
        "cats/zero.jpg": "empty file (0 bytes)",
        "cats/text.jpg": "not an image (unknown file format)",
        "dogs/truncated.jpg": "corrupt or truncated JPEG",
    }
    cache = open_cache(tmp_path / "c.h5")
    assert len(cache.paths) == 6 and sorted(cache.failure_paths) == sorted(reasons)

    # The human summary groups them by reason; a rerun does not even build the model.
    code, out, err = run_cli("embed", "run", root, "--backbone", tiny_model_file, "--cache", tmp_path / "c.h5", "-q")
    assert code == 1
    assert "skipped 3 files" in err and "corrupt or truncated JPEG" in err


def test_incremental_rerun_embeds_only_new_bytes(tmp_path, tiny_model_file, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=4)
    cache = tmp_path / "c.h5"
    code, out, _ = _embed(run_cli, root, tiny_model_file, cache)
    assert code == 0 and _report(out)["embedded"] == 8
    before = _features_by_path(cache)

    make_class_folders(root, per_class=2, seed=5)  # 4 new images
    shutil.copy(root / "cats" / "cats_0_0.jpg", root / "dogs" / "copy_of_cat.jpg")  # same bytes, conflicting label
    (root / "cats" / "cats_0_1.jpg").rename(root / "cats" / "renamed.jpg")
    code, out, _ = _embed(run_cli, root, tiny_model_file, cache)
    report = _report(out)
    assert code == 0
    assert report["embedded"] == 4 and report["reused"] == 9 and report["rows"] == 12 and report["files"] == 13
    assert report["label_conflicts"][0]["labels"] == ["cats", "dogs"]
    after = _features_by_path(cache)
    for path, vec in before.items():
        now_path = "cats/renamed.jpg" if path == "cats/cats_0_1.jpg" else path
        np.testing.assert_array_equal(after[now_path], vec)  # old rows untouched, bit for bit
    np.testing.assert_array_equal(after["dogs/copy_of_cat.jpg"], after["cats/cats_0_0.jpg"])

    code, out, _ = _embed(run_cli, root, tiny_model_file, cache)
    report = _report(out)
    assert report["embedded"] == 0 and not report["rewritten"] and report["setup_s"] == 0


def test_split_layout_and_manifest_reach_the_cache(tmp_path, tiny_model_file, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=2, split="train")
    make_class_folders(root, per_class=1, split="val", seed=1)
    code, _, err = _embed(run_cli, root, tiny_model_file, tmp_path / "c.h5")
    assert code == 0, err
    cache = open_cache(tmp_path / "c.h5")
    assert sorted(cache.splits) == ["train"] * 4 + ["val"] * 2
    assert cache.classes == ["cats", "dogs"]

    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\ntrain/cats/cats_0_0.jpg,feline,test\ntrain/dogs/dogs_0_0.jpg,,\nmissing.jpg,x,\n")
    code, out, _ = _embed(run_cli, root, tiny_model_file, tmp_path / "m.h5", "--manifest", manifest)
    assert code == 1  # the missing file is skipped and reported
    assert _report(out)["skipped"] == [{"path": "missing.jpg", "reason": "listed in the manifest but not found"}]
    cache = open_cache(tmp_path / "m.h5")
    assert list(cache.paths) == ["train/cats/cats_0_0.jpg", "train/dogs/dogs_0_0.jpg"]
    assert cache.classes == ["feline"] and list(cache.labels) == [0, -1] and list(cache.splits) == ["test", ""]


def test_user_model_layer_is_pooled(tmp_path, tiny_model_file, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=2)
    for pooling, dim in (("avg", 32), ("max", 32), ("flatten", 11 * 11 * 32)):
        cache = tmp_path / f"{pooling}.h5"
        code, _, err = _embed(run_cli, root, tiny_model_file, cache, "--layer", "conv_b", "--pooling", pooling)
        assert code == 0, err
        c = open_cache(cache)
        assert c.dim == dim and c.fingerprint["layer"] == "conv_b" and c.fingerprint["pooling"] == pooling
    avg, mx = open_cache(tmp_path / "avg.h5").load_features(), open_cache(tmp_path / "max.h5").load_features()
    assert (mx >= avg - 1e-3).all() and not np.allclose(mx, avg)

    code, _, err = _embed(run_cli, root, tiny_model_file, tmp_path / "bad.h5", "--layer", "conv_c")
    assert code == 2 and "--layer 'conv_c' is not a layer" in err and "conv_b" in err


def test_registry_backbone_with_random_weights_and_flatten_warning(tmp_path, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=2)
    code, out, err = run_cli("embed", "run", root, "-b", "vgg16", "--weights", "none", "--image-size", "32",
                             "--pooling", "flatten", "--cache-dir", tmp_path / "cache", "--json", "-q")
    report = _report(out)
    assert code == 0, err
    assert report["fingerprint"]["architecture"] == "VGG16"
    assert report["fingerprint"]["weights"] == "none:seed=0"
    assert report["cache_path"].startswith(str(tmp_path / "cache" / "imgs-"))
    assert open_cache(report["cache_path"]).dim == 512  # 1x1x512 at 32 px: flatten = 512
    # a second backbone config gets its own default cache file
    code, out2, _ = run_cli("embed", "run", root, "-b", "vgg16", "--weights", "none", "--image-size", "32",
                            "--pooling", "max", "--cache-dir", tmp_path / "cache", "--json", "-q")
    assert code == 0 and _report(out2)["cache_path"] != report["cache_path"]


def test_flatten_warns_about_cache_size(tmp_path, tiny_model_file, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=1)
    big = tmp_path / "big.keras"
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    inputs = keras.Input((48, 48, 3))
    outputs = keras.layers.Conv2D(8, 1)(keras.layers.Rescaling(1 / 255.0)(inputs))  # 48*48*8 = 18,432 values
    keras.Model(inputs, outputs).save(big)
    code, out, err = run_cli("embed", "run", root, "-b", big, "--pooling", "flatten", "--cache", tmp_path / "c.h5")
    assert code == 0, err
    assert "pooling 'flatten' keeps 18,432 values per image" in err


def test_fingerprint_mismatch_is_exit_2_and_names_both(tmp_path, tiny_model_file, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=1)
    cache = tmp_path / "c.h5"
    assert _embed(run_cli, root, tiny_model_file, cache)[0] == 0
    before = cache.read_bytes()
    code, _, err = _embed(run_cli, root, tiny_model_file, cache, "--pooling", "max")
    assert code == 2
    assert "fingerprint mismatch" in err and "pooling: avg vs max" in err and len(err.strip().splitlines()) == 1
    assert cache.read_bytes() == before


def test_second_writer_is_refused(tmp_path, tiny_model_file, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=1)
    cache = tmp_path / "c.h5"
    from headstart.embedder.backbones import BackboneConfig, resolve

    fingerprint = resolve(BackboneConfig(backbone=str(tiny_model_file))).fingerprint
    with CacheWriter(cache, fingerprint):
        code, _, err = _embed(run_cli, root, tiny_model_file, cache)
    assert code == 2 and "being written by another headstart process" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["-b", "ResNet51"], "unknown backbone 'ResNet51'; did you mean ResNet50?"),
        (["-b", "MobileNetV2", "--weights", "no/such/file.h5"], "--weights: no such file"),
        (["-b", "VGG16", "--alpha", "0.5"], "--alpha applies to MobileNet families only"),
        (["-b", "InceptionV3", "--image-size", "32"], "InceptionV3 needs --image-size >= 75"),
        (["--pooling", "median"], "unknown pooling 'median'"),
        (["--dtype", "int8"], "--dtype must be float16 or float32"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_bad_options_are_one_line_exit_2(tmp_path, run_cli, args, message):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=1)
    code, _, err = run_cli("embed", "run", root, "--cache-dir", tmp_path, *args)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_and_imageless_folders(tmp_path, run_cli):
    code, _, err = run_cli("embed", "run", tmp_path / "nope")
    assert code == 2 and "images folder not found" in err
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    code, _, err = run_cli("embed", "run", tmp_path / "docs")
    assert code == 2 and "no images found" in err


def test_weights_file_for_another_architecture(tmp_path, run_cli):
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    weights = tmp_path / "small.weights.h5"
    keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35, input_shape=(32, 32, 3)).save_weights(weights)
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=1)
    code, _, err = run_cli("embed", "run", root, "-b", "MobileNetV2", "--alpha", "0.5", "--weights", weights,
                           "--image-size", "32", "--cache-dir", tmp_path / "cache", "-q")
    assert code == 2
    assert f"weights file {weights} does not fit MobileNetV2(include_top=False, alpha=0.5)" in err
    assert len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "cache").glob("*.h5"))


@pytest.mark.slow
def test_degenerate_backbone_is_refused_before_writing(tmp_path, run_cli):
    """Random MobileNetV2 features are ~1e-12: exactly zero in float16. Refuse them."""
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=2)
    code, _, err = run_cli("embed", "run", root, "-b", "MobileNetV2", "--weights", "none", "--alpha", "0.35",
                           "--image-size", "32", "--cache", tmp_path / "c.h5")
    assert code == 2 and "features are tiny" in err and "float16" in err
    assert not (tmp_path / "c.h5").exists()


@pytest.mark.slow
@pytest.mark.subprocess
def test_imagenet_download_failure_is_one_actionable_line(tmp_path):
    """No network (simulated by a dead proxy): suggest --weights FILE or none."""
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=1)
    env = {"PATH": "/usr/bin:/bin", "KERAS_HOME": str(tmp_path / "keras_home"), "HOME": str(tmp_path),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    proc = subprocess.run([sys.executable, "-c", "import sys; from headstart import cli; sys.exit(cli.main())", "embed", "run", str(root),
                           "-b", "MobileNetV2", "--alpha", "0.35", "--image-size", "96", "--cache-dir", str(tmp_path)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "could not download ImageNet weights for MobileNetV2" in proc.stderr
    assert "--weights FILE" in proc.stderr and "--weights none" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.subprocess
def test_help_does_not_import_tensorflow():
    code = (
        "import sys; from headstart import cli\n"
        "for args in (['--help'], ['embed', 'run', '--help'], ['embed', 'run', '--bogus'], ['embed', 'backbones']):\n"
        "    cli.main(args)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_info_reports_counts_failures_and_fingerprint(tmp_path, tiny_model_file, run_cli):
    root = tmp_path / "imgs"
    make_class_folders(root, per_class=2, split="train")
    make_class_folders(root, per_class=1, split="val", seed=3)
    (root / "train" / "cats" / "bad.jpg").write_text("nope")
    cache = tmp_path / "c.h5"
    _embed(run_cli, root, tiny_model_file, cache)
    code, out, _ = run_cli("embed", "info", cache, "--json")
    info = json.loads(out)
    assert code == 0
    assert info["counts"] == {"cats": {"train": 2, "val": 1}, "dogs": {"train": 2, "val": 1}}
    assert info["failures"] == 1 and info["rows"] == 6 and info["dim"] == 8
    assert info["fingerprint"]["architecture"] == "keras-model"
    code, out, _ = run_cli("embed", "info", cache)
    assert code == 0 and "keras-model" in out and "cats" in out and "not an image" in out
    code, _, err = run_cli("embed", "info", tmp_path / "nothing.h5")
    assert code == 2 and "cache not found" in err


def test_backbones_list_covers_the_required_families(run_cli):
    code, out, _ = run_cli("embed", "backbones", "--json")
    names = {row["name"] for row in json.loads(out)["backbones"]}
    required = {"MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "ResNet50", "ResNet101", "ResNet152",
                "ResNet50V2", "VGG16", "VGG19", "InceptionV3", "Xception", "DenseNet121", "ConvNeXtTiny",
                "EfficientNetV2S"} | {f"EfficientNetB{i}" for i in range(8)} | {f"EfficientNetV2B{i}" for i in range(4)}
    assert required <= names
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    assert all(hasattr(keras.applications, n) for n in names)
