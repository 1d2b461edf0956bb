"""Full-scene inference: throughput and peak memory against scene size.

    python -m benchmarks.scene_inference            # `sscr infer`'s defaults per model at 2048 px, one run
    python -m benchmarks.scene_inference --quick    # the same at 1024 px
    python -m benchmarks.scene_inference --memory   # peak RSS: 2048 px against a whole Sentinel-2 tile (10980 px)
    python -m benchmarks.scene_inference --smoke    # CI: 256 and 512 px, tiny U-Net, mask off
    python -m benchmarks.scene_inference --batch 4  # 4 tiles per forward pass instead of the CPU default 1
    python -m benchmarks.scene_inference --profile  # where the default's time goes; the fast path against the plain one
    python -m benchmarks.scene_inference --whole-tile  # the default on a whole 10980 px tile, fast path, one run
    python -m benchmarks.scene_inference --cog      # the staging file's codec: write + COG conversion, 2048 px
    python -m benchmarks.scene_inference --floor    # s2cloudless per pixel and the network per tile, each alone

Synthetic scenes (cloudy S2, 13 bands uint16 DN, and S1, 2 bands float32 dB, as
tiled GeoTIFFs in UTM) are written once under ``benchmarks/.cache/`` (or
``$SSCR_BENCHMARK_CACHE``) from a few
patches of :func:`sscr.data.synth.synth_patch`. Each run of
:func:`sscr.infer.infer_scene` happens in a fresh subprocess so its peak RSS
(``ru_maxrss``) belongs to that scene size alone; a thread samples its RSS every
0.2 s, and the table shows the largest sample of the run's first quarter next to
the peak: when they agree, memory stopped growing early and more tiles would not
raise it. Models are randomly initialised: throughput does not depend on the weights.

Full mode (and ``--quick`` at 1024 px) measures what ``sscr infer`` does by default for each
network, in one run: ``sscr_lite`` takes a cloud mask, so it gets s2cloudless at 10 m (the
benchmark's, the ``--mask`` default; also shown at 60 m), at its own default widths and at
``params.yaml``'s (``sscr_lite_cpu``: the champion ``dvc repro`` registers), while ``multisarv2``
and ``uncrtaints`` take none and get none; every run writes its COG. It estimates a whole
10980 px tile from each rate. ``--memory`` measures the default ``sscr_lite`` at 2048 px with
the mask on and off, and runs the 10980 px scene itself with the costliest configuration
that fits ``--budget-minutes``; if none does, it runs the memory comparison (2048 vs 10980
px) with a tiny model, whose buffers and I/O are the same as the default model's.
Results: a markdown table on stdout and in ``benchmarks/results/scene_inference_defaults.md``
(``scene_inference_defaults_quick.md`` for ``--quick``, ``scene_inference.md`` for ``--memory``,
``scene_inference_smoke.md`` for ``--smoke``; ``--out`` writes elsewhere).

``--profile`` (``scene_inference_profile.md``; ``--quick``: 512 px) runs the default
(``sscr_lite``, s2cloudless at 10 m) at 1024 px on the plain path (a mask per tile, no
second thread, every tile through the model: :data:`sscr.infer.PLAIN`) and on the fast one (:class:`sscr.infer.SceneSpeed`),
round-robin, and for the project's CPU-sized ``sscr_lite`` (``params.yaml``: widths 16, 32,
64) too; it tables the time of each stage (mask, read, forward, blend, write, COG
conversion) and compares the outputs of the two paths (max abs difference, PSNR).
``--whole-tile`` (``scene_inference_whole_tile.md``) runs the fast path once on a whole
10980 px tile and once at 2048 px, for the time and the peak-memory ratio, recording the
load average at start and end and the busy time per pixel of s2cloudless and per tile of
the network (``--model``, ``--mask``: which network and mask). ``--cog`` (``scene_inference_cog.md``) writes a 2048 px
13-band staging file by the inference's windows with each candidate codec and converts it
to the COG, round-robin, and checks that the COGs hold the same pixels.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks._common import cache_dir, command_line, median, write_report

NAME = "scene_inference"
HERE = Path(__file__).resolve().parent
CACHE = cache_dir()
RESULTS = HERE / "results" / "scene_inference_defaults.md"
RESULTS_QUICK = HERE / "results" / "scene_inference_defaults_quick.md"
RESULTS_MEMORY = HERE / "results" / "scene_inference.md"
RESULTS_SMOKE = HERE / "results" / "scene_inference_smoke.md"
SENTINEL2_TILE = 10980
BUDGET_MINUTES = 30.0
"""Largest estimated time of the 10980 px run with the default model (``--budget-minutes``)."""
SOURCE_PATCH = 512
SOURCE_PATCHES = 6
SMOKE_SOURCE = (256, 2)
"""Smoke scenes are tiled from 2 patches of 256 px (written in a second, named ``smoke_*.tif``)."""
TILE, OVERLAP = 256, 32
BATCH = None
"""Tiles per forward pass (``--batch``): None is infer_scene's default (1 on CPU, 4 on a GPU), what `sscr infer` runs."""
MODELS = {
    "sscr_lite": {},  # the project's design with its defaults (widths 32, 64, 128); takes a cloud mask
    "multisarv2": {},  # the published SSCR network as published; takes no mask
    "uncrtaints": {},  # UnCRtainTS as the seed trains it; takes no mask
    "tiny-unet": {"encoder_widths": [8, 16]},  # for the memory comparison when the default model is too slow
    "sscr_lite_cpu": {"encoder_widths": [16, 32, 64], "decoder_widths": [16, 32, 64]},  # params.yaml's model
}
MODEL_NAMES = {"sscr_lite": "sscr_lite", "multisarv2": "multisarv2", "uncrtaints": "uncrtaints", "tiny-unet": "mask_unet",
               "sscr_lite_cpu": "sscr_lite"}
