"""Camera-size photos (issue 15): decoders, the model, `embed run`, small jobs, quality. JSON.

Phone and camera photos are 12 MP JPEGs of 1-5 MB, many with an EXIF orientation tag; on
them the decoder, not the backbone, sets `embed run`'s rate. Every measurement runs in its
own process (its peak RSS is its own), MobileNetV2 1.0 at 224 px on LiteRT, and each part
reports what it measured next to the load average it was measured under.

Image sets (generated once into --workdir, see common.camera_jpegs): ``camera`` 4000x3000
quality 90 (~1.7 MB), ``mid`` 2000x1500 (3 MP), ``mixed`` (12 MP, 3 MP, 500x375 JPEGs and
1024x768 PNGs), ``small`` 500x375 (the set of benchmarks/embed_throughput.py); every third
JPEG carries an EXIF orientation tag.

Parts (``--part``, comma-separated, default all):
  decode    decode + resize to 224 per method, from bytes in memory, 1 thread and one per
            core (a thread pool, as the engine's): pillow-draft (the current rule: DCT-scaled
            decoding, EXIF, antialiased resize), pillow-full, tf-full (the legacy rule:
            decode_image + bilinear), tf-ratio (decode_jpeg(ratio) + antialiased resize);
            sha256 of the bytes too (the engine hashes what it decodes)
  model     the backbone alone on pixels in memory (LiteRT, batch 32)
  pipeline  Pillow draft vs tf decode_jpeg(ratio)+antialias inside the real engine
            (read, hash, decode pool, interpreters), camera set
  embed     `embed run` end to end, per set: the current rule, the legacy rule
            (``pixels="legacy"``, same engine and runtime) and, with --before, the code of
            an older commit (its own `embed run`, the true "before"); repeated, interleaved
  small     small jobs as a user runs them (a new process each, Python start-up included):
            `headstart predict one.jpg --run R`, `headstart embed run` of 10 new photos;
            with --before, the same commands of the older commit
  quality   cosine between the features of a photo and of its 8x upscaled copy, legacy vs
            current rule (real weights; skipped without the shared assets)

    python benchmarks/photos.py --before 03518ec             # everything (~15 min on 2 cores)
    python benchmarks/photos.py --part decode,model --camera 24 --mid 24   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ASSETS, REPO_ROOT, WEIGHTS_MOBILENET_V2, camera_jpegs, machine, peak_rss_mb, photo_like_jpegs, run_child,
)

SCRIPT = Path(__file__).resolve()
SIZE = 224
PARTS = ("decode", "model", "pipeline", "embed", "small", "quality")
METHODS = ("pillow-draft", "pillow-full", "tf-full", "tf-ratio")
CLI = "import sys; from headstart import cli; sys.exit(cli.main())"
BEFORE_CLI = "import sys, cli; sys.exit(cli.main())"  # an older checkout: top-level modules


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


# ------------------------------------------------------------------------------ decoders


def tf_scaled_recipe():
    """The alternative the issue asks to compare: TensorFlow's DCT-scaled decoding
    (``decode_jpeg(ratio=1|2|4|8)``, chosen as Pillow's draft chooses: the largest reduction
    keeping both sides >= the target), EXIF orientation from the header, antialiased resize."""
    import numpy as np

    from headstart.embedder.decode import CURRENT, DEFAULT_PIXEL_LIMIT, PixelRecipe, _open
    from headstart.embedder.tf_runtime import import_tf

    tf = import_tf()
    turns = {3: (2, False), 6: (3, False), 8: (1, False), 2: (0, True), 4: (2, True), 5: (1, True), 7: (3, True)}

    class TfScaled(PixelRecipe):
        def decode(self, data, limit=DEFAULT_PIXEL_LIMIT, at_least=None):
            header = _open(data, limit)
            if header.format not in ("JPEG", "MPO"):
                return CURRENT.decode(data, limit, at_least)
            width, height = header.size
            ratio = 1
            while at_least and ratio < 8 and width // (2 * ratio) >= at_least and height // (2 * ratio) >= at_least:
                ratio *= 2
            image = tf.io.decode_jpeg(data, channels=3, ratio=ratio).numpy()
            rotate, mirror = turns.get(header.getexif().get(0x0112, 1), (0, False))
            if mirror:
                image = image[:, ::-1]
            return np.ascontiguousarray(np.rot90(image, k=rotate)) if rotate else image

        def resize(self, image, size):
            return tf.image.resize(image, [size, size], method="bilinear", antialias=True).numpy()

    return TfScaled("tf-ratio", {}, antialias=True, needs_tensorflow=True)


def _method(name: str):
    """bytes -> float32 [224, 224, 3] for each decode method."""
    from headstart.embedder.decode import CURRENT, LEGACY

    if name == "pillow-draft":
        return lambda data: CURRENT.load(data, SIZE)
    if name == "pillow-full":
        return lambda data: CURRENT.resize(CURRENT.decode(data, at_least=None), SIZE)
    if name == "tf-full":
        return lambda data: LEGACY.load(data, SIZE)
    if name == "tf-ratio":
        recipe = tf_scaled_recipe()
        return lambda data: recipe.load(data, SIZE)
    raise ValueError(name)


def _rate(fn, items: list, threads: int, seconds: float) -> tuple[float, int]:
    """Images/s of ``fn`` over ``items`` on ``threads`` threads, for at least ``seconds``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, items[:threads]))  # warm-up (TensorFlow's first op, Pillow's plugins)
        done, started = 0, time.perf_counter()
        while done == 0 or time.perf_counter() - started < seconds:
            for _ in pool.map(fn, items):
                done += 1
        return done / (time.perf_counter() - started), done


