"""Bad input to the head commands: one line on stderr, exit 2, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from headstart.embedder.cache import FileRecord, write_cache
from feature_caches import FINGERPRINT, key_of, make_cache


def _fails(run_cli, *args, match: str):
    code, out, err = run_cli(*args)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in err, err
    return err


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("bad") / "good.h5", per_class=20)


def test_no_cache_found(tmp_path, run_cli):
    _fails(run_cli, "head", "train", "--cache-dir", tmp_path / "cache", match="no cache found")
    _fails(run_cli, "head", "train", "--cache", tmp_path / "missing.h5", match="cache not found")
    (tmp_path / "junk.h5").write_text("not hdf5")
    _fails(run_cli, "head", "train", "--cache", tmp_path / "junk.h5", match="not an HDF5 file")


def test_empty_cache(tmp_path, run_cli):
    write_cache(tmp_path / "empty.h5", FINGERPRINT, [], np.zeros((0, 4), np.float32), [], ["a", "b"], tmp_path)
    _fails(run_cli, "head", "train", "--cache", tmp_path / "empty.h5", match="is empty")


def test_one_class_and_no_labels(tmp_path, run_cli):
    one = make_cache(tmp_path / "one.h5", classes=("ants",), per_class=10)
    _fails(run_cli, "head", "train", "--cache", one, match="at least 2")
    keys = [key_of(f"u{i}") for i in range(10)]
    files = [FileRecord(f"u{i}.jpg", k, -1, "") for i, k in enumerate(keys)]
    write_cache(tmp_path / "unlabelled.h5", FINGERPRINT, keys, np.random.default_rng(0).normal(size=(10, 4)),
                files, ["a", "b"], tmp_path)
    _fails(run_cli, "head", "train", "--cache", tmp_path / "unlabelled.h5", match="no labelled images")


def test_class_with_too_few_images_for_the_split(tmp_path, run_cli):
    layout = {"ants": ["train"] * 8 + ["val"] * 2, "bees": ["train"] * 8 + ["val"] * 2, "wasps": ["val"]}
    cache = make_cache(tmp_path / "c.h5", per_class=[10, 10, 1], splits=layout)
    _fails(run_cli, "head", "train", "--cache", cache, "--head", "logreg", "--out", tmp_path / "r",
           match="'wasps' has too few images")
    assert not (tmp_path / "r").exists()
    # hash split: a lone image that lands in val leaves its class with nothing to train on
    tiny = make_cache(tmp_path / "t.h5", per_class=[20, 20, 1], classes=("a", "b", "c"), seed=4)
    from headstart.heads.data import load_labelled

    data = load_labelled(tiny, val_fraction=0.9, seed=0)
    lone = data.rows()[data.labels[data.rows()] == 2]
    assert list(data.splits[lone]) == ["val"]  # (its key's hash bucket, for this seed)
    _fails(run_cli, "head", "train", "--cache", tiny, "--val-fraction", "0.9", match="too few images")
    _fails(run_cli, "head", "train", "--cache", tiny, "--head", "svm", "--val-fraction", "0.05",
           match="at least 2 training images")


def test_class_without_validation_images_is_a_warning(tmp_path, run_cli):
    layout = {"ants": ["train"] * 8 + ["val"] * 3, "bees": ["train"] * 8 + ["val"] * 3, "wasps": ["train"] * 6}
    cache = make_cache(tmp_path / "c.h5", per_class=[11, 11, 6], splits=layout)
    code, out, err = run_cli("head", "train", "--cache", cache, "--head", "logreg", "--out", tmp_path / "r", "-q")
    assert code == 0, err
    assert "warning: no validation images for class 'wasps'" in err
    assert json.loads((tmp_path / "r" / "head.json").read_text())["warnings"]


def test_bad_and_contradictory_options(tmp_path, run_cli, good):
    train = ("head", "train", "--cache", good, "--out", tmp_path / "r")
    _fails(run_cli, *train, "--epochs", "0", match="--epochs must be at least 1")
    _fails(run_cli, *train, "--head", "logreg", "--hidden", "64", match="--hidden does not apply to --head logreg")
    _fails(run_cli, *train, "--head", "knn", "--class-weight", "balanced", match="--class-weight does not apply")
    _fails(run_cli, *train, "--head", "dense", "--k", "3", match="--k does not apply")
    _fails(run_cli, *train, "--hidden", "0", "--dropout", "0.3", match="--hidden 0")
    _fails(run_cli, *train, "--head", "forest", match="unknown head 'forest'")
    _fails(run_cli, *train, "--val-fraction", "1.5", match="--val-fraction")
    _fails(run_cli, *train, "--lr", "-1", match="--lr")
    _fails(run_cli, *train, "--dropout", "1", match="--dropout")
    _fails(run_cli, *train, "--class-weight", "heavy", match="--class-weight must be")
    _fails(run_cli, *train, "--epochs", "5", "--patience", "5", match="--patience 5 can never trigger")
    _fails(run_cli, *train, "--head", "knn", "--k", "500", match="--k 500 is more than")
    _fails(run_cli, "head", "sweep", "--cache", good, "--head", "logreg,svm", "--lr", "1e-3",
           match="--lr applies to none of the heads")
    _fails(run_cli, "head", "sweep", "--cache", good, "--lr", "fast", match="cannot read 'fast'")
    _fails(run_cli, "head", "list", "--runs-dir", tmp_path, "--sort", "vibes", match="--sort must be one of")
    assert not (tmp_path / "r").exists()


def test_existing_run_folder_is_not_overwritten(tmp_path, run_cli, good):
    assert run_cli("head", "train", "--cache", good, "--head", "knn", "--out", tmp_path / "r", "-q")[0] == 0
    before = (tmp_path / "r" / "head.json").read_text()
    _fails(run_cli, "head", "train", "--cache", good, "--head", "knn", "--out", tmp_path / "r", match="already exists")
    assert (tmp_path / "r" / "head.json").read_text() == before


def test_incomplete_or_damaged_run_folders(tmp_path, run_cli, good):
    _fails(run_cli, "head", "eval", tmp_path / "nowhere", match="run folder not found")
    assert run_cli("head", "train", "--cache", good, "--head", "logreg", "--out", tmp_path / "r", "-q")[0] == 0

    half = tmp_path / "half"
    half.mkdir()
    (half / "model.npz").write_bytes((tmp_path / "r" / "model.npz").read_bytes())
    _fails(run_cli, "head", "eval", half, "--cache", good, match="incomplete: it has no head.json")

    (half / "head.json").write_text("{ not json")
    _fails(run_cli, "head", "eval", half, "--cache", good, match="head.json is not readable JSON")

    meta = json.loads((tmp_path / "r" / "head.json").read_text())
    (half / "head.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "classes"}))
    _fails(run_cli, "head", "eval", half, "--cache", good, match="lacks 'classes'")

    (half / "head.json").write_text(json.dumps(meta))
    (half / "model.npz").unlink()
    _fails(run_cli, "head", "eval", half, "--cache", good, match="model.npz is missing")

    (half / "model.npz").write_bytes(b"garbage")
    _fails(run_cli, "head", "eval", half, "--cache", good, match="does not match the checksum")

    from headstart.heads.runs import RunError, load_run

    with pytest.raises(RunError, match="incomplete"):
        load_run(tmp_path)  # a folder of runs is not a run


def test_a_crash_while_writing_leaves_no_run(tmp_path, monkeypatch, good):
    from headstart.heads.kinds.arrays import ArrayHead
    from headstart.heads.params import make_params
    from headstart.heads.train import train_head

    def boom(self, folder):
        (Path(folder) / "model.npz").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ArrayHead, "save", boom)
    with pytest.raises(RuntimeError):
        train_head(make_params("logreg"), cache=good, out=tmp_path / "r")
    assert list(tmp_path.iterdir()) == []  # neither the run nor its temporary folder


@pytest.mark.subprocess
def test_help_and_usage_errors_do_not_import_heavy_libraries(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    code = (
        "import sys; from headstart import cli\n"
        "for args in (['head', '--help'], ['head', 'train', '--help'], ['head', 'sweep', '--help'],\n"
        f"             ['head', 'list', '--runs-dir', {str(tmp_path)!r}], ['head', 'train', '--epochs', '0'],\n"
        "             ['head', 'train', '--head', 'knn', '--lr', '1']):\n"
        "    cli.main(args)\n"
        "heavy = [m for m in ('tensorflow', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")


def test_best_run_without_runs_is_a_usage_error(tmp_path):
    from headstart.embedder.errors import UsageError
    from headstart.heads.runs import best_run, list_runs

    assert list_runs(tmp_path / "none") == []
    with pytest.raises(UsageError, match="no dense head run"):
        best_run(tmp_path, head_type="dense")