DEFAULTS = [("sscr_lite", "default"), ("sscr_lite", "s2cloudless-60m"), ("sscr_lite_cpu", "default"),
            ("sscr_lite_cpu", "s2cloudless-60m"), ("multisarv2", "default"), ("uncrtaints", "default")]
"""(model, --mask) pairs of the defaults run: each network as `sscr infer` runs it, and sscr_lite's faster mask,
at its own default widths and at ``params.yaml``'s (the champion `dvc repro` registers)."""
DEFAULT_SIZE, QUICK_SIZE = 2048, 1024
PROFILE_SIZE, PROFILE_QUICK_SIZE = 1024, 512
RESULTS_PROFILE = HERE / "results" / "scene_inference_profile.md"
RESULTS_WHOLE_TILE = HERE / "results" / "scene_inference_whole_tile.md"
RESULTS_COG = HERE / "results" / "scene_inference_cog.md"
RESULTS_FLOOR = HERE / "results" / "scene_inference_floor.md"
STAGING_CODECS = {"deflate level 1 (before)": {"compress": "deflate", "zlevel": 1},
                  "zstd level 1 (now)": {"compress": "zstd", "zstd_level": 1}, "none": {}}
STAGES = ("mask", "read", "forward", "blend", "write", "cog", "wait")
PROFILE_MODELS = ("sscr_lite", "sscr_lite_cpu")


def _plain() -> object:  # sscr.infer is imported in the worker only
    from sscr.infer import PLAIN

    return PLAIN


def _one_thread() -> object:
    from sscr.infer import SceneSpeed

    return SceneSpeed(prefetch=False)


def _fast() -> object:
    from sscr.infer import SceneSpeed

    return SceneSpeed()


SPEEDS = {"plain": _plain, "one-thread": _one_thread, "fast": _fast}
"""``--speed``: the plain path, the fast path without its second thread, the fast path."""
"""Stages of :attr:`sscr.infer.SceneReport.stage_seconds`, in table order."""


@dataclass
class Run:
    """One measured scene inference."""

    size: int
    model: str
    mask: str
    """The ``--mask`` asked for: ``default`` (s2cloudless-10m), ``none``, ``s2cloudless-60m``."""
    mask_used: str | None
    """What the run fed the model: None for networks that take no mask."""
    tiles: int
    seconds: float
    pixels_per_second: float
    peak_rss_mib: float
    rss_before_mib: float
    rss_first_quarter_mib: float
    """Largest RSS sampled during the first quarter of the run: equal to the peak once memory stops growing."""
    batch: int
    speed: str = "fast"
    """``fast`` (:class:`sscr.infer.SceneSpeed` defaults) or ``plain`` (:data:`sscr.infer.PLAIN`)."""
    stage_seconds: dict[str, float] | None = None
    pixels_classified: int = 0
    tiles_passed_through: int = 0
    """Tiles clear throughout, not run through the model (their output is their input)."""
    load: tuple[float, float] = (0.0, 0.0)
    """1-minute load average when the run started and when it ended."""
    output: str | None = None
    """The prediction it wrote, when kept for a comparison."""

    @property
    def label(self) -> str:
        return f"{self.size} x {self.size}"


# ---------------------------------------------------------------- synthetic scenes


def scene_paths(size: int, smoke: bool = False) -> tuple[Path, Path]:
    """Cached (S2 cloudy, S1) GeoTIFFs of a ``size`` x ``size`` scene, written on first use."""
    prefix = "smoke_" if smoke else ""
    s2_path, s1_path = CACHE / f"{prefix}s2_cloudy_{size}.tif", CACHE / f"{prefix}s1_{size}.tif"
    if not (s2_path.exists() and s1_path.exists()):
        write_scene(size, s2_path, s1_path, *(SMOKE_SOURCE if smoke else (SOURCE_PATCH, SOURCE_PATCHES)))
    return s2_path, s1_path


