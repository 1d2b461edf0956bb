"""Training (stage ``train``): seeded, resumable, tracked in MLflow, single process or DDP.

One run directory per experiment, ``<train.res_dir>/<train.experiment_name>/``:

- ``conf.json``: the params the run was trained with (``sscr evaluate --load_config``);
- ``checkpoint_last.pt``: everything needed to resume, written atomically every epoch;
- ``model_best.pt``: the weights with the best validation PSNR;
- ``metrics.csv``: per-epoch train loss and validation metrics (DVC plots);
- ``run.json``: the MLflow run id and logged model URI (read by evaluate and register).

:func:`train` reads top to bottom: :func:`_start` sets the run up (or restores
it), :func:`_train_epoch` runs one epoch's batches, :func:`_end_epoch`
validates and writes the checkpoints, :func:`_finish_run` logs the results.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from sscr import faults, losses, serving, tracking
from sscr.checkpoint import FORMAT, build_from_checkpoint, load_checkpoint, load_weights, save_atomic
from sscr.config import Params, TrainConfig, flatten, run_dir
from sscr.data.augment import TrainingView
from sscr.data.dataset import SEN12MSCR, build_dataset, model_inputs
from sscr.fsutil import atomic_path, write_text
from sscr.metrics import MetricAccumulator, cloud_metrics
from sscr.models import BackboneConfig, build_model, model_cost, select_device

EpochCallback = Callable[[int, dict[str, float]], bool | None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class ResumeError(RuntimeError):
    """``--resume`` found nothing to resume, or a checkpoint of a different configuration."""


@dataclass
class TrainResult:
    """What a finished (or early-stopped) training run produced."""

    run_id: str
    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_val_psnr: float
    epochs_done: int
    stopped_early: bool = False
    model_uri: str = ""
    history: list[dict[str, float]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "validate") -> dict[str, float]:
    """Benchmark metrics over a loader, overall and inside clouds (``cloudy_`` prefix)."""
    model.eval()
    accumulator = MetricAccumulator()
    for batch in tqdm(loader, desc=desc, leave=False, unit="batch"):
        out = model(**model_inputs(batch, device))
        accumulator.add_batch(cloud_metrics(batch["target"].to(device), out["mean"].float(), batch["mask"]))
    return {key.replace("/", "_"): value for key, value in accumulator.mean().items()
            if "/" not in key or key.startswith("cloudy/")}


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
    best: dict[str, float] = field(default_factory=lambda: {"psnr": -math.inf, "epoch": 0})
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def last_path(self) -> Path:
        """``checkpoint_last.pt``: what a resume starts from."""
        return self.out_dir / "checkpoint_last.pt"

    @property
    def best_path(self) -> Path:
        """``model_best.pt``: the weights with the best validation PSNR."""
        return self.out_dir / "model_best.pt"

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
    device = select_device(cfg.device)
    out_dir = run_dir(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _resume_state(params, out_dir / "checkpoint_last.pt") if resume else None

    train_set = TrainingView(build_dataset(params, "train"), cfg.crop_size, cfg.rdm_seed, repeats=cfg.repeats)
    val_set = build_dataset(params, "val")
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"empty split under {params.data.root}: {len(train_set)} train and {len(val_set)} "
                         "val samples; check data.root, data.seasons and train.min_cov/max_cov")

    model = _build_model(params, device, pretrained=state is None)
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
        load_weights(model, state["model"], out_dir / "checkpoint_last.pt")
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
    """Run one epoch's batches; returns its row: epoch, mean train loss (and its parts), learning rate.

    Under DDP the loss is summed over all ranks, so every rank returns the same row.
    """
    cfg = session.params.train
    session.train_set.epoch = epoch
    session.sampler.set_epoch(epoch)
    loader = DataLoader(session.train_set, batch_size=session.per_rank_batch, sampler=session.sampler,
                        num_workers=cfg.num_workers)
    torch.manual_seed(cfg.rdm_seed * 1000 + epoch)
    session.net.train()
    total, parts_sum, count = 0.0, {}, 0
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
        session.scaler.step(session.optimizer)
        session.scaler.update()
        _advance_schedule(session, end_of_epoch=False)
        total += loss.item()
        count += 1
        for key, value in parts.items():
            parts_sum[key] = parts_sum.get(key, 0.0) + float(value)
        bar.set_postfix(loss=f"{total / count:.4f}")
    _advance_schedule(session, end_of_epoch=True)
    if session.world > 1:  # the epoch's loss over all ranks, not rank 0's share
        total, count, parts_sum = _sum_over_ranks(total, count, parts_sum)
    row: dict[str, float] = {"epoch": epoch, "train_loss": total / max(count, 1),
                             "lr": session.optimizer.param_groups[0]["lr"]}
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


def _checkpoint(model: nn.Module, params: Params, epoch: int, run_id: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "model": model.state_dict(),
        "model_name": params.model.name,
        "model_config": dict(model.config),
        "config": params.model_dump(mode="json"),
        "epoch": epoch,
        "run_id": run_id,
        **extra,
    }


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    keys = sorted({key for row in history for key in row}, key=lambda k: (k != "epoch", k))
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def _end_epoch(session: _Session, epoch: int, row: dict[str, float], run_id: str,
               logger: tracking.MetricLogger) -> dict[str, float] | None:
    """Rank 0's end of an epoch: validate when due, then the checkpoints, ``metrics.csv`` and MLflow.

    Returns the validation metrics, or None in an epoch without validation.
    """
    cfg, model, params = session.params.train, session.model, session.params
    val: dict[str, float] | None = None
    if epoch % cfg.val_every == 0 or epoch == cfg.epochs:
        faults.checkpoint(f"train.validate:{epoch}")
        val = validate(model, session.val_loader, session.device, desc=f"validate {epoch}")
        row.update({f"val_{key}": value for key, value in val.items()})
        if val["PSNR"] > session.best["psnr"]:
            session.best = {"psnr": float(val["PSNR"]), "epoch": epoch}
            save_atomic(_checkpoint(model, params, epoch, run_id, extra={"val": val}), session.best_path)
    session.history.append(row)
    save_atomic(_checkpoint(model, params, epoch, run_id, extra={
        "optimizer": session.optimizer.state_dict(), "scheduler": session.scheduler.state_dict(),
        "scaler": session.scaler.state_dict(), "best": session.best, "history": session.history,
    }), session.last_path, fault_point=f"checkpoint.write:{epoch}")
    _write_history(session.out_dir / "metrics.csv", session.history)
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
    normally with ``stopped_early``. A NaN or infinite loss raises
    :class:`TrainingDiverged`, marks the MLflow run FAILED and leaves the
    previous checkpoints untouched.
    """
    session = _start(params, resume)
    rank, state = session.rank, session.resumed
    run_context = tracking.training_run(
        params.train.experiment_name, run_id=state["run_id"] if state else None, run_name=run_name,
        nested=nested, tags=tags,
    ) if rank == 0 else contextlib.nullcontext()
    with run_context as run:
        run_id = run.info.run_id if run else ""
        logger = tracking.MetricLogger(run_id, session.out_dir / "metrics_fallback.jsonl") if rank == 0 else None
        if rank == 0 and state is None:
            _log_run_inputs(params, session.train_set.dataset, session.val_set, session.out_dir, session.model)
        if rank == 0 and state is not None:
            _relog_missing(run_id, session.history)
        stopped = False
        for epoch in range(session.start_epoch + 1, params.train.epochs + 1):
            row = _train_epoch(session, epoch, progress)
            if rank == 0:
                val = _end_epoch(session, epoch, row, run_id, logger)
                if on_epoch_end is not None and val is not None:
                    stopped = bool(on_epoch_end(epoch, val))
            if session.world > 1:
                stopped = _broadcast_flag(stopped)
            if stopped:
                break
        history = session.history
        result = TrainResult(run_id, session.out_dir, session.best_path, int(session.best["epoch"]),
                             float(session.best["psnr"]),
                             int(history[-1]["epoch"]) if history else session.start_epoch, stopped, history=history)
        if rank == 0:
            result.model_uri = _finish_run(params, session.best_path, session.val_set, session.out_dir, result,
                                           log_model)
            logger.close()
    if session.world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result


