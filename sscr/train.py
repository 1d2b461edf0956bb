"""Training (stage ``train``): seeded, resumable, tracked in MLflow, single process or DDP.

One run directory per experiment, ``<train.res_dir>/<train.experiment_name>/``:

- ``model_best.pt``: the best weights by ``train.select_best`` (validation loss, as published, or PSNR);
- ``conf.json``: the params ``model_best.pt`` was trained with (``sscr evaluate --load_config``),
  written with it, never before;
- ``checkpoint_last.pt``: everything needed to resume, written atomically every epoch;
- ``mlflow_run.json``: the MLflow run id and logged model URI (not a DVC output: ids are not reproducible);
- ``.lock``: held while a trainer works here (a second one refuses).

The run's small records, tracked by git through DVC, go to its record directory
(:func:`sscr.config.record_dir`: ``<train.metrics_dir>/<train.experiment_name>/``, or the
run directory when ``train.metrics_dir`` is null):

- ``run.json``: the best checkpoint's SHA-256, epoch and validation PSNR (read by evaluate and register);
- ``metrics.csv``: per-epoch train loss and learning rate, validation metrics where validated;
- ``validation.csv``: one row per validated epoch (the DVC plot of validation PSNR).

None of them holds a run id or a time: the same data, code and params write the
same bytes, so ``dvc.lock`` reproduces. The MLflow run carries the checkpoint's
SHA-256 as the tag ``sscr.checkpoint_sha256``; that is how evaluate and register
find the run that trained a checkpoint.

:func:`train` locks the run directory and calls :func:`_train`, which reads top to
bottom: :func:`_start` sets the run up (or restores it), :func:`_train_epoch` runs
one epoch's batches, :func:`_end_epoch` validates and writes the checkpoints,
:func:`_finish_run` logs the results.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sscr import faults, losses, rundir, tracking
from sscr.checkpoint import (
    build_from_checkpoint,
    checkpoint_record,
    load_checkpoint,
    load_weights,
    save_atomic,
)
from sscr.config import Params, TrainConfig, flatten, record_dir, run_dir
from sscr.data.augment import TrainingView
from sscr.data.dataset import SEN12MSCR, build_dataset, model_inputs
from sscr.fsutil import atomic_path, remove_stale_temporaries, sha256_file
from sscr.metrics import MetricAccumulator, cloud_metrics
from sscr.models import BackboneConfig, build_model, model_cost, select_device
from sscr.process import exclusive_directory

EpochCallback = Callable[[int, dict[str, float]], bool | None]


#: The untracked file in the run directory that names the run's MLflow run and logged model.
MLFLOW_RUN_FILE = rundir.MLFLOW_RUN_JSON
CHECKPOINT_TAG, LAST_CHECKPOINT_TAG, MODEL_URI_TAG = (
    tracking.CHECKPOINT_TAG, tracking.LAST_CHECKPOINT_TAG, tracking.MODEL_URI_TAG)


class TrainingDiverged(RuntimeError):
    """The loss or a validation metric became NaN or infinite; the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """``--resume`` found nothing to resume, or a checkpoint of a different configuration."""


class RecordTaken(RuntimeError):
    """The record directory holds the ``run.json`` of another run directory, which this run would replace."""


def check_record_owner(params: Params) -> None:
    """Refuse (:class:`RecordTaken`) a run whose records would replace those of another run directory.

    ``run.json`` and the CSV tables live in ``<train.metrics_dir>/<train.experiment_name>/``, which does not
    depend on ``train.res_dir``: two runs of one experiment name with different ``train.res_dir`` would
    write the same records, and the second would silently drop the first's. When ``run.json`` there
    names a checkpoint in another run directory that still exists, the run stops before it starts.
    (``dvc repro`` deletes the records before it trains, so a DVC experiment never meets this.)
    """
    records, out_dir = record_dir(params), run_dir(params)
    record = records / rundir.RUN_JSON
    if records.resolve() == out_dir.resolve() or not record.is_file():
        return
    try:
        recorded = Path(json.loads(record.read_text())["checkpoint"])
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a record this version reads: it is replaced, as before
    if recorded.resolve() != (out_dir / rundir.BEST_CHECKPOINT).resolve() and recorded.exists():
        raise RecordTaken(
            f"{record} is the record of the run in {recorded.parent} (train.res_dir differs), and this run "
            f"({out_dir}) would replace it: give this run another train.experiment_name, or delete {record} "
            "to drop that record")


