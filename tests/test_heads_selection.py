"""Defaults never pick a run or a cache across data sets (choose_run, resolve_cache, head list)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from headstart.embedder.errors import UsageError
from headstart.heads.choose import choose_run, resolve_cache
from feature_caches import FINGERPRINT, make_cache

OTHER = dict(FINGERPRINT, architecture="OtherNet")


def _train(run_cli, cache, out, *extra):
    code, _, err = run_cli("head", "train", "--cache", cache, "--out", out, "--head", "logreg", "--C", "1", "-q",
                           *extra)
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Caches of two backbones and two class sets, and a head run for each."""
    from headstart import cli

    work = tmp_path_factory.mktemp("sel")
    caches = {
        "testnet": make_cache(work / "testnet.h5", per_class=20),
        "other": make_cache(work / "other.h5", per_class=20, fingerprint=OTHER),
        "cats": make_cache(work / "cats.h5", per_class=20, classes=("cats", "dogs")),
    }
    for name, cache in caches.items():
        out = work / "runs" / name
        assert cli.main(["head", "train", "--cache", str(cache), "--out", str(out), "--head", "logreg", "--C", "1",
                         "-q"]) == 0
    return {"work": work, "runs": work / "runs", **caches}


def test_choose_run_takes_the_run_of_the_data_at_hand(world):
    messages = []
    run = choose_run(world["runs"], cache=world["other"], log=messages.append)
    assert run.path == world["runs"] / "other"
    assert "using run" in messages[0] and "OtherNet" in messages[0]
    assert choose_run(world["runs"], fingerprint=FINGERPRINT, classes=["cats", "dogs"]).path == world["runs"] / "cats"
    assert choose_run(world["runs"], cache=world["testnet"]).path == world["runs"] / "testnet"


def test_choose_run_refuses_to_guess_and_lists_the_candidates(world, tmp_path):
    # Same backbone, two class sets, inputs without labels: no safe default.
    with pytest.raises(UsageError) as refused:
        choose_run(world["runs"], fingerprint=FINGERPRINT, flag="--run RUN")
    message = str(refused.value)
    first, *listed = message.splitlines()
    assert "2 different data sets" in first and "pass --run RUN" in first
    assert {Path(line.split()[0]).name for line in listed} == {"testnet", "cats"}
    assert all("val acc" in line and "classes" in line and "TestNet" in line for line in listed)
    # Nothing given at all: three data sets.
    with pytest.raises(UsageError, match="3 different data sets"):
        choose_run(world["runs"])
    # A backbone no run was trained on: refused, with what is there.
    with pytest.raises(UsageError, match=r"none of the 3 runs .* was trained on this backbone \[NewNet") as none:
        choose_run(world["runs"], fingerprint=dict(FINGERPRINT, architecture="NewNet"), flag="--from RUN")
    assert "--from RUN" in str(none.value) and len(str(none.value).splitlines()) == 4
    with pytest.raises(UsageError, match="no dense head run under"):
        choose_run(world["runs"], head_type="dense", flag="--from RUN")


def test_the_best_of_one_data_set_wins(world, tmp_path, run_cli):
    runs = tmp_path / "runs"
    cache = world["testnet"]
    _train(run_cli, cache, runs / "weak", "--max-iter", "1")
    _train(run_cli, cache, runs / "good")
    accuracies = {p: json.loads((runs / p / "head.json").read_text())["metrics"]["accuracy"] for p in ("weak", "good")}
    best = max(accuracies, key=lambda p: (accuracies[p], p == "good"))
    assert choose_run(runs, cache=cache).path == runs / best


def test_head_eval_without_a_run_uses_the_cache_to_choose(world, run_cli, tmp_path):
    code, out, err = run_cli("head", "eval", "--cache", world["cats"], "--runs-dir", world["runs"],
                             "--out", tmp_path / "ev")
    assert code == 0, err
    assert f"using run {world['runs'] / 'cats'} " in err and out.startswith(f"run {world['runs'] / 'cats'} on ")
    lonely = make_cache(tmp_path / "lonely.h5", per_class=10, fingerprint=dict(FINGERPRINT, architecture="NewNet"))
    code, _, err = run_cli("head", "eval", "--cache", lonely, "--runs-dir", world["runs"])
    assert code == 2 and "none of the 3 head runs" in err and "pass RUN (a run folder)" in err


