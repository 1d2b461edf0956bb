"""Scale-out on existing engines: DDP through torchrun (gloo, CPU) and shared PostgreSQL stores."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml

from sscr.config import run_dir

#: DDP on 2 ranks must reproduce one process on the same data: same seeded permutation, the per-rank
#: batch is half the global one, gradients are averaged. Float reduction order is the only difference.
DDP_TOLERANCE_DB = 0.01


def _history(params, name: str) -> list[dict[str, float]]:
    with (Path(params.train.res_dir) / name / "metrics.csv").open() as handle:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(tiny_params, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(tiny_params.model_dump(mode="json")))
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "OMP_NUM_THREADS": "1"}
    base = ["-m", "sscr.cli", "train", "--params", str(params_file), "--experiment_name"]
    # --standalone: a local rendezvous on a free port of this host (torchrun's single-node mode).
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    ddp = subprocess.run(torchrun + base + ["ddp"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, *base, "single"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp_rows, single_rows = _history(tiny_params, "ddp"), _history(tiny_params, "single")
    assert len(ddp_rows) == len(single_rows) == tiny_params.train.epochs
    for a, b in zip(ddp_rows, single_rows, strict=True):
        assert abs(a["val_PSNR"] - b["val_PSNR"]) < DDP_TOLERANCE_DB
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["train_samples"] == b["train_samples"]  # summed over the ranks: every sample once
    # Rank 0 alone tracks and checkpoints: one MLflow run, one checkpoint set.
    runs = mlflow.search_runs(experiment_names=["ddp"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert (run_dir(tiny_params.model_copy(update={"train": tiny_params.train.model_copy(
        update={"experiment_name": "ddp"})})) / "model_best.pt").exists()


@pytest.mark.slow
def test_mlflow_on_postgresql_tracks_training_and_promotion(tiny_params, postgres_url, monkeypatch):
    from mlflow.tracking import MlflowClient

    from sscr import registry, tracking
    from sscr.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"{postgres_url}/mlflow")
    assert tracking.configure().startswith("postgresql://")
    result = train(tiny_params, progress=False)
    run = MlflowClient().get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in MlflowClient().get_metric_history(result.run_id, "val_PSNR")) == [1, 2]
    for psnr, expected in ((21.0, True), (20.0, False)):
        version = registry.register(result.run_id, {"PSNR": psnr}, "pg-test", result.model_uri)
        assert registry.promote("pg-test", version).promoted is expected
    assert str(MlflowClient().get_model_version_by_alias("pg-test", "champion").version) == "1"
    import sqlalchemy

    engine = sqlalchemy.create_engine(f"{postgres_url}/mlflow")
    with engine.connect() as conn:  # the data really is in PostgreSQL
        count = conn.execute(sqlalchemy.text("SELECT count(*) FROM model_versions WHERE name='pg-test'")).scalar()
    engine.dispose()
    assert count == 2
