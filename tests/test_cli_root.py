"""The command line as a whole: -h and --version everywhere, the root listing, the progress bars."""

from __future__ import annotations

import io
import re
import sys

import pytest

from headstart import __version__


def test_root_help_lists_the_workflow_in_order_in_full_lines(run_cli):
    from headstart.cli import WORKFLOW, app

    code, stdout, err = run_cli("--help")
    assert code == 0, err
    listing = stdout.split("Commands:", 1)[1].strip().splitlines()
    names = [line.split()[0] for line in listing]
    existing = [name for name in WORKFLOW if name in names]
    assert names == existing  # workflow order, nothing else
    assert names[:5] == ["embed", "head", "finetune", "predict", "export"] and names[-2:] == ["inspect", "report"]
    for line in listing:  # one line each, never cut with "..."
        assert len(line) <= 80 and not line.rstrip().endswith("...")
        assert line.split(None, 1)[1] == WORKFLOW[line.split()[0]]
    assert "--version" in stdout and "-h, --help" in stdout


@pytest.mark.parametrize("args", [["-h"], ["head", "-h"], ["head", "train", "-h"], ["inspect", "samples", "-h"],
                                  ["embed", "run", "-h"], ["report", "-h"]])
def test_short_help_everywhere(run_cli, args):
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert stdout.startswith("Usage: headstart") and "-h, --help" in stdout


@pytest.mark.parametrize("args", [["--version"], ["head", "--version"], ["head", "train", "--version"],
                                  ["inspect", "duplicates", "--version"], ["report", "--version"]])
def test_version_everywhere(run_cli, args):
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    assert stdout.strip() == f"headstart {__version__}"


def test_sub_group_listings_are_not_cut(run_cli):
    code, stdout, err = run_cli("inspect", "-h")
    assert code == 0
    listing = stdout.split("Commands:", 1)[1]
    assert "..." not in listing
    assert re.search(r"samples\s+A contact sheet", listing)


# ---------------------------------------------------------------------------- progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_shows_only_on_a_terminal_and_resumes(monkeypatch):
    from headstart.embedder.progress import progress_bar

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar(10, "embedding", unit="img", initial=4, mininterval=0) as bar:
        assert not bar.disable and bar.n == 4  # a resumed job starts where it was
        bar.update(3)
    shown = terminal.getvalue()
    assert "embedding" in shown and "7/10" in shown

    piped = io.StringIO()  # a log file or a pipe: no bar at all
    monkeypatch.setattr(sys, "stderr", piped)
    with progress_bar(10, "embedding") as bar:
        bar.update(10)
        assert bar.disable
    assert piped.getvalue() == ""

    monkeypatch.setattr(sys, "stderr", terminal)  # --quiet / --json: off even on a terminal
    before = terminal.getvalue()
    with progress_bar(10, "quiet one", enabled=False) as bar:
        bar.update(5)
        assert bar.disable
    assert terminal.getvalue() == before


def test_epoch_bar_uses_the_shared_progress_helper(monkeypatch):
    """head train's epoch bar: on stderr, only on a terminal (the shared helper's rules)."""
    from headstart.heads.params import make_params
    from headstart.heads.train import _epoch_bar

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    params = make_params("dense", epochs=3)
    bar = _epoch_bar(params.head, True)  # the head kind being trained (heads.kinds)
    with bar as on_epoch:
        on_epoch(0, {"loss": 1.0, "val_loss": 1.1, "val_accuracy": 0.5})
        assert bar.bar.n == 1 and not bar.bar.disable
    assert "dense head" in terminal.getvalue() and "/3" in terminal.getvalue()
    with _epoch_bar(params.head, False) as on_epoch:
        assert on_epoch is None
