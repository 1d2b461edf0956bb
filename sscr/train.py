"""Training (stage ``train``): seeded, resumable, tracked in MLflow, single process or DDP.

One run directory per experiment, ``<train.res_dir>/<train.experiment_name>/``:

- ``conf.json``: the params the run was trained with (``sscr evaluate --load_config``);
- ``checkpoint_last.pt``: everything needed to resume, written atomically every epoch;
- ``model_best.pt``: the weights with the best validation PSNR;
- ``metrics.csv``: per-epoch train loss and validation metrics (DVC plots);
- ``run.json``: the MLflow run id and logged model URI (read by evaluate and register).
"""

from __future__ import annotations

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
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sscr import faults
from sscr.checkpoint import FORMAT, load_checkpoint, load_weights, save_atomic
from sscr.config import Params, flatten
from sscr.data.dataset import SEN12MSCR

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


def run_dir(params: Params) -> Path:
    """The run directory of an experiment: ``<res_dir>/<experiment_name>``."""
    return Path(params.train.res_dir) / params.train.experiment_name


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch; deterministic algorithms where torch has them."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


class TrainingView(Dataset):
    """Random crops and flips of a data set, reproducible from (seed, epoch, index).

    Deriving each sample's randomness from its index rather than from a stream
    makes a resumed run see exactly the batches an uninterrupted run would.
    """

    def __init__(self, dataset: Dataset, crop_size: int | None, seed: int) -> None:
        self.dataset = dataset
        self.crop_size = crop_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        rng = np.random.default_rng([self.seed, self.epoch, index])
        height, width = item["cloudy"].shape[-2:]
        keys = ("sar", "cloudy", "target", "mask")
        if self.crop_size and self.crop_size < min(height, width):
            top = int(rng.integers(0, height - self.crop_size + 1))
            left = int(rng.integers(0, width - self.crop_size + 1))
            for key in keys:
                item[key] = item[key][..., top:top + self.crop_size, left:left + self.crop_size]
        flips = rng.integers(0, 2, size=2)
        for key in keys:
            if flips[0]:
                item[key] = item[key].flip(-1)
            if flips[1]:
                item[key] = item[key].flip(-2)
            item[key] = item[key].contiguous()
        return item


def build_dataset(params: Params, split: str) -> SEN12MSCR:
    """The data set of ``split`` as configured (precomputed masks when the mask stage has run)."""
    masks_dir = params.masks.dir if (Path(params.masks.dir) / "coverage.csv").exists() else None
    train = params.train
    return SEN12MSCR(
        params.data.root, split=split, seasons=params.data.seasons, cloud_mask=params.masks.use,
        masks_dir=masks_dir, coverage_range=(train.min_cov, train.max_cov) if split == "train" else (0.0, 1.0),
        max_samples=train.max_samples if split == "train" else None,
        patch_size=params.data.patch_size, on_error=params.data.on_error,
    )


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor | None]:
    """Keyword arguments of a model's forward from a batch: cloudy, sar, mask (B, 1, H, W)."""
    return {
        "cloudy": batch["cloudy"].to(device, non_blocking=True),
        "sar": batch["sar"].to(device, non_blocking=True),
        "mask": batch["mask"].to(device, non_blocking=True).unsqueeze(1),
    }


