"""Prefect flows on a tiny clone: README command 1, an experiment and a served `pipeline` deployment run with parameters
(DVC experiments: @challenger only), `sscr promote`; the download retry, tune, promote, a work-pool worker.

One temporary Prefect server (``prefect_test_harness``, 127.0.0.1) and one tiny
clone serve the module; the retry test works whether or not the deployment
test ran first.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import make_clone

from servers import stop_group
from tiny import TINY

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `flows` is a directory of the project, not part of the installed package

pytestmark = pytest.mark.slow
STAGES = {"download", "cloudmasks", "train", "evaluate", "register"}


@pytest.fixture(scope="module")
def prefect_api() -> str:
    """A temporary Prefect server on 127.0.0.1 for this module; its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=240):
        yield PREFECT_API_URL.value()


@pytest.fixture(scope="module")
def tiny_clone(tmp_path_factory) -> Path:
    """A git clone of the project with tiny params, nothing run yet."""
    return make_clone(tmp_path_factory.mktemp("flows") / "clone", TINY)


def flow_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)  # each clone's own mlflow.db
    return env


def wait_for_deployment(name: str, server: subprocess.Popen, log: Path, timeout: float = 240,
                        project: Path | None = None) -> None:
    """Wait until ``name`` is served; with ``project``, until it is the deployment serving that directory
    (an earlier test on the same Prefect server may have left a deployment of the same name)."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            assert server.poll() is None, f"serving stopped:\n{log.read_text()[-3000:]}"
            try:
                deployment = client.read_deployment_by_name(name)
                if project is None or str(project) in str(deployment.model_dump()):
                    return
            except ObjectNotFound:
                pass
            assert time.monotonic() < deadline, f"{name} not served after {timeout} s:\n{log.read_text()[-3000:]}"
            time.sleep(1)


def flow_run_filter(flow_run_id):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))


def read_artifacts(flow_run_id) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, TaskRunFilter
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        # Paging and sorting given: prefect 3.8's client sends them as null when unset, which its server refuses.
        return client.read_artifacts(flow_run_filter=flow_run_filter(flow_run_id), artifact_filter=ArtifactFilter(),
                                     task_run_filter=TaskRunFilter(), limit=100, offset=0,
                                     sort=ArtifactSort.CREATED_DESC)


def git_status(clone: Path) -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.timeout(3600)  # a repro, an experiment, a flow run with parameters: three tiny trainings
def test_readme_sequence_experiments_stay_experiments(prefect_api, tiny_clone, tmp_path, monkeypatch):
    """Issue 19's "done when": command 1, the README's experiment line, a Prefect run with parameters (served and run
    through the API), then `sscr promote`: @champion exactly where rule 1 puts it, the workspace untouched by the
    experiments, every decision readable with its evidence in MLflow."""
    from mlflow.tracking import MlflowClient
    from prefect.deployments import run_deployment
    from test_pipeline import dvc, git

    from sscr import registry, tracking
    from sscr.config import load_params
    from sscr.evidence import compare

    # README command 1: version 1, @champion by rule 1 (trained with the committed params, no champion yet).
    dvc(tiny_clone, "repro")
    git(tiny_clone, "add", "-A")
    git(tiny_clone, "commit", "-qm", "command 1")  # the records, committed as DVC's metrics convention wants
    # The README's experiment line (in a temporary copy): registered, as @challenger only.
    dvc(tiny_clone, "exp", "run", "--temp", "-C", "data", "-n", "readme-line", "-S", "train.epochs=3",
        "-S", "model.block_type=residual")
    assert git_status(tiny_clone) == ""

    # A Prefect run with parameters, served from the clone as `python -m flows.deploy` does: a DVC experiment.
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [sys.executable, "-m", "flows.deploy", "--only", "pipeline"], cwd=tiny_clone, stdout=sink,
            stderr=subprocess.STDOUT,
            env=flow_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "prefect"),
                         PREFECT_RUNNER_POLL_FREQUENCY="2"),
            start_new_session=True,
        )
    try:
        wait_for_deployment("pipeline/sscr", server, log)
        flow_run = run_deployment("pipeline/sscr", parameters={"epochs": 3}, timeout=900, poll_interval=2)
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{log.read_text()[-5000:]}"
    finally:
        server.send_signal(signal.SIGINT)  # as Ctrl-C: the runner pauses its deployments and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
        stop_group(server)  # and nothing it started outlives the test

    # The workspace, params.yaml, dvc.lock and metrics/ are as command 1 left them; the run is an experiment.
    assert git_status(tiny_clone) == ""
    name = f"pipeline-{flow_run.name}"
    shown = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json"], cwd=tiny_clone,
                           capture_output=True, text=True, check=True).stdout
    assert name in shown and "readme-line" in shown
    ref = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=tiny_clone,
                         capture_output=True, text=True, check=True).stdout.split()
    (ref,) = [r for r in ref if r.endswith(f"/{name}")]
    lock = yaml.safe_load(subprocess.run(["git", "show", f"{ref}:dvc.lock"], cwd=tiny_clone, capture_output=True,
                                         text=True, check=True).stdout)
    assert lock["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 3
    assert yaml.safe_load((tiny_clone / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"][
        "train"]["epochs"] == 2  # the workspace's, from command 1

    monkeypatch.chdir(tiny_clone)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    client = MlflowClient()
    versions = {str(v.version): v for v in client.search_model_versions("name='sscr'")}
    assert sorted(versions, key=int) == ["1", "2", "3"]  # nothing lost in a temporary copy's store
    runs = {v: client.get_run(versions[v].run_id) for v in versions}
    assert "-readme-line-" in runs["2"].info.run_name and f"-{name}-" in runs["3"].info.run_name  # the same name
    assert runs["3"].data.tags["dvc.exp_name"] == name
    artifacts = {a.key: a for a in read_artifacts(flow_run.id)}
    assert "@challenger" in artifacts["sscr-mlflow-run"].data and name in artifacts["sscr-mlflow-run"].data
    first = [registry.decisions("sscr", v) for v in ("1", "2", "3")]
    assert [history[0]["outcome"] for history in first] == ["champion", "challenger", "challenger"]
    assert first[2][0]["experiment"] == f"the DVC experiment '{name}'"

    # `sscr promote` decides on the @challenger (v3) by rule 1, against v1, on the same validation images.
    promoted = subprocess.run([sys.executable, "-m", "sscr.cli", "promote"], cwd=tiny_clone, capture_output=True,
                              text=True, timeout=300, env=flow_env())
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    rule = load_params(tiny_clone / "params.yaml").registry
    expected = compare(registry.validation_scores("sscr", versions["3"]),
                       registry.validation_scores("sscr", versions["1"]), rule.min_gain, rule.confidence).better
    champion = str(client.get_model_version_by_alias("sscr", "champion").version)
    assert champion == ("3" if expected else "1"), promoted.stdout
    last = registry.decisions("sscr", "3")[-1]
    assert last["action"] == "sscr promote" and last["outcome"] == ("champion" if expected else "challenger")
    for key in ("split", "n_images", "candidate_mean", "champion_mean", "interval", "min_gain"):
        assert key in last["evidence"]
    assert registry.decisions("sscr", "3")[0] == first[2][0]  # the earlier decision, as it was


def test_download_that_fails_once_is_retried_and_the_flow_completes(prefect_api, tiny_clone, tmp_path, monkeypatch):
    from prefect import get_client
    from prefect.client.schemas.sorting import TaskRunSort

    import flows.pipeline as pipeline_module

    # A stand-in `sscr` ahead on PATH fails the first `sscr data download` as an unreachable mirror would,
    # then hands every call to the real one.
    attempts = tmp_path / "download-attempts"
    shim = tmp_path / "bin" / "sscr"
    shim.parent.mkdir()
    shim.write_text(f"""#!/bin/sh
