"""One behaviour everywhere: embed run, predict, eval and finetune show progress bars on a
terminal only (the shared helper, embedder/progress.py), and a resumed embed run's bar
starts at the work its interrupted run had done."""

from __future__ import annotations

import io
import re
import sys

import pytest

from conftest import make_class_folders


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_model_file):
    from headstart import cli

    root = tmp_path_factory.mktemp("bars")
    images = root / "imgs"
    make_class_folders(images, per_class=6, size=(48, 48))
    cache, run = root / "c.h5", root / "run"
    assert cli.main(["embed", "run", str(images), "-b", str(tiny_model_file), "--cache", str(cache), "-q"]) == 0
    assert cli.main(["head", "train", "--cache", str(cache), "--epochs", "3", "--hidden", "8", "--out", str(run),
                     "-q"]) == 0
    return {"root": root, "images": images, "cache": cache, "run": run, "model": tiny_model_file}


def _bars(run_cli, monkeypatch, *args) -> tuple[str, str]:
    """What a command draws on a terminal, and on a pipe (run_cli's captured stderr)."""
    code, _, piped = run_cli(*args)
    assert code == 0, piped
    terminal = _Terminal()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", terminal)
        code, _, _ = run_cli(*args)
    assert code == 0
    return terminal.getvalue(), piped


@pytest.mark.parametrize("command,label", [("predict", "predicting"), ("eval", "evaluating")])
def test_predict_and_eval_bars_only_on_a_terminal(tmp_path, run_cli, monkeypatch, work, command, label):
    new = tmp_path / "new"  # images the run never saw (eval says so otherwise, exit 1)
    make_class_folders(new, per_class=6, size=(48, 48), seed=9)
    args = [command, "--run", work["run"], new, "--no-cache", "-o", tmp_path / "p.csv"] \
        if command == "predict" else [command, work["run"], new, "--no-cache", "-o", tmp_path / "e"]
    shown, piped = _bars(run_cli, monkeypatch, *args)
    if command == "eval":  # the second run writes beside the first
        assert (tmp_path / "e" / "metrics.json").is_file()
    assert label in shown and "/12 " in shown
    assert label not in piped and "\r" not in piped


def test_finetune_epoch_bars_only_on_a_terminal(tmp_path, run_cli, monkeypatch, work):
    code, _, piped = run_cli("finetune", "--from", work["run"], "--out", tmp_path / "a", "--epochs", "1",
                             "--unfreeze", "1", "--no-augment")
    assert code == 0, piped
    terminal = _Terminal()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", terminal)
        code, _, _ = run_cli("finetune", "--from", work["run"], "--out", tmp_path / "b", "--epochs", "1",
                             "--unfreeze", "1", "--no-augment")
    assert code == 0
    assert "epoch 1/1" in terminal.getvalue() and "batch" in terminal.getvalue()
    assert "epoch 1/1:" not in piped and "\r" not in piped  # the per-epoch log line stays, the bar does not


def test_a_resumed_embed_run_bar_starts_at_the_resumed_count(tmp_path, run_cli, monkeypatch, work):
    from headstart.embedder.cache import CacheWriter, open_cache

    images = tmp_path / "imgs"
    make_class_folders(images, per_class=6, size=(48, 48), seed=3)
    cache = tmp_path / "c.h5"
    writes = {"n": 0}
    original = CacheWriter.add_part

    def interrupted(self, *args, **kwargs):  # the first batch is durable, then the job dies
        if writes["n"] == 1:
            raise KeyboardInterrupt
        writes["n"] += 1
        return original(self, *args, **kwargs)

    args = ["embed", "run", images, "-b", work["model"], "--cache", cache, "--batch-size", "4"]
    with monkeypatch.context() as patch:
        patch.setattr(CacheWriter, "add_part", interrupted)
        code, _, err = run_cli(*args)
    assert code == 130, err
    terminal = _Terminal()
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stderr", terminal)
        code, _, _ = run_cli(*args)
    assert code == 0 and open_cache(cache).num_rows == 12
    counts = re.findall(r"embedding:.*?\| *(\d+)/(\d+)", terminal.getvalue())
    assert counts[0] == ("4", "12")  # 4 done before the interruption, of 12 (not 0 of the 8 left)
    assert all(int(done) >= 4 and total == "12" for done, total in counts)