@dataclass
class TrainResult:
    """What a finished (or early-stopped) training run produced."""

    run_id: str
    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_val_psnr: float
    """Validation PSNR of the best checkpoint (the one ``train.select_best`` kept)."""
    epochs_done: int
    stopped_early: bool = False
    model_uri: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint_sha256: str = ""
    best_val_loss: float = math.nan
    """Validation loss of the best checkpoint."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    # Deterministic mode also fills every new uninitialised tensor with NaN, a debugging aid that took
    # ~20% of a CPU training step (aten::fill_, benchmarks/published_parity.py); results do not depend on it.
    torch.utils.deterministic.fill_uninitialized_memory = False


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "validate",
             loss_fn: nn.Module | None = None) -> dict[str, float]:
    """Benchmark metrics over a loader, overall and inside clouds (``cloudy_`` prefix), in eval mode.

    With ``loss_fn`` (the training loss) also ``loss``: its mean over the batches, as the
    published script's validation loss is (``AverageValueMeter`` of the batch losses).
    """
    model.eval()
    accumulator = MetricAccumulator()
    loss_sum, batches = 0.0, 0
    for batch in tqdm(loader, desc=desc, leave=False, unit="batch"):
        out = model(**model_inputs(batch, device))
        target = batch["target"].to(device)
        accumulator.add_batch(cloud_metrics(target, out["mean"].float(), batch["mask"]))
        if loss_fn is not None:
            loss_sum += float(loss_fn(out, target)[0])
            batches += 1
    metrics = {key.replace("/", "_"): value for key, value in accumulator.mean().items()
               if "/" not in key or key.startswith("cloudy/")}
    if loss_fn is not None:
        metrics["loss"] = loss_sum / max(batches, 1)
    return metrics


# ---------------------------------------------------------------- set-up


@dataclass
class _Session:
    """Everything a training run carries from epoch to epoch (one per process under DDP)."""

    params: Params
    rank: int
    world: int
    device: torch.device
    use_amp: bool
    out_dir: Path
    model: nn.Module
    net: nn.Module  # the model, or its DistributedDataParallel wrapper
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_set: TrainingView
    val_set: SEN12MSCR
    sampler: torch.utils.data.distributed.DistributedSampler
    val_loader: DataLoader
    resumed: dict[str, Any] | None
    """The checkpoint this run resumes from, if any."""
    start_epoch: int = 0
    best: dict[str, float] = field(default_factory=lambda: {"psnr": -math.inf, "loss": math.inf, "epoch": 0})
    history: list[dict[str, float]] = field(default_factory=list)
    best_sha256: str = ""
    """SHA-256 of ``model_best.pt`` as this run last wrote it."""

    @property
    def last_path(self) -> Path:
        """``checkpoint_last.pt``: what a resume starts from."""
        return self.out_dir / rundir.LAST_CHECKPOINT

    @property
    def best_path(self) -> Path:
        """``model_best.pt``: the best weights by ``train.select_best``."""
        return self.out_dir / rundir.BEST_CHECKPOINT

    @property
    def per_rank_batch(self) -> int:
        """Samples per process and step: ``train.batch_size`` shared over the DDP world."""
        return max(1, self.params.train.batch_size // self.world)


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _freeze(model: nn.Module, prefixes: list[str]) -> int:
    frozen = 0
    for name, param in model.named_parameters():
        if any(name.startswith(prefix) for prefix in prefixes):
            param.requires_grad_(False)
            frozen += 1
    if prefixes and not frozen:
        raise ValueError(f"train.freeze {prefixes} matches no parameter; names start with "
                         f"{sorted({n.split('.')[0] for n, _ in model.named_parameters()})}")
    return frozen


def _config_key(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a config that must match for a resume: everything but the epoch budget and workers."""
    flat = flatten(config)
    for key in ("train.epochs", "train.num_workers", "train.device", "evaluate", "tune", "registry"):
        flat = {k: v for k, v in flat.items() if not (k == key or k.startswith(key + "."))}
    return flat


