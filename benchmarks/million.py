"""Embed once, then iterate, at a million images: what each step costs in time, memory and bytes read. Prints JSON.

Nothing is embedded to build it (as head_speed.py and inspect_scale.py do): the benchmark
writes ``--rows`` tiny files (64 bytes each, named ``.jpg``; only their keys matter, no step
decodes them) in 10 class folders, and a synthetic cache whose keys are those files' SHA-256
and whose features (``--dim``, float16) have the spectrum of real pooled CNN features (as
inspect_scale.py's) with class offsets, 1,000 planted near-copies, 500 flipped labels and 100
outliers. Its fingerprint is that of a small Keras model file written beside it (1,280
outputs), so ``embed run`` continues it and embeds real new images into it. Everything lives
under ``--work`` and is reused by later runs (building 1M rows takes a few minutes).

Steps (``--steps``; each measurement in its own process, so its peak RSS is its own; the
load average is recorded at each step, since the machine may be shared):

  record   the first ``embed run`` over the files and the synthetic cache (which has no stat
           record yet): every file is read and hashed once, the record written
  noop     a rerun after the racy window: files read, bytes read (``rchar`` of /proc/self/io
           around the call), time, and where the time goes (listing vs. the rest)
  rehash   the same with ``--rehash``: every file read, as every rerun did before
  append   ``embed run`` with 10 new real images added: embeds them and writes the cache
  info     ``embed info``; ``head list --cache``; ``predict --cache`` on the 10 new images
  train    ``head train`` dense (``--epochs``, no early stop: seconds per epoch) and logreg
  inspect  ``inspect duplicates``, ``labels``, ``outliers``
  photos   ``--photos`` camera-size JPEGs (4000x3000 by default): bytes a no-op rerun reads
           against the bytes of the images (the issue's measurement), and ``--rehash``'s

    python benchmarks/million.py --rows 1000000 --steps record,noop,rehash,append,info,train,inspect
    python benchmarks/million.py --rows 100000 --steps record,noop,rehash
    python benchmarks/million.py --steps photos --photos 600
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_rss_mb, run_child  # noqa: E402
from inspect_scale import MEAN_SHARE, draw_features, spectrum  # noqa: E402  (the measured spectrum of real features)

SCRIPT = Path(__file__).resolve()
CLASSES = 10
BLOCK = 50_000
NEAR, FLIPS, OUTLIERS = 1000, 500, 100
MODEL_INPUT = 48
TIMEOUT = 4 * 3600


def rchar() -> int:
    """Bytes this process has read through read() and friends (page cache or not)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def file_bytes(row: int, seed: int) -> bytes:
    return f"headstart million benchmark, row {row:09d}, seed {seed}\n".encode().ljust(64, b".")


def file_path(row: int, label: int) -> str:
    return f"class_{label:02d}/img_{row:09d}.jpg"


# ------------------------------------------------------------------------------------ build


