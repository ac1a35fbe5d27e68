"""--tensorboard on head train (dense) and finetune: the event files, read back, hold each
epoch's loss and accuracy, train and validation, equal to the run's own history."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_class_folders


def read_scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of every scalar in the event files of ``folder``; each is checked
    to be marked as a TensorBoard scalar (the scalars plugin)."""
    from tensorflow.core.util import event_pb2

    from headstart.embedder.tf_runtime import import_tf

    tf = import_tf()
    found: dict[str, dict[int, float]] = {}
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder}"
    for path in files:
        for record in tf.data.TFRecordDataset(str(path)):
            event = event_pb2.Event.FromString(record.numpy())
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                found.setdefault(value.tag, {})[int(event.step)] = float(tf.make_ndarray(value.tensor))
    return found


@pytest.fixture(scope="module")
def cache(tmp_path_factory, tiny_model_file):
    from headstart import cli

    work = tmp_path_factory.mktemp("tb")
    images = work / "imgs"
    make_class_folders(images, per_class=8, size=(48, 48), split="train")
    make_class_folders(images, per_class=4, size=(48, 48), split="val", seed=1)
    path = work / "c.h5"
    assert cli.main(["embed", "run", str(images), "-b", str(tiny_model_file), "--cache", str(path), "-q"]) == 0
    return path


def _history(run):
    return json.loads((run / "metrics.json").read_text())["history"]


def test_dense_head_writes_each_epochs_scalars(tmp_path, run_cli, cache):
    run, logs = tmp_path / "runs" / "dense", tmp_path / "tb"
    code, out, err = run_cli("head", "train", "--cache", cache, "--epochs", "5", "--patience", "0", "--hidden", "8",
                             "--out", run, "--tensorboard", logs, "--json")
    assert code == 0, err
    assert json.loads(out)["tensorboard"] == str(logs / "dense")
    history = _history(run)
    train, validation = read_scalars(logs / "dense" / "train"), read_scalars(logs / "dense" / "validation")
    assert set(train) == set(validation) == {"epoch_loss", "epoch_accuracy"}
    for scalars, prefix in ((train, ""), (validation, "val_")):
        assert sorted(scalars["epoch_loss"]) == [1, 2, 3, 4, 5]  # epochs as history.png counts them
        np.testing.assert_allclose([scalars["epoch_loss"][e] for e in range(1, 6)], history[prefix + "loss"],
                                   rtol=1e-6)
        np.testing.assert_allclose([scalars["epoch_accuracy"][e] for e in range(1, 6)], history[prefix + "accuracy"],
                                   rtol=1e-6)

    code, out, err = run_cli("head", "train", "--cache", cache, "--epochs", "2", "--hidden", "8",
                             "--out", tmp_path / "runs" / "second", "--tensorboard", logs)
    assert code == 0, err
    assert f"tensorboard: {logs / 'second'}/ (view: tensorboard --logdir {logs})" in out
    assert sorted(p.name for p in logs.iterdir()) == ["dense", "second"]  # one folder per run, side by side


def test_a_head_without_epochs_refuses_tensorboard(tmp_path, run_cli, cache):
    code, out, err = run_cli("head", "train", "--cache", cache, "--head", "logreg", "--tensorboard", tmp_path / "tb")
    assert code == 2 and "logreg head is fit in one go" in err and "--head dense" in err
    assert not (tmp_path / "tb").exists()


def test_finetune_writes_the_warm_start_and_each_epoch(tmp_path, run_cli, cache):
    head = tmp_path / "runs" / "head"
    assert run_cli("head", "train", "--cache", cache, "--epochs", "5", "--hidden", "8", "--out", head, "-q")[0] == 0
    ft, logs = tmp_path / "runs" / "ft", tmp_path / "tb"
    code, out, err = run_cli("finetune", "--from", head, "--out", ft, "--epochs", "2", "--patience", "5",
                             "--unfreeze", "1", "--no-augment", "--tensorboard", logs, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["tensorboard"] == str(logs / "ft")
    train, validation = read_scalars(logs / "ft" / "train"), read_scalars(logs / "ft" / "validation")
    epochs = report["history"]
    assert sorted(train["epoch_loss"]) == [1, 2] and sorted(validation["epoch_loss"]) == [0, 1, 2]
    assert validation["epoch_loss"][0] == pytest.approx(report["start_metrics"]["val_loss"], rel=1e-6)
    assert validation["epoch_accuracy"][0] == pytest.approx(report["start_metrics"]["val_accuracy"], rel=1e-6)
    for entry in epochs:
        e = entry["epoch"]
        assert train["epoch_loss"][e] == pytest.approx(entry["loss"], rel=1e-6)
        assert train["epoch_accuracy"][e] == pytest.approx(entry["accuracy"], rel=1e-6)
        assert validation["epoch_loss"][e] == pytest.approx(entry["val_loss"], rel=1e-6)
        assert validation["epoch_accuracy"][e] == pytest.approx(entry["val_accuracy"], rel=1e-6)
