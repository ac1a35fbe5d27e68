"""Fine-tune: warm start, exactly-N unfreezing with BatchNorm frozen, the head's split,
crash-safe resume, and the real-asset check on hymenoptera."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import HYMENOPTERA, REPO_ROOT, WEIGHTS_035, make_class_folders, needs_assets


@pytest.fixture(scope="module")
def bn_model_file(tmp_path_factory) -> Path:
    """A small user backbone with BatchNorm layers (O(1) random features), 32 px input."""
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(11)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv_a")(x)
    x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, strides=2, name="conv_b")(x)
    x = keras.layers.BatchNormalization(name="bn_b")(x)
    x = keras.layers.ReLU(name="features")(x)
    path = tmp_path_factory.mktemp("bn_model") / "bn.keras"
    keras.Model(inputs, x, name="bn_backbone").save(path)
    return path


@pytest.fixture(scope="module")
def head_run(tmp_path_factory, bn_model_file):
    """Images -> cache -> a dense head run, through the CLI, once for this module."""
    from headstart import cli

    work = tmp_path_factory.mktemp("ft")
    images = work / "imgs"
    make_class_folders(images, per_class=10, size=(32, 32), split="train")
    make_class_folders(images, per_class=4, size=(32, 32), split="val", seed=1)
    cache, run = work / "c.h5", work / "runs" / "head"
    assert cli.main(["embed", "run", str(images), "-b", str(bn_model_file), "--cache", str(cache), "-q"]) == 0
    assert cli.main(["head", "train", "--cache", str(cache), "--epochs", "20", "--hidden", "16",
                     "--out", str(run), "--seed", "0", "--quiet"]) == 0
    return {"work": work, "images": images, "cache": cache, "run": run}


def _finetune(run_cli, head_run, out, *extra):
    code, stdout, err = run_cli("finetune", "--from", head_run["run"], "--out", out, "--json", *extra)
    assert code == 0, err
    return json.loads(stdout)


def test_warm_start_unfreezes_exactly_n_and_keeps_batchnorm_frozen(tmp_path, run_cli, head_run):
    from headstart.embedder.tf_runtime import import_keras

    report = _finetune(run_cli, head_run, tmp_path / "ft", "--unfreeze", "1", "--epochs", "2", "--lr", "1e-2",
                       "--no-augment")
    # Before the first step the composed network reproduced the head on cached features.
    assert report["warm_start"]["images"] > 0
    assert report["warm_start"]["probability_max_abs_diff"] < 1e-2
    assert report["unfrozen_layers"] == ["conv_b"]
    keras = import_keras()
    tuned = keras.models.load_model(tmp_path / "ft" / "model.keras")
    layers = {l.name: l for l in _leaves(tuned)}
    assert layers["conv_b"].trainable and not layers["conv_a"].trainable
    assert not layers["bn_a"].trainable and not layers["bn_b"].trainable
    user = {l.name: l for l in _leaves(keras.models.load_model(_bn_source(head_run)))}
    # conv_a frozen: unchanged; conv_b trained at lr 1e-2: changed; BN statistics untouched
    np.testing.assert_array_equal(layers["conv_a"].get_weights()[0], user["conv_a"].get_weights()[0])
    assert not np.allclose(layers["conv_b"].get_weights()[0], user["conv_b"].get_weights()[0])
    for name in ("bn_a", "bn_b"):
        for got, want in zip(layers[name].get_weights(), user[name].get_weights()):
            np.testing.assert_array_equal(got, want)
    meta = json.loads((tmp_path / "ft" / "head.json").read_text())
    assert meta["kind"] == "finetuned" and meta["finetuned_from"] == str(head_run["run"])
    for name in ("metrics.json", "confusion.png", "misclassified.csv", "model.keras"):
        assert (tmp_path / "ft" / name).exists(), name
    assert not (tmp_path / "ft" / "checkpoint").exists()


def _leaves(model):
    out = []
    for layer in model.layers:
        out.extend(_leaves(layer) if getattr(layer, "layers", None) else [layer])
    return out


def _bn_source(head_run) -> Path:
    from headstart.embedder.cache import open_cache

    return Path(open_cache(head_run["cache"]).attrs["backbone_source"])


def test_unfreeze_is_clamped_with_a_warning(tmp_path, run_cli, head_run):
    report = _finetune(run_cli, head_run, tmp_path / "ft", "--unfreeze", "99", "--epochs", "1")
    assert report["unfrozen_layers"] == ["conv_a", "conv_b"] and report["unfreeze_clamped"]
    assert any("exceeds" in w for w in report["warnings"])


def test_validation_images_are_never_trained_on(head_run):
    from headstart.embedder.cache import open_cache
    from headstart.heads.finetune import FinetuneReport, _select_examples
    from headstart.heads.runs import load_run
    from headstart.heads.splits import assign_splits

    cache, run = open_cache(head_run["cache"]), load_run(head_run["run"])
    train, val = _select_examples(cache, run, cache.images_root, FinetuneReport("", ""))
    assert not set(train.keys) & set(val.keys)
    split = run.meta["split"]
    file_splits = assign_splits(cache.keys[cache.rows], cache.labels, cache.splits,
                                val_fraction=split["val_fraction"], seed=split["seed"])
    head_val = {str(k) for k, s in zip(cache.keys[cache.rows], file_splits) if s == "val"}
    assert set(val.keys) == head_val and len(val.keys) == 8


def test_unfreeze_counts_weight_layers_of_a_registry_backbone():
    from headstart.embedder.backbones import BackboneConfig, build_backbone, resolve
    from headstart.embedder.tf_runtime import import_keras
    from headstart.heads.finetune import unfreeze_top, weight_layers

    keras = import_keras()
    backbone = build_backbone(resolve(BackboneConfig("ResNet50", weights="none", image_size=32)))
    names, clamped = unfreeze_top(backbone, 4)
    assert not clamped and len(names) == 4
    trainable = [l for l in _leaves(backbone) if l.trainable and l.weights]
    assert [l.name for l in trainable] == names  # exactly those four
    assert not any(isinstance(l, keras.layers.BatchNormalization) and l.trainable for l in _leaves(backbone))
    assert all(not l.name.startswith("headstart_preprocess") for l in weight_layers(backbone))


def test_bad_input(tmp_path, run_cli, head_run):
    code, _, err = run_cli("finetune", "--from", tmp_path / "nope")
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("finetune", "--from", head_run["run"], "--images", tmp_path / "gone", "--out", tmp_path / "o")
    assert code == 2 and "images folder" in err and "gone" in err
    code, _, err = run_cli("finetune", "--runs-dir", tmp_path / "empty_runs")
    assert code == 2
    code, _, err = run_cli("finetune", "--resume", "--runs-dir", tmp_path)
    assert code == 2 and "no unfinished fine-tune" in err
    sk = tmp_path / "logreg"
    assert run_cli("head", "train", "--cache", head_run["cache"], "--head", "logreg", "--out", sk, "-q")[0] == 0
    code, _, err = run_cli("finetune", "--from", sk, "--out", tmp_path / "o2")
    assert code == 2 and "train a dense head first" in err


@pytest.mark.slow
@pytest.mark.subprocess
def test_resume_after_kill_9(tmp_path, head_run):
    out = tmp_path / "ft"
    cmd = [sys.executable, "-c", "import sys; from headstart import cli; sys.exit(cli.main())", "finetune", "--from", str(head_run["run"]),
           "--out", str(out), "--epochs", "6", "--patience", "99", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = out / "checkpoint" / "state.json"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["epochs_done"] >= 1:
            break
        time.sleep(0.01)
    running = proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert running, proc.stderr.read().decode()[-800:]
    done = json.loads(state.read_text())["epochs_done"]
    assert 1 <= done < 6 and not (out / "head.json").exists()

    resumed = subprocess.run([*cmd[:3], "finetune", "--resume", "--out", str(out), "--json"],
                             cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["resumed_from_epoch"] == done
    assert [h["epoch"] for h in report["history"]] == [1, 2, 3, 4, 5, 6]
    assert (out / "head.json").exists() and not (out / "checkpoint").exists()


@pytest.mark.slow
@needs_assets
def test_hymenoptera_finetune_keeps_val_accuracy(tmp_path, run_cli):
    """MobileNetV2 alpha 0.35: 2 epochs of fine-tuning from the dense head do not cost
    more than 1 point of val accuracy."""
    cache, head = tmp_path / "hy.h5", tmp_path / "runs" / "head"
    code, _, err = run_cli("embed", "run", HYMENOPTERA, "-b", "MobileNetV2", "--alpha", "0.35",
                           "--weights", WEIGHTS_035, "--cache", cache, "-q")
    assert code == 0, err
    assert run_cli("head", "train", "--cache", cache, "--out", head, "--seed", "0", "-q")[0] == 0
    head_acc = json.loads((head / "head.json").read_text())["metrics"]["accuracy"]
    report = _finetune(run_cli, {"run": head}, tmp_path / "ft", "--epochs", "2", "--unfreeze", "4")
    assert report["val_images"] == 153
    assert report["metrics"]["accuracy"] >= head_acc - 0.01, (head_acc, report["metrics"])


def test_the_kept_model_is_never_worse_than_the_warm_start(tmp_path, run_cli, head_run):
    """A learning rate so large that the first step overflows the weights (lr 1.0 was not enough
    once the pixels were antialiased: a lucky epoch scored val loss 0): no epoch beats epoch 0
    (the warm start, evaluated before any step), so the starting head's network is kept."""
    code, out, err = run_cli("finetune", "--from", head_run["run"], "--out", tmp_path / "ft", "--unfreeze", "2",
                             "--epochs", "2", "--lr", "1e30", "--no-augment", "--patience", "5")
    assert code == 0, err
    assert "kept the warm start (no epoch beat it)" in out and "at the start" in out, (out, err)
    meta = json.loads((tmp_path / "ft" / "head.json").read_text())
    assert meta["best_epoch"] == 0 and meta["epochs_run"] == 2
    start, final = meta["start_metrics"], meta["metrics"]
    assert final["accuracy"] == pytest.approx(start["val_accuracy"])
    assert final["log_loss"] == pytest.approx(start["val_loss"], rel=1e-3, abs=1e-4)
    assert all(h["val_accuracy"] <= start["val_accuracy"] for h in meta["history"])
    assert meta["head_metrics"]["accuracy"] == json.loads((head_run["run"] / "head.json").read_text())["metrics"]["accuracy"]

    report = _finetune(run_cli, head_run, tmp_path / "ft2", "--unfreeze", "1", "--epochs", "1", "--no-augment")
    assert set(report["start_metrics"]) == {"val_loss", "val_accuracy"}
    assert report["metrics"]["accuracy"] >= report["start_metrics"]["val_accuracy"]


