"""Stage ``cloudmasks``: check every triplet, compute its cloud masks once, in parallel, resumably.

s2cloudless costs about 0.8 s per 256 x 256 patch on one core, a day of CPU
over SEN12MS-CR, so masks are computed once and read back by the data set.
The files and the tables are :mod:`sscr.data.masks`'s; they are written
atomically, so an interrupted run leaves only complete files, and a rerun
skips every sample whose mask file is complete and current. The stage is also
the data set's validator: it reads all three files of every triplet on every
run (a mask is reused when its cloudy file is unchanged, but the S1 or clear
S2 beside it may have changed), lists the usable samples in ``coverage.csv``
and the unusable ones in ``invalid.csv``, and train and evaluate leave out the
same ones. Worker processes die with the stage's process.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from sscr.bands import S1_CHANNELS, S2_CHANNELS
from sscr.clouds.detect import compute_masks
from sscr.data.index import Triplet, check_content, index_dataset
from sscr.data.io import PatchError, read_raster
from sscr.data.masks import (
    mask_path,
    source_fingerprint,
    stored_coverage,
    write_coverage_table,
    write_invalid_table,
    write_masks,
)


@dataclass
class MaskReport:
    """Outcome of a precomputation run: counts, and everything left out with the file and the reason."""

    computed: int = 0
    skipped: int = 0
    invalid: list[PatchError] = field(default_factory=list)
    unpaired: list[PatchError] = field(default_factory=list)
    stray: list[PatchError] = field(default_factory=list)
    table: Path | None = None
    invalid_table: Path | None = None

    def dropped(self) -> dict[str, list[PatchError]]:
        """What was left out, by reason (only reasons that occurred), as :meth:`IndexReport.dropped`."""
        groups = {"unpaired": self.unpaired, "not_a_patch_file": self.stray, "invalid": self.invalid}
        return {reason: errors for reason, errors in groups.items() if errors}


@dataclass(frozen=True)
class SampleResult:
    """One triplet's outcome, returned as data from a worker: coverage per kind, or the error that rules it out."""

    name: str
    coverage: dict[str, float] | None
    computed: bool
    error: PatchError | None = None


def compute_sample(triplet: Triplet, masks_dir: Path, kinds: Sequence[str], patch_size: int | None) -> SampleResult:
    """Check one triplet's three files, then compute (or reuse) its masks.

    The check runs even when the masks are reused: they depend on the cloudy file only,
    but the S1 and clear S2 beside it are this stage's to vouch for too. A bad file is
    returned as the result's ``error`` (not raised), so any number of workers report it
    the way one does.
    """
    cloudy_path = triplet.path("s2_cloudy")
    try:
        s1_db, _ = read_raster(triplet.path("s1"), S1_CHANNELS, "S1", patch_size)
        target_dn, _ = read_raster(triplet.path("s2"), S2_CHANNELS, "S2", patch_size)
        dn, info = read_raster(cloudy_path, S2_CHANNELS, "S2 cloudy", patch_size)
        check_content(triplet, s1_db, target_dn)
    except PatchError as err:
        return SampleResult(triplet.pid.name, None, False, err)
    fingerprint = source_fingerprint(cloudy_path)
    out = mask_path(masks_dir, triplet.pid)
    done = stored_coverage(out, kinds, fingerprint)
    if done is not None:
        return SampleResult(triplet.pid.name, done, False)
    masks = compute_masks(dn, list(kinds))
    cover = write_masks(out, masks, kinds, info.crs, info.transform, fingerprint)
    return SampleResult(triplet.pid.name, cover, True)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_init(parent: int) -> None:
    # One LightGBM / BLAS thread per process: the parallelism is across processes.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Die with the stage: a killed `sscr masks` must not leave workers writing masks nobody asked for.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


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
    """Check every triplet under ``root`` and compute its masks into ``masks_dir``, plus the two tables.

    Resumable: samples whose mask file is complete and stamped with the content hash
    of their cloudy patch as it is now are not recomputed (but still checked).
    ``coverage.csv`` lists sample id, season, ROI, patch, split and coverage per mask
    kind for every usable sample; ``invalid.csv`` the samples left out under
    ``on_error: skip`` with their file and reason. With ``on_error: raise`` the first
    unpaired file or bad triplet stops the run, named, and both tables stay as they were.
    """
    masks_dir = Path(masks_dir)
    masks_dir.mkdir(parents=True, exist_ok=True)
    index = index_dataset(root, seasons=seasons, patch_size=patch_size, on_error=on_error)
    report = MaskReport(invalid=list(index.invalid), unpaired=index.unpaired, stray=index.stray)
    rows: dict[str, dict[str, float]] = {}
    by_name = {t.pid.name: t for t in index.triplets}

    def record(result: SampleResult) -> None:
        if result.error is not None:
            if on_error == "raise":
                raise result.error
            report.invalid.append(result.error)
            return
        assert result.coverage is not None
        rows[result.name] = result.coverage
        if result.computed:
            report.computed += 1
        else:
            report.skipped += 1

    with tqdm(total=len(index.triplets), desc="cloud masks", unit="patch", disable=not progress) as bar:
        if workers <= 1:
            for triplet in index.triplets:
                record(compute_sample(triplet, masks_dir, kinds, patch_size))
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                     initargs=(os.getpid(),)) as pool:
                futures = [pool.submit(compute_sample, t, masks_dir, kinds, patch_size) for t in index.triplets]
                try:
                    for future in as_completed(futures):
                        record(future.result())
                        bar.update()
                except BaseException:
                    for pending in futures:
                        pending.cancel()
                    raise
    report.invalid.sort(key=lambda err: str(err.path))
    report.table = write_coverage_table(masks_dir, [by_name[n] for n in sorted(rows)], rows, kinds)
    report.invalid_table = write_invalid_table(masks_dir, report.invalid)
    return report
