"""Helpers for tests that start real servers (MLflow, model serving, Prefect) on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

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


def log_and_register(root: Path, name: str, use_mask: bool = False) -> tuple[str, Path]:
    """A tiny SAR U-Net logged and registered (version 1, files recorded) in the store under ``root``."""
    import mlflow
    import torch

    from sscr import registry, serving, tracking
    from sscr.checkpoint import save_atomic
    from sscr.models import build_model

    tracking.configure(f"sqlite:///{root / 'mlflow.db'}")
    torch.manual_seed(0)
    model = build_model("mask_unet", encoder_widths=[8, 16], use_sar=True, use_mask=use_mask)
    checkpoint = save_atomic({"model": model.state_dict(), "model_name": "mask_unet", "model_config": dict(model.config),
                              "config": {"masks": {"use": "s2cloudless_map" if use_mask else None}}},
                             root / "model_best.pt")
    with mlflow.start_run(experiment_id=tracking.experiment_id("serving-test")) as run:
        model_uri = serving.log_model(checkpoint, use_sar=True)
    version = registry.register(run.info.run_id, {"PSNR": 30.0}, name, model_uri)
    assert version == "1"
    return tracking.tracking_uri(), checkpoint


def registered_server_env(root: Path, name: str) -> dict[str, str]:
    """:func:`log_and_register` in a store under ``root``, this process's ``MLFLOW_TRACKING_URI`` left as it was;
    the environment for a server process of that store (this interpreter's scripts first on ``PATH``)."""
    import sys

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        uri, _ = log_and_register(root, name)
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return {**os.environ, "MLFLOW_TRACKING_URI": uri,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


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
