"""``headstart inspect`` at scale: time, peak memory and recall on 100,000 x 1,280 features. Prints JSON.

The synthetic cache (float16, 10 classes) imitates pooled CNN features: the spectrum was
measured on MobileNetV2 (1.0, ImageNet) features of the hymenoptera photos -- 42% of the
energy along the mean direction, the rest falling as a power law (eigenvalue ~ k^-0.95) --
with class offsets along the top axes. Planted in it:

  near pairs   ``--near`` copies of random images, perturbed so that their cosine to the
               original (measured on the stored float16 values) spreads over [0.86, 0.995];
               those >= the threshold are the truth set for recall (no pair may be missed)
  exact        ``--exact`` extra paths of existing images, a tenth of them under another class
  label flips  ``--flips`` images given a wrong label (precision@k of `inspect labels`)
  outliers     ``--outliers`` images drawn far from every class (recall@k of `inspect outliers`)

Each command runs in its own process through the CLI (``headstart inspect ... --json``), so
its wall time includes opening the cache and its peak RSS is its own.

    python benchmarks/inspect_scale.py [--rows 100000] [--dim 1280] [--commands duplicates,labels,outliers,map]

Where near-copies end and distinct photos begin on real photos (the default threshold) is
benchmarks/duplicate_threshold.py's study.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, matmul_peak_gflops, peak_rss_mb, run_child  # noqa: E402

SCRIPT = Path(__file__).resolve()
CLASSES = 10
MEAN_SHARE = 0.42  # energy along the mean direction (measured: 0.424)
ALPHA = 0.95  # power-law decay of the other eigenvalues (measured slope over components 2..200: -0.948)


def spectrum(rng, dim: int):
    """A random orthonormal basis and the standard deviations along its axes 2..dim: the
    measured spectrum of real pooled features (MEAN_SHARE on the first axis, the rest ~k^-ALPHA)."""
    import numpy as np

    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    lam = np.arange(1, dim, dtype=np.float64) ** -ALPHA
    lam *= (1 - MEAN_SHARE) / lam.sum()
    return basis.astype(np.float32), np.sqrt(lam).astype(np.float32)


def draw_features(rng, basis, sd, offsets, cls, count: int, spread: float = 1.0):
    """``count`` feature vectors of classes ``cls``: the mean direction plus class offsets and
    noise along the other axes, rotated into the basis."""
    import numpy as np

    dim = len(basis)
    coords = rng.standard_normal((count, dim - 1), dtype=np.float32) * sd * spread + offsets[cls]
    full = np.empty((count, dim), dtype=np.float32)
    full[:, 0] = np.sqrt(MEAN_SHARE)
    full[:, 1:] = coords
    return full @ basis.T


def make_cache(path: Path, rows: int, dim: int, near: int, exact: int, flips: int, outliers: int,
               threshold: float, seed: int = 0) -> dict:
    """Write the synthetic cache; return the planted truth (as keys and paths)."""
    import hashlib

    import numpy as np

    from headstart.embedder.cache import FileRecord, write_cache

    rng = np.random.default_rng(seed)
    basis, sd = spectrum(rng, dim)
    base = rows - near - outliers
    labels = rng.integers(0, CLASSES, rows)
    offsets = np.zeros((CLASSES, dim - 1), dtype=np.float32)
    offsets[:, :24] = rng.normal(0, 1.2, (CLASSES, 24)) * sd[:24]

    def draw(count, cls, spread=1.0):
        return draw_features(rng, basis, sd, offsets, cls, count, spread)

    features = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, base, 20000):
        stop = min(start + 20000, base)
        features[start:stop] = draw(stop - start, labels[start:stop])
    # near copies: an original plus a perturbation drawn from the same spectrum, scaled
    originals = rng.choice(base, near, replace=False)
    scale = rng.uniform(0.1, 0.55, near).astype(np.float32)
    noise = draw(near, labels[originals]) - np.sqrt(MEAN_SHARE) * basis[:, 0]
    features[base:base + near] = features[originals] + scale[:, None] * noise
    labels[base:base + near] = labels[originals]
    # outliers: far from every class (wide isotropic spread, no class offset)
    out_rows = np.arange(base + near, rows)
    wide = rng.standard_normal((outliers, dim)).astype(np.float32) * float(np.sqrt((1 - MEAN_SHARE) / dim) * 3)
    features[out_rows] = wide + np.sqrt(MEAN_SHARE) * basis[:, 0]
    features = features.astype(np.float16)

    stored = features.astype(np.float32)
    unit = stored / np.linalg.norm(stored, axis=1, keepdims=True)
    cos = np.einsum("ij,ij->i", unit[originals], unit[base:base + near])
    keys = [hashlib.sha256(f"bench-{seed}-{i}".encode()).hexdigest() for i in range(rows)]
    given = labels.copy()
    flipped = rng.choice(base, flips, replace=False)
    given[flipped] = (labels[flipped] + rng.integers(1, CLASSES, flips)) % CLASSES
    files = [FileRecord(f"class_{given[i]:02d}/img_{i:06d}.jpg", keys[i], int(given[i]), "") for i in range(rows)]
    copies = rng.choice(base, exact, replace=False)
    conflicts = set(copies[: exact // 10].tolist())
    for i in copies:
        label = (given[i] + 1) % CLASSES if i in conflicts else given[i]
        files.append(FileRecord(f"copies/class_{label:02d}/dup_{i:06d}.jpg", keys[i], int(label), ""))
    if path.exists():
        path.unlink()
    write_cache(path, {"architecture": "synthetic-cnn-spectrum", "weights": "none", "input_size": 224,
                       "pooling": "avg", "compute_dtype": "float32"}, keys, features, files,
                [f"class_{c:02d}" for c in range(CLASSES)], path.parent, dtype="float16")
    truth = [(keys[a], keys[base + k]) for k, a in enumerate(originals) if cos[k] >= threshold]
    return {
        "near_planted": int(near), "near_planted_above_threshold": len(truth),
        "near_planted_cosine_range": [float(cos.min()), float(cos.max())],
        "near_truth": [sorted(p) for p in truth],
        "flipped_paths": [files[i].path for i in flipped],
        "outlier_paths": [files[i].path for i in out_rows],
        "exact_extra_files": int(exact), "conflicts": len(conflicts),
    }


def child(command: str, cache: str, out_dir: str, extra: list[str]) -> None:
    from headstart import cli

    out = Path(out_dir) / {"duplicates": "dups.csv", "labels": "labels.csv", "outliers": "outliers.csv",
                           "map": "map.png"}[command]
    buffer = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(["inspect", command, "--cache", cache, "--out", str(out), "--json", *extra])
    wall = time.perf_counter() - started
    print(json.dumps({"command": command, "exit_code": code, "wall_s": round(wall, 2),
                      "peak_rss_mb": round(peak_rss_mb(), 1), "report": json.loads(buffer.getvalue())}))


def main() -> None:
    if sys.argv[1:3] == ["--child", "generate"]:
        cache, params = Path(sys.argv[3]), json.loads(sys.argv[4])
        started = time.perf_counter()
        truth = make_cache(cache, *params)
        (cache.parent / "synthetic.truth.json").write_text(json.dumps({"params": params, "truth": truth}))
        print(json.dumps({"generate_s": round(time.perf_counter() - started, 1), "peak_rss_mb": peak_rss_mb()}))
        return
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--near", type=int, default=1000)
    parser.add_argument("--exact", type=int, default=200)
    parser.add_argument("--flips", type=int, default=500)
    parser.add_argument("--outliers", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--commands", default="duplicates,labels,outliers,map")
    parser.add_argument("--workdir", default=None, help="Keep the cache and reports here (default: a temp folder).")
    args = parser.parse_args()
    import csv

    with tempfile.TemporaryDirectory(prefix="inspect-scale-") as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache = work / "synthetic.h5"
        params = [args.rows, args.dim, args.near, args.exact, args.flips, args.outliers, args.threshold]
        stamp = work / "synthetic.truth.json"
        generate_s = None
        # The parent stays small: Linux carries a parent's peak RSS into a forked child's
        # ru_maxrss, so generating here would inflate every measurement below.
        if not (cache.exists() and stamp.exists() and json.loads(stamp.read_text())["params"] == params):
            generate_s = run_child(SCRIPT, "generate", str(cache), json.dumps(params))["generate_s"]
        truth = json.loads(stamp.read_text())["truth"]
        result = {
            "machine": machine(), "load_average_at_start": list(os.getloadavg()),
            "matmul_peak_gflops": round(matmul_peak_gflops(), 1),
            "cache": {"rows": args.rows, "dim": args.dim, "dtype": "float16", "classes": CLASSES,
                      "size_mb": round(cache.stat().st_size / 1e6, 1),
                      "generate_s": generate_s},
            "planted": {k: v for k, v in truth.items() if k not in ("near_truth", "flipped_paths", "outlier_paths")},
            "commands": {},
        }
        result["full_matmul_estimate_s"] = round(args.rows**2 * args.dim / (result["matmul_peak_gflops"] * 1e9), 1)
        for command in args.commands.split(","):
            extra = ["--threshold", str(args.threshold)] if command == "duplicates" else []
            if command == "map":
                extra = ["--flag", str(work / "labels.csv"), "--top", "100"] if (work / "labels.csv").exists() else []
            r = run_child(SCRIPT, command, str(cache), str(work), *extra)
            report = r.pop("report")
            entry = {"wall_s": r["wall_s"], "peak_rss_mb": r["peak_rss_mb"], "exit_code": r["exit_code"]}
            if command == "duplicates":
                with open(work / "dups.csv", newline="") as fh:
                    found = {tuple(sorted((row["key_a"], row["key_b"]))) for row in csv.DictReader(fh)
                             if row["kind"] == "near"}
                planted = {tuple(p) for p in truth["near_truth"]}
                entry.update({
                    "near_pairs": report["near"]["pairs"], "leaking_pairs": report["leakage"]["pairs"],
                    "exact_keys": report["exact"]["keys"], "conflict_keys": report["conflicts"]["keys"],
                    "planted_recall": round(len(planted & found) / max(len(planted), 1), 4),
                    "csv_capped": report["capped"], "method": report["method"],
                })
            elif command == "labels":
                k = len(truth["flipped_paths"])
                with open(work / "labels.csv", newline="") as fh:
                    ranked = [row["path"] for _, row in zip(range(k), csv.DictReader(fh))]
                entry.update({"oof_accuracy": round(report["oof_accuracy"], 4), "k": k,
                              "precision_at_k": round(len(set(ranked) & set(truth["flipped_paths"])) / k, 4),
                              "dims": report["dims"], "folds": report["folds"]})
            elif command == "outliers":
                k = len(truth["outlier_paths"])
                with open(work / "outliers.csv", newline="") as fh:
                    ranked = [row["path"] for _, row in zip(range(k), csv.DictReader(fh))]
                entry.update({"k": k, "recall_at_k": round(len(set(ranked) & set(truth["outlier_paths"])) / k, 4),
                              "max_reference": report["max_reference"]})
            else:
                entry.update({"points": report["points"], "flagged_drawn": report["flagged_drawn"]})
            result["commands"][command] = entry
        result["load_average_at_end"] = list(os.getloadavg())
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
