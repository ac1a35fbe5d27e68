"""Fine-tuning and prediction on real photos. Prints JSON.

Hymenoptera (../shared/assets, 245 train / 153 val) with MobileNetV2 1.0 at 224 px:
the default dense head's val accuracy, then fine-tuning from it with --unfreeze 4 and
--unfreeze 20 for a few epochs (val accuracy, seconds per epoch), and `predict` on the val
images cold (through the backbone) and with the cache fast path.

    python benchmarks/finetune.py --epochs 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ASSETS, WEIGHTS_MOBILENET_V2, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--unfreeze", default="4,20")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    data = ASSETS / "data" / "hymenoptera"
    if not (data.is_dir() and WEIGHTS_MOBILENET_V2.is_file()):
        print(json.dumps({"benchmark": "finetune", "skipped": f"assets not found at {ASSETS}"}))
        return

    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.job import EmbedOptions, run_embedding
    from headstart.heads.finetune import FinetuneOptions, finetune
    from headstart.heads.inference import PredictOptions, predict_images
    from headstart.heads.params import HeadParams
    from headstart.heads.runs import load_run
    from headstart.heads.train import train_head

    work = Path(args.workdir or tempfile.mkdtemp(prefix="headstart-ft-"))
    out: dict = {"benchmark": "finetune", "machine": machine(), "data": "hymenoptera 245 train / 153 val",
                 "backbone": "MobileNetV2 1.0 @224 (ImageNet weights, shared asset)", "epochs": args.epochs}
    cache = work / "hy.h5"
    started = time.perf_counter()
    run_embedding(data, BackboneConfig("MobileNetV2", weights=str(WEIGHTS_MOBILENET_V2)),
                  EmbedOptions(cache=cache, progress=False))
    out["embed_seconds"] = time.perf_counter() - started

    head_dir = work / "runs" / "head"
    head = train_head(HeadParams(), cache=cache, out=head_dir)  # the default dense head
    out["head"] = {"val_accuracy": head.metrics["accuracy"], "train_seconds": head.train_seconds,
                   "best_epoch": head.best_epoch}

    out["finetune"] = {}
    for n in (int(x) for x in args.unfreeze.split(",")):
        report = finetune(FinetuneOptions(from_run=head_dir, out=work / "runs" / f"ft-{n}", unfreeze=n,
                                          epochs=args.epochs, patience=args.epochs, progress=False))
        out["finetune"][f"unfreeze_{n}"] = {
            "val_accuracy": report.metrics.get("accuracy"), "best_epoch": report.best_epoch,
            "epochs": report.epochs_run, "seconds_per_epoch": report.seconds_per_epoch,
            "val_accuracy_per_epoch": [h.get("val_accuracy") for h in report.history],
            "unfrozen_layers": report.unfrozen_layers,
        }

    val_images = [data / "val"]
    run = load_run(head_dir)
    # cache_dir: where `embed run` kept the backbone's LiteRT flatbuffer, as a user's ./cache would
    for label, use_cache in (("predict_cold", False), ("predict_cached", True)):
        report = predict_images(val_images, run, PredictOptions(use_cache=use_cache, cache_dir=work, progress=False))
        out[label] = {"images": len(report.predictions), "seconds": report.elapsed_s, "rate": report.rate,
                      "from_cache": report.from_cache, "through_backbone": report.through_backbone}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
