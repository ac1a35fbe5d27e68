"""Galleries: contact sheets of a run's mistakes and of the inspect reports, and the CSVs' absolute paths.

Every image is a flat class colour (conftest's class folders: red, green, blue), so a tile's
colour says which image it shows: the tests check that the tiles are the CSV's first lines,
in the CSV's order, by reading the colour at the centre of each tile of the PNG.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASS_COLOURS, make_class_folders

from headstart.embedder.cache import FileRecord, write_cache

FP = {"architecture": "TestNet", "weights": "none:seed=0", "input_size": 32, "pooling": "avg"}
CLASSES = ("ants", "bees", "wasps")  # red, green, blue tiles
PLACEHOLDER = (250, 235, 235)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def colour_of(image, box) -> np.ndarray:
    """Median colour of the middle of a tile's box (inside the thumbnail, clear of the grey
    bands; the median ignores a placeholder's thin lettering)."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top
    crop = image.crop((left + w // 3, top + h // 3, right - w // 3, bottom - h // 3))
    return np.median(np.asarray(crop, dtype=np.float64).reshape(-1, 3), axis=0)


def class_of_colour(colour) -> int:
    """Index of the class colour nearest to ``colour``."""
    return int(np.argmin([np.linalg.norm(np.asarray(c) - colour) for c in CLASS_COLOURS[: len(CLASSES)]]))


def class_of_path(path: str) -> int:
    return CLASSES.index(Path(path).parent.name)


def tile_classes(kind: str, csv_path: Path, png_path: Path, images_root) -> list[int | None]:
    """The class colour of each picture of the gallery PNG, in the sheet's order (None: a placeholder)."""
    from PIL import Image

    from headstart.heads.contact_sheet import layout
    from headstart.heads.gallery import build_sheet

    sheet, _ = build_sheet(kind, read_csv(csv_path), str(images_root))
    plan = layout(sheet)
    with Image.open(png_path) as image:
        image = image.convert("RGB")
        assert image.size == (plan.width, plan.height)  # the PNG is that layout
        found = []
        for box in plan.picture_boxes():
            colour = colour_of(image, box)
            found.append(None if np.linalg.norm(colour - PLACEHOLDER) < 12 else class_of_colour(colour))
    return found


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    make_class_folders(root, classes=CLASSES, per_class=8, size=(40, 48))
    return root


def _paths(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.jpg"))


# ---------------------------------------------------------------------- a run's mistakes


def _evaluate(out, images, paths, wrong: dict[int, float], images_root="default"):
    """write_evaluation on ``paths``: each index in ``wrong`` mispredicted with that confidence."""
    from headstart.heads.evaluate import write_evaluation

    y = np.asarray([class_of_path(p) for p in paths])
    proba = np.full((len(paths), 3), 0.05)
    proba[np.arange(len(paths)), y] = 0.9
    for i, confidence in wrong.items():
        proba[i] = (1 - confidence) / 2
        proba[i, (y[i] + 1) % 3] = confidence
    root = images if images_root == "default" else images_root
    return write_evaluation(out, y, proba, CLASSES, paths, extra={"split": "val"},
                            **({} if root is None else {"images_root": root}))


def test_misclassified_gallery_shows_the_csv_rows_in_order(tmp_path, images):
    paths = _paths(images)
    # Mistakes of different true classes at chosen confidences: the CSV (and so the gallery)
    # must put them most confident first: wasps, ants, bees, ants.
    wrong = {paths.index("wasps/wasps_0_1.jpg"): 0.97, paths.index("ants/ants_0_2.jpg"): 0.9,
             paths.index("bees/bees_0_3.jpg"): 0.8, paths.index("ants/ants_0_5.jpg"): 0.6}
    out = tmp_path / "run"
    metrics = _evaluate(out, images, paths, wrong)
    rows = read_csv(out / "misclassified.csv")
    assert list(rows[0]) == ["path", "true", "predicted", "confidence", "abs_path"]
    assert [r["path"] for r in rows] == ["wasps/wasps_0_1.jpg", "ants/ants_0_2.jpg", "bees/bees_0_3.jpg",
                                         "ants/ants_0_5.jpg"]
    for row in rows:  # every line opens as is, wherever the CSV is read
        assert row["abs_path"] == os.path.join(str(images), row["path"]) and os.path.isfile(row["abs_path"])
    assert metrics["misclassified"] == 4
    png = out / "misclassified.png"
    assert tile_classes("misclassified", out / "misclassified.csv", png, images) == [2, 0, 1, 0]


def test_misclassified_gallery_placeholders_for_gone_and_broken_files(tmp_path, images):
    paths = _paths(images)
    (images / "bees" / "bees_0_0.jpg").unlink()  # gone
    (images / "ants" / "ants_0_0.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg at all")  # undecodable
    wrong = {paths.index("bees/bees_0_0.jpg"): 0.95, paths.index("ants/ants_0_0.jpg"): 0.9,
             paths.index("wasps/wasps_0_0.jpg"): 0.85}
    out = tmp_path / "run"
    _evaluate(out, images, paths, wrong)
    assert tile_classes("misclassified", out / "misclassified.csv", out / "misclassified.png", images) == \
        [None, None, 2]
    from headstart.heads.contact_sheet import load_thumbnail

    assert load_thumbnail(str(images / "bees" / "bees_0_0.jpg"))[1] == "file not found"
    assert load_thumbnail(str(images / "ants" / "ants_0_0.jpg"))[1].startswith("cannot decode")


def test_no_mistakes_no_gallery_and_old_signature_unchanged(tmp_path, images):
    paths = _paths(images)
    out = tmp_path / "run"
    out.mkdir()
    (out / "misclassified.png").write_bytes(b"an older gallery")
    _evaluate(out, images, paths, {})
    assert read_csv(out / "misclassified.csv") == []
    assert not (out / "misclassified.png").exists()  # a stale gallery would contradict the CSV

    # Without the images root: the CSV exactly as before, and no gallery.
    old = tmp_path / "old"
    _evaluate(old, images, paths, {0: 0.9}, images_root=None)
    with open(old / "misclassified.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["path", "true", "predicted", "confidence"]
    assert not (old / "misclassified.png").exists()

    # With a root where none of the images is: no gallery of placeholders only.
    moved = tmp_path / "moved"
    _evaluate(moved, images, paths, {0: 0.9}, images_root=tmp_path / "elsewhere")
    assert not (moved / "misclassified.png").exists()


def test_gallery_is_capped_and_says_so(tmp_path):
    from PIL import Image

    from headstart.heads.contact_sheet import MAX_TILES, layout
    from headstart.heads.gallery import build_sheet

    root = tmp_path / "images"
    make_class_folders(root, classes=CLASSES, per_class=20, size=(32, 32))
    paths = _paths(root)
    out = tmp_path / "run"
    _evaluate(out, root, paths, {i: 0.9 - i * 0.001 for i in range(len(paths))})
    rows = read_csv(out / "misclassified.csv")
    assert len(rows) == 60
    sheet, total = build_sheet("misclassified", rows, str(root))
    assert total == 60 and len(sheet.cells) == MAX_TILES
    assert "first 48 of 60" in sheet.title and "capped at 48" in sheet.title
    with Image.open(out / "misclassified.png") as image:
        assert image.size[1] == layout(sheet).height
    classes = tile_classes("misclassified", out / "misclassified.csv", out / "misclassified.png", root)
    assert classes == [class_of_path(r["path"]) for r in rows[:MAX_TILES]]


# ------------------------------------------------------------------------------ inspect


@pytest.fixture
def quality_cache(tmp_path, images):
    """A cache over ``images``: class clusters; two ants with bee features (flipped labels),
    one wasp far from everything (outlier), a near copy of an ant filed as a bee in another
    split, and the same bytes as a wasp under a second path."""
    rng = np.random.default_rng(0)
    dim = 24
    centres = rng.normal(0, 1, (3, dim)) * 1.5
    paths = _paths(images)
    keys, features, files = [], [], []
    for p in paths:
        c = class_of_path(p)
        vector = centres[c] + rng.normal(0, 1, dim)
        if p in ("ants/ants_0_3.jpg", "ants/ants_0_6.jpg"):
            vector = centres[1] + rng.normal(0, 1, dim)  # looks like a bee
        if p == "wasps/wasps_0_7.jpg":
            vector = -2 * centres[2] + rng.normal(0, 1, dim)  # like nothing else
        keys.append(f"k-{p}")
        features.append(vector)
        files.append(FileRecord(p, keys[-1], c, ""))
    features[paths.index("bees/bees_0_5.jpg")] = features[paths.index("ants/ants_0_1.jpg")] + 0.01
    shutil.copy(images / "wasps" / "wasps_0_2.jpg", images / "wasps" / "again.jpg")
    files.append(FileRecord("wasps/again.jpg", "k-wasps/wasps_0_2.jpg", 2, ""))
    path = tmp_path / "quality.h5"
    write_cache(path, FP, keys, np.asarray(features, np.float32), files, list(CLASSES), images, dtype="float32")
    return path


def test_inspect_labels_gallery_follows_the_suspects(tmp_path, images, quality_cache, run_cli):
    out = tmp_path / "reports" / "labels.csv"
    code, stdout, err = run_cli("inspect", "labels", "--cache", quality_cache, "--out", out)
    assert code == 0, err
    rows = read_csv(out)
    suspects = [r for r in rows if float(r["score"]) > 0]
    assert {r["path"] for r in suspects} >= {"ants/ants_0_3.jpg", "ants/ants_0_6.jpg"}
    assert all(r["abs_path"] == os.path.join(str(images), r["path"]) for r in rows)
    png = out.with_suffix(".png")
    assert f"images:     {images}" in stdout and f"gallery:    {png}" in stdout
    # One tile per suspect (another label more likely), in the CSV's order, showing that image.
    assert tile_classes("label-errors", out, png, images) == [class_of_path(r["path"]) for r in suspects]


def test_inspect_outliers_gallery(tmp_path, images, quality_cache):
    from headstart.heads.quality.commands import inspect_outliers

    out = tmp_path / "o.csv"
    report = inspect_outliers(quality_cache, out=out)
    rows = read_csv(out)
    assert rows[0]["path"] == "wasps/wasps_0_7.jpg"
    assert report.gallery == str(out.with_suffix(".png")) and report.images_root == str(images)
    scored = [r for r in rows if r["score"] != ""]
    assert tile_classes("outliers", out, Path(report.gallery), images) == [class_of_path(r["path"]) for r in scored]


def test_inspect_duplicates_gallery_shows_pairs_side_by_side(tmp_path, images, quality_cache, run_cli):
    out = tmp_path / "d.csv"
    code, stdout, err = run_cli("inspect", "duplicates", "--cache", quality_cache, "--out", out, "--json")
    report = json.loads(stdout)
    rows = read_csv(out)
    assert {r["kind"] for r in rows} == {"near", "exact"}
    assert report["gallery"] == str(out.with_suffix(".png")) and report["images_root"] == str(images)
    for r in rows:
        assert r["abs_path_a"] == os.path.join(str(images), r["path_a"]) and os.path.isfile(r["abs_path_b"])
    expected = [class_of_path(r[side]) for r in rows for side in ("path_a", "path_b")]
    assert tile_classes("duplicates", out, out.with_suffix(".png"), images) == expected
    near = next(r for r in rows if r["kind"] == "near")
    assert {near["path_a"], near["path_b"]} == {"ants/ants_0_1.jpg", "bees/bees_0_5.jpg"}


def test_inspect_gallery_is_skipped_when_the_images_are_gone(tmp_path, images, quality_cache, run_cli):
    out = tmp_path / "o.csv"
    out.with_suffix(".png").write_bytes(b"older")
    shutil.rmtree(images)
    code, stdout, err = run_cli("inspect", "outliers", "--cache", quality_cache, "--out", out)
    assert code == 0, err
    assert "gallery:    no gallery: none of the images is under" in stdout
    assert not out.with_suffix(".png").exists()


def test_inspect_samples_one_row_per_class(tmp_path, images, quality_cache, run_cli):
    from PIL import Image

    from headstart.heads.quality.inventory import open_inventory
    from headstart.heads.quality.samples import class_samples

    out = tmp_path / "samples.png"
    code, stdout, err = run_cli("inspect", "samples", "--cache", quality_cache, "--out", out, "--per-class", "3",
                                "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["tiles"] == 9 and report["classes"] == 3 and report["gallery"] == str(out)
    again = tmp_path / "again.png"
    class_samples(open_inventory(quality_cache), again, per_class=3)
    assert again.read_bytes() == out.read_bytes()  # seeded: the same draw, the same picture
    with Image.open(out) as image:  # one row of three per class, in class order
        image = image.convert("RGB")
        boxes = _sample_boxes(image.size)
        assert [class_of_colour(colour_of(image, b)) for b in boxes] == [0, 0, 0, 1, 1, 1, 2, 2, 2]

    # Moved images: a clear error, and --images finds them.
    moved = tmp_path / "moved"
    shutil.move(images, moved)
    code, stdout, err = run_cli("inspect", "samples", "--cache", quality_cache, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--images" in err
    code, stdout, err = run_cli("inspect", "samples", "--cache", quality_cache, "--out", out, "--images", moved)
    assert code == 0, err
    assert f"images:     {moved}" in stdout


def _sample_boxes(size):
    """The picture boxes of a 3-class, 3-per-class samples sheet (its layout, recomputed)."""
    from headstart.heads.contact_sheet import Cell, Picture, Section, Sheet, layout

    sheet = Sheet("t", [Section(f"c{c}", [Cell([Picture("x", "x")], details=["split"]) for _ in range(3)])
                        for c in range(3)], subtitle="s")
    plan = layout(sheet)
    assert (plan.width, plan.height) == size
    return plan.picture_boxes()