if [ "$1 $2" = "data download" ]; then
  echo attempt >> "{attempts}"
  if [ "$(wc -l < "{attempts}")" -eq 1 ]; then echo "simulated outage: mirror unreachable" >&2; exit 1; fi
fi
exec "{Path(sys.executable).parent / 'sscr'}" "$@"
""")
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", os.pathsep.join([str(shim.parent), str(Path(sys.executable).parent), os.environ["PATH"]]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    # The declared policy: 3 retries, exponential backoff from 30 s. Here without the pauses.
    declared = pipeline_module.download
    assert declared.retries == 3 and declared.retry_delay_seconds == [30, 60, 120]
    monkeypatch.setattr(pipeline_module, "download", declared.with_options(retry_delay_seconds=0))
    shutil.rmtree(tiny_clone / "data" / "sen12mscr", ignore_errors=True)  # so the download stage has work to do

    state = pipeline_module.pipeline(project_dir=str(tiny_clone), save_as_experiment=False, return_state=True)

    assert state.is_completed(), state
    assert attempts.read_text().count("attempt") == 2
    assert state.result()["stages_run"]["download"] is True
    with get_client(sync_client=True) as client:
        task_runs = client.read_task_runs(flow_run_filter=flow_run_filter(state.state_details.flow_run_id),
                                          sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=100)
    download_runs = [t for t in task_runs if t.task_key.startswith("download")]
    assert len(download_runs) == 1
    assert download_runs[0].run_count == 2 and download_runs[0].state.is_completed()


def test_tune_flow_retrains_the_best_as_a_challenger_and_promote_flow_decides_by_rule_one(prefect_api, tiny_clone, monkeypatch):
    from mlflow.tracking import MlflowClient

    from flows.promote import promote
    from flows.tune import tune
    from sscr import tracking
    from sscr.tune import best_overrides

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    search = ["tune.epochs=1", "tune.losses=[l1]", "tune.widths=[8]", "tune.n_heads=[2]", "tune.use_sar=[true]",
              "tune.block_types=[mbconv]", "tune.heartbeat_interval=5"]

    state = tune(project_dir=str(tiny_clone), n_trials=2, overrides=search, return_state=True)

    assert state.is_completed(), state
    result = state.result()
    # The study ran as the DVC stage `tune` (its own lock), and its best params were retrained and registered.
    lock = yaml.safe_load((tiny_clone / "tune/dvc.lock").read_text())
    assert lock["stages"]["tune"]["params"]["params.yaml"]["tune"]["n_trials"] == 2
    best_file = tiny_clone / "results/tune/best_params.yaml"
    assert result["best_overrides"] == best_overrides(best_file)
    best = yaml.safe_load(best_file.read_text())["overrides"]
    retrained = result["pipeline"]
    assert retrained["stages_run"] == {"experiment": True} and retrained["outcome"] == "challenger"
    monkeypatch.chdir(tiny_clone)
    tracking.configure()
    logged = MlflowClient().get_run(retrained["run_id"]).data.params
    assert float(logged["train.lr"]) == pytest.approx(best["train.lr"])
    assert logged["model.encoder_widths"] == "[8, 16]"

    # The promote flow decides on the @challenger (the retrained version) and appends its decision.
    from sscr import registry

    recorded = registry.decisions("sscr", retrained["version"])
    decision = promote(project_dir=str(tiny_clone), return_state=True).result()
    assert decision["version"] == retrained["version"] and decision["action"] == "promote flow"
    history = registry.decisions("sscr", decision["version"])
    assert history[:len(recorded)] == recorded and history[-1]["outcome"] == decision["outcome"]
    assert decision["outcome"] in ("champion", "challenger") and decision["rule"]


def test_deployment_in_a_work_pool_is_run_by_a_process_worker(prefect_api, tiny_clone, tmp_path, monkeypatch):
    """The team set-up: deployments registered in a process work pool, a `prefect worker` runs them."""
    from prefect import get_client
    from prefect.deployments import run_deployment

    from flows.deploy import deploy_to_pool
    from sscr import tracking

    assert (tiny_clone / "results/register.json").exists(), "run the whole module: an earlier test registers a model"
    deploy_to_pool(tiny_clone, "sscr-pool", only=["promote"])
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("promote/sscr")
        assert deployment.work_pool_name == "sscr-pool"
        assert client.read_work_pool("sscr-pool").type == "process"
    flow_run = run_deployment("promote/sscr", timeout=0)  # scheduled; nothing serves it

    worker = subprocess.run(
        [str(Path(sys.executable).parent / "prefect"), "worker", "start", "--pool", "sscr-pool", "--run-once",
         "--type", "process"],
        cwd=tmp_path, env=flow_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "prefect")),
        capture_output=True, text=True, timeout=600, start_new_session=True,
    )
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run.id).state
    assert state.is_completed(), f"{state}\n{worker.stdout[-3000:]}\n{worker.stderr[-3000:]}"

    # The worker's run did the promotion check on the clone's registry, and published its decision.
    monkeypatch.chdir(tiny_clone)
    tracking.configure()
    from sscr import registry

    candidate = registry.default_candidate("sscr")
    (artifact,) = read_artifacts(flow_run.id)
    assert artifact.data.startswith(f"### sscr v{candidate}: ") and "- rule: paired per-image comparison" in artifact.data


def test_two_pipeline_runs_in_a_row_each_train_with_their_own_params(prefect_api, tiny_clone, monkeypatch):
    """Issue 12: a run with use_sar=false left params.yaml so, and the next run silently trained without SAR."""
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline
    from sscr import tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    params_file = tiny_clone / "params.yaml"
    before = params_file.read_bytes()

    status = git_status(tiny_clone)
    first = pipeline(project_dir=str(tiny_clone), use_sar=False, epochs=1, return_state=True)
    assert first.is_completed(), first
    assert params_file.read_bytes() == before and git_status(tiny_clone) == status  # the workspace is as it was
    second = pipeline(project_dir=str(tiny_clone), epochs=1, return_state=True)
    assert second.is_completed(), second
    assert params_file.read_bytes() == before and git_status(tiny_clone) == status

    one, two = first.result(), second.result()
    assert one["differing_params"]["model.use_sar"] is False and one["differing_params"]["train.epochs"] == 1
    assert "model.use_sar" not in two["differing_params"] and two["differing_params"]["train.epochs"] == 1
    monkeypatch.chdir(tiny_clone)
    tracking.configure()
    runs = [MlflowClient().get_run(result["run_id"]) for result in (one, two)]
    assert [run.data.params["model.use_sar"] for run in runs] == ["False", "True"]
    names = [run.info.run_name for run in runs]
    assert "-nosar-" in names[0] and "-sar-" in names[1] and names[0] != names[1]
    for state, run in zip((first, second), runs, strict=True):
        assert run.data.tags["prefect.flow_run"].startswith("pipeline-")
        artifacts = {a.key: a for a in read_artifacts(state.state_details.flow_run_id)}
        assert "differ from the committed params.yaml" in artifacts["sscr-mlflow-run"].data
    assert "`model.use_sar=false`" in {a.key: a for a in read_artifacts(first.state_details.flow_run_id)}[
        "sscr-mlflow-run"].data


def test_prefect_cli_lists_inspects_and_runs_the_served_deployments(prefect_api, tiny_clone, tmp_path):
    """Issue 22: `prefect deployment ls` failed with HTTP 422 from Prefect's own server (FastAPI >= 0.151 validates
    the client's explicit null paging); `ls`, `inspect` and `run` as a user runs them on `python -m flows.deploy`.

    Served from a project with an empty MLflow store, the `promote` run fails with its one-line reason: the run
    reached the served deployment and ran the flow's code, whatever the module's other tests registered.
    """
    from prefect import get_client

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(tiny_clone / "params.yaml", project / "params.yaml")
    with get_client(sync_client=True) as client:  # a deployment of this name left by the module's earlier tests
        for deployment in client.read_deployments():  # goes, so that the run below is this test's deployment's
            client.delete_deployment(deployment.id)
    env = flow_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "prefect"),
                   PREFECT_RUNNER_POLL_FREQUENCY="2")
    prefect = str(Path(sys.executable).parent / "prefect")
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        server = subprocess.Popen([sys.executable, "-m", "flows.deploy", "--only", "promote", "--project-dir",
                                   str(project)], cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                  start_new_session=True)
    try:
        wait_for_deployment("promote/sscr", server, log, project=project)
        listed = subprocess.run([prefect, "deployment", "ls"], env=env, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        assert "promote/sscr" in listed.stdout
        inspected = subprocess.run([prefect, "deployment", "inspect", "promote/sscr"], env=env, capture_output=True,
                                   text=True, timeout=120)
        assert inspected.returncode == 0, inspected.stdout + inspected.stderr
        flat = "".join(inspected.stdout.split())  # the CLI folds long strings at the terminal width
        assert "'name':'sscr'" in flat and str(project) in flat
        started = subprocess.run([prefect, "deployment", "run", "promote/sscr", "--watch", "--watch-interval", "2"],
                                 env=env, capture_output=True, text=True, timeout=600)
    finally:
        server.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
        stop_group(server)
    output = started.stdout + started.stderr
    assert "Created flow run" in started.stdout, output
    run_id = started.stdout.split("UUID:")[1].split()[0]
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    assert state.is_final() and not state.is_completed(), state
    assert started.returncode != 0, output  # the CLI reports the failed run by its exit status
    assert "no registered versions of 'sscr' in " in log.read_text(), log.read_text()[-3000:]
    assert "run `dvc repro` (or `sscr register`) first" in log.read_text(), log.read_text()[-3000:]
