"""Evaluation (stage ``evaluate``): benchmark metrics on the test split, where the work is.

Reports, for the model and for the "cloudy input as prediction" baseline:
overall, inside clouds, on clear pixels, in cloud shadows and in the ring around
clouds; by cloud-coverage bin and by
season; UCE/AUCE for variance-predicting models. Writes ``metrics.json``
(DVC metrics, with the SHA-256 of the checkpoint it scored) and CSV tables
(DVC plots) into the run's record directory (:func:`sscr.config.record_dir`,
tracked by git), PNG panels, the PSNR-by-coverage figure and optional GeoTIFF
exports into ``evaluate.out_dir``, and logs all of it to the MLflow run that
trained the checkpoint (found by its SHA-256), leaving that run's status as it is.
It also scores every validation image (``val_images.json``, :mod:`sscr.validation`):
promotion decides on the validation split, the test split is for reporting.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from sscr import tracking
from sscr.bands import S2_BANDS
from sscr.checkpoint import build_from_checkpoint, load_checkpoint
from sscr.config import EvaluateConfig, Params, parse_params, read_json_config, record_dir, run_dir
from sscr.data.dataset import build_dataset, model_inputs
from sscr.data.io import denormalize_s2, write_raster
from sscr.evidence import SCORES_FILE
from sscr.fsutil import atomic_path, remove_stale_temporaries, sha256_file, write_text
from sscr.metrics import MetricAccumulator, cloud_metrics, flat_metrics
from sscr.models import for_inference
from sscr.quality import mlflow_tags, quality_check
from sscr.validation import SUMMARY_FILE, headline_metrics, score_split

REGIONS = ("all", "cloudy", "clear", "shadow", "ring")
"""Regions scored: all pixels, inside clouds, clear, cloud shadows and the ring around clouds
(:func:`sscr.metrics.shadow_region`, :func:`sscr.metrics.cloud_ring`)."""
#: The figure of PSNR inside clouds by coverage bin, in ``evaluate.out_dir`` (a DVC image plot).
COVERAGE_FIGURE = "psnr_by_coverage.png"


@dataclass
class EvalInputs:
    """A checkpoint and the params to evaluate it with."""

    checkpoint: Path
    params: Params


def resolve_inputs(params: Params, checkpoint: str | Path | None = None,
                   load_config: str | Path | None = None) -> EvalInputs:
    """Which checkpoint to evaluate, with which params.

    ``load_config`` (the seed's ``--load_config``: a run's ``conf.json``, or a
    checkpoint path) brings the model, loss and mask settings the run was
    trained with; data location and evaluation options stay those of ``params``.
    """
    source: Path | None = None
    if load_config is not None:
        load_config = Path(load_config)
        if load_config.suffix == ".json":
            trained = parse_params(read_json_config(load_config), str(load_config))
            checkpoint = checkpoint or load_config.parent / "model_best.pt"
        else:
            checkpoint = checkpoint or load_config
            trained = None
        source = Path(checkpoint)
    else:
        checkpoint = Path(checkpoint) if checkpoint else run_dir(params) / "model_best.pt"
        trained = None
    checkpoint = Path(checkpoint)
    if trained is None:
        trained = parse_params(load_checkpoint(checkpoint)["config"], str(source or checkpoint))
    merged = trained.model_copy(update={"data": params.data, "evaluate": params.evaluate,
                                        "registry": params.registry})
    return EvalInputs(checkpoint, merged)


def bin_centres(edges: list[float]) -> dict[str, float]:
    """Label -> centre of every coverage bin: the numeric x of the coverage plot."""
    return {coverage_bin((lo + hi) / 2, edges): (lo + hi) / 2 for lo, hi in zip(edges[:-1], edges[1:], strict=True)}


def coverage_bin(coverage: float, edges: list[float]) -> str:
    """Label ``"lo-hi"`` of the coverage bin holding ``coverage`` (bins [lo, hi), the last one closed)."""
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if lo <= coverage < hi or (hi == edges[-1] and coverage == hi):
            return f"{lo:.1f}-{hi:.1f}"
    return f">{edges[-1]:.1f}"


def _regions(summary_entry: dict[str, float], prefix: str) -> dict[str, dict[str, float]]:
    """Split a flat accumulator entry (``PSNR``, ``cloudy/PSNR``, ...) into named region dicts."""
    out: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        head = "" if region == "all" else f"{region}/"
        values = {key[len(head):]: value for key, value in summary_entry.items()
                  if key.startswith(head) and "/" not in key[len(head):]}
        out[prefix + ("" if region == "all" else f"_{region}")] = values
    return out


def evaluate(
    params: Params,
    checkpoint: str | Path | None = None,
    load_config: str | Path | None = None,
    run_id: str | None = None,
    log_to_mlflow: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on ``evaluate.split``; returns the metrics written to ``metrics.json``.

    ``metrics.json`` and the tables go to the record directory of the params the
    checkpoint was trained with; ``run_id`` names the MLflow run to log to (default:
    the run tagged with the checkpoint's SHA-256, if any).
    """
    inputs = resolve_inputs(params, checkpoint, load_config)
    params = inputs.params
    cfg = params.evaluate
    out_dir, records = Path(cfg.out_dir), record_dir(params)
    for folder in (out_dir, records):
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder, recursive=folder == out_dir)  # left by a killed evaluation
    checkpoint_sha256 = sha256_file(inputs.checkpoint)
    model, state = build_from_checkpoint(inputs.checkpoint)
    device = torch.device("cpu")
    model = for_inference(model, device)
    dataset = build_dataset(params, cfg.split)
    for line in dataset.dropped_lines():
        print(line, file=sys.stderr)
    if len(dataset) == 0:
        raise ValueError(f"no {cfg.split} samples under {params.data.root}")
    loader = DataLoader(dataset, batch_size=cfg.batch_size, num_workers=params.train.num_workers)
    run = _predict_split(model, loader, cfg, out_dir, device, progress)
    validation = score_split(model, params, checkpoint_sha256, device=device)  # what promotion decides on

    model_summary, baseline_summary = run.model.summary(), run.baseline.summary()
    metrics: dict[str, Any] = {}
    metrics.update(_regions(model_summary["all"], "test"))
    metrics.update(_regions(baseline_summary["all"], "baseline"))
    metrics["gain_cloudy_PSNR"] = metrics["test_cloudy"]["PSNR"] - metrics["baseline_cloudy"]["PSNR"]
    metrics["n_images"] = run.n_images
    metrics["n_dropped"] = sum(len(errors) for errors in dataset.dropped.values())  # listed on stderr and in MLflow
    metrics["model"] = state["model_name"]
    metrics["use_sar"] = bool(model.use_sar)
    metrics["checkpoint"] = str(inputs.checkpoint)
    metrics["checkpoint_sha256"] = checkpoint_sha256
    if run.has_variance:
        metrics["uncertainty"] = {k: v for k, v in model_summary["all"].items() if "UCE" in k}
    centres = bin_centres(cfg.coverage_bins)
    # The bin centre is the plot's x: a label like "0.0-0.1" is no number to a chart.
    bins = [{"bin": row["bin"], "coverage": centres[row["bin"]], **row}
            for row in _group_rows(model_summary, baseline_summary, "coverage", list(centres))]
    seasons = _group_rows(model_summary, baseline_summary, "season", ["spring", "summer", "fall", "winter"])
    metrics["by_coverage"] = {row["bin"]: {"n": row["n"], "PSNR": row["model_PSNR"],
                                           "baseline_PSNR": row["baseline_PSNR"]} for row in bins}
    metrics["by_season"] = {row["season"]: {"n": row["n"], "PSNR": row["model_PSNR"],
                                            "baseline_PSNR": row["baseline_PSNR"]} for row in seasons}
    # do no harm: the model against the cloudy input on every row; a failure marks the table, not the stage
    quality = quality_check(metrics, bins)
    metrics["quality"] = quality.summary()
    write_text(records / "quality.md", quality.markdown())
    _write_json(records / "quality.json", quality.as_dict())
    _write_json(records / "metrics.json", metrics)
    validation.write(records / SCORES_FILE)
    _write_json(records / SUMMARY_FILE, headline_metrics(metrics, validation))
    _write_csv(records / "coverage_bins.csv", bins)
    _write_csv(records / "seasons.csv", seasons)
    figure = _write_coverage_figure(bins, out_dir / COVERAGE_FIGURE)
    if log_to_mlflow:
        _log(checkpoint_sha256, run_id, metrics, records, figure, run.panel_files,
             params.evaluate.split, dataset.dropped, device)
    return metrics


