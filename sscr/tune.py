"""Everything Optuna: search over loss and architecture, every trial a nested MLflow run (stage ``tune``).

The search space is the ``tune:`` group of ``params.yaml``: loss, model,
``block_type``, encoder and decoder widths, ``n_head``, learning rate,
structure-loss weight (``structure`` loss only) and ``use_sar``. A trial is an
ordinary :func:`sscr.train.train` run of ``tune.epochs`` epochs of the
``params.yaml`` configuration with the suggested values; its objective is the best
validation PSNR, which every loss is measured by, so losses compete fairly.
Validation PSNR is reported every epoch so the pruner (median or Hyperband)
stops poor trials early.

Several workers share one study: point them at the same ``tune.storage``
(SQLite file by default, any SQLAlchemy URL such as PostgreSQL, or
``journal:<path>`` for Optuna's journal file). Trial numbers come from the
storage, so they are never duplicated; random draws are seeded by
(``tune.seed``, trial number), so workers do not propose configurations in
lockstep (as one seed per process would make them) and a single worker is
reproducible.

``tune.n_trials`` is the study's total budget, over all workers and restarts:
a worker starts a trial only while fewer trials exist than the budget (two
workers racing for the last slot within milliseconds leave one surplus trial,
marked FAILED untrained with the user attribute ``surplus``). A
worker killed mid-trial leaves its trial RUNNING; each trial writes a
heartbeat every ``tune.heartbeat_interval`` seconds, and any worker that
starts (or finishes a trial) marks RUNNING trials silent for more than
``tune.grace_period`` seconds as FAILED, together with their MLflow runs, so
a resumed study still finishes its budget. Optuna's own heartbeat exists only
for SQL storages; this one works the same on all three.

MLflow: one parent run per study (created by the worker that created the
study, its id kept in the study's user attributes), one nested run per trial
tagged ``optuna.study``, ``optuna.trial`` and ``optuna.state`` (COMPLETE,
PRUNED or FAILED). The parent logs the best params, the optimisation-history,
intermediate-value and parameter-importance plots. The best params are also
written to ``tune.best_params`` as ``params.yaml`` overrides, which the DVC
``tune`` stage outputs and the Prefect ``tune`` flow retrains with.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import re
import socket
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from sscr import stores
from sscr.config import Params, TuneConfig, apply_override, parse_params, read_config_text, safe_yaml
from sscr.fsutil import write_text

PARENT_RUN_ATTR = "mlflow_parent_run_id"
HEARTBEAT_ATTR = "heartbeat"
SURPLUS_ATTR = "surplus"
#: Errors that condemn one configuration, not the study: the trial is FAILED and the study goes on.
TRIAL_ERRORS: tuple[type[Exception], ...] = (RuntimeError, ValueError, ArithmeticError)


@dataclass
class StudyResult:
    """What a study holds after this worker's share of the trials."""

    study_name: str
    n_trials: int
    states: dict[str, int]
    best_trial: int | None
    best_value: float | None
    best_overrides: dict[str, Any] = field(default_factory=dict)
    parent_run_id: str = ""
    best_params_path: Path | None = None


# ---------------------------------------------------------------- storage, sampler, pruner


log = logging.getLogger(__name__)
STORAGE_CREATE_ATTEMPTS = 5


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The study storage for ``url``: ``journal:<path>`` (journal file) or an SQLAlchemy URL.

    SQLite waits up to a minute for a lock instead of failing at once, so
    several local workers can share one file; ``journal:`` is Optuna's
    recommendation for many workers on one machine or a shared file system.
    """
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        stores.check_sqlite(url, "the Optuna storage")  # a damaged file is refused before Optuna writes to it
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    import sqlalchemy.exc

    for attempt in range(STORAGE_CREATE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
            # Workers started together on an empty database race to create Optuna's tables (PostgreSQL
            # refuses the loser's CREATE TABLE); the winner's tables are there a moment later.
            if attempt == STORAGE_CREATE_ATTEMPTS - 1:
                raise
            log.info("Optuna storage being created by another worker (%s); retrying", type(error).__name__)
            time.sleep(0.5 + random.random())
    raise AssertionError("unreachable")


class TrialSeededTPE(optuna.samplers.BaseSampler):
    """TPE whose random draws are seeded by (seed, trial number).

    One TPE sampler seeded once would make every worker draw the same
    configurations; re-seeding per trial number (unique in the storage) keeps
    workers apart and a single worker reproducible. TPE keeps no state between
    trials besides its random generator, so a fresh one per trial is exact.
    """

    def __init__(self, seed: int, n_startup_trials: int) -> None:
        self.seed = seed
        self.n_startup_trials = n_startup_trials
        self._tpe = self._make(seed)

    def _make(self, seed: int) -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.n_startup_trials)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """Re-seed from the trial number, then let TPE prepare."""
        import numpy as np

        self._tpe = self._make(int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0]))
        self._tpe.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        """TPE's."""
        return self._tpe.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        """TPE's."""
        return self._tpe.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: optuna.distributions.BaseDistribution) -> Any:
        """TPE's."""
        return self._tpe.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        """TPE's."""
        self._tpe.after_trial(study, trial, state, values)