def child_decode(spec: dict) -> dict:
    from headstart.embedder.devices import available_cores

    files = sorted(p for p in Path(spec["folder"]).rglob("*") if p.suffix in (".jpg", ".png"))[: spec["files"]]
    items = [p.read_bytes() for p in files]
    fn = _method(spec["method"]) if spec["method"] != "sha256" else _sha256
    cores = available_cores()
    one, done_one = _rate(fn, items, 1, spec["seconds"])
    many, done_many = _rate(fn, items, cores, spec["seconds"])
    return {"ms_per_image_one_core": round(1000 / one, 2), "images_per_s_1_thread": round(one, 1),
            f"images_per_s_{cores}_threads": round(many, 1), "threads": cores, "decoded": done_one + done_many,
            "mean_file_mb": round(sum(map(len, items)) / len(items) / 1e6, 2), "peak_rss_mb": round(peak_rss_mb()),
            "load": load_average()}


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------ the model


def _config(pixels: str = "auto"):
    from headstart.embedder.backbones import BackboneConfig

    weights = str(WEIGHTS_MOBILENET_V2) if WEIGHTS_MOBILENET_V2.is_file() else "none"
    return BackboneConfig(backbone="MobileNetV2", weights=weights, image_size=SIZE, pixels=pixels)


def _engine(recipe=None, batch: int = 32):
    from headstart.embedder.backbones import backbone_network, resolve
    from headstart.embedder.decode import recipe_for
    from headstart.embedder.engine import Engine

    resolved = resolve(_config())
    return Engine(backbone_network(resolved), recipe or recipe_for(resolved.fingerprint), runtime="litert",
                  batch_size=batch)


def child_model(spec: dict) -> dict:
    import numpy as np

    engine = _engine()
    forward = engine.start()
    x = np.random.default_rng(0).uniform(0, 255, (32, SIZE, SIZE, 3)).astype(np.float32)
    forward(x)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < spec["seconds"]:
        forward(x)
        done += len(x)
    rate = done / (time.perf_counter() - started)
    return {"images_per_s": round(rate, 1), "layout": forward.reason, "setup_s": round(engine.info.setup_s, 3),
            "peak_rss_mb": round(peak_rss_mb()), "load": load_average()}


