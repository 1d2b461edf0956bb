"""Fault injection for reliability tests: die, or stop and wait, at a named point, as a real crash would.

``SSCR_FAULT=<point>`` (e.g. ``train.batch:2:1``, ``train.validate:2``,
``checkpoint.write:2``) makes the process SIGKILL itself when it reaches
that point, so a test can prove that a crash at that exact moment loses
nothing. ``SSCR_FAULT=pause:<point>`` instead creates ``$SSCR_FAULT_DIR/paused``
and waits there until ``$SSCR_FAULT_DIR/resume`` exists, so a test can break
something outside (stop a server) at a known moment. Unset (always, outside
tests) this is one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def checkpoint(point: str) -> None:
    """Apply the fault ``SSCR_FAULT`` names, if it names ``point``."""
    fault = os.environ.get("SSCR_FAULT")
    if not fault:
        return
    if fault == point:
        os.kill(os.getpid(), signal.SIGKILL)
    elif fault == f"pause:{point}":
        folder = Path(os.environ["SSCR_FAULT_DIR"])
        (folder / "paused").touch()
        while not (folder / "resume").exists():
            time.sleep(0.1)
