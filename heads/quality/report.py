"""What every `headstart inspect` report ends with: its time, its warnings, its exit code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from headstart.embedder.errors import EXIT_OK

_TAIL = ("seconds", "warnings", "exit_code")


@dataclass(kw_only=True)
class QualityReport:
    """Keyword-only fields, so each report's own (required) fields can come first."""

    seconds: float
    warnings: list = field(default_factory=list)
    exit_code: int = EXIT_OK

    def to_dict(self) -> dict:
        """The report as JSON-ready data, its own fields first and these three last."""
        data = asdict(self)
        tail = {name: data.pop(name) for name in _TAIL}
        return {**data, **tail}
