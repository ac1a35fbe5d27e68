"""The errors a user can act on.

Anything raised as :class:`HeadstartError` is printed by the CLI as one line, with the
exit code it carries; everything else is a bug and is reported as one (traceback only
with ``--debug``).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_ATTENTION = 1  # the job ran, but something needs a look (e.g. skipped images)
EXIT_USAGE = 2  # bad usage or bad input


class HeadstartError(Exception):
    """An error with a one-line, actionable message and an exit code."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(HeadstartError):
    """The command line or an input file is wrong; nothing was changed."""


class CacheError(HeadstartError):
    """A cache is missing, unreadable, of another format, or of another fingerprint."""


class CacheLockedError(CacheError):
    """Another process is writing the same cache."""


class BackboneError(HeadstartError):
    """A backbone cannot be built, its weights do not fit, or its features are degenerate."""