@dataclass
class _SplitRun:
    """Metrics of the model and of the cloudy-input baseline over a split, and the panels written."""

    model: MetricAccumulator
    baseline: MetricAccumulator
    panel_files: list[Path]
    n_images: int
    has_variance: bool


def _predict_split(model: torch.nn.Module, loader: DataLoader, cfg: EvaluateConfig, out_dir: Path,
                   device: torch.device, progress: bool) -> _SplitRun:
    """Predict every batch; accumulate metrics per season and coverage bin; write panels and exports."""
    from sscr.plots import panel_indices

    run = _SplitRun(MetricAccumulator(), MetricAccumulator(), [], 0, False)
    panels_dir, export_dir = out_dir / "panels", out_dir / "export"
    dataset = loader.dataset
    # panels spread over cloud coverage (clear to overcast) when the coverage table gives it for free
    shown = panel_indices([dataset.sample_coverage(t) for t in dataset.triplets], cfg.n_panels) \
        if getattr(dataset, "masks_dir", None) is not None else set(range(cfg.n_panels))
    for batch in tqdm(loader, desc=f"evaluate {cfg.split}", unit="batch", disable=not progress):
        with torch.no_grad():
            out = model(**model_inputs(batch, device))
        pred, target, mask = out["mean"].float(), batch["target"], batch["mask"]
        var = out["var"].float() if "var" in out else None
        run.has_variance = var is not None
        groups = [[f"season={season}", f"coverage={coverage_bin(float(cov), cfg.coverage_bins)}"]
                  for season, cov in zip(batch["meta"]["season"], batch["coverage"], strict=True)]
        cloudy = batch["cloudy"]
        run.model.add_batch(cloud_metrics(target, pred, mask, var=var, cloudy=cloudy), groups)
        run.baseline.add_batch(cloud_metrics(target, cloudy, mask, cloudy=cloudy), groups)
        for i in range(pred.shape[0]):
            sample = {k: (v[i] if k != "meta" else {m: batch["meta"][m][i] for m in batch["meta"]})
                      for k, v in batch.items()}
            index = run.n_images
            if index in shown or (cfg.plot_every > 0 and index % cfg.plot_every == 0):
                run.panel_files.append(_write_panel(sample, pred[i], None if var is None else var[i], panels_dir))
            if cfg.export_every > 0 and index % cfg.export_every == 0:
                export_prediction(sample, pred[i], None if var is None else var[i], export_dir)
            run.n_images += 1
    return run


