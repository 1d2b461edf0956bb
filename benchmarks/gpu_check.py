"""The GPU check: training and inference on CUDA proven and timed by one command, one table naming the device.

    python -m benchmarks.gpu_check --published .published/sscr   # a CUDA machine: benchmarks/results/gpu_check.md
    python -m benchmarks.gpu_check --dry-run                     # CPU, tiny sizes, seconds (CI; a cache path)

Sized to finish in under 8 minutes on one H100 (``--budget-minutes``, default 7.5, skips the
second whole tile when it would not fit). ``--dry-run`` runs every section on the CPU at tiny
sizes (64 px patches, tiny widths, a 512 px scene, gloo for DDP) and writes
``<cache>/gpu_check_dry_run.md`` (``$SSCR_BENCHMARK_CACHE`` or ``benchmarks/.cache``), never the
committed results. Sections, each independent (one that fails is a FAIL row, the others still run;
one whose packages are missing is a skipped row naming them):

1. **CUDA paths of training** (checks): our training loop (:func:`sscr.train._train_epoch`) on
   ``sscr_lite`` with mixed precision (``train.amp``, float16 autocast + GradScaler); channels-last
   weights give the contiguous layout's outputs and a finite training step; a one-process DDP
   step (NCCL; gloo on CPU) updates the weights exactly as the plain step does.
2. **End to end** on a few synthetic patches: ``sscr.train.train`` with ``train.device`` cuda and
   an MLflow store (the run's ``sscr.device`` tag, GPU system metrics through NVML), then
   ``sscr.evaluate.evaluate``, then :func:`sscr.infer.infer_scene` on the GPU over a small scene.
   Needs MLflow (not in the GPU image: skipped there unless its wheels are carried).
3. **Published loop against ours**: one epoch of ``multisarv2`` at the seed's settings (widths
   [128] / [128] x 5, batch 8, 256 px, single date, ``ml`` loss, Adam) in the published script's
   ``iterate`` (imported from ``--published``, a checkout of github.com/RSIR25/sscr that is never
   committed: ``.published/`` is git-ignored) against our ``_train_epoch``: float32 as published,
   mixed precision, mixed precision + channels-last; both on the same batches already in memory
   (the loop, not the disk). Round-robin rounds (``benchmarks._common.interleaved``), samples/s
   and GPU utilisation. Goal: ours >= 3x the published loop.
4. **Cost of sscr_lite against the published networks**: training samples/s of ``sscr_lite``
   ([32, 64, 128], ``structure`` loss) against ``multisarv2`` (seed widths, ``ml``) at equal batch
   in our loop with mixed precision; forward and forward + backward samples/s of
   ``uncrtaints``, ``multisarv2`` and ``sscr_lite`` (:mod:`benchmarks.model_cost`'s configurations).
5. **A whole tile**: a 10980 px scene (written by :func:`benchmarks.scene_inference.scene_paths`
   in a background process while sections 1-4 run) through :func:`sscr.infer.infer_scene` on the
   GPU with ``sscr_lite`` and with ``multisarv2``, reading and writing GeoTIFF/COG as
   ``sscr infer`` does. Goal: under 60 s.

GPU utilisation: NVML (``nvidia-ml-py``) sampled every 50 ms in a thread, attributed to the
candidate running; "n/a" on CPU or without NVML.

On the lent GPU machine (PyTorch + CUDA, numpy, scipy, psutil, pyyaml, tqdm, nvidia-ml-py; no
rasterio, pydantic, MLflow, DVC, s2cloudless) the project's code runs from the repository root
without installing it; what the check imports needs only rasterio and pydantic beyond that image
(``tests/test_device.py`` imports it with MLflow, DVC, s2cloudless, Optuna and Prefect absent).
Once, here, at the repository root (``.whl/`` and ``.published/`` are git-ignored)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \\
      rasterio==1.4.4 affine cligj click-plugins pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \\
      typing-inspection typing-extensions==4.16.0          # ~39 MB of the 64 MiB a call carries
    mkdir -p .published/sscr && cp -r /path/to/RSIR25-sscr/{model,data,util} .published/sscr/

and on the device (``carry``: ``.whl``, ``.published``; timeout 540 s)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. \\
      && PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_check --published .published/sscr --out $OUT/gpu_check.md

then commit ``benchmarks/results/gpu_check.md`` from ``$OUT`` (``gpu_check_so_far.md`` holds the sections
done, should the run be cut short). The exit status is 1 when a check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import functools
import importlib.util
import math
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import psutil
import torch

from benchmarks._common import (
    CACHE_ENV,
    PROJECT,
    cache_dir,
    command_line,
    deep_update,
    interleaved,
    median,
    results_path,
    sample_on_disk,
    spread,
    write_report,
)

NAME = "gpu_check"
PUBLISHED_DEFAULT = PROJECT / ".published" / "sscr"
SCENE_TILE = 10980
GOAL_LOOP_RATIO = 3.0
GOAL_TILE_SECONDS = 60.0


@dataclass(frozen=True)
class Sizes:
    """How big each section runs: the real check on a GPU, or the dry run on a CPU."""

    patch: int
    batch: int
    published_widths: tuple[list[int], list[int]]
    lite_widths: list[int]
    samples: int
    """Samples per timed epoch (the split's items repeated)."""
    rounds: int
    scene: int
    small_scene: int
    cost_size: int
    cost_configs: dict[str, tuple[str, dict[str, Any]]]


def _real_sizes() -> Sizes:
    from benchmarks.model_cost import CONFIGS
    from benchmarks.published_parity import SEED_WIDTHS

    return Sizes(patch=256, batch=8, published_widths=SEED_WIDTHS, lite_widths=[32, 64, 128], samples=96, rounds=3,
                 scene=SCENE_TILE, small_scene=512,
                 cost_size=256, cost_configs={k: CONFIGS[k] for k in ("uncrtaints", "multisarv2", "sscr_lite")})


DRY_WIDTHS = {"encoder_widths": [8, 16], "decoder_widths": [8, 16]}
# (the published code's group norms need widths of 16 or more)
DRY = Sizes(patch=64, batch=2, published_widths=([16], [16, 16]), lite_widths=[8, 16], samples=4, rounds=1,
            scene=256, small_scene=256, cost_size=32,
            cost_configs={"uncrtaints": ("uncrtaints", {"encoder_widths": [8], "decoder_widths": [8, 8]}),
                          "multisarv2": ("multisarv2", {"encoder_widths": [8], "decoder_widths": [8, 8]}),
                          "sscr_lite": ("sscr_lite", DRY_WIDTHS)})


@dataclass
class Row:
    """One line of the results table."""

    section: str
    what: str
    result: str
    goal: str = "-"
    status: str = "measured"
    """``ok``, ``FAIL: ...``, ``skipped: ...``, ``measured`` (a number without a pass/fail), ``met``/``not met``."""


@dataclass
class Context:
    """What every section shares."""

    device: torch.device
    sizes: Sizes
    dry_run: bool
    work: Path
    sample: Any
    """Params of the small synthetic sample on disk (``sample_on_disk``)."""
    published: Path | None
    monitor: GpuMonitor
    started: float
    budget_s: float
    writer: subprocess.Popen | None = None
    """The background process writing the whole-tile scene (:func:`start_scene_writer`)."""
    notes: list[str] = field(default_factory=list)

    def left_s(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.perf_counter() - self.started)


# ---------------------------------------------------------------- GPU utilisation


class GpuMonitor:
    """Samples GPU utilisation and memory through NVML in a thread, attributed to the label running now."""

    def __init__(self, device: torch.device, period_s: float = 0.05) -> None:
        self.period_s, self.label = period_s, ""
        self.util: dict[str, list[float]] = {}
        self.handle: Any = None
        self.status = "n/a on CPU"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            self._nvml = pynvml
            self.status = "nvml"
        except ImportError:
            self.status = "n/a: nvidia-ml-py not installed"
        except Exception as err:  # noqa: BLE001 - pynvml.NVMLError and friends: report, do not fail
            self.status = f"n/a: NVML failed ({err})"

    def __enter__(self) -> GpuMonitor:
        if self.handle is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(self.period_s):
            if self.label:
                rates = self._nvml.nvmlDeviceGetUtilizationRates(self.handle)
                self.util.setdefault(self.label, []).append(float(rates.gpu))

    @contextlib.contextmanager
    def attributed(self, label: str) -> Iterator[None]:
        """Samples taken inside are ``label``'s."""
        self.label = label
        try:
            yield
        finally:
            self.label = ""

    def mean(self, label: str) -> str:
        """Mean utilisation of ``label``'s samples, e.g. ``94%``, or why there is none."""
        values = self.util.get(label)
        return f"{statistics.fmean(values):.0f}%" if values else self.status

    def driver(self) -> str:
        """The NVIDIA driver version, or ''."""
        if self.handle is None:
            return ""
        version = self._nvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else str(version)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_candidates(ctx: Context, runners: dict[str, Callable[[], Any]]) -> dict[str, Callable[[], None]]:
    """Each runner, synchronised with the device and its GPU utilisation attributed to its name."""

    def wrap(name: str, runner: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            with ctx.monitor.attributed(name):
                runner()
                _sync(ctx.device)
        return run

    return {name: wrap(name, runner) for name, runner in runners.items()}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported here (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a finder that refuses it
        return False


def _missing(*modules: str) -> str | None:
    """``skipped: needs X, Y (not installed here)`` for the modules that cannot be imported, else None."""
    absent = [name for name in modules if not installed(name)]
    return f"skipped: needs {', '.join(absent)} (not installed here)" if absent else None


def verdict(ctx: Context, met: bool) -> str:
    """``met`` / ``not met`` against a goal; a dry run's tiny sizes say nothing about the goal."""
    return "measured (dry run)" if ctx.dry_run else "met" if met else "not met"


# ---------------------------------------------------------------- set-up


def sample_overrides(sizes: Sizes) -> dict[str, Any]:
    """A few synthetic patches of one season; the rule-based cloud mask only (s2cloudless may be absent)."""
    return {
        "data": {"patch_size": sizes.patch, "seasons": ["spring"],
                 "synth": {"rois": {"train": 2, "val": 1, "test": 1}, "patches_per_roi": 2}},
        "masks": {"kinds": ["cloud_cloudshadow_mask"], "use": "cloud_cloudshadow_mask", "workers": 2},
    }


def params_for(ctx: Context, name: str, overrides: dict[str, Any]) -> Any:
    """The sample's params with our training set up in ``<work>/<name>`` on the check's device, plus ``overrides``."""
    from sscr.config import parse_params

    base = {"train": {"device": ctx.device.type, "batch_size": ctx.sizes.batch, "crop_size": None, "epochs": 1,
                      "num_workers": 0, "res_dir": str(ctx.work / name), "metrics_dir": str(ctx.work / name / "records"),
                      "experiment_name": name, "val_every": 1, "augment": False, "repeats": 1},
            "evaluate": {"out_dir": str(ctx.work / name / "eval"), "n_panels": 1, "batch_size": ctx.sizes.batch}}
    raw = deep_update(ctx.sample.model_dump(mode="json"), deep_update(base, overrides))
    return parse_params(raw, f"gpu_check {name}")


def lite_overrides(ctx: Context, amp: bool = True) -> dict[str, Any]:
    """``sscr_lite`` at the check's widths with its ``structure`` loss."""
    widths = ctx.sizes.lite_widths
    return {"model": {"name": "sscr_lite", "encoder_widths": widths, "decoder_widths": widths},
            "loss": {"name": "structure"}, "train": {"amp": amp}}


def repeated_items(dataset: Any, count: int) -> list[Any]:
    """``count`` items of ``dataset``, its items repeated in order (a longer epoch from a small sample)."""
    items = [dataset[i] for i in range(len(dataset))]
    return [items[i % len(items)] for i in range(count)]


def _max_abs_difference(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> float:
    return max(float((first[k].float() - second[k].float()).abs().max()) for k in first)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- 1. CUDA paths of training


def training_paths(ctx: Context) -> list[Row]:
    """Mixed precision, channels-last and a one-process DDP step, in our training loop."""
    from sscr import train as training
    from sscr.data.dataset import model_inputs

    section = "CUDA paths of training"
    rows: list[Row] = []
    session = training._start(params_for(ctx, "paths", lite_overrides(ctx)), resume=False)
    batch = torch.utils.data.default_collate(repeated_items(session.train_set.dataset, ctx.sizes.batch))
    before = [p.detach().clone() for p in session.model.parameters()]
    # GradScaler skips a step whose float16 gradients overflow (and halves its scale): the first steps may
    # all be skipped, so up to 3 epochs run until the weights move.
    for epoch in range(1, 4):
        row = training._train_epoch(session, epoch, progress=False)
        moved = sum(int(not torch.equal(a, b)) for a, b in zip(before, session.model.parameters(), strict=True))
        if moved:
            break
    finite = math.isfinite(row["train_loss"])
    outcome = "ok" if finite and moved else "FAIL: loss not finite or weights unchanged"
    if session.use_amp:
        rows.append(Row(section, "mixed precision (float16 autocast + GradScaler), sscr_lite in `_train_epoch`",
                        f"{epoch} epoch(s): loss {row['train_loss']:.4f}, loss scale {session.scaler.get_scale():g} "
                        f"(65536 halved once per skipped step), {moved}/{len(before)} tensors updated",
                        "finite loss, weights updated", outcome))
    else:
        rows.append(Row(section, "mixed precision, sscr_lite in `_train_epoch`",
                        f"off on {ctx.device.type} (train.amp applies on CUDA); float32 loss {row['train_loss']:.4f}, "
                        f"{moved}/{len(before)} tensors updated", "finite loss, weights updated", outcome))

    # channels-last: the same weights in NHWC give the same outputs, and a training step stays finite
    model = session.model.eval()
    inputs = model_inputs(batch, ctx.device)
    with torch.no_grad():
        contiguous = model(**inputs)
        last = copy.deepcopy(model).to(memory_format=torch.channels_last)
        nhwc = last(**inputs)
    difference = _max_abs_difference(contiguous, nhwc)
    scale = max(float(v.float().abs().max()) for v in contiguous.values())
    last.train()
    step = dataclasses.replace(session, model=last, net=last,
                               optimizer=torch.optim.Adam(last.parameters(), lr=session.params.train.lr),
                               scaler=torch.amp.GradScaler("cuda", enabled=session.use_amp))
    loss, _ = training._step(step, batch)
    step.scaler.scale(loss).backward()
    step.scaler.step(step.optimizer)
    step.scaler.update()
    # CPU: float rounding only; CUDA: TF32 convolutions (torch's default) pick other kernels per layout
    tolerance = (1e-2 if ctx.device.type == "cuda" else 1e-4) * max(scale, 1.0)
    ok = difference <= tolerance and torch.isfinite(loss).item()
    rows.append(Row(section, "channels-last weights: outputs against the contiguous layout, then one training step",
                    f"max abs difference {difference:.1e} (outputs up to {scale:.2f}); step loss {loss.item():.4f}",
                    f"<= {tolerance:.0e}, finite", "ok" if ok else "FAIL: outputs differ or the step is not finite"))
    rows.append(ddp_step(ctx, session, batch))
    return rows


def ddp_step(ctx: Context, session: Any, batch: dict[str, Any]) -> Row:
    """One optimiser step through DistributedDataParallel (world of one) against the same plain step."""
    import torch.distributed as dist

    from sscr import train as training

    backend = "nccl" if ctx.device.type == "cuda" else "gloo"
    what = f"one-process DDP step ({backend}) against the plain step, float32, SGD"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        plain, wrapped = copy.deepcopy(session.model).train(), copy.deepcopy(session.model).train()
        ddp = torch.nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[ctx.device.index or 0] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True)  # as sscr.train wraps it
        for model, net in ((plain, plain), (wrapped, ddp)):
            # SGD: the update is the gradient times lr (Adam would blow a rounding difference of a near-zero
            # gradient up to a full step)
            step = dataclasses.replace(session, model=model, net=net, use_amp=False,
                                       optimizer=torch.optim.SGD(model.parameters(), lr=1e-2))
            torch.manual_seed(0)
            loss, _ = training._step(step, batch)
            loss.backward()
            step.optimizer.step()
        _sync(ctx.device)
        difference = max(float((a - b).abs().max()) for a, b in zip(plain.parameters(), wrapped.parameters(),
                                                                     strict=True))
        changed = max(float((a - b).abs().max()) for a, b in zip(plain.parameters(), session.model.parameters(),
                                                                 strict=True))
    finally:
        dist.destroy_process_group()
    tolerance = 1e-3 * changed  # 0.1% of the step; on CPU (gloo) the two are equal bit for bit
    ok = difference <= tolerance and changed > 0
    return Row("CUDA paths of training", what,
               f"weights after the step differ by {difference:.1e} at most (the step moved them by up to {changed:.1e})",
               "<= 0.1% of the step", "ok" if ok else "FAIL: DDP's step differs from the plain one")


# ---------------------------------------------------------------- 2. end to end


def end_to_end(ctx: Context) -> list[Row]:
    """``train`` on the device with MLflow, ``evaluate``, ``infer_scene`` on the device, on a few synthetic patches."""
    section = f"--device {ctx.device.type} end to end"
    skip = _missing("mlflow")
    rows = ([Row(section, "sscr train + evaluate (MLflow store) on a few synthetic patches", "-", "-", skip)]
            if skip else train_and_evaluate(ctx, section))
    rows.append(scene_row(ctx, section, "sscr_lite", ctx.sizes.small_scene, functools.partial(_lite_model, ctx),
                          what=f"sscr infer (sscr_lite) on a {ctx.sizes.small_scene} px scene")[0])
    return rows


def train_and_evaluate(ctx: Context, section: str) -> list[Row]:
    """``sscr.train.train`` (1 epoch on the device) and ``sscr.evaluate.evaluate`` with an MLflow store; its tags."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from sscr import tracking
    from sscr.evaluate import evaluate
    from sscr.train import train

    environment = mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": f"sqlite:///{ctx.work / 'mlflow.db'}",
                                               "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
                                               "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING": "1"})
    environment.start()
    rows: list[Row] = []
    try:
        tracking.configure()
        params = params_for(ctx, "e2e", lite_overrides(ctx))
        started = time.perf_counter()
        result = train(params, progress=False, log_model=False)
        metrics = evaluate(params, progress=False)
        seconds = time.perf_counter() - started
        run = MlflowClient().get_run(result.run_id)
        tags = run.data.tags
        device_tag = tags.get(tracking.DEVICE_TAG, "")
        system = sorted(key for key in run.data.metrics if key.startswith("system/"))
        gpu = [key for key in system if "gpu" in key]
        ok = device_tag.startswith(ctx.device.type) and tags.get(tracking.EVALUATE_DEVICE_TAG) == "cpu"
        rows.append(Row(section, "sscr train (1 epoch, sscr_lite) + sscr evaluate, MLflow run tags",
                        f"{seconds:.0f} s; test PSNR {metrics['test']['PSNR']:.1f} dB; sscr.device = {device_tag}; "
                        f"sscr.evaluate.device = {tags.get(tracking.EVALUATE_DEVICE_TAG)}",
                        f"sscr.device {ctx.device.type}...", "ok" if ok else "FAIL: device tags"))
        if ctx.device.type == "cuda":
            gpu_ok = tags.get("sscr.gpu_metrics") == "nvml" and bool(gpu)
            rows.append(Row(section, "MLflow system metrics of that run (NVML)",
                            f"sscr.gpu_metrics = {tags.get('sscr.gpu_metrics')}; {len(gpu)} GPU metrics "
                            f"({', '.join(gpu[:3]) or 'none'})", "GPU utilisation and memory logged",
                            "ok" if gpu_ok else "FAIL: no GPU system metrics"))
        else:
            rows.append(Row(section, "MLflow system metrics of that run", f"{len(system)} system metrics "
                            f"({', '.join(system[:2]) or 'none yet: the run was shorter than a sample'}); GPU: none "
                            "on CPU", "-", "measured"))
    finally:
        environment.stop()
        with contextlib.suppress(Exception):
            mlflow.set_tracking_uri(tracking.tracking_uri())
    return rows


# ---------------------------------------------------------------- 3. published loop against ours


def published_batches(items: list[dict[str, Any]], batch: int) -> list[dict[str, Any]]:
    """Our items as the published loader's pretrain batches: input S1, S2, masks; target S2 (same values)."""
    def stack(chunk: list[dict[str, Any]], key: str) -> torch.Tensor:
        return torch.stack([item[key] for item in chunk])

    chunks = [items[start:start + batch] for start in range(0, len(items), batch)]
    return [{"input": {"S1": stack(chunk, "sar"), "S2": stack(chunk, "cloudy"), "masks": stack(chunk, "mask")},
             "target": {"S2": stack(chunk, "target")}} for chunk in chunks]


def published_against_ours(ctx: Context) -> list[Row]:
    """One epoch of the published script's loop against ours, same network, same batches in memory."""
    from benchmarks.published_parity import Ours, Published

    section = "published loop vs ours (multisarv2, seed settings)"
    if ctx.published is None:
        return [Row(section, "samples/s, one epoch in memory", "-", f">= {GOAL_LOOP_RATIO:g}x",
                    "skipped: no published checkout (--published, or .published/sscr)")]
    widths, device = ctx.sizes.published_widths, ctx.device.type
    batch = ctx.sizes.batch
    variants = {"ours, float32 (as published)": {}, "ours, mixed precision": {"train.amp": True},
                "ours, mixed precision + channels-last": {"train.amp": True}}
    ours = {name: Ours(ctx.sample, widths, ctx.work, precomputed_masks=True, device=device,
                       overrides={"train.batch_size": batch, **extra}, name=f"parity{index}")
            for index, (name, extra) in enumerate(variants.items())}
    items = repeated_items(next(iter(ours.values())).original_set.dataset, ctx.sizes.samples)
    for name, runner in ours.items():
        runner.preload(items)
        if "channels-last" in name:
            runner.session.model.to(memory_format=torch.channels_last)
    published = Published(ctx.published, Path(ctx.sample.data.root), widths, ctx.work, device=device,
                          batches=published_batches(items, batch), batch=batch)
    runners: dict[str, Callable[[], Any]] = {"published": functools.partial(published.run_epoch, True)}
    runners.update({name: functools.partial(runner.run_epoch, True) for name, runner in ours.items()})
    times = interleaved(timed_candidates(ctx, runners), repeats=ctx.sizes.rounds, warmup=1)
    rate = {name: len(items) / median(values) for name, values in times.items()}
    rows = [Row(section, f"published `iterate`, float32, batch {batch}, {len(items)} samples/epoch",
                f"{rate['published']:.1f} samples/s ({spread(times['published'])}); GPU busy "
                f"{ctx.monitor.mean('published')}", "-", "measured")]
    for name in ours:
        ratio = rate[name] / rate["published"]
        rows.append(Row(section, f"{name}, `_train_epoch`", f"{rate[name]:.1f} samples/s ({spread(times[name])}) = "
                        f"**{ratio:.2f}x** published; GPU busy {ctx.monitor.mean(name)}", f">= {GOAL_LOOP_RATIO:g}x",
                        verdict(ctx, ratio >= GOAL_LOOP_RATIO)))
    return rows


# ---------------------------------------------------------------- 4. sscr_lite against the published networks


def lite_against_published(ctx: Context) -> list[Row]:
    """Training samples/s in our loop at equal batch; forward and forward + backward samples/s per network."""
    from benchmarks import model_cost
    from benchmarks.published_parity import Ours
    from sscr.models import build_model

    section = "sscr_lite vs the published networks"
    batch, widths = ctx.sizes.batch, ctx.sizes.lite_widths
    runners = {
        "multisarv2": Ours(ctx.sample, ctx.sizes.published_widths, ctx.work, precomputed_masks=True,
                           device=ctx.device.type, overrides={"train.amp": True, "train.batch_size": batch},
                           name="cost_multisarv2"),
        "sscr_lite": Ours(ctx.sample, (widths, widths), ctx.work, precomputed_masks=True, device=ctx.device.type,
                          overrides={"model.name": "sscr_lite", "loss.name": "structure", "train.amp": True,
                                     "train.batch_size": batch}, name="cost_sscr_lite"),
    }
    items = repeated_items(runners["sscr_lite"].original_set.dataset, ctx.sizes.samples)
    for runner in runners.values():
        runner.preload(items)
    times = interleaved(timed_candidates(ctx, {f"train {name}": functools.partial(runner.run_epoch, True)
                                               for name, runner in runners.items()}),
                        repeats=ctx.sizes.rounds, warmup=1)
    rate = {name: len(items) / median(values) for name, values in times.items()}
    ratio = rate["train sscr_lite"] / rate["train multisarv2"]
    rows = [Row(section, f"training in our loop, mixed precision, batch {batch}: sscr_lite {widths} (structure) "
                "against multisarv2 at the seed's widths (ml)",
                f"sscr_lite {rate['train sscr_lite']:.1f}, multisarv2 {rate['train multisarv2']:.1f} samples/s: "
                f"sscr_lite **{ratio:.2f}x**; GPU busy {ctx.monitor.mean('train sscr_lite')} / "
                f"{ctx.monitor.mean('train multisarv2')}", "-", "measured")]

    size = ctx.sizes.cost_size
    passes: dict[str, Callable[[], Any]] = {}
    for label, (name, params) in ctx.sizes.cost_configs.items():
        torch.manual_seed(0)
        model = build_model(name, **params).to(ctx.device)
        inputs = model_cost.random_inputs(model, batch, ctx.device, size)
        for mode in model_cost.MODES:
            passes[f"{label} {mode}"] = functools.partial(model_cost.run_once, model, inputs, mode)
    times = interleaved(timed_candidates(ctx, passes), repeats=ctx.sizes.rounds, warmup=1)
    for mode, what in (("forward", "inference (forward, eval mode)"), ("train", "forward + backward")):
        rate = {label: batch / median(times[f"{label} {mode}"]) for label in ctx.sizes.cost_configs}
        reference = rate["uncrtaints"]
        cells = ", ".join(f"{label} {value:.1f} ({value / reference:.2f}x)" for label, value in rate.items())
        rows.append(Row(section, f"{what}, float32, batch {batch}, {size} px, samples/s (x uncrtaints)", cells,
                        "-", "measured"))
    return rows


# ---------------------------------------------------------------- 5. whole tile


def _lite_model(ctx: Context) -> torch.nn.Module:
    from sscr.models import build_model

    widths = ctx.sizes.lite_widths
    return build_model("sscr_lite", encoder_widths=widths, decoder_widths=widths)


def _published_model(ctx: Context) -> torch.nn.Module:
    from sscr.models import build_model

    encoder, decoder = ctx.sizes.published_widths
    return build_model("multisarv2", encoder_widths=encoder, decoder_widths=decoder)


def scene_row(ctx: Context, section: str, label: str, size: int, build: Callable[[], torch.nn.Module],
              what: str = "", smoke: bool = True) -> tuple[Row, float]:
    """``infer_scene`` on the device over a ``size`` px synthetic scene: its row (time, tiles, GPU use), seconds."""
    from benchmarks.scene_inference import OVERLAP, TILE, scene_paths
    from sscr.config import DEFAULT_MASK_KIND
    from sscr.infer import infer_scene
    from sscr.models import for_inference

    # s2cloudless at 60 m, sscr infer's fast option (its 10 m default costs ~1 CPU-s per tile); where
    # s2cloudless is absent (the GPU image), and in the dry run, the rule-based mask of the same module.
    fast = ctx.dry_run or not installed("s2cloudless")
    kind = "cloud_cloudshadow_mask" if fast else DEFAULT_MASK_KIND
    if size == ctx.sizes.scene and ctx.writer is not None and ctx.writer.wait() != 0:  # never two writers at once
        raise RuntimeError(f"writing the synthetic {size} px scene failed (exit {ctx.writer.returncode})")
    s2_path, s1_path = scene_paths(size, smoke)
    out = ctx.work / f"scene_{label}_{size}.tif"
    torch.manual_seed(0)
    model = for_inference(build(), ctx.device)
    if ctx.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(ctx.device)
    with ctx.monitor.attributed(f"scene {label} {size}"):
        report = infer_scene(model, s2_path, s1_path, out, tile=TILE, overlap=OVERLAP, mask_kind=kind,
                             mask="s2cloudless-60m", progress=False)
    out.unlink(missing_ok=True)
    memory = (f"; GPU memory peak {torch.cuda.max_memory_allocated(ctx.device) / 2**30:.1f} GiB"
              if ctx.device.type == "cuda" else "")
    mask = (f"mask {report.mask_kind} from {report.mask_source}" if report.mask_source
            else "no mask (the network takes none)")
    ok = report.tiles > 0 and report.size == (size, size)
    goal = f"< {GOAL_TILE_SECONDS:g} s" if size == SCENE_TILE else "-"
    status = ("met" if report.seconds < GOAL_TILE_SECONDS else "not met") if size == SCENE_TILE else "ok"
    return Row(section, what or f"{label}, {size} x {size} px, {TILE} px tiles overlapping {OVERLAP}, "
               f"batch {report.batch_size}, COG written",
               f"**{report.seconds:.1f} s** ({report.tiles} tile(s), {report.pixels_per_second / 1e6:.3g} Mpx/s, "
               f"{mask}; GPU busy {ctx.monitor.mean(f'scene {label} {size}')}{memory})", goal,
               status if ok else "FAIL: the scene came out incomplete"), report.seconds


def whole_tile(ctx: Context) -> list[Row]:
    """A whole tile (10980 px; the dry run: a small scene) with sscr_lite, then multisarv2 if it fits the budget."""
    section = "whole tile" if not ctx.dry_run else f"whole tile (dry run: {ctx.sizes.scene} px)"
    row, first = scene_row(ctx, section, "sscr_lite", ctx.sizes.scene, functools.partial(_lite_model, ctx),
                           smoke=ctx.dry_run)
    rows = [row]
    # multisarv2 costs ~4.6x sscr_lite's FLOPs; run it only when that estimate fits what is left
    if ctx.left_s() < 1.5 * first:
        rows.append(Row(section, "multisarv2", "-", f"< {GOAL_TILE_SECONDS:g} s",
                        f"skipped: {ctx.left_s():.0f} s left of the budget, sscr_lite took {first:.0f} s"))
    else:
        rows.append(scene_row(ctx, section, "multisarv2", ctx.sizes.scene, functools.partial(_published_model, ctx),
                              smoke=ctx.dry_run)[0])
    return rows


def start_scene_writer(size: int, smoke: bool) -> subprocess.Popen:
    """Write the synthetic scene in a background process (cached; the GPU sections run meanwhile)."""
    code = f"from benchmarks.scene_inference import scene_paths; scene_paths({size}, {smoke})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=PROJECT, env={**os.environ, CACHE_ENV: str(cache_dir())})


# ---------------------------------------------------------------- the report


def device_line(ctx: Context) -> str:
    """The device, in words: GPU name, memory, driver, CUDA; CPU count; torch."""
    if ctx.device.type == "cuda":
        props = torch.cuda.get_device_properties(ctx.device)
        gpu = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs, driver "
               f"{ctx.monitor.driver() or '?'}, CUDA {torch.version.cuda}")
    else:
        gpu = f"CPU only ({platform.processor() or platform.machine()}): a dry run, no GPU numbers"
    load = ", ".join(f"{value:.1f}" for value in psutil.getloadavg())
    return (f"{gpu}; {psutil.cpu_count()} logical CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM; "
            f"torch {torch.__version__}, Python {platform.python_version()}; load average {load}")


def report(ctx: Context, rows: list[Row], command: str, seconds: float) -> str:
    """The results file: device, one table, notes."""
    kind = "dry run on CPU (tiny sizes: checks the code paths, its numbers mean nothing)" if ctx.dry_run else "GPU run"
    lines = [
        f"# GPU check: {kind}",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds / 60:.1f} min).",
        f"Device: {device_line(ctx)}.",
        f"Published code: `{ctx.published}`." if ctx.published else "Published code: none.",
        "",
        "| section | what | result | goal | status |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {r.section} | {r.what} | {r.result} | {r.goal} | {r.status} |" for r in rows]
    lines += ["", "Timings: medians of round-robin rounds in one process (`benchmarks._common.interleaved`), after "
              "one warm-up round; samples/s = samples per epoch / median epoch time. GPU busy: NVML utilisation "
              "(share of time a kernel ran) sampled every 50 ms during that candidate. The whole-tile scene is "
              "written by a background process while the first sections run.", *ctx.notes]
    return "\n".join(lines) + "\n"