def write_scene(
    size: int,
    s2_path: Path,
    s1_path: Path,
    source_patch: int = SOURCE_PATCH,
    source_patches: int = SOURCE_PATCHES,
) -> None:
    """Fill a scene block by block with flipped and rotated synthetic patches (bounded memory, atomic)."""
    import rasterio
    from affine import Affine
    from rasterio.windows import Window

    from sscr.bands import S1_BANDS, S1_CHANNELS, S2_BANDS, S2_CHANNELS
    from sscr.data.cog import GDAL_CACHE_BYTES
    from sscr.data.synth import synth_patch
    from sscr.fsutil import atomic_path
    from sscr.layout import PatchId

    started = time.perf_counter()
    print(f"writing synthetic {size} x {size} scene to {CACHE} (once) ...", flush=True)
    patches = [
        synth_patch(PatchId("ROIs1158_spring", 7, index + 1), source_patch, seed=11)
        for index in range(source_patches)
    ]
    CACHE.mkdir(parents=True, exist_ok=True)
    transform = Affine(10.0, 0.0, 399960.0, 0.0, -10.0, 5000040.0)  # a Sentinel-2 tile origin in UTM 33N
    common = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "crs": "EPSG:32633",
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "BIGTIFF": "IF_SAFER",
    }
    with (
        atomic_path(s2_path) as s2_tmp,
        atomic_path(s1_path) as s1_tmp,
        rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES),
        rasterio.open(s2_tmp, "w", count=S2_CHANNELS, dtype="uint16", predictor=2, **common) as s2,
        rasterio.open(s1_tmp, "w", count=S1_CHANNELS, dtype="float32", predictor=3, **common) as s1,
    ):
        for dataset, names in ((s2, S2_BANDS), (s1, S1_BANDS)):
            for index, name in enumerate(names, start=1):
                dataset.set_band_description(index, name)
        for row in range(0, size, source_patch):
            for col in range(0, size, source_patch):
                index = (row // source_patch * 7 + col // source_patch * 3) % source_patches
                turns = (row // source_patch + col // source_patch) % 4
                height, width = min(source_patch, size - row), min(source_patch, size - col)
                window = Window(col, row, width, height)
                for dataset, key in ((s2, "s2_cloudy"), (s1, "s1")):
                    block = np.rot90(patches[index][key], turns, axes=(1, 2))[:, :height, :width]
                    dataset.write(np.ascontiguousarray(block), window=window)
    print(f"  written in {time.perf_counter() - started:.0f} s", flush=True)


# ---------------------------------------------------------------- one run, in a fresh process


def worker(size: int, model_key: str, mask: str, smoke: bool = False, batch: int | None = BATCH,
           speed: str = "fast", keep: bool = False) -> None:
    """Run infer_scene once and print a JSON line with its report, this process's peak RSS and an RSS trace.

    ``speed``: ``fast`` or ``plain``; ``keep``: leave the prediction (and the mask used) for a comparison.
    """
    import threading

    import psutil
    import torch

    from sscr.config import DEFAULT_MASK_KIND
    from sscr.infer import DEFAULT_MASK_SOURCE, infer_scene
    from sscr.models import build_model, for_inference

    torch.manual_seed(0)
    model = for_inference(build_model(MODEL_NAMES[model_key], **MODELS[model_key]), "cpu")  # as `sscr infer` does
    s2_path, s1_path = scene_paths(size, smoke)
    out_path = CACHE / f"out_{size}_{model_key}_{mask}_{speed}.tif"
    mask_path = out_path.with_name(f"mask_{out_path.name}") if keep else None
    load_before = os.getloadavg()[0]
    process = psutil.Process()
    rss_before = process.memory_info().rss / 2**20
    samples: list[tuple[float, float]] = []  # (seconds since start, RSS MiB), every 0.2 s
    done = threading.Event()
    started = time.perf_counter()

    def sample() -> None:
        while True:
            samples.append((time.perf_counter() - started, process.memory_info().rss / 2**20))
            if done.wait(0.2):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        report = infer_scene(
            model,
            s2_path,
            s1_path,
            out_path,
            tile=TILE,
            overlap=OVERLAP,
            batch_size=batch,
            mask_kind=DEFAULT_MASK_KIND,  # what a checkpoint trained with the params.yaml defaults asks for
            mask=DEFAULT_MASK_SOURCE if mask == "default" else mask,
            mask_path=mask_path,
            progress=False,
            speed=SPEEDS[speed](),
        )
    finally:
        done.set()
        sampler.join()
        samples.append((time.perf_counter() - started, process.memory_info().rss / 2**20))
        if not keep:
            out_path.unlink(missing_ok=True)  # a 10980 px output is ~2 GB: keep the cache small
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    quarter = samples[-1][0] / 4
    first_quarter = max(rss for seconds, rss in samples if seconds <= quarter)
    print(
        json.dumps(
            {
                "size": size,
                "model": model_key,
                "mask": mask,
                "mask_used": report.mask_source,
                "tiles": report.tiles,
                "seconds": report.seconds,
                "pixels_per_second": report.pixels_per_second,
                "peak_rss_mib": peak,
                "rss_before_mib": rss_before,
                "rss_first_quarter_mib": first_quarter,
                "batch": report.batch_size,
                "speed": speed,
                "stage_seconds": report.stage_seconds,
                "pixels_classified": report.pixels_classified,
                "tiles_passed_through": report.tiles_passed_through,
                "load": [load_before, os.getloadavg()[0]],
                "output": str(out_path) if keep else None,
            }
        ),
        flush=True,
    )


def measure(size: int, model_key: str, mask: str, smoke: bool = False, batch: int | None = BATCH,
            speed: str = "fast", keep: bool = False) -> Run:
    """Run :func:`worker` in a fresh interpreter and collect its measurements."""
    scene_paths(size, smoke)  # written here, not inside the measured process
    print(f"running {size} x {size}, model {model_key}, --mask {mask}, {speed} path ...", flush=True)
    env = dict(os.environ, SSCR_S2CLOUDLESS_THREADS=str(os.cpu_count() or 1))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.scene_inference",
            "--worker",
            str(size),
            model_key,
            mask,
            str(int(smoke)),
            str(batch or 0),
            "--speed",
            speed,
            *(["--keep"] if keep else []),
        ],
        cwd=HERE.parent,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    fields = json.loads(done.stdout.strip().splitlines()[-1])
    run = Run(**{**fields, "load": tuple(fields.get("load", (0.0, 0.0)))})
    print(
        f"  {run.seconds:.0f} s, {run.pixels_per_second / 1e3:.1f} kpx/s, peak RSS {run.peak_rss_mib:.0f} MiB",
        flush=True,
    )
    return run


def tiles_of(size: int) -> int:
    """Tiles infer_scene runs on a square scene (the stride is rounded to 16 px)."""
    stride = (TILE - OVERLAP) // 16 * 16
    per_axis = 1 if size <= TILE else math.ceil((size - (TILE - stride)) / stride)
    return per_axis**2


# ---------------------------------------------------------------- report


def table(runs: list[Run]) -> list[str]:
    lines = [
        "| scene | model | --mask | cloud mask computed | batch | tiles | time | s / tile | Mpx / s | RSS before | "
        "RSS, first quarter | peak RSS |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        lines.append(
            f"| {run.label} | {run.model} | {run.mask} | {run.mask_used or 'none'} | {run.batch} | {run.tiles} | "
            f"{run.seconds:.0f} s | {run.seconds / run.tiles:.2f} | {run.pixels_per_second / 1e6:.3f} | "
            f"{run.rss_before_mib:.0f} MiB | {run.rss_first_quarter_mib:.0f} MiB | {run.peak_rss_mib:.0f} MiB |"
        )
    return lines


def memory_ratios(runs: list[Run]) -> list[str]:
    lines = []
    for big in runs:
        for small in runs:
            if (small.model, small.mask) == (big.model, big.mask) and small.size < big.size:
                lines.append(
                    f"- peak RSS {big.label} / {small.label} ({big.model}, --mask {big.mask}): "
                    f"{big.peak_rss_mib:.0f} / {small.peak_rss_mib:.0f} MiB = "
                    f"**{big.peak_rss_mib / small.peak_rss_mib:.3f}** for {big.size**2 / small.size**2:.0f}x the pixels"
                )
    return lines


def memory_runs(run, budget_minutes: float, notes: list[str]) -> list[Run]:
    """sscr_lite at 2048 px with the mask on and off, then 10980 px with what fits the budget (else a tiny U-Net)."""
    runs = []
    on, off = run(2048, "sscr_lite", "default"), run(2048, "sscr_lite", "none")
    runs += [on, off]
    scale = tiles_of(SENTINEL2_TILE) / tiles_of(2048)
    estimate = {"default": on.seconds * scale / 60, "none": off.seconds * scale / 60}
    notes.append(
        f"- estimated {SENTINEL2_TILE} px time for sscr_lite from the 2048 px rates "
        f"({tiles_of(SENTINEL2_TILE)} vs {tiles_of(2048)} tiles): mask on {estimate['default']:.0f} min, "
        f"mask off {estimate['none']:.0f} min"
    )
    fitting = [mask for mask in ("default", "none") if estimate[mask] <= budget_minutes]
    if fitting:
        mask = fitting[0]
        if mask == "none":
            notes.append(
                f"- the {SENTINEL2_TILE} px scene ran with the mask off: with it, over {budget_minutes:.0f} min"
            )
        runs.append(run(SENTINEL2_TILE, "sscr_lite", mask))
    else:
        notes.append(
            f"- both exceed the {budget_minutes:.0f} min budget, so the memory comparison runs "
            f"`tiny-unet` (U-Net, widths 8, 16, mask off) at 2048 and {SENTINEL2_TILE} px: streaming "
            "buffers, reads and writes are those of any model; only the model's own constant working set differs"
        )
        runs += [run(2048, "tiny-unet", "none"), run(SENTINEL2_TILE, "tiny-unet", "none")]
    return runs


# ---------------------------------------------------------------- where the time goes, and the whole tile


def stage_table(runs: list[Run]) -> list[str]:
    """Seconds per stage of each run, and each stage's share of the run's wall time."""
    lines = [
        "| model | path | time | s / tile | " + " | ".join(STAGES)
        + " | pixels classified | tiles passed through | load (start, end) |",
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in STAGES) + " | ---: | ---: | --- |",
    ]
    for run in runs:
        stages = run.stage_seconds or {}
        cells = [f"{stages[stage]:.1f} s ({100 * stages[stage] / run.seconds:.0f}%)" if stage in stages else "-"
                 for stage in STAGES]
        lines.append(f"| {run.model} | {run.speed} | {run.seconds:.1f} s | {run.seconds / run.tiles:.2f} | "
                     + " | ".join(cells) + f" | {run.pixels_classified:,} | {run.tiles_passed_through} | "
                     f"{run.load[0]:.1f}, {run.load[1]:.1f} |")
    return lines


