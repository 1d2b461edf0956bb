"""`dvc repro` end to end in a temporary clone: stages, lock, metrics, plots, MLflow run, registry."""

from __future__ import annotations

import json
import os
import re
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
@pytest.mark.timeout(1800)  # a repro and two experiments: three trainings
def test_dvc_repro_end_to_end(tmp_path, monkeypatch):
    # Validation every 2nd epoch (and the last): the validation curve must have points at 2 and 3 only.
    clone = make_clone(tmp_path / "clone", deep_update(TINY, {"train": {"epochs": 3, "val_every": 2}}))
    first = dvc(clone, "repro")
    for stage in ("download", "cloudmasks", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in first.stdout
    lock = yaml.safe_load((clone / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"download", "cloudmasks", "train", "evaluate", "register"}
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 3
    metrics = json.loads((clone / "metrics/sscr/metrics.json").read_text())
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
    summary = shown[""]["data"]["metrics/sscr/summary.json"]["data"]  # the one declared metrics file
    assert summary["PSNR"] == pytest.approx(metrics["test"]["PSNR"], abs=1e-4)
    assert summary["val_PSNR"] == pytest.approx(json.loads((clone / "metrics/sscr/val_images.json").read_text())["mean"],
                                                abs=1e-4)
    table = dvc(clone, "metrics", "show").stdout  # what the README's line prints: a terminal's width
    assert max(len(line) for line in table.splitlines()) <= 120, table
    plots = json.loads(dvc(clone, "plots", "show", "--json").stdout)["data"]
    validation = plots["metrics/sscr/validation.csv"][0]["content"]["data"]["values"]
    assert [int(point["epoch"]) for point in validation] == [2, 3]  # no 0 dB points where nothing was validated
    assert all(float(point["val_PSNR"]) > 5 for point in validation)
    coverage = plots["metrics/sscr/coverage_bins.csv"][0]["content"]
    assert coverage["encoding"]["x"]["type"] == "quantitative"
    points = coverage["data"]["values"]
    assert points and all(0 < float(point["coverage"]) < 1 for point in points)  # numbers: the chart renders
    images = [name for name, entries in plots.items() if entries[0]["type"] == "image"]
    assert "results/eval/psnr_by_coverage.png" in images and any("panels" in name for name in images)
    charts = [name for name, entries in plots.items() if entries[0]["type"] == "vega"]
    check_plots_offline(clone, len(charts))

    # The records are small files in git, as DVC's metrics convention wants: commit them, then two experiments.
    git(clone, "add", "-A")
    git(clone, "commit", "-qm", "first run")
    dvc(clone, "exp", "run", "-n", "one", "-S", "train.epochs=1")  # in the workspace, as DVC documents
    dvc(clone, "exp", "run", "--temp", "-C", "data", "-n", "two", "-S", "train.epochs=2")  # the README's form
    table = json.loads(dvc(clone, "exp", "show", "--json").stdout)
    scores = experiment_scores(table)
    assert {"one", "two"} <= set(scores), scores
    for name in ("one", "two"):
        inside, outside = scores[name]
        assert 5 < inside < 80 and 5 < outside < 80  # test PSNR inside clouds and overall, numbers
    assert scores["one"] != scores["two"]
    readable = dvc(clone, "exp", "show", "--only-changed", "--drop", "Created|.*/.*|SSIM|SAM").stdout  # README's line
    assert max(len(line) for line in readable.splitlines()) <= 120, readable
    versions = MlflowClient().search_model_versions("name='sscr'")
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]
    # Experiments never move production: both are @challenger candidates, v1 stays @champion.
    assert str(MlflowClient().get_model_version_by_alias("sscr", "champion").version) == "1"
    from sscr import registry

    for version, name in (("2", "one"), ("3", "two")):
        (decision,) = registry.decisions("sscr", version)
        assert decision["outcome"] == "challenger" and decision["experiment"] == f"the DVC experiment '{name}'"
    names = [run.info.run_name for run in mlflow.search_runs(experiment_names=["sscr"], output_format="list")]
    assert len(set(names)) == len(names) == 3
    assert any(name.startswith("sscr_lite-") and "-sar-one-" in name for name in names), names
    assert any("-sar-two-" in name for name in names), names  # the --temp run's, in the project's store


def git(clone: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=clone, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def check_plots_offline(clone: Path, charts: int) -> None:
    """`dvc plots show` writes a page that needs no network, and headless Chromium draws its ``charts`` vega charts
    with the network off (when Chromium and network namespaces are here; the page's content is checked anyway)."""
    dvc(clone, "plots", "show")
    page = (clone / "dvc_plots" / "index.html").read_text()
    assert not re.search(r"<(script|link)[^>]*(src|href)\s*=\s*[\"']?(https?:)?//", page)  # nothing from the network
    assert page.count("vegaEmbed('#") == charts and "window.vegaEmbed=" in page  # the library is in the page itself
    assert "dvc_plots/" in subprocess.run(["git", "check-ignore", "dvc_plots/index.html"], cwd=clone,
                                          capture_output=True, text=True).stdout
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None or os.geteuid() != 0 or shutil.which("unshare") is None:
        return
    dom = subprocess.run(["unshare", "-n", chromium, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=20000", "--dump-dom", (clone / "dvc_plots" / "index.html").as_uri()],
                         capture_output=True, text=True, timeout=300).stdout
    drawn = dom.count('class="marks"')  # vega-embed's canvas (or svg) in every chart it drew
    assert drawn == charts, f"{drawn} of {charts} charts drawn offline:\n{dom[-2000:]}"


def experiment_scores(node, name: str | None = None, found: dict | None = None) -> dict[str, tuple[float, float]]:
    """Experiment name -> (test PSNR inside clouds, outside clouds), read from ``dvc exp show --json``."""
    found = {} if found is None else found
    if isinstance(node, dict):
        name = node.get("name") or name
        file = node.get("metrics", {}).get("metrics/sscr/summary.json") if isinstance(node.get("metrics"), dict) else None
        if isinstance(file, dict) and "data" in file and name:
            data = file["data"]
            found[name] = (data["cloudy_PSNR"], data["PSNR"])
        for value in node.values():
            experiment_scores(value, name, found)
    elif isinstance(node, list):
        for value in node:
            experiment_scores(value, name, found)
    return found


@pytest.mark.slow
@pytest.mark.timeout(1800)  # two full repros
def test_dvc_lock_reproduces_in_two_fresh_clones(tmp_path):
    """Issue 12: the same code, params and data give the same dvc.lock on two clones (no mtimes, run ids, times)."""
    locks = []
    for name in ("first", "second"):
        clone = make_clone(tmp_path / name, TINY)
        dvc(clone, "repro")
        locks.append(yaml.safe_load((clone / "dvc.lock").read_text())["stages"])
    assert set(locks[0]) == {"download", "cloudmasks", "train", "evaluate", "register"}
    for stage in locks[0]:
        first, second = (lock[stage] for lock in locks)
        assert first == second, f"stage {stage!r} differs:\n{yaml.safe_dump(first)}\n---\n{yaml.safe_dump(second)}"
