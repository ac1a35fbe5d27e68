"""One GPU fast (mixed precision, XLA) and many devices (MirroredStrategy), checked on this
CPU: mixed precision changes the fingerprint, not the answers; XLA and a 2-device run give
the same cache as the plain 1-device run."""

from __future__ import annotations

import pytest

import json
import subprocess
import sys
import textwrap

import numpy as np

from conftest import REPO_ROOT, make_class_folders
from headstart.embedder.cache import open_cache

VGG = ["-b", "VGG16", "--weights", "none", "--image-size", "32"]


def _features(path):
    cache = open_cache(path)
    return dict(zip(map(str, cache.paths), cache.file_features()))


def _relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_mixed_precision_is_its_own_fingerprint_with_close_features(tmp_path, run_cli):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=3)
    code, out32, err = run_cli("embed", "run", images, *VGG, "--precision", "float32", "--dtype", "float32",
                               "--cache-dir", tmp_path / "cache", "--json", "-q")
    assert code == 0, err
    code, out16, err = run_cli("embed", "run", images, *VGG, "--precision", "mixed", "--dtype", "float32",
                               "--cache-dir", tmp_path / "cache", "--json", "-q")
    assert code == 0, err
    r32, r16 = json.loads(out32), json.loads(out16)
    assert r32["fingerprint"]["compute_dtype"] == "float32" and r16["fingerprint"]["compute_dtype"] == "mixed_float16"
    assert r16["cache_path"] != r32["cache_path"] and r16["runtime"] == "tf"  # LiteRT runs float32 only
    f32, f16 = _features(r32["cache_path"]), _features(r16["cache_path"])
    assert max(_relative(f16[p], f32[p]) for p in f32) < 2e-2  # float16 arithmetic, same network
    code, _, err = run_cli("embed", "run", images, *VGG, "--precision", "mixed", "--runtime", "litert",
                           "--cache", tmp_path / "x.h5", "-q")
    assert code == 2 and "--runtime litert cannot run mixed precision" in err
    code, _, err = run_cli("embed", "run", images, *VGG, "--precision", "half", "--cache", tmp_path / "y.h5", "-q")
    assert code == 2 and "--precision must be one of" in err


def test_xla_gives_the_same_features(tmp_path, run_cli):
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=3)
    for name, flags in (("plain", ["--runtime", "tf", "--no-jit"]), ("xla", ["--jit"])):
        code, out, err = run_cli("embed", "run", images, *VGG, *flags, "--dtype", "float32",
                                 "--cache", tmp_path / f"{name}.h5", "--json", "-q")
        assert code == 0, err
        assert json.loads(out)["jit"] is (name == "xla") and json.loads(out)["runtime"] == "tf"
    plain, xla = _features(tmp_path / "plain.h5"), _features(tmp_path / "xla.h5")
    assert max(_relative(xla[p], plain[p]) for p in plain) < 1e-4
    assert bool(open_cache(tmp_path / "xla.h5").attrs["jit"]) is True


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_logical_devices_give_the_same_cache(tmp_path, tiny_model_file):
    """Split this CPU into 2 logical devices: embed, predict and finetune run mirrored, and
    the 2-device cache equals the 1-device one (keys, labels, features within tolerance)."""
    images = tmp_path / "imgs"
    make_class_folders(images, per_class=7, size=(48, 48))  # 14 images: the last global batch is ragged
    script = textwrap.dedent(f"""
        import json, sys
        from headstart.embedder.tf_runtime import import_tf
        tf = import_tf()
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from headstart import cli
        common = ["-b", {str(tiny_model_file)!r}, "--dtype", "float32", "--batch-size", "3", "--json", "-q"]
        one = cli.main(["embed", "run", {str(images)!r}, "--cache", {str(tmp_path / 'one.h5')!r}, "--runtime", "tf",
                        *common])
        two = cli.main(["embed", "run", {str(images)!r}, "--cache", {str(tmp_path / 'two.h5')!r}, "--devices", "all",
                        *common])
        bad = cli.main(["embed", "run", {str(images)!r}, "--cache", {str(tmp_path / 'bad.h5')!r}, "--devices", "5",
                        "-q"])
        train = cli.main(["head", "train", "--cache", {str(tmp_path / 'two.h5')!r}, "--epochs", "5", "--hidden", "8",
                          "--out", {str(tmp_path / 'run')!r}, "-q"])
        ft = cli.main(["finetune", "--from", {str(tmp_path / 'run')!r}, "--out", {str(tmp_path / 'ft')!r},
                       "--epochs", "1", "--unfreeze", "1", "--devices", "all", "--batch-size", "1", "-q"])
        pred = cli.main(["predict", {str(images)!r}, "--run", {str(tmp_path / 'ft')!r}, "--devices", "0,1",
                         "--format", "json", "--out", {str(tmp_path / 'pred.json')!r}, "-q"])
        single = cli.main(["predict", {str(next(images.glob('*/*.jpg')))!r}, "--run", {str(tmp_path / 'run')!r},
                           "--devices", "all", "--no-cache", "-q"])  # 1 image over 2 devices: padded
        print("CODES", json.dumps([one, two, bad, train, ft, pred, single]))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("CODES")]
    assert lines, proc.stderr[-3000:]
    assert json.loads(lines[0][6:]) == [0, 0, 2, 0, 0, 0, 0], proc.stderr[-3000:]
    reports = [json.loads(chunk) for chunk in _json_objects(proc.stdout)]
    assert [r["devices"] for r in reports[:2]] == [1, 2]
    one, two = open_cache(tmp_path / "one.h5"), open_cache(tmp_path / "two.h5")
    assert list(one.keys) == list(two.keys) and list(one.paths) == list(two.paths)
    assert list(one.labels) == list(two.labels)
    np.testing.assert_allclose(two.file_features(), one.file_features(), rtol=1e-5, atol=1e-6)
    assert "--devices: no CPU 5" in proc.stderr
    assert len(json.loads((tmp_path / "pred.json").read_text())) == 14


def _json_objects(text: str):
    """The pretty-printed JSON reports in ``text``, in order."""
    depth, start = 0, None
    for i, ch in enumerate(text):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0 and start is not None:
                yield text[start:i + 1]
