"""Helpers for tests that start real servers (MLflow, model serving, Prefect) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
import requests


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server started with ``start_new_session=True`` and every process it spawned."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until_up(url: str, server: subprocess.Popen, timeout: float = 240) -> None:
    """Poll ``url`` until it answers 200; fail (with the server's last output) if it dies or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # a server still starting may accept and not answer yet
            pass
        assert server.poll() is None, server.stdout.read()[-3000:] if server.stdout else f"server exited {server.returncode}"
        time.sleep(1)
    pytest.fail(f"{url} did not come up in {timeout:.0f} s")