def compare_outputs(first: Path, second: Path) -> dict[str, float]:
    """Max abs difference (DN), PSNR (dB, reflectance peak 1) and the share of equal values of two predictions."""
    import rasterio

    with rasterio.open(first) as a, rasterio.open(second) as b:
        left, right = a.read().astype(np.float64), b.read().astype(np.float64)
    difference = np.abs(left - right)
    mse = float(np.mean((difference / 10000.0) ** 2))
    return {"max_abs_dn": float(difference.max()), "psnr_db": float("inf") if mse == 0 else -10 * math.log10(mse),
            "equal": float((difference == 0).mean())}


def profile(argv: list[str] | None, quick: bool, repeats: int, out: Path | None,
            models: tuple[str, ...] = PROFILE_MODELS) -> int:
    """The default's stage times, plain path against fast path, round-robin, and the two paths' outputs compared."""
    size = PROFILE_QUICK_SIZE if quick else PROFILE_SIZE
    load = os.getloadavg()[0]
    runs: dict[tuple[str, str], list[Run]] = {}
    for round_index in range(repeats):
        for model_key in models:
            order = ("plain", "one-thread", "fast") if round_index % 2 == 0 else ("fast", "one-thread", "plain")
            for speed in order:
                runs.setdefault((model_key, speed), []).append(
                    measure(size, model_key, "default", speed=speed, keep=round_index == 0))
    best = {key: min(each, key=lambda run: run.seconds) for key, each in runs.items()}
    lines = [
        f"# Full-scene inference: where the time goes ({size} x {size} px; {', '.join(models)})",
        "",
        f"`{command_line(NAME, argv)}`, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores (load average {load:.1f} at start, shared with other jobs). `sscr infer`'s default "
        "network and mask: `sscr_lite` (its own default widths 32, 64, 128; `sscr_lite_cpu`: the widths "
        "`params.yaml` trains, 16, 32, 64) with s2cloudless at 10 m; `multisarv2` and `uncrtaints` take no mask. "
        "Plain path: a mask per tile, no second thread "
        "(`sscr.infer.PLAIN`, the path before); fast path: `sscr.infer.SceneSpeed()` (each pixel classified "
        "once, the next batch read and its mask computed in a second thread, tiles clear throughout passed "
        "through without a forward pass); one-thread: the fast path without its second thread "
        "(`SceneSpeed(prefetch=False)`: what it saves by doing less work, not by taking more threads, which on a "
        "loaded machine also buys a larger share of the cores); LightGBM gets 2 threads on all three "
        "(`SSCR_S2CLOUDLESS_THREADS`, which the benchmark sets; `sscr infer` now uses torch's thread count when "
        f"it is unset, where it used 1). {repeats} round(s), the order alternating; "
        "each run a fresh process; the fastest run of each shown. Stage seconds are busy time per stage; with "
        "the second thread, read and mask overlap the model, and `wait` is what the tile loop waited for them.",
        "",
        *stage_table([best[key] for key in sorted(best)]),
        "",
    ]
    for model_key in models:
        plain, fast, single = best[(model_key, "plain")], best[(model_key, "fast")], best[(model_key, "one-thread")]
        all_plain = [run.seconds for run in runs[(model_key, "plain")]]
        all_fast = [run.seconds for run in runs[(model_key, "fast")]]
        kept = [run for run in runs[(model_key, "plain")] + runs[(model_key, "fast")] if run.output]
        kept_plain = next(run for run in kept if run.speed == "plain")
        kept_fast = next(run for run in kept if run.speed == "fast")
        same = compare_outputs(Path(kept_plain.output), Path(kept_fast.output))
        mask_files = [Path(run.output).with_name(f"mask_{Path(run.output).name}") for run in (kept_plain, kept_fast)]
        masks = compare_outputs(*mask_files) if all(path.exists() for path in mask_files) else None
        lines += [
            f"- {model_key}: fast / plain time {fast.seconds:.1f} / {plain.seconds:.1f} s = "
            f"**{fast.seconds / plain.seconds:.2f}**, without the second thread {single.seconds:.1f} s = "
            f"**{single.seconds / plain.seconds:.2f}** (all runs: plain {', '.join(f'{v:.0f}' for v in all_plain)} s; "
            f"fast {', '.join(f'{v:.0f}' for v in all_fast)} s)"
            + (f"; s2cloudless classified {fast.pixels_classified:,} px on the fast path against {plain.tiles} tiles "
               f"x {TILE}^2 = {plain.tiles * TILE * TILE:,} on the plain one" if fast.pixels_classified else
               "; no mask computed")
            + f". Outputs, fast against plain: prediction max abs "
            f"difference {same['max_abs_dn']:.0f} DN, {100 * same['equal']:.2f}% of values equal, PSNR "
            f"{same['psnr_db']:.1f} dB" + (f"; mask used {100 * masks['equal']:.2f}% equal." if masks else
                                            " (the network takes no mask)."),
            f"- {model_key} at this rate: a whole {SENTINEL2_TILE} px tile ({tiles_of(SENTINEL2_TILE)} tiles) in "
            f"about {fast.seconds / fast.tiles * tiles_of(SENTINEL2_TILE) / 60:.0f} min on the fast path "
            f"({plain.seconds / plain.tiles * tiles_of(SENTINEL2_TILE) / 60:.0f} min plain).",
        ]
        for run in kept:
            Path(run.output).unlink(missing_ok=True)
            Path(run.output).with_name(f"mask_{Path(run.output).name}").unlink(missing_ok=True)
    write_results(lines, out or RESULTS_PROFILE)
    return 0


