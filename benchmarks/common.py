"""Helpers shared by the benchmarks: photo-like test images, machine facts, child processes.

Every measurement that reports a peak RSS runs in its own child process, so the number
belongs to that measurement alone.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

ASSETS = Path(os.environ.get("HEADSTART_ASSETS", REPO_ROOT.parent / "shared" / "assets"))
WEIGHTS_MOBILENET_V2 = ASSETS / "weights" / "mobilenet_v2_1.0_224_imagenet_notop.weights.h5"


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for dist in ("tensorflow", "keras", "numpy", "h5py", "scikit-learn"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions}


def matmul_peak_gflops(n: int = 2048, seconds: float = 3.0) -> float:
    """The machine's float32 matrix-multiply rate with numpy's BLAS: the ceiling any dense
    layer can reach here (2*n^3 flops per product)."""
    import time

    import numpy as np

    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        done += 1
    return 2.0 * n**3 * done / (time.perf_counter() - start) / 1e9


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def photo_like_jpegs(folder: Path, count: int, size=(375, 500), classes=10, seed=0) -> Path:
    """``count`` JPEGs of smooth gradients + blurred noise (they compress like photos).

    Reuses the folder when it already holds them, so reruns of a benchmark start fast.
    They are written by a child process: TensorFlow (the encoder) would otherwise grow this
    process to ~0.7 GB, and a child's ``ru_maxrss`` starts from its parent's peak at fork.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / ".complete"
    if stamp.exists() and stamp.read_text() == f"{count} {size} {classes} {seed}":
        return folder
    for old in folder.glob("class_*"):  # another recipe's files (e.g. a larger count) must not linger
        shutil.rmtree(old)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--jpegs", str(folder), str(count),
                    str(size[0]), str(size[1]), str(classes), str(seed)], check=True, cwd=REPO_ROOT)
    return folder


def _write_photo_like_jpegs(folder: Path, count: int, size, classes: int, seed: int) -> None:
    import numpy as np

    from headstart.embedder.tf_runtime import import_tf

    stamp = folder / ".complete"
    tf = import_tf()
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(count):
        c = i % classes
        base = rng.uniform(40, 215, 3)
        gradient = (xx / w)[..., None] * rng.uniform(-80, 80, 3) + (yy / h)[..., None] * rng.uniform(-80, 80, 3)
        noise = rng.normal(0, 25, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
        image = np.clip(base + gradient + noise, 0, 255).astype(np.uint8)
        target = folder / f"class_{c:02d}" / f"img_{i:06d}.jpg"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes(tf.io.encode_jpeg(image, quality=90).numpy())
    stamp.write_text(f"{count} {size} {classes} {seed}")


ORIENTATIONS = (6, 8, 3)  # EXIF: rotated 90 clockwise, 90 counter-clockwise, 180 (what phones write)


def camera_jpegs(folder: Path, count: int, size=(3000, 4000), quality: int = 90, classes: int = 4, seed: int = 0,
                 orient_every: int = 3, every_png: int = 0) -> Path:
    """``count`` photo-like JPEGs of ``size`` (height, width) at ``quality``, as phones and
    cameras write them: a 4000x3000 one at quality 90 is ~1.7 MB (the issue's measured photo),
    and every ``orient_every``-th carries an EXIF orientation tag (6, 8, 3 in turn). With
    ``every_png`` every such file is a 1024x768 PNG instead (a mixed folder).

    The content is smooth fields at four scales plus a fine grain, so the entropy decoder has
    as much to do as on a real photo of that size (a flat or blocky image would decode
    faster than any camera's). Written by worker processes, reused when already there.
    """
    folder.mkdir(parents=True, exist_ok=True)
    stamp = folder / ".complete"
    recipe = f"camera {count} {size} {quality} {classes} {seed} {orient_every} {every_png}"
    if stamp.exists() and stamp.read_text() == recipe:
        return folder
    for old in folder.glob("class_*"):  # another recipe's files (e.g. a larger count) must not linger
        shutil.rmtree(old)
    from multiprocessing import Pool

    jobs = [(str(folder), i, size, quality, classes, seed, orient_every, every_png) for i in range(count)]
    with Pool(max(1, min(os.cpu_count() or 1, 8))) as pool:
        pool.starmap(_write_camera_jpeg, jobs, chunksize=1)
    stamp.write_text(recipe)
    return folder


def photo_pixels(rng, height: int, width: int, grain: float = 2.0):
    """``uint8 [H, W, 3]``: a colour, smooth random fields at 1/512..1/8 of the size, grain."""
    import numpy as np
    from PIL import Image

    total = np.zeros((height, width, 3), np.int16) + rng.integers(60, 190, 3).astype(np.int16)
    for scale, amplitude in ((512, 45), (128, 30), (32, 18), (8, 10)):
        small = rng.normal(0, amplitude, (max(2, height // scale), max(2, width // scale), 3))
        field = Image.fromarray(np.clip(small + 128, 0, 255).astype(np.uint8)).resize((width, height),
                                                                                      Image.Resampling.BILINEAR)
        total += np.asarray(field, dtype=np.int16) - 128
    tile = np.round(rng.normal(0, grain, (512, 512, 3))).astype(np.int16)
    reps = (-(-height // 512), -(-width // 512), 1)
    total += np.tile(np.roll(tile, int(rng.integers(512)), axis=0), reps)[:height, :width]
    return np.clip(total, 0, 255).astype(np.uint8)


def _write_camera_jpeg(folder: str, i: int, size, quality: int, classes: int, seed: int, orient_every: int,
                       every_png: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng([seed, i])
    target = Path(folder) / f"class_{i % classes:02d}"
    target.mkdir(exist_ok=True)
    if every_png and i % every_png == every_png - 1:
        Image.fromarray(photo_pixels(rng, 768, 1024)).save(target / f"img_{i:05d}.png", optimize=False)
        return
    height, width = size
    image = Image.fromarray(photo_pixels(rng, height, width))
    exif = Image.Exif()
    if orient_every and i % orient_every == 0:
        exif[0x0112] = ORIENTATIONS[(i // orient_every) % len(ORIENTATIONS)]
    image.save(target / f"img_{i:05d}.jpg", "JPEG", quality=quality, exif=exif.tobytes())


def run_child(script: Path, *args: str, timeout: int = 3600) -> dict:
    """Run ``script --child ...`` and return the JSON object it printed last."""
    proc = subprocess.run([sys.executable, str(script), "--child", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__" and len(sys.argv) == 8 and sys.argv[1] == "--jpegs":
    _folder, _count, _h, _w, _classes, _seed = sys.argv[2:]
    _write_photo_like_jpegs(Path(_folder), int(_count), (int(_h), int(_w)), int(_classes), int(_seed))
