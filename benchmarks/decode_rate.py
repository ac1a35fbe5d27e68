"""How many JPEGs per second can this machine's CPUs decode and resize? Prints JSON.

The embedding job's other half: on a GPU box the backbone can outrun the decoder, so the
decode rate is the job's ceiling there. This needs neither TensorFlow nor a GPU (it runs
on machines that have neither), so it uses Pillow (libjpeg-turbo, as TensorFlow's decoder)
as a proxy for ``tf.data``'s decode + bilinear resize: 500x375 photo-like JPEGs
(quality 90) -> RGB -> 224x224, in 1..N worker processes.

    python benchmarks/decode_rate.py --images 1500
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import time
from multiprocessing import Pool

import numpy as np

_JPEGS: list[bytes] = []


def make_jpegs(count: int, size=(375, 500), seed: int = 0) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(count):
        gradient = (xx / w)[..., None] * rng.uniform(-80, 80, 3) + (yy / h)[..., None] * rng.uniform(-80, 80, 3)
        noise = rng.normal(0, 25, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
        image = np.clip(rng.uniform(40, 215, 3) + gradient + noise, 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def _init(jpegs: list[bytes]) -> None:
    global _JPEGS
    _JPEGS = jpegs


def _decode(index: int) -> int:
    from PIL import Image

    image = Image.open(io.BytesIO(_JPEGS[index % len(_JPEGS)])).convert("RGB")
    pixels = np.asarray(image.resize((224, 224), Image.BILINEAR), dtype=np.float32)
    return int(pixels.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1500, help="decodes per measurement")
    parser.add_argument("--distinct", type=int, default=200, help="distinct JPEGs (decoded round-robin)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jpegs = make_jpegs(args.distinct)
    workers = sorted({1, 2, 4, 8, 16, cores} & set(range(1, cores + 1)))
    rates = {}
    for n in workers:
        with Pool(n, initializer=_init, initargs=(jpegs,)) as pool:
            pool.map(_decode, range(4 * n))  # warm-up
            started = time.perf_counter()
            pool.map(_decode, range(args.images), chunksize=16)
            rates[n] = args.images / (time.perf_counter() - started)
    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(json.dumps({"benchmark": "decode_rate", "machine": {"cpu": cpu, "cores": cores,
                                                              "python": platform.python_version()},
                      "decoder": "Pillow (libjpeg-turbo) decode + bilinear resize to 224, float32",
                      "jpeg": "500x375 photo-like, quality 90, ~%d KB" % (sum(map(len, jpegs)) / len(jpegs) / 1024),
                      "images_per_s_by_workers": {str(k): round(v, 1) for k, v in rates.items()},
                      "ms_per_image_one_core": round(1000 / rates[1], 2)}, indent=2))


if __name__ == "__main__":
    main()