def whole_tile(argv: list[str] | None, model_key: str, out: Path | None, mask: str = "default") -> int:
    """``model_key`` with ``--mask mask`` on the fast path at 2048 px and on a whole 10980 px tile.

    Time, stages, peak memory, and the cost per scene pixel of the two stages that set the
    floor: s2cloudless (mask busy seconds per pixel classified) and the network (per tile).
    """
    load = os.getloadavg()
    runs = [measure(2048, model_key, mask), measure(SENTINEL2_TILE, model_key, mask)]
    small, big = runs
    mask_name = "s2cloudless at 10 m" if mask == "default" else f"--mask {mask}"
    lines = [
        f"# Full-scene inference: a whole {SENTINEL2_TILE} px Sentinel-2 tile, `{model_key}`, {mask_name}",
        "",
        f"`{command_line(NAME, argv)}`, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) at "
        "start; fast path (`sscr.infer.SceneSpeed()`), tile 256, overlap 32, one tile per "
        "pass; each run a fresh process.",
        "",
        *table(runs),
        "",
        *stage_table(runs),
        "",
        f"- whole tile: **{big.seconds / 60:.1f} min** ({big.tiles} tiles, {big.seconds / big.tiles:.2f} s / tile); "
        f"load average {big.load[0]:.1f} at its start, {big.load[1]:.1f} at its end",
        *memory_ratios(runs),
        *stage_rates(runs),
        "",
    ]
    write_results(lines, out or RESULTS_WHOLE_TILE)
    return 0


