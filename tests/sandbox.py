"""Real file-system failures for tests: a full or read-only file system inside a private mount namespace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
"""The checkout under test: put first on PYTHONPATH of the subprocesses, so they run this tree."""


def can_mount(tmp_path: Path) -> bool:
    """Root with mount namespaces (``unshare -m``): tmpfs and read-only binds stay private to one command."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                            'mount -t tmpfs -o size=4k tmpfs "$1"', "sh", str(tmp_path)], capture_output=True)
    return probe.returncode == 0


def in_namespace(setup: str, command: list[str]) -> list[str]:
    """``command`` run after the shell ``setup`` (mounts) in a private mount namespace: nothing leaks out."""
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", f'{setup} && exec "$@"', "sh", *command]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout first on PYTHONPATH, no tracking URI, no system metrics."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_TRACKING")}
    env.update(PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
               MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="false", **extra)
    return env


def ctrl_c_as_in_a_terminal() -> None:
    """``preexec_fn`` of a child that a test sends SIGINT: SIGINT back to its default, as a terminal gives it.

    A job a non-interactive shell starts in the background (``cmd &``, ``nohup``) inherits SIGINT
    ignored, and Python installs no KeyboardInterrupt handler for an ignored SIGINT: the child
    would never see the test's Ctrl-C.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
