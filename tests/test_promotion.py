"""Registry: register evaluated models, promote @champion only when better, concurrent promotions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from sscr import registry
from sscr.config import record_dir, run_dir
from sscr.train import MLFLOW_RUN_FILE


def _run(params) -> dict:
    """The training record with its MLflow run id and model URI (kept apart: ids are not reproducible)."""
    return {**json.loads((record_dir(params) / "run.json").read_text()),
            **json.loads((run_dir(params) / MLFLOW_RUN_FILE).read_text())}


def test_register_stage_creates_version_one_as_champion(in_workspace):
    workspace, params = in_workspace
    records = record_dir(params)
    decision = registry.register_evaluated(records / "run.json", records / "metrics.json",
                                           model_name="stage-test", out=workspace / "register.json")
    assert decision.version == "1" and decision.promoted
    client = MlflowClient()
    version = client.get_model_version_by_alias("stage-test", "champion")
    assert str(version.version) == "1"
    metrics = json.loads((records / "metrics.json").read_text())
    assert version.tags["checkpoint_sha256"] == metrics["checkpoint_sha256"] == _run(params)["checkpoint_sha256"]
    assert float(version.tags["metric.PSNR"]) == pytest.approx(metrics["test"]["PSNR"], abs=1e-5)
    assert "metric.cloudy_PSNR" in version.tags
    assert version.tags["promotion.decision"] == "promoted"
    assert json.loads((workspace / "register.json").read_text())["promoted"] is True
    # The same checkpoint registered again is the same version, not a duplicate.
    again = registry.register_evaluated(records / "run.json", records / "metrics.json", model_name="stage-test")
    assert again.version == "1"
    assert len(MlflowClient().search_model_versions("name='stage-test'")) == 1


def test_register_refuses_metrics_of_other_weights(in_workspace, tmp_path):
    """Issue 13: metrics of another checkpoint (a killed retrain, `evaluate --checkpoint other.pt`) never register."""
    _, params = in_workspace
    records = record_dir(params)
    metrics = json.loads((records / "metrics.json").read_text())
    other = tmp_path / "metrics.json"
    other.write_text(json.dumps({**metrics, "checkpoint_sha256": "0" * 64}))
    with pytest.raises(registry.LineageError) as refused:
        registry.register_evaluated(records / "run.json", other, model_name="lineage-test")
    message = str(refused.value)
    assert str(records / "run.json") in message and str(other) in message and "model_best.pt" in message
    assert "000000000000" in message
    assert MlflowClient().search_model_versions("name='lineage-test'") == []

    # A run record naming other weights than the checkpoint file holds is refused the same way.
    run = json.loads((records / "run.json").read_text())
    tampered = tmp_path / "run.json"
    tampered.write_text(json.dumps({**run, "checkpoint_sha256": "f" * 64}))
    with pytest.raises(registry.LineageError, match="ffffffffffff"):
        registry.register_evaluated(tampered, records / "metrics.json", model_name="lineage-test")
    assert MlflowClient().search_model_versions("name='lineage-test'") == []


def test_promotion_only_when_better(in_workspace):
    _, params = in_workspace
    run = _run(params)
    name = "better-test"
    scores = {"1": 20.0, "2": 25.0, "3": 23.0}
    decisions = {}
    for version, psnr in scores.items():
        registered = registry.register(run["run_id"], {"PSNR": psnr}, name, run["model_uri"])
        assert registered == version
        decisions[version] = registry.promote(name, version)
    assert [decisions[v].promoted for v in "123"] == [True, True, False]
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    kept = client.get_model_version(name, "3").tags
    assert kept["promotion.decision"] == "kept"
    assert kept["promotion.champion_version"] == "2"
    assert float(kept["promotion.champion_score"]) == 25.0 and float(kept["promotion.candidate_score"]) == 23.0
    # Nothing was deleted or overwritten.
    assert sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'")) == [1, 2, 3]


def test_concurrent_promotions_leave_the_better_champion(in_workspace, tmp_path):
    workspace, params = in_workspace
    run = _run(params)
    name = "race-test"
    for psnr in (25.0, 23.0):
        registry.register(run["run_id"], {"PSNR": psnr}, name, run["model_uri"])
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"registry:\n  model_name: {name}\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "sscr.cli", "promote", "--params", str(params_file), "--version"]
    procs = [subprocess.Popen(command + [v], cwd=workspace, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for v in ("1", "2")]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    better, worse = (client.get_model_version(name, v).tags for v in ("1", "2"))
    # Both decisions are recorded, and whichever ran second saw the first one's result (the lock held).
    if worse["promotion.decision"] == "promoted":  # v2 ran first, with no champion yet
        assert worse["promotion.champion_version"] == ""
        assert better["promotion.decision"] == "promoted" and better["promotion.champion_version"] == "2"
    else:  # v1 ran first
        assert better["promotion.decision"] == "promoted" and better["promotion.champion_version"] == ""
        assert worse["promotion.decision"] == "kept" and worse["promotion.champion_version"] == "1"


def test_promote_refuses_a_version_without_metrics(in_workspace):
    _, params = in_workspace
    run = _run(params)
    import mlflow

    version = mlflow.register_model(run["model_uri"], "no-metrics-test").version
    with pytest.raises(ValueError, match="no metric.PSNR tag"):
        registry.promote("no-metrics-test", str(version))
