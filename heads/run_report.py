"""``report.html``: one page per run, holding everything a person wants to see about it.

Metrics, the per-class table, the confusion matrix, the learning curves, the mistakes as
pictures, the run's parameters and backbone fingerprint, and what ``inspect`` found on its
cache (:mod:`heads.findings`). It reads only the run folder (``head.json``,
``metrics.json``, the plots, ``misclassified.csv``), the images and ``reports/``; it works
the same for head runs and fine-tuned runs, and can be remade at any time
(``headstart report RUN``). :func:`write_run_report` is what ``head train`` and
``finetune`` call at their end.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from headstart.embedder.atomic import write_text_atomic
from headstart.embedder.errors import EXIT_ATTENTION, EXIT_OK, UsageError
from headstart.embedder.storage import is_url, location

from .contact_sheet import MAX_TILES, any_exists, capped_title
from .findings import Finding, candidate_dirs, find_reports, read_findings
from .gallery import GALLERIES, build_sheet
from .report_html import Raw, esc, fmt, gallery, image_tag, page, photo_file_uri, png_file_uri, table
from .runs import Run, load_run

REPORT_FILE = "report.html"
CONFUSION_TABLE_MAX = 20  # classes up to which the confusion matrix is also an HTML table


@dataclass
class RunReportResult:
    run: str
    out: str
    images_root: str
    error_tiles: int
    errors: int
    reports_dir: str
    findings: list = field(default_factory=list)  # the inspect report files shown
    notes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict:
        return asdict(self)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _cache_mtime(meta: dict) -> float | None:
    path = (meta.get("cache") or {}).get("path")
    if not path or is_url(path):
        return None
    try:
        return os.path.getmtime(path)
    except OSError:
        return None


def _images_root(meta: dict, images: str | os.PathLike | None) -> str:
    root = images if images is not None else (meta.get("cache") or {}).get("images_root")
    if not root:
        return ""
    return str(root) if is_url(str(root)) else str(Path(location(root)).absolute())


# ---------------------------------------------------------------------------- sections


def _title_block(run: Run, meta: dict, images_root: str) -> str:
    from headstart.embedder.fingerprint import describe

    kind = "fine-tuned backbone + dense head" if run.kind == "finetuned" else f"{run.head_type} head"
    cache = meta.get("cache") or {}
    lines = [f"<h1>{esc(run.path.name)}</h1>",
             f'<p class="sub">{esc(kind)} on {esc(describe(run.fingerprint))}; created {esc(meta.get("created", "?"))}'
             f"</p>",
             f'<p class="sub">run folder: {esc(run.path.resolve())}</p>',
             f'<p class="sub">cache: {esc(cache.get("path", "?"))}</p>',
             f'<p class="sub">images: {esc(images_root or "unknown")} (the paths below are relative to it)</p>']
    if run.kind == "finetuned" and meta.get("finetuned_from"):
        lines.append(f'<p class="sub">fine-tuned from: {esc(meta["finetuned_from"])}</p>')
    return "\n".join(lines)


def _card(label: str, value: str, headline: bool = False) -> str:
    return (f'<div class="card{" headline" if headline else ""}"><div class="value">{esc(value)}</div>'
            f'<div class="label">{esc(label)}</div></div>')


def _summary(run: Run, meta: dict, metrics: dict) -> str:
    split = metrics.get("split") or "val"
    cards = [_card(f"{split} accuracy", fmt(metrics.get("accuracy")), headline=True),
             _card("macro-F1", fmt(metrics.get("macro_f1"))),
             _card("log-loss", fmt(metrics.get("log_loss"))),
             _card(f"{split} images", fmt(metrics.get("n")))]
    for k, value in (metrics.get("top_k_accuracy") or {}).items():
        cards.append(_card(f"top-{k} accuracy", fmt(value)))
    test = metrics.get("test") or {}
    if test.get("accuracy") is not None:
        cards.append(_card(f"test accuracy (n={fmt(test.get('n'))})", fmt(test.get("accuracy"))))
    head_alone = (meta.get("head_metrics") or {}).get("accuracy")
    if run.kind == "finetuned" and isinstance(head_alone, (int, float)):
        cards.append(_card("accuracy of the head alone, before fine-tuning", fmt(head_alone)))
    parts = [f'<div class="cards">{"".join(cards)}</div>']
    if metrics.get("misclassified") is not None:
        parts.append(f"<p>{fmt(metrics['misclassified'])} of {fmt(metrics.get('n'))} {esc(split)} images "
                     f"misclassified.</p>")
    warnings = [str(w) for w in meta.get("warnings") or []]
    if warnings:
        parts.append('<div class="warnings"><b>Warnings recorded with the run</b><ul>'
                     + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")
    return "\n".join(parts)


def _per_class(metrics: dict) -> str:
    per_class = metrics.get("per_class") or {}
    if not per_class:
        return '<p class="note">No per-class metrics were recorded (metrics.json is missing or empty).</p>'
    rows, css = [], []
    supported = [v["recall"] for v in per_class.values() if v.get("support")]
    worst = min(supported) if supported else None
    for name, v in per_class.items():
        bar = Raw(f'<span class="bar" style="width:{max(0.0, min(1.0, v.get("recall", 0))) * 80:.0f}px"></span> '
                  f'{fmt(v.get("recall"), ".3f")}')
        rows.append([name, fmt(v.get("support")), fmt(v.get("precision"), ".3f"), bar, fmt(v.get("f1"), ".3f")])
        css.append("weak" if v.get("support") and worst is not None and v["recall"] == worst and worst < 1 else "")
    note = '<p class="note">The class with the lowest recall is shaded.</p>' if any(css) else ""
    return table(["class", "support", "precision", "recall", "F1"], rows, numeric=(1, 2, 4), css="per-class",
                 row_css=css) + note


def _confusion(run: Run, metrics: dict) -> str:
    parts = []
    uri = png_file_uri(run.path / "confusion.png")
    if uri:
        parts.append(image_tag(uri, "confusion matrix"))
    matrix = metrics.get("confusion_matrix")
    classes = metrics.get("classes") or run.classes
    if matrix and len(classes) <= CONFUSION_TABLE_MAX:
        header = ["true \\ predicted"] + list(classes)
        rows = [[name] + [fmt(v) for v in row] for name, row in zip(classes, matrix)]
        parts.append(table(header, rows, numeric=range(1, len(classes) + 1), css="confusion"))
    return "\n".join(parts) or '<p class="note">No confusion matrix was recorded.</p>'


def _curves(run: Run, meta: dict) -> str:
    uri = png_file_uri(run.path / "history.png")
    if uri:
        best = meta.get("best_epoch")
        epochs = meta.get("epochs_run")
        text = (f"<p>Kept epoch {fmt(best)} of {fmt(epochs)}"
                f"{' (stopped early)' if meta.get('stopped_early') else ''}.</p>" if best else "")
        return image_tag(uri, "learning curves") + text
    return (f'<p class="note">No learning curves: a {esc(run.head_type)} head is fit in one go, with no '
            f"epochs.</p>")


def _errors(run: Run, images_root: str) -> tuple[str, int, int]:
    path = run.path / "misclassified.csv"
    if not path.is_file():
        return '<p class="note">No misclassified.csv in the run folder.</p>', 0, 0
    with open(path, newline="", encoding="utf-8") as fh:
        sheet, total = build_sheet("misclassified", csv.DictReader(fh), images_root or None, limit=MAX_TILES)
    cells = sheet.cells
    if not cells:
        return "<p>No validation image was misclassified.</p>", 0, 0
    intro = (f"<p>{esc(capped_title(GALLERIES['misclassified'].what, len(cells), total))}, "
             f"{esc(GALLERIES['misclassified'].order)}. Each file name links to the image.</p>")
    if not images_root:
        intro += '<p class="note">The images root is not known, so the pictures cannot be shown.</p>'
    pictures = any_exists([p.location for cell in cells for p in cell.pictures])
    return intro + gallery(cells), len(cells) if pictures else 0, total


def _findings(findings: list[Finding], reports_dir: Path | None, stem: str) -> str:
    if not findings:
        where = f" in {reports_dir}" if reports_dir else ""
        return (f'<p class="note">No inspect report of cache {esc(stem)}{esc(where)}. Run '
                f"<code>headstart inspect duplicates|labels|outliers --cache CACHE</code> and remake this page with "
                f"<code>headstart report RUN</code>.</p>")
    parts = []
    for finding in findings:
        stale = (' <span class="note">(written before the cache last changed: it may describe other images)</span>'
                 if finding.stale else "")
        parts.append(f"<h3>{esc(finding.kind)}</h3><p class=\"sub\">{esc(finding.path.resolve())}, "
                     f"{esc(finding.modified)}{stale}</p>")
        parts.extend(f"<p>{esc(line)}</p>" for line in finding.summary)
        if finding.picture is not None:
            photos = finding.kind == "samples"
            uri = photo_file_uri(finding.picture) if photos else png_file_uri(finding.picture)
            if uri:
                parts.append(image_tag(uri, finding.kind))
        if finding.cells:
            parts.append(f"<p>{esc(capped_title(GALLERIES[finding.kind].what, len(finding.cells), finding.shown_of))}"
                         f", worst first:</p>")
            parts.append(gallery(finding.cells, pairs=finding.kind == "duplicates"))
    return "\n".join(parts)


def _parameters(run: Run, meta: dict) -> str:
    params = meta.get("params") or {}
    rows = [[k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else fmt(v, "g")] for k, v in params.items()]
    parts = [table(["parameter", "value"], rows, css="params") if rows else '<p class="note">No parameters.</p>']
    split = meta.get("split") or {}
    if split:
        counts = split.get("counts") or {}
        detail = ", ".join(f"{fmt(v)} {k}" for k, v in counts.items())
        how = split.get("source", "?")
        if how != "layout":
            how += f", val fraction {fmt(split.get('val_fraction'), 'g')}, seed {fmt(split.get('seed'))}"
        parts.append(f"<p>Split: {esc(detail)} ({esc(how)}).</p>")
    facts = [("kind", run.kind), ("head type", run.head_type), ("best epoch", meta.get("best_epoch")),
             ("epochs run", meta.get("epochs_run")), ("training seconds", meta.get("train_seconds")),
             ("unfrozen layers", ", ".join(meta.get("unfrozen_layers") or []) or None),
             ("model file", meta.get("model_file")), ("model sha256", meta.get("model_sha256"))]
    parts.append(table(["fact", "value"], [[k, fmt(v, ".1f")] for k, v in facts if v not in (None, "")], css="facts"))
    versions = meta.get("versions") or {}
    if versions:
        parts.append(f"<p class=\"sub\">Libraries: {esc(', '.join(f'{k} {v}' for k, v in versions.items()))}</p>")
    return "\n".join(parts)


def _fingerprint(run: Run) -> str:
    from headstart.embedder.fingerprint import describe

    return (f"<p>{esc(describe(run.fingerprint))}</p>"
            f"<pre>{esc(json.dumps(run.fingerprint, indent=2, sort_keys=True, default=str))}</pre>")


# ------------------------------------------------------------------------------- writing


def build_page(run_dir: str | os.PathLike, reports_dir: str | os.PathLike | None = None,
               images: str | os.PathLike | None = None) -> tuple[str, RunReportResult]:
    """The page's HTML and what went into it."""
    run = load_run(run_dir)
    meta = run.meta
    images_root = _images_root(meta, images)
    metrics = _read_json(run.path / "metrics.json")
    notes = []
    if metrics is None:
        metrics = dict(meta.get("metrics") or {})
        notes.append("metrics.json is missing or unreadable: the page shows head.json's summary only")
    stem = Path(str((meta.get("cache") or {}).get("path", "cache"))).stem
    if reports_dir is not None and not Path(reports_dir).is_dir():
        raise UsageError(f"--reports {reports_dir} is not a folder; pass the folder `headstart inspect` wrote into")
    folders = [Path(reports_dir)] if reports_dir is not None else candidate_dirs(run.path)
    found_dir, files = find_reports(stem, folders)
    findings = read_findings(stem, files, images_root or None, _cache_mtime(meta))
    errors_html, tiles, errors = _errors(run, images_root)
    missing_images = bool(images_root) and not is_url(images_root) and not Path(images_root).is_dir()
    if missing_images:
        notes.append(f"the images folder {images_root} is not there (moved?): pass --images with where it is now")
    sections = [
        _title_block(run, meta, images_root),
        _summary(run, meta, metrics),
        *(f'<p class="note">{esc(n)}.</p>' for n in notes),
        '<h2 id="per-class">Per class</h2>', _per_class(metrics),
        '<h2 id="confusion">Confusion matrix</h2>', _confusion(run, metrics),
        '<h2 id="curves">Learning curves</h2>', _curves(run, meta),
        '<h2 id="errors">Mistakes</h2>', errors_html,
        '<h2 id="findings">Data quality (inspect reports on this cache)</h2>', _findings(findings, found_dir, stem),
        '<h2 id="parameters">Parameters</h2>', _parameters(run, meta),
        '<h2 id="fingerprint">Backbone fingerprint</h2>', _fingerprint(run),
        f"<footer>Made by headstart {esc(_version())} on "
        f"{esc(_dt.datetime.now().isoformat(sep=' ', timespec='seconds'))}; remake it with "
        f"<code>headstart report {esc(run.path)}</code>.</footer>",
    ]
    result = RunReportResult(run=str(run.path), out="", images_root=images_root, error_tiles=tiles, errors=errors,
                             reports_dir=str(found_dir or ""), findings=[str(f.path) for f in findings], notes=notes,
                             # a page without its pictures ran, but needs a look
                             exit_code=EXIT_ATTENTION if missing_images else EXIT_OK)
    return page(f"headstart run {run.path.name}", "\n".join(sections)), result


def write_run_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                     reports_dir: str | os.PathLike | None = None,
                     images: str | os.PathLike | None = None) -> RunReportResult:
    """Write ``report.html`` into the run folder (or ``out``), crash-safely."""
    html_text, result = build_page(run_dir, reports_dir, images)
    out_path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    write_text_atomic(out_path, html_text)
    result.out = str(out_path)
    return result


def _version() -> str:
    from headstart import __version__

    return __version__
