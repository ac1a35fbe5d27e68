"""Helpers shared by the benchmarks: photo-like test images, machine facts, child processes.

Every measurement that reports a peak RSS runs in its own child process, so the number
belongs to that measurement alone.
"""

from __future__ import annotations

import json
import os
import platform
import resource
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
