"""Published checkpoints in and out: ``sscr import-published`` and ``sscr export-published``.

**In.** A checkpoint of the published code (``model.pth.tar`` from its ``save_model``)
and the run's ``conf.json`` become a run directory as ``sscr train`` writes one, through
the same functions (:mod:`sscr.rundir`): ``conf.json`` (our params: the ``conf.json``
mapped by :func:`sscr.models.published.published_settings`, the published protocol,
and the current data, mask and evaluation settings), ``model_best.pt`` and
``run.json``, and an MLflow run holding the params, the checkpoint and the logged
model. ``sscr evaluate``, ``sscr register``, ``sscr infer`` and ``sscr train
--pretrained`` take it like any trained run.

**Out.** A run of a published network (``uncrtaints``, ``multisarv2``, ``unet``, ``utae``)
becomes ``DIR/model.pth.tar`` and ``DIR/conf.json`` in the published format, which the published test script
(``test_reconstruct.py --weight_folder <DIR's parent> --experiment_name <DIR's name>``)
loads strictly. The Adam and scheduler states come from the run's
``checkpoint_last.pt`` when it holds the same epoch as ``model_best.pt``; otherwise
(``model_best.pt`` does not keep them) they are a fresh Adam state at the
learning rate the schedule reached.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sscr import rundir, tracking
from sscr.checkpoint import (
    build_from_checkpoint,
    checkpoint_record,
    load_checkpoint,
    resolve_checkpoint,
    save_atomic,
)
from sscr.config import PUBLISHED_PROTOCOL, Params, apply_override, parse_params
from sscr.fsutil import replace_directory, sha256_file, staging_directory, write_text
from sscr.models.published import (
    build_published,
    conf_beside,
    network_state_dict,
    published_checkpoint,
    published_conf,
    published_settings,
    read_conf,
    read_published_checkpoint,
)

PUBLISHED_CHECKPOINT = "model.pth.tar"
"""The published script's best checkpoint: ``<res_dir>/<experiment_name>/model.pth.tar``."""


@dataclass
class ImportResult:
    """What ``sscr import-published`` wrote."""

    run_dir: Path
    run_id: str
    model_uri: str
    model_name: str
    epoch: int
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)


def imported_params(params: Params, overrides: dict[str, Any], out_dir: Path) -> Params:
    """``params`` with the published protocol, a ``conf.json``'s overrides, and ``out_dir`` as the run directory."""
    raw = params.model_dump(mode="json")
    # The run's records (run.json, evaluation metrics) stay in the run directory: train.metrics_dir null.
    placement = {"train.res_dir": str(out_dir.parent), "train.experiment_name": out_dir.name,
                 "train.metrics_dir": None, "model.mask_beta": 0.0}  # published: the structure-mask gate is off
    for key, value in {**PUBLISHED_PROTOCOL, **overrides, **placement}.items():
        apply_override(raw, f"{key}={json.dumps(value)}")
    return parse_params(raw, "the imported conf.json")


class OutputExists(ValueError):
    """An output that holds files already and no ``--force``; the message names it and the choices."""


def refuse_existing(out_dir: Path, names: list[str] | None = None, force: bool = False) -> None:
    """:class:`OutputExists` if ``out_dir`` holds files (``names`` among them, when given) and not ``force``."""
    if force or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputExists(f"--out {out_dir} is a file, not a directory: choose another --out")
    present = sorted(p.name for p in out_dir.iterdir() if names is None or p.name in names)
    if present:
        shown = ", ".join(present[:4]) + (", ..." if len(present) > 4 else "")
        raise OutputExists(f"--out {out_dir} already holds {shown}: refused to overwrite it; pass --force to "
                           "replace it, or choose another --out")


