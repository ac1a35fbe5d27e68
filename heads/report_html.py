"""The small HTML vocabulary of ``report.html``: escaped text, tables, inlined images, tiles.

One self-contained page: plain HTML and CSS, no script, no network. Every picture is
inlined as a ``data:`` URI, so the file can be mailed, archived or opened offline and
shows the same thing. Everything put on the page passes through :func:`esc`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Iterable, Sequence

from .contact_sheet import Cell, any_exists, load_thumbnails

TILE = 224  # thumbnails of the page's galleries, px (shown at ~200 px: sharp, ~12 kB each)

CSS = """
:root { --ink: #1d1d1f; --muted: #6b6b70; --line: #dcdce0; --bad: #cd2d2d; --warn: #e68c14; --good: #289646;
        --soft: #f5f5f7; --accent: #2f5fb3; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; word-break: break-all; }
h2 { font-size: 20px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p, li { max-width: 900px; }
.sub { color: var(--muted); margin: 0 0 2px; word-break: break-all; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 18px 0 6px; }
.card { background: var(--soft); border-radius: 8px; padding: 10px 16px; min-width: 140px; }
.card .value { font-size: 26px; font-weight: 700; }
.card .label { color: var(--muted); font-size: 13px; }
.card.headline { background: #e8effa; }
.warnings { background: #fff4e5; border-left: 4px solid var(--warn); padding: 8px 14px; margin: 14px 0; }
.note { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 4px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.path { word-break: break-all; max-width: 520px; }
tr.weak td { background: #fdeeee; }
.bar { display: inline-block; height: 10px; background: var(--accent); border-radius: 2px; vertical-align: middle; }
table.confusion td { text-align: center; min-width: 36px; }
img.plot { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(184px, 1fr)); gap: 14px; margin: 10px 0; }
figure { margin: 0; border-top: 4px solid var(--muted); padding-top: 4px; }
figure.bad { border-top-color: var(--bad); }
figure.warn { border-top-color: var(--warn); }
figure .pics { display: flex; gap: 4px; }
figure .box { width: 100%; aspect-ratio: 1; background: var(--soft); display: flex; align-items: center;
              justify-content: center; overflow: hidden; }
figure img { width: 100%; height: 100%; object-fit: contain; }
figure .missing { color: var(--bad); font-weight: 600; font-size: 13px; text-align: center; padding: 8px;
                  border: 1px solid var(--bad); width: 100%; height: 100%; display: flex; align-items: center;
                  justify-content: center; background: #fbeaea; }
figcaption { font-size: 13px; line-height: 1.35; margin-top: 4px; }
figcaption b { font-weight: 600; }
figcaption .file { color: var(--muted); font-size: 12px; word-break: break-all; }
.gallery.pairs { grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); }
pre { background: var(--soft); padding: 10px 14px; border-radius: 6px; overflow-x: auto; font-size: 13px; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; }
"""


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def fmt(value, spec: str = ".4f") -> str:
    """A number for the page; '-' for missing or non-numeric values."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, (int, float)):
        return format(value, spec) if isinstance(value, float) else f"{value:,}"
    return str(value)


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_file_uri(path) -> str | None:
    """A PNG on disk as a data URI, or None when it is not there."""
    try:
        with open(path, "rb") as fh:
            return data_uri(fh.read(), "image/png")
    except OSError:
        return None


def photo_file_uri(path, quality: int = 85) -> str | None:
    """A PNG of photographs (a contact sheet) as a JPEG data URI: a third of the bytes, and
    on a page nobody sees the difference. None when it is not there or not readable."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    except Exception:
        return None
    return data_uri(buffer.getvalue(), "image/jpeg")


def image_tag(uri: str, alt: str, css: str = "plot") -> str:
    return f'<img class="{css}" src="{uri}" alt="{esc(alt)}">'


def table(header: Sequence[str], rows: Iterable[Sequence], numeric: Sequence[int] = (), css: str = "",
          row_css: Sequence[str] | None = None) -> str:
    """Cells are escaped unless given as ``Raw``; ``numeric`` column indices align right."""
    numeric = set(numeric)
    head = "".join(f'<th{" class=num" if k in numeric else ""}>{esc(h)}</th>' for k, h in enumerate(header))
    body = []
    for n, row in enumerate(rows):
        cells = "".join(f'<td{" class=num" if k in numeric else ""}>{cell if isinstance(cell, Raw) else esc(cell)}</td>'
                        for k, cell in enumerate(row))
        extra = f' class="{row_css[n]}"' if row_css and row_css[n] else ""
        body.append(f"<tr{extra}>{cells}</tr>")
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Raw(str):
    """HTML already built (and escaped) by this module: put on the page as is."""


def _jpeg_uri(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82)
    return data_uri(buffer.getvalue(), "image/jpeg")


def _file_link(location: str, caption: str) -> str:
    """The file's path, linked (file:// for local files, so a click opens the original)."""
    if not location:
        return ""
    if "://" in location:
        href = location
    else:
        try:
            href = Path(location).as_uri()  # percent-encodes spaces and the like
        except ValueError:  # not absolute: a link relative to the page would be wrong
            return esc(caption or location)
    return f'<a class="file" href="{esc(href)}">{esc(caption or location)}</a>'


def gallery(cells: Sequence[Cell], pairs: bool = False) -> str:
    """Figures of thumbnails (JPEG data URIs) with captions; a missing file says so in its box.

    When not one of the files is there, a table of the captions instead of a wall of
    placeholders, and a line that says why."""
    locations = [p.location for cell in cells for p in cell.pictures]
    if not any_exists(locations):
        rows = [[Raw("<br>".join(_file_link(p.location, p.caption) for p in cell.pictures)),
                 " · ".join(([cell.headline] if cell.headline else []) + list(cell.details))] for cell in cells]
        return ('<p class="note">None of these images is where the run says the images are, so they are '
                "listed without pictures.</p>" + table(["file", "what"], rows, css="no-pictures"))
    thumbs = iter(load_thumbnails(locations, TILE))
    figures = []
    for cell in cells:
        boxes, links = [], []
        for picture in cell.pictures:
            image, problem = next(thumbs)
            inner = (image_tag(_jpeg_uri(image), picture.caption, css="thumb") if image is not None
                     else f'<div class="missing">{esc(problem)}</div>')
            boxes.append(f'<div class="box">{inner}</div>')
            links.append(_file_link(picture.location, picture.caption))
        lines = ([f"<b>{esc(cell.headline)}</b>"] if cell.headline else []) + [esc(d) for d in cell.details]
        caption = "<br>".join(lines + [f'<span class="file">{link}</span>' for link in links if link])
        figures.append(f'<figure class="{esc(cell.tone)}"><div class="pics">{"".join(boxes)}</div>'
                       f"<figcaption>{caption}</figcaption></figure>")
    return f'<div class="gallery{" pairs" if pairs else ""}">{"".join(figures)}</div>'


def page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body><main>\n{body}\n</main></body></html>\n")
