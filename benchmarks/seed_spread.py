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
import json
import os
import statistics
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


def train_seed(params: Any) -> bool:
    """Train, unless its run record and checkpoint are there already (then False: reused)."""
    from sscr.config import record_dir, run_dir
    from sscr.train import train

    if (record_dir(params) / "run.json").exists() and (run_dir(params) / "model_best.pt").exists():
        return False
    train(params, progress=False)
    return True


def main(argv: list[str] | None = None) -> None:
    """Train every seed, score validation and test per image, write the report."""
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tests/tiny.py sizes")
    parser.add_argument("--smoke", action="store_true", help="CI: tiny sizes, 2 seeds, 1 epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="train.rdm_seed values (default 1 2 3)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="train.epochs for every seed (default: params.yaml's; a shorter run on a loaded machine)")
    parser.add_argument("--train-only", action="store_true",
                        help="train the seeds, score nothing (run one process per seed, then once without it)")
    parser.add_argument("--out", type=Path, default=None, help="report file")
    args = parser.parse_args(argv)
    args.out = args.out.resolve() if args.out else None  # before the chdir below
    mode = mode_of(args.quick, args.smoke)
    seeds = args.seeds or ([1, 2] if mode == "smoke" else [1, 2, 3])
    overrides: dict[str, Any] = {}
    if mode != "full":
        overrides = tiny_overrides()
    if mode == "smoke":
        overrides = deep_update(overrides, {"train": {"epochs": 1}})
    if args.epochs is not None:
        overrides = deep_update(overrides, {"train": {"epochs": args.epochs}})
    os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
    base = sample_on_disk("default" if mode == "full" else "tiny", overrides)
    work = cache_dir() / NAME / (mode if args.epochs is None else f"{mode}-{args.epochs}epochs")
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)  # the throw-away MLflow store (mlflow.db) lives here, one per process that trains
    if args.train_only and len(seeds) == 1:
        (work / f"store{seeds[0]}").mkdir(exist_ok=True)
        os.chdir(work / f"store{seeds[0]}")
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    runs = {seed: seed_params(base, seed, work, overrides) for seed in seeds}
    reused = []
    for seed, params in runs.items():
        print(f"seed {seed}: training ...", flush=True)
        if not train_seed(params):
            reused.append(seed)
    if args.train_only:
        return
    report(runs, mode, args, argv, reused)


def score_seed(params: Any) -> dict[str, Any]:
    """Test metrics (the README's) and validation scores per image (promotion's evidence) of one seed's model.

    ``sscr.evaluate.evaluate``, as the ``evaluate`` stage runs it, writes both.
    """
    from sscr.config import record_dir
    from sscr.evaluate import evaluate
    from sscr.evidence import SCORES_FILE, SplitScores

    metrics = evaluate(params, progress=False)
    records = record_dir(params)
    return {"validation": SplitScores.read(records / SCORES_FILE), "metrics": metrics,
            "run": json.loads((records / "run.json").read_text()), "sha256": metrics["checkpoint_sha256"]}


def report(runs: dict[int, Any], mode: str, args: argparse.Namespace, argv: list[str] | None,
           reused: list[int]) -> None:
    """Score every seed, put every pair through rule 1, write the report."""
    from sscr.evidence import compare

    scored = {seed: score_seed(params) for seed, params in runs.items()}
    first = next(iter(runs.values()))
    lines = [f"# Seed-to-seed spread ({mode})", "", f"`{command_line(NAME, argv)}`", "", machine_line(), "",
             f"{first.model.name}, loss {first.loss.name}, {first.train.epochs} epochs, everything else as "
             "params.yaml; only train.rdm_seed differs. Validation: the split promotion decides on, PSNR per image "
             "(sscr.validation); test: the split the README reports."
             + (f" Seeds {', '.join(map(str, reused))} were trained earlier (reused from the cache: "
                f"`... --seeds S --train-only`, one process per seed)." if reused else ""), "",
             "| seed | best epoch | validation PSNR | test PSNR | test PSNR inside clouds | test SAM inside clouds | "
             "checkpoint sha256 |", "| --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for seed, result in scored.items():
        metrics = result["metrics"]
        lines.append(f"| {seed} | {result['run']['best_epoch']} | {result['validation'].mean:.4f} | "
                     f"{metrics['test']['PSNR']:.4f} | {metrics['test_cloudy']['PSNR']:.4f} | "
                     f"{metrics['test_cloudy']['SAM']:.2f} | {result['sha256'][:12]} |")
    values = {
        "validation PSNR": [r["validation"].mean for r in scored.values()],
        "test PSNR": [r["metrics"]["test"]["PSNR"] for r in scored.values()],
        "test PSNR inside clouds": [r["metrics"]["test_cloudy"]["PSNR"] for r in scored.values()],
    }
    lines += ["", "| over the seeds | min | max | range (max - min) | standard deviation |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for label, column in values.items():
        lines.append(f"| {label} | {min(column):.4f} | {max(column):.4f} | {max(column) - min(column):.4f} | "
                     f"{statistics.stdev(column):.4f} |")
    spread = max(values["validation PSNR"]) - min(values["validation PSNR"])
    lines += ["", f"Seed-to-seed range of the validation PSNR: **{spread:.3f} dB**. Rule 1 with "
              f"registry.min_gain = {first.registry.min_gain:g} dB (params.yaml) on every ordered pair of seeds "
              "(candidate against champion, the same configuration):", "",
              "| candidate | champion | mean difference | 95% interval | rule 1 | the interval alone (margin 0) |",
              "| --- | --- | ---: | --- | --- | --- |"]
    promoted, by_interval = 0, 0
    for one, other in itertools.permutations(scored, 2):
        comparison = compare(scored[one]["validation"], scored[other]["validation"], first.registry.min_gain,
                             first.registry.confidence)
        alone = compare(scored[one]["validation"], scored[other]["validation"], 0.0, first.registry.confidence)
        promoted += comparison.better
        by_interval += alone.better
        low, high = comparison.interval
        lines.append(f"| seed {one} | seed {other} | {comparison.mean_difference:+.4f} | [{low:+.4f}, {high:+.4f}] | "
                     f"{'promote' if comparison.better else 'challenger'} | "
                     f"{'promote' if alone.better else 'challenger'} |")
    pairs = len(scored) * (len(scored) - 1)
    lines += ["", f"{promoted} of {pairs} seed-only differences would have moved @champion under rule 1; "
              f"{by_interval} of {pairs} under the paired bootstrap interval alone (a seed's gain is spread over "
              "every image, so the interval excludes 0 although the configuration is the same: hence the margin)."]
    text = "\n".join(lines) + "\n"
    print(text)
    write_report(text, results_path(NAME, mode, args.out))


if __name__ == "__main__":
    main()
