"""What the pictures cost: a 48-tile gallery and a run's report.html, on web-size and camera-size JPEGs. Prints JSON.

Galleries are written at the end of ``inspect`` reports and of every evaluation, so their
price must stay small beside the job's own. Measured here, each in seconds (the best of
``--repeat`` runs, the machine being noisy):

* ``sheet_s``: ``write_gallery`` of 48 misclassified images (decode, thumbnail, draw, PNG);
* ``decode_draft_s`` / ``decode_full_s``: only decoding the 48 thumbnails, with Pillow's
  JPEG ``draft`` (DCT-scaled decoding: what the galleries use) and without it;
* ``report_s``: the mistakes' HTML gallery of report.html (48 JPEG data URIs).

The images: the hymenoptera photos (~500 x 375) when ``../shared/assets`` is there, else
photo-like JPEGs of that size, and photo-like 4000 x 3000 JPEGs (a camera's).

    python benchmarks/galleries.py --repeat 3
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
import time
from pathlib import Path

from common import ASSETS, machine


def _jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        gradient = (xx / w)[..., None] * rng.uniform(-80, 80, 3) + (yy / h)[..., None] * rng.uniform(-80, 80, 3)
        noise = rng.normal(0, 25, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
        image = np.clip(rng.uniform(40, 215, 3) + gradient + noise, 0, 255).astype(np.uint8)
        path = folder / f"img_{i:03d}.jpg"
        Image.fromarray(image).save(path, quality=90)
        out.append(path)
    return out


def _csv(path: Path, root: Path, files: list[Path]) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "true", "predicted", "confidence"])
        for k, f in enumerate(files):
            writer.writerow([str(f.relative_to(root)), "a", "b", 0.99 - k * 0.01])


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(min(times), 3)


def _decode(files: list[Path], draft: bool) -> None:
    from PIL import Image

    for f in files:
        with Image.open(f) as image:
            if draft:
                image.draft("RGB", (176, 176))
            image.convert("RGB").thumbnail((176, 176))


def measure(name: str, root: Path, files: list[Path], work: Path, repeat: int) -> dict:
    from headstart.heads.gallery import build_sheet, write_gallery
    from headstart.heads.report_html import gallery

    table = work / f"{name}.csv"
    _csv(table, root, files)
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cells = build_sheet("misclassified", rows, str(root))[0].cells
    result = {
        "images": len(files),
        "sheet_s": _best(lambda: write_gallery("misclassified", table, str(root), out=work / f"{name}.png"), repeat),
        "decode_draft_s": _best(lambda: _decode(files, True), repeat),
        "decode_full_s": _best(lambda: _decode(files, False), repeat),
        "report_s": _best(lambda: gallery(cells), repeat),
    }
    result["png_bytes"] = (work / f"{name}.png").stat().st_size
    result["html_bytes"] = len(gallery(cells))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results = {"machine": machine(), "tiles": 48}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hymenoptera = ASSETS / "data" / "hymenoptera"
        if hymenoptera.is_dir():
            web = sorted(hymenoptera.rglob("*.jpg"))[:48]
            results["web"] = {"source": "hymenoptera", **measure("web", hymenoptera, web, work, args.repeat)}
        else:
            web = _jpegs(work / "web", 48, (375, 500))
            results["web"] = {"source": "photo-like 500x375", **measure("web", work / "web", web, work, args.repeat)}
        camera = _jpegs(work / "camera", 48, (3000, 4000), seed=1)
        results["camera"] = {"source": "photo-like 4000x3000",
                             **measure("camera", work / "camera", camera, work, args.repeat)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
