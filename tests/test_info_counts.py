"""`embed run`'s summary and `embed info` count duplicate files the same way (issue 12)."""

from __future__ import annotations

import json
import shutil

from conftest import make_class_folders


def test_duplicate_counts_agree_when_copies_fail_to_decode(tmp_path, tiny_model_file, run_cli):
    """Two copies of one good image and two of one broken file: the broken pair is in the
    cache's /failures, not among its files, so it is no duplicate file of the cache."""
    root = tmp_path / "imgs"
    written = make_class_folders(root, per_class=3)
    shutil.copy(written[0], root / "cats" / "copy.jpg")
    (root / "dogs" / "bad1.jpg").write_text("not an image")
    (root / "dogs" / "bad2.jpg").write_text("not an image")
    cache = tmp_path / "c.h5"
    for _ in range(2):  # the first run embeds, the rerun reuses: the same count both times
        code, out, err = run_cli("embed", "run", root, "--backbone", tiny_model_file, "--cache", cache, "--quiet",
                                 "--json", "--batch-size", "4")
        report = json.loads(out)
        assert code == 1 and len(report["skipped"]) == 2, err
        info = json.loads(run_cli("embed", "info", cache, "--json")[1])
        assert info["files"] == report["files"] == 7 and info["duplicate_files"] == 1
        assert report["duplicates"] == info["duplicate_files"]
