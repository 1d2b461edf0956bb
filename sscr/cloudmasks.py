"""Stage ``cloudmasks``: compute the cloud masks of every triplet once, in parallel, resumably.

s2cloudless costs about 0.8 s per 256 x 256 patch on one core, a day of CPU
over SEN12MS-CR, so masks are computed once and read back by the data set.
The files and the coverage table are :mod:`sscr.data.masks`'s; they are
written atomically, so an interrupted run leaves only complete files, and a
rerun skips every sample whose file is complete and current.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sscr.bands import S1_CHANNELS, S2_CHANNELS
from sscr.clouds.detect import compute_masks
from sscr.data.index import Triplet, check_content, index_dataset
from sscr.data.io import PatchError, read_raster
from sscr.data.masks import mask_path, source_fingerprint, stored_coverage, write_coverage_table, write_masks


@dataclass
class MaskReport:
    """Outcome of a precomputation run."""

    computed: int = 0
    skipped: int = 0
    invalid: list[str] = field(default_factory=list)
    table: Path | None = None


def compute_sample(triplet: Triplet, masks_dir: Path, kinds: Sequence[str], patch_size: int | None) -> tuple[
    str, dict[str, float], bool
]:
    """Compute (or reuse) the masks of one triplet; returns (sample id, coverage per kind, computed?)."""
    cloudy_path = triplet.path("s2_cloudy")
    fingerprint = source_fingerprint(cloudy_path)
    out = mask_path(masks_dir, triplet.pid)
    done = stored_coverage(out, kinds, fingerprint)
    if done is not None:
        return triplet.pid.name, done, False
    dn, info = read_raster(cloudy_path, S2_CHANNELS, "S2 cloudy", patch_size)
    # The data set refuses these at training time: find them here, where on_error=skip can leave them out.
    check_content(triplet, read_raster(triplet.path("s1"), S1_CHANNELS, "S1", patch_size)[0],
                  read_raster(triplet.path("s2"), S2_CHANNELS, "S2", patch_size)[0])
    masks = compute_masks(dn, list(kinds))
    cover = write_masks(out, masks, kinds, info.crs, info.transform, fingerprint)
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

    Resumable: samples whose mask file is complete and stamped with the content hash
    of their cloudy patch as it is now are skipped. The table (``coverage.csv``) lists sample id, season,
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
