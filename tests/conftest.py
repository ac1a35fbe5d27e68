"""Shared fixtures: tiny generated image sets, a tiny Keras model file, the real assets.

Tests stay fast by using 32-64 px images and a small backbone whose random features are
O(1) (a randomly initialised MobileNetV2 gives ~1e-12: useless, see DESIGN.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO_ROOT = Path(__file__).resolve().parents[1]

ASSETS = Path(os.environ.get("HEADSTART_ASSETS", REPO_ROOT.parent / "shared" / "assets"))
HYMENOPTERA = ASSETS / "data" / "hymenoptera"
WEIGHTS_035 = ASSETS / "weights" / "mobilenet_v2_0.35_224_imagenet_notop.weights.h5"
WEIGHTS_100 = ASSETS / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"

needs_assets = pytest.mark.skipif(
    not (HYMENOPTERA.is_dir() and WEIGHTS_035.is_file()),
    reason="real assets not found at ../shared/assets (set HEADSTART_ASSETS to point elsewhere)",
)

def pytest_collection_modifyitems(items):
    """Tests that skip without the real assets are marked ``assets`` (pytest -m assets)."""
    for item in items:
        if any(mark.name == "skipif" and "real assets" in str(mark.kwargs.get("reason", ""))
               for mark in item.iter_markers()):
            item.add_marker(pytest.mark.assets)


CLASS_COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]


def photo_like(rng: np.random.Generator, size: tuple[int, int], colour=(128, 128, 128)) -> np.ndarray:
    """A smooth, photo-like uint8 RGB image: a gradient plus blurred noise around ``colour``."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    gradient = (xx / max(w - 1, 1))[..., None] * rng.uniform(-60, 60, 3) + (yy / max(h - 1, 1))[..., None] * rng.uniform(-60, 60, 3)
    noise = rng.normal(0, 40, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
    image = np.asarray(colour, dtype=np.float64) + gradient + noise
    return np.clip(image, 0, 255).astype(np.uint8)


def save_image(path: Path, array: np.ndarray, fmt: str | None = None, mode: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


def make_class_folders(root: Path, classes=("cats", "dogs"), per_class=6, size=(40, 48), seed=0,
                       ext=".jpg", split: str | None = None) -> list[Path]:
    """``root/[split/]<class>/<class>_<i>.<ext>`` with class-coloured, distinct images."""
    rng = np.random.default_rng(seed)
    written = []
    for c, name in enumerate(classes):
        for i in range(per_class):
            folder = root / split / name if split else root / name
            written.append(save_image(folder / f"{name}_{seed}_{i}{ext}",
                                      photo_like(rng, size, CLASS_COLOURS[c % len(CLASS_COLOURS)])))
    return written


@pytest.fixture(scope="session", autouse=True)
def headstart_home(tmp_path_factory):
    """Converted backbones go to a store of this test session, never to ~/.cache (shared by
    the session's tests, as a user's runs share theirs)."""
    home = tmp_path_factory.mktemp("headstart-home")
    previous = os.environ.get("HEADSTART_HOME")
    os.environ["HEADSTART_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("HEADSTART_HOME", None)
    else:
        os.environ["HEADSTART_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_model_file(tmp_path_factory) -> Path:
    """A small conv net saved as .keras: a user's own backbone with O(1) random features.

    It takes RGB pixels in [0, 255] and rescales them itself, as a user model must.
    """
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(7)
    inputs = keras.Input((48, 48, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(32, 3, strides=2, activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(8, name="logits")(x)
    model = keras.Model(inputs, outputs, name="tiny_user_model")
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    model.save(path)
    return path


@pytest.fixture
def run_cli(capsys):
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    from headstart import cli

    def run(*args: str):
        code = cli.main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run
