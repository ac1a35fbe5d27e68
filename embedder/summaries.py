"""What the embedding commands print: their reports as lines a person reads.

The command line only chooses where lines go: a :class:`Summary` holds the lines for stdout
(what the command did) and for stderr (warnings and problems, which ``--quiet`` keeps).
Keeping the wording here, beside the reports, lets the CLI stay wiring and lets tests read
the text without running a command.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Summary:
    out: list[str] = field(default_factory=list)  # what happened (hidden by --quiet)
    err: list[str] = field(default_factory=list)  # warnings and problems (always shown)


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 image``, ``2 images``, ``1,024 batches`` (``many`` for irregular plurals)."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def embed_run(report) -> Summary:
    """`embed run`'s report (:class:`embedder.job.EmbedReport`)."""
    from .fingerprint import describe

    s = Summary()
    if report.embedded:
        steady = f"; {report.steady_rate:.1f} after the first batch" if report.steady_rate else ""
        s.out.append(f"embedded {plural(report.embedded, 'new image')} in {report.embed_s:.1f} s "
                     f"({report.rate:.1f} img/s{steady}) plus {report.setup_s:.1f} s of set-up "
                     f"({report.runtime}, {plural(report.workers, 'decoding thread')})")
    else:
        s.out.append("nothing new to embed: the cache already holds every image's bytes")
    if report.views_embedded:
        s.out.append(f"embedded {plural(report.views_embedded, 'augmented view')} in {report.views_s:.1f} s "
                     f"({report.views_rate:.1f} views/s)")
    if report.views:
        missing = (f"; {plural(report.views_missing, 'row')} whose files are gone lack some"
                   if report.views_missing else "")
        s.out.append(f"views: {report.views} per image (seed {report.views_seed}){missing}")
    s.out.append(f"reused {report.reused:,}; skipped {len(report.skipped):,}; "
                 f"total {report.elapsed_s:.1f} s")
    if report.unchanged:
        s.out.append(f"read and hashed {plural(report.hashed, 'file')} ({report.hashed_bytes / 1e6:,.1f} MB); "
                     f"{report.unchanged:,} unchanged since the last run were not read (--rehash reads them)")
    extra = f", {plural(report.duplicates, 'duplicate file')}" if report.duplicates else ""
    s.out.append(f"cache: {report.cache_path} ({plural(report.rows, 'row')} for {plural(report.files, 'file')}"
                 f"{extra}, {report.cache_bytes / 1e6:.1f} MB)")
    device = f", {report.runtime_device}" if report.runtime_device else ""
    runtime = f" (runtime: {report.runtime}{device})" if report.runtime else ""
    s.out.append(f"backbone: {describe(report.fingerprint)}{runtime}")
    s.out.append(f"images: {report.images_root} ({report.layout}; the cache's paths are relative to it)")
    if report.resumed_parts:
        s.out.append(f"resumed: {plural(report.resumed_parts, 'batch', 'batches')} from an interrupted run were kept")
    if report.ignored_files:
        s.out.append(f"ignored {plural(report.ignored_files, 'non-image file')}")
    s.err.extend(f"warning: {w}" for w in report.warnings)
    if report.skipped:
        s.err.append(f"skipped {plural(len(report.skipped), 'file')} (listed in the cache's /failures):")
        for reason, count in report.skipped_by_reason().items():
            example = next(x["path"] for x in report.skipped if x["reason"] == reason)
            s.err.append(f"  {count:>6,}  {reason}  (e.g. {example})")
    if report.label_conflicts:
        s.err.append(f"label conflicts: {plural(len(report.label_conflicts), 'image')} with the same bytes under "
                     f"different classes:")
        for conflict in report.label_conflicts[:5]:
            s.err.append(f"  {', '.join(conflict['paths'])}  ({' vs '.join(conflict['labels'])})")
    return s


def embed_merge(report) -> Summary:
    s = Summary(err=[f"warning: {w}" for w in report.warnings])
    kind = "virtual dataset over the shards" if report.virtual else "copy"
    s.out.append(f"merged {plural(len(report.shards), 'shard')} into {report.out} ({kind}): "
                 f"{plural(report.rows, 'row')}, {plural(report.files, 'file')}, "
                 f"{plural(report.failures, 'failure')}, {report.size_bytes / 1e6:.1f} MB")
    return s