def stage_rates(runs: list[Run]) -> list[str]:
    """Busy time of s2cloudless per pixel it classified and of the network per tile it ran, per run."""
    lines = []
    for run in runs:
        stages = run.stage_seconds or {}
        parts = []
        if run.pixels_classified:
            parts.append(f"s2cloudless {stages.get('mask', 0.0) / run.pixels_classified * 1e6:.2f} us per pixel "
                         f"classified ({run.pixels_classified / 1e6:.1f} Mpx)")
        forwarded = run.tiles - run.tiles_passed_through
        if forwarded:
            parts.append(f"network {stages.get('forward', 0.0) / forwarded:.3f} s per tile ({forwarded} tiles)")
        if parts:
            lines.append(f"- {run.size} px, busy time: " + "; ".join(parts))
    return lines


def floor(argv: list[str] | None, repeats: int, out: Path | None) -> int:
    """What a whole tile costs at least on this machine: s2cloudless per pixel and each network per tile, alone.

    Interleaved round-robin in this process: s2cloudless's probability at 10 m (LightGBM, 1 and
    2 threads) of 1024 x 256 px of the 2048 px synthetic scene and, when the realism benchmark
    has fetched them, of 4 real SEN12MS-CR cloudy patches; and one 256 px tile through each
    ``sscr_lite`` width. A whole tile needs 120.6 Mpx classified and 2,401 forward passes on
    the same 2 cores, so their sum is a floor no overlap of the two can beat.
    """
    import glob

    import rasterio
    import torch

    from benchmarks._common import interleaved, machine_line, spread
    from sscr.clouds.detect import s2cloudless_probability
    from sscr.models import build_model, for_inference
    from sscr.predict import predict_tensors

    s2_path, _ = scene_paths(2048)
    with rasterio.open(s2_path) as scene:
        inputs = {"synthetic scene": scene.read(window=((0, 256), (0, 1024)))}
    real = sorted(glob.glob(str(CACHE / "real" / "**" / "*_s2_cloudy" / "**" / "*.tif"), recursive=True))[:4]
    if real:
        patches = []
        for path in real:
            with rasterio.open(path) as patch:
                patches.append(patch.read())
        inputs["real SEN12MS-CR cloudy"] = np.concatenate(patches, axis=2)
    candidates: dict[str, object] = {}
    pixels: dict[str, int] = {}
    for label, dn in inputs.items():
        for threads in (1, 2):
            name = f"s2cloudless 10 m, {label}, {threads} thread(s)"
            candidates[name] = functools.partial(s2cloudless_probability, dn, threads)
            pixels[name] = dn.shape[1] * dn.shape[2]
    torch.manual_seed(0)
    tile = {"cloudy": torch.rand(1, 13, TILE, TILE), "sar": torch.rand(1, 2, TILE, TILE), "mask": torch.rand(1, TILE, TILE)}
    for key in ("sscr_lite", "sscr_lite_cpu"):
        model = for_inference(build_model(MODEL_NAMES[key], **MODELS[key]), "cpu")
        candidates[f"{key}, one {TILE} px tile, {torch.get_num_threads()} threads"] = functools.partial(
            predict_tensors, model, tile["cloudy"], tile["sar"], tile["mask"])
    with torch.no_grad():
        times = interleaved(candidates, repeats)
    whole_pixels, whole_tiles = SENTINEL2_TILE**2, tiles_of(SENTINEL2_TILE)
    lines = [
        "# Full-scene inference: the floor of a whole tile on this machine (each stage alone)",
        "",
        f"`{command_line(NAME, argv)}`, {time.strftime('%Y-%m-%d')}, {machine_line()}. Median of {repeats} "
        "interleaved rounds after one untimed; a whole tile: "
        f"{whole_pixels / 1e6:.1f} Mpx classified once each, {whole_tiles} forward passes.",
        "",
        "| stage | median | spread | per unit | a whole tile at this rate |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, seconds in times.items():
        mid = median(seconds)
        if name in pixels:
            per, whole = f"{mid / pixels[name] * 1e6:.2f} us / px", mid / pixels[name] * whole_pixels
        else:
            per, whole = f"{mid:.3f} s / tile", mid * whole_tiles
        lines.append(f"| {name} | {mid:.2f} s | {spread(seconds)} | {per} | {whole / 60:.1f} min |")
    lines.append("")
    write_results(lines, out or RESULTS_FLOOR)
    return 0


def staging_codecs(argv: list[str] | None, repeats: int, out: Path | None) -> int:
    """Write + COG conversion of a 2048 px prediction-sized staging file per codec, round-robin; same pixels."""
    import rasterio
    from rasterio.windows import Window

    from sscr.data.cog import finish_cog, prediction_spec
    from sscr.data.regrid import Grid
    from sscr.data.sentinel2 import Radiometry

    size, block = 2048, (TILE - OVERLAP) // 16 * 16
    s2_path, _ = scene_paths(size)
    with rasterio.open(s2_path) as src:
        dn, grid = src.read(), Grid(src.crs, src.transform, src.width, src.height)
    spec = prediction_spec(Radiometry())
    folder = CACHE / "cog_codecs"
    folder.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    results: dict[str, list[tuple[float, float, int, int]]] = {name: [] for name in STAGING_CODECS}
    names = list(STAGING_CODECS)
    for round_index in range(repeats):
        for name in names[round_index % len(names):] + names[: round_index % len(names)]:
            out_path = folder / f"{names.index(name)}.tif"
            staging = out_path.with_name(f".{out_path.name}.staging.tif")
            started = time.perf_counter()
            with rasterio.open(staging, "w", driver="GTiff", width=size, height=size, count=13, dtype="uint16",
                               crs=grid.crs, transform=grid.transform, nodata=0, tiled=True, blockxsize=block,
                               blockysize=block, BIGTIFF="IF_SAFER", **STAGING_CODECS[name]) as dataset:
                for row in range(0, size, block):
                    for col in range(0, size, block):
                        height, width = min(block, size - row), min(block, size - col)
                        dataset.write(dn[:, row: row + height, col: col + width], window=Window(col, row, width, height))
            written = time.perf_counter() - started
            staged = staging.stat().st_size
            started = time.perf_counter()
            finish_cog(out_path, spec)
            results[name].append((written, time.perf_counter() - started, staged, out_path.stat().st_size))
    pixels = []
    for index in range(len(names)):
        with rasterio.open(folder / f"{index}.tif") as dataset:
            pixels.append(dataset.read())
    same = all(np.array_equal(pixels[0], other) for other in pixels[1:])
    lines = [
        "# Full-scene inference: the staging file's codec",
        "",
        f"`{command_line(NAME, argv)}`, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load average "
        f"{load:.1f} at start (shared with other jobs). A 2048 px, 13-band uint16 staging GeoTIFF written by "
        f"{block} px windows (as `sscr infer` writes its prediction), then `sscr.data.cog.finish_cog` (DEFLATE, "
        f"predictor, overviews); {repeats} rounds round-robin, medians. The synthetic scene's DN are noisy, so "
        "compression ratios are lower than on real scenes; the times are what matter.",
        "",
        "| staging codec | write | COG conversion | both | staging size | COG size |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, values in results.items():
        write = median([v[0] for v in values])
        convert = median([v[1] for v in values])
        lines.append(f"| {name} | {write:.2f} s | {convert:.2f} s | {median([v[0] + v[1] for v in values]):.2f} s | "
                     f"{values[0][2] / 2**20:.0f} MiB | {values[0][3] / 2**20:.0f} MiB |")
    lines += ["", f"- the three COGs hold the same pixels: {'yes' if same else 'NO'}", ""]
    for path in folder.iterdir():
        path.unlink()
    write_results(lines, out or RESULTS_COG)
    return 0


def write_results(lines: list[str], path: Path) -> None:
    """Print the report and write it (:func:`benchmarks._common.write_report`)."""
    write_report("\n".join(lines), path)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the measurements, print and write the markdown report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"the defaults run at {QUICK_SIZE} px")
    parser.add_argument("--memory", action="store_true", help=f"peak RSS at 2048 px against {SENTINEL2_TILE} px")
    parser.add_argument("--smoke", action="store_true", help="CI: 256 and 512 px, tiny U-Net, mask off")
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default benchmarks/results/...)"
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=BUDGET_MINUTES,
        help="--memory: largest estimated run time for the 10980 px scene with the default model",
    )
    parser.add_argument(
        "--batch", type=int, default=BATCH, help="tiles per forward pass (default: infer_scene's, 1 on CPU)"
    )
    parser.add_argument("--profile", action="store_true",
                        help=f"stage times of the default at {PROFILE_SIZE} px ({PROFILE_QUICK_SIZE} with --quick), "
                             "fast path against plain")
    parser.add_argument("--whole-tile", action="store_true",
                        help=f"the default, fast path, on a whole {SENTINEL2_TILE} px tile (and 2048 px for memory)")
    parser.add_argument("--model", default="sscr_lite", choices=sorted(MODELS),
                        help="--whole-tile: the network (default sscr_lite, its own default widths)")
    parser.add_argument("--mask", default="default",
                        help="--whole-tile: `sscr infer --mask` (default: the default, s2cloudless at 10 m)")
    parser.add_argument("--repeats", type=int, default=2, help="--profile, --cog: rounds of the round-robin")
    parser.add_argument("--cog", action="store_true", help="the staging file's codec: write + COG conversion")
    parser.add_argument("--floor", action="store_true",
                        help="s2cloudless per pixel and the network per tile, each alone: a whole tile's floor")
    parser.add_argument("--models", default=",".join(PROFILE_MODELS),
                        help="--profile: comma-separated networks (e.g. multisarv2,uncrtaints: no mask)")
    parser.add_argument(
        "--worker", nargs=5, metavar=("SIZE", "MODEL", "MASK", "SMOKE", "BATCH"), help=argparse.SUPPRESS
    )
    parser.add_argument("--speed", default="fast", choices=sorted(SPEEDS), help=argparse.SUPPRESS)
    parser.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        size, model_key, mask, smoke, batch = args.worker
        worker(int(size), model_key, mask, bool(int(smoke)), int(batch) or None, args.speed, args.keep)
        return 0
    if args.profile:
        return profile(argv, args.quick, args.repeats, args.out, tuple(args.models.split(",")))
    if args.whole_tile:
        return whole_tile(argv, args.model, args.out, args.mask)
    if args.cog:
        return staging_codecs(argv, max(args.repeats, 3), args.out)
    if args.floor:
        return floor(argv, max(args.repeats, 3), args.out)

    load = os.getloadavg()[0]
    notes: list[str] = []
    runs: list[Run] = []
    run = functools.partial(measure, batch=args.batch)
    title = "Full-scene inference: `sscr infer`'s defaults per model"
    if args.smoke:
        title = "Full-scene inference: throughput and memory"
        runs += [run(256, "tiny-unet", "none", smoke=True), run(512, "tiny-unet", "none", smoke=True)]
    elif args.memory:
        title = "Full-scene inference: throughput and memory"
        runs += memory_runs(run, args.budget_minutes, notes)
    else:
        size = QUICK_SIZE if args.quick else DEFAULT_SIZE
        runs += [run(size, model_key, mask) for model_key, mask in DEFAULTS]
        scale = tiles_of(SENTINEL2_TILE) / tiles_of(size)
        for each in runs:
            notes.append(
                f"- {each.model}, --mask {each.mask}: a whole {SENTINEL2_TILE} px tile in about "
                f"{each.seconds * scale / 60:.0f} min at this rate ({tiles_of(SENTINEL2_TILE)} vs {each.tiles} tiles)"
            )

    import torch

    lines = [
        f"# {title}",
        "",
        f"`{command_line(NAME, argv)}`, "
        f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
        f"(load average {load:.1f} at start, shared with other jobs), torch {torch.__version__} "
        f"with {torch.get_num_threads()} threads, no GPU. Tile {TILE}, overlap {OVERLAP}, "
        f"batch {'infer_scene default' if args.batch is None else args.batch}; randomly initialised models; each run in "
        "a fresh process (peak RSS = its ru_maxrss; RSS sampled every 0.2 s for the first quarter of the run).",
        "",
        *table(runs),
        "",
        *memory_ratios(runs),
        *notes,
        "",
    ]
    text = "\n".join(lines)
    print("\n" + text)
    results = args.out or (RESULTS_SMOKE if args.smoke else RESULTS_MEMORY if args.memory
                           else RESULTS_QUICK if args.quick else RESULTS)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
