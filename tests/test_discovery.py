"""Discovery: which files are images, and what label and split the layout gives them."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import make_class_folders, photo_like, save_image
from headstart.embedder.discovery import discover
from headstart.embedder.errors import UsageError


def _by_path(listing):
    return {f.path: (f.label, f.split) for f in listing.files}


def test_class_folders_with_nested_and_loose_files(tmp_path):
    make_class_folders(tmp_path, classes=("b_cls", "a_cls"), per_class=2)
    rng = np.random.default_rng(1)
    save_image(tmp_path / "a_cls" / "deeper" / "x.PNG", photo_like(rng, (32, 32)))
    save_image(tmp_path / "loose.jpeg", photo_like(rng, (32, 32)))
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    save_image(tmp_path / ".hidden" / "h.jpg", photo_like(rng, (32, 32)))
    save_image(tmp_path / "a_cls" / ".dotfile.jpg", photo_like(rng, (32, 32)))

    listing = discover(tmp_path)
    files = _by_path(listing)
    assert listing.layout == "class-folders"
    assert listing.classes == ["a_cls", "b_cls"]  # sorted
    assert files["a_cls/deeper/x.PNG"] == ("a_cls", "")  # nested, upper-case extension
    assert files["loose.jpeg"] == (None, "")  # loose file in the root: unlabeled
    assert len(files) == 6
    assert not any(".hidden" in p or ".dotfile" in p for p in files)
    assert listing.ignored == {".txt": 1}


def test_split_folders_including_validation_alias(tmp_path):
    make_class_folders(tmp_path, per_class=2, split="train")
    make_class_folders(tmp_path, per_class=1, split="validation", seed=1)
    make_class_folders(tmp_path, per_class=1, split="test", seed=2)
    listing = discover(tmp_path)
    assert listing.layout == "split-folders"
    splits = [f.split for f in listing.files]
    assert splits.count("train") == 4 and splits.count("val") == 2 and splits.count("test") == 2
    assert listing.classes == ["cats", "dogs"]
    assert all(f.label in ("cats", "dogs") for f in listing.files)


def test_a_folder_named_train_among_classes_is_just_a_class(tmp_path):
    make_class_folders(tmp_path, classes=("train", "zebra"), per_class=1)
    listing = discover(tmp_path)
    assert listing.layout == "class-folders"
    assert listing.classes == ["train", "zebra"]


def test_unlabeled_folder(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        save_image(tmp_path / f"img{i}.bmp", photo_like(rng, (32, 32)))
    listing = discover(tmp_path)
    assert listing.layout == "unlabeled" and listing.classes == []
    assert all(f.label is None for f in listing.files)


def test_missing_empty_and_imageless_folders_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images found"):
        discover(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("x")
    (tmp_path / "docs" / "b.csv").write_text("x")
    with pytest.raises(UsageError, match=r"ignored 2 other files"):
        discover(tmp_path / "docs")
    (tmp_path / "file.jpg").write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        discover(tmp_path / "file.jpg")


def test_manifest_with_header_splits_and_missing_files(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.jpg", "sub/c.png"):
        save_image(tmp_path / "imgs" / name, photo_like(rng, (32, 32)))
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label,split\na.jpg,cat,train\nb.jpg,dog,VAL\nsub/c.png,,\ngone.jpg,cat,train\n")
    listing = discover(tmp_path / "imgs", manifest)
    assert listing.layout == "manifest"
    assert _by_path(listing) == {"a.jpg": ("cat", "train"), "b.jpg": ("dog", "val"), "sub/c.png": (None, "")}
    assert listing.missing == [("gone.jpg", "listed in the manifest but not found")]
    assert listing.classes == ["cat", "dog"]


def test_manifest_without_header(tmp_path):
    save_image(tmp_path / "a.jpg", photo_like(np.random.default_rng(0), (32, 32)))
    manifest = tmp_path / "m.csv"
    manifest.write_text("a.jpg,cat\n")
    assert _by_path(discover(tmp_path, manifest)) == {"a.jpg": ("cat", "")}


@pytest.mark.parametrize(
    "content, message",
    [
        ("path,label\na.jpg\n", r"m.csv:2: expected 'path,label\[,split\]', got 1 fields"),
        ("path,label,split\na.jpg,cat,holdout\n", r"m.csv:2: unknown split 'holdout'"),
        ("path,lbl\na.jpg,cat\n", r"m.csv:1: header must be"),
        ("a.jpg,cat\na.jpg,dog\n", r"m.csv:2: a.jpg is listed twice"),
        ("../outside.jpg,cat\n", r"m.csv:1: ../outside.jpg is outside the images root"),
    ],
)
def test_bad_manifest_rows_name_the_line(tmp_path, content, message):
    (tmp_path / "imgs").mkdir()
    save_image(tmp_path / "imgs" / "a.jpg", photo_like(np.random.default_rng(0), (32, 32)))
    manifest = tmp_path / "m.csv"
    manifest.write_text(content)
    with pytest.raises(UsageError, match=message):
        discover(tmp_path / "imgs", manifest)


def test_missing_manifest(tmp_path):
    save_image(tmp_path / "a.jpg", photo_like(np.random.default_rng(0), (32, 32)))
    with pytest.raises(UsageError, match="manifest not found"):
        discover(tmp_path, tmp_path / "nope.csv")
