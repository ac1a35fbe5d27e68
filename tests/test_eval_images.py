"""`headstart eval RUN IMAGES`: any run (head or fine-tuned) on a labelled folder or manifest.

Its numbers must be those of `head eval` on the same images, whether the features come from
the cache or through the backbone; a fine-tuned run scores its own validation folder as it
recorded; classes that differ are refused, naming the difference."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from conftest import make_class_folders


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, tiny_model_file):
    """train/ and val/ folders -> a cache -> a dense head whose val split is the val/ folder."""
    from headstart import cli

    work = tmp_path_factory.mktemp("evalimg")
    images = work / "imgs"
    make_class_folders(images, classes=("cats", "dogs", "owls"), per_class=8, size=(48, 48), split="train")
    make_class_folders(images, classes=("cats", "dogs", "owls"), per_class=5, size=(48, 48), split="val", seed=1)
    cache, run = work / "c.h5", work / "runs" / "dense"
    assert cli.main(["embed", "run", str(images), "-b", str(tiny_model_file), "--cache", str(cache), "-q"]) == 0
    # Few epochs and a small head: some validation mistakes, so the confusion matrix says something.
    assert cli.main(["head", "train", "--cache", str(cache), "--epochs", "4", "--hidden", "8", "--out", str(run),
                     "-q"]) == 0
    return {"work": work, "images": images, "cache": cache, "run": run}


def _json(run_cli, *args):
    code, out, err = run_cli(*args, "--json")
    return code, (json.loads(out) if out.strip() else None), err


def _metrics(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_eval_equals_head_eval_on_the_same_images(tmp_path, run_cli, head_run):
    code, head, err = _json(run_cli, "head", "eval", head_run["run"], "--cache", head_run["cache"], "--split", "val",
                            "--out", tmp_path / "head-eval")
    assert code == 0, err
    code, report, err = _json(run_cli, "eval", head_run["run"], head_run["images"] / "val",
                              "--cache-dir", tmp_path / "no-caches", "--out", tmp_path / "eval")
    assert code == 0, err
    assert report["from_cache"] == 15 and report["through_backbone"] == 0  # the run's own cache has them
    assert report["metrics"] == head["metrics"]  # the same rows, the same head: the same numbers
    on_images, on_cache = _metrics(tmp_path / "eval"), _metrics(tmp_path / "head-eval")
    assert on_images["confusion_matrix"] == on_cache["confusion_matrix"]
    assert on_images["per_class"] == on_cache["per_class"]
    assert on_images["classes"] == ["cats", "dogs", "owls"] and on_images["evaluated"] == "images"

    # The same images pushed through the backbone (float32 features instead of the cache's float16).
    code, fresh, err = _json(run_cli, "eval", head_run["run"], head_run["images"] / "val", "--no-cache",
                             "--out", tmp_path / "fresh")
    assert code == 0, err
    assert fresh["through_backbone"] == 15 and fresh["from_cache"] == 0 and fresh["runtime"]
    assert fresh["metrics"]["n"] == 15
    assert abs(fresh["metrics"]["accuracy"] - head["metrics"]["accuracy"]) <= 1 / 15
    assert abs(fresh["metrics"]["log_loss"] - head["metrics"]["log_loss"]) < 0.02


def test_eval_writes_the_mistakes_with_resolvable_paths(tmp_path, run_cli, head_run):
    from PIL import Image

    code, report, err = _json(run_cli, "eval", head_run["run"], head_run["images"] / "val", "--out", tmp_path / "e")
    assert code == 0, err
    metrics = _metrics(tmp_path / "e")
    assert metrics["accuracy"] == report["metrics"]["accuracy"]
    with open(tmp_path / "e" / "misclassified.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == metrics["misclassified"]
    for row in rows:  # paths relative to the images folder given, and whole in abs_path
        assert (head_run["images"] / "val" / row["path"]).is_file() and row["abs_path"].endswith(row["path"])
        assert row["true"] != row["predicted"]
    with Image.open(tmp_path / "e" / "confusion.png") as png:
        assert png.size[0] > 100
    assert (tmp_path / "e" / "misclassified.png").is_file() == bool(rows)

    code, stdout, err = run_cli("eval", head_run["run"], head_run["images"] / "val", "--out", tmp_path / "text")
    assert code == 0, err
    assert f"accuracy {report['metrics']['accuracy']:.4f}" in stdout and "15 images" in stdout
    assert f"wrote {tmp_path / 'text'}/" in stdout


def test_a_finetuned_run_scores_its_validation_folder_as_it_recorded(tmp_path, run_cli, head_run):
    code, out, err = run_cli("finetune", "--from", head_run["run"], "--out", tmp_path / "ft", "--epochs", "1",
                             "--unfreeze", "1", "--no-augment", "-q")
    assert code == 0, err
    recorded = _metrics(tmp_path / "ft")
    code, report, err = _json(run_cli, "eval", tmp_path / "ft", head_run["images"] / "val", "--out", tmp_path / "e")
    assert code == 0, err
    assert report["kind"] == "finetuned" and report["through_backbone"] == 15 and report["from_cache"] == 0
    got = _metrics(tmp_path / "e")
    assert got["confusion_matrix"] == recorded["confusion_matrix"]
    assert got["accuracy"] == recorded["accuracy"]
    assert abs(got["log_loss"] - recorded["log_loss"]) < 1e-3  # the same pixels, the same network

    code, _, err = run_cli("eval", tmp_path / "ft", head_run["images"] / "val", "--cache", head_run["cache"])
    assert code == 2 and "fine-tuned run takes images" in err


def test_classes_that_differ_are_refused_naming_the_difference(tmp_path, run_cli, head_run):
    other = tmp_path / "other"
    make_class_folders(other, classes=("cats", "owls", "bats"), per_class=2, size=(48, 48), seed=5)
    code, out, err = run_cli("eval", head_run["run"], other)
    assert code == 2 and out == ""
    line = err.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "not classes of the run: bats" in line and "classes of the run with no images here: dogs" in line

    unlabelled = tmp_path / "loose"
    make_class_folders(unlabelled, classes=("x",), per_class=2, size=(48, 48))
    for image in (unlabelled / "x").iterdir():
        image.rename(unlabelled / image.name)
    (unlabelled / "x").rmdir()
    code, _, err = run_cli("eval", head_run["run"], unlabelled)
    assert code == 2 and "no labelled images" in err and "headstart predict" in err


def test_training_images_duplicates_and_conflicts_are_reported(tmp_path, run_cli, head_run):
    # Its own training folder: every image was trained on, so the metrics are optimistic (exit 1).
    code, report, err = _json(run_cli, "eval", head_run["run"], head_run["images"] / "train", "--out", tmp_path / "t")
    assert code == 1
    assert report["seen_in_training"] == 24 and report["metrics"]["n"] == 24
    assert any("training split" in w for w in report["warnings"])
    code, report, err = _json(run_cli, "eval", head_run["run"], head_run["images"] / "val", "--out", tmp_path / "v")
    assert code == 0 and report["seen_in_training"] == 0

    folder = tmp_path / "val"
    shutil.copytree(head_run["images"] / "val", folder)
    cats = sorted((folder / "cats").iterdir())
    shutil.copy(cats[0], folder / "cats" / "again.jpg")  # the same bytes twice in one class: one image
    shutil.copy(cats[1], folder / "dogs" / "a_cat.jpg")  # the same bytes under two classes: left out
    (folder / "notes.txt").write_text("not an image")
    code, report, err = _json(run_cli, "eval", head_run["run"], folder, "--out", tmp_path / "d")
    assert code == 1
    assert report["duplicate_files"] == 2 and report["conflicts"] == 1
    assert report["metrics"]["n"] == 14  # 15 distinct images, less the conflicting one
    assert any("two classes" in w for w in report["warnings"])


def test_a_manifest_and_its_split_column(tmp_path, run_cli, head_run):
    rows = ["path,label,split"]
    for path in sorted((head_run["images"]).rglob("*.jpg")):
        relative = path.relative_to(head_run["images"])
        rows.append(f"{relative},{relative.parts[1]},{relative.parts[0]}")
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n".join(rows) + "\n")
    code, on_folder, err = _json(run_cli, "eval", head_run["run"], head_run["images"] / "val", "--out",
                                 tmp_path / "f")
    assert code == 0, err
    code, on_manifest, err = _json(run_cli, "eval", head_run["run"], head_run["images"], "--manifest", manifest,
                                   "--split", "val", "--out", tmp_path / "m")
    assert code == 0, err
    assert on_manifest["metrics"] == on_folder["metrics"] and on_manifest["split"] == "val"
    code, _, err = run_cli("eval", head_run["run"], head_run["images"] / "val", "--split", "test")
    assert code == 2 and "gives no splits" in err


def test_metrics_count_each_class_against_the_runs_class_order(tmp_path, head_run):
    """A folder whose classes come in the run's order by name, whatever discovery's order."""
    from headstart.heads.evaluate_images import EvalImagesOptions, evaluate_images
    from headstart.heads.runs import load_run

    run = load_run(head_run["run"])
    report = evaluate_images(run, head_run["images"] / "val", EvalImagesOptions(out=tmp_path / "o", progress=False))
    matrix = np.asarray(_metrics(tmp_path / "o")["confusion_matrix"])
    assert matrix.sum(axis=1).tolist() == [5, 5, 5]
    assert [report.per_class[c]["support"] for c in run.classes] == [5, 5, 5]