def test_finetune_without_from_refuses_runs_of_other_data(world, run_cli, tmp_path):
    runs = tmp_path / "runs"
    for name in ("testnet", "other"):
        code, _, err = run_cli("head", "train", "--cache", world[name], "--out", runs / name, "--epochs", "2",
                               "--hidden", "4", "-q")
        assert code == 0, err
    code, _, err = run_cli("finetune", "--runs-dir", runs, "--out", tmp_path / "ft")
    assert code == 2 and "2 different data sets" in err and "pass --from RUN" in err
    assert str(runs / "testnet") in err and str(runs / "other") in err and "OtherNet" in err
    assert not (tmp_path / "ft").exists()


def test_default_cache_refuses_caches_of_two_backbones(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_cache(tmp_path / "cache" / "mine.h5", per_class=20)
    other = make_cache(tmp_path / "cache" / "accident.h5", per_class=20, fingerprint=OTHER)
    for command in (("head", "train"), ("head", "sweep", "--head", "knn"), ("inspect", "outliers")):
        code, _, err = run_cli(*command)
        assert code == 2, (command, err)
        first, *listed = err.strip().splitlines()
        assert "2 different image sets or backbones" in first and "pass --cache PATH" in first
        assert {Path(line.split()[0]).name for line in listed} == {"mine.h5", "accident.h5"}
    assert not (tmp_path / "runs").exists()
    # One group (the same images and backbone, embedded twice): the newest, named in full.
    other.unlink()
    newest = make_cache(tmp_path / "cache" / "again.h5", per_class=20, seed=1)
    os.utime(newest, (1e10, 1e10))
    messages = []
    assert resolve_cache(None, "cache", messages.append).where == Path("cache") / "again.h5"
    assert messages == [f"using cache {Path('cache') / 'again.h5'} (the newest under cache/: images "
                        f"{tmp_path / 'cache' / 'images'}, 60 rows, backbone [TestNet weights=none:seed=0 32px avg "
                        f"float32])"]
    # head eval of a run looks for a cache of the run's own backbone.
    assert resolve_cache(None, "cache", fingerprint=FINGERPRINT).where == Path("cache") / "again.h5"
    with pytest.raises(Exception, match="no cache under cache/ was made with the backbone"):
        resolve_cache(None, "cache", fingerprint=OTHER)


def test_head_list_shows_what_each_run_was_trained_on_and_filters_by_cache(world, run_cli):
    code, out, err = run_cli("head", "list", "--runs-dir", world["runs"])
    assert code == 0, err
    titles = [line for line in out.splitlines() if line.startswith("images ")]
    assert len(titles) == 3  # one block per data set
    assert any("OtherNet" in t and "3 classes: ants, bees, wasps" in t for t in titles)
    assert any("2 classes: cats, dogs" in t for t in titles)
    assert "n val" in out
    code, out, err = run_cli("head", "list", "--runs-dir", world["runs"], "--cache", world["cats"], "--json")
    assert code == 0, err
    (row,) = json.loads(out)["runs"]
    assert row["run"] == "cats" and row["classes"] == ["cats", "dogs"] and row["backbone"].startswith("TestNet")
    assert row["images_root"] and isinstance(row["n_val"], int)


def test_head_list_rows_name_the_data_a_run_was_trained_on(tmp_path, run_cli):
    cache = make_cache(tmp_path / "c.h5", per_class=20)
    code, _, err = run_cli("head", "train", "--cache", cache, "--head", "knn", "--out", tmp_path / "runs" / "r", "-q")
    assert code == 0, err
    code, out, err = run_cli("head", "list", "--runs-dir", tmp_path / "runs", "--json")
    assert code == 0, err
    (row,) = json.loads(out)["runs"]
    assert row["head"] == "knn" and row["classes"] == ["ants", "bees", "wasps"] and row["backbone"].startswith("TestNet")
    assert row["images_root"] == str(tmp_path / "images") and row["n_val"] > 0