def _group_rows(model_summary: dict[str, dict[str, float]], baseline_summary: dict[str, dict[str, float]],
                field: str, labels: list[str]) -> list[dict[str, Any]]:
    """One row per group label present: image count and cloudy-region metrics, model vs baseline."""
    nan = float("nan")
    rows = []
    for label in labels:
        key = f"{field}={label}"
        if key not in model_summary:
            continue
        model, base = model_summary[key], baseline_summary[key]
        rows.append({
            "bin" if field == "coverage" else "season": label,
            "n": int(model["n"]),
            "n_cloudy": int(model.get("cloudy/n", 0)),  # images with cloud pixels: those the cloudy columns average
            "model_PSNR": model.get("cloudy/PSNR", nan),
            "baseline_PSNR": base.get("cloudy/PSNR", nan),
            "model_SSIM": model.get("cloudy/SSIM", nan),
            "baseline_SSIM": base.get("cloudy/SSIM", nan),
            "model_SAM": model.get("cloudy/SAM", nan),
            "baseline_SAM": base.get("cloudy/SAM", nan),
            "model_all_PSNR": model.get("PSNR", nan),
        })
    return rows


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None if np.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(_clean(data), indent=2))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows([{k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows])


def _write_panel(sample: dict[str, Any], pred: torch.Tensor, var: torch.Tensor | None, panels_dir: Path) -> Path:
    import matplotlib.pyplot as plt

    from sscr.plots import prediction_panel

    panels_dir.mkdir(parents=True, exist_ok=True)
    figure = prediction_panel(sample, pred, var)
    path = panels_dir / f"{sample['meta']['sample_id']}.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def export_prediction(sample: dict[str, Any], pred: torch.Tensor, var: torch.Tensor | None, export_dir: Path) -> Path:
    """Write a prediction as a GeoTIFF: 13 uint16 DN bands (+ per-band std in DN when predicted).

    Same CRS and transform as the input patch. The variance is stored as its
    square root in DN (``<band>_std``) so it fits the uint16 file.
    """
    from affine import Affine

    meta = sample["meta"]
    transform = Affine(*[float(v) for v in meta["transform"]])
    bands = denormalize_s2(pred.cpu().numpy())
    names = list(S2_BANDS)
    if var is not None:
        std = np.sqrt(np.clip(var.float().cpu().numpy(), 0, None))
        std = np.broadcast_to(std, pred.shape) if std.shape[0] == 1 else std
        bands = np.concatenate([bands, denormalize_s2(std)])
        names += [f"{band}_std" for band in S2_BANDS]
    return write_raster(export_dir / f"{meta['sample_id']}_pred.tif", bands, meta["crs"] or None, transform,
                        band_names=names)


def _write_coverage_figure(bins: list[dict[str, Any]], path: Path) -> Path | None:
    """PSNR inside clouds by coverage bin, model vs cloudy input, as a PNG (None when there are no bins)."""
    if not bins:
        path.unlink(missing_ok=True)
        return None
    import matplotlib.pyplot as plt

    from sscr.plots import metric_by_bin_figure

    figure = metric_by_bin_figure(bins)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=90)
    plt.close(figure)
    return path


