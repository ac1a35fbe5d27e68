"""Real photos: hymenoptera embedded with ImageNet MobileNetV2 (alpha 1.0, 224 px).

The published anchor for feature extraction on this set is 0.93-0.95 val accuracy; the
default dense head must reach 0.93 on the val folder (the layout's split). Skips cleanly
without ../shared/assets.
"""

from __future__ import annotations

import json

import pytest

from conftest import HYMENOPTERA, WEIGHTS_100, needs_assets

pytestmark = [needs_assets, pytest.mark.skipif(not WEIGHTS_100.is_file(), reason=f"{WEIGHTS_100} not found")]


@pytest.fixture(scope="module")
def hymenoptera_cache(tmp_path_factory):
    from headstart import cli

    cache = tmp_path_factory.mktemp("hy") / "hymenoptera.h5"
    assert cli.main(["embed", "run", str(HYMENOPTERA), "-b", "MobileNetV2", "--weights", str(WEIGHTS_100),
                     "--image-size", "224", "--cache", str(cache), "-q"]) == 0
    return cache


def test_default_dense_head_reaches_the_published_accuracy(tmp_path, run_cli, hymenoptera_cache):
    code, out, err = run_cli("head", "train", "--cache", hymenoptera_cache, "--out", tmp_path / "dense", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["split"]["source"] == "layout"
    assert report["split"]["counts"] == {"train": 245, "val": 153, "test": 0}
    assert report["params"]["hidden"] == [1024] and report["params"]["dropout"] == 0.5
    assert report["params"]["epochs"] == 50 and 1 <= report["best_epoch"] <= report["epochs_run"] <= 50
    assert report["metrics"]["accuracy"] >= 0.93, report["metrics"]
    assert report["warnings"] == []


def test_scikit_learn_heads_are_in_the_same_league(tmp_path, run_cli, hymenoptera_cache):
    code, out, err = run_cli("head", "sweep", "--cache", hymenoptera_cache, "--head", "logreg,svm,knn",
                             "--out", tmp_path / "sweep", "--json")
    assert code == 0, err
    accuracy = {r["head"]: r["accuracy"] for r in json.loads(out)["leaderboard"]}
    assert accuracy["logreg"] >= 0.92 and accuracy["svm"] >= 0.92 and accuracy["knn"] >= 0.9, accuracy
