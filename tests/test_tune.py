"""Optuna tuning on tiny data: nested MLflow runs and pruning, a killed study resumed, two workers on one study."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from sscr.config import Params, load_params, parse_params
from sscr.tune import PARENT_RUN_ATTR, best_overrides, run_study

pytestmark = pytest.mark.slow

#: A search space of one architecture (8-wide, 2 levels) and a wide learning-rate range; seconds per trial.
FAST_TUNE = {
    "n_trials": 3, "epochs": 2, "losses": ["l1"], "models": ["sscr_lite"], "block_types": ["mbconv"], "widths": [8],
    "n_heads": [2], "use_sar": [True], "lr_range": [1e-6, 1e-2], "sampler_startup_trials": 2,
    "pruner": "none", "heartbeat_interval": 1, "grace_period": 3,
}


def study_params(tiny_params: Params, **tune: object) -> Params:
    """The tiny params with one training batch of 32 px crops per epoch and the fast search space."""
    raw = tiny_params.model_dump(mode="json")
    raw["train"].update({"max_samples": 2, "crop_size": 32})
    raw["tune"].update({**FAST_TUNE, **tune})
    return parse_params(raw)


def load_study(params: Params) -> optuna.Study:
    from sscr.tune import open_storage

    return optuna.load_study(study_name=params.tune.study_name, storage=open_storage(params.tune.storage))


def trial_runs(study_name: str) -> dict[int, mlflow.entities.Run]:
    """The study's trial runs by trial number (the parent run has no ``optuna.trial`` tag)."""
    runs = mlflow.search_runs(experiment_names=[study_name], output_format="list")
    return {int(r.data.tags["optuna.trial"]): r for r in runs if "optuna.trial" in r.data.tags}


def worker(params_file: Path, fault: str | None = None) -> subprocess.Popen:
    """`sscr tune` in a process of its own, as a second shell or machine would run it."""
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SSCR_FAULT", None)
    if fault:
        env["SSCR_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "sscr.cli", "tune", "--params", str(params_file), "--no-progress"],
                            cwd=params_file.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def write_params(params: Params, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params.model_dump(mode="json"), sort_keys=False))
    return path


def test_study_nests_trials_prunes_a_loser_and_writes_best_params(tiny_params):
    # Trial 0 learns (lr 5e-3); trial 1 barely moves (lr 1e-6), so its epoch-1 PSNR is below the median of
    # the trials before it (trial 0's) and the median pruner stops it. Trial 2 is TPE's (seeded) choice.
    params = study_params(tiny_params, pruner="median", pruner_startup_trials=1, pruner_warmup_epochs=0)
    result = run_study(params, enqueue=[{"train.lr": 5e-3}, {"train.lr": 1e-6}], progress=False)

    study = load_study(params)
    states = {t.number: t.state for t in study.trials}
    assert len(states) == 3 and result.n_trials == 3
    assert states[0] == TrialState.COMPLETE and states[1] == TrialState.PRUNED
    assert study.trials[1].intermediate_values.keys() == {1}  # stopped after its first epoch
    assert result.best_trial == study.best_trial.number and result.best_value == pytest.approx(study.best_value)
    best_lr = study.best_trial.params["train.lr"]

    # Every trial is a nested MLflow run under the study's parent, with its params, per-epoch values and state.
    parent_id = study.user_attrs[PARENT_RUN_ATTR]
    assert result.parent_run_id == parent_id
    runs = trial_runs(params.tune.study_name)
    assert sorted(runs) == [0, 1, 2]
    client = MlflowClient()
    for number, run in runs.items():
        trial = study.trials[number]
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["optuna.state"] == {TrialState.COMPLETE: "COMPLETE", TrialState.PRUNED: "PRUNED"}[trial.state]
        assert float(run.data.params["train.lr"]) == pytest.approx(trial.params["train.lr"])
        assert run.data.params["loss.name"] == "l1" and run.data.params["train.epochs"] == "2"
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_PSNR")}
        assert history == pytest.approx(trial.intermediate_values)

    parent = client.get_run(parent_id)
    assert "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.tags["best.trial"] == str(result.best_trial) and parent.data.metrics["best_val_PSNR"] == pytest.approx(result.best_value)
    artifacts = {a.path for a in client.list_artifacts(parent_id, "optuna")}
    assert {"optuna/best_params.yaml", "optuna/optimization_history.png"} <= artifacts

    # The best params file: params.yaml overrides that `--set` and `dvc exp run -S` take.
    best_file = Path(params.tune.best_params)
    assert result.best_params_path == best_file and best_file.exists()
    overrides = best_overrides(best_file)
    assert f"train.lr={best_lr}" in overrides and "model.encoder_widths=[8, 16]" in overrides
    retrained = load_params(Path("missing.yaml"), overrides)
    assert retrained.train.lr == best_lr and retrained.model.encoder_widths == [8, 16]


