"""Quality per compute: every backbone trained for the same CPU-time budget, scored inside clouds.

    python -m benchmarks.quality_per_compute            # embedded default sample, 256 px, 5 CPU-min per run
    python -m benchmarks.quality_per_compute --quick    # 64 px tiny sample, 20 CPU-s per run
    python -m benchmarks.quality_per_compute --smoke    # CI: 64 px tiny sample, 1 CPU-s per run, sscr_lite only
    python -m benchmarks.quality_per_compute --sar-only # only the runs with SAR (half the time)

The data are the embedded default: the synthetic sample exactly as ``params.yaml`` defines it
(written once with ``write_synthetic_sample`` and ``precompute_masks`` under
``benchmarks/.cache/default/``), and every setting is that of ``params.yaml`` (lr, batch, random
crops and their repeats, flips, the learning-rate schedule, best checkpoint by ``select_best``) except:

- A **CPU-time budget** stops the run. ``train(params, on_epoch_end=budget)`` calls the budget at
  every validation, so validation runs every epoch (``train.val_every: 1``, ``val_after: 0``); it
  returns True, and training ends normally, once the process CPU time (user + system, all threads)
  spent since the call began, plus the cost of the epoch just run, would exceed the budget, so no
  run overshoots it. The budget covers everything the run does: data loading, steps, validation,
  checkpoints, MLflow logging.
- ``train.epochs`` is the number of epochs estimated to fit in the budget (:func:`epoch_seconds`:
  timed training steps on crops plus validation forwards on whole patches), so that a per-step
  ``cosine`` schedule warms up and decays over the budget, not over an unbounded run. The estimate
  leaves data loading and logging out, so the budget usually stops a run an epoch or so early.
- ``model.name``, ``model.use_sar`` and the widths vary: each backbone at its default widths when at
  least ``MIN_EPOCHS`` epochs fit in the budget, else at the CPU-sized widths of ``CPU_WIDTHS``; the
  table states the widths used. ``multisarv2`` (alias ``sscr``) needs SAR: no row without it.
- The loss: ``params.yaml``'s (``structure``, this project's, made for ``sscr_lite``) except the
  published networks, which train with their published loss (``PUBLISHED_LOSSES``: ``multisarv2``
  ``ml``, ``uncrtaints`` ``l1``, the only pairings the published code runs); the table says which.
- ``evaluate.n_panels: 0`` (no figures).

Each model is then evaluated on the official test split with ``sscr.evaluate.evaluate`` (its
best-validation checkpoint); the table shows PSNR, SSIM and SAM inside clouds
(``metrics["test_cloudy"]``, the ``s2cloudless_map`` mask), PSNR over all pixels, and the
cloudy input as prediction (baseline). One process, runs one after the other; MLflow logs to
a throw-away store under the cache directory.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import (
    cache_dir,
    command_line,
    machine_line,
    median,
    mode_of,
    results_path,
    sample_on_disk,
    tiny_overrides,
    write_report,
)

NAME = "quality_per_compute"
MODELS = ["sscr_lite", "multisarv2", "uncrtaints", "unet", "mask_unet"]
SMOKE_MODELS = ["sscr_lite"]
MIN_EPOCHS = 5
"""A backbone trains at its default widths only if at least this many epochs fit in the budget."""
CPU_WIDTHS: dict[str, dict[str, Any]] = {
    # UnCRtainTS keeps full resolution in every block: its paper widths (128) cost 53.8 GFLOP per 256 px
    # patch. A quarter of the width keeps its shape (1 encoder block, 5 decoder blocks).
    "uncrtaints": {"encoder_widths": [32], "decoder_widths": [32] * 5, "n_head": None, "d_model": None},
    # MultiSARv2 (alias sscr) is UnCRtainTS plus a SAR branch of a quarter of the width: the same cut
    "multisarv2": {"encoder_widths": [32], "decoder_widths": [32] * 5, "n_head": None, "d_model": None},
    # the others at half their default widths (sscr_lite: the widths params.yaml trains it with)
    "sscr_lite": {"encoder_widths": [16, 32, 64], "decoder_widths": [16, 32, 64], "n_head": None, "d_model": None},
    # the published U-Net (--model unet, and utae under --pretrain)
    "unet": {
        "encoder_widths": [32, 32, 32, 64],
        "decoder_widths": [16, 16, 32, 64],
        "n_head": None,
        "d_model": None,
    },
    "mask_unet": {"encoder_widths": [16, 32, 64, 128], "decoder_widths": None, "n_head": None, "d_model": None},
}

PUBLISHED_LOSSES = {"multisarv2": "ml", "uncrtaints": "l1", "unet": "l2", "utae": "l2"}
"""The published networks train with their published loss (the only ones the published code runs with them;
the published script trains ``unet`` and ``utae`` with ``l2`` whatever ``--loss`` says);
the others with ``params.yaml``'s (``structure``, which is this project's own and reads ``sscr_lite``'s head)."""
SINGLE_WIDTH = {"multisarv2", "uncrtaints"}
"""Networks whose blocks all keep one width (at full resolution)."""
SAR_ONLY = {"multisarv2"}
"""Networks that cannot run without SAR (MultiSARv2's structure mask is computed from it): no optical-only row."""


