"""Checkpoints: written atomically, loaded with ``weights_only=True``, refused clearly when wrong.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(..., weights_only=True)`` reads it without unpickling any code
from a user-supplied path. Every checkpoint carries the model name, the
model's resolved constructor arguments and the full params it was trained
with, so it can be rebuilt and evaluated with nothing else.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sscr.config import Params
from sscr.fsutil import atomic_path, why_not_a_file

FORMAT = 1
BEST_CHECKPOINT = "model_best.pt"
"""A run directory's best weights; a directory given where a checkpoint is expected means this file in it."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what was expected."""


def checkpoint_record(model: nn.Module, params: Params, epoch: int, **extra: Any) -> dict[str, Any]:
    """The checkpoint dict of ``model``: weights, model name and build config, the full params, epoch.

    No run id and no time: the same training writes the same bytes (``dvc.lock`` reproduces); the
    MLflow run is found from the checkpoint's SHA-256 (``sscr.tracking.CHECKPOINT_TAG``).

    ``extra`` adds keys (optimiser state, validation metrics, provenance). What
    :func:`load_checkpoint` and :func:`build_from_checkpoint` read back.
    """
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "model_name": params.model.name,
        "model_config": dict(model.config),
        "config": params.model_dump(mode="json"),
        "epoch": epoch,
        **extra,
    }


def save_atomic(obj: dict[str, Any], path: str | Path, fault_point: str = "") -> Path:
    """``torch.save`` through :func:`sscr.fsutil.atomic_path`: a crash never leaves a truncated checkpoint.

    ``fault_point`` names the crash point between the write and the rename that reliability tests use.
    """
    with atomic_path(path, fault_point) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or for a run directory its ``model_best.pt``."""
    path = Path(path)
    return path / BEST_CHECKPOINT if path.is_dir() else path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict safely (``weights_only=True``), with errors that say what is wrong.

    ``path`` may be a run directory (its ``model_best.pt`` is read).
    """
    path = resolve_checkpoint(path)
    problem = why_not_a_file(path)
    if problem:
        raise CheckpointError(f"checkpoint {path} {problem}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(
            f"{path} is not a readable SSCR checkpoint (a PyTorch tensor file saved by `sscr train`): "
            f"{str(err).splitlines()[0]}"
        ) from None
    if isinstance(state, dict) and "state_dict_G" in state and "model" not in state:
        raise CheckpointError(
            f"{path} is a checkpoint of the published code (its save_model format); bring it in with "
            f"`sscr import-published {path} --out RUN_DIR` and use RUN_DIR"
        )
    if not isinstance(state, dict) or "model" not in state or "model_name" not in state:
        raise CheckpointError(
            f"{path} is a tensor file but not an SSCR checkpoint (expected keys 'model', 'model_name', "
            "'model_config', 'config'); pass a model_best.pt or checkpoint_last.pt written by `sscr train`"
        )
    return state


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load a state dict into ``model``; a different architecture gives a clear error naming ``source``."""
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        detail = str(err).split("\n\t")[0:3]
        raise CheckpointError(
            f"{source} holds weights of another architecture than {type(model).__name__} "
            f"({'; '.join(d.strip() for d in detail)[:300]}); build the model the checkpoint was "
            "trained with (its model_name and model_config), or pick a matching checkpoint"
        ) from None


def build_from_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[
    nn.Module, dict[str, Any]
]:
    """Rebuild the model a checkpoint was trained with and load its weights; returns (model, checkpoint)."""
    from sscr.models import build_model

    path = resolve_checkpoint(path)
    state = load_checkpoint(path, map_location)
    try:
        model = build_model(state["model_name"], **state.get("model_config", {}))
    except (TypeError, ValueError) as err:
        # An unknown model name or config key: a checkpoint of another SSCR version, or edited by hand.
        raise CheckpointError(
            f"{path}: cannot rebuild its model from the checkpoint's model_name {state['model_name']!r} and "
            f"model_config ({err}); use the SSCR version that wrote it, or retrain with this one"
        ) from None
    load_weights(model, state["model"], path)
    return model, state