def write_model(path: Path, dim: int) -> Path:
    """A small conv net whose features are O(1) and ``dim`` wide: what embeds the new images."""
    from headstart.embedder.tf_runtime import import_keras

    keras = import_keras()
    keras.utils.set_random_seed(7)
    inputs = keras.Input((MODEL_INPUT, MODEL_INPUT, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(dim)(x)
    keras.Model(inputs, outputs).save(path)
    return path


def build(work: Path, rows: int, dim: int, seed: int = 0) -> dict:
    """Files, model and synthetic cache; the planted truth is saved beside them."""
    import numpy as np

    from headstart.embedder.backbones import BackboneConfig, resolve
    from headstart.embedder.cache import CacheWriter, FileRecord

    started = time.perf_counter()
    images = work / "images"
    shutil.rmtree(images, ignore_errors=True)
    for c in range(CLASSES):
        (images / f"class_{c:02d}").mkdir(parents=True)
    model = write_model(work / "model.keras", dim)
    fingerprint = resolve(BackboneConfig(backbone=str(model))).fingerprint

    rng = np.random.default_rng(seed)
    basis, sd = spectrum(rng, dim)
    offsets = np.zeros((CLASSES, dim - 1), dtype=np.float32)
    offsets[:, :24] = rng.normal(0, 1.2, (CLASSES, 24)) * sd[:24]
    base = rows - NEAR - OUTLIERS
    labels = rng.integers(0, CLASSES, rows)
    originals = np.sort(rng.choice(base, NEAR, replace=False))
    labels[base:base + NEAR] = labels[originals]
    given = labels.copy()
    flipped = rng.choice(base, FLIPS, replace=False)
    given[flipped] = (labels[flipped] + rng.integers(1, CLASSES, FLIPS)) % CLASSES

    def draw(count, cls):
        return draw_features(rng, basis, sd, offsets, cls, count)

    kept = {}
    cache = work / "million.h5"
    for stale in (cache, work / "million.h5.parts"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    files: list[FileRecord] = []
    with CacheWriter(cache, fingerprint, "float16", {"backbone_source": str(model.resolve()),
                                                    "layout": "class-folders"}) as writer:
        for start in range(0, rows, BLOCK):
            stop = min(start + BLOCK, rows)
            index = np.arange(start, stop)
            block = np.empty((stop - start, dim), dtype=np.float32)
            plain = index < base
            block[plain] = draw(int(plain.sum()), labels[index[plain]])
            for j in np.flatnonzero(np.isin(index, originals)):
                kept[int(index[j])] = block[j].copy()
            near = (index >= base) & (index < base + NEAR)
            if near.any():  # an original plus a scaled perturbation from the same spectrum
                k = index[near] - base
                noise = draw(len(k), labels[index[near]]) - np.sqrt(MEAN_SHARE) * basis[:, 0]
                scale = rng.uniform(0.1, 0.55, len(k)).astype(np.float32)
                block[near] = np.stack([kept[int(originals[j])] for j in k]) + scale[:, None] * noise
            far = index >= base + NEAR
            if far.any():  # outliers: far from every class
                wide = rng.standard_normal((int(far.sum()), dim)).astype(np.float32)
                block[far] = wide * float(np.sqrt((1 - MEAN_SHARE) / dim) * 3) + np.sqrt(MEAN_SHARE) * basis[:, 0]
            keys = []
            for row in index:
                data = file_bytes(int(row), seed)
                path = file_path(int(row), int(given[row]))
                (images / path).write_bytes(data)
                keys.append(hashlib.sha256(data).hexdigest())
                files.append(FileRecord(path, keys[-1], int(given[row]), ""))
            writer.add_part(keys, block.astype(np.float16))
        writer.finish(files, [f"class_{c:02d}" for c in range(CLASSES)], [], images)
    truth = {"rows": rows, "dim": dim, "seed": seed, "near_pairs": [[int(o), int(base + k)] for k, o in
                                                                      enumerate(originals)],
             "flipped": flipped.tolist(), "outliers": list(range(base + NEAR, rows))}
    (work / "truth.json").write_text(json.dumps(truth))
    (work / "built.json").write_text(json.dumps({"rows": rows, "dim": dim, "seed": seed}))
    return {"build_s": round(time.perf_counter() - started, 1), "cache_mb": round(cache.stat().st_size / 1e6, 1)}


# ------------------------------------------------------------------------------- children


def child_embed(work: str, *flags: str) -> dict:
    """``embed run`` over the files into the synthetic cache, as the CLI runs it."""
    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.job import EmbedOptions, run_embedding

    work = Path(work)
    options = EmbedOptions(cache=work / "million.h5", progress=False, rehash="--rehash" in flags)
    read_before, started = rchar(), time.perf_counter()
    report = run_embedding(work / "images", BackboneConfig(backbone=str(work / "model.keras")), options)
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "rchar_mb": round((rchar() - read_before) / 1e6, 1),
            "files": report.files, "rows": report.rows, "hashed": report.hashed,
            "hashed_mb": round(report.hashed_bytes / 1e6, 1), "unchanged": report.unchanged, "racy": report.racy,
            "embedded": report.embedded, "cache_write": report.cache_write,
            "cache_written_mb": round(report.cache_written_bytes / 1e6, 1),
            "cache_mb": round(report.cache_bytes / 1e6, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def child_listing(work: str) -> dict:
    """Where a no-op rerun's time goes: discovery alone, and stat-ing every file."""
    from headstart.embedder.discovery import discover
    from headstart.embedder.filestat import stat_files

    started = time.perf_counter()
    listing = discover(Path(work) / "images")
    listed = time.perf_counter()
    stat_files([listing.root / f.path for f in listing.files])
    return {"files": len(listing.files), "discover_s": round(listed - started, 2),
            "stat_s": round(time.perf_counter() - listed, 2)}


def child_cli(*args: str) -> dict:
    """A CLI command in this process: wall time, exit code, peak RSS."""
    from headstart import cli

    buffer = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(buffer):
        code = cli.main(list(args))
    wall = time.perf_counter() - started
    out = buffer.getvalue()
    try:
        report = json.loads(out)
    except ValueError:
        report = None
    return {"command": " ".join(a if "/" not in a else Path(a).name for a in args[:3]), "exit_code": code,
            "wall_s": round(wall, 2), "peak_rss_mb": round(peak_rss_mb(), 1), "report": report}


def child_train(cache: str, head: str, out: str, epochs: str) -> dict:
    from headstart.heads.params import make_params
    from headstart.heads.train import train_head

    options = {"epochs": int(epochs), "patience": 0} if head == "dense" else {}
    params = make_params(head, **options)
    started = time.perf_counter()
    report = train_head(params, cache=cache, out=out)
    result = {"head": head, "load_s": round(report.load_seconds, 2), "fit_s": round(report.train_seconds, 2),
              "command_s": round(time.perf_counter() - started, 2), "val_accuracy": report.metrics["accuracy"],
              "peak_rss_mb": round(peak_rss_mb(), 1)}
    if head == "dense":
        result["epochs"] = report.epochs_run
        result["epoch_s"] = round(report.train_seconds / max(report.epochs_run or 1, 1), 2)
    return result


def child_new_images(folder: str, count: str, seed: str) -> dict:
    """``count`` small photo-like JPEGs (never seen before: a new seed each run)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(int(seed))
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    for i in range(int(count)):
        pixels = np.clip(rng.normal(128, 60, (64, 64, 3)).repeat(2, 0).repeat(2, 1), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(target / f"new_{seed}_{i:03d}.jpg", quality=90)
    return {"written": int(count)}


def child_photos(folder: str, count: str, width: str, height: str) -> dict:
    """Camera-size photo-like JPEGs: smooth gradients plus blurred noise (they compress like photos)."""
    import numpy as np
    from PIL import Image

    target = Path(folder)
    stamp = target / ".complete"
    wanted = f"{count} {width}x{height}"
    if stamp.exists() and stamp.read_text() == wanted:
        return {"reused": True}
    shutil.rmtree(target, ignore_errors=True)
    rng = np.random.default_rng(0)
    w, h = int(width), int(height)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(int(count)):
        base = rng.uniform(40, 215, 3).astype(np.float32)
        gradient = (xx / w)[..., None] * rng.uniform(-80, 80, 3) + (yy / h)[..., None] * rng.uniform(-80, 80, 3)
        noise = rng.normal(0, 25, (h // 8 + 1, w // 8 + 1, 3)).astype(np.float32).repeat(8, 0).repeat(8, 1)[:h, :w]
        image = np.clip(base + gradient + noise, 0, 255).astype(np.uint8)
        path = target / f"class_{i % 2}" / f"photo_{i:04d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=92)
    stamp.write_text(wanted)
    return {"reused": False}


def child_photos_embed(folder: str, cache: str, model: str, *flags: str) -> dict:
    from headstart.embedder.backbones import BackboneConfig
    from headstart.embedder.job import EmbedOptions, run_embedding

    options = EmbedOptions(cache=Path(cache), progress=False, rehash="--rehash" in flags)
    read_before, started = rchar(), time.perf_counter()
    report = run_embedding(folder, BackboneConfig(backbone=model), options)
    return {"wall_s": round(time.perf_counter() - started, 2), "rchar_mb": round((rchar() - read_before) / 1e6, 1),
            "hashed": report.hashed, "hashed_mb": round(report.hashed_bytes / 1e6, 1),
            "unchanged": report.unchanged, "embedded": report.embedded, "files": report.files}


# ----------------------------------------------------------------------------------- steps


def settle(seconds: float | None = None) -> None:
    """Wait out the racy window (the files' last change must be older than it)."""
    from headstart.embedder.filestat import RACY_WINDOW_NS

    time.sleep(seconds if seconds is not None else RACY_WINDOW_NS / 1e9 + 1.0)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        kind, *rest = sys.argv[2:]
        fn = {"build": lambda w, r, d: build(Path(w), int(r), int(d)), "embed": child_embed,
              "listing": child_listing, "cli": child_cli, "train": child_train, "new_images": child_new_images,
              "photos": child_photos, "photos_embed": child_photos_embed}[kind]
        print(json.dumps(fn(*rest)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--work", default=None, help="default: <tmp>/headstart-million-<rows>")
    parser.add_argument("--steps", default="record,noop,rehash,append,info,train,inspect")
    parser.add_argument("--epochs", type=int, default=3, help="dense head epochs (time per epoch is reported)")
    parser.add_argument("--photos", type=int, default=600)
    parser.add_argument("--photo-size", default="4000x3000")
    parser.add_argument("--inspect", default="duplicates,labels,outliers")
    args = parser.parse_args()
    import tempfile

    work = Path(args.work or Path(tempfile.gettempdir()) / f"headstart-million-{args.rows}")
    work.mkdir(parents=True, exist_ok=True)
    steps = args.steps.split(",")
    out: dict = {"benchmark": "million", "machine": machine(), "rows": args.rows, "dim": args.dim, "work": str(work),
                 "steps": {}}
    result = out["steps"]
    cache = str(work / "million.h5")

    def child(*a: str) -> dict:
        entry = run_child(SCRIPT, *a, timeout=TIMEOUT)
        entry["load_avg"] = load()
        return entry

    needs_cache = [s for s in steps if s != "photos"]
    built = work / "built.json"
    if needs_cache and not (built.exists() and json.loads(built.read_text()) == {"rows": args.rows, "dim": args.dim,
                                                                                "seed": 0}):
        result["build"] = child("build", str(work), str(args.rows), str(args.dim))
        if "record" not in steps:
            steps.insert(0, "record")  # a fresh cache has no stat record yet
    if "record" in steps:
        result["record"] = child("embed", str(work))
    if "noop" in steps or "rehash" in steps:
        settle()
        result["listing"] = child("listing", str(work))
    if "noop" in steps:
        result["noop"] = child("embed", str(work))
    if "rehash" in steps:
        result["rehash"] = child("embed", str(work), "--rehash")
    new_dir = work / "images" / "class_00" / "new"
    if "append" in steps or "info" in steps:
        shutil.rmtree(new_dir, ignore_errors=True)
        child("new_images", str(new_dir), "10", str(time.time_ns() % 1_000_000_007))
    if "append" in steps:
        result["append"] = child("embed", str(work))
        settle()
        result["noop_after_append"] = child("embed", str(work))
    if "info" in steps or "train" in steps:
        result["info"] = child("cli", "embed", "info", cache, "--json")
        if isinstance(result["info"].get("report"), dict):
            kept = ("rows", "files", "size_bytes", "segments", "nonfinite_checked")
            result["info"]["report"] = {k: result["info"]["report"].get(k) for k in kept}
        empty = work / "no-runs"
        empty.mkdir(exist_ok=True)
        result["head_list"] = child("cli", "head", "list", "--cache", cache, "--runs-dir", str(empty), "--json")
        result["head_list"].pop("report", None)
    if "train" in steps:
        for head in ("dense", "logreg"):
            target = work / "runs" / head
            shutil.rmtree(target, ignore_errors=True)
            result[f"train_{head}"] = child("train", cache, head, str(target), str(args.epochs))
    if "info" in steps and (work / "runs" / "dense").is_dir() and new_dir.is_dir():
        result["predict_cache"] = child("cli", "predict", str(new_dir), "--run", str(work / "runs" / "dense"),
                                        "--cache", cache, "--format", "json", "--out", str(work / "pred.json"))
        result["predict_cache"].pop("report", None)
    if "inspect" in steps:
        reports = work / "reports"
        reports.mkdir(exist_ok=True)
        truth = json.loads((work / "truth.json").read_text())
        for command in args.inspect.split(","):
            name = {"duplicates": "dups.csv", "labels": "labels.csv", "outliers": "outliers.csv"}[command]
            entry = child("cli", "inspect", command, "--cache", cache, "--out", str(reports / name), "--json")
            report = entry.pop("report", None) or {}
            if command == "duplicates":
                entry.update({k: report.get(k) for k in ("threshold", "near", "method")})
            elif command == "labels":
                entry.update({k: report.get(k) for k in ("oof_accuracy", "dims", "folds")})
                entry["precision_at_flips"] = _precision(reports / name, truth["flipped"], len(truth["flipped"]))
            else:
                entry["recall_at_outliers"] = _precision(reports / name, truth["outliers"], len(truth["outliers"]))
            result[f"inspect_{command}"] = entry
    if "photos" in steps:
        width, height = args.photo_size.split("x")
        folder = Path(tempfile.gettempdir()) / f"headstart-photos-{args.photos}-{args.photo_size}"
        model = work / "model.keras"
        if not model.exists():
            _write_model_in_child(model, args.dim)
        generated = child("photos", str(folder), str(args.photos), width, height)
        total = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
        photos_cache = folder.with_suffix(".h5")
        entry = {"photos": args.photos, "size": args.photo_size, "image_mb": round(total / 1e6, 1),
                 "generated": not generated.get("reused")}
        if not photos_cache.exists():
            settle()  # photos just written would be racy: read again by the next run, as git would
            entry["first"] = child("photos_embed", str(folder), str(photos_cache), str(model))
        settle()
        entry["noop"] = child("photos_embed", str(folder), str(photos_cache), str(model))
        entry["rehash"] = child("photos_embed", str(folder), str(photos_cache), str(model), "--rehash")
        entry["noop_read_share"] = round(entry["noop"]["rchar_mb"] / (total / 1e6), 4)
        entry["rehash_read_share"] = round(entry["rehash"]["rchar_mb"] / (total / 1e6), 4)
        result["photos"] = entry
    print(json.dumps(out, indent=2))


def _write_model_in_child(path: Path, dim: int) -> None:
    import subprocess

    subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(SCRIPT.parent)!r}); "
                    f"from million import write_model; from pathlib import Path; "
                    f"write_model(Path({str(path)!r}), {dim})"], check=True, cwd=SCRIPT.parents[1])


def _precision(csv_path: Path, truth_rows: list[int], k: int) -> float:
    """Share of the first ``k`` CSV lines whose image is in ``truth_rows``."""
    import csv

    wanted = {f"img_{r:09d}.jpg" for r in truth_rows}
    with open(csv_path, newline="") as fh:
        top = [row["path"].split("/")[-1] for _, row in zip(range(k), csv.DictReader(fh))]
    return round(len(wanted & set(top)) / max(k, 1), 4)


if __name__ == "__main__":
    main()
