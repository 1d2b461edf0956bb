"""Precompute cloud masks for every triplet once (stage ``cloudmasks``).

s2cloudless costs about 0.8 s per 256 x 256 patch on one core, a day of CPU
over SEN12MS-CR, so masks are computed once, in parallel, and read back by the
data set. One GeoTIFF per sample holds one float32 band per mask kind (band
description = kind), with the same CRS and transform as the patch, and its
coverage per kind and the fingerprint of the cloudy file it came from as tags.
Files are written atomically, so an interrupted run leaves only complete
files; a rerun skips every sample whose file is complete and current.
"""

from __future__ import annotations

import csv
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from tqdm import tqdm

from sscr.data.index import Triplet, check_content, index_dataset
from sscr.data.io import PatchError, read_raster, write_raster
from sscr.data.layout import PatchId

COVERAGE_TABLE = "coverage.csv"


def mask_path(masks_dir: str | Path, pid: PatchId) -> Path:
    """Where the precomputed masks of one sample live under ``masks_dir``."""
    return Path(masks_dir) / pid.season / f"masks_{pid.roi}" / f"{pid.name}.tif"


def coverage(mask: np.ndarray) -> float:
    """Cloud coverage of a mask: the fraction of pixels at or above 0.5 (binary masks: their mean)."""
    return float(np.mean(np.asarray(mask) >= 0.5))


def source_fingerprint(path: Path) -> str:
    """Size and modification time of a source file: changes when the file is rewritten."""
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


@dataclass
class MaskReport:
    """Outcome of a precomputation run."""

    computed: int = 0
    skipped: int = 0
    invalid: list[str] = field(default_factory=list)
    table: Path | None = None


def _existing_coverage(path: Path, kinds: Sequence[str], fingerprint: str) -> dict[str, float] | None:
    """Coverage stored in a complete, current mask file, or None if it must be (re)computed."""
    if not path.exists():
        return None
    try:
        with rasterio.open(path) as src:
            tags = src.tags()
            present = set(src.descriptions)
    except (RasterioIOError, OSError):
        return None
    if tags.get("source") != fingerprint or not set(kinds) <= present:
        return None
    try:
        return {kind: float(tags[f"coverage_{kind}"]) for kind in kinds}
    except (KeyError, ValueError):
        return None


def compute_sample(triplet: Triplet, masks_dir: Path, kinds: Sequence[str], patch_size: int | None) -> tuple[
    str, dict[str, float], bool
]:
    """Compute (or reuse) the masks of one triplet; returns (sample id, coverage per kind, computed?)."""
    from sscr.clouds.detect import compute_masks

    cloudy_path = triplet.path("s2_cloudy")
    fingerprint = source_fingerprint(cloudy_path)
    out = mask_path(masks_dir, triplet.pid)
    done = _existing_coverage(out, kinds, fingerprint)
    if done is not None:
        return triplet.pid.name, done, False
    dn, info = read_raster(cloudy_path, 13, "S2 cloudy", patch_size)
    # The data set refuses these at training time: find them here, where on_error=skip can leave them out.
    check_content(triplet, read_raster(triplet.path("s1"), 2, "S1", patch_size)[0],
                  read_raster(triplet.path("s2"), 13, "S2", patch_size)[0])
    masks = compute_masks(dn, list(kinds))
    stack = np.stack([masks[kind].astype(np.float32) for kind in kinds])
    cover = {kind: coverage(masks[kind]) for kind in kinds}
    write_raster(out, stack, info.crs, info.transform, band_names=list(kinds),
                 tags={"source": fingerprint, **{f"coverage_{k}": repr(v) for k, v in cover.items()}})
    return triplet.pid.name, cover, True


