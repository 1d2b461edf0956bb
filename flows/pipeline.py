"""Prefect flow ``pipeline``: download -> cloudmasks -> train -> evaluate -> register, through DVC.

Without parameters, each stage task runs ``dvc repro --single-item <stage>`` in the
project directory, so DVC decides what is out of date and ``dvc.lock`` stays the
record; the tasks run in the pipeline's order, so skipping DVC's upstream walk loses
nothing. The finished run is saved as a DVC experiment named after the flow run
(``dvc exp save``; the workspace is not changed by that).

With parameters (``model``, ``loss``, ``epochs``, ``use_sar`` and any ``params.yaml``
key in ``overrides``, as ``group.key=value``) the run is a DVC experiment: after the
values are checked against the params schema, ``dvc exp run --temp --name
<flow run> -S group.key=value ...`` runs the pipeline in a temporary copy of the
project (DVC's own; the data set and masks are copied in with ``--copy-paths`` when
they live inside the project, as DVC caches neither). The workspace, its
``params.yaml``, ``dvc.lock`` and ``metrics/`` stay as they were; the run is in
``dvc exp show`` under the flow run's name (``dvc exp apply <name>`` brings it into the
workspace), and its MLflow run and registry version carry the same name
(``DVC_EXP_NAME``). Being an experiment, it registers at most ``@challenger``
(:mod:`sscr.registry`); ``sscr promote`` or the ``promote`` flow decides on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from sscr.config import flatten, load_params, record_dir, run_dir
from sscr.train import MLFLOW_RUN_FILE
from sscr.tune import as_override

#: The decision file of the ``register`` stage (``sscr register --out`` default, as dvc.yaml runs it).
REGISTER_JSON = Path("results/register.json")
#: Rows of the test-metrics table: metrics.json group -> what the row measures.
METRIC_ROWS = {
    "test": "model, all pixels",
    "test_cloudy": "model, inside clouds",
    "test_clear": "model, clear pixels",
    "baseline_cloudy": "cloudy input, inside clouds",
}
METRIC_COLUMNS = ("PSNR", "SSIM", "SAM", "MAE", "RMSE")


# ---------------------------------------------------------------- DVC, the way every task talks to the project


def run_dvc(project: Path, *args: str) -> str:
    """Run ``dvc <args>`` in ``project`` with this interpreter; returns its output, raises with it on failure.

    The interpreter's script directory is put on PATH when missing, so the
    stages' ``sscr`` command is the one installed next to this Prefect.
    """
    env = dict(os.environ)
    scripts = str(Path(sys.executable).parent)
    if scripts not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")])
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True,
                            text=True)
    # Progress bars (carriage-return refreshes) are noise in a log.
    lines = [line for line in f"{result.stdout}\n{result.stderr}".splitlines() if line.strip() and "%|" not in line]
    if result.returncode != 0:
        tail = "\n".join(lines[-60:])
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {project} (exit {result.returncode}):\n{tail}")
    return "\n".join(lines)


@contextlib.contextmanager
def mlflow_store(project: Path) -> Iterator[str]:
    """MLflow pointed at the project's store for the block (``MLFLOW_TRACKING_URI``, else its ``mlflow.db``).

    ``mlflow.set_tracking_uri`` also exports ``MLFLOW_TRACKING_URI``; the
    variable is put back afterwards, so a later stage or project is not sent
    to this project's store.
    """
    from sscr import tracking

    before = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with contextlib.chdir(project):
            yield tracking.configure()
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before


@contextlib.contextmanager
def restored(path: Path) -> Iterator[None]:
    """Put ``path`` back byte for byte when the block ends, however it ends (a flow run's params are its own)."""
    before = path.read_bytes()
    try:
        yield
    finally:
        if path.read_bytes() != before:
            path.write_bytes(before)


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """``os.environ`` with ``values`` set for the block (the stages' subprocesses inherit them)."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def committed_params(project: Path) -> dict[str, Any]:
    """The flattened params of ``params.yaml`` as committed (git ``HEAD``); the file on disk outside git."""
    from sscr.config import PARAMS_MAX_BYTES, ConfigError, parse_params, safe_yaml

    shown = subprocess.run(["git", "show", "HEAD:./params.yaml"], cwd=project, capture_output=True, text=True)
    if shown.returncode != 0:
        return flatten(load_params(project / "params.yaml"))
    if len(shown.stdout.encode()) > PARAMS_MAX_BYTES:
        raise ConfigError(f"params.yaml as committed is larger than {PARAMS_MAX_BYTES // 1024} KiB, the limit")
    return flatten(parse_params(safe_yaml(shown.stdout, "params.yaml (git HEAD)") or {}, "params.yaml (git HEAD)"))


def differing_params(project: Path, committed: dict[str, Any]) -> dict[str, Any]:
    """``group.key -> value`` of every parameter of the workspace's ``params.yaml`` that differs from ``committed``."""
    current = flatten(load_params(project / "params.yaml"))
    return {key: value for key, value in current.items() if committed.get(key, object()) != value}


def repro(project: Path, target: str) -> bool:
    """``dvc repro --single-item <target>``; True when DVC ran it, False when it was up to date."""
    output = run_dvc(project, "repro", "--single-item", target)
    get_run_logger().info("dvc repro %s:\n%s", target, "\n".join(output.splitlines()[-40:]))
    return "Running stage" in output


# ---------------------------------------------------------------- tasks


@task(cache_policy=NO_CACHE)
def check_overrides(project: Path, overrides: list[str]) -> list[str]:
    """Validate ``group.key=value`` overrides against the params schema (a wrong key or value names itself)."""
    load_params(project / "params.yaml", overrides)
    return overrides


@task(cache_policy=NO_CACHE)
def set_params(project: Path, overrides: list[str]) -> list[str]:
    """Write ``group.key=value`` overrides into ``params.yaml`` as ``dvc exp run -S`` does; returns them.

    (The ``tune`` flow's study settings; the ``pipeline`` flow's parameters go to ``dvc exp run --temp``.)
    They are validated first (a wrong key or value names itself and nothing is
    written), and the file is read back to check DVC wrote what was meant.
    """
    if not overrides:
        return []
    from dvc.utils.hydra import apply_overrides

    params_file = project / "params.yaml"
    expected = load_params(params_file, overrides)
    apply_overrides(params_file, overrides)
    written = load_params(params_file)
    if written != expected:
        raise ValueError(f"{params_file}: the overrides {overrides} were written differently than they read; "
                         "quote string values, e.g. key='\"text\"'")
    get_run_logger().info("params.yaml: %s", ", ".join(overrides))
    return overrides


@task(cache_policy=NO_CACHE)
def experiment(project: Path, name: str, overrides: list[str]) -> str:
    """``dvc exp run --temp --name <name> -S ...``: every stage in a temporary copy; the workspace as it was."""
    params = load_params(project / "params.yaml", overrides)
    args = ["exp", "run", "--temp", "--name", name]
    for folder in (params.data.root, params.masks.dir):
        # Neither is in DVC's cache (450 GiB for the real data set): the copy gets them from the workspace.
        # A data set outside the project (an absolute data.root) is read where it is.
        if not Path(folder).is_absolute() and (project / folder).exists():
            args += ["--copy-paths", str(folder)]
    for override in overrides:
        args += ["--set-param", override]
    output = run_dvc(project, *args)
    get_run_logger().info("dvc exp run %s:\n%s", name, "\n".join(output.splitlines()[-40:]))
    return name


def experiment_ref(project: Path, name: str) -> str:
    """The git ref of DVC experiment ``name`` (``refs/exps/.../<name>``)."""
    refs = subprocess.run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], cwd=project,
                          capture_output=True, text=True, check=True).stdout.split()
    found = [ref for ref in refs if ref.rsplit("/", 1)[-1] == name]
    if not found:
        raise RuntimeError(f"DVC experiment {name!r} not found in {project} (`dvc exp show`)")
    return found[-1]


