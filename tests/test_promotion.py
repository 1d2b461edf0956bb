"""Registry: register evaluated models, promote @champion only when better, concurrent promotions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from sscr import registry
from sscr.config import run_dir


def _run(params) -> dict:
    return json.loads((run_dir(params) / "run.json").read_text())


def test_register_stage_creates_version_one_as_champion(in_workspace):
    workspace, params = in_workspace
    decision = registry.register_evaluated(run_dir(params) / "run.json", params.evaluate.out_dir / "metrics.json",
                                           model_name="stage-test", out=workspace / "register.json")
    assert decision.version == "1" and decision.promoted
    client = MlflowClient()
    version = client.get_model_version_by_alias("stage-test", "champion")
    assert str(version.version) == "1"
    metrics = json.loads((params.evaluate.out_dir / "metrics.json").read_text())
    assert float(version.tags["metric.PSNR"]) == pytest.approx(metrics["test"]["PSNR"], abs=1e-5)
    assert "metric.cloudy_PSNR" in version.tags
    assert version.tags["promotion.decision"] == "promoted"
    assert json.loads((workspace / "register.json").read_text())["promoted"] is True


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