def _log(checkpoint_sha256: str, run_id: str | None, metrics: dict[str, Any], records: Path,
         figure: Path | None, panel_files: list[Path], split: str, dropped: Mapping[str, Sequence[object]],
         device: torch.device) -> None:
    """Log the results to the run that trained the checkpoint, through the client: its status stays as it is.

    (A run killed or failed after writing this checkpoint is not marked FINISHED by being evaluated.)
    """
    import time

    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    tracking.configure()
    if not run_id:
        found = tracking.find_run_by_tag(tracking.CHECKPOINT_TAG, checkpoint_sha256)
        if found is None:
            print(f"sscr: no MLflow run trained this checkpoint (sha256 {checkpoint_sha256[:12]}...); "
                  "the evaluation results are only on disk")
            return
        run_id = found.info.run_id
    client = MlflowClient()
    stamp = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, value, stamp, 0)
                                      for key, value in flat_metrics(metrics, prefix="test_").items()])
    for name in ("metrics.json", "quality.md", "quality.json", "coverage_bins.csv", "seasons.csv", SCORES_FILE,
                 SUMMARY_FILE):
        client.log_artifact(run_id, str(records / name), "evaluation")
    for key, value in {**mlflow_tags(metrics["quality"]), **tracking.device_tags(device, tracking.EVALUATE_DEVICE_TAG)}.items():
        client.set_tag(run_id, key, value)
    for path in panel_files:
        client.log_artifact(run_id, str(path), "evaluation/panels")
    if figure is not None:
        client.log_artifact(run_id, str(figure), "evaluation")
    tracking.log_dropped(split, dropped, run_id=run_id)