def read_at(project: Path, ref: str, path: str | Path) -> str:
    """A file as committed in ``ref``."""
    return subprocess.run(["git", "show", f"{ref}:{Path(path).as_posix()}"], cwd=project, capture_output=True,
                          text=True, check=True).stdout


# The downloader already retries dropped connections within one attempt; the task retries whole attempts
# (mirror down for minutes) with growing pauses. It is the only stage that talks to the network.
@task(retries=3, retry_delay_seconds=exponential_backoff(backoff_factor=30), retry_jitter_factor=0.2,
      cache_policy=NO_CACHE)
def download(project: Path) -> bool:
    """Stage ``download``: the data set under ``data.root`` (synthesised or fetched)."""
    return repro(project, "download")


@task(cache_policy=NO_CACHE)
def cloudmasks(project: Path) -> bool:
    """Stage ``cloudmasks``: cloud and shadow masks, coverage table."""
    return repro(project, "cloudmasks")


@task(cache_policy=NO_CACHE)
def train(project: Path) -> bool:
    """Stage ``train``: the model, its checkpoints and its MLflow run."""
    return repro(project, "train")


@task(cache_policy=NO_CACHE)
def evaluate(project: Path) -> bool:
    """Stage ``evaluate``: test metrics, tables and panels."""
    return repro(project, "evaluate")


