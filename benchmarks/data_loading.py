"""Data loading: samples per second of 256 x 256 SEN12MS-CR triplets read from GeoTIFF.

    python -m benchmarks.data_loading            # the embedded default sample (40 triplets), 5 rounds
    python -m benchmarks.data_loading --quick    # 3 rounds, 4 samples for the on-the-fly masks
    python -m benchmarks.data_loading --smoke    # CI: 64 px sample of 10 triplets, 1 round

Variants, timed round-robin in the same process (medians of the rounds; one untimed warm-up
round, so every file is in the page cache: this measures decoding and CPU work, not the disk):

- ``raw read``: ``rasterio.open(path).read()`` of the three files of each triplet (S1, S2, S2
  cloudy), nothing else: the floor any GeoTIFF data set pays;
- ``raw read + mask file``: the same plus the band of the precomputed mask file (four files);
- ``SEN12MSCR, precomputed masks``: ``dataset[i]`` with ``masks_dir`` (stage ``cloudmasks``);
- ``SEN12MSCR, s2cloudless on the fly``: ``dataset[i]`` without ``masks_dir`` (one LightGBM thread,
  as in a DataLoader worker), on the first ``--fly-samples`` triplets only: it is 2 orders of
  magnitude slower.

Then where the data set's time goes: each step of ``SEN12MSCR.__getitem__`` timed on its own
(the same library calls, in the same order), and a cProfile of ``dataset[i]`` over the sample.
Targets (issue #7): precomputed >= 20x the on-the-fly rate and >= 70 % of the raw-read rate.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio

from benchmarks._common import (
    command_line,
    interleaved,
    machine_line,
    median,
    mode_of,
    results_path,
    sample_on_disk,
    spread,
    tiny_overrides,
    write_report,
)
from benchmarks.physical_bounds import page_cache_reader, sample_files

NAME = "data_loading"
TARGET_VS_FLY = 20.0
TARGET_VS_RAW = 0.70
MODALITIES = ("s1", "s2", "s2_cloudy")


def _read(path: Path, band: int | None = None) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read() if band is None else src.read(band)


def _mask_band(masks_dir: Path, triplet: object, kind: str) -> tuple[Path, int]:
    from sscr.data.masks import mask_path

    path = mask_path(masks_dir, triplet.pid)  # type: ignore[attr-defined]
    with rasterio.open(path) as src:
        return path, list(src.descriptions).index(kind) + 1


def variants(
    params: object, fly_samples: int
) -> tuple[dict[str, Callable[[], None]], dict[str, int], object]:
    """The timed variants, how many samples each reads per round, and the precomputed data set."""
    from sscr.data.dataset import SEN12MSCR

    data, masks = params.data, params.masks  # type: ignore[attr-defined]
    precomputed = SEN12MSCR(
        data.root, split=None, cloud_mask=masks.use, masks_dir=masks.dir, patch_size=data.patch_size
    )
    on_the_fly = SEN12MSCR(
        data.root, split=None, cloud_mask=masks.use, masks_dir=None, patch_size=data.patch_size
    )
    triplets = precomputed.triplets
    paths = [[t.path(m) for m in MODALITIES] for t in triplets]
    mask_bands = [_mask_band(Path(masks.dir), t, masks.use) for t in triplets]
    fly = min(fly_samples, len(on_the_fly))

    def raw() -> None:
        for triplet_paths in paths:
            for path in triplet_paths:
                _read(path)

    def raw_and_mask() -> None:
        for triplet_paths, (mask_file, band) in zip(paths, mask_bands, strict=True):
            for path in triplet_paths:
                _read(path)
            _read(mask_file, band)

    def dataset_precomputed() -> None:
        for index in range(len(precomputed)):
            precomputed[index]

    def dataset_on_the_fly() -> None:
        for index in range(fly):
            on_the_fly[index]

    timed = {
        "raw read (3 files)": raw,
        "raw read + mask file (4 files)": raw_and_mask,
        "SEN12MSCR, precomputed masks": dataset_precomputed,
        "SEN12MSCR, s2cloudless on the fly": dataset_on_the_fly,
    }
    counts = {name: len(triplets) for name in timed}
    counts["SEN12MSCR, s2cloudless on the fly"] = fly
    return timed, counts, precomputed


# ---------------------------------------------------------------- where the data set's time goes


def steps_of_getitem(dataset: object) -> Callable[[dict[str, float]], None]:
    """A function running ``dataset[i]`` for every i, step by step, adding each step's seconds to a dict.

    The steps are the calls ``SEN12MSCR.__getitem__`` makes, in its order; their sum is checked
    against the timed ``dataset[i]`` in the report.
    """
    import torch

    from sscr.data.index import check_content
    from sscr.data.io import normalize_s1, normalize_s2, read_raster
    from sscr.data.masks import coverage, read_mask

    size = dataset.patch_size  # type: ignore[attr-defined]

    def run(totals: dict[str, float]) -> None:
        clock = time.perf_counter

        def step(name: str, started: float) -> float:
            now = clock()
            totals[name] = totals.get(name, 0.0) + now - started
            return now

        for triplet in dataset.triplets:  # type: ignore[attr-defined]
            t = clock()
            s1_db, info = read_raster(triplet.path("s1"), 2, "S1", size)
            t = step("read S1 GeoTIFF (2 x float32)", t)
            target_dn, _ = read_raster(triplet.path("s2"), 13, "S2", size)
            t = step("read S2 GeoTIFF (13 x uint16)", t)
            cloudy_dn, _ = read_raster(triplet.path("s2_cloudy"), 13, "S2 cloudy", size)
            t = step("read S2 cloudy GeoTIFF (13 x uint16)", t)
            check_content(triplet, s1_db, target_dn)
            t = step("check content (all-NaN S1, blank S2)", t)
            mask = read_mask(dataset.masks_dir, triplet.pid, dataset.cloud_mask).astype(np.float32)  # type: ignore[attr-defined]
            t = step("read precomputed mask (1 band of 3)", t)
            sar, cloudy, target = normalize_s1(s1_db), normalize_s2(cloudy_dn), normalize_s2(target_dn)
            t = step("normalise S1 + 2 x S2 to [0, 1] float32", t)
            tensors = [torch.from_numpy(a) for a in (sar, cloudy, target, mask)]
            cover = coverage(mask)
            t = step("torch.from_numpy x 4 + coverage", t)
            meta = {
                "crs": info.crs.to_string() if info.crs else "",
                "transform": torch.tensor(list(info.transform)[:6], dtype=torch.float64),
                "paths": [str(triplet.path(m)) for m in MODALITIES],
            }
            step("metadata (CRS string, transform, paths)", t)
            del tensors, cover, meta

    return run


def profile_top(dataset: object, rows: int) -> str:
    """cProfile of ``dataset[i]`` over the whole sample: the top functions by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    for index in range(len(dataset)):  # type: ignore[arg-type]
        dataset[index]  # type: ignore[index]
    profiler.disable()
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(rows)
    lines = text.getvalue().strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("ncalls"))
    head = [line for line in lines[:start] if "function calls" in line]
    root = str(Path(__file__).resolve().parents[1])
    return "\n".join(line.replace(root + "/", "") for line in head + [""] + lines[start:])


