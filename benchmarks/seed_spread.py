"""Seed-to-seed spread: the default training with a few seeds, scored per image on validation and test.

    python -m benchmarks.seed_spread            # the embedded default (params.yaml), seeds 1 2 3
    python -m benchmarks.seed_spread --quick    # tests/tiny.py's sizes, seeds 1 2 3
    python -m benchmarks.seed_spread --smoke    # CI: tiny sizes, seeds 1 2, one epoch

Every setting is that of ``params.yaml`` (the embedded default: data, masks, model, loss, 40
epochs, schedule, crops) except ``train.rdm_seed``, which takes each of ``--seeds``. Each model
(its best-validation checkpoint, as ``dvc repro`` registers it) is scored per image on the
validation split with :func:`sscr.validation.score_split` (what promotion compares) and on the
test split with :func:`sscr.evaluate.evaluate` (what the README reports). The spread of the
validation mean over seeds is the training noise a promotion must beat: the registry's
``registry.min_gain`` is set no smaller than it. Every pair of seeds is then put through the
promotion rule (:func:`sscr.validation.compare`): two trainings that differ only by their seed
are the same configuration, so the rule should call none of them better.

The data set, the masks and their hashes are the same bytes on any machine (the synthetic sample
is generated from ``data.synth.seed``); trained weights are not (CPU kernels differ in
floating-point summation order). Trained checkpoints are kept under the cache
(``<cache>/seed_spread/``) and reused when present, so a rerun only re-scores them.
"""

from __future__ import annotations

import argparse
import itertools
import os
from pathlib import Path
from typing import Any

from benchmarks._common import (
    cache_dir,
    command_line,
    deep_update,
    machine_line,
    mode_of,
    results_path,
    sample_on_disk,
    tiny_overrides,
    write_report,
)

NAME = "seed_spread"


def seed_params(base: Any, seed: int, work: Path, overrides: dict[str, Any]) -> Any:
    """``base`` with ``train.rdm_seed`` = ``seed`` and every output under ``work/seed<seed>``."""
    from sscr.config import parse_params

    raw = deep_update(base.model_dump(mode="json"), deep_update(overrides, {
        "train": {"rdm_seed": seed, "experiment_name": f"seed{seed}", "res_dir": str(work / "results"),
                  "metrics_dir": str(work / "metrics")},
        "evaluate": {"out_dir": str(work / "results" / f"eval{seed}"), "n_panels": 0},
    }))
    return parse_params(raw, "params.yaml + seed_spread overrides")


def train_seed(params: Any) -> Path:
    """Train (unless its run record is there already); the best checkpoint."""
    from sscr.config import record_dir, run_dir
    from sscr.train import train

    checkpoint = run_dir(params) / "model_best.pt"
    if not (record_dir(params) / "run.json").exists() or not checkpoint.exists():
        train(params, progress=False)
    return checkpoint


def main(argv: list[str] | None = None) -> None:
    """Train every seed, score validation and test per image, write the report."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tests/tiny.py sizes")
    parser.add_argument("--smoke", action="store_true", help="CI: tiny sizes, 2 seeds, 1 epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="train.rdm_seed values (default 1 2 3)")
    parser.add_argument("--train-only", action="store_true", help="train the seeds, score nothing")
    parser.add_argument("--out", type=Path, default=None, help="report file")
    args = parser.parse_args(argv)
    mode = mode_of(args.quick, args.smoke)
    seeds = args.seeds or ([1, 2] if mode == "smoke" else [1, 2, 3])
    overrides: dict[str, Any] = {}
    if mode != "full":
        overrides = tiny_overrides()
    if mode == "smoke":
        overrides = deep_update(overrides, {"train": {"epochs": 1}})
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    base = sample_on_disk("default" if mode == "full" else "tiny", overrides)
    work = cache_dir() / NAME / mode
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the throw-away MLflow store (mlflow.db) lives here
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    runs = {seed: seed_params(base, seed, work, overrides) for seed in seeds}
    for seed, params in runs.items():
        print(f"seed {seed}: training ...", flush=True)
        train_seed(params)
    if args.train_only:
        return
    report(runs, mode, args, argv)


def report(runs: dict[int, Any], mode: str, args: argparse.Namespace, argv: list[str] | None) -> None:
    """Score every seed and write the report (completed below)."""
    raise NotImplementedError


if __name__ == "__main__":
    main()
