"""The jax and torch runtimes (Keras 3 on JAX or PyTorch, in a worker process), a job with no
TensorFlow at all, and the nvjpeg pixel rule's separate fingerprint.

Jobs on these runtimes run as subprocesses: this test session has TensorFlow's Keras loaded,
and the point is what a fresh process imports. A ``sitecustomize`` on ``PYTHONPATH`` records,
in every process (the CLI and its worker), which TensorFlow modules were loaded at exit, and
can make TensorFlow unimportable altogether.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import HYMENOPTERA, REPO_ROOT, WEIGHTS_035, make_class_folders, needs_assets, photo_like, save_image

from headstart.embedder.backbones import BackboneConfig, resolve
from headstart.embedder.decode import CURRENT, NVJPEG, PIXEL_FIELDS, only_pixels_differ, recipe_for
from headstart.embedder.fingerprint import fingerprint_id
from headstart.embedder.runtimes.keras_backend import backend_installed

needs_jax = pytest.mark.skipif(not backend_installed("jax"), reason="JAX (and Keras 3) not installed")
needs_torch = pytest.mark.skipif(not backend_installed("torch"), reason="PyTorch (and Keras 3) not installed")
BACKENDS = [pytest.param("jax", marks=needs_jax), pytest.param("torch", marks=needs_torch)]

SITECUSTOMIZE = '''
import atexit, os, sys

_out = os.environ["HEADSTART_TEST_TF_LOG"]
if os.environ.get("HEADSTART_TEST_TF") == "block":  # as if TensorFlow were not installed
    import importlib.machinery

    class _PathFinderWithoutTensorFlow:
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

        @classmethod
        def invalidate_caches(cls):
            importlib.machinery.PathFinder.invalidate_caches()

    sys.meta_path[:] = [_PathFinderWithoutTensorFlow if finder is importlib.machinery.PathFinder else finder
                        for finder in sys.meta_path]


@atexit.register
def _record():
    loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    role = ("worker" if any("runtimes/worker" in a or "runtimes.worker" in a for a in sys.argv[:2])
            else "cli" if "embed" in sys.argv else "other")  # other: e.g. multiprocessing's resource tracker
    with open(os.path.join(_out, f"{role}-{os.getpid()}.json"), "w") as fh:
        json.dump({"argv": sys.argv[:3], "tensorflow": loaded, "keras_backend": _backend()}, fh)


def _backend():
    keras = sys.modules.get("keras")
    try:
        return keras.config.backend() if keras is not None else None
    except Exception:
        return "?"


import json  # noqa: E402
'''


def _cli(args, tmp_path: Path, tf: str = "watch", timeout: int = 300) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Run the CLI in a fresh process; return it and one record per process that ran."""
    site = tmp_path / "site"
    log = tmp_path / f"tf-log-{len(list(tmp_path.glob('tf-log-*')))}"
    site.mkdir(exist_ok=True)
    log.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               HEADSTART_TEST_TF=tf, HEADSTART_TEST_TF_LOG=str(log))
    env.pop("KERAS_BACKEND", None)
    proc = subprocess.run([sys.executable, "-c", "import sys; from headstart import cli; sys.exit(cli.main())",
                           *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    records = [json.loads(p.read_text()) | {"role": p.name.split("-")[0]} for p in sorted(log.glob("*.json"))]
    return proc, records


def _features_by_key(cache: Path) -> dict[str, np.ndarray]:
    with h5py.File(cache, "r") as h5:
        keys = [k.decode() if isinstance(k, bytes) else str(k) for k in h5["embeddings/keys"][:]]
        return dict(zip(keys, h5["embeddings/features"][:].astype(np.float64)))


# --------------------------------------------------------------------------- no TensorFlow


@pytest.mark.parametrize("backend", BACKENDS)
def test_job_on_keras_backend_imports_no_tensorflow(backend, tmp_path, tiny_model_file):
    """The whole job (discovery, hashing, decoding, the worker's network, the cache writer, the
    report) on jax/torch: neither the CLI process nor its worker loads TensorFlow, though it is
    installed; the report and the cache say which backend and device ran it."""
    make_class_folders(tmp_path / "images", per_class=5, size=(40, 52))
    cache = tmp_path / "c.h5"
    proc, records = _cli(["embed", "run", tmp_path / "images", "--backbone", tiny_model_file, "--runtime", backend,
                          "--cache", cache, "--batch-size", "4", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["embedded"] == 10 and report["runtime"] == backend
    assert report["runtime_device"].startswith(f"{backend} ") and "cpu" in report["runtime_device"]
    assert sorted(r["role"] for r in records if r["role"] != "other") == ["cli", "worker"], records
    assert all(r["tensorflow"] == [] for r in records), records
    assert [r["keras_backend"] for r in records if r["role"] == "worker"] == [backend]
    with h5py.File(cache, "r") as h5:
        assert h5.attrs["runtime"] == backend and h5.attrs["runtime_device"] == report["runtime_device"]


@needs_torch
def test_auto_without_tensorflow_installed_picks_a_keras_backend(tmp_path, tiny_model_file):
    """TensorFlow unimportable (a GPU box with only JAX/PyTorch): `--runtime auto` runs the job on
    Keras 3 (torch first on a CPU), and a rerun finds everything cached. What needs TensorFlow
    (here `--runtime tf`) says so in one line, never a traceback."""
    make_class_folders(tmp_path / "images", per_class=3, size=(40, 52))
    cache = tmp_path / "c.h5"
    args = ["embed", "run", tmp_path / "images", "--backbone", tiny_model_file, "--cache", cache, "--json"]
    proc, records = _cli(args, tmp_path, tf="block")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    assert report["embedded"] == 6 and report["runtime"] == "torch"
    assert all(r["tensorflow"] == [] for r in records)
    assert sorted(r["role"] for r in records if r["role"] != "other") == ["cli", "worker"], records

    again, _ = _cli(args, tmp_path, tf="block")
    assert again.returncode == 0 and json.loads(again.stdout)["embedded"] == 0

    asked, _ = _cli(["embed", "run", tmp_path / "images", "--backbone", tiny_model_file, "--cache",
                     tmp_path / "tf.h5", "--runtime", "tf", "-q"], tmp_path, tf="block")
    assert asked.returncode == 2 and "Traceback" not in asked.stderr
    assert "this needs TensorFlow, which is not installed here" in asked.stderr


def test_pillow_pixels_are_the_same_without_tensorflow(tmp_path):
    """Decoding never needed TensorFlow: a process where it cannot be imported makes the very
    same pixels (and pixel fields of the fingerprint) as this one, so its rows may share a cache."""
    rng = np.random.default_rng(3)
    from PIL import Image

    files = [save_image(tmp_path / "a.jpg", photo_like(rng, (300, 410))),
             save_image(tmp_path / "b.png", photo_like(rng, (64, 90))),
             save_image(tmp_path / "c.jpg", photo_like(rng, (97, 61)), mode="L")]
    rotated = Image.fromarray(photo_like(rng, (120, 200)))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored sideways: must come out upright
    rotated.save(tmp_path / "d.jpg", exif=exif)
    files.append(tmp_path / "d.jpg")
    code = textwrap.dedent(f"""
        import json, sys
        import numpy as np
        from headstart.embedder.backbones import BackboneConfig, resolve
        from headstart.embedder.decode import CURRENT
        files = {[str(f) for f in files]!r}
        np.save("pixels.npy", np.stack([CURRENT.load(open(f, "rb").read(), 64) for f in files]))
        json.dump(resolve(BackboneConfig(weights="none")).fingerprint, open("fp.json", "w"))
        assert not any(m.startswith("tensorflow") for m in sys.modules)
    """)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    (tmp_path / "log").mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), HEADSTART_TEST_TF="block", HEADSTART_TEST_TF_LOG=str(tmp_path / "log"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = np.load(tmp_path / "pixels.npy")
    ours = np.stack([CURRENT.load(f.read_bytes(), 64) for f in files])
    assert theirs.dtype == np.float32 and np.array_equal(theirs, ours)
    assert theirs[3].shape == (64, 64, 3)
    fingerprint = json.loads((tmp_path / "fp.json").read_text())
    here = resolve(BackboneConfig(weights="none")).fingerprint
    assert {k: fingerprint[k] for k in PIXEL_FIELDS} == {k: here[k] for k in PIXEL_FIELDS}


# --------------------------------------------------------------------------- parity, and part 4


@needs_assets
@pytest.mark.parametrize("backend", BACKENDS)
def test_features_match_tensorflow_on_real_weights(backend, tmp_path, run_cli):
    """Real photos, real MobileNetV2 weights: the same fingerprint, and features equal to
    TensorFlow's within the parity tolerance the runtimes are held to (1e-4, relative)."""
    images = tmp_path / "images"
    for name in ("ants", "bees"):
        (images / name).mkdir(parents=True)
        for photo in sorted((HYMENOPTERA / "val" / name).glob("*.jpg"))[:4]:
            (images / name / photo.name).write_bytes(photo.read_bytes())
    common = ["--weights", WEIGHTS_035, "--alpha", "0.35", "--image-size", "96", "--dtype", "float32", "--json"]
    proc, records = _cli(["embed", "run", images, "--runtime", backend, "--cache", tmp_path / "k.h5", *common],
                         tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(r["tensorflow"] == [] for r in records)
    code, out, err = run_cli("embed", "run", images, "--runtime", "tf", "--cache", tmp_path / "tf.h5", *common)
    assert code == 0, err
    assert json.loads(proc.stdout)["fingerprint"] == json.loads(out)["fingerprint"]
    ours, reference = _features_by_key(tmp_path / "k.h5"), _features_by_key(tmp_path / "tf.h5")
    assert sorted(ours) == sorted(reference) and len(ours) == 8
    got = np.stack([ours[k] for k in sorted(ours)])
    want = np.stack([reference[k] for k in sorted(ours)])
    assert np.abs(want).mean() > 0.05  # real features, not ~0
    assert np.abs(got - want).max() / np.abs(want).max() < 1e-4


@needs_assets
@needs_jax
def test_mixed_precision_on_jax_computes_in_float16(tmp_path):
    """`--precision mixed` on jax: the fingerprint says mixed_float16 and the worker really
    computes in float16 (features off float32's by ~1e-2, not by float32 noise), yet returns
    float32 features a cache stores."""
    images = tmp_path / "images" / "ants"
    images.mkdir(parents=True)
    for photo in sorted((HYMENOPTERA / "val" / "ants").glob("*.jpg"))[:4]:
        (images / photo.name).write_bytes(photo.read_bytes())
    common = ["--runtime", "jax", "--weights", WEIGHTS_035, "--alpha", "0.35", "--image-size", "64",
              "--batch-size", "4", "--dtype", "float32", "--json"]
    runs = {}
    for precision in ("float32", "mixed"):
        proc, _ = _cli(["embed", "run", tmp_path / "images", "--precision", precision,
                        "--cache", tmp_path / f"{precision}.h5", *common], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[precision] = json.loads(proc.stdout)["fingerprint"]["compute_dtype"]
    assert runs == {"float32": "float32", "mixed": "mixed_float16"}
    mixed, full = _features_by_key(tmp_path / "mixed.h5"), _features_by_key(tmp_path / "float32.h5")
    got, want = np.stack([mixed[k] for k in sorted(full)]), np.stack([full[k] for k in sorted(full)])
    difference = np.abs(got - want).max() / np.abs(want).max()
    assert 1e-4 < difference < 0.2


@needs_jax
def test_cache_embedded_by_jax_trains_and_predicts_with_default_runtimes(tmp_path, tiny_model_file, run_cli):
    """Part 4: a cache from the jax runtime is an ordinary cache. `head train` and `predict`
    use it with their defaults (TensorFlow head, LiteRT/TensorFlow backbone) with no extra step,
    and pushing the images through the default backbone again gives the same predictions."""
    make_class_folders(tmp_path / "images", per_class=8, size=(48, 48))
    cache = tmp_path / "jax.h5"
    proc, _ = _cli(["embed", "run", tmp_path / "images", "--backbone", tiny_model_file, "--runtime", "jax",
                    "--cache", cache, "--dtype", "float32", "--json"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    code, out, err = run_cli("head", "train", "--cache", cache, "--out", tmp_path / "run", "--epochs", "30", "-q")
    assert code == 0, err
    code, cached_csv, err = run_cli("predict", tmp_path / "images", "--run", tmp_path / "run", "--cache", cache)
    assert code == 0, err
    assert "16 from the cache, 0 through the backbone" in err
    code, fresh_csv, err = run_cli("predict", tmp_path / "images", "--run", tmp_path / "run", "--no-cache")
    assert code == 0, err
    assert "0 from the cache, 16 through the backbone" in err

    def rows(text):
        lines = text.strip().splitlines()[1:]
        return {line.split(",")[0]: (line.split(",")[1], float(line.split(",")[2])) for line in lines}

    cached, fresh = rows(cached_csv), rows(fresh_csv)
    assert cached.keys() == fresh.keys() and len(cached) == 16
    for path, (label, probability) in cached.items():
        assert fresh[path][0] == label and abs(fresh[path][1] - probability) < 1e-3
    correct = sum(label in path for path, (label, _) in cached.items())
    assert correct >= 14  # the head learned the classes from the jax rows


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("args, expected", [
    (["--weights", "none", "--runtime", "jax"], "cannot use --weights none"),
    (["--runtime", "torch", "--devices", "0,1"], "runs on one device"),
    (["--runtime", "torch", "--jit"], "--jit needs --runtime tf or jax"),
    (["--runtime", "jax", "--no-jit"], "always compiles with XLA"),
])
def test_what_would_change_the_numbers_is_refused(args, expected, tmp_path, run_cli):
    """One line and exit 2, before any worker starts: random weights would differ between
    backends under one fingerprint; several devices and XLA switches are TensorFlow's."""
    make_class_folders(tmp_path / "images", per_class=2)
    code, out, err = run_cli("embed", "run", tmp_path / "images", "--cache", tmp_path / "c.h5", "-q", *args)
    assert code == 2
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_network_only_this_process_can_build_is_refused():
    from headstart.embedder.runtimes import RUNTIMES, RuntimeOptions
    from headstart.embedder.runtimes.base import Network

    network = Network(key="model-x", build=lambda: None, describe={"weights": "sha256:abc"})
    for name in ("jax", "torch"):
        assert "fine-tuned" in RUNTIMES[name].refuses(network, RuntimeOptions(), [])


@needs_torch
def test_a_worker_that_dies_is_one_line_not_a_hang(tmp_path):
    from headstart.embedder.errors import BackboneError
    from headstart.embedder.runtimes.keras_backend import Worker

    worker = Worker("torch", lambda m: None)
    worker.process.kill()
    with pytest.raises(BackboneError, match=r"the torch worker process was killed \(signal 9\)"):
        worker.request({"op": "warm", "rows": 1})
    worker.close()


# --------------------------------------------------------------------------- nvjpeg


def test_nvjpeg_pixels_have_their_own_fingerprint():
    """nvjpeg's pixels are not libjpeg's: its rule differs from Pillow's in the pixel fields
    only (the network is the same), so its rows can never join a Pillow cache unnoticed."""
    pillow = resolve(BackboneConfig(weights="none")).fingerprint
    nvjpeg = resolve(BackboneConfig(weights="none", pixels="nvjpeg")).fingerprint
    assert fingerprint_id(pillow) != fingerprint_id(nvjpeg)
    assert only_pixels_differ(pillow, nvjpeg)
    assert nvjpeg["decode"] == "nvjpeg" and pillow["decode"] == "pillow"
    assert recipe_for(nvjpeg) is NVJPEG and recipe_for(pillow) is CURRENT


def test_decode_nvjpeg_without_cuda_is_a_clear_error(tmp_path, run_cli):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here")
    make_class_folders(tmp_path / "images", per_class=2)
    code, out, err = run_cli("embed", "run", tmp_path / "images", "--weights", "none", "--backbone", "ResNet50",
                             "--image-size", "32", "--cache", tmp_path / "c.h5", "--decode", "nvjpeg", "-q")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--decode nvjpeg" in err and "--decode pillow" in err and "torch.cuda.is_available() is False" in err


def test_a_pillow_cache_refuses_nvjpeg_rows(tmp_path, run_cli, tiny_model_file):
    make_class_folders(tmp_path / "images", per_class=2, size=(48, 48))
    cache = tmp_path / "c.h5"
    code, _, err = run_cli("embed", "run", tmp_path / "images", "--backbone", tiny_model_file, "--cache", cache, "-q")
    assert code == 0, err
    code, _, err = run_cli("embed", "run", tmp_path / "images", "--backbone", tiny_model_file, "--cache", cache,
                           "--decode", "nvjpeg", "-q")
    assert code == 2 and "fingerprint mismatch" in err and "decode: " in err and "nvjpeg" in err


def test_bad_decode_choice_is_a_usage_error(tmp_path, run_cli):
    make_class_folders(tmp_path / "images", per_class=1)
    code, _, err = run_cli("embed", "run", tmp_path / "images", "--decode", "libjpeg", "-q")
    assert code == 2 and "--decode must be one of pillow, nvjpeg" in err


@pytest.mark.parametrize("orientation", range(1, 9))
def test_nvjpeg_orientation_matches_pillow(orientation):
    """EXIF orientation applied to decoded tensors as Pillow's exif_transpose does (nvjpeg
    itself ignores EXIF)."""
    torch = pytest.importorskip("torch")
    from PIL import Image, ImageOps

    from headstart.embedder import nvjpeg

    image = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    stored = Image.fromarray(image)
    stored.getexif()[0x0112] = orientation  # what exif_transpose reads
    want = np.asarray(ImageOps.exif_transpose(stored))
    got = nvjpeg.orient(torch.from_numpy(image).permute(2, 0, 1), orientation).permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)


def test_nvjpeg_resize_is_antialiased_and_whole_levels():
    """PyTorch's antialiased bilinear resize, rounded to whole levels as Pillow's uint8 output
    is: close to Pillow's, but not the same pixels (hence its own fingerprint field)."""
    torch = pytest.importorskip("torch")
    from headstart.embedder import nvjpeg

    image = photo_like(np.random.default_rng(0), (375, 500))
    got = nvjpeg.resize(torch.from_numpy(image).permute(2, 0, 1), 64)
    want = CURRENT.resize(image, 64)
    assert got.shape == (64, 64, 3) and got.dtype == np.float32
    assert np.array_equal(got, np.round(got))
    assert np.abs(got - want).mean() < 1.0