@task(cache_policy=NO_CACHE)
def register(project: Path) -> bool:
    """Stage ``register``: a new registry version, promoted to the alias if it beats the champion."""
    return repro(project, "register")


@task(cache_policy=NO_CACHE)
def save_experiment(project: Path, name: str) -> str | None:
    """``dvc exp save``: the workspace (params, ``dvc.lock``) as experiment ``name``; None outside git."""
    try:
        # Targeted at dvc.yaml: without a target DVC would also commit tune/dvc.yaml's (maybe absent) output.
        run_dvc(project, "exp", "save", "--force", "--name", name, "dvc.yaml")
    except RuntimeError as err:
        # Bookkeeping only: the stages ran and dvc.lock holds the record either way.
        get_run_logger().warning("not saved as a DVC experiment (is %s a git repository with a commit?): %s",
                                 project, err)
        return None
    return name


@task(cache_policy=NO_CACHE)
def publish(project: Path, stages_run: dict[str, bool], overrides: list[str], experiment: str | None,
            committed: dict[str, Any]) -> dict[str, Any]:
    """Prefect artifacts of a workspace run: the test-metrics table, the MLflow run and version; returns them."""
    params = load_params(project / "params.yaml")
    records = project / record_dir(params)
    metrics = json.loads((records / "metrics.json").read_text())
    # run.json (tracked, reproducible) names the checkpoint; the MLflow run id is in the untracked mlflow_run.json.
    run = {**json.loads((records / "run.json").read_text()),
           **json.loads((project / run_dir(params) / MLFLOW_RUN_FILE).read_text())}
    decision = json.loads((project / REGISTER_JSON).read_text())
    return report(project, params, metrics, run, decision, stages_run, overrides, experiment,
                  differing_params(project, committed))


@task(cache_policy=NO_CACHE)
def publish_experiment(project: Path, name: str, overrides: list[str], committed: dict[str, Any]) -> dict[str, Any]:
    """Prefect artifacts of an experiment, read from its git ref (records) and from MLflow (run, version, decision)."""
    import yaml

    from sscr import registry
    from sscr.config import parse_params

    ref = experiment_ref(project, name)
    params = parse_params(yaml.safe_load(read_at(project, ref, "params.yaml")) or {}, f"{ref}:params.yaml")
    records = record_dir(params)
    metrics = json.loads(read_at(project, ref, records / "metrics.json"))
    run = json.loads(read_at(project, ref, records / "run.json"))
    with mlflow_store(project):
        version = registry.version_of_checkpoint(params.registry.model_name, run["checkpoint_sha256"])
        if version is None:
            raise RuntimeError(f"experiment {name}: no version of {params.registry.model_name} holds its checkpoint "
                               f"{run['checkpoint_sha256'][:12]}; its register stage did not run")
        held = registry.get_version(params.registry.model_name, version)
        history = registry.decisions(params.registry.model_name, version)
    run.update(run_id=held.run_id, model_uri=held.source)
    last = history[-1] if history else {"outcome": "champion", "reason": "holds @champion"}
    decision = {"model_name": params.registry.model_name, "version": version, "promoted": last["outcome"] == "champion",
                "outcome": last["outcome"], "reason": last.get("reason", "")}
    differing = {key: value for key, value in flatten(params).items() if committed.get(key, object()) != value}
    return report(project, params, metrics, run, decision, {"experiment": True}, overrides, name, differing)


