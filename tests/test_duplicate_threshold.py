"""`inspect duplicates` calibrates its threshold on each cache (issue 12 B12).

A fixed 0.90 reported half false pairs where distinct images crowd together (low-resolution
photos, another backbone). The calibrated threshold follows the cache's own nearest-neighbour
distances; `--threshold` still overrides, and the report says which it was.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from feature_caches import key_of
from headstart.embedder.cache import FileRecord, write_cache
from headstart.heads.quality import threshold as calibration
from headstart.heads.quality.commands import inspect_duplicates
from headstart.heads.quality.threshold import DEFAULT_THRESHOLD, MIN_ROWS, calibrate_threshold, nearest_other_cosine

FP = {"architecture": "Test", "weights": "none:seed=0", "input_size": 32, "pooling": "avg"}


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _crowded(rng, n=400, dim=64, spread=0.4):
    """Distinct images whose nearest neighbours sit at cosine ~0.93: many pairs above 0.90."""
    base = rng.normal(size=dim)
    return _unit(base / np.linalg.norm(base) + spread * rng.normal(size=(n, dim)) / np.sqrt(dim))


def _near_copy(rng, row, noise=0.01):
    return row + noise * rng.normal(size=row.shape) / np.sqrt(len(row))


def _write(path, x):
    keys = [key_of(f"{path.stem}-{i}") for i in range(len(x))]
    write_cache(path, FP, keys, x, [FileRecord(f"a/{i}.jpg", k, -1, "") for i, k in enumerate(keys)], [], path.parent)
    return keys


def test_crowded_images_are_not_near_duplicates_but_copies_are(tmp_path):
    rng = np.random.default_rng(0)
    x = _crowded(rng)
    planted = [(k, 390 + k) for k in range(10)]
    for a, b in planted:
        x[b] = _near_copy(rng, x[a])
    x = _unit(x)
    keys = _write(tmp_path / "crowded.h5", x)
    sims = np.triu(x @ x.T, 1)
    assert np.sum(sims >= 0.90) > 100 * len(planted)  # what the fixed default reported

    report = inspect_duplicates(tmp_path / "crowded.h5", out=tmp_path / "d.csv")
    choice = report.threshold_choice
    assert choice["source"] == "calibrated" and report.threshold == choice["value"] > 0.95
    i, j = np.nonzero(sims >= report.threshold)
    assert {frozenset((keys[a], keys[b])) for a, b in zip(i, j)} == {frozenset((keys[a], keys[b])) for a, b in planted}
    assert report.near["pairs"] == len(planted) and report.warnings == []

    given = inspect_duplicates(tmp_path / "crowded.h5", threshold=0.9, out=tmp_path / "d.csv")
    assert given.threshold == 0.9 and given.threshold_choice["source"] == "given"
    assert given.near["pairs"] == int(np.sum(sims >= 0.9))


def test_calibration_barely_moves_when_near_copies_are_mixed_in():
    rng = np.random.default_rng(1)
    x = _crowded(rng, n=600, spread=0.8)
    clean = calibrate_threshold(x, seed=0)
    copies = _unit(np.stack([_near_copy(rng, x[i], 0.05) for i in rng.choice(600, 150, replace=False)]))
    mixed = calibrate_threshold(np.concatenate([x, copies]), seed=0)  # 40% of the rows have a near-copy
    assert clean.source == mixed.source == "calibrated"
    assert abs(mixed.value - clean.value) < 0.01 and mixed.sample_near_copies > 50
    again = calibrate_threshold(x, seed=0)  # deterministic for a seed
    assert (again.value, again.nearest_median, again.nearest_p90) == (clean.value, clean.nearest_median, clean.nearest_p90)


def test_small_caches_use_the_default_and_crowded_features_are_warned_about():
    rng = np.random.default_rng(2)
    small = calibrate_threshold(_crowded(rng, n=MIN_ROWS - 1))
    assert small.source == "default" and small.value == DEFAULT_THRESHOLD and "too few" in small.describe()
    alike = _unit(5.0 + 0.05 * rng.normal(size=(300, 16)))  # one direction for every image
    choice = calibrate_threshold(alike)
    assert choice.value > 0.99 and "barely tell images apart" in choice.warnings[0]


def test_nearest_other_cosine_is_exact_across_column_blocks(monkeypatch):
    monkeypatch.setattr(calibration, "_COLUMNS", 7)
    rng = np.random.default_rng(3)
    x = _unit(rng.normal(size=(50, 8)))
    x[30] = x[3]  # an identical pair: each is the other's nearest, at 1.0
    rows = np.array([0, 3, 6, 7, 30, 49])
    full = x @ x.T
    np.fill_diagonal(full, -np.inf)
    np.testing.assert_allclose(nearest_other_cosine(x, rows), full[rows].max(axis=1), rtol=1e-6)


def test_the_cli_says_how_the_threshold_was_chosen(tmp_path, run_cli):
    rng = np.random.default_rng(4)
    _write(tmp_path / "c.h5", _crowded(rng, n=150))
    code, out, err = run_cli("inspect", "duplicates", "--cache", tmp_path / "c.h5", "--out", tmp_path / "d.csv")
    assert code == 0, err
    line = next(line for line in out.splitlines() if line.startswith("threshold:"))
    assert "calibrated on this cache" in line and "--threshold overrides" in line
    code, out, err = run_cli("inspect", "duplicates", "--cache", tmp_path / "c.h5", "--out", tmp_path / "d.csv",
                             "--threshold", "0.97", "--json")
    report = json.loads(out)
    assert report["threshold"] == 0.97 and report["threshold_choice"]["source"] == "given"
    assert report["threshold_choice"]["text"] == "given by --threshold"


@pytest.mark.parametrize("bad", ["0", "1.5"])
def test_a_bad_threshold_is_still_refused_before_reading(tmp_path, run_cli, bad):
    code, _, err = run_cli("inspect", "duplicates", "--cache", tmp_path / "missing.h5", "--threshold", bad)
    assert code == 2 and "--threshold" in err
