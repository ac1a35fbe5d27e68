"""Write a small, download-free sample image set: ``OUT/<class>/<n>.jpg``.

Three classes of smooth, photo-like images that differ in colour and texture, enough to
exercise every stage of headstart in seconds. Usage: python examples/make_sample_images.py OUT
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

CLASSES = {"red_waves": (200, 60, 50), "green_blobs": (60, 180, 70), "blue_stripes": (50, 80, 200)}


def sample_image(rng: np.random.Generator, kind: str, colour, size=(120, 160)) -> np.ndarray:
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if kind == "red_waves":
        pattern = 40 * np.sin(xx / rng.uniform(5, 12) + rng.uniform(0, 6))
    elif kind == "green_blobs":
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        pattern = 60 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(10, 30) ** 2))
    else:
        pattern = 40 * np.sign(np.sin(yy / rng.uniform(3, 8)))
    noise = rng.normal(0, 12, (h // 4 + 1, w // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:h, :w]
    image = np.asarray(colour, np.float32) + pattern[..., None] + noise + rng.uniform(-30, 30, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def main(out: str, per_class: int = 20, seed: int = 0) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from headstart.embedder.tf_runtime import import_tf

    tf = import_tf()
    rng = np.random.default_rng(seed)
    root = Path(out)
    for kind, colour in CLASSES.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            jpeg = tf.io.encode_jpeg(sample_image(rng, kind, colour), quality=90).numpy()
            (root / kind / f"{i:03d}.jpg").write_bytes(jpeg)
    print(f"wrote {per_class * len(CLASSES)} images in {len(CLASSES)} class folders under {root}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python examples/make_sample_images.py OUT_FOLDER")
    main(sys.argv[1])