def _worker_init() -> None:
    # One LightGBM / BLAS thread per process: the parallelism is across processes.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def precompute_masks(
    root: str | Path,
    masks_dir: str | Path,
    kinds: Sequence[str],
    seasons: Sequence[str] | None = None,
    patch_size: int | None = 256,
    workers: int = 2,
    on_error: str = "raise",
    progress: bool = True,
) -> MaskReport:
    """Compute the masks of every triplet under ``root`` into ``masks_dir``, plus the coverage table.

    Resumable: samples whose mask file is complete and newer than their cloudy
    patch are skipped. The table (``coverage.csv``) lists sample id, season,
    ROI, patch, split and coverage per mask kind, for every indexed sample.
    """
    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    index = index_dataset(root, seasons=seasons, patch_size=patch_size, on_error=on_error)
    report = MaskReport(invalid=[str(err) for err in index.invalid])
    rows: dict[str, dict[str, float]] = {}
    by_name = {t.pid.name: t for t in index.triplets}

    def record(result: tuple[str, dict[str, float], bool]) -> None:
        name, cover, computed = result
        rows[name] = cover
        if computed:
            report.computed += 1
        else:
            report.skipped += 1

    bar = tqdm(total=len(index.triplets), desc="cloud masks", unit="patch", disable=not progress)
    if workers <= 1:
        for triplet in index.triplets:
            try:
                record(compute_sample(triplet, masks_dir, kinds, patch_size))
            except PatchError as err:
                if on_error == "raise":
                    raise
                report.invalid.append(str(err))
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = {
                pool.submit(compute_sample, t, masks_dir, kinds, patch_size): t for t in index.triplets
            }
            for future in as_completed(futures):
                try:
                    record(future.result())
                except PatchError as err:
                    if on_error == "raise":
                        for pending in futures:
                            pending.cancel()
                        raise
                    report.invalid.append(str(err))
                bar.update()
    bar.close()
    report.table = write_coverage_table(masks_dir, [by_name[n] for n in sorted(rows)], rows, kinds)
    return report


def write_coverage_table(
    masks_dir: Path, triplets: Sequence[Triplet], rows: dict[str, dict[str, float]], kinds: Sequence[str]
) -> Path:
    """Write ``coverage.csv`` atomically: one row per sample, one coverage column per kind."""
    table = masks_dir / COVERAGE_TABLE
    tmp = table.with_suffix(".csv.partial")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "season", "roi", "patch", "split", *[f"coverage_{k}" for k in kinds]])
        for triplet in triplets:
            cover = rows[triplet.pid.name]
            writer.writerow(
                [triplet.pid.name, triplet.season, triplet.pid.roi, triplet.pid.patch, triplet.split or "",
                 *[f"{cover[k]:.6f}" for k in kinds]]
            )
    tmp.replace(table)
    return table


def read_coverage_table(masks_dir: str | Path) -> dict[str, dict[str, float]]:
    """Coverage per kind for each sample id, from ``coverage.csv`` (empty if there is none)."""
    table = Path(masks_dir) / COVERAGE_TABLE
    if not table.exists():
        return {}
    with table.open(newline="") as handle:
        return {
            row["sample_id"]: {
                key.removeprefix("coverage_"): float(value)
                for key, value in row.items() if key.startswith("coverage_")
            }
            for row in csv.DictReader(handle)
        }


def read_mask(masks_dir: str | Path, pid: PatchId, kind: str) -> np.ndarray:
    """Read one precomputed mask band of a sample as (H, W) float32; clear error if absent."""
    path = mask_path(masks_dir, pid)
    if not path.exists():
        raise FileNotFoundError(
            f"no precomputed masks for sample {pid.name} at {path}; run `sscr masks` "
            "(or `dvc repro cloudmasks`) first, or unset masks.dir to compute masks on the fly"
        )
    try:
        with rasterio.open(path) as src:
            descriptions = list(src.descriptions)
            if kind not in descriptions:
                raise PatchError(path, f"has no {kind!r} band (bands: {descriptions}); rerun `sscr masks`"
                                 f" with {kind} in masks.kinds")
            return src.read(descriptions.index(kind) + 1).astype(np.float32)
    except (RasterioIOError, OSError) as err:
        raise PatchError(path, f"cannot read mask file ({err}); delete it and rerun `sscr masks`") from None