def build_pruner(cfg: TuneConfig) -> optuna.pruners.BasePruner:
    """``tune.pruner``: median, Hyperband (up to ``tune.epochs``) or none.

    The median pruner stops a trial whose validation PSNR is below the median
    of earlier trials at the same epoch, once ``pruner_startup_trials`` trials
    completed and after the trial's first ``pruner_warmup_epochs`` epochs.
    """
    if cfg.pruner == "median":
        # Steps are epochs counted from 1; Optuna protects steps below n_warmup_steps.
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.pruner_startup_trials,
                                           n_warmup_steps=cfg.pruner_warmup_epochs + 1)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=cfg.epochs, reduction_factor=3)
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------- search space


def suggest(trial: optuna.Trial, cfg: TuneConfig, base: Params) -> dict[str, Any]:
    """Draw one configuration; returns it as ``params.yaml`` overrides ``{"group.key": value}``.

    Widths are drawn as a base width ``w`` (``model.encoder_width``,
    ``model.decoder_width``) and expanded to ``[w, 2w, 4w, ...]`` with as many
    levels as ``model.encoder_widths`` has (3 when it is null).
    """
    loss = trial.suggest_categorical("loss.name", cfg.losses)
    overrides: dict[str, Any] = {
        "loss.name": loss,
        "model.name": trial.suggest_categorical("model.name", cfg.models),
        "model.block_type": trial.suggest_categorical("model.block_type", cfg.block_types),
        "model.n_head": trial.suggest_categorical("model.n_head", cfg.n_heads),
        "model.use_sar": trial.suggest_categorical("model.use_sar", cfg.use_sar),
        "train.lr": trial.suggest_float("train.lr", *cfg.lr_range, log=True),
    }
    if loss == "structure":  # the structure term exists in the mixed loss only
        overrides["loss.w_struct"] = trial.suggest_float("loss.w_struct", *cfg.w_struct_range)
    levels = len(base.model.encoder_widths or [0, 0, 0])
    for part in ("encoder", "decoder"):
        width = trial.suggest_categorical(f"model.{part}_width", cfg.widths)
        overrides[f"model.{part}_widths"] = [width * 2**level for level in range(levels)]
    return overrides


def trial_params(base: Params, overrides: Mapping[str, Any], number: int) -> Params:
    """``base`` with a trial's overrides, ``tune.epochs`` epochs, validation every epoch, its own run directory.

    A trial keeps its best checkpoint by validation PSNR, the study's objective.

    Every trial logs to the MLflow experiment named after the study and trains
    in ``<tune.trials_dir>/<study>/trial-<number>/``, which also holds its records.
    """
    cfg = base.tune
    raw = base.model_dump(mode="json")
    fixed = {
        "train.epochs": cfg.epochs,
        "train.val_every": 1,
        "train.val_after": 0,
        "train.select_best": "PSNR",  # the objective: every loss is compared by validation PSNR
        "train.experiment_name": cfg.study_name,
        "train.res_dir": str(Path(cfg.trials_dir) / cfg.study_name / f"trial-{number}"),
        "train.metrics_dir": None,  # a trial's records stay in its run directory, out of git
    }
    for key, value in {**overrides, **fixed}.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    return parse_params(raw, f"trial {number}")


# ---------------------------------------------------------------- stale trials and their MLflow runs


