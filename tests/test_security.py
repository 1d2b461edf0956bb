"""Security: no unpickling from user paths, credentials never logged, local-only servers in the docs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from sscr import tracking
from sscr.checkpoint import CheckpointError, load_checkpoint

PACKAGE = Path(__file__).resolve().parents[1] / "sscr"
README = Path(__file__).resolve().parents[1] / "README.md"


def _calls(name: str) -> list[tuple[Path, ast.Call]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == name:
                found.append((path, node))
    return found


def test_every_torch_load_is_weights_only():
    calls = _calls("torch.load")
    assert calls, "expected the checkpoint loader to call torch.load"
    for path, call in calls:
        keywords = {kw.arg: ast.unparse(kw.value) for kw in call.keywords}
        assert keywords.get("weights_only") == "True", f"{path}: torch.load without weights_only=True"
    for banned in ("pickle.load", "pickle.loads", "cloudpickle.load", "cloudpickle.loads"):
        assert not _calls(banned), f"{banned} in the package"


class _Payload:
    """Unpickling this would run code: it must never be unpickled from a checkpoint path."""

    marker: Path

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_checkpoint_is_refused_without_running_code(tmp_path):
    payload = _Payload()
    payload.marker = tmp_path / "pwned"
    path = tmp_path / "model_best.pt"
    torch.save({"model": {}, "model_name": "sscr", "extra": payload}, path)
    with pytest.raises(CheckpointError, match="not a readable SSCR checkpoint"):
        load_checkpoint(path)
    assert not payload.marker.exists()


def test_credentials_are_redacted_from_uris():
    assert tracking.redact("https://alice:pa55@host:5000/x") == "https://***@host:5000/x"
    assert (
        tracking.redact("postgresql://u:p@127.0.0.1:5432/db and http://h/x")
        == "postgresql://***@127.0.0.1:5432/db and http://h/x"
    )


def test_logged_params_never_carry_credentials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id("security")) as run:
        tracking.log_params_flat(
            {"data.base_url": "https://bob:hunter2@mirror.example/files=", "train.lr": 0.001}
        )
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert "hunter2" not in str(params)
    assert params["data.base_url"] == "https://***@mirror.example/files="


def test_credentials_in_a_tracking_uri_move_to_mlflow_auth(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://carol:t0p%40secret@127.0.0.1:5999")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    uri = tracking.configure()
    assert uri == "http://127.0.0.1:5999" and mlflow.get_tracking_uri() == uri
    import os

    assert os.environ["MLFLOW_TRACKING_USERNAME"] == "carol"
    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "t0p@secret"


def test_documented_servers_bind_to_localhost():
    text = README.read_text()
    commands = re.findall(
        r"^(?:\$ )?((?:mlflow (?:server|ui|models serve)|prefect server start)[^\n]*)$",
        text,
        flags=re.MULTILINE,
    )
    assert commands, "the README documents how to start the servers"
    for command in commands:
        assert "127.0.0.1" in command, f"README starts a server on all interfaces: {command}"
