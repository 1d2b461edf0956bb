"""A run directory's records and their MLflow counterparts, written alike by every route that makes a run.

``sscr train`` and ``sscr import-published`` both produce a run directory,
``<train.res_dir>/<train.experiment_name>/``, that ``sscr evaluate``, ``sscr register``,
``sscr infer`` and ``sscr train --pretrained`` read:

- ``model_best.pt``: the weights to use, a :func:`sscr.checkpoint.checkpoint_record`;
- ``conf.json``: the params ``model_best.pt`` was made with (``sscr evaluate --load_config``),
  :func:`write_conf`, written after it, never before;
- ``mlflow_run.json``: the MLflow run id and its logged model (ids are not reproducible, so this
  is no DVC output), :func:`write_mlflow_run`.

The run's record, ``run.json`` in :func:`sscr.config.record_dir` (tracked by git in the DVC
pipeline), names the checkpoint and its SHA-256 with the run's scores and holds no run id or
time (:func:`write_run_record`). In MLflow the run holds the params (flattened) and the config,
the best checkpoint, the logged pyfunc model (:func:`log_config`, :func:`log_best`) and the
checkpoint's SHA-256 as a tag, which is how evaluate and register find it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from sscr import tracking
from sscr.checkpoint import BEST_CHECKPOINT
from sscr.config import Params, flatten, record_dir
from sscr.fsutil import write_text

__all__ = ["BEST_CHECKPOINT", "CONF_JSON", "LAST_CHECKPOINT", "MLFLOW_RUN_JSON", "RUN_JSON", "log_best",
           "log_config", "write_conf", "write_mlflow_run", "write_run_record"]

CONF_JSON = "conf.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
RUN_JSON = "run.json"
MLFLOW_RUN_JSON = "mlflow_run.json"


def write_conf(out_dir: Path, params: Params) -> Path:
    """``conf.json``: the params a run was made with, as JSON (atomically)."""
    return write_text(Path(out_dir) / CONF_JSON, json.dumps(params.model_dump(mode="json"), indent=2))


def log_config(params: Params) -> None:
    """Log the params (flattened) and the config to the active MLflow run."""
    import mlflow

    tracking.log_params_flat(flatten(params))
    mlflow.log_dict(params.model_dump(mode="json"), "config/params.json")


def log_best(best_path: Path, params: Params, log_model: bool = True) -> str:
    """Log the best checkpoint and (``log_model``) the pyfunc model to the active run; returns the model URI."""
    import mlflow

    from sscr import serving  # MLflow's model flavour: imported when logging, not by every trainer

    mlflow.log_artifact(str(best_path), "checkpoints")
    return serving.log_model(best_path, params.model.use_sar) if log_model else ""


def write_run_record(params: Params, checkpoint: Path, checkpoint_sha256: str, directory: Path | None = None,
                     **facts: Any) -> Path:
    """``run.json`` in the record directory: the experiment, the checkpoint (path and SHA-256) and ``facts``.

    Deterministic (no run id, no time); a fact that is a non-finite float is written as null, never
    as ``-Infinity`` (not JSON). ``directory``: write it there instead (a run directory being staged).
    """
    clean = {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
             for key, value in facts.items()}
    info = {"experiment": params.train.experiment_name, "checkpoint": str(checkpoint),
            "checkpoint_sha256": checkpoint_sha256, **clean}
    target = Path(directory) if directory is not None else record_dir(params)
    return write_text(target / RUN_JSON, json.dumps(info, indent=2, allow_nan=False))


def write_mlflow_run(out_dir: Path, run_id: str, model_uri: str, checkpoint_sha256: str) -> Path:
    """``mlflow_run.json`` in the run directory: the MLflow run and logged model that hold ``checkpoint_sha256``."""
    return write_text(Path(out_dir) / MLFLOW_RUN_JSON, json.dumps(
        {"run_id": run_id, "model_uri": model_uri, "checkpoint_sha256": checkpoint_sha256}, indent=2))
