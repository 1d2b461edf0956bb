"""Where a local MLflow store keeps its artifacts: beside its database, never in whatever directory runs it."""

from __future__ import annotations

from pathlib import Path

import mlflow

from sscr import tracking


def test_sqlite_store_elsewhere_keeps_artifacts_beside_its_database(tmp_path, monkeypatch):
    here, store = tmp_path / "cwd", tmp_path / "store"
    here.mkdir()
    store.mkdir()
    monkeypatch.chdir(here)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")
    tracking.configure()
    with mlflow.start_run(experiment_id=tracking.experiment_id("elsewhere")) as run:
        mlflow.log_text("hello", "notes/hello.txt")
    logged = store / "mlartifacts" / run.info.run_id / "artifacts" / "notes" / "hello.txt"
    assert logged.read_text() == "hello"
    assert not (here / "mlartifacts").exists()


def test_default_relative_store_keeps_artifacts_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert tracking.local_artifact_root("sqlite:///mlflow.db") == tmp_path / "mlartifacts"
    assert tracking.local_artifact_root("sqlite:///runs/mlflow.db") == tmp_path / "runs" / "mlartifacts"
    assert tracking.local_artifact_root("sqlite:////data/x/mlflow.db") == Path("/data/x/mlartifacts")
    assert tracking.local_artifact_root("postgresql://db-host/mlflow") == tmp_path / "mlartifacts"