@torch.no_grad()
def validate(model: nn.Module, loader: DataLoader, device: torch.device, desc: str = "validate") -> dict[str, float]:
    """Benchmark metrics over a loader, overall and inside clouds (``cloudy_`` prefix)."""
    from sscr.metrics import MetricAccumulator, cloud_metrics

    model.eval()
    accumulator = MetricAccumulator()
    for batch in tqdm(loader, desc=desc, leave=False, unit="batch"):
        out = model(**model_inputs(batch, device))
        accumulator.add_batch(cloud_metrics(batch["target"].to(device), out["mean"].float(), batch["mask"]))
    return {key.replace("/", "_"): value for key, value in accumulator.mean().items()
            if "/" not in key or key.startswith("cloudy/")}


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


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    keys = sorted({key for row in history for key in row}, key=lambda k: (k != "epoch", k))
    tmp = path.with_name(f".{path.name}.partial")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)
    tmp.replace(path)


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
    from sscr import tracking
    from sscr.losses import build_loss, variance_mode
    from sscr.models import BackboneConfig, build_model, select_device

    cfg = params.train
    rank, world = _distributed()
    seed_everything(cfg.rdm_seed)
    device = select_device(cfg.device)
    use_amp = cfg.amp and device.type == "cuda"
    out_dir = run_dir(params)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "checkpoint_last.pt", out_dir / "model_best.pt"
    config = params.model_dump(mode="json")

    state: dict[str, Any] | None = None
    if resume:
        if not last_path.exists():
            raise ResumeError(f"nothing to resume: {last_path} does not exist; start without --resume")
        state = load_checkpoint(last_path)
        if _config_key(state["config"]) != _config_key(config):
            changed = sorted(k for k, v in _config_key(config).items() if _config_key(state["config"]).get(k) != v)
            raise ResumeError(f"{last_path} was trained with other params ({', '.join(changed)}); "
                              "resume with the same params.yaml or start a new run without --resume")

    model = build_model(params.model.name, BackboneConfig.from_model_config(params.model, variance_mode(params.loss)))
    model = model.to(device)
    loss_fn = build_loss(params.loss, model.scale_by).to(device)
    loss_fn.check_outputs(model.output_keys, params.model.name)  # a loss the model cannot feed fails here, not mid-run
    if cfg.pretrained and state is None:
        pretrained = load_checkpoint(cfg.pretrained)
        load_weights(model, pretrained["model"], cfg.pretrained)
    _freeze(model, cfg.freeze)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    history: list[dict[str, float]] = []
    start_epoch, best = 0, {"psnr": -math.inf, "epoch": 0}
    if state is not None:
        load_weights(model, state["model"], last_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best, history = state["epoch"], dict(state["best"]), list(state["history"])
    net: nn.Module = model
    if world > 1:
        # Unused outputs (e.g. the structure head under an l1 loss) leave parameters without gradients.
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                                  find_unused_parameters=True)

    train_set = TrainingView(build_dataset(params, "train"), cfg.crop_size, cfg.rdm_seed)
    val_set = build_dataset(params, "val")
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(f"empty split under {params.data.root}: {len(train_set)} train and {len(val_set)} "
                         "val samples; check data.root, data.seasons and train.min_cov/max_cov")
    # The same sampler in one process and under DDP: each rank takes every world-th index of one seeded
    # permutation, so a DDP step sees exactly the samples of the matching single-process batch.
    sampler = torch.utils.data.distributed.DistributedSampler(train_set, num_replicas=world, rank=rank,
                                                              shuffle=True, seed=cfg.rdm_seed)
    per_rank_batch = max(1, cfg.batch_size // world)
    val_loader = DataLoader(val_set, batch_size=per_rank_batch, num_workers=cfg.num_workers)

    run_context = tracking.training_run(
        cfg.experiment_name, run_id=state["run_id"] if state else None, run_name=run_name, nested=nested,
        tags=tags,
    ) if rank == 0 else _no_run()
    with run_context as run:
        run_id = run.info.run_id if run else ""
        logger = tracking.MetricLogger(run_id, out_dir / "metrics_fallback.jsonl") if rank == 0 else None
        if rank == 0 and state is None:
            _log_run_inputs(params, train_set.dataset, val_set, out_dir, model)
        if rank == 0 and state is not None:
            _relog_missing(run_id, history)
        stopped = False
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            train_set.epoch = epoch
            sampler.set_epoch(epoch)
            loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler, num_workers=cfg.num_workers)
            torch.manual_seed(cfg.rdm_seed * 1000 + epoch)
            net.train()
            total, parts_sum, count = 0.0, {}, 0
            bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", disable=not progress or rank != 0)
            for step, batch in enumerate(bar):
                faults.checkpoint(f"train.batch:{epoch}:{step}")
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    output = net(**model_inputs(batch, device))
                    loss, parts = loss_fn(output, batch["target"].to(device))
                if not torch.isfinite(loss):
                    raise TrainingDiverged(
                        f"loss became {loss.item()} at epoch {epoch}, batch {step} "
                        f"(samples {', '.join(batch['meta']['sample_id'])}); the last good checkpoint "
                        f"{last_path} is kept. Try a lower train.lr or another loss."
                    )
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.item()
                count += 1
                for key, value in parts.items():
                    parts_sum[key] = parts_sum.get(key, 0.0) + float(value)
                bar.set_postfix(loss=f"{total / count:.4f}")
            scheduler.step()
            if world > 1:  # the epoch's loss over all ranks, not rank 0's share
                total, count, parts_sum = _sum_over_ranks(total, count, parts_sum)
            row: dict[str, float] = {"epoch": epoch, "train_loss": total / max(count, 1),
                                     "lr": optimizer.param_groups[0]["lr"]}
            row.update({f"train_{k}": v / max(count, 1) for k, v in parts_sum.items()})
            validate_now = epoch % cfg.val_every == 0 or epoch == cfg.epochs
            if rank == 0 and validate_now:
                faults.checkpoint(f"train.validate:{epoch}")
                val = validate(model, val_loader, device, desc=f"validate {epoch}")
                row.update({f"val_{key}": value for key, value in val.items()})
                if val["PSNR"] > best["psnr"]:
                    best = {"psnr": float(val["PSNR"]), "epoch": epoch}
                    save_atomic(_checkpoint(model, params, epoch, run_id, extra={"val": val}), best_path)
            if rank == 0:
                history.append(row)
                save_atomic(_checkpoint(model, params, epoch, run_id, extra={
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(), "best": best, "history": history,
                }), last_path, fault_point=f"checkpoint.write:{epoch}")
                _write_history(out_dir / "metrics.csv", history)
                logger.log({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                if on_epoch_end is not None and validate_now:
                    stopped = bool(on_epoch_end(epoch, {k[4:]: v for k, v in row.items() if k.startswith("val_")}))
            if world > 1:
                stopped = _broadcast_flag(stopped)
            if stopped:
                break
        result = TrainResult(run_id, out_dir, best_path, int(best["epoch"]), float(best["psnr"]),
                             int(history[-1]["epoch"]) if history else start_epoch, stopped, history=history)
        if rank == 0:
            result.model_uri = _finish_run(params, model, best_path, val_set, out_dir, result, log_model)
            logger.close()
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return result


class _no_run:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


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


def _log_run_inputs(params: Params, train_set: SEN12MSCR, val_set: SEN12MSCR, out_dir: Path, model: nn.Module) -> None:
    import mlflow

    from sscr import tracking
    from sscr.models import model_cost

    tracking.log_params_flat(flatten(params))
    config_text = json.dumps(params.model_dump(mode="json"), indent=2)
    (out_dir / "conf.json").write_text(config_text)
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

    from sscr import tracking

    logged = {m.step for m in MlflowClient().get_metric_history(run_id, "train_loss")}
    logger = tracking.MetricLogger(run_id, Path(os.devnull))
    for row in history:
        if int(row["epoch"]) not in logged:
            logger.log({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def _finish_run(params: Params, model: nn.Module, best_path: Path, val_set: SEN12MSCR, out_dir: Path,
                result: TrainResult, log_model: bool) -> str:
    """Log the best checkpoint, figures and the MLflow model; write ``run.json``. Returns the model URI.

    If the tracking server is unreachable by now, the run's results stay on disk
    (checkpoint, metrics.csv, metrics fallback) and this says so instead of failing.
    """
    from sscr import tracking

    model_uri = ""
    try:
        model_uri = _log_results(params, best_path, val_set, out_dir, result, log_model)
    except Exception as err:  # noqa: BLE001 - any transport error: training itself has succeeded
        print(f"sscr: could not log the model and artifacts to MLflow at {tracking.redact(tracking.tracking_uri())} "
              f"({type(err).__name__}: {tracking.redact(str(err))[:200]}); the best checkpoint is {best_path}")
    info = {"run_id": result.run_id, "model_uri": model_uri, "experiment": params.train.experiment_name,
            "best_epoch": result.best_epoch, "best_val_psnr": result.best_val_psnr,
            "epochs_done": result.epochs_done, "stopped_early": result.stopped_early}
    tmp = out_dir / ".run.json.partial"
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(out_dir / "run.json")
    return model_uri


def _log_results(params: Params, best_path: Path, val_set: SEN12MSCR, out_dir: Path, result: TrainResult,
                 log_model: bool) -> str:
    import matplotlib.pyplot as plt
    import mlflow

    from sscr import tracking
    from sscr.checkpoint import build_from_checkpoint
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
    return tracking.log_model(best_path, params.model.use_sar) if log_model else ""


def result_dict(result: TrainResult) -> dict[str, Any]:
    """JSON-friendly form of a :class:`TrainResult`."""
    data = asdict(result)
    data["run_dir"], data["best_checkpoint"] = str(result.run_dir), str(result.best_checkpoint)
    return data
