"""Precomputed cloud-mask files: where they live, how they are written, read and known to be current.

One GeoTIFF per sample, ``<masks_dir>/<season>/masks_<roi>/<sample id>.tif``,
holds one float32 band per mask kind (band description = kind), with the same
CRS and transform as the patch, and as tags its coverage per kind and the
content hash of the cloudy file it came from. ``coverage.csv`` beside them
lists every sample the mask stage validated, ``invalid.csv`` every sample it
found unusable (file and reason), so train and evaluate leave out the same
ones and say why. The stage that computes them is :mod:`sscr.cloudmasks`; the
data set reads them through this module.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError

from sscr.data.index import Triplet
from sscr.data.io import PatchError, write_raster
from sscr.fsutil import atomic_path, sha256_file
from sscr.layout import PatchId

COVERAGE_TABLE = "coverage.csv"
INVALID_TABLE = "invalid.csv"


def mask_path(masks_dir: str | Path, pid: PatchId) -> Path:
    """Where the precomputed masks of one sample live under ``masks_dir``."""
    return Path(masks_dir) / pid.season / f"masks_{pid.roi}" / f"{pid.name}.tif"


def coverage(mask: np.ndarray) -> float:
    """Cloud coverage of a mask: the fraction of pixels at or above 0.5 (binary masks: their mean)."""
    return float(np.mean(np.asarray(mask) >= 0.5))


def source_fingerprint(path: Path) -> str:
    """``sha256:<hex>`` of a source file's bytes: changes exactly when its content changes.

    Content, not size and mtime: a fresh clone, a copy or a re-download of the same file keeps its masks,
    and the mask file (which carries this stamp as a tag) is the same bytes on every machine, so DVC's
    lock reproduces. Checking it costs one read of the file, about 1/1000 of recomputing its masks
    (``benchmarks/results/mask_stamp.md``).
    """
    return f"sha256:{sha256_file(path)}"


def stored_coverage(path: Path, kinds: Sequence[str], fingerprint: str) -> dict[str, float] | None:
    """Coverage stored in a complete, current mask file, or None if it must be (re)computed.

    Current means: made from the cloudy file with this ``fingerprint``, holding every kind asked for.
    """
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


def write_masks(path: Path, masks: Mapping[str, np.ndarray], kinds: Sequence[str], crs: CRS | str | None,
                transform: Affine, fingerprint: str) -> dict[str, float]:
    """Write one sample's masks (one band per kind) with their coverage and source as tags; returns the coverage."""
    stack = np.stack([masks[kind].astype(np.float32) for kind in kinds])
    cover = {kind: coverage(masks[kind]) for kind in kinds}
    write_raster(path, stack, crs, transform, band_names=list(kinds),
                 tags={"source": fingerprint, **{f"coverage_{k}": repr(v) for k, v in cover.items()}})
    return cover


def write_coverage_table(
    masks_dir: Path, triplets: Sequence[Triplet], rows: dict[str, dict[str, float]], kinds: Sequence[str]
) -> Path:
    """Write ``coverage.csv`` atomically: one row per sample, one coverage column per kind."""
    table = masks_dir / COVERAGE_TABLE
    with atomic_path(table) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "season", "roi", "patch", "split", *[f"coverage_{k}" for k in kinds]])
        for triplet in triplets:
            cover = rows[triplet.pid.name]
            writer.writerow(
                [triplet.pid.name, triplet.season, triplet.pid.roi, triplet.pid.patch, triplet.split or "",
                 *[f"{cover[k]:.6f}" for k in kinds]]
            )
    return table


def has_coverage_table(masks_dir: str | Path) -> bool:
    """True once the mask stage has finished a run into ``masks_dir`` (its coverage table exists)."""
    return (Path(masks_dir) / COVERAGE_TABLE).exists()


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


def write_invalid_table(masks_dir: Path, invalid: Sequence[PatchError]) -> Path:
    """Write ``invalid.csv`` atomically: one row per sample the mask stage left out (sample id, file, reason)."""
    table = Path(masks_dir) / INVALID_TABLE
    with atomic_path(table) as tmp, tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample_id", "path", "reason"])
        for error in sorted(invalid, key=lambda e: str(e.path)):
            parsed = PatchId.from_filename(error.path.name)
            writer.writerow([parsed[0].name if parsed else "", str(error.path), error.reason])
    return table


def read_invalid_table(masks_dir: str | Path) -> dict[str, PatchError]:
    """The samples the mask stage found unusable, by sample id, as the errors it recorded (empty if none)."""
    table = Path(masks_dir) / INVALID_TABLE
    if not table.exists():
        return {}
    with table.open(newline="") as handle:
        return {row["sample_id"]: PatchError(row["path"], row["reason"])
                for row in csv.DictReader(handle) if row["sample_id"]}