def test_killed_study_resumes_and_finishes_its_budget(tiny_params, tmp_path):
    params = study_params(tiny_params, storage="sqlite:///optuna.db")
    params_file = write_params(params, tmp_path / "params.yaml")

    # The first worker dies (SIGKILL) in trial 0's second epoch: the trial and its MLflow run stay RUNNING.
    first = worker(params_file, fault="train.batch:2:0")
    output, _ = first.communicate(timeout=300)
    assert first.returncode == -signal.SIGKILL, output[-3000:]
    killed_at = time.time()
    assert [t.state for t in load_study(params).trials] == [TrialState.RUNNING]
    assert trial_runs(params.tune.study_name)[0].info.status == "RUNNING"

    # After the grace period the next worker fails the silent trial and runs the rest of the budget.
    time.sleep(max(0.0, params.tune.grace_period + 0.5 - (time.time() - killed_at)))
    second = worker(params_file)
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output[-3000:]
    trials = load_study(params).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    runs = trial_runs(params.tune.study_name)
    assert runs[0].info.status == "FAILED" and runs[0].data.tags["optuna.state"] == "FAILED"
    assert {runs[n].data.tags["optuna.state"] for n in (1, 2)} == {"COMPLETE"}
    parent_id = load_study(params).user_attrs[PARENT_RUN_ATTR]
    assert {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {parent_id}
    assert "best: trial" in output and Path(params.tune.best_params).exists()


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_two_workers_share_one_study_without_duplicates(tiny_params, tmp_path, backend, request):
    from sscr import tracking

    storage = "journal:optuna.journal" if backend == "journal" else f"{request.getfixturevalue('postgres_url')}/optuna"
    params = study_params(tiny_params, storage=storage, n_trials=4)
    params_file = write_params(params, tmp_path / "params.yaml")
    tracking.experiment_id(params.tune.study_name)  # the MLflow store exists before two processes share it

    workers = [worker(params_file) for _ in range(2)]
    outputs = [w.communicate(timeout=400)[0] for w in workers]
    for w, output in zip(workers, outputs, strict=True):
        assert w.returncode == 0, output[-3000:]

    study = load_study(params)
    trials = study.trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # the budget, each number once
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.params["train.lr"] for t in trials}) == 4  # no configuration drawn twice
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # both workers took trials
    runs = trial_runs(params.tune.study_name)
    assert sorted(runs) == [0, 1, 2, 3]
    assert len({r.info.run_id for r in runs.values()}) == 4
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs.values()}
    assert parents == {study.user_attrs[PARENT_RUN_ATTR]}  # one parent run, made by the worker that made the study
    all_runs = mlflow.search_runs(experiment_names=[params.tune.study_name], output_format="list")
    assert len(all_runs) == 5


def test_workers_creating_a_postgresql_storage_together_all_get_it(postgres_url):
    """Workers started at once on an empty database race to create Optuna's tables; none may fail."""
    import threading

    import psycopg

    from sscr.tune import open_storage

    with psycopg.connect(f"{postgres_url}/postgres", autocommit=True) as conn:
        conn.execute("CREATE DATABASE optuna_race")
    barrier, errors, storages = threading.Barrier(4), [], []

    def start_worker():
        barrier.wait()
        try:
            storages.append(open_storage(f"{postgres_url}/optuna_race"))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=start_worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(storages) == 4
    study = optuna.create_study(study_name="race", storage=storages[0])
    assert optuna.load_study(study_name="race", storage=storages[3])._study_id == study._study_id
