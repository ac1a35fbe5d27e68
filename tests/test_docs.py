"""The documentation cannot drift: docs/cli.md is the command line's own help, the README's
code runs as written, and nothing points outside the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

import numpy as np

from conftest import HYMENOPTERA, REPO_ROOT, WEIGHTS_100, make_class_folders, needs_assets, photo_like, save_image

README = REPO_ROOT / "README.md"


def _code_blocks(markdown: str, after_heading: str, language: str = "python") -> list[str]:
    """The ```language blocks of the section under the heading ``after_heading``."""
    section = markdown.split(after_heading, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    assert blocks, f"no {language} block after {after_heading!r}"
    return blocks


def _code_block(markdown: str, after_heading: str, language: str = "python") -> str:
    return _code_blocks(markdown, after_heading, language)[0]


def test_cli_reference_is_generated_from_the_command_line():
    from headstart.cli import cli_reference

    expected = cli_reference()
    written = (REPO_ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert written == expected, ("docs/cli.md is stale: regenerate it with python -c \"from headstart.cli import "
                                 "cli_reference; print(cli_reference(), end='')\" > docs/cli.md")
    for command in ("embed run", "head train", "finetune", "predict", "export", "inspect duplicates", "report"):
        assert f"## `headstart {command}`" in written


def test_nothing_in_the_readme_or_docs_points_outside_the_repository():
    pages = [README, REPO_ROOT / "tests" / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text(encoding="utf-8")
        if page.parent.name == "tests":  # tests/README.md says where the optional assets are looked for
            continue
        assert "../shared" not in text and "/work/" not in text, page
        for target in re.findall(r"\]\(([^)#]+)\)", text):  # markdown links resolve inside the repository
            if "://" in target:
                continue
            resolved = (page.parent / target).resolve()
            assert resolved.exists() and REPO_ROOT in resolved.parents, (page, target)


def test_the_readme_test_command_is_what_ci_runs():
    command = _code_block(README.read_text(encoding="utf-8"), "## Tests", "").strip()
    assert command in (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_readme_fits_on_a_few_screens():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250


def _as_keras_download(weights_file, target) -> None:
    """The asset's weights in the legacy HDF5 layout keras.applications downloads (and, finding
    the file in KERAS_HOME, loads without a network)."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    from headstart.embedder.tf_runtime import import_keras

    model = import_keras().applications.MobileNetV2(include_top=False, weights=str(weights_file),
                                                    input_shape=(224, 224, 3))
    with h5py.File(target, "w") as h5:
        legacy_h5_format.save_weights_to_hdf5_group(h5, model)


@pytest.mark.slow
@pytest.mark.subprocess
@needs_assets
def test_the_readme_python_api_runs_as_written(tmp_path):
    """Exactly the README's lines, on hymenoptera photos, with the real MobileNetV2 weights
    placed where Keras keeps downloaded ImageNet weights (no network here)."""
    photos = tmp_path / "photos"
    for name in ("ants", "bees"):
        for source in sorted((HYMENOPTERA / "train" / name).glob("*.jpg"))[:12]:
            (photos / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(source, photos / name / source.name)
    for needed in ("ants/0013035.jpg", "bees/1092977343_cb42b38d62.jpg"):
        shutil.copy(HYMENOPTERA / "train" / needed, photos / needed)
    keras_home = tmp_path / "keras"
    (keras_home / "models").mkdir(parents=True)
    _as_keras_download(WEIGHTS_100, keras_home / "models" / "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5")
    code = _code_block(README.read_text(encoding="utf-8"), "## Python API")
    env = dict(os.environ, KERAS_HOME=str(keras_home), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("<cache ") and "2 classes" in lines[0]
    assert 0.5 < float(lines[1]) <= 1.0  # validation accuracy
    assert lines[2] in ("ants", "bees")
    assert "'label': " in lines[3]
    assert (tmp_path / "runs" / "photos-logreg" / "head.json").is_file()


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_readme_export_snippet_runs_as_written(tmp_path, tiny_model_file):
    """The README's lines for using an exported .keras model, on a full-size image."""
    from headstart import cli

    images = tmp_path / "imgs"
    make_class_folders(images, per_class=6, size=(48, 48))
    assert cli.main(["embed", "run", str(images), "-b", str(tiny_model_file), "--cache", str(tmp_path / "c.h5"),
                     "-q"]) == 0
    assert cli.main(["head", "train", "--cache", str(tmp_path / "c.h5"), "--epochs", "3", "--hidden", "8",
                     "--out", str(tmp_path / "run"), "-q"]) == 0
    for fmt in ("keras", "savedmodel", "tflite"):
        assert cli.main(["export", str(tmp_path / "run"), "--format", fmt, "--out", str(tmp_path / "model")]) == 0
    big = tmp_path / "owl.jpg"  # a full-size photo: the caller does not resize
    save_image(big, photo_like(np.random.default_rng(1), (300, 400), (200, 40, 40)))
    blocks = _code_blocks(README.read_text(encoding="utf-8"), "## Using an exported model")
    assert len(blocks) == 3  # keras, savedmodel, tflite: the later ones reuse the first's names
    proc = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    answers = proc.stdout.strip().splitlines()
    assert len(answers) == 3 and len(set(answers)) == 1 and answers[0] in ("cats", "dogs"), answers