def child_pipeline(spec: dict) -> dict:
    """The engine as `embed run` drives it (read, hash, decode pool, interpreters, order), over
    the camera set, with each decoder; the cache writing is left out (it is the same for both)."""
    from headstart.embedder.engine import Source

    recipe = tf_scaled_recipe() if spec["method"] == "tf-ratio" else None
    engine = _engine(recipe)
    engine.start()
    files = sorted(p for p in Path(spec["folder"]).rglob("*.jpg"))
    sources = [Source(str(p)) for p in files]
    first_done = first = None
    started = time.perf_counter()
    count = 0
    for batch in engine.embed(sources):
        count += len(batch.indices)
        if first_done is None:
            first_done, first = time.perf_counter(), len(batch.indices)
    elapsed = time.perf_counter() - started
    # after the first batch; None when every image fit in it (a set too small to say)
    steady = round((count - first) / (time.perf_counter() - first_done), 1) if count > first else None
    return {"images": count, "rate": round(count / elapsed, 1), "steady_rate": steady,
            "peak_rss_mb": round(peak_rss_mb()), "load": load_average()}


# ------------------------------------------------------------------------------ embed run


def child_embed(spec: dict) -> dict:
    from headstart.embedder.job import EmbedOptions, run_embedding

    cache = Path(spec["cache"])
    _remove_cache(cache)
    started = time.perf_counter()
    report = run_embedding(spec["folder"], _config(spec["pixels"]),
                           EmbedOptions(cache=cache, progress=False, runtime="litert",
                                        dtype="float16" if WEIGHTS_MOBILENET_V2.is_file() else "float32"))
    wall = time.perf_counter() - started
    _remove_cache(cache)
    return {"embedded": report.embedded, "steady_rate": _steady(report.steady_rate), "loop_rate": round(report.rate, 1),
            "wall_s": round(wall, 2), "setup_s": round(report.setup_s, 3), "runtime": report.runtime,
            "skipped": len(report.skipped), "peak_rss_mb": round(peak_rss_mb()), "load": load_average()}


def child_before_embed(spec: dict) -> dict:
    """An older commit's own `embed run` (a process of its own; its peak RSS is read back)."""
    import resource

    cache_dir = Path(spec["cache_dir"])
    for old in cache_dir.glob("*.h5"):
        _remove_cache(old)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BEFORE_CLI, "embed", "run", spec["folder"], "--cache-dir",
                           str(cache_dir), "--weights", _config().weights, "--runtime", "litert", "--json", "-q"],
                          capture_output=True, text=True, env=_before_env(spec["before"]), cwd=spec["before"])
    wall = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr[-2000:])
    report = json.loads(proc.stdout)
    return {"embedded": report["embedded"], "steady_rate": _steady(report.get("steady_rate")),
            "loop_rate": round(report["rate"], 1), "wall_s": round(wall, 2), "setup_s": round(report["setup_s"], 3),
            "runtime": report.get("runtime"), "skipped": len(report["skipped"]),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024), "load": load_average()}


def _steady(rate) -> float | None:
    """`embed run`'s steady-state rate; it reports 0 when the set fit in one batch (None here,
    so that a too-small set is not read as a rate of zero)."""
    return round(rate, 1) if rate else None


