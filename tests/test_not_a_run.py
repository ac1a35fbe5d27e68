"""A folder that is not a run (a sweep's folder, runs/ itself, a cache folder, a file) is named
for what it is, with what to pass instead: one line, exit 2, from every command taking a run."""

from __future__ import annotations

import json

import pytest


def _fake_run(folder, accuracy):
    folder.mkdir(parents=True)
    (folder / "head.json").write_text(json.dumps({"kind": "head", "head_type": "logreg", "classes": ["a", "b"],
                                                  "metrics": {"accuracy": accuracy}}))
    return folder


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    _fake_run(root / "20260101-120000-dense", 0.80)
    sweep = root / "20260102-090000-sweep"
    _fake_run(sweep / "01-dense", 0.85)
    _fake_run(sweep / "02-logreg", 0.91)
    return root, sweep


def _error(path):
    from headstart.heads.runs import RunError, load_run

    with pytest.raises(RunError) as caught:
        load_run(path)
    return str(caught.value)


def test_a_sweep_folder_and_the_runs_folder_point_at_their_best_run(runs):
    root, sweep = runs
    message = _error(sweep)
    assert message.startswith(f"{sweep} is a sweep's folder holding 2 runs, not a run")
    assert f"e.g. {sweep / '02-logreg'} (the best by val accuracy)" in message
    assert f"head list --runs-dir {sweep}" in message
    message = _error(root)
    assert message.startswith(f"{root} is a folder of runs holding 3 runs, not a run")
    assert str(sweep / "02-logreg") in message


def test_cache_folders_files_and_unfinished_work_say_what_they_are(tmp_path):
    caches = tmp_path / "cache"
    caches.mkdir()
    (caches / "photos-1a2b-MobileNetV2.h5").write_bytes(b"\x89HDF")
    assert _error(caches).startswith(f"{caches} is a cache folder (1 .h5 cache, e.g. photos-1a2b-MobileNetV2.h5)")
    assert "--cache" in _error(caches)
    assert "a cache?" in _error(caches / "photos-1a2b-MobileNetV2.h5")

    run = _fake_run(tmp_path / "runs" / "one", 0.5)
    (run / "model.npz").write_bytes(b"")
    assert _error(run / "model.npz") == f"{run / 'model.npz'} is a file of run {run}; pass the run folder itself: {run}"

    finetune = tmp_path / "runs" / "ft"
    (finetune / "checkpoint").mkdir(parents=True)
    (finetune / "checkpoint" / "state.json").write_text("{}")
    assert f"finetune --resume --out {finetune}" in _error(finetune)

    unfinished = tmp_path / "runs" / "killed"
    unfinished.mkdir()
    (unfinished / "metrics.json").write_text("{}")
    assert "is incomplete: it has no head.json" in _error(unfinished)  # as before
    assert _error(tmp_path / "nowhere") == f"run folder not found: {tmp_path / 'nowhere'}"


@pytest.mark.parametrize("command", [["report"], ["export", "--out", "x"], ["predict", "--run"], ["eval"]])
def test_every_command_taking_a_run_says_it_in_one_line(tmp_path, run_cli, runs, command):
    root, sweep = runs
    image = tmp_path / "img.png"
    image.write_bytes(b"")
    args = [*command, sweep] + ([image] if command[0] in ("predict", "eval") else [])
    if command[0] == "predict":
        args = ["predict", image, "--run", sweep]
    code, out, err = run_cli(*args)
    assert code == 2 and out == ""
    assert err.strip().count("\n") == 0 and "is a sweep's folder holding 2 runs" in err