def _log_run_inputs(params: Params, train_set: SEN12MSCR, val_set: SEN12MSCR, out_dir: Path, model: nn.Module) -> None:
    import mlflow

    tracking.log_params_flat(flatten(params))
    write_text(out_dir / "conf.json", json.dumps(params.model_dump(mode="json"), indent=2))
    mlflow.log_dict(params.model_dump(mode="json"), "config/params.json")
    for split, dataset in (("train", train_set), ("val", val_set)):
        files = [t.path(m) for t in dataset.triplets for m in ("s1", "s2", "s2_cloudy")]
        tracking.log_dataset(f"sen12mscr-{params.data.source}", params.data.root, files, context=split,
                             extra=f"{split}:{params.data.source}")
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


def _finish_run(params: Params, best_path: Path, val_set: SEN12MSCR, out_dir: Path, result: TrainResult,
                log_model: bool) -> str:
    """Log the best checkpoint, figures and the MLflow model; write ``run.json``. Returns the model URI.

    If the tracking server is unreachable by now, the run's results stay on disk
    (checkpoint, metrics.csv, metrics fallback) and this says so instead of failing.
    """
    model_uri = ""
    try:
        model_uri = _log_results(params, best_path, val_set, out_dir, result, log_model)
    except Exception as err:  # noqa: BLE001 - any transport error: training itself has succeeded
        print(f"sscr: could not log the model and artifacts to MLflow at {tracking.redact(tracking.tracking_uri())} "
              f"({type(err).__name__}: {tracking.redact(str(err))[:200]}); the best checkpoint is {best_path}")
    info = {"run_id": result.run_id, "model_uri": model_uri, "experiment": params.train.experiment_name,
            "best_epoch": result.best_epoch, "best_val_psnr": result.best_val_psnr,
            "epochs_done": result.epochs_done, "stopped_early": result.stopped_early}
    write_text(out_dir / "run.json", json.dumps(info, indent=2))
    return model_uri


def _log_results(params: Params, best_path: Path, val_set: SEN12MSCR, out_dir: Path, result: TrainResult,
                 log_model: bool) -> str:
    import matplotlib.pyplot as plt
    import mlflow

    from sscr.plots import prediction_panel

    mlflow.log_metrics({"best_val_PSNR": result.best_val_psnr, "best_epoch": result.best_epoch})
    mlflow.log_artifact(str(best_path), "checkpoints")
    mlflow.log_artifact(str(out_dir / "metrics.csv"), "training")
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
    return serving.log_model(best_path, params.model.use_sar) if log_model else ""


def result_dict(result: TrainResult) -> dict[str, Any]:
    """JSON-friendly form of a :class:`TrainResult`."""
    data = asdict(result)
    data["run_dir"], data["best_checkpoint"] = str(result.run_dir), str(result.best_checkpoint)
    return data