def _remove_cache(cache: Path) -> None:
    for path in (cache, cache.with_name(cache.name + ".parts"), cache.with_name(cache.name + ".lock")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _before_env(before: str) -> dict:
    return dict(_user_env(), PYTHONPATH=str(Path(before) / "headstart"))


def _user_env() -> dict:
    """The environment of a user's shell: bytecode is cached (an installed package has its
    .pyc files), so start-up is not inflated by compiling every module."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return env


# ------------------------------------------------------------------------------ quality


def child_quality(spec: dict) -> dict:
    """Cosine between a photo's features and its 8x upscaled copy's: a rule that aliases
    when it shrinks a big image (plain bilinear sampling) sees another picture."""
    import io

    import numpy as np
    from PIL import Image, ImageOps

    from headstart.embedder.backbones import backbone_network, resolve
    from headstart.embedder.decode import recipe_for
    from headstart.embedder.engine import Engine, Source

    photos = sorted((ASSETS / "photos").glob("*.jpg"))
    sources = []
    for path in photos:
        data = path.read_bytes()
        image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        big = image.resize((image.width * 8, image.height * 8), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        big.save(buffer, "JPEG", quality=90)
        sources += [Source(f"{path.name}", data=data), Source(f"{path.name} x8", data=buffer.getvalue())]
    result = {}
    for rule in ("legacy", "current"):
        resolved = resolve(_config(rule))
        engine = Engine(backbone_network(resolved), recipe_for(resolved.fingerprint), runtime="litert", batch_size=8)
        features = np.concatenate([b.features for b in engine.embed(sources)])
        a, b = features[0::2], features[1::2]
        cosines = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        result[rule] = {p.name: round(float(c), 4) for p, c in zip(photos, cosines)}
    result["upscaled_sizes"] = {p.name: f"{Image.open(p).width * 8}x{Image.open(p).height * 8}" for p in photos}
    return result


# ------------------------------------------------------------------------------ parts


def part_decode(out: dict, sets: dict, args) -> None:
    result = {}
    for name in ("camera", "mid"):
        per_method = {}
        for method in (*METHODS, "sha256"):
            try:
                per_method[method] = run_child(SCRIPT, "decode", json.dumps(
                    {"folder": str(sets[name]), "method": method, "files": 40, "seconds": args.seconds}))
            except RuntimeError as exc:  # e.g. no TensorFlow on this machine
                per_method[method] = {"error": str(exc).strip().splitlines()[-1][:200]}
        result[name] = per_method
    out["decode"] = result


def part_model(out: dict, args) -> None:
    out["model"] = run_child(SCRIPT, "model", json.dumps({"seconds": args.seconds}))


def part_pipeline(out: dict, sets: dict, args) -> None:
    runs: dict[str, list] = {"pillow-draft": [], "tf-ratio": []}
    for _ in range(args.repeats):
        for method in runs:
            runs[method].append(run_child(SCRIPT, "pipeline", json.dumps({"folder": str(sets["camera"]),
                                                                           "method": method})))
    out["pipeline"] = {m: _summary(r) for m, r in runs.items()}


def part_embed(out: dict, sets: dict, work: Path, args) -> None:
    variants = ["current", "legacy"] + (["before"] if args.before else [])
    result = {}
    for name in args.embed_sets.split(","):
        folder = str(sets[name])
        runs: dict[str, list] = {v: [] for v in variants}
        _warm_up(sets, work, args)
        for _ in range(args.repeats):
            for variant in variants:
                if variant == "before":
                    spec = {"folder": folder, "cache_dir": str(work / "before-cache"), "before": str(args.before_dir)}
                    runs[variant].append(run_child(SCRIPT, "before_embed", json.dumps(spec)))
                else:
                    spec = {"folder": folder, "pixels": variant, "cache": str(work / f"embed-{variant}.h5")}
                    runs[variant].append(run_child(SCRIPT, "embed", json.dumps(spec)))
        result[name] = {v: _summary(r) for v, r in runs.items()}
    out["embed"] = result


def _warm_up(sets: dict, work: Path, args) -> None:
    """Convert the backbone once (the store, and an older commit's cache folder), untimed."""
    few = work / "few"
    if not few.is_dir():
        few.mkdir(parents=True)
        for path in sorted(Path(sets["small"]).rglob("*.jpg"))[:2]:
            shutil.copy(path, few / path.name)
    run_child(SCRIPT, "embed", json.dumps({"folder": str(few), "pixels": "current", "cache": str(work / "few.h5")}))
    if args.before:
        run_child(SCRIPT, "before_embed", json.dumps({"folder": str(few), "cache_dir": str(work / "before-cache"),
                                                      "before": str(args.before_dir)}))


def _summary(runs: list[dict]) -> dict:
    """Each run's figures, and for the rates their median and range (the spread)."""
    summary: dict = {"runs": runs}
    for key in ("steady_rate", "loop_rate", "rate", "wall_s", "peak_rss_mb"):
        values = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        if values:
            summary[key] = {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}
    return summary


def part_small(out: dict, sets: dict, work: Path, args) -> None:
    """Small jobs as a user runs them: a new `headstart` process each time."""
    env = _user_env()
    small = work / "small-job"
    ten = small / "ten"
    if not ten.is_dir():
        ten.mkdir(parents=True)
        for path in sorted(Path(sets["camera"]).rglob("*.jpg"))[:10]:
            shutil.copy(path, ten / path.name)
    one = sorted(Path(sets["camera"]).rglob("*.jpg"))[-1]
    train = small / "train"
    if not train.is_dir():
        for path in sorted(Path(sets["small"]).rglob("*.jpg"))[:200]:
            (train / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, train / path.parent.name / path.name)
    weights = ["--weights", _config().weights]
    if _config().weights == "none":  # random MobileNetV2 features underflow float16: store float32
        weights += ["--dtype", "float32"]
    variants = {"current": ([sys.executable, "-c", CLI], env, small / "current")}
    if args.before:
        variants["before"] = ([sys.executable, "-c", BEFORE_CLI], _before_env(str(args.before_dir)), small / "before")
    result: dict = {"python_start_s": [], "import_cli_s": []}
    for _ in range(args.small_repeats):
        result["python_start_s"].append(_wall([sys.executable, "-c", "pass"], env, small))
        result["import_cli_s"].append(_wall([sys.executable, "-c", "import headstart.cli"], env, small))
    for variant, (command, variant_env, folder) in variants.items():
        folder.mkdir(parents=True, exist_ok=True)
        run = folder / "run"
        if not run.is_dir():  # untimed set-up: the backbone converted once, a dense head trained
            _check([*command, "embed", "run", str(train), "--cache", str(folder / "train.h5"), *weights, "-q"],
                   variant_env, folder)
            _check([*command, "head", "train", "--cache", str(folder / "train.h5"), "--out", str(run), "-q"],
                   variant_env, folder)
        predict = [*command, "predict", str(one), "--run", str(run)]
        embed = [*command, "embed", "run", str(ten), "--cache", str(folder / "ten.h5"), *weights, "--json", "-q"]
        _check(predict, variant_env, folder)  # the first call writes bytecode caches
        figures: dict = {"predict_one_s": [], "embed_ten_s": [], "embed_ten_setup_s": [], "embed_ten_loop_s": []}
        for _ in range(args.small_repeats):
            figures["predict_one_s"].append(_wall(predict, variant_env, folder))
            _remove_cache(folder / "ten.h5")
            started = time.perf_counter()
            report = json.loads(_check(embed, variant_env, folder))
            figures["embed_ten_s"].append(round(time.perf_counter() - started, 3))
            figures["embed_ten_setup_s"].append(round(report["setup_s"], 3))
            figures["embed_ten_loop_s"].append(round(report["embed_s"], 3))
        result[variant] = figures
    result["load"] = load_average()
    for key, values in list(_medians(result).items()):
        result[key] = values
    out["small"] = result


def _medians(result: dict) -> dict:
    found = {}
    for name, value in result.items():
        if isinstance(value, list) and value:
            found[f"{name}_median"] = round(statistics.median(value), 3)
        elif isinstance(value, dict):
            found.update({f"{name}.{k}": v for k, v in _medians(value).items()})
    return found


def _check(command: list[str], env: dict, cwd: Path) -> str:
    proc = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{command[3:5]} failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return proc.stdout


def _wall(command: list[str], env: dict, cwd: Path) -> float:
    """Seconds from starting the process to its exit, as a user waits for it."""
    started = time.perf_counter()
    subprocess.run(command, env=env, cwd=cwd, capture_output=True, check=True)
    return round(time.perf_counter() - started, 3)


def part_quality(out: dict) -> None:
    if not (ASSETS / "photos").is_dir() or not WEIGHTS_MOBILENET_V2.is_file():
        out["quality"] = {"skipped": f"needs the real weights and photos in {ASSETS}"}
        return
    out["quality"] = run_child(SCRIPT, "quality", "{}")


# ------------------------------------------------------------------------------ main


def make_sets(work: Path, args) -> dict:
    return {
        "camera": camera_jpegs(work / "camera", args.camera, size=(3000, 4000)),
        "mid": camera_jpegs(work / "mid", args.mid, size=(1500, 2000), seed=1),
        "mixed": _mixed(work / "mixed", args.mixed),
        "small": photo_like_jpegs(work / "small", args.small),
    }


def _mixed(folder: Path, count: int) -> Path:
    """12 MP and 3 MP JPEGs, 500x375 JPEGs and PNGs in one folder (its own files)."""
    share = max(1, count // 10)
    camera_jpegs(folder / "a", 4 * share, size=(3000, 4000), seed=2)
    camera_jpegs(folder / "b", 3 * share, size=(1500, 2000), seed=3, every_png=3)  # one in three: a PNG
    camera_jpegs(folder / "c", count - 7 * share, size=(375, 500), seed=4)
    return folder


def _prepare_before(commit: str, work: Path) -> Path:
    """An older commit's code, checked out as ``<folder>/headstart`` (run with PYTHONPATH)."""
    folder = work / f"before-{commit}"
    target = folder / "headstart"
    if not (target / "cli.py").is_file():
        target.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="all", help=f"comma-separated: {', '.join(PARTS)}, or all")
    parser.add_argument("--camera", type=int, default=160, help="4000x3000 photos")
    parser.add_argument("--mid", type=int, default=160, help="2000x1500 photos")
    parser.add_argument("--mixed", type=int, default=160, help="files in the mixed folder")
    parser.add_argument("--small", type=int, default=1000, help="500x375 photos")
    parser.add_argument("--embed-sets", default="camera,mid,mixed,small", help="sets for --part embed")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each embed/pipeline variant")
    parser.add_argument("--small-repeats", type=int, default=5, help="runs of each small job")
    parser.add_argument("--seconds", type=float, default=4.0, help="per decode/model rate measurement")
    parser.add_argument("--before", default=None, help="a commit to measure as 'before' (e.g. 03518ec)")
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "headstart-bench-photos"))
    parser.add_argument("--child", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.child:
        kind, spec = args.child
        children = {"decode": child_decode, "model": child_model, "pipeline": child_pipeline, "embed": child_embed,
                    "before_embed": child_before_embed, "quality": child_quality}
        print(json.dumps(children[kind](json.loads(spec))))
        return

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ["HEADSTART_HOME"] = str(work / "home")  # converted backbones: the benchmark's own store
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parts = PARTS if args.part == "all" else tuple(args.part.split(","))
    args.before_dir = _prepare_before(args.before, work) if args.before else None
    sets = make_sets(work, args)
    out: dict = {"benchmark": "photos", "machine": machine(), "load_at_start": load_average(),
                 "weights": "imagenet (shared asset)" if WEIGHTS_MOBILENET_V2.is_file() else "none (random)",
                 "sets": {"camera": f"{args.camera} x 4000x3000 q90", "mid": f"{args.mid} x 2000x1500 q90",
                          "mixed": f"{args.mixed} files: 40% 12 MP, 20% 3 MP JPEG, 10% 1024x768 PNG, 30% 500x375",
                          "small": f"{args.small} x 500x375"},
                 "before": args.before}
    steps = {"decode": lambda: part_decode(out, sets, args), "model": lambda: part_model(out, args),
             "pipeline": lambda: part_pipeline(out, sets, args), "embed": lambda: part_embed(out, sets, work, args),
             "small": lambda: part_small(out, sets, work, args), "quality": lambda: part_quality(out)}
    for part in parts:
        steps[part]()
        (work / "partial.json").write_text(json.dumps(out, indent=2))  # a long run's figures so far
    out["load_at_end"] = load_average()
    out["ratios"] = ratios(out)
    print(json.dumps(out, indent=2))


def ratios(out: dict) -> dict:
    """The issue's targets, as ratios measured in this run."""
    found: dict = {}
    embed, decode = out.get("embed", {}), out.get("decode", {})
    camera = embed.get("camera", {})
    median = lambda entry, key="steady_rate": (entry.get(key) or {}).get("median")  # noqa: E731
    if camera.get("current") and camera.get("legacy"):
        found["camera_current_over_legacy_rule"] = _ratio(median(camera["current"]), median(camera["legacy"]))
    if camera.get("current") and camera.get("before"):
        found["camera_current_over_before_commit"] = _ratio(median(camera["current"]), median(camera["before"]))
    draft = decode.get("camera", {}).get("pillow-draft", {})
    many = next((v for k, v in draft.items() if k.startswith("images_per_s_") and not k.endswith("1_thread")), None)
    if camera.get("current") and many:
        found["camera_embed_over_decode_only"] = _ratio(median(camera["current"]), many)
    if embed.get("small", {}).get("current"):
        found["small_500x375_litert_steady"] = median(embed["small"]["current"])
    return found


def _ratio(a, b):
    return round(a / b, 3) if a and b else None


if __name__ == "__main__":
    main()
