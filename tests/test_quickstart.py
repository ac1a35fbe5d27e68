"""examples/quickstart.sh, past its install (--no-install: the headstart of this environment):
every step of the flow runs and leaves what the next one and the user need."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["blue_stripes", "green_blobs", "red_waves"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_quickstart_runs_the_whole_flow(tmp_path):
    work = tmp_path / "qs"
    env = dict(os.environ, QUICKSTART_DIR=str(work), HEADSTART_HOME=str(tmp_path / "home"),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.run(["bash", str(REPO / "examples" / "quickstart.sh"), "--no-install"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout

    assert sorted(p.name for p in (work / "images").iterdir()) == CLASSES
    assert len(list((work / "images").rglob("*.jpg"))) == 60 and len(list((work / "new_images").rglob("*.jpg"))) == 24

    # predict: one row per new image, labels among the run's classes
    with open(work / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 24 and {r["label"] for r in rows} <= set(CLASSES)

    # eval on the same images agrees with predict's labels, image by image
    metrics = json.loads((work / "runs" / "dense" / "evals" / "new_images" / "metrics.json").read_text())
    assert metrics["n"] == 24 and metrics["classes"] == CLASSES
    confusion = np.zeros((3, 3), int)
    for r in rows:
        confusion[CLASSES.index(Path(r["path"]).parent.name), CLASSES.index(r["label"])] += 1
    assert np.asarray(metrics["confusion_matrix"]).tolist() == confusion.tolist()
    assert metrics["accuracy"] == pytest.approx(np.trace(confusion) / 24)
    assert (work / "runs" / "dense" / "evals" / "new_images" / "confusion.png").stat().st_size > 0

    # export and report
    assert (work / "model" / "labels.txt").read_text().split() == CLASSES
    assert (work / "model" / "model.keras").stat().st_size > 0
    html = (work / "runs" / "dense" / "report.html").read_text(encoding="utf-8")
    assert "<html" in html.lower() and all(name in html for name in CLASSES)

    # it ends by saying where things are and what to try next, with the headstart on PATH
    tail = out[out.index("Done in"):]
    assert f"everything is in {work}" in tail and "headstart head sweep" in tail and "headstart finetune" in tail
    assert "activate" not in tail  # nothing was installed, so there is no environment to activate
