"""What every `headstart inspect` report ends with: where its images are, its gallery, its
time, its warnings, its exit code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from headstart.embedder.errors import EXIT_OK

_TAIL = ("images_root", "gallery", "gallery_note", "seconds", "warnings", "exit_code")


@dataclass(kw_only=True)
class QualityReport:
    """Keyword-only fields, so each report's own (required) fields can come first.

    ``images_root``: the folder the CSV's relative paths are under (printed, so they resolve).
    ``gallery``: the contact sheet written beside the CSV, ``""`` when none (``gallery_note`` says why).
    """

    images_root: str = ""
    gallery: str = ""
    gallery_note: str = ""
    seconds: float
    warnings: list = field(default_factory=list)
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict:
        """The report as JSON-ready data, its own fields first and these last."""
        data = asdict(self)
        tail = {name: data.pop(name) for name in _TAIL}
        return {**data, **tail}
