"""What the benchmarks share: result files, the machine line, interleaved timing, the embedded default sample.

Every benchmark is ``python -m benchmarks.<name> [--quick | --smoke] [--out FILE]``: it prints a
markdown report and writes it to ``benchmarks/results/<name>.md`` (``<name>_quick.md`` with
``--quick``, ``<name>_smoke.md`` with ``--smoke``, the CI size). Generated inputs (synthetic
samples, scenes, temporary stores) live under ``benchmarks/.cache/`` (git-ignored), or under
``$SSCR_BENCHMARK_CACHE`` when set (the tests point it at a temporary directory).
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
RESULTS = HERE / "results"
CACHE_ENV = "SSCR_BENCHMARK_CACHE"
MODES = ("full", "quick", "smoke")


def cache_dir() -> Path:
    """Where benchmarks keep generated inputs: ``$SSCR_BENCHMARK_CACHE`` or ``benchmarks/.cache``."""
    return Path(os.environ.get(CACHE_ENV) or HERE / ".cache")


def mode_of(quick: bool, smoke: bool) -> str:
    """``full``, ``quick`` or ``smoke`` from the two flags (smoke wins)."""
    return "smoke" if smoke else "quick" if quick else "full"


def results_path(name: str, mode: str, out: Path | None = None) -> Path:
    """``out`` if given, else ``benchmarks/results/<name>[_quick|_smoke].md``."""
    if out is not None:
        return Path(out)
    return RESULTS / (f"{name}.md" if mode == "full" else f"{name}_{mode}.md")


def command_line(name: str, argv: Sequence[str] | None = None) -> str:
    """The command that reproduces a report, as its first line shows it: every argument it was given.

    ``argv`` is what ``main(argv)`` received (None: ``sys.argv[1:]``, the command line).
    """
    return shlex.join(["python", "-m", f"benchmarks.{name}", *(sys.argv[1:] if argv is None else argv)])


def machine_line(threads: int | None = None) -> str:
    """CPU, RAM, torch and thread count, load average now: the context a timing needs."""
    import torch

    threads = threads or torch.get_num_threads()
    load = ", ".join(f"{value:.1f}" for value in psutil.getloadavg())
    return (
        f"{platform.processor() or platform.machine()}, {psutil.cpu_count()} logical CPUs, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; torch {torch.__version__}, {threads} torch "
        f"thread(s); load average {load} (a shared machine: compare ratios within a table, not absolute "
        "times across runs)"
    )


def write_report(text: str, path: Path) -> Path:
    """Print the report and write it to ``path``."""
    print("\n" + text)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"written to {path}")
    return path


def interleaved(
    candidates: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each candidate, run round-robin: ``warmup`` untimed rounds, then ``repeats`` timed ones.

    The order rotates every round, so a load change on a shared machine, or a cache warmed by the
    previous candidate, hits every candidate alike.
    """
    names = list(candidates)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(warmup + repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            start = clock()
            candidates[name]()
            if round_index >= warmup:
                times[name].append(clock() - start)
    return times


def median(values: list[float]) -> float:
    """Median (NaN for no values)."""
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """``min-max`` of a list of seconds as a relative spread around the median, e.g. ``±4%``."""
    if len(values) < 2:
        return "-"
    mid = statistics.median(values)
    return f"±{100 * max(mid - min(values), max(values) - mid) / mid:.0f}%"


# ---------------------------------------------------------------- the embedded default sample


def default_params(overrides: dict[str, Any] | None = None) -> Any:
    """``params.yaml`` of the project (the embedded default), with ``overrides`` merged in."""
    import yaml

    from sscr.config import parse_params

    raw = yaml.safe_load((PROJECT / "params.yaml").read_text())
    return parse_params(deep_update(raw, overrides or {}), "params.yaml + benchmark overrides")


def deep_update(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_update(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def tiny_overrides() -> dict[str, Any]:
    """The overrides of ``tests/tiny.py`` (64 px patches, 10 of them, tiny widths): the CI size, one definition."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_sscr_tests_tiny", PROJECT / "tests" / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TINY


def sample_on_disk(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """The synthetic sample of ``params.yaml`` (+ ``overrides``) and its masks under ``<cache>/<name>``.

    Written once (``write_synthetic_sample`` then ``precompute_masks``, both resumable); returns the
    params with ``data.root`` and ``masks.dir`` pointing there.
    """
    from sscr.cloudmasks import precompute_masks
    from sscr.data.synth import write_synthetic_sample

    base = cache_dir() / name
    params = default_params(
        deep_update(
            overrides or {},
            {
                "data": {"root": str(base / "sen12mscr")},
                "masks": {"dir": str(base / "masks")},
            },
        )
    )
    if not (Path(params.masks.dir) / "coverage.csv").exists():
        started = time.perf_counter()
        print(f"writing the synthetic sample and its masks to {base} (once) ...", flush=True)
        write_synthetic_sample(
            params.data.root,
            params.data.synth,
            patch_size=params.data.patch_size,
            seasons=params.data.seasons,
            progress=False,
        )
        precompute_masks(
            params.data.root,
            params.masks.dir,
            params.masks.kinds,
            seasons=params.data.seasons,
            patch_size=params.data.patch_size,
            workers=params.masks.workers,
            progress=False,
        )
        print(f"  done in {time.perf_counter() - started:.0f} s", flush=True)
    return params
