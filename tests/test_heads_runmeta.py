"""head.json as a typed record (RunMeta): written by every stage, read tolerantly, and a run's
files never outside its folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from headstart.heads.run_meta import RunMeta, SplitRecord
from headstart.heads.runs import RunError, load_run
from headstart.heads.splits import SplitSpec
from feature_caches import make_cache


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from headstart.heads.params import make_params
    from headstart.heads.train import train_head

    work = tmp_path_factory.mktemp("meta")
    cache = make_cache(work / "c.h5", per_class=20)
    train_head(make_params("knn", k=3, seed=2, val_fraction=0.3), cache=cache, out=work / "run")
    return {"cache": cache, "run": work / "run"}


def test_a_written_run_round_trips_through_the_record(trained):
    raw = json.loads((trained["run"] / "head.json").read_text())
    record = load_run(trained["run"]).record
    assert isinstance(record, RunMeta) and isinstance(record.split, SplitRecord)
    assert record.to_json() == raw  # nothing lost, nothing added, on a round trip
    assert record.split.spec == record.split_spec == SplitSpec(0.3, 2)
    assert record.head_type == "knn" and record.params["k"] == 3 and record.cache.rows == 60
    assert record.model_sha256 and record.val_accuracy == raw["metrics"]["accuracy"]


def test_older_and_newer_files_are_read_tolerantly(tmp_path):
    old = {"kind": "head", "head_type": "logreg", "classes": ["a", "b"], "fingerprint": {"architecture": "X"},
           "feature_dim": 4, "params": {"seed": 5, "val_fraction": 0.4}, "metrics": {"val_accuracy": 0.8}}
    record = RunMeta.from_json(old)
    assert record.split is None and record.split_spec == SplitSpec(0.4, 5)  # the one fallback rule
    assert record.val_accuracy == 0.8 and record.warnings == [] and record.cache.path is None
    newer = dict(old, some_future_field={"x": 1}, split={"source": "hash"})
    record = RunMeta.from_json(newer)
    assert record.to_json()["some_future_field"] == {"x": 1}  # kept and written back
    assert record.split_spec == SplitSpec(0.4, 5)  # a split without seed/fraction falls back to params
    assert RunMeta.from_json({"kind": "head"}).split_spec == SplitSpec(0.2, 0)


def test_a_field_of_the_wrong_type_is_a_damaged_run(tmp_path, trained, run_cli):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    meta = json.loads((trained["run"] / "head.json").read_text())
    (damaged / "model.npz").write_bytes((trained["run"] / "model.npz").read_bytes())
    (damaged / "head.json").write_text(json.dumps(dict(meta, classes="ab")))
    with pytest.raises(RunError, match="damaged: head.json: 'classes' is not a list"):
        load_run(damaged)
    (damaged / "head.json").write_text(json.dumps(dict(meta, feature_dim="sixteen")))
    code, _, err = run_cli("head", "eval", damaged)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "damaged" in err


@pytest.mark.parametrize("model_file", ["../model.npz", "../../etc/passwd", "/etc/passwd", "sub/../../x.npz"])
def test_a_model_file_outside_the_run_folder_is_refused(tmp_path, trained, run_cli, model_file):
    folder = tmp_path / "runs" / "evil"
    folder.mkdir(parents=True)
    (tmp_path / "runs" / "model.npz").write_bytes((trained["run"] / "model.npz").read_bytes())  # bait: loadable
    meta = json.loads((trained["run"] / "head.json").read_text())
    meta.pop("model_sha256")
    (folder / "head.json").write_text(json.dumps(dict(meta, model_file=model_file)))
    with pytest.raises(RunError, match="points outside the run folder"):
        load_run(folder)
    code, _, err = run_cli("head", "eval", folder, "--cache", trained["cache"])
    assert code == 2 and len(err.strip().splitlines()) == 1 and "points outside the run folder" in err
    (folder / "head.json").write_text(json.dumps(dict(meta, kind="finetuned", model_file=model_file)))
    with pytest.raises(RunError, match="points outside the run folder"):
        load_run(folder)


def test_a_symlinked_model_file_that_leaves_the_folder_is_refused(tmp_path, trained):
    folder = tmp_path / "run"
    folder.mkdir()
    meta = json.loads((trained["run"] / "head.json").read_text())
    (folder / "head.json").write_text(json.dumps(meta))
    (folder / "model.npz").symlink_to(trained["run"] / "model.npz")
    with pytest.raises(RunError, match="points outside the run folder"):
        load_run(folder)


def test_finetuned_records_load_with_their_own_fields():
    raw = {"kind": "finetuned", "head_type": "dense", "finetuned_from": "runs/x", "classes": ["a", "b"],
           "fingerprint": {"architecture": "X"}, "metrics": {"accuracy": 0.9}, "head_metrics": {"accuracy": 0.85},
           "start_metrics": {"val_accuracy": 0.86, "val_loss": 0.3}, "history": [{"epoch": 1}], "best_epoch": 1,
           "model_file": "model.keras", "input_size": 32}
    record = RunMeta.from_json(raw)
    assert record.is_finetuned and record.start_metrics["val_accuracy"] == 0.86 and record.input_size == 32
    out = record.to_json()
    assert {k: out[k] for k in raw} == raw
    assert np.isclose(record.val_accuracy, 0.9)

