"""Prefect flow ``tune``: the Optuna study, then the best configuration retrained through the pipeline.

The study is the DVC stage ``tune`` (``tune/dvc.yaml``, outside the default
pipeline), run with ``dvc repro --single-item tune/dvc.yaml`` after the data
and mask stages, so ``tune/dvc.lock`` records it. The stage writes
``tune.best_params``; the flow reads it and runs the ``pipeline`` flow with
those values as overrides: a DVC experiment (``dvc exp run --temp``) that retrains,
evaluates and registers the best configuration as ``@challenger``; ``sscr promote`` or
the ``promote`` flow then decides by rule 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.pipeline import cloudmasks, download, pipeline, repro, restored, set_params
from sscr.config import load_params
from sscr.tune import as_override, best_overrides

#: The DVC pipeline file that holds the ``tune`` stage.
TUNE_PIPELINE = "tune/dvc.yaml"


@task(cache_policy=NO_CACHE)
def study(project: Path) -> bool:
    """Stage ``tune``: create or resume the study and run it to its budget; True when DVC ran it."""
    return repro(project, TUNE_PIPELINE)


@task(cache_policy=NO_CACHE)
def best_params(project: Path) -> list[str]:
    """The best trial's ``params.yaml`` overrides, from ``tune.best_params``; published as an artifact."""
    path = project / load_params(project / "params.yaml").tune.best_params
    overrides = best_overrides(path)
    header = [line.removeprefix("# ") for line in path.read_text().splitlines()[:2]]
    create_markdown_artifact("\n".join([f"### {header[0]}", "", *[f"- `{o}`" for o in overrides]]),
                             key="sscr-tune-best", description=f"Best params of the study ({path})")
    get_run_logger().info("best params: %s", ", ".join(overrides))
    return overrides


@flow(name="tune", log_prints=True)
def tune(
    project_dir: str = ".",
    n_trials: int | None = None,
    timeout: float | None = None,
    overrides: list[str] | None = None,
    retrain: bool = True,
) -> dict[str, Any]:
    """Run the study in ``project_dir`` (``n_trials``, ``timeout`` and ``overrides`` set ``params.yaml`` first),
    then, with ``retrain``, train, evaluate and register its best configuration through ``pipeline``.

    ``params.yaml`` is put back as it was when the flow run ends: its settings are this run's own."""
    project = Path(project_dir).resolve()
    named = {"tune.n_trials": n_trials, "tune.timeout": timeout}
    with restored(project / "params.yaml"):
        set_params(project, [as_override(k, v) for k, v in named.items() if v is not None] + list(overrides or []))
        download(project)
        cloudmasks(project)
        study(project)
        best = best_params(project)
    result: dict[str, Any] = {"best_overrides": best}
    if retrain:  # after params.yaml is back: the experiment differs from the workspace by the best params only
        result["pipeline"] = pipeline(project_dir=str(project), overrides=best)
    return result
