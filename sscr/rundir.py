"""A run directory's records and their MLflow counterparts, written alike by every route that makes a run.

``sscr train`` and ``sscr import-published`` both produce a run directory,
``<train.res_dir>/<train.experiment_name>/``, that ``sscr evaluate``, ``sscr register``,
``sscr infer`` and ``sscr train --pretrained`` read:

- ``conf.json``: the params (``sscr evaluate --load_config``), :func:`write_conf`;
- ``model_best.pt``: the weights to use, a :func:`sscr.checkpoint.checkpoint_record`;
- ``run.json``: the MLflow run and its logged model (read by evaluate and register), :func:`write_run_json`.

In MLflow the run holds the same: the params (flattened) and the config, the best
checkpoint and the logged pyfunc model (:func:`log_config`, :func:`log_best`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sscr import serving, tracking
from sscr.checkpoint import BEST_CHECKPOINT
from sscr.config import Params, flatten
from sscr.fsutil import write_text

__all__ = ["BEST_CHECKPOINT", "CONF_JSON", "LAST_CHECKPOINT", "RUN_JSON", "log_best", "log_config", "write_conf",
           "write_run_json"]

CONF_JSON = "conf.json"
LAST_CHECKPOINT = "checkpoint_last.pt"
RUN_JSON = "run.json"


def write_conf(out_dir: Path, params: Params) -> Path:
    """``conf.json``: the params a run was made with, as JSON (atomically)."""
    return write_text(Path(out_dir) / CONF_JSON, json.dumps(params.model_dump(mode="json"), indent=2))


def log_config(params: Params, out_dir: Path) -> None:
    """Write ``conf.json`` and log the params (flattened) and the config to the active MLflow run."""
    import mlflow

    write_conf(out_dir, params)
    tracking.log_params_flat(flatten(params))
    mlflow.log_dict(params.model_dump(mode="json"), "config/params.json")


def log_best(best_path: Path, params: Params, log_model: bool = True) -> str:
    """Log the best checkpoint and (``log_model``) the pyfunc model to the active run; returns the model URI."""
    import mlflow

    mlflow.log_artifact(str(best_path), "checkpoints")
    return serving.log_model(best_path, params.model.use_sar) if log_model else ""


def write_run_json(out_dir: Path, run_id: str, model_uri: str, params: Params, **facts: Any) -> Path:
    """``run.json``: the MLflow run id, its logged model's URI, the experiment, and ``facts`` (best epoch, ...)."""
    info = {"run_id": run_id, "model_uri": model_uri, "experiment": params.train.experiment_name, **facts}
    return write_text(Path(out_dir) / RUN_JSON, json.dumps(info, indent=2))
