"""Stage processes die with their parent and own their directory (issue 13: orphans of a killed `dvc repro`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sscr.process import DirectoryBusy, exclusive_directory

REPO = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead but not yet reaped by init; /proc says which.
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("armed", [True, False])
def test_a_stage_started_by_dvc_dies_with_its_parent(tmp_path, armed):
    """A parent (as `dvc repro`) starts `python -m sscr.cli`-like child, then is SIGKILLed; the child must end."""
    pid_file = tmp_path / "child.pid"
    child = textwrap.dedent(f"""
        import pathlib, time
        from sscr.process import die_with_parent
        {"die_with_parent()" if armed else ""}
        pathlib.Path({str(pid_file)!r}).write_text(str(__import__("os").getpid()))
        time.sleep(60)
    """)
    parent = textwrap.dedent(f"""
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", {child!r}])
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", parent], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.1)
        child_pid = int(pid_file.read_text())
        proc.kill()  # kill -9 of the parent: it cannot pass anything on
        proc.wait()
        deadline = time.monotonic() + 10
        while _alive(child_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(child_pid) is not armed  # armed: gone; not armed: the orphan the issue saw
    finally:
        if _group_alive(proc.pid):  # the orphan of the unarmed case, or anything left by a failure
            os.killpg(proc.pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_second_trainer_into_the_same_directory_is_refused(tmp_path):
    run_dir = tmp_path / "results" / "sscr"
    with exclusive_directory(run_dir):
        second = subprocess.run(
            [sys.executable, "-c", "from sscr.process import exclusive_directory\n"
             f"with exclusive_directory({str(run_dir)!r}):\n    pass"],
            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
        assert second.returncode != 0
        assert "DirectoryBusy" in second.stderr and str(run_dir) in second.stderr and str(os.getpid()) in second.stderr
        with pytest.raises(DirectoryBusy, match="in use by another training run"):
            with exclusive_directory(run_dir):  # the same process, another open file: refused too
                pass
    with exclusive_directory(run_dir):  # released when the holder is done
        pass
