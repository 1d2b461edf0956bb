"""A stage process among others: it dies with the process that started it and owns the directory it writes.

``kill -9`` of ``dvc repro`` used to leave ``sscr train`` running as an orphan, and
the next ``dvc repro`` started a second trainer into the same run directory. Now a
stage started by DVC asks the kernel to stop it when its parent dies
(:func:`die_with_parent`), and a trainer holds an exclusive lock on its run
directory (:func:`exclusive_directory`), so a second one refuses at once, naming
the directory and the holder's pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

#: The lock file inside a locked directory; it holds the holder's pid (the lock itself is the kernel's).
LOCK_NAME = ".lock"
_PR_SET_PDEATHSIG = 1


class DirectoryBusy(RuntimeError):
    """Another live process holds the directory; the message names it and the holder's pid."""


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    # An exception, not an abrupt exit: atomic writes remove their temporary files and the MLflow run is
    # marked FAILED on the way out, as for any other error.
    raise SystemExit(128 + signum)


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> bool:
    """Have the kernel send ``sig`` to this process when its parent process dies (Linux); True if armed.

    ``sig`` (SIGTERM) then ends the process through :class:`SystemExit`, so the
    usual clean-up runs. Other systems return False and nothing changes. Meant
    for stages started by DVC or an orchestrator, not for a trainer started from
    a shell under ``nohup``, which must outlive its shell.
    """
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        return False
    if threading.current_thread() is threading.main_thread() and signal.getsignal(sig) == signal.SIG_DFL:
        signal.signal(sig, _exit_on_signal)
    if parent == 1 or os.getppid() != parent:  # the parent was gone before the request was in place
        os.kill(os.getpid(), sig)
    return True


@contextlib.contextmanager
def exclusive_directory(directory: str | Path, purpose: str = "training run") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (created if needed) for the block; yields the lock file.

    The lock is ``flock`` on ``<directory>/.lock``, which holds the holder's pid:
    the kernel releases it when the holder ends, however it ends (a SIGKILL
    included), so a lock is never stale. A second holder gets :class:`DirectoryBusy`
    at once, naming the directory and the holder's pid.
    """
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 32, 0).decode(errors="replace").strip() or "unknown"
            raise DirectoryBusy(
                f"{directory} is in use by another {purpose} (pid {holder}); wait for it to end or stop it "
                f"(kill {holder}), or use another train.experiment_name"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(descriptor)  # releases the lock
