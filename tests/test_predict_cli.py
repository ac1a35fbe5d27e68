"""predict behaves like every other command: --json, --format from -o's extension, --min-prob,
files passed over are counted, and the default run never comes from another data set."""

from __future__ import annotations

import csv
import io
import json

import pytest

from conftest import make_class_folders


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model_file):
    """Two data sets (cats/dogs, owls/parrots), one logreg run each, in one runs folder."""
    from headstart import cli

    work = tmp_path_factory.mktemp("predict-cli")
    pets, birds = work / "pets", work / "birds"
    make_class_folders(pets, classes=("cats", "dogs"), per_class=6, size=(48, 48))
    make_class_folders(birds, classes=("owls", "parrots"), per_class=6, size=(48, 48), seed=4)
    for name, images in (("pets", pets), ("birds", birds)):
        cache = work / f"{name}.h5"
        assert cli.main(["embed", "run", str(images), "-b", str(tiny_model_file), "--cache", str(cache), "-q"]) == 0
        assert cli.main(["head", "train", "--cache", str(cache), "--head", "logreg", "--C", "1",
                         "--out", str(work / "runs" / name), "-q"]) == 0
    return {"work": work, "pets": pets, "birds": birds, "runs": work / "runs"}


def test_format_follows_the_out_files_extension(run_cli, two_runs, tmp_path):
    run = two_runs["runs"] / "pets"
    code, out, err = run_cli("predict", two_runs["pets"], "--run", run, "-o", tmp_path / "p.json", "-q")
    assert code == 0 and not out, err
    rows = json.loads((tmp_path / "p.json").read_text())
    assert len(rows) == 12 and {"path", "label", "probability", "top_k"} <= set(rows[0])
    code, _, err = run_cli("predict", two_runs["pets"], "--run", run, "-o", tmp_path / "p.csv", "-q")
    assert code == 0, err
    assert next(csv.reader(io.StringIO((tmp_path / "p.csv").read_text()))) == ["path", "label", "probability", "top_k"]
    code, _, _ = run_cli("predict", two_runs["pets"], "--run", run, "-o", tmp_path / "x.json", "--format", "csv", "-q")
    assert code == 0 and (tmp_path / "x.json").read_text().startswith("path,label")  # --format wins


def test_json_summary_min_prob_and_files_passed_over(run_cli, two_runs, tmp_path):
    folder = tmp_path / "mixed"
    make_class_folders(folder, classes=("x",), per_class=3, size=(48, 48), seed=9)
    (folder / "x" / "scan.tiff").write_bytes(b"II*\x00")  # not an image by its extension: counted, not lost
    (folder / "x" / "broken.jpg").write_text("not an image")
    code, out, err = run_cli("predict", folder, "--run", two_runs["runs"] / "pets", "--json", "--min-prob", "0.99")
    assert code == 1  # one file could not be used
    summary = json.loads(out)
    assert summary["ignored"] == {".tiff": 1}
    assert [s["path"] for s in summary["skipped"]] == [str(folder / "x" / "broken.jpg")]
    assert len(summary["predictions"]) == 3 and summary["min_prob"] == 0.99
    unknown = [r for r in summary["predictions"] if r["label"] == "unknown"]
    assert summary["unknown"] == len(unknown) and unknown  # nothing is 99% a cat or a dog here
    assert all(r["top_k"][0]["label"] in ("cats", "dogs") for r in unknown)  # the classes stay in the top-k
    assert {"elapsed_s", "from_cache", "through_backbone", "exit_code"} <= set(summary)
    code, out, err = run_cli("predict", folder, "--run", two_runs["runs"] / "pets", "--json", "-o", tmp_path / "p.csv")
    assert "predictions" not in json.loads(out)  # they went to the file
    code, _, err = run_cli("predict", folder, "--run", two_runs["runs"] / "pets", "-o", tmp_path / "q.csv")
    assert "passed over 1 file whose extension is not an image's (.tiff x1)" in err
    assert f"wrote {tmp_path / 'q.csv'}" in err


def test_the_default_run_is_never_from_another_data_set(run_cli, two_runs, monkeypatch):
    monkeypatch.chdir(two_runs["work"])
    code, out, err = run_cli("predict", two_runs["pets"] / "cats")  # unlabelled input, runs of two data sets
    assert code == 2 and not out
    assert "pass --run RUN" in err and "pets" in err and "birds" in err
    code, out, err = run_cli("predict", two_runs["birds"], "--format", "json")  # a labelled folder: its classes
    assert code == 0, err
    assert "runs/birds" in err and {r["label"] for r in json.loads(out)} <= {"owls", "parrots"}
