"""One progress bar for every long job, so they all behave alike.

Bars go to stderr (stdout stays clean for ``--json`` and piped CSV), appear only when stderr
is a terminal (tqdm's ``disable=None``: a log file or CI never fills with carriage returns),
and can start at ``initial`` so that a resumed job shows the work already done instead of
pretending to begin again. ``enabled=False`` (``--quiet``, ``--json``) silences a bar
everywhere; the returned object still accepts ``update``/``set_postfix``/``close``, so
callers never branch on it.
"""

from __future__ import annotations

import sys
from typing import Any


def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "it", initial: int = 0,
                 unit_scale: bool = False, leave: bool = False, **options: Any):
    """A tqdm bar on stderr: shown only when ``enabled`` and stderr is a terminal.

    ``total`` may be ``None`` (unknown) or set later (``bar.total = n; bar.refresh()``).
    ``initial`` is the count already done (a resumed job). Extra ``options`` go to tqdm.
    """
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, initial=initial, unit_scale=unit_scale, leave=leave,
                file=sys.stderr, dynamic_ncols=True, disable=None if enabled else True, **options)
