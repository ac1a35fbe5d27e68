"""Where distinct photos end and near-copies begin, per backbone and resolution. Prints JSON.

``inspect duplicates`` calibrates its threshold on each cache (heads/quality/threshold.py).
This study measures the rule on real photos: the hymenoptera set (``../shared/assets``) at
full size and as 64- and 32-pixel thumbnails, embedded by several backbones, each with edited copies
of every photo (JPEG quality 40, +20% brightness, mirror, 5% and 12.5% crops, half size).

For each (image set, backbone) it reports
  * the distinct photos' nearest-*other*-photo cosine (median, p99, max) and how many
    distinct pairs reach each fixed threshold (false pairs);
  * the share of each kind of copy found at each threshold (recall);
  * the calibrated threshold, computed the way ``inspect duplicates`` does on caches that
    mix the originals with copies of 0%, 10% and 30% of them (the copies contaminate the
    distribution the calibration reads), and the false pairs and recall at it.

    python benchmarks/duplicate_threshold.py [--workdir DIR] [--backbones mnv2,mnv2-035,resnet50-random]
    python benchmarks/duplicate_threshold.py --cost [--rows 100000]   # what calibrating adds at scale

Embedding needs the real weights; a rerun over a kept ``--workdir`` reuses the caches.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ASSETS, machine  # noqa: E402

VARIANTS = ("jpeg_q40", "bright120", "flip", "crop90", "half_size", "crop75")
THRESHOLDS = (0.85, 0.88, 0.9, 0.92, 0.94, 0.95, 0.97)
SETS = {"full": None, "thumb64": 64, "thumb32": 32}
BACKBONES = {
    "mnv2": dict(backbone="MobileNetV2", weights=str(ASSETS / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5")),
    "mnv2-035": dict(backbone="MobileNetV2", alpha=0.35,
                     weights=str(ASSETS / "weights" / "mobilenet_v2_0.35_224_imagenet_notop.weights.h5")),
    # Random weights with O(1) features: the worst case, where every image looks alike.
    "resnet50-random": dict(backbone="ResNet50", weights="none", image_size=128),
}


def make_images(root: Path, longest: int | None) -> None:
    """Originals and edited copies, one folder per variant (``orig/`` holds the photos)."""
    from PIL import Image, ImageEnhance

    if (root / ".done").exists():
        return
    source = ASSETS / "data" / "hymenoptera"
    for photo in sorted(source.rglob("*.jpg")):
        name = f"{photo.parent.parent.name}_{photo.parent.name}_{photo.stem}.jpg"
        image = Image.open(photo).convert("RGB")
        if longest:
            image.thumbnail((longest, longest), Image.BICUBIC)
        w, h = image.size
        edits = {
            "orig": (image, 90),
            "jpeg_q40": (image, 40),
            "bright120": (ImageEnhance.Brightness(image).enhance(1.2), 90),
            "flip": (image.transpose(Image.FLIP_LEFT_RIGHT), 90),
            "crop90": (image.crop((int(w * .05), int(h * .05), w - int(w * .05), h - int(h * .05))), 90),
            "half_size": (image.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR), 90),
            "crop75": (image.crop((int(w * .125), int(h * .125), w - int(w * .125), h - int(h * .125))), 90),
        }
        for variant, (edited, quality) in edits.items():
            target = root / variant / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if variant == "orig" and not longest:
                target.write_bytes(photo.read_bytes())
            else:
                edited.save(target, "JPEG", quality=quality)
    (root / ".done").write_text("")


def embed(root: Path, cache: Path, backbone: str) -> float:
    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.job import EmbedOptions, run_embedding

    started = time.perf_counter()
    run_embedding(root, BackboneConfig(**BACKBONES[backbone]), EmbedOptions(cache=cache, progress=False,
                                                                            batch_size=8))
    return time.perf_counter() - started


def evaluate(cache_path: Path, seed: int = 0) -> dict:
    import numpy as np

    from headstart.embedder.cache import open_cache
    from headstart.heads.quality.threshold import calibrate_threshold

    cache = open_cache(cache_path)
    x = cache.load_features()[cache.rows]
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    variant = np.asarray([str(p).split("/")[0] for p in cache.paths])
    name = np.asarray([str(p).split("/")[1] for p in cache.paths])
    orig = variant == "orig"
    index = {n: i for i, n in enumerate(name[orig])}
    originals = x[orig]
    sims = originals @ originals.T
    np.fill_diagonal(sims, -1.0)
    nearest = sims.max(axis=1)
    copies = {}
    for v in VARIANTS:
        mask = variant == v
        copies[v] = np.einsum("ij,ij->i", x[mask], originals[[index[n] for n in name[mask]]])

    def at(t: float) -> dict:
        return {"distinct_pairs": int(np.sum(np.triu(sims >= t, 1))),
                "photos_with_a_false_pair": round(float(np.mean(nearest >= t)), 4),
                "copies_found": {v: round(float(np.mean(c >= t)), 3) for v, c in copies.items()}}

    out = {
        "photos": int(orig.sum()),
        "distinct_nearest_neighbour": {"median": round(float(np.median(nearest)), 4),
                                       "p90": round(float(np.quantile(nearest, .9)), 4),
                                       "p99": round(float(np.quantile(nearest, .99)), 4),
                                       "max": round(float(nearest.max()), 4)},
        "copies_median_cosine": {v: round(float(np.median(c)), 4) for v, c in copies.items()},
        "fixed": {str(t): at(t) for t in THRESHOLDS},
        "calibrated": {},
    }
    rng = np.random.default_rng(seed)
    n = len(originals)
    for share in (0.0, 0.1, 0.3):
        chosen = rng.choice(n, int(round(share * n)), replace=False)
        kinds = rng.choice(len(VARIANTS), len(chosen))
        extra = [np.flatnonzero((variant == VARIANTS[k]) & (name == name[orig][c]))[0] for c, k in zip(chosen, kinds)]
        mixed = np.concatenate([originals, x[extra]]) if extra else originals
        choice = calibrate_threshold(mixed, seed=seed)
        out["calibrated"][f"copies_of_{int(share * 100)}pct"] = {
            "threshold": choice.value, "nearest_median": choice.nearest_median, **at(choice.value)}
    return out


def cost(work: Path, rows: int) -> dict:
    """``inspect duplicates`` on the synthetic cache of ``inspect_scale.py`` (rows x 1,280),
    once with ``--threshold 0.9`` and once calibrated, each in its own process; the same
    run's ratio is what to compare (these machines are noisy)."""
    from common import run_child
    from inspect_scale import SCRIPT as SCALE_SCRIPT

    cache = work / "synthetic.h5"
    params = [rows, 1280, 1000, 200, 500, 100, 0.9]
    run_child(SCALE_SCRIPT, "generate", str(cache), json.dumps(params))
    out = {"rows": rows}
    for name, extra in (("given_0.9", ["--threshold", "0.9"]), ("calibrated", [])):
        r = run_child(SCALE_SCRIPT, "duplicates", str(cache), str(work), *extra)
        out[name] = {"wall_s": r["wall_s"], "threshold": r["report"]["threshold"],
                     "near_pairs": r["report"]["near"]["pairs"], "join_s": r["report"]["method"]["seconds"],
                     "choice": r["report"]["threshold_choice"]}
    out["calibrated_over_given"] = round(out["calibrated"]["wall_s"] / out["given_0.9"]["wall_s"], 3)
    # One process's own ratio: what calibrating costs next to the join it sets up.
    out["calibration_over_join"] = round(out["calibrated"]["choice"]["seconds"] / out["calibrated"]["join_s"], 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=None, help="Keep images and caches here (reused by a rerun).")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--embed-only", action="store_true")
    parser.add_argument("--cost", action="store_true", help="Instead: time calibration on a synthetic cache.")
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    if args.cost:
        with tempfile.TemporaryDirectory(prefix="dup-threshold-cost-") as tmp:
            print(json.dumps({"machine": machine(), "cost": cost(Path(args.workdir or tmp), args.rows)}, indent=2))
        return
    if not (ASSETS / "data" / "hymenoptera").is_dir():
        print(json.dumps({"skipped": f"real assets not found under {ASSETS}"}))
        return
    with tempfile.TemporaryDirectory(prefix="dup-threshold-") as tmp:
        work = Path(args.workdir or tmp)
        result = {"machine": machine(), "studies": {}}
        for set_name in args.sets.split(","):
            images = work / f"images-{set_name}"
            make_images(images, SETS[set_name])
            for backbone in args.backbones.split(","):
                cache = work / f"{set_name}-{backbone}.h5"
                key = f"{set_name}/{backbone}"
                embed_s = None if cache.exists() else round(embed(images, cache, backbone), 1)
                if args.embed_only:
                    result["studies"][key] = {"embed_s": embed_s}
                    continue
                result["studies"][key] = {"embed_s": embed_s, **evaluate(cache)}
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