def report(project: Path, params: Any, metrics: dict[str, Any], run: dict[str, Any], decision: dict[str, Any],
           stages_run: dict[str, bool], overrides: list[str], experiment: str | None,
           differing: dict[str, Any]) -> dict[str, Any]:
    """Create the run's artifacts (test-metrics table; MLflow run, version and decision) and return their content."""
    from mlflow.tracking import MlflowClient

    from sscr import tracking

    with mlflow_store(project) as uri:
        mlflow_run = MlflowClient().get_run(run["run_id"])
    create_markdown_artifact(metrics_table(metrics), key="sscr-test-metrics",
                             description=f"Test metrics of {params.model.name} ({project})")
    ran = ", ".join(f"{stage} {'ran' if did else 'up to date'}" for stage, did in stages_run.items())
    alias = {"champion": f"@{params.registry.alias}", "challenger": f"@{params.registry.challenger}"}.get(
        decision.get("outcome", "champion" if decision["promoted"] else "challenger"), "unchanged")
    summary = "\n".join([
        f"### {decision['model_name']} version {decision['version']}",
        "",
        f"- MLflow run: `{run['run_id']}` `{mlflow_run.info.run_name}` (experiment `{run['experiment']}`, "
        f"store `{tracking.redact(uri)}`)",
        f"- model: `models:/{decision['model_name']}/{decision['version']}` (logged as `{run['model_uri']}`)",
        f"- registry: {alias} ({decision['reason']})",
        f"- stages: {ran}" if "experiment" not in stages_run else
        "- stages: all, in a temporary copy (`dvc exp run --temp`): the workspace is unchanged",
        f"- overrides: {', '.join(f'`{o}`' for o in overrides) or 'none'}",
        "- parameters that differ from the committed params.yaml: "
        + (", ".join(f"`{key}={json.dumps(value)}`" for key, value in sorted(differing.items())) or "none"),
        f"- DVC experiment: `{experiment}`" if experiment else "- DVC experiment: not saved",
    ])
    create_markdown_artifact(summary, key="sscr-mlflow-run", description="MLflow run and registry version")
    if uri.startswith("http"):  # a tracking server has a page for the run
        create_link_artifact(f"{tracking.redact(uri).rstrip('/')}/#/experiments/{mlflow_run.info.experiment_id}/"
                             f"runs/{run['run_id']}", link_text="MLflow run", key="sscr-mlflow-link")
    return {"run_id": run["run_id"], "run_name": mlflow_run.info.run_name, "model_name": decision["model_name"],
            "version": decision["version"], "promoted": decision["promoted"],
            "outcome": decision.get("outcome", "champion" if decision["promoted"] else "challenger"),
            "test_PSNR": metrics["test"]["PSNR"], "stages_run": stages_run, "experiment": experiment,
            "differing_params": differing}


def metrics_table(metrics: dict[str, Any]) -> str:
    """A markdown table of the test metrics in ``metrics.json`` (model and cloudy input)."""
    lines = ["| pixels | " + " | ".join(METRIC_COLUMNS) + " |", "|---" * (len(METRIC_COLUMNS) + 1) + "|"]
    for group, label in METRIC_ROWS.items():
        values = metrics.get(group, {})
        lines.append(f"| {label} | " + " | ".join(
            f"{values[c]:.4f}" if isinstance(values.get(c), int | float) else "-" for c in METRIC_COLUMNS) + " |")
    gain = metrics.get("gain_cloudy_PSNR")
    if isinstance(gain, int | float):
        lines += ["", f"PSNR gain inside clouds over the cloudy input: {gain:+.2f} dB "
                      f"({metrics.get('n_images', '?')} test images; PSNR in dB, SAM in degrees)"]
    return "\n".join(lines)


def flow_run_label(prefix: str) -> str:
    """``<prefix>-<flow run name>``, usable as a DVC experiment (git ref) name."""
    name = runtime.flow_run.name or "run"
    return re.sub(r"[^A-Za-z0-9_-]+", "-", f"{prefix}-{name}").strip("-")


# ---------------------------------------------------------------- the flow


@flow(name="pipeline", log_prints=True)
def pipeline(
    project_dir: str = ".",
    model: str | None = None,
    loss: str | None = None,
    epochs: int | None = None,
    use_sar: bool | None = None,
    overrides: list[str] | None = None,
    save_as_experiment: bool = True,
) -> dict[str, Any]:
    """download -> cloudmasks -> train -> evaluate -> register in ``project_dir``, DVC deciding what runs.

    ``model``, ``loss``, ``epochs`` and ``use_sar`` set ``model.name``,
    ``loss.name``, ``train.epochs`` and ``model.use_sar``; ``overrides`` sets
    any other key (``["train.lr=0.001", "data.source=sen12mscr"]``). With any of them
    the run is the DVC experiment ``pipeline-<flow run name>`` in a temporary copy
    (``dvc exp run --temp``): the workspace stays as it was. Without, the stages run in
    the workspace and, with ``save_as_experiment``, are saved as that experiment.
    """
    project = Path(project_dir).resolve()
    named = {"model.name": model, "loss.name": loss, "train.epochs": epochs, "model.use_sar": use_sar}
    requested = [as_override(k, v) for k, v in named.items() if v is not None] + list(overrides or [])
    committed = committed_params(project)
    label = flow_run_label("pipeline")
    with environment(SSCR_FLOW_RUN=label):
        if requested:
            applied = check_overrides(project, requested)
            name = experiment(project, label, applied)
            return publish_experiment(project, name, applied, committed)
        stages_run = {
            "download": download(project),
            "cloudmasks": cloudmasks(project),
            "train": train(project),
            "evaluate": evaluate(project),
            "register": register(project),
        }
        saved = save_experiment(project, label) if save_as_experiment else None
        return publish(project, stages_run, [], saved, committed)