def import_published(checkpoint: str | Path, out_dir: str | Path, params: Params,
                     config: str | Path | None = None, log_model: bool = True, force: bool = False) -> ImportResult:
    """Write the run directory ``out_dir`` (and its MLflow run) for a published checkpoint.

    ``config``: the run's ``conf.json`` (default: the one beside ``checkpoint``).
    ``params`` gives what ``conf.json`` does not: data, masks, evaluation, registry.
    Raises :class:`sscr.models.published.PublishedFormatError` naming the key or file
    that cannot be honoured; nothing is written then. An ``out_dir`` that holds files is
    refused (:class:`OutputExists`) unless ``force``. The run directory is written beside
    ``out_dir`` and renamed into place when complete: its files appear together or not at all.
    """
    import mlflow

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    refuse_existing(out_dir, force=force)
    config_path = Path(config) if config is not None else conf_beside(checkpoint)
    conf = read_conf(config_path)
    settings = published_settings(conf, str(config_path))
    state = read_published_checkpoint(checkpoint)
    model = build_published(settings, network_state_dict(state, str(checkpoint)), str(checkpoint))
    params = imported_params(params, settings.overrides, out_dir)
    epoch = int(state.get("epoch", 0))
    provenance = {"checkpoint": str(checkpoint.resolve()), "sha256": sha256_file(checkpoint), "conf": str(config_path)}
    staging = staging_directory(out_dir)
    tags = {"sscr.source": "published", "published.sha256": provenance["sha256"]}
    try:
        with tracking.training_run(params.train.experiment_name, run_name=f"import-{out_dir.name}", tags=tags,
                                   system_metrics=False) as run:
            run_id = run.info.run_id
            rundir.log_config(params)
            mlflow.log_dict(conf, "published/conf.json")
            best = save_atomic(checkpoint_record(model, params, epoch, published=provenance),
                               staging / rundir.BEST_CHECKPOINT)
            rundir.write_conf(staging, params)
            best_sha256 = sha256_file(best)
            mlflow.set_tag(tracking.CHECKPOINT_TAG, best_sha256)  # how evaluate and register find this run
            model_uri = rundir.log_best(best, params, log_model)
            if model_uri:
                mlflow.set_tag(tracking.MODEL_URI_TAG, model_uri)  # what register registers
            rundir.write_mlflow_run(staging, run_id, model_uri, best_sha256)
            rundir.write_run_record(params, out_dir / rundir.BEST_CHECKPOINT, best_sha256, directory=staging,
                                    source="published", best_epoch=epoch, published=provenance,
                                    ignored_keys=settings.ignored, unknown_keys=settings.unknown)
            refuse_existing(out_dir, force=force)  # another process may have written it meanwhile
            replace_directory(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ImportResult(out_dir, run_id, model_uri, settings.model_name, epoch, settings.ignored, settings.unknown)


# ---------------------------------------------------------------- out


def _optimizer_states(model: nn.Module, params: Params, epoch: int, last: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Adam and ExponentialLR states to export: the run's own at ``epoch``, else fresh at the scheduled rate.

    The published optimiser covers every parameter of the network, so the run's own
    state is used only when it does too (nothing was frozen).
    """
    n_params = len(list(model.parameters()))
    if last.is_file():
        state = load_checkpoint(last)
        groups = state.get("optimizer", {}).get("param_groups", [])
        if state.get("epoch") == epoch and len(groups) == 1 and len(groups[0]["params"]) == n_params:
            return state["optimizer"], state["scheduler"]
    optimizer = torch.optim.Adam(model.parameters(), lr=params.train.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=params.train.gamma)
    with warnings.catch_warnings():  # stepping a schedule without optimiser steps is what is meant here
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(epoch):
            scheduler.step()
    return optimizer.state_dict(), scheduler.state_dict()


def export_published(source: str | Path, out_dir: str | Path, force: bool = False) -> Path:
    """Write ``out_dir/model.pth.tar`` and ``out_dir/conf.json`` in the published format; returns the checkpoint.

    ``source``: a run directory (its ``model_best.pt``) or a checkpoint of a published
    network; a ``multisarv2`` with ``mask_beta`` != 0, or a run trained with a loss the
    published code lacks (``structure``), is refused (``PublishedFormatError``): the
    published scripts would predict, or train, something else. ``conf.json`` names ``out_dir``'s folder as the experiment, so the
    published test script finds the checkpoint with ``--weight_folder <out_dir's parent>
    --experiment_name <out_dir's name>``. An existing ``model.pth.tar`` or ``conf.json`` in
    ``out_dir`` is refused (:class:`OutputExists`) unless ``force``.
    """
    best = resolve_checkpoint(source)
    out_dir = Path(out_dir)
    refuse_existing(out_dir, [PUBLISHED_CHECKPOINT, "conf.json"], force=force)
    model, state = build_from_checkpoint(best)
    params = parse_params(state["config"], str(best))
    epoch = int(state.get("epoch", 0))
    conf = published_conf(model, params.loss, params.train.model_dump(), out_dir.name)
    optimizer, scheduler = _optimizer_states(model, params, epoch, best.parent / rundir.LAST_CHECKPOINT)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = save_atomic(published_checkpoint(model, epoch, optimizer, scheduler), out_dir / PUBLISHED_CHECKPOINT)
    write_text(out_dir / "conf.json", json.dumps(conf, indent=4))
    return target
