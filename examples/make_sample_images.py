"""Write a small, download-free sample image set: ``OUT/<class>/<n>.jpg``.

Three classes of smooth, photo-like images that differ in colour and texture, enough to
exercise every stage of headstart in seconds. Written with Pillow (no TensorFlow import: a
second, not five). Usage: python examples/make_sample_images.py OUT [--per-class N] [--seed S]
(another seed gives other images of the same classes: a labelled set for `headstart eval`).
"""

from __future__ import annotations

import argparse
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
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(out)
    for kind, colour in CLASSES.items():
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(sample_image(rng, kind, colour)).save(root / kind / f"{i:03d}.jpg", quality=90)
    print(f"wrote {per_class * len(CLASSES)} images in {len(CLASSES)} class folders under {root}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write a small sample image set: OUT/<class>/<n>.jpg.")
    parser.add_argument("out", help="the folder to write")
    parser.add_argument("--per-class", type=int, default=20, help="images per class (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images (default 0)")
    args = parser.parse_args()
    main(args.out, args.per_class, args.seed)
