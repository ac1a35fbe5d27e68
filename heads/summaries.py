"""What the heads' commands print: their reports as lines a person reads.

As :mod:`embedder.summaries`: a :class:`Summary` holds the stdout lines (what happened,
hidden by ``--quiet``) and the stderr lines (warnings and problems, always shown), so the
command line stays wiring.
"""

from __future__ import annotations

from pathlib import Path

from headstart.embedder.summaries import Summary, plural


def _fmt(value, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def _warnings(warnings) -> list[str]:
    return [f"warning: {w}" for w in warnings]


def head_train(report) -> Summary:
    from .params import describe_params

    s = Summary(err=_warnings(report.warnings))
    counts, m = report.split["counts"], report.metrics
    epochs = ""
    if report.best_epoch is not None:
        epochs = f", kept epoch {report.best_epoch} of {report.epochs_run}" + (" (early stop)" if report.stopped_early
                                                                               else "")
    s.out.append(f"run:    {report.run}")
    s.out.append(f"head:   {report.head_type} {describe_params(report.params)}{epochs}")
    test = f" / {counts['test']:,} test" if counts.get("test") else ""
    views = report.split.get("train_views")
    views = f" (+{plural(views['examples'], 'augmented view')})" if views else ""
    s.out.append(f"data:   {counts['train']:,} train{views} / {counts['val']:,} val{test} images, "
                 f"{plural(len(report.classes), 'class', 'classes')} (split: {report.split['source']}); {report.cache}")
    top = "".join(f"  top-{k} {v:.4f}" for k, v in (m.get("top_k_accuracy") or {}).items())
    s.out.append(f"val:    accuracy {_fmt(m.get('accuracy'))}  macro-F1 {_fmt(m.get('macro_f1'))}  "
                 f"log-loss {_fmt(m.get('log_loss'))}{top}")
    if report.test_metrics:
        t = report.test_metrics
        s.out.append(f"test:   accuracy {_fmt(t.get('accuracy'))}  macro-F1 {_fmt(t.get('macro_f1'))}  "
                     f"log-loss {_fmt(t.get('log_loss'))}")
    weakest = sorted(((v["recall"], name) for name, v in report.per_class.items() if v["support"]))[:3]
    if weakest and weakest[0][0] < 1.0:
        s.out.append("weakest: " + ", ".join(f"{name} (recall {r:.2f})" for r, name in weakest))
    s.out.append(f"time:   trained in {report.train_seconds:.1f} s (load {report.load_seconds:.1f} s, "
                 f"total {report.total_seconds:.1f} s)")
    run = Path(report.run)
    if (run / "report.html").is_file():
        s.out.append(f"report: {run / 'report.html'}" + (f"; mistakes: {run / 'misclassified.png'}"
                                                         if (run / "misclassified.png").is_file() else ""))
    s.out.extend(_tensorboard(report))
    return s


def _tensorboard(report) -> list[str]:
    if not getattr(report, "tensorboard", None):
        return []
    logs = Path(report.tensorboard)
    return [f"tensorboard: {logs}/ (view: tensorboard --logdir {logs.parent})"]


def head_eval(report) -> Summary:
    s = Summary(err=_warnings(report.warnings))
    m, r = report.metrics, report.recorded
    s.out.append(f"run {report.run} on {report.cache} ({report.split}, {plural(m['n'], 'image')})")
    s.out.append(f"accuracy {_fmt(m.get('accuracy'))}  macro-F1 {_fmt(m.get('macro_f1'))}  "
                 f"log-loss {_fmt(m.get('log_loss'))}   (recorded at training: accuracy {_fmt(r.get('accuracy'))})")
    s.out.append(f"wrote {report.out}/")
    return s


def eval_images(report) -> Summary:
    """`headstart eval`: the metrics, against what the run recorded, and where the files are."""
    s = Summary(err=_warnings(report.warnings))
    if report.skipped:
        s.err.append(f"skipped {plural(len(report.skipped), 'file')}:")
        s.err.extend(f"  {item['path']}: {item['reason']}" for item in report.skipped[:20])
        if len(report.skipped) > 20:
            s.err.append(f"  ... and {len(report.skipped) - 20:,} more (--json lists them all)")
    m, r = report.metrics, report.recorded
    split = "" if report.split == "all" else f", {report.split} split"
    runtime = f" ({report.runtime})" if report.runtime else ""
    s.out.append(f"run {report.run} ({'fine-tuned' if report.kind == 'finetuned' else 'head'}) on {report.images}"
                 f"{split}: {plural(m['n'], 'image')} ({report.from_cache} from a cache, {report.through_backbone} "
                 f"through the {'network' if report.kind == 'finetuned' else 'backbone'}{runtime})")
    top = "".join(f"  top-{k} {v:.4f}" for k, v in (m.get("top_k_accuracy") or {}).items())
    s.out.append(f"accuracy {_fmt(m.get('accuracy'))}  macro-F1 {_fmt(m.get('macro_f1'))}  "
                 f"log-loss {_fmt(m.get('log_loss'))}{top}   (recorded on its validation split: accuracy "
                 f"{_fmt(r.get('accuracy'))})")
    weakest = sorted(((v["recall"], name) for name, v in report.per_class.items() if v["support"]))[:3]
    if weakest and weakest[0][0] < 1.0:
        s.out.append("weakest: " + ", ".join(f"{name} (recall {recall:.2f})" for recall, name in weakest))
    left = [f"{plural(report.duplicate_files, 'duplicate file')} counted once" if report.duplicate_files else "",
            f"{plural(report.unlabelled_files, 'unlabelled file')} not evaluated" if report.unlabelled_files else ""]
    if any(left):
        s.out.append("note: " + "; ".join(x for x in left if x))
    out = Path(report.out)
    pictures = ", misclassified.png" if (out / "misclassified.png").is_file() else ""
    s.out.append(f"wrote {out}/ (metrics.json, confusion.png, misclassified.csv{pictures}; its paths are relative "
                 f"to {report.images})")
    return s


def head_list(rows: list[dict], runs_dir, cache, unfinished: list[str]) -> Summary:
    from .leaderboard import format_table

    s = Summary()
    if not rows:
        where = f" for cache {cache}" if cache is not None else ""
        s.out.append(f"no runs under {runs_dir}/{where}; train one with `headstart head train`")
    else:
        s.out.extend(format_table(rows))
    if unfinished:
        s.err.append(f"{plural(len(unfinished), 'incomplete run folder')} (no head.json) not listed, "
                     f"e.g. {unfinished[0]}")
    return s


def head_sweep(report) -> Summary:
    from .leaderboard import format_table

    s = Summary(out=list(format_table(report.leaderboard)), err=_warnings(report.warnings))
    s.out.append(f"{plural(len(report.runs), 'run')} in {report.out}/ ({report.total_seconds:.1f} s); "
                 f"`headstart report RUN` draws any of them")
    return s


def finetune(report) -> Summary:
    s = Summary(err=_warnings(report.warnings))
    before = report.head_metrics.get("accuracy")
    start = report.start_metrics.get("val_accuracy")
    after = report.metrics.get("accuracy")
    kept = "the warm start (no epoch beat it)" if report.best_epoch == 0 else f"epoch {report.best_epoch}"
    s.out.append(f"fine-tuned {report.run_dir} from {report.from_run}: {plural(report.epochs_run, 'epoch')}, "
                 f"kept {kept}, {report.seconds_per_epoch:.1f} s/epoch")
    if isinstance(after, (int, float)):
        compared = [f"at the start {start:.4f}" if isinstance(start, (int, float)) else "",
                    f"head alone on cached features {before:.4f}" if isinstance(before, (int, float)) else ""]
        compared = "; ".join(c for c in compared if c)
        s.out.append(f"val accuracy {after:.4f}" + (f" ({compared})" if compared else "")
                     + f" on {plural(report.val_images, 'image')}; macro-F1 "
                     f"{report.metrics.get('macro_f1', float('nan')):.4f}")
    run = Path(report.run_dir)
    if (run / "report.html").is_file():
        s.out.append(f"report: {run / 'report.html'}")
    s.out.extend(_tensorboard(report))
    return s


def predict(report, quiet: bool = False) -> Summary:
    """Predictions go to stdout or a file; this is the account of them, all on stderr."""
    s = Summary()
    if report.skipped:
        s.err.append(f"skipped {plural(len(report.skipped), 'file')}:")
        s.err.extend(f"  {item['path']}: {item['reason']}" for item in report.skipped[:20])
        if len(report.skipped) > 20:
            s.err.append(f"  ... and {len(report.skipped) - 20:,} more (--json lists them all)")
    if report.ignored:
        kinds = ", ".join(f"{ext or '(none)'} x{n}" for ext, n in sorted(report.ignored.items(), key=lambda i: -i[1]))
        s.err.append(f"passed over {plural(sum(report.ignored.values()), 'file')} whose extension is not an "
                     f"image's ({kinds})")
    if not quiet:
        runtime = f" ({report.runtime})" if report.runtime else ""
        unknown = (f"; {plural(report.unknown, 'image')} below --min-prob {report.min_prob:g} labelled unknown"
                   if report.min_prob else "")
        s.err.append(f"predicted {plural(len(report.predictions), 'image')} in {report.elapsed_s:.1f} s "
                     f"({report.from_cache} from the cache, {report.through_backbone} through the backbone{runtime})"
                     f"{unknown}")
        if report.out:
            s.err.append(f"wrote {report.out}")
    return s


def run_report(result) -> Summary:
    s = Summary(err=[f"note: {n}" for n in result.notes])
    s.out.append(f"wrote {result.out}")
    s.out.append(f"images:   {result.images_root or 'unknown'} (the run's paths are relative to it)")
    if not result.errors:
        s.out.append("mistakes: none")
    elif not result.error_tiles:
        s.out.append(f"mistakes: {plural(result.errors, 'image')} listed without pictures "
                     f"(their images were not found)")
    else:
        capped = f"the first {result.error_tiles} of " if result.errors > result.error_tiles else ""
        s.out.append(f"mistakes: {capped}{plural(result.errors, 'image')} shown as pictures")
    found = ", ".join(Path(p).name for p in result.findings)
    s.out.append(f"inspect:  {found} (from {result.reports_dir})" if found else
                 "inspect:  no report on this run's cache found (run `headstart inspect ...` to add them)")
    return s


# ------------------------------------------------------------------------------ inspect


def _pictures(report) -> list[str]:
    """Where the report's images are (its CSV's paths are relative to it) and its gallery."""
    lines = []
    if getattr(report, "images_root", ""):
        csv = str(getattr(report, "out", "")).endswith(".csv")
        lines.append(f"images:     {report.images_root}" + (" (the CSV's paths are relative to it; its abs_path "
                                                           "columns have them whole)" if csv else ""))
    if getattr(report, "gallery", ""):
        note = f" ({report.gallery_note})" if getattr(report, "gallery_note", "") else ""
        lines.append(f"gallery:    {report.gallery}{note}")
    elif getattr(report, "gallery_note", ""):
        lines.append(f"gallery:    {report.gallery_note}")
    return lines


def inspect(report, lines: list[str], quiet: bool, problems: list[str] = ()) -> Summary:
    """An inspect report: its lines and pictures; with --quiet only the problems (on stderr)."""
    s = Summary(err=(list(problems) if quiet else []) + _warnings(report.warnings))
    s.out.extend(lines + _pictures(report))
    return s


def inspect_duplicates(report) -> tuple[list[str], list[str]]:
    e, c, n, leak, m = report.exact, report.conflicts, report.near, report.leakage, report.method
    split = "from the layout" if report.splits["source"] == "layout" else (
        f"{report.splits['source']}, val-fraction {report.splits['val_fraction']:g}, seed {report.splits['seed']}")
    lines = [f"cache:      {report.cache} ({plural(report.rows, 'image')} in {plural(report.files, 'file')}; "
             f"split {split})",
             f"threshold:  {report.threshold:g}, {report.threshold_choice['text']}",
             f"exact:      {plural(e['keys'], 'image')} under several paths ({plural(e['extra_files'], 'extra file')})"
             + (f"; {e['keys_across_splits']:,} filed under two splits" if e["keys_across_splits"] else ""),
             (f"conflicts:  {plural(c['keys'], 'image')} under two classes ({plural(c['files'], 'file')}); head train "
              f"leaves them out" if c["applies"] else "conflicts:  do not apply (the cache has no labels)"),
             f"near:       {plural(n['pairs'], 'pair')} with cosine >= {report.threshold:g} among "
             f"{plural(n['rows'], 'image')} in {plural(n['groups'], 'group')} (largest: "
             f"{plural(n['largest_group_rows'], 'image')}); {plural(n['pairs_with_different_labels'], 'pair')} "
             f"with different labels"]
    if leak["applies"]:
        detail = ", ".join(f"{k} {v:,}" for k, v in leak["by_splits"].items())
        lines.append(f"leakage:    {plural(leak['pairs'], 'near-duplicate pair')} across the split"
                     + (f": {detail}" if detail else ""))
    else:
        lines.append(f"leakage:    does not apply ({leak['reason']})")
    how = (f"PCA bound at rank {m['rank']} ({m['residual_energy']:.0%} of the energy outside it), "
           f"{plural(m['candidates'], 'candidate')} verified" if m["method"] == "pca-bound" else "exact pass")
    capped = f" of {report.csv_total:,}" if report.capped else ""
    lines.append(f"wrote:      {report.out} ({report.csv_rows:,}{capped} lines, worst first)")
    lines.append(f"method:     {how}; {report.seconds:.1f} s")
    problems = []  # what exit code 1 means, for --quiet
    if leak["applies"] and leak["pairs"]:
        problems.append(f"leakage: {plural(leak['pairs'], 'near-duplicate pair')} across the split "
                        f"(see {report.out})")
    if c["applies"] and c["keys"]:
        problems.append(f"conflicts: {plural(c['keys'], 'image')} under two classes (see {report.out})")
    return lines, problems


def inspect_labels(report, top: int) -> list[str]:
    lines = [f"ranked {plural(report.images, 'labelled image')}: {report.folds}-fold logistic regression on "
             f"{report.dims} dims, out-of-fold accuracy {report.oof_accuracy:.4f}",
             f"another label is more likely for {report.suspicious:,} of them; the first {min(top, report.images)}:",
             f"  {'score':>6}  {'p(label)':>8}  {'label -> suggested (p)':<32} path"]
    for r in report.top[:top]:
        change = f"{r['label']} -> {r['suggested']} ({r['p_suggested']:.2f})"
        lines.append(f"  {r['score']:>6.3f}  {r['p_label']:>8.3f}  {change:<32} {r['path']}")
    lines.append(f"wrote {report.out} (worst first; {report.seconds:.1f} s)")
    return lines


def inspect_outliers(report, top: int) -> list[str]:
    lines = [f"ranked {plural(report.images, 'labelled image')} in {plural(report.classes, 'class', 'classes')} by "
             f"distance to their class (k={report.k})",
             f"  {'score':>6}  {'dist':>6}  {'label':<16} {'closest other class':<20} path"]
    for r in report.top[:top]:
        score = f"{r['score']:.2f}" if r["score"] != "" else "-"
        dist = f"{r['knn_distance']:.3f}" if r["knn_distance"] != "" else "-"
        lines.append(f"  {score:>6}  {dist:>6}  {r['label']:<16} {r['nearest_other_class']:<20} {r['path']}")
    lines.append(f"wrote {report.out} (score: robust z within the class; {report.seconds:.1f} s)")
    return lines


def inspect_map(report) -> list[str]:
    axes = (f" (PC1 {report.explained[0]:.1%}, PC2 {report.explained[1]:.1%} of the variance)"
            if report.explained else "")
    ringed = f"; {report.flagged_drawn:,} ringed: {report.flag_source}" if report.flag_source else ""
    return [f"wrote {report.out}: {report.points:,} of {plural(report.rows, 'image')}, {report.method.upper()}"
            f"{axes}{ringed} ({report.seconds:.1f} s)"]


def inspect_samples(report) -> list[str]:
    shown = (f"the first {report.groups_shown} of {report.groups}" if report.groups_shown < report.groups
             else f"all {report.groups}")
    return [f"drew {plural(report.tiles, 'image')} ({report.per_class} per group, seed {report.seed}) of {shown} "
            f"groups ({plural(report.classes, 'class', 'classes')}"
            + (", unlabelled or conflicting images)" if report.groups > report.classes else ")")]