def test_a_refused_or_killed_finetune_leaves_nothing_in_the_way(tmp_path, run_cli, head_run):
    out = tmp_path / "ft"
    code, _, err = run_cli("finetune", "--from", head_run["run"], "--images", tmp_path / "gone", "--out", out)
    assert code == 2 and "images folder" in err
    assert not out.exists()  # refused after the folder was made: removed again

    # killed between creating the folder and its first state: neither --resume nor a fresh run is stuck
    (out / "checkpoint").mkdir(parents=True)
    code, _, err = run_cli("finetune", "--resume", "--out", out)
    assert code == 2 and "stopped before its first epoch" in err and "without --resume" in err
    report = _finetune(run_cli, head_run, out, "--epochs", "1", "--unfreeze", "1", "--no-augment")
    assert report["epochs_run"] == 1 and not (out / "checkpoint").exists()

    # killed before its first epoch ended: --resume starts it from the beginning
    from headstart.heads.finetune import FinetuneOptions, _prepare_run_dir, _start_run_dir

    again = tmp_path / "again"
    run_dir, state = _prepare_run_dir(FinetuneOptions(from_run=head_run["run"], out=again, epochs=1, unfreeze=1,
                                                      augment=False), None)
    state["options"]["from_run"] = str(head_run["run"])
    _start_run_dir(run_dir, state)
    code, stdout, err = run_cli("finetune", "--resume", "--out", again, "--json")
    assert code == 0, err
    assert json.loads(stdout)["epochs_run"] == 1 and (again / "head.json").exists()
