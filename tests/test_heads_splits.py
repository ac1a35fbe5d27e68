"""Splits: a pure function of content keys and a seed (stable, leak-free, reproducible)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from headstart.embedder.errors import UsageError
from headstart.heads.data import load_labelled
from headstart.heads.splits import assign_splits, split_source
from feature_caches import key_of, make_cache


def _keys(n, start=0):
    return [key_of(f"img-{i}") for i in range(start, start + n)]


def test_adding_images_never_moves_old_ones_across_the_line():
    old = _keys(500)
    before = assign_splits(old, [i % 3 for i in range(500)], [""] * 500, val_fraction=0.2, seed=3)
    grown = old + _keys(1500, start=500)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(grown))  # order of the listing must not matter either
    shuffled = [grown[i] for i in order]
    after = assign_splits(shuffled, [0] * len(grown), [""] * len(grown), val_fraction=0.2, seed=3)
    by_key = dict(zip(shuffled, after))
    assert [by_key[k] for k in old] == list(before)


def test_same_bytes_under_two_paths_land_on_the_same_side():
    keys = _keys(300)
    doubled = keys + keys[::-1]
    splits = assign_splits(doubled, [0] * 600, [""] * 600, val_fraction=0.5, seed=0)
    by_key: dict[str, set] = {}
    for key, split in zip(doubled, splits):
        by_key.setdefault(key, set()).add(split)
    assert all(len(s) == 1 for s in by_key.values())


def test_each_class_gets_about_the_fraction_and_the_seed_reshuffles():
    keys = _keys(3000)
    labels = np.arange(3000) % 3
    a = assign_splits(keys, labels, [""] * 3000, val_fraction=0.25, seed=0)
    for c in range(3):
        share = np.mean(a[labels == c] == "val")
        assert 0.21 < share < 0.29
    b = assign_splits(keys, labels, [""] * 3000, val_fraction=0.25, seed=1)
    assert 0.3 < np.mean(a != b) < 0.45  # independent draws disagree ~2*0.25*0.75 of the time
    again = assign_splits(keys, labels, [""] * 3000, val_fraction=0.25, seed=0)
    assert list(again) == list(a)
    relabelled = assign_splits(keys, (labels + 1) % 3, [""] * 3000, val_fraction=0.25, seed=0)
    assert list(relabelled) == list(a)  # a label fix does not move an image


def test_layout_splits_are_used_as_given():
    keys = _keys(6)
    given = ["train", "val", "test", "", "train", "val"]
    keys_dup = keys + [keys[0], keys[2]]  # the same bytes also filed under val and train
    given_dup = given + ["val", "train"]
    out = assign_splits(keys_dup, [0] * 8, given_dup, val_fraction=0.2, seed=0)
    assert list(out[:6]) == ["val", "val", "test", "train", "train", "val"]  # '' trains; most held-out wins
    assert out[6] == "val" and out[7] == "test"
    assert split_source(given) == "layout"


def test_layout_without_val_carves_validation_from_train_only():
    keys = _keys(1000)
    given = ["test" if i % 5 == 0 else "train" for i in range(1000)]
    out = assign_splits(keys, [0] * 1000, given, val_fraction=0.3, seed=0)
    assert split_source(given) == "layout+hash"
    assert all(o == "test" for o, g in zip(out, given) if g == "test")
    carved = np.mean([o == "val" for o, g in zip(out, given) if g == "train"])
    assert 0.25 < carved < 0.35


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5])
def test_val_fraction_must_be_a_fraction(bad):
    with pytest.raises(UsageError, match="--val-fraction"):
        assign_splits(_keys(3), [0] * 3, [""] * 3, val_fraction=bad)


def test_rows_dedupe_files_and_conflicting_labels_are_excluded(tmp_path):
    dup = key_of("0-ants-0")
    cache = make_cache(tmp_path / "c.h5", per_class=10, dim=4, extra=[
        ("ants/copy.jpg", dup, 0, "", np.zeros(4)),  # same bytes, same class: one row
        ("bees/clash.jpg", key_of("0-ants-1"), 1, "", np.zeros(4)),  # same bytes, other class: conflict
        ("loose.jpg", key_of("loose"), -1, "", np.ones(4)),  # unlabelled
    ])
    data = load_labelled(cache, val_fraction=0.2, seed=0)
    assert len(data.keys) == 31 and data.num_files == 33
    assert len(data.rows()) == 29  # 30 labelled rows, one of them in conflict
    row = list(data.keys).index(key_of("0-ants-1"))
    assert data.labels[row] == -1
    assert data.conflicts[0]["labels"] == ["ants", "bees"]
    record = data.split_record()
    assert record["excluded"] == {"unlabelled": 1, "label_conflicts": 1}
    assert record["source"] == "hash" and sum(record["counts"].values()) == 29
    # the split of every file agrees with the contract function applied per file
    from headstart.embedder.cache import open_cache

    opened = open_cache(cache)
    per_file = assign_splits(opened.keys[opened.rows], opened.labels, opened.splits, 0.2, 0)
    for row_index, split in zip(opened.rows, per_file):
        assert data.splits[row_index] == split


# ---------------------------------------------------------------- one split for every stage


def _layout_cache(tmp_path):
    """Real image files (keys are their content hashes) in train/ and test/ folders; the only
    val/ image has the same bytes as a test/ image. Head train sees no val row (the bytes go
    to test, the most held-out), so it carves validation rows out of train by hash."""
    import shutil

    from conftest import make_class_folders
    from headstart.embedder.cache import FileRecord, write_cache
    from headstart.embedder.hashing import hash_files

    root = tmp_path / "images"
    make_class_folders(root, classes=("a", "b"), per_class=12, size=(32, 32), split="train")
    make_class_folders(root, classes=("a", "b"), per_class=2, size=(32, 32), split="test", seed=1)
    twin = sorted((root / "test" / "a").iterdir())[0]
    (root / "val" / "a").mkdir(parents=True)
    shutil.copy(twin, root / "val" / "a" / "twin.jpg")
    files = sorted(p for p in root.rglob("*.jpg"))
    keys = [str(k) for k in hash_files(files)]
    rows = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    rng = np.random.default_rng(0)
    labels = [0 if p.parent.name == "a" else 1 for p in files]
    features = np.zeros((len(rows), 8), np.float32)
    for key, label in zip(keys, labels):
        features[rows[key]] = rng.normal(label * 2.0, 1.0, 8)
    records = [FileRecord(str(p.relative_to(root)), k, lab, p.relative_to(root).parts[0])
               for p, k, lab in zip(files, keys, labels)]
    cache = tmp_path / "c.h5"
    write_cache(cache, {"architecture": "TestNet", "weights": "none:seed=0"}, list(rows), features, records,
                ["a", "b"], root, dtype="float32")
    return cache, root


def test_finetune_holds_out_exactly_the_content_keys_head_train_held_out(tmp_path, run_cli):
    from headstart.embedder.cache import open_cache
    from headstart.heads.finetune import FinetuneReport, _select_examples
    from headstart.heads.runs import load_run

    cache, root = _layout_cache(tmp_path)
    code, _, err = run_cli("head", "train", "--cache", cache, "--head", "logreg", "--C", "1", "--seed", "4",
                           "--out", tmp_path / "run", "-q")
    assert code == 0, err
    split = json.loads((tmp_path / "run" / "head.json").read_text())["split"]
    assert split["source"] == "layout+hash" and split["seed"] == 4
    data = load_labelled(cache, split["val_fraction"], split["seed"])
    head_val = {str(k) for k in data.keys[data.rows("val")]}
    head_train = {str(k) for k in data.keys[data.rows("train")]}
    assert head_val and split["counts"]["val"] == len(head_val)
    train, val = _select_examples(open_cache(cache), load_run(tmp_path / "run"), root, FinetuneReport("", ""))
    assert set(val.keys) == head_val and set(train.keys) == head_train


def test_eval_and_finetune_read_a_runs_split_by_one_rule(tmp_path, run_cli):
    """A head.json whose split lacks seed and fraction falls back to its params, everywhere."""
    cache = make_cache(tmp_path / "c.h5", per_class=30)
    code, out, err = run_cli("head", "train", "--cache", cache, "--head", "knn", "--seed", "3", "--val-fraction", "0.35",
                             "--out", tmp_path / "run", "--json")
    assert code == 0, err
    recorded = json.loads(out)["metrics"]
    meta = json.loads((tmp_path / "run" / "head.json").read_text())
    del meta["split"]["seed"], meta["split"]["val_fraction"]
    (tmp_path / "run" / "head.json").write_text(json.dumps(meta))
    code, out, err = run_cli("head", "eval", tmp_path / "run", "--json", "--out", tmp_path / "ev")
    assert code == 0, err
    assert json.loads(out)["metrics"]["n"] == recorded["n"]
    assert json.loads(out)["metrics"]["accuracy"] == pytest.approx(recorded["accuracy"])