# ---------------------------------------------------------------- the report


def main(argv: list[str] | None = None) -> int:
    """Run the measurements, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 4 on-the-fly samples")
    parser.add_argument("--smoke", action="store_true", help="CI size: 64 px sample, 1 round")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (default 5; quick 3; smoke 1)"
    )
    parser.add_argument(
        "--fly-samples",
        type=int,
        default=None,
        help="samples per round for the on-the-fly masks (default 8; quick 4; smoke 2)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default benchmarks/results/...)"
    )
    args = parser.parse_args(argv)
    mode = mode_of(args.quick, args.smoke)
    repeats = args.repeats or {"full": 5, "quick": 3, "smoke": 1}[mode]
    fly_samples = args.fly_samples or {"full": 8, "quick": 4, "smoke": 2}[mode]
    started = time.perf_counter()

    params = sample_on_disk(
        "smoke" if mode == "smoke" else "default", tiny_overrides() if mode == "smoke" else None
    )
    timed, counts, dataset = variants(params, fly_samples)
    read_files, read_bytes = page_cache_reader(sample_files(params))
    timed["page-cache read of every file (bound)"] = read_files
    print(f"timing {len(timed)} variants, {repeats} rounds after a warm-up ...", flush=True)
    times = interleaved(timed, repeats)
    per_sample = {name: median(times[name]) / counts[name] for name in counts}

    step_totals: list[dict[str, float]] = []
    run_steps = steps_of_getitem(dataset)
    for _ in range(repeats + 1):
        totals: dict[str, float] = {}
        run_steps(totals)
        step_totals.append(totals)
    step_totals = step_totals[1:]  # the first round warms up
    steps = {name: median([t[name] for t in step_totals]) / len(dataset) for name in step_totals[0]}

    raw_name, pre_name = "raw read (3 files)", "SEN12MSCR, precomputed masks"
    fly_name = "SEN12MSCR, s2cloudless on the fly"
    file_bytes = {name: 0 for name in counts}
    triplet_bytes = sum(t.path(m).stat().st_size for t in dataset.triplets for m in MODALITIES) / len(dataset)
    from sscr.data.masks import mask_path

    mask_bytes = sum(mask_path(params.masks.dir, t.pid).stat().st_size for t in dataset.triplets) / len(
        dataset
    )
    for name in counts:
        file_bytes[name] = triplet_bytes + (mask_bytes if "mask" in name and "fly" not in name else 0)
    read_mb_s = read_bytes / median(times["page-cache read of every file (bound)"]) / 1e6

    size = params.data.patch_size
    lines = [
        f"# Data loading: samples/s of {size} x {size} triplets from GeoTIFF",
        "",
        f"Command: `{command_line(NAME, argv)}` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.perf_counter() - started) / 60:.0f} min). Machine: {machine_line()}.",
        f"Sample: the embedded default ({len(dataset)} triplets of {size} px, deflate-compressed GeoTIFFs as "
        f"`sscr data synth` writes them, {triplet_bytes / 1e6:.2f} MB per triplet on disk + "
        f"{mask_bytes / 1e6:.2f} MB of mask file); one process, no DataLoader workers. Medians of {repeats} "
        "round(s) after a warm-up round, variants interleaved round-robin; files in the page cache.",
        "",
        "| variant | samples/s | ms / sample | spread | vs raw read | file MB/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in counts:
        seconds = per_sample[name]
        lines.append(
            f"| {name} | {1 / seconds:,.1f} | {seconds * 1e3:,.2f} | {spread(times[name])} | "
            f"{per_sample[raw_name] / seconds:.2f} | {file_bytes[name] / seconds / 1e6:,.0f} |"
        )
    lines.append(
        f"| page-cache read of the same files (bound) | - | - | "
        f"{spread(times['page-cache read of every file (bound)'])} | - | {read_mb_s:,.0f} |"
    )
    vs_fly = per_sample[fly_name] / per_sample[pre_name]
    vs_raw = per_sample[raw_name] / per_sample[pre_name]
    lines += [
        "",
        f"- precomputed / on the fly: **{vs_fly:,.0f}x** (target >= {TARGET_VS_FLY:.0f}x: "
        f"{'met' if vs_fly >= TARGET_VS_FLY else 'NOT met'})",
        f"- precomputed / raw read: **{vs_raw:.0%}** (target >= {TARGET_VS_RAW:.0%}: "
        f"{'met' if vs_raw >= TARGET_VS_RAW else 'NOT met'})",
        f"- the data set moves {file_bytes[pre_name] / per_sample[pre_name] / 1e6:,.0f} MB/s of file bytes, "
        f"{file_bytes[pre_name] / per_sample[pre_name] / 1e6 / read_mb_s:.1%} of the page-cache read rate: "
        "the cost is decoding and per-file work, not bytes",
        "",
        "## Where the time of `SEN12MSCR[i]` (precomputed masks) goes",
        "",
        "Each step of `__getitem__` timed on its own (same calls, same order), median of the rounds:",
        "",
        "| step | ms / sample | share |",
        "| --- | ---: | ---: |",
    ]
    total = sum(steps.values())
    for name, seconds in steps.items():
        lines.append(f"| {name} | {seconds * 1e3:.2f} | {seconds / total:.0%} |")
    lines += [
        f"| **sum of the steps** (timed `dataset[i]`: {per_sample[pre_name] * 1e3:.2f}) | "
        f"**{total * 1e3:.2f}** | 100% |",
        "",
        "cProfile of `dataset[i]` over the sample (top functions by own time):",
        "",
        "```",
        profile_top(dataset, 12),
        "```",
        "",
    ]
    write_report("\n".join(lines), results_path(NAME, mode, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