def _resume_state(params: Params, last_path: Path) -> dict[str, Any]:
    """The last checkpoint of the run to resume, refused if it was trained with other params."""
    if not last_path.exists():
        raise ResumeError(f"nothing to resume: {last_path} does not exist; start without --resume")
    state = load_checkpoint(last_path)
    config = params.model_dump(mode="json")
    if _config_key(state["config"]) != _config_key(config):
        changed = sorted(k for k, v in _config_key(config).items() if _config_key(state["config"]).get(k) != v)
        raise ResumeError(f"{last_path} was trained with other params ({', '.join(changed)}); "
                          "resume with the same params.yaml or start a new run without --resume")
    return state


def _build_model(params: Params, device: torch.device, pretrained: bool) -> nn.Module:
    """The configured backbone on ``device``, from ``train.pretrained`` weights if asked, frozen where asked."""
    cfg = params.train
    backbone = BackboneConfig.from_model_config(params.model, losses.variance_mode(params.loss))
    model = build_model(params.model.name, backbone).to(device)
    if pretrained and cfg.pretrained:
        load_weights(model, load_checkpoint(cfg.pretrained)["model"], cfg.pretrained)
    _freeze(model, cfg.freeze)
    return model


def _start(params: Params, resume: bool) -> _Session:
    """Set a run up: seed, device, model, optimiser, data; restored from ``checkpoint_last.pt`` on resume."""
    cfg = params.train
    rank, world = _distributed()
    seed_everything(cfg.rdm_seed)
    device = select_device(cfg.device, key="train.device")
    out_dir = run_dir(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _resume_state(params, out_dir / rundir.LAST_CHECKPOINT) if resume else None

    train_set = TrainingView(build_dataset(params, "train"), cfg.crop_size, cfg.rdm_seed, flip=cfg.augment,
                             repeats=cfg.repeats)
    val_set = build_dataset(params, "val")
    if rank == 0:
        for line in train_set.dataset.dropped_lines() + val_set.dropped_lines():
            print(line, file=sys.stderr)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"empty split under {params.data.root}: {len(train_set)} train and {len(val_set)} "
                         "val samples; check data.root, data.seasons and train.min_cov/max_cov")

    model = _build_model(params, device, pretrained=state is None)
    if model.use_sar:  # S1 left out of some samples, as the model asks (see its train_sar_dropout)
        train_set.sar_dropout = model.train_sar_dropout
    # Through the module, so that a fault-injection test can swap the loss for one that turns NaN.
    loss_fn = losses.build_loss(params.loss, model.scale_by).to(device)
    loss_fn.check_outputs(model.output_keys, params.model.name)  # a loss the model cannot feed fails here, not mid-run
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    per_rank_steps = math.ceil(math.ceil(len(train_set) / world) / max(1, cfg.batch_size // world))
    scheduler = learning_rate_schedule(optimizer, cfg, per_rank_steps)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    restored: dict[str, Any] = {}
    if state is not None:
        load_weights(model, state["model"], out_dir / rundir.LAST_CHECKPOINT)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restored = {"start_epoch": state["epoch"], "best": dict(state["best"]), "history": list(state["history"])}
    net: nn.Module = model
    if world > 1:
        # Unused outputs (e.g. the structure head under an l1 loss) leave parameters without gradients.
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=True)

    # The same sampler in one process and under DDP: each rank takes every world-th index of one seeded
    # permutation, so a DDP step sees exactly the samples of the matching single-process batch.
    sampler = torch.utils.data.distributed.DistributedSampler(train_set, num_replicas=world, rank=rank,
                                                              shuffle=True, seed=cfg.rdm_seed)
    return _Session(
        params=params, rank=rank, world=world, device=device, use_amp=use_amp, out_dir=out_dir, model=model,
        net=net, loss_fn=loss_fn, optimizer=optimizer, scheduler=scheduler, scaler=scaler, train_set=train_set,
        val_set=val_set, sampler=sampler,
        val_loader=DataLoader(val_set, batch_size=max(1, cfg.batch_size // world), num_workers=cfg.num_workers),
        resumed=state, **restored,
    )


WARMUP_FRACTION = 0.05
"""``cosine``: the share of the run's optimiser steps over which the learning rate rises linearly to ``lr``."""
COSINE_FLOOR = 0.02
"""``cosine``: the learning rate at the last step, as a fraction of ``lr``."""


def learning_rate_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                           steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The learning-rate schedule of ``train.schedule`` (stepped by :func:`_advance_schedule`).

    ``exponential`` (published): ``lr * gamma ** epoch``, one step per epoch. ``cosine``: one
    step per optimiser step, ``lr`` times a linear warm-up over the first
    :data:`WARMUP_FRACTION` of the run's steps, then a cosine decay to :data:`COSINE_FLOOR`
    at the last step (a short CPU run needs a high rate early and a low one at the end).
    """
    if cfg.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    total = max(1, steps_per_epoch * cfg.epochs)
    warmup = max(1, round(WARMUP_FRACTION * total))

    def factor(step: int) -> float:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        return min((step + 1) / warmup, COSINE_FLOOR + (1.0 - COSINE_FLOOR) * cosine)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _advance_schedule(session: _Session, end_of_epoch: bool) -> None:
    """Step the learning-rate schedule: after every batch (``cosine``) or after every epoch (``exponential``)."""
    if end_of_epoch == (session.params.train.schedule == "exponential"):
        session.scheduler.step()


# ---------------------------------------------------------------- one epoch


def _train_epoch(session: _Session, epoch: int, progress: bool) -> dict[str, float]:
    """Run one epoch's batches; returns its row: epoch, mean train loss (and its parts), learning rate, samples.

    ``lr`` is the learning rate the epoch's last optimiser step used (the published script
    logs the epoch's rate, before its scheduler steps); ``train_samples`` the number of
    training samples the epoch's steps saw (patches times ``train.repeats``). Under DDP
    the loss and the samples are summed over all ranks, so every rank returns the same row.
    """
    cfg = session.params.train
    session.train_set.epoch = epoch
    session.sampler.set_epoch(epoch)
    loader = DataLoader(session.train_set, batch_size=session.per_rank_batch, sampler=session.sampler,
                        num_workers=cfg.num_workers)
    torch.manual_seed(cfg.rdm_seed * 1000 + epoch)
    session.net.train()
    total, parts_sum, count, samples = 0.0, {}, 0, 0
    lr = session.optimizer.param_groups[0]["lr"]
    bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress or session.rank != 0)
    for step, batch in enumerate(bar):
        faults.checkpoint(f"train.batch:{epoch}:{step}")
        loss, parts = _step(session, batch)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"loss became {loss.item()} at epoch {epoch}, batch {step} "
                f"(samples {', '.join(batch['meta']['sample_id'])}); the last good checkpoint "
                f"{session.last_path} is kept. Try a lower train.lr or another loss."
            )
        session.scaler.scale(loss).backward()
        lr = session.optimizer.param_groups[0]["lr"]
        session.scaler.step(session.optimizer)
        session.scaler.update()
        _advance_schedule(session, end_of_epoch=False)
        total += loss.item()
        count += 1
        samples += len(batch["target"])
        for key, value in parts.items():
            parts_sum[key] = parts_sum.get(key, 0.0) + float(value)
        bar.set_postfix(loss=f"{total / count:.4f}")
    _advance_schedule(session, end_of_epoch=True)
    if session.world > 1:  # the epoch's loss over all ranks, not rank 0's share
        total, count, parts_sum = _sum_over_ranks(total, count, {**parts_sum, "samples": float(samples)})
        samples = int(parts_sum.pop("samples"))
    row: dict[str, float] = {"epoch": epoch, "train_loss": total / max(count, 1), "lr": lr, "train_samples": samples}
    row.update({f"train_{k}": v / max(count, 1) for k, v in parts_sum.items()})
    return row


def _step(session: _Session, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
    """Forward pass and loss of one batch (gradients cleared first; mixed precision on CUDA)."""
    session.optimizer.zero_grad(set_to_none=True)
    device = session.device
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=session.use_amp):
        output = session.net(**model_inputs(batch, device))
        return session.loss_fn(output, batch["target"].to(device))


def _sum_over_ranks(total: float, count: int, parts: dict[str, float]) -> tuple[float, int, dict[str, float]]:
    import torch.distributed as dist

    keys = sorted(parts)
    tensor = torch.tensor([total, float(count), *[parts[k] for k in keys]], dtype=torch.float64)
    dist.all_reduce(tensor)
    values = tensor.tolist()
    return values[0], int(values[1]), dict(zip(keys, values[2:], strict=True))


def _broadcast_flag(flag: bool) -> bool:
    import torch.distributed as dist

    tensor = torch.tensor([int(flag)])
    dist.broadcast(tensor, src=0)
    return bool(tensor.item())


# ---------------------------------------------------------------- validation and checkpoints


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    keys = sorted({key for row in history for key in row}, key=lambda k: (k != "epoch", k))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _write_records(folder: Path, history: list[dict[str, float]]) -> None:
    """``metrics.csv`` (every epoch) and ``validation.csv`` (validated epochs only: a plot has no holes)."""
    _write_history(folder / "metrics.csv", history)
    validated = [{k: v for k, v in row.items() if k == "epoch" or k.startswith("val_")}
                 for row in history if any(k.startswith("val_") for k in row)]
    _write_history(folder / "validation.csv", validated)


def _check_finite(val: dict[str, float], epoch: int, last_path: Path) -> None:
    """Stop the run like a NaN loss when a validation metric over all pixels is NaN or infinite.

    (+inf PSNR is a perfect prediction, not a failure; region metrics, ``cloudy_*``, may be
    undefined when the split has no cloudy pixel.)
    """
    bad = {key: value for key, value in val.items()
           if "_" not in key and not math.isfinite(value) and not (key == "PSNR" and value == math.inf)}
    if bad:
        found = ", ".join(f"{key} {value}" for key, value in sorted(bad.items()))
        raise TrainingDiverged(
            f"validation gave {found} at epoch {epoch}; the last good checkpoint {last_path} is kept. "
            "Try a lower train.lr or another loss."
        )


def validation_due(cfg: TrainConfig, epoch: int) -> bool:
    """Whether epoch ``epoch`` ends with validation: after ``val_after``, every ``val_every``, and the last."""
    return (epoch > cfg.val_after and epoch % cfg.val_every == 0) or epoch == cfg.epochs


def validation_line(epoch: int, epochs: int, val: dict[str, float], best_epoch: int, select_best: str) -> str:
    """One line of validation scores, as training prints them when it validates."""
    def number(key: str, digits: int) -> str:
        value = val.get(key, math.nan)
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)

    line = (f"validation {epoch}/{epochs}: PSNR {number('PSNR', 2)} dB, SSIM {number('SSIM', 4)}, "
            f"SAM {number('SAM', 2)} deg, MAE {number('MAE', 4)}, val loss {number('loss', 5)}; inside clouds "
            f"PSNR {number('cloudy_PSNR', 2)} dB, SSIM {number('cloudy_SSIM', 4)}")
    if best_epoch == epoch:
        line += f" (best so far by {select_best.replace('_', ' ')})"
    return line


def is_better(val: dict[str, float], best: dict[str, float], select_best: str) -> bool:
    """Whether validation metrics ``val`` beat the best so far by ``train.select_best``.

    ``val_loss``: a loss <= the best (the published rule: a tie goes to the later epoch);
    ``PSNR``: a strictly higher PSNR. A NaN never wins.
    """
    if select_best == "val_loss":
        return val["loss"] <= best.get("loss", math.inf)
    return val["PSNR"] > best.get("psnr", -math.inf)


def _end_epoch(session: _Session, epoch: int, row: dict[str, float],
               logger: tracking.MetricLogger) -> dict[str, float] | None:
    """Rank 0's end of an epoch: validate when due, then the checkpoints, the records and MLflow.

    Returns the validation metrics, or None in an epoch without validation.
    """
    cfg, model, params = session.params.train, session.model, session.params
    val: dict[str, float] | None = None
    if validation_due(cfg, epoch):
        faults.checkpoint(f"train.validate:{epoch}")
        val = validate(model, session.val_loader, session.device, desc=f"validate {epoch}", loss_fn=session.loss_fn)
        _check_finite(val, epoch, session.last_path)
        row.update({f"val_{key}": value for key, value in val.items()})
        if is_better(val, session.best, cfg.select_best):
            session.best = {"psnr": float(val["PSNR"]), "loss": float(val["loss"]), "epoch": epoch}
            save_atomic(checkpoint_record(model, params, epoch, val=val), session.best_path)
            # conf.json describes model_best.pt: written after it, never before (a failed run leaves both old).
            rundir.write_conf(session.out_dir, params)
            session.best_sha256 = sha256_file(session.best_path)
            logger.set_tags({CHECKPOINT_TAG: session.best_sha256})
    session.history.append(row)
    save_atomic(checkpoint_record(
        model, params, epoch, optimizer=session.optimizer.state_dict(), scheduler=session.scheduler.state_dict(),
        scaler=session.scaler.state_dict(), best=session.best, history=session.history,
    ), session.last_path, fault_point=f"checkpoint.write:{epoch}")
    logger.set_tags({LAST_CHECKPOINT_TAG: sha256_file(session.last_path)})
    _write_records(record_dir(params), session.history)
    logger.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
    return val


# ---------------------------------------------------------------- the run


def train(
    params: Params,
    resume: bool = False,
    run_name: str | None = None,
    nested: bool = False,
    tags: dict[str, str] | None = None,
    on_epoch_end: EpochCallback | None = None,
    log_model: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Train the configured model; every epoch ends with an atomic checkpoint and logged metrics.

    ``resume=True`` continues the unfinished run in ``run_dir(params)`` (same
    MLflow run) up to ``train.epochs``. ``on_epoch_end(epoch, val_metrics)``
    may return True to stop early (used by Optuna pruning); the run then ends
    normally with ``stopped_early``. A NaN or infinite loss or validation metric
    raises :class:`TrainingDiverged`, marks the MLflow run FAILED and leaves the
    previous checkpoints untouched. The MLflow run is named for what runs
    (:func:`run_label`, ``run_name`` first when given).

    The run directory is locked for the run (a second trainer into it gets
    :class:`sscr.process.DirectoryBusy`), and temporary files a killed run left
    there are removed first.
    """
    rank, _ = _distributed()
    if rank != 0:  # rank 0 owns the directory; the other ranks only compute
        return _train(params, resume, run_name, nested, tags, on_epoch_end, log_model, progress)
    out_dir = run_dir(params)
    check_record_owner(params)
    with exclusive_directory(out_dir):
        remove_stale_temporaries(out_dir)
        remove_stale_temporaries(record_dir(params))
        return _train(params, resume, run_name, nested, tags, on_epoch_end, log_model, progress)


def run_label(params: Params, prefix: str | None = None) -> str:
    """What a training run is, as its MLflow run name starts: ``[prefix-]model-loss-sar|nosar[-experiment]``.

    The experiment is the DVC experiment (``DVC_EXP_NAME``, set by ``dvc exp run``) and the
    Prefect flow run (``SSCR_FLOW_RUN``, set by the ``pipeline`` flow) when there is one.
    """
    parts = [prefix] if prefix else []
    parts += [params.model.name, params.loss.name, "sar" if params.model.use_sar else "nosar"]
    for key in ("DVC_EXP_NAME", "SSCR_FLOW_RUN"):  # a Prefect run with parameters is the DVC experiment of its name
        if os.environ.get(key) and os.environ[key] not in parts:
            parts.append(os.environ[key])
    return "-".join(parts)


def _name_run(run_id: str, params: Params, prefix: str | None) -> None:
    """Name a new run ``<run_label>-<first 8 hex of its id>``: what ran, and never twice the same name.

    (MLflow's own names are drawn with ``random``, which training has just seeded: every run got the same.)
    """
    from mlflow.tracking import MlflowClient

    MlflowClient().update_run(run_id, name=f"{run_label(params, prefix)}-{run_id[:8]}")


def _mlflow_run_file(out_dir: Path) -> Path:
    return out_dir / MLFLOW_RUN_FILE


def _resume_run_id(out_dir: Path, state: dict[str, Any]) -> str | None:
    """The MLflow run a resume continues: the run tagged with the last checkpoint's SHA-256.

    (``mlflow_run.json`` is written when a run completes, so after a kill it still names the
    previous run; it is only the last resort.)
    """
    found = tracking.find_run_by_tag(LAST_CHECKPOINT_TAG, sha256_file(out_dir / rundir.LAST_CHECKPOINT))
    if found is not None:
        return found.info.run_id
    if state.get("run_id"):  # a checkpoint written before run ids left the checkpoints
        return str(state["run_id"])
    record = _mlflow_run_file(out_dir)
    return json.loads(record.read_text())["run_id"] if record.exists() else None


def _train(
    params: Params,
    resume: bool,
    run_name: str | None,
    nested: bool,
    tags: dict[str, str] | None,
    on_epoch_end: EpochCallback | None,
    log_model: bool,
    progress: bool,
) -> TrainResult:
    """:func:`train`, once the run directory is this process's."""
    session = _start(params, resume)
    rank, state = session.rank, session.resumed
    resume_id = _resume_run_id(session.out_dir, state) if state and rank == 0 else None
    run_context = tracking.training_run(
        params.train.experiment_name, run_id=resume_id, run_name=run_name, nested=nested,
        tags=tags,
    ) if rank == 0 else contextlib.nullcontext()
    with run_context as run:
        run_id = run.info.run_id if run else ""
        logger = tracking.MetricLogger(run_id, session.out_dir / "metrics_fallback.jsonl") if rank == 0 else None
        if rank == 0 and resume_id is None:
            # mlflow_run.json is written when the run completes (_finish_run): a failed run leaves the previous one.
            _name_run(run_id, params, run_name)
        if rank == 0:
            logger.set_tags(tracking.device_tags(session.device))  # a resumed run tags the device it ends on
        if rank == 0 and state is None:
            _log_run_inputs(params, session.train_set.dataset, session.val_set, session.model)
        if rank == 0 and state is not None:
            _relog_missing(run_id, session.history)
        stopped = False
        for epoch in range(session.start_epoch + 1, params.train.epochs + 1):
            row = _train_epoch(session, epoch, progress)
            if rank == 0:
                val = _end_epoch(session, epoch, row, logger)
                if val is not None and progress:
                    print(validation_line(epoch, params.train.epochs, val, int(session.best["epoch"]),
                                          params.train.select_best), flush=True)
                if on_epoch_end is not None and val is not None:
                    stopped = bool(on_epoch_end(epoch, val))
            if session.world > 1:
                stopped = _broadcast_flag(stopped)
            if stopped:
                break
        history = session.history
        result = TrainResult(run_id, session.out_dir, session.best_path, int(session.best["epoch"]),
                             float(session.best["psnr"]),
                             int(history[-1]["epoch"]) if history else session.start_epoch, stopped, history=history,
                             best_val_loss=float(session.best.get("loss", math.nan)))
        if rank == 0:
            result.checkpoint_sha256 = sha256_file(session.best_path) if session.best_path.exists() else ""
            result.model_uri = _finish_run(params, session.best_path, session.val_set, result, log_model, logger)
            logger.close()
    if session.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result


def _log_run_inputs(params: Params, train_set: SEN12MSCR, val_set: SEN12MSCR, model: nn.Module) -> None:
    import mlflow

    rundir.log_config(params)
    for split, dataset in (("train", train_set), ("val", val_set)):
        files = [t.path(m) for t in dataset.triplets for m in ("s1", "s2", "s2_cloudy")]
        tracking.log_dataset(f"sen12mscr-{params.data.source}", params.data.root, files, context=split,
                             extra=f"{split}:{params.data.source}")
        tracking.log_dropped(split, dataset.dropped)
    size = params.data.patch_size
    try:
        cost = model_cost(model, height=size, width=size)
        mlflow.log_params({"model.n_params": cost["params"], f"model.flops_{size}px": cost["flops"]})
    except Exception as err:  # noqa: BLE001 - a cost estimate must never stop training
        print(f"sscr: could not measure model cost: {err}")


def _relog_missing(run_id: str, history: list[dict[str, float]]) -> None:
    """After a crash between checkpoint and logging, send the epochs MLflow does not have yet."""
    from mlflow.tracking import MlflowClient

    logged = {m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")}
    logger = tracking.MetricLogger(run_id, Path(os.devnull))
    for row in history:
        if int(row["epoch"]) not in logged:
            logger.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def _finish_run(params: Params, best_path: Path, val_set: SEN12MSCR, result: TrainResult, log_model: bool,
                logger: tracking.MetricLogger) -> str:
    """Log the best checkpoint, figures and the MLflow model; write ``run.json``. Returns the model URI.

    ``run.json`` (a DVC output) holds only what the same training reproduces: the best
    checkpoint's SHA-256, its epoch and score. The run id and model URI go to the
    untracked ``mlflow_run.json`` and, as tags, to the MLflow run. If the tracking
    server is unreachable by now, the run's results stay on disk (checkpoint,
    records, metrics fallback) and this says so instead of failing.
    """
    model_uri = ""
    try:
        model_uri = _log_results(params, best_path, val_set, result, log_model)
    except Exception as err:  # noqa: BLE001 - any transport error: training itself has succeeded
        print(f"sscr: could not log the model and artifacts to MLflow at {tracking.redact(tracking.tracking_uri())} "
              f"({type(err).__name__}: {tracking.redact(str(err))[:200]}); the best checkpoint is {best_path}")
    logger.set_tags({CHECKPOINT_TAG: result.checkpoint_sha256, **({MODEL_URI_TAG: model_uri} if model_uri else {})})
    rundir.write_mlflow_run(result.run_dir, result.run_id, model_uri, result.checkpoint_sha256)
    rundir.write_run_record(params, result.best_checkpoint, result.checkpoint_sha256, **run_facts(params, result))
    return model_uri


def run_facts(params: Params, result: TrainResult) -> dict[str, Any]:
    """What ``run.json`` records beside the checkpoint: how it was chosen, its epoch and scores, the run's length.

    Deterministic: the same training gives the same facts (no run id, no time).
    """
    return {"select_best": params.train.select_best, "best_epoch": result.best_epoch,
            "best_val_psnr": result.best_val_psnr, "best_val_loss": result.best_val_loss,
            "epochs_done": result.epochs_done, "stopped_early": result.stopped_early}


def _log_results(params: Params, best_path: Path, val_set: SEN12MSCR, result: TrainResult, log_model: bool) -> str:
    import matplotlib.pyplot as plt
    import mlflow

    from sscr.plots import prediction_panel

    mlflow.log_metrics({"best_val_PSNR": result.best_val_psnr, "best_val_loss": result.best_val_loss,
                        "best_epoch": result.best_epoch})
    mlflow.log_artifact(str(record_dir(params) / "metrics.csv"), "training")
    best_model, _ = build_from_checkpoint(best_path)
    best_model.eval()
    for index in range(min(2, len(val_set))):
        sample = val_set[index]
        with torch.no_grad():
            out = best_model(**model_inputs({k: sample[k][None] for k in ("cloudy", "sar", "mask")},
                                            torch.device("cpu")))
        figure = prediction_panel(sample, out["mean"][0], out["var"][0] if "var" in out else None)
        mlflow.log_figure(figure, f"figures/val_{sample['meta']['sample_id']}.png")
        plt.close(figure)
    return rundir.log_best(best_path, params, log_model)


def result_dict(result: TrainResult) -> dict[str, Any]:
    """JSON-friendly form of a :class:`TrainResult`."""
    data = asdict(result)
    data["run_dir"], data["best_checkpoint"] = str(result.run_dir), str(result.best_checkpoint)
    return data
