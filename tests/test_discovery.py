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


# ------------------------------------------------------------------------ links and split names


def test_a_symlink_loop_at_the_root_is_not_a_phantom_class(tmp_path):
    """Issue 12 A6: root/zz -> root listed every image again under class 'zz', exit 0."""
    root = tmp_path / "images"
    make_class_folders(root, per_class=2)
    (root / "zz").symlink_to(root)
    (root / "cats" / "self").symlink_to(root / "cats")  # a loop inside a class, too
    listing = discover(root)
    assert listing.classes == ["cats", "dogs"] and listing.layout == "class-folders"
    assert sorted(_by_path(listing)) == sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg")
                                               if not p.parent.is_symlink())
    assert len(listing.files) == 4
    assert len(listing.warnings) == 1
    assert "zz" in listing.warnings[0] and "cats/self" in listing.warnings[0] and "loop" in listing.warnings[0]


def test_links_are_followed_but_no_folder_is_listed_twice(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "outside"
    make_class_folders(root, classes=("ants", "bees"), per_class=2)
    make_class_folders(outside, classes=("wasps",), per_class=2)
    (outside / "wasps" / "again").symlink_to(outside / "wasps")  # a loop outside the root
    (root / "wasps").symlink_to(outside / "wasps")  # a class kept elsewhere: followed
    (root / "wasps_too").symlink_to(outside / "wasps")  # the same folder a second time: skipped
    (root / "ants" / "bees_link").symlink_to(root / "bees")  # met before bees/ itself: still bees'
    one_bee = next((root / "bees").glob("*.jpg"))
    (root / "ants" / "a_bee.jpg").symlink_to(one_bee)  # a link to a file is an image like any other
    listing = discover(root)
    files = _by_path(listing)
    assert listing.classes == ["ants", "bees", "wasps"]
    assert sum(1 for label, _ in files.values() if label == "wasps") == 2
    assert all(label == "bees" for path, (label, _) in files.items() if "bee" in path and path != "ants/a_bee.jpg")
    assert files["ants/a_bee.jpg"] == ("ants", "")
    assert len(files) == 7 and not any("bees_link" in p or "wasps_too" in p or "again" in p for p in files)
    text = " ".join(listing.warnings)
    assert "wasps/again" in text and "loop" in text
    assert "ants/bees_link" in text and "wasps_too" in text and "listed already" in text


def test_valid_is_a_validation_split_in_any_case(tmp_path):
    """Issue 12 B13: valid/ beside train/ became a class ('train 245 / valid 153')."""
    make_class_folders(tmp_path, per_class=2, split="train")
    make_class_folders(tmp_path, per_class=1, split="Valid", seed=1)
    listing = discover(tmp_path)
    assert listing.layout == "split-folders" and listing.classes == ["cats", "dogs"]
    splits = [f.split for f in listing.files]
    assert splits.count("train") == 4 and splits.count("val") == 2
    assert listing.warnings == []


def test_class_folders_named_like_splits_are_warned_about(tmp_path):
    make_class_folders(tmp_path, classes=("cats", "dogs"), per_class=1)
    make_class_folders(tmp_path, classes=("val",), per_class=1, seed=1)
    listing = discover(tmp_path)
    assert listing.layout == "class-folders" and "val" in listing.classes
    assert len(listing.warnings) == 1 and "val/" in listing.warnings[0] and "cats/" in listing.warnings[0]

    both = tmp_path / "both"  # val/ and valid/ name the same split: not a split layout
    make_class_folders(both, per_class=1, split="val")
    make_class_folders(both, per_class=1, split="valid", seed=1)
    listing = discover(both)
    assert listing.layout == "class-folders" and "name the same split" in listing.warnings[0]

    nested = tmp_path / "nested"
    make_class_folders(nested, classes=("test", "dogs"), per_class=1, split="train")
    make_class_folders(nested, classes=("test", "dogs"), per_class=1, split="val", seed=1)
    listing = discover(nested)
    assert listing.layout == "split-folders" and "test/" in listing.warnings[0]
