"""pyproject lists packages by name: a new sub-package must be listed, or wheels lack it."""

from __future__ import annotations

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

from conftest import REPO_ROOT

SKIP = {".venv", "tests", "benchmarks", "examples", "docs", "build"}


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert config["package-dir"] == {"headstart": "."}
    found = {"headstart"}
    for init in REPO_ROOT.rglob("__init__.py"):
        parts = init.parent.relative_to(REPO_ROOT).parts
        if parts and not SKIP & set(parts) and not any(p.startswith(".") for p in parts):
            found.add(".".join(("headstart", *parts)))
    assert found == set(config["packages"])