@contextlib.contextmanager
def heartbeat(trial: optuna.Trial, interval: float) -> Iterator[None]:
    """Write the trial's heartbeat now and every ``interval`` seconds until the block ends."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next one
                trial.set_user_attr(HEARTBEAT_ATTR, time.time())

    trial.set_user_attr(HEARTBEAT_ATTR, time.time())
    thread = threading.Thread(target=beat, name=f"optuna-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _last_sign_of_life(trial: FrozenTrial) -> float:
    beat = trial.user_attrs.get(HEARTBEAT_ATTR)
    if beat is not None:
        return float(beat)
    if trial.datetime_start is None:
        return time.time()
    return trial.datetime_start.timestamp()  # naive datetimes are local time, as Optuna writes them


def fail_stale_trials(study: optuna.Study, grace_period: float) -> list[int]:
    """Mark RUNNING trials without a heartbeat for ``grace_period`` seconds FAILED (and their MLflow runs).

    Returns the trial numbers this call failed; a trial another worker failed
    first is left to it.
    """
    failed = []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if now - _last_sign_of_life(trial) <= grace_period:
            continue
        try:
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # finished or failed meanwhile by someone else
        failed.append(trial.number)
        for run in _trial_runs(study.study_name, trial.number):
            _set_trial_state(run.info.run_id, "FAILED", "no heartbeat: its worker died",
                             terminate=run.info.status == "RUNNING")
    return failed


def _trial_runs(study_name: str, number: int) -> list[Any]:
    import mlflow

    experiment = mlflow.get_experiment_by_name(study_name)
    if experiment is None:
        return []
    return mlflow.search_runs(
        [experiment.experiment_id], output_format="list",
        filter_string=f"tags.`optuna.study` = '{study_name}' and tags.`optuna.trial` = '{number}'",
    )


def _set_trial_state(run_id: str, state: str, reason: str = "", terminate: bool = False) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    client.set_tag(run_id, "optuna.state", state)
    if reason:
        client.set_tag(run_id, "optuna.reason", reason[:5000])
    if terminate:
        client.set_terminated(run_id, "FAILED")


# ---------------------------------------------------------------- the objective


class StudyInterrupted(KeyboardInterrupt):
    """A study stopped by Ctrl-C or a signal during a trial; the message says what was recorded.

    ``exit_code``: what the process should exit with (130 for Ctrl-C, 128 + the signal's number otherwise).
    """

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _NoInterruptTraceback(logging.Filter):
    """Drop Optuna's "Trial N failed" record for an interrupt: it carries a traceback, and the interrupted
    trial is reported in one line by :class:`StudyInterrupted` instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (KeyboardInterrupt, SystemExit))


class Objective:
    """One trial: suggest, train with pruning, record its state on its MLflow run."""

    def __init__(self, params: Params, n_trials: int, progress: bool) -> None:
        # Imported here, before the study starts a trial: a trial has no heartbeat until it trains, and
        # importing the training stack (torch, MLflow's pyfunc) inside one took long enough on a loaded
        # machine for another worker to fail the trial as stale (tune.grace_period).
        from sscr.train import train

        self.train = train
        self.params = params
        self.n_trials = n_trials
        self.progress = progress

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.params.tune
        if trial.number >= self.n_trials:
            # Two workers asked at the same instant for the last budget slot: end this one untrained.
            trial.set_user_attr(SURPLUS_ATTR, True)
            trial.study.stop()
            return math.nan
        overrides = suggest(trial, cfg, self.params)
        trial.set_user_attr("overrides", overrides)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        tags = {"optuna.study": cfg.study_name, "optuna.trial": str(trial.number)}

        def report(epoch: int, val_metrics: dict[str, float]) -> bool:
            trial.report(val_metrics["PSNR"], epoch)
            return trial.should_prune()

        with heartbeat(trial, cfg.heartbeat_interval):
            try:
                result = self.train(trial_params(self.params, overrides, trial.number), run_name=f"trial-{trial.number}",
                               nested=True, tags=tags, on_epoch_end=report, log_model=False, progress=self.progress)
            except Exception as err:
                self._record_failure(trial, overrides, err)
                raise
            except (KeyboardInterrupt, SystemExit) as err:
                # Ctrl-C (or SIGTERM, which `sscr` turns into SystemExit): the run is KILLED by MLflow's context;
                # it still gets its optuna.state, and the trial its FAIL (Optuna marks a KeyboardInterrupt itself).
                why = "Ctrl-C (SIGINT)" if isinstance(err, KeyboardInterrupt) else f"exit {err.code} (a signal)"
                with contextlib.suppress(Exception):
                    self._record_failure(trial, overrides, f"interrupted by {why}")
                # Raised as a KeyboardInterrupt, which Optuna catches to mark the trial FAIL before re-raising it.
                raise StudyInterrupted(
                    f"study {cfg.study_name}: interrupted by {why} during trial {trial.number}, which is marked "
                    "FAILED in the study and on its MLflow run (optuna.state); run `sscr tune` again to go on with "
                    "the budget", exit_code=130 if isinstance(err, KeyboardInterrupt) else int(err.code or 1)) from None
        if result.stopped_early:
            _set_trial_state(result.run_id, "PRUNED", f"pruned at epoch {result.epochs_done}")
            raise optuna.TrialPruned(f"validation PSNR {result.history[-1].get('val_PSNR', math.nan):.3f} dB "
                                     f"at epoch {result.epochs_done} is below the pruner's threshold")
        _set_trial_state(result.run_id, "COMPLETE")
        return result.best_val_psnr

    def _record_failure(self, trial: optuna.Trial, overrides: dict[str, Any], err: Exception | str) -> None:
        """Tag the trial's run FAILED, or create one when training failed before starting it."""
        import mlflow
        from mlflow.tracking import MlflowClient

        from sscr import tracking

        study_name = self.params.tune.study_name
        reason = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
        runs = _trial_runs(study_name, trial.number)
        if runs:
            _set_trial_state(runs[0].info.run_id, "FAILED", reason)
            return
        # A client-made run leaves the active-run stack (the parent) alone.
        client = MlflowClient()
        run = client.create_run(tracking.experiment_id(study_name), run_name=f"trial-{trial.number}", tags={
            "mlflow.parentRunId": mlflow.active_run().info.run_id, "optuna.study": study_name,
            "optuna.trial": str(trial.number), "optuna.state": "FAILED", "optuna.reason": reason[:5000]})
        for key, value in overrides.items():
            client.log_param(run.info.run_id, key, json.dumps(value) if isinstance(value, list) else str(value))
        client.set_terminated(run.info.run_id, "FAILED")


