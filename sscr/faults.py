"""Fault injection for reliability tests: die at a named point, as a real crash would.

Set ``SSCR_FAULT=<point>`` (e.g. ``train.batch:2:1``, ``train.validate:2``,
``checkpoint.write:2``) and the process SIGKILLs itself when it reaches that
point, so tests can prove that a crash at that exact moment loses nothing.
Unset (always, outside tests) this is a dictionary lookup and nothing else.
"""

from __future__ import annotations

import os
import signal


def checkpoint(point: str) -> None:
    """SIGKILL this process if ``SSCR_FAULT`` names ``point``."""
    if os.environ.get("SSCR_FAULT") == point:
        os.kill(os.getpid(), signal.SIGKILL)