SECTIONS: list[tuple[str, Callable[..., list[Row]]]] = [
    ("CUDA paths of training", training_paths),
    ("end to end", end_to_end),
    ("published loop vs ours", published_against_ours),
    ("sscr_lite vs the published networks", lite_against_published),
]


def run_section(name: str, function: Callable[..., list[Row]], *args: Any) -> list[Row]:
    """A section's rows; a section that raises becomes one FAIL row (the others still run)."""
    print(f"gpu_check: {name} ...", flush=True)
    started = time.perf_counter()
    try:
        rows = function(*args)
    except Exception as err:  # noqa: BLE001 - one broken section must not hide the others' results
        import traceback

        traceback.print_exc()
        rows = [Row(name, "-", "-", "-", f"FAIL: {type(err).__name__}: {str(err)[:300]}")]
    print(f"gpu_check: {name} done in {time.perf_counter() - started:.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run every section, print the table, write the results file; 1 when a check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, seconds (what CI runs)")
    parser.add_argument("--published", type=Path, default=None,
                        help="checkout of github.com/RSIR25/sscr (default: .published/sscr when present)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="skip the second whole tile when it would end past this (default 7.5; dry run: none)")
    parser.add_argument("--out", type=Path, default=None,
                        help="results file (default: benchmarks/results/gpu_check.md; dry run: the cache)")
    args = parser.parse_args(argv)
    published = args.published or (PUBLISHED_DEFAULT if PUBLISHED_DEFAULT.is_dir() else None)
    if published is not None and not (published / "model" / "train_reconstruct.py").is_file():
        print(f"sscr: --published {published} is no checkout of RSIR25/sscr (no model/train_reconstruct.py)",
              file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("sscr: the GPU check needs CUDA, which this machine does not have; run it with --dry-run here",
              file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    if args.dry_run:
        torch.set_num_threads(1)  # tiny sizes gain nothing from threads, and on a loaded machine they thrash
    budget = args.budget_minutes or (float("inf") if args.dry_run else 7.5)
    sizes = DRY if args.dry_run else _real_sizes()
    out = args.out or (cache_dir() / f"{NAME}_dry_run.md" if args.dry_run else results_path(NAME, "full"))
    started = time.perf_counter()
    writer = start_scene_writer(sizes.scene, smoke=args.dry_run)
    sample = sample_on_disk(f"{NAME}_{sizes.patch}px", sample_overrides(sizes))
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as work, GpuMonitor(device) as monitor:
        ctx = Context(device=device, sizes=sizes, dry_run=args.dry_run, work=Path(work), sample=sample,
                      published=published.resolve() if published else None, monitor=monitor, started=started,
                      budget_s=60 * budget, writer=writer)
        rows: list[Row] = []
        so_far = out.with_name(f"{out.stem}_so_far.md")  # the sections done, should the run be cut short
        for name, function in [*SECTIONS, ("whole tile", whole_tile)]:
            rows += run_section(name, function, ctx)
            so_far.parent.mkdir(parents=True, exist_ok=True)
            so_far.write_text(report(ctx, rows, command_line(NAME, argv), time.perf_counter() - started))
        text = report(ctx, rows, command_line(NAME, argv), time.perf_counter() - started)
    write_report(text, out)
    so_far.unlink(missing_ok=True)
    return 1 if any(row.status.startswith("FAIL") for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
