"""report.html: one self-contained page per run, checked by parsing it and by rendering it.

The page's numbers must be the run's own (metrics.json), every class must be in its table,
every picture must be inlined and decode, and headless Chromium must draw a page that is
not blank (skipped where Chromium is not installed).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from conftest import CLASS_COLOURS, make_class_folders, photo_like, save_image
from feature_caches import make_cache

CLASSES = ("ants", "bees", "wasps")


class Page(HTMLParser):
    """What a test needs of the page: images, links, tables by class, figures per section."""

    def __init__(self, text: str):
        super().__init__()
        self.images, self.links, self.scripts = [], [], 0
        self.section = ""
        self.figures: dict[str, int] = {}
        self.tables: dict[str, list[list[list[str]]]] = {}  # class -> its tables, in page order
        self._table = None
        self._cell = None
        self.text: list[str] = []
        self.sections: dict[str, list[str]] = {}  # text under each h2 id
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "a":
            self.links.append(attrs.get("href", ""))
        elif tag == "script":
            self.scripts += 1
        elif tag == "h2":
            self.section = attrs.get("id", "")
        elif tag == "figure":
            self.figures[self.section] = self.figures.get(self.section, 0) + 1
        elif tag == "table" and attrs.get("class"):
            self._table = []
            self.tables.setdefault(attrs["class"], []).append(self._table)
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []

    def table(self, css: str, k: int = 0) -> list[list[str]]:
        """The k-th table of that class: its rows of cell texts (the header row first)."""
        return self.tables[css][k]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._table[-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        self.sections.setdefault(self.section, []).append(data)
        if self._cell is not None:
            self._cell.append(data)


def decode_data_uri(uri: str):
    from PIL import Image

    assert uri.startswith("data:image/") and ";base64," in uri, uri[:40]
    image = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    image.load()
    return image


def write_images_for(cache_path: Path) -> Path:
    """Class-coloured images at the paths the cache lists (make_cache records ``images/`` beside it)."""
    from headstart.embedder.cache import open_cache

    cache = open_cache(cache_path)
    rng = np.random.default_rng(0)
    for path, label in zip(cache.paths, cache.labels):
        save_image(Path(cache.images_root) / str(path), photo_like(rng, (40, 48), CLASS_COLOURS[int(label)]))
    return Path(cache.images_root)


@pytest.fixture(scope="module")
def head_run(tmp_path_factory):
    """A logreg run with mistakes on a cache whose images exist, and inspect reports beside runs/."""
    from headstart import cli

    work = tmp_path_factory.mktemp("report")
    cache = make_cache(work / "cache" / "c.h5", per_class=30, separation=0.5)
    images = write_images_for(cache)
    run = work / "runs" / "logreg"
    assert cli.main(["head", "train", "--cache", str(cache), "--head", "logreg", "--C", "1", "--out", str(run), "-q"]) == 0
    assert cli.main(["inspect", "labels", "--cache", str(cache), "--out", str(work / "reports" / "c-label-errors.csv"),
                     "-q"]) == 0
    assert cli.main(["inspect", "duplicates", "--cache", str(cache), "--out",
                     str(work / "reports" / "c-duplicates.csv"), "-q"]) in (0, 1)
    return {"work": work, "cache": cache, "images": images, "run": run}


def test_head_run_page_holds_the_runs_numbers_and_pictures(head_run, run_cli):
    run = head_run["run"]
    code, stdout, err = run_cli("report", run)
    assert code == 0, err
    html_path = run / "report.html"
    assert f"wrote {html_path}" in stdout and f"images:   {head_run['images']}" in stdout
    page = Page(html_path.read_text(encoding="utf-8"))
    text = " ".join(page.text)
    metrics = json.loads((run / "metrics.json").read_text())

    # Offline and self-contained: every picture inlined and decodable, nothing fetched, no script.
    assert page.images and page.scripts == 0
    for uri in page.images:
        assert decode_data_uri(uri).size[0] > 0
    assert not [link for link in page.links if link.startswith(("http:", "https:"))]

    # The run's own numbers.
    assert f"{metrics['accuracy']:.4f}" in text and f"{metrics['macro_f1']:.4f}" in text
    table = page.table("per-class")
    assert [row[0] for row in table[1:]] == list(CLASSES)
    for row in table[1:]:
        numbers = metrics["per_class"][row[0]]
        assert row[1] == f"{numbers['support']:,}" and row[2] == f"{numbers['precision']:.3f}"
        assert row[3].endswith(f"{numbers['recall']:.3f}")
    confusion = page.table("confusion")
    assert [[int(v) for v in row[1:]] for row in confusion[1:]] == metrics["confusion_matrix"]

    # The mistakes: one figure per line of misclassified.csv, up to the cap, each linking its file.
    with open(run / "misclassified.csv", newline="") as fh:
        wrong = list(csv.DictReader(fh))
    assert 0 < len(wrong) == metrics["misclassified"]
    assert page.figures["errors"] == min(len(wrong), 48)
    assert (head_run["images"] / wrong[0]["path"]).as_uri() in page.links

    # The inspect findings of this cache, from reports/ beside runs/.
    reports = head_run["work"] / "reports"
    with open(reports / "c-label-errors.csv", newline="") as fh:
        suspects = sum(1 for r in csv.DictReader(fh) if float(r["score"]) > 0)
    with open(reports / "c-duplicates.csv", newline="") as fh:
        pairs = sum(1 for _ in csv.DictReader(fh))
    assert f"for {suspects:,} of them a model that never saw them prefers another label" in text
    assert suspects > 0 and page.figures["findings"] == min(suspects, 12) + min(pairs, 12)
    assert str(reports / "c-duplicates.csv") in text

    # Parameters and fingerprint.
    meta = json.loads((run / "head.json").read_text())
    assert meta["fingerprint"]["architecture"] in text
    assert ["C", "1"] in page.table("params")


def test_page_says_when_images_are_gone(head_run, tmp_path, run_cli):
    out = tmp_path / "page.html"
    # The whole folder gone: exit 1 (the page lacks its pictures), and the page lists the mistakes as text.
    code, stdout, err = run_cli("report", head_run["run"], "--out", out, "--images", tmp_path / "nowhere")
    assert code == 1 and "is not there" in err and "--images" in err
    assert "listed without pictures (their images were not found)" in stdout
    page = Page(out.read_text(encoding="utf-8"))
    assert "listed without pictures" in " ".join(page.text)
    assert "errors" not in page.figures and "findings" not in page.figures  # the CSVs' abs_path are not used
    with open(head_run["run"] / "misclassified.csv", newline="") as fh:
        wrong = list(csv.DictReader(fh))
    assert len(page.table("no-pictures")) == 1 + min(len(wrong), 48)

    # Moved, with one file lost on the way: --images finds the rest; the lost one says so in its tile.
    moved = tmp_path / "moved"
    shutil.copytree(head_run["images"], moved)
    (moved / wrong[0]["path"]).unlink()
    code, stdout, err = run_cli("report", head_run["run"], "--out", out, "--images", moved, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["images_root"] == str(moved) and result["error_tiles"] == result["errors"] == len(wrong)
    page = Page(out.read_text(encoding="utf-8"))
    assert page.figures["errors"] == min(len(wrong), 48)
    assert " ".join(page.sections["errors"]).count("file not found") == 1


def test_report_refuses_what_is_not_a_run(tmp_path, run_cli, head_run):
    for args in ([tmp_path / "missing"], [tmp_path], [head_run["run"], "--reports", tmp_path / "none"]):
        code, stdout, err = run_cli("report", *args)
        assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "--reports" in err


def test_finetuned_run_page(tmp_path_factory, tiny_model_file, run_cli):
    """A real fine-tuned run (its head.json has no feature-based head, but history and head_metrics)."""
    work = tmp_path_factory.mktemp("ft-report")
    images = work / "images"
    make_class_folders(images, classes=("cats", "dogs"), per_class=8, size=(48, 48), split="train")
    make_class_folders(images, classes=("cats", "dogs"), per_class=4, size=(48, 48), split="val", seed=1)
    cache, head, tuned = work / "c.h5", work / "runs" / "head", work / "runs" / "tuned"
    assert run_cli("embed", "run", images, "-b", tiny_model_file, "--cache", cache, "-q")[0] == 0
    assert run_cli("head", "train", "--cache", cache, "--epochs", "5", "--hidden", "8", "--out", head, "-q")[0] == 0
    code, stdout, err = run_cli("finetune", "--from", head, "--out", tuned, "--epochs", "2", "--unfreeze", "1",
                                "--no-augment", "-q")
    assert code == 0, err
    code, stdout, err = run_cli("report", tuned)
    assert code == 0, err
    meta = json.loads((tuned / "head.json").read_text())
    metrics = json.loads((tuned / "metrics.json").read_text())
    assert meta["kind"] == "finetuned"
    page = Page((tuned / "report.html").read_text(encoding="utf-8"))
    text = " ".join(page.text)
    assert "fine-tuned backbone + dense head" in text
    assert f"{metrics['accuracy']:.4f}" in text and f"{meta['head_metrics']['accuracy']:.4f}" in text
    assert [row[0] for row in page.table("per-class")[1:]] == ["cats", "dogs"]
    assert len([decode_data_uri(uri) for uri in page.images]) >= 2  # confusion matrix and learning curves at least
    assert "No learning curves" not in text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.subprocess
@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_renders_in_headless_chromium(head_run, tmp_path):
    from PIL import Image

    from headstart.heads.run_report import write_run_report

    result = write_run_report(head_run["run"], out=tmp_path / "page.html")
    shot = tmp_path / "shot.png"
    command = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
               Path(result.out).resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), done.stderr[-2000:]
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 20  # not a blank (or one-colour) page
    colours = np.unique((pixels[::4, ::4] // 8).reshape(-1, 3), axis=0)
    assert len(colours) > 200  # text, plots and photographs, not a flat error page
    # The mistakes' gallery is drawn on the first screen: its red frames and the (red, green,
    # blue) photographs; the plain page has no saturated red.
    red = np.sum((pixels[..., 0] > 150) & (pixels[..., 1] < 110) & (pixels[..., 2] < 110))
    assert red > 1000