def canonical(name: str) -> str:
    """The model's canonical name (``sscr`` is an alias of ``multisarv2``)."""
    from sscr.models import resolve_name

    return resolve_name(name)


class CpuBudget:
    """``on_epoch_end`` callback: True once the next epoch would take the run past ``seconds`` of CPU time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.start = self.last = time.process_time()
        self.spent = 0.0
        self.epochs = 0

    def __call__(self, epoch: int, metrics: dict[str, float]) -> bool:
        now = time.process_time()
        epoch_cost, self.last = now - self.last, now
        self.spent, self.epochs = now - self.start, epoch
        return self.spent + epoch_cost > self.seconds


@dataclass
class Result:
    """One trained and evaluated configuration."""

    model: str
    use_sar: bool
    loss: str
    widths: str
    gflops: float
    epochs: int
    planned_epochs: int
    cpu_seconds: float
    wall_seconds: float
    metrics: dict[str, Any]


def _model_params(params: Any, name: str, use_sar: bool, widths: dict[str, Any] | None) -> Any:
    """``params`` with model ``name``, ``use_sar``, ``widths`` (None: the backbone's defaults) and its loss."""
    model = params.model.model_copy(
        update={
            "name": name,
            "use_sar": use_sar,
            # defaults: every width-like key back to None, so the backbone applies its own
            **(
                {"encoder_widths": None, "decoder_widths": None, "n_head": None, "d_model": None}
                if widths is None
                else widths
            ),
        }
    )
    loss = params.loss.model_copy(update={"name": PUBLISHED_LOSSES.get(canonical(name), params.loss.name)})
    return params.model_copy(update={"model": model, "loss": loss})


def step_seconds(params: Any, name: str, widths: dict[str, Any] | None, use_sar: bool = True) -> tuple[float, float]:
    """Median CPU seconds of a training step (forward, loss, backward) per crop, and of a validation forward
    per whole patch, each after a warm-up (data loading, optimiser and logging left out: lower bounds)."""
    import torch

    from sscr.losses import build_loss, variance_mode
    from sscr.models import build_model, example_inputs

    configured = _model_params(params, name, use_sar, widths)
    kwargs = configured.model.model_dump(exclude={"name"})
    kwargs["variance"] = variance_mode(configured.loss)
    model = build_model(name, **kwargs).train()
    loss_fn = build_loss(configured.loss, configured.model.scale_by)
    crop, patch = params.train.crop_size or params.data.patch_size, params.data.patch_size
    batch = max(1, min(params.train.batch_size, 4))  # BatchNorm needs more than one value per channel in training
    gen = torch.Generator().manual_seed(0)

    def random_inputs(size: int, n: int) -> dict[str, Any]:
        return {k: torch.rand(v.shape, generator=gen) for k, v in example_inputs(model, size, size, n).items()}

    inputs, target = random_inputs(crop, batch), torch.rand(batch, 13, crop, crop, generator=gen)
    train_times = []
    for _ in range(3):
        start = time.process_time()
        loss, _ = loss_fn(model(**inputs), target)
        loss.backward()
        model.zero_grad(set_to_none=True)
        train_times.append((time.process_time() - start) / batch)
    model.eval()
    val_inputs, val_times = random_inputs(patch, 1), []
    with torch.no_grad():
        for _ in range(3):
            start = time.process_time()
            model(**val_inputs)
            val_times.append(time.process_time() - start)
    return median(train_times[1:]), median(val_times[1:])


def epoch_seconds(params: Any, name: str, widths: dict[str, Any] | None, n_train: int, n_val: int,
                  use_sar: bool = True) -> float:
    """Estimated CPU seconds of one epoch: ``n_train`` training crops and ``n_val`` validation patches."""
    per_crop, per_patch = step_seconds(params, name, widths, use_sar)
    return per_crop * n_train + per_patch * n_val


def choose_widths(params: Any, models: list[str], budget: float, n_train: int, n_val: int,
                  tiny: bool, force_cpu: bool = False) -> dict[str, Any]:
    """Per model: None (default widths) or the widths to use instead, and the estimates behind it."""
    if tiny:  # quick and smoke: the tiny sample's widths for every backbone
        tiny_model = params.model
        narrowest = tiny_model.encoder_widths[0]
        return {
            name: (
                {
                    # UnCRtainTS and MultiSARv2 keep one width in all their blocks: the tiny sample's first
                    **(
                        {"encoder_widths": [narrowest], "decoder_widths": [narrowest] * 5}
                        if canonical(name) in SINGLE_WIDTH
                        else {"encoder_widths": tiny_model.encoder_widths, "decoder_widths": tiny_model.decoder_widths}
                    ),
                    "n_head": tiny_model.n_head,
                    "d_model": tiny_model.d_model,
                },
                None,
            )
            for name in models
        }
    chosen: dict[str, Any] = {}
    for name in models:
        print(f"estimating an epoch of {name} at its default widths ...", flush=True)
        epoch = epoch_seconds(params, name, None, n_train, n_val)  # a lower bound (no data loading)
        fits = budget / epoch
        chosen[name] = (None if fits >= MIN_EPOCHS and not force_cpu else CPU_WIDTHS[canonical(name)], epoch)
        print(
            f"  ~{epoch:.0f} CPU-s per epoch: {fits:.1f} epochs in the budget -> "
            f"{'default widths' if chosen[name][0] is None else 'CPU-sized widths'}",
            flush=True,
        )
    return chosen


def warm_up() -> None:
    """Pay the one-off costs (imports, creating the MLflow store) before any budget starts counting."""
    import logging

    import matplotlib.pyplot  # noqa: F401 - imported by training's figures
    import mlflow

    from sscr import evaluate, losses, tracking, train  # noqa: F401

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    tracking.configure()
    mlflow.search_experiments()  # creates the SQLite store (schema migrations take seconds)


def run_one(
    params: Any, name: str, use_sar: bool, widths: dict[str, Any] | None, budget_seconds: float, work: Path,
    n_train: int, n_val: int,
) -> Result:
    """Train ``name`` for the budget, evaluate its best checkpoint on the test split.

    ``train.epochs`` is the number of epochs estimated to fit in the budget (:func:`epoch_seconds`, at
    least 1), so that a per-step cosine schedule warms up and decays over the budget rather than over an
    unbounded run; the budget still stops the run earlier if the estimate was low.
    """
    from sscr.evaluate import evaluate
    from sscr.models import build_model, model_cost
    from sscr.train import train

    label = f"{name}-{'sar' if use_sar else 'nosar'}"
    configured = _model_params(params, name, use_sar, widths)
    planned = max(1, int(budget_seconds / epoch_seconds(params, name, widths, n_train, n_val, use_sar)))
    configured = configured.model_copy(
        update={
            "train": configured.train.model_copy(
                # validation every epoch: the budget is checked at every validation
                # metrics_dir too: the run records stay in the throw-away cache, not in the project's metrics/
                update={"experiment_name": label, "res_dir": work / "runs", "metrics_dir": work / "metrics",
                        "epochs": planned, "val_every": 1, "val_after": 0}
            ),
            "evaluate": configured.evaluate.model_copy(
                update={"out_dir": work / "eval" / label, "n_panels": 0}
            ),
        }
    )
    model = build_model(name, **configured.model.model_dump(exclude={"name"}))
    cost = model_cost(model, params.data.patch_size, params.data.patch_size)
    resolved = model.config
    widths_text = f"{resolved['encoder_widths']} / {resolved['decoder_widths']}"
    print(f"training {label} ({widths_text}, loss {configured.loss.name}) for {budget_seconds:.0f} CPU-s, "
          f"at most {planned} epochs ...", flush=True)
    budget = CpuBudget(budget_seconds)
    wall = time.perf_counter()
    result = train(configured, on_epoch_end=budget, log_model=False, progress=False)
    wall = time.perf_counter() - wall
    metrics = evaluate(configured, checkpoint=result.best_checkpoint, log_to_mlflow=False, progress=False)
    print(
        f"  {budget.epochs} epochs, {budget.spent:.0f} CPU-s, PSNR inside clouds "
        f"{metrics['test_cloudy']['PSNR']:.2f} dB",
        flush=True,
    )
    return Result(name, use_sar, configured.loss.name, widths_text, cost["flops"] / 1e9, budget.epochs, planned,
                  budget.spent, wall, metrics)


def table(results: list[Result], size: int) -> list[str]:
    """Markdown rows: the cloudy-input baseline, then each run."""
    base = results[0].metrics
    lines = [
        f"| model | SAR | loss | widths (encoder / decoder) | GFLOP / {size} px | epochs (planned) | CPU min "
        "| wall min | PSNR in clouds | SSIM in clouds | SAM in clouds | PSNR all |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| cloudy input (baseline) | - | - | - | - | - | - | - | {base['baseline_cloudy']['PSNR']:.2f} | "
        f"{base['baseline_cloudy']['SSIM']:.3f} | {base['baseline_cloudy']['SAM']:.2f} | "
        f"{base['baseline']['PSNR']:.2f} |",
    ]
    best = max(r.metrics["test_cloudy"]["PSNR"] for r in results)
    for r in results:
        cloudy, overall = r.metrics["test_cloudy"], r.metrics["test"]
        psnr = f"{cloudy['PSNR']:.2f}"
        lines.append(
            f"| `{r.model}` | {'yes' if r.use_sar else 'no'} | `{r.loss}` | {r.widths} | {r.gflops:.3g} | "
            f"{r.epochs} ({r.planned_epochs}) | "
            f"{r.cpu_seconds / 60:.2f} | {r.wall_seconds / 60:.2f} | "
            f"{'**' + psnr + '**' if cloudy['PSNR'] == best else psnr} | {cloudy['SSIM']:.3f} | "
            f"{cloudy['SAM']:.2f} | {overall['PSNR']:.2f} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Train and evaluate every configuration, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px tiny sample, 20 CPU-s per run")
    parser.add_argument("--smoke", action="store_true", help="CI: tiny sample, 1 CPU-s per run, sscr_lite only")
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="CPU minutes per run (default 5; quick 1/3; smoke 1/60)",
    )
    parser.add_argument(
        "--sar-only", action="store_true", help="only the runs with SAR (no optical-only ablation rows)"
    )
    parser.add_argument(
        "--cpu-widths", action="store_true", help="every backbone at its CPU_WIDTHS, whatever fits in the budget"
    )
    parser.add_argument("--models", nargs="+", default=None, help=f"backbones (default: {' '.join(MODELS)})")
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default benchmarks/results/...)"
    )
    args = parser.parse_args(argv)
    mode = mode_of(args.quick, args.smoke)
    budget = 60 * (args.budget_minutes or {"full": 5.0, "quick": 1 / 3, "smoke": 1 / 60}[mode])
    models = args.models or (SMOKE_MODELS if mode == "smoke" else MODELS)
    started = time.perf_counter()

    tiny = mode != "full"
    params = sample_on_disk("smoke" if tiny else "default", tiny_overrides() if tiny else None)
    work = cache_dir() / f"{NAME}-{mode}{'-cpu-widths' if args.cpu_widths else ''}"
    shutil.rmtree(work, ignore_errors=True)  # every run starts from scratch
    work.mkdir(parents=True)
    previous_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    try:
        import torch

        from sscr.data.dataset import build_dataset

        warm_up()
        # training items per epoch: every patch, train.repeats random crops of it
        n_train = len(build_dataset(params, "train")) * params.train.repeats
        n_val = len(build_dataset(params, "val"))
        widths = choose_widths(params, models, budget, n_train, n_val, tiny, args.cpu_widths)
        results = [
            run_one(params, name, use_sar, widths[name][0], budget, work, n_train, n_val)
            for name in models
            for use_sar in (True, False)
            if use_sar or not (args.sar_only or canonical(name) in SAR_ONLY)
        ]
    finally:
        if previous_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_uri

    size = params.data.patch_size
    kind = "the tiny sample's widths" if tiny else "CPU-sized widths" + (" (--cpu-widths)" if args.cpu_widths else "")
    notes = [
        f"- `{name}`: {'default widths' if chosen is None else kind}"
        + (
            f" (one epoch at default widths ~{epoch:.0f} CPU-s: {budget / epoch:.1f} epochs in the budget)"
            if epoch
            else ""
        )
        for name, (chosen, epoch) in widths.items()
    ]
    lines = [
        "# Quality per compute: every backbone for the same CPU-time budget",
        "",
        f"Command: `{command_line(NAME, argv)}` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.perf_counter() - started) / 60:.0f} min). Machine: {machine_line(torch.get_num_threads())}.",
        f"Data: the embedded default{' (tiny: 64 px, tests/tiny.py)' if tiny else ''}, "
        f"{n_train // params.train.repeats} training patches of {size} px ({n_train} training items per epoch: "
        f"{params.train.repeats} random crops of {params.train.crop_size or size} px each), {n_val} validation, "
        f"test split {results[0].metrics['n_images']} patches. Budget: "
        f"**{budget / 60:.2g} CPU-min per run** (process CPU time, all threads, everything the run does); "
        f"every other setting from `params.yaml` (lr {params.train.lr}, batch {params.train.batch_size}, "
        f"schedule `{params.train.schedule}`, flips {params.train.augment}, best checkpoint by validation "
        f"{params.train.select_best}) except: validation every epoch (the budget is checked there); "
        "`train.epochs` = the epochs estimated to fit in the budget (planned, in brackets; the schedule spans "
        f"them); loss `{params.loss.name}` except the published networks, which train with their published "
        f"loss ({', '.join(f'`{m}` `{loss}`' for m, loss in PUBLISHED_LOSSES.items())}); `multisarv2` has no "
        "row without SAR (it needs SAR).",
        "",
        *table(results, size),
        "",
        "In clouds = the pixels of the `s2cloudless_map` mask; PSNR in dB, SAM in degrees. Widths chosen:",
        *notes,
        "",
    ]
    write_report("\n".join(lines), results_path(NAME, mode, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