# ---------------------------------------------------------------- the study


def run_study(
    params: Params,
    n_trials: int | None = None,
    timeout: float | None = None,
    storage: str | None = None,
    enqueue: Sequence[Mapping[str, Any]] = (),
    progress: bool = True,
) -> StudyResult:
    """Create or resume the study ``tune.study_name`` and run trials until its budget is spent.

    ``n_trials`` (default ``tune.n_trials``) is the study's total over all
    workers and restarts; ``timeout`` (default ``tune.timeout``) bounds this
    worker's time; ``storage`` overrides ``tune.storage``. ``enqueue`` lists
    configurations (Optuna parameter names such as ``{"train.lr": 1e-3}``) to
    try first when the study is new, e.g. the current ``params.yaml``.
    The best params are written to ``tune.best_params`` once a trial completed.
    """
    import mlflow

    from sscr import tracking

    cfg = params.tune
    n_trials = n_trials or cfg.n_trials
    timeout = cfg.timeout if timeout is None else timeout
    optuna_storage = open_storage(storage or cfg.storage)
    sampler = TrialSeededTPE(cfg.seed, cfg.sampler_startup_trials)
    pruner = build_pruner(cfg)
    try:
        study = optuna.create_study(storage=optuna_storage, study_name=cfg.study_name, direction="maximize",
                                    sampler=sampler, pruner=pruner)
        created = True
        for configuration in enqueue:
            study.enqueue_trial(dict(configuration), skip_if_exists=True)
    except optuna.exceptions.DuplicatedStudyError:  # load_if_exists, told apart so one worker makes the parent run
        study = optuna.load_study(study_name=cfg.study_name, storage=optuna_storage, sampler=sampler, pruner=pruner)
        created = False

    tracking.configure()
    parent_id = _parent_run_id(study, wait=0 if created else 30)
    with tracking.training_run(cfg.study_name, run_id=parent_id, run_name=f"study-{cfg.study_name}",
                               system_metrics=False, tags={"optuna.study": cfg.study_name}) as parent:
        if parent_id is None:
            study.set_user_attr(PARENT_RUN_ATTR, parent.info.run_id)
            tracking.log_params_flat({f"tune.{k}": v for k, v in cfg.model_dump(mode="json").items()
                                      if k not in ("n_trials", "timeout", "storage")})
            mlflow.set_tag("optuna.storage", tracking.redact(storage or cfg.storage))

        def stop_when_spent(study: optuna.Study, trial: FrozenTrial) -> None:
            fail_stale_trials(study, cfg.grace_period)
            if len(study.get_trials(deepcopy=False)) >= n_trials:
                study.stop()

        fail_stale_trials(study, cfg.grace_period)
        if len(study.get_trials(deepcopy=False)) < n_trials:
            quiet = _NoInterruptTraceback()
            optuna_log = logging.getLogger("optuna.study._optimize")
            with warnings.catch_warnings(), contextlib.ExitStack() as stack:
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna_log.addFilter(quiet)
                stack.callback(optuna_log.removeFilter, quiet)
                study.optimize(Objective(params, n_trials, progress), timeout=timeout, callbacks=[stop_when_spent],
                               catch=TRIAL_ERRORS)
        result = _summarise(study, n_trials, parent.info.run_id, Path(cfg.best_params))
    return result


