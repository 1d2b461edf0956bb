"""`dvc repro` end to end in a temporary clone: stages, lock, metrics, plots, MLflow run, registry."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tiny import TINY, deep_update

REPO = Path(__file__).resolve().parents[1]


def make_clone(destination: Path, overrides: dict) -> Path:
    """Copy the project's files (tracked and new, not ignored) to ``destination`` as a fresh git repo."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    for name in listed:
        source = REPO / name
        if source.is_file() and not name.startswith(("tests/", "benchmarks/")):
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    params = yaml.safe_load((destination / "params.yaml").read_text())
    (destination / "params.yaml").write_text(yaml.safe_dump(deep_update(params, overrides), sort_keys=False))
    (destination / "dvc.lock").unlink(missing_ok=True)
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        subprocess.run(command, cwd=destination, check=True, capture_output=True,
                       env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})
    return destination


def dvc(clone: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=clone, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_dvc_repro_end_to_end(tmp_path, monkeypatch):
    clone = make_clone(tmp_path / "clone", TINY)
    first = dvc(clone, "repro")
    for stage in ("download", "cloudmasks", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "cloudmasks", "train", "evaluate", "register"}
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 2
    metrics = json.loads((clone / "results/eval/metrics.json").read_text())
    for key in ("test", "test_cloudy", "test_clear", "baseline", "baseline_cloudy", "gain_cloudy_PSNR",
                "by_coverage", "by_season"):
        assert key in metrics
    assert set(metrics["test"]) >= {"PSNR", "SSIM", "SAM", "MAE", "RMSE"}
    assert (clone / "data/masks/coverage.csv").exists()
    assert list((clone / "results/eval/panels").glob("*.png"))

    # MLflow: the training run (with evaluation logged into it) and version 1 as @champion.
    monkeypatch.chdir(clone)
    from sscr import tracking

    tracking.configure()
    runs = mlflow.search_runs(experiment_names=["sscr"], output_format="list")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["dvc.stage"] == "train"
    assert "test_PSNR" in runs[0].data.metrics and "test_cloudy_PSNR" in runs[0].data.metrics
    champion = MlflowClient().get_model_version_by_alias("sscr", "champion")
    assert str(champion.version) == "1"
    assert json.loads((clone / "results/register.json").read_text())["promoted"] is True

    # A second repro does nothing.
    second = dvc(clone, "repro")
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout

    shown = json.loads(dvc(clone, "metrics", "show", "--json").stdout)
    assert shown  # DVC reads the declared metrics file
    plots = json.loads(dvc(clone, "plots", "show", "--json").stdout)
    assert any("metrics.csv" in name for name in plots["data"])
    assert any("coverage_bins.csv" in name for name in plots["data"])

    # An experiment with one parameter changed runs the affected stages and registers version 2.
    dvc(clone, "exp", "run", "-S", "train.epochs=3")
    experiments = dvc(clone, "exp", "show", "--json").stdout
    assert '"epochs": 3' in experiments.replace("'", '"') or "train.epochs" in experiments
    versions = MlflowClient().search_model_versions("name='sscr'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