def embed_info(info: dict) -> Summary:
    s = Summary(err=[f"warning: {w}" for w in info["warnings"]])
    out = s.out
    out.append(f"cache:       {info['path']} ({info['size_bytes'] / 1e6:.1f} MB on disk, format {info['format_version']})")
    out.append(f"backbone:    {info['fingerprint_text']}")
    out.append(f"images:      {info['images_root']} ({info['layout'] or 'layout unknown'})")
    out.append(f"features:    {plural(info['rows'], 'row')} x {info['dim']:,} {info['storage_dtype']}")
    if info["views"]:
        out.append(f"views:       {info['views']['count']} augmented views per row (seed {info['views']['seed']})")
    out.append(f"files:       {info['files']:,} ({info['duplicate_files']:,} share bytes with another)")
    out.append(f"written:     created {info['created']}, updated {info['updated']}")
    splits = sorted({x for counts in info["counts"].values() for x in counts})
    width = max([len(n) for n in info["counts"]] + [5])
    out.append("")
    out.append(f"{'class':<{width}}  " + "  ".join(f"{x:>7}" for x in splits) + f"  {'total':>7}")
    for name, counts in info["counts"].items():
        cells = "  ".join(f"{counts.get(x, 0):>7,}" for x in splits)
        out.append(f"{name:<{width}}  {cells}  {sum(counts.values()):>7,}")
    if info["failures"]:
        out.append(f"\nfailures: {info['failures']:,}")
        out.extend(f"  {count:>6,}  {reason}" for reason, count in info["failures_by_reason"].items())
    if info["pending_parts"]:
        out.append(f"\nunfinished: {plural(info['pending_parts'], 'part file')} from an interrupted run; rerun "
                   f"embed to finish")
    return s


def backbones_table(rows: list[dict]) -> Summary:
    s = Summary()
    s.out.append(f"{'name':<20} {'size':>5} {'min':>4}  {'preprocessing':<13} alpha")
    s.out.extend(f"{r['name']:<20} {r['native_size']:>5} {r['min_size']:>4}  {r['preprocessing']:<13} "
                 f"{'yes' if r['alpha'] else ''}" for r in rows)
    s.out.append("\nAlso: any .keras model file (--backbone PATH), fed RGB pixels in [0, 255].")
    return s


def _mb(size: int) -> str:
    return f"{size / 1e6:.1f} MB"


def cache_list(survey) -> Summary:
    """`cache list`'s report (:class:`embedder.housekeeping.Survey`)."""
    s = Summary()
    caches, converted = survey.caches, survey.converted
    s.out.append(f"caches in {survey.cache_dir}/: {plural(len(caches), 'cache')}, "
                 f"{_mb(sum(c.size_bytes for c in caches))}")
    for c in caches:
        state = "; being written now" if c.in_use else ("; an interrupted run left parts" if c.pending_parts else "")
        s.out.append(f"  {c.path}  {_mb(c.size_bytes)}, {c.rows:,} rows, last used {c.last_used}{state}")
        s.out.append(f"      images {c.images_root}; backbone [{c.backbone}]")
    s.out.append(f"converted backbones in {survey.converted_dir}/: {plural(len(converted), 'file')}, "
                 f"{_mb(sum(c.size_bytes for c in converted))}")
    for c in converted:
        used = f"for {plural(len(c.caches), 'cache')}" if c.caches else "for no cache here"
        s.out.append(f"  {c.path}  {_mb(c.size_bytes)}, {used}, last used {c.last_used}")
        if c.describes:
            s.out.append(f"      [{c.describes}]")
    for path in survey.unreadable:
        s.err.append(f"not a readable cache: {path}")
    return s


def cache_clean(report) -> Summary:
    """`cache clean`'s report (:class:`embedder.housekeeping.CleanReport`)."""
    s = Summary(err=list(report.warnings))
    verb = "would remove" if report.dry_run else "removed"
    for r in report.removals:
        s.out.append(f"{verb} {r.what} {r.path} ({_mb(r.size_bytes)}): {r.why}")
    for line in report.kept:
        s.out.append(f"kept {line}")
    if report.removals:
        s.out.append(f"{verb} {plural(len(report.removals), 'item')}, {_mb(report.size_bytes)}"
                     + ("; run without --dry-run to remove them" if report.dry_run else ""))
    else:
        s.out.append("nothing to remove")
    return s