def _parent_run_id(study: optuna.Study, wait: float) -> str | None:
    """The study's MLflow parent run; a joining worker waits up to ``wait`` s for the creator to record it."""
    deadline = time.monotonic() + wait
    while True:
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)  # read from the storage at each access
        if run_id or time.monotonic() >= deadline:
            return run_id
        time.sleep(1)


def _summarise(study: optuna.Study, n_trials: int, parent_run_id: str, best_params: Path) -> StudyResult:
    """Count states, write the best params, log them and the plots to the parent run."""
    import mlflow

    trials = study.get_trials(deepcopy=False)
    states = dict(Counter(t.state.name for t in trials))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    result = StudyResult(study.study_name, n_trials, states, None, None, parent_run_id=parent_run_id)
    mlflow.log_metrics({f"n_{state.lower()}": count for state, count in states.items()})
    if not complete:
        print(f"sscr: study {study.study_name}: no trial completed yet ({states}); no best params written")
        return result
    best = study.best_trial
    result.best_trial, result.best_value = best.number, float(best.value)
    result.best_overrides = dict(best.user_attrs.get("overrides", {}))
    result.best_params_path = write_best_params(best_params, study.study_name, best.number, float(best.value),
                                                result.best_overrides)
    mlflow.log_metric("best_val_PSNR", float(best.value))
    mlflow.set_tags({"best.trial": str(best.number),
                     **{f"best.{key}": json.dumps(value) for key, value in result.best_overrides.items()}})
    mlflow.log_artifact(str(best_params), "optuna")
    _log_plots(study)
    return result


def _log_plots(study: optuna.Study) -> None:
    import matplotlib.pyplot as plt
    import mlflow
    from optuna.visualization import matplotlib as optuna_plots

    plots = {"optimization_history": optuna_plots.plot_optimization_history,
             "intermediate_values": optuna_plots.plot_intermediate_values,
             "param_importances": optuna_plots.plot_param_importances}
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                axes = plot(study)
            except Exception as err:  # noqa: BLE001 - a plot never fails a study
                # Importances need two complete trials whose parameters differ.
                print(f"sscr: no {name} plot yet: {err}")
                continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        mlflow.log_figure(figure, f"optuna/{name}.png")
        plt.close(figure)


# ---------------------------------------------------------------- the best-params file


def write_best_params(path: str | Path, study_name: str, trial: int, value: float,
                      overrides: Mapping[str, Any]) -> Path:
    """Write the best configuration as ``params.yaml`` overrides (atomically); returns the path."""
    sets = " ".join(f"-S '{key}={_cli_value(value)}'" for key, value in sorted(overrides.items()))
    text = (f"# Best trial of Optuna study {study_name}, written by `sscr tune`.\n"
            f"# Retrain with it: dvc exp run {sets}\n"
            + yaml.safe_dump({"study": study_name, "trial": trial, "value": value,
                              "overrides": {key: overrides[key] for key in sorted(overrides)}},
                             sort_keys=False, default_flow_style=None))
    return write_text(path, text)


def best_overrides(path: str | Path) -> list[str]:
    """The overrides of a best-params file as ``group.key=value`` strings (for ``--set`` and ``dvc exp run -S``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; run the study first (`sscr tune` or `dvc repro tune/dvc.yaml`)")
    data = safe_yaml(read_config_text(path, what="best-params file"), str(path)) or {}
    return [as_override(key, value) for key, value in (data.get("overrides") or {}).items()]


def as_override(key: str, value: Any) -> str:
    """``key=value`` as ``--set`` (YAML) and ``dvc exp run -S`` (Hydra) both read it: plain names bare, else JSON."""
    return f"{key}={_cli_value(value)}"


def _cli_value(value: Any) -> str:
    if (isinstance(value, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value)
            and value.lower() not in {"true", "false", "null", "none", "yes", "no", "on", "off", "inf", "nan"}):
        return value
    return json.dumps(value)
