"""Do cached augmented views help? Prints JSON.

Hymenoptera (../shared/assets, 245 train / 153 val) with MobileNetV2 1.0 at 224 px:

1. embed the clean images, then add views up to K=4 and on to K=8 (each step embeds only
   the new views), timing each step;
2. train the default dense head with K = 0, 4, 8 views per training image (K=4 uses the
   first four of the eight: a view depends only on (key, view, seed), so that is exactly
   what a K=4 cache holds), for several head seeds: val accuracy mean and spread, and
   the head's training time.

    python benchmarks/views.py --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ASSETS, WEIGHTS_MOBILENET_V2, machine, peak_rss_mb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", default="0,4,8", help="K values to compare (ascending)")
    parser.add_argument("--seeds", default="0,1,2", help="head seeds")
    parser.add_argument("--runtime", default="auto")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    data = ASSETS / "data" / "hymenoptera"
    if not (data.is_dir() and WEIGHTS_MOBILENET_V2.is_file()):
        print(json.dumps({"benchmark": "views", "skipped": f"assets not found at {ASSETS}"}))
        return

    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.job import EmbedOptions, run_embedding
    from headstart.heads.params import make_params
    from headstart.heads.train import train_head

    ks = sorted(int(k) for k in args.views.split(","))
    seeds = [int(s) for s in args.seeds.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="headstart-views-"))
    cache = work / "hy.h5"
    config = BackboneConfig("MobileNetV2", weights=str(WEIGHTS_MOBILENET_V2))
    out: dict = {"benchmark": "views", "machine": machine(), "data": "hymenoptera 245 train / 153 val",
                 "backbone": "MobileNetV2 1.0 @224 (ImageNet weights, shared asset)",
                 "head": "default dense head (hidden 1024, dropout 0.5, 50 epochs, early stopping)",
                 "seeds": seeds, "embedding": [], "heads": {}}

    total = 0.0
    for k in ks:
        started = time.perf_counter()
        report = run_embedding(data, config, EmbedOptions(cache=cache, views=k or None, progress=False,
                                                          runtime=args.runtime))
        step = time.perf_counter() - started
        total += step
        out["embedding"].append({
            "K": k, "step_seconds": round(step, 2), "cumulative_seconds": round(total, 2),
            "images_embedded": report.embedded, "views_embedded": report.views_embedded,
            "views_per_second": round(report.views_rate, 1), "runtime": report.runtime,
            "clean_images_per_second": round(report.steady_rate or report.rate, 1),
            "cache_mb": round(report.cache_bytes / 1e6, 1)})

    for k in ks:
        runs = []
        for seed in seeds:
            params = make_params("dense", seed=seed, views=k if k else None)
            report = train_head(params, cache=cache, out=work / "runs" / f"k{k}-s{seed}")
            runs.append({"seed": seed, "val_accuracy": report.metrics["accuracy"],
                         "val_log_loss": report.metrics.get("log_loss"), "train_seconds": report.train_seconds,
                         "best_epoch": report.best_epoch, "epochs_run": report.epochs_run,
                         "train_examples": report.split["counts"]["train"]
                         + (report.split.get("train_views") or {}).get("examples", 0)})
        accs = [r["val_accuracy"] for r in runs]
        out["heads"][f"K={k}"] = {
            "val_accuracy_mean": round(statistics.mean(accs), 4),
            "val_accuracy_stdev": round(statistics.stdev(accs), 4) if len(accs) > 1 else 0.0,
            "val_accuracy_min": min(accs), "val_accuracy_max": max(accs),
            "train_seconds_mean": round(statistics.mean(r["train_seconds"] for r in runs), 2),
            "runs": runs}
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
