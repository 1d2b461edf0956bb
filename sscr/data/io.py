"""Reading and writing SEN12MS-CR GeoTIFFs, with checks that name the file and the fix.

All raster I/O goes through rasterio. Readers validate band count, size and
dtype-compatible content and raise :class:`PatchError` (a ``ValueError``)
carrying the offending path, so a data set of 100,000 files can report which
one is bad instead of failing deep inside a batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.io import MemoryFile

from sscr.bands import S1_BANDS, S1_CHANNELS, S1_DB_RANGE, S2_BANDS, S2_DN_MAX
from sscr.fsutil import atomic_path, why_not_a_file


class PatchError(ValueError):
    """A GeoTIFF that cannot be used as it is; ``path`` names it, the message says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")

    def __reduce__(self) -> tuple[type[PatchError], tuple[Path, str]]:
        # Rebuilt from (path, reason), not from the message: an error raised in a worker process must
        # cross back to the parent (a ProcessPoolExecutor otherwise dies with BrokenProcessPool).
        return type(self), (self.path, self.reason)


def check_s2_dtype(path: str | Path, dtype: str | np.dtype, kind: str = "S2") -> None:
    """Refuse an S2 raster that is not integer DN (SEN12MS-CR and L1C: uint16, reflectance x 10000).

    A float S2 of reflectance in [0, 1] would otherwise pass every check and be read as DN 0..1,
    a black image: every S2 reader (patches, scenes) calls this with the file's dtype.
    """
    dtype = np.dtype(dtype)
    if not (np.issubdtype(dtype, np.integer) and dtype.itemsize >= 2):
        raise PatchError(
            path, f"{kind} is {dtype.name}, expected uint16 DN (top-of-atmosphere reflectance x 10000, as L1C and "
            "SEN12MS-CR store it): convert it, e.g. reflectance in [0, 1] with `gdal_translate -ot UInt16 -scale "
            "0 1 0 10000 in.tif out.tif`, DN stored as floats with `gdal_translate -ot UInt16 in.tif out.tif`",
        )


def check_s1_dtype(path: str | Path, dtype: str | np.dtype, kind: str = "S1") -> None:
    """Refuse an S1 raster that is not floating-point backscatter (SEN12MS-CR: float32 dB)."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise PatchError(
            path, f"{kind} is {dtype.name}, expected float32 backscatter in dB (as SEN12MS-CR stores Sentinel-1 "
            "GRD): convert calibrated linear power with 10 * log10(power) into a float32 GeoTIFF",
        )


def check_dtype(path: str | Path, dtype: str | np.dtype, kind: str) -> None:
    """:func:`check_s1_dtype` when ``kind`` starts with "S1", else :func:`check_s2_dtype`."""
    (check_s1_dtype if kind.startswith("S1") else check_s2_dtype)(path, dtype, kind)


@dataclass(frozen=True)
class RasterInfo:
    """Georeferencing of a patch, kept with each sample for export."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    def as_meta(self) -> dict[str, Any]:
        """Plain-data form for batches and JSON (CRS as WKT/EPSG string, transform as 6 floats)."""
        return {
            "crs": self.crs.to_string() if self.crs else "",
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
        }


def why_incomplete(path: str | Path) -> str | None:
    """None when ``path`` is a GeoTIFF whose every data block lies inside the file; else why not, for a message.

    Reads the header only (the block offsets and sizes the TIFF directory lists, about 4 ms a file), so a
    stage can check every file it keeps: a file cut short (a copy or an extraction that stopped) still opens,
    but its last blocks point past its end.
    """
    path = Path(path)
    problem = why_not_a_file(path)
    if problem:
        return problem
    size = path.stat().st_size
    try:
        with rasterio.open(path) as src:
            bands = range(1, src.count + 1) if src.profile.get("interleave") == "band" else (1,)
            for band in bands:
                for (row, col), _ in src.block_windows(band):
                    offset = int(src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=band) or 0)
                    length = int(src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=band) or 0)
                    if offset and offset + length > size:
                        return f"is truncated: it has {size:,} bytes, its data blocks end at byte {offset + length:,}"
    except (RasterioIOError, OSError, ValueError) as err:
        return f"is not a readable GeoTIFF ({err})"
    return None


def read_raster(
    path: str | Path,
    bands: int,
    kind: str,
    size: int | None = None,
) -> tuple[np.ndarray, RasterInfo]:
    """Read a whole GeoTIFF as (bands, H, W), checking band count, dtype and (optionally) size.

    ``kind`` ("S1", "S2", "S2 cloudy") words the error messages and picks the dtype check
    (:func:`check_dtype`).
    """
    path = Path(path)
    try:
        with rasterio.open(path) as src:
            if src.count != bands:
                raise PatchError(
                    path, f"{kind} patch has {src.count} bands, expected {bands}"
                    f" ({' '.join(S1_BANDS if bands == S1_CHANNELS else S2_BANDS)})",
                )
            if size is not None and (src.width, src.height) != (size, size):
                raise PatchError(
                    path,
                    f"{kind} patch is {src.width} x {src.height} px, expected {size} x {size}"
                    " (set data.patch_size if your patches are another size)",
                )
            check_dtype(path, src.dtypes[0], kind)
            data = src.read()
            info = RasterInfo(src.crs, src.transform, src.width, src.height)
    except PatchError:
        raise
    except (RasterioIOError, OSError, ValueError) as err:
        raise PatchError(
            path, f"cannot read {kind} GeoTIFF ({err}); the file is corrupt or truncated:"
            " delete it and download or regenerate it",
        ) from None
    return data, info


def normalize_s1(db: np.ndarray) -> np.ndarray:
    """S1 dB -> [0, 1] as the benchmark's "default": clip to [-25, 0] dB, map linearly, then NaN -> 0.

    The order matters: NaN (no backscatter) becomes 0.0, the value of -25 dB, not 0 dB = 1.0
    (REFERENCE.md section 1). One float32 copy, then in place (the data loader's hot path,
    ``benchmarks/results/data_loading.md``).
    """
    lo, hi = S1_DB_RANGE
    out = db.astype(np.float32)  # always a copy: the caller's array is left alone
    np.clip(out, lo, hi, out=out)  # +-inf clip to the range's ends; NaN stays NaN
    out -= lo
    out /= hi - lo
    np.nan_to_num(out, copy=False, nan=0.0)
    return out


def normalize_s2(dn: np.ndarray) -> np.ndarray:
    """S2 DN -> [0, 1]: NaN -> 0, clip to [0, 10000], divide by 10000 (benchmark "default").

    One float32 copy, then in place; integer DN (the L1C files' uint16) have no NaN to replace.
    """
    out = dn.astype(np.float32)
    if not np.issubdtype(dn.dtype, np.integer):
        np.nan_to_num(out, copy=False, nan=0.0)
    np.clip(out, 0.0, S2_DN_MAX, out=out)
    out /= S2_DN_MAX
    return out


def denormalize_s2(reflectance: np.ndarray) -> np.ndarray:
    """[0, 1] reflectance -> uint16 DN, as exported by evaluation and inference."""
    return np.clip(np.rint(np.asarray(reflectance, dtype=np.float64) * S2_DN_MAX), 0, 65535).astype(
        np.uint16
    )


def write_raster(
    path: str | Path,
    data: np.ndarray,
    crs: CRS | str | None,
    transform: Affine,
    band_names: tuple[str, ...] | list[str] | None = None,
    nodata: float | None = None,
    tags: dict[str, str] | None = None,
) -> Path:
    """Write (bands, H, W) as a tiled, deflate-compressed GeoTIFF atomically (temp file, rename).

    ``tags`` (GDAL metadata) are written with the data, so a file that exists is complete, tags included.
    For patch-sized arrays: the file is encoded in memory first, so a failed write raises (a full disk:
    ``OSError`` ENOSPC naming ``path``) instead of leaving a truncated file.
    """
    path = Path(path)
    count, height, width = data.shape
    profile = {
        "driver": "GTiff",
        "count": count,
        "height": height,
        "width": width,
        "dtype": data.dtype.name,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
        "nodata": nodata,
    }
    if height % 16 == 0 and width % 16 == 0:
        profile.update(tiled=True, blockxsize=min(256, width), blockysize=min(256, height))
    # Encoded in memory, then written by Python: GDAL only prints a failed write (a full disk) and leaves
    # a truncated file, Python's write raises it (ENOSPC). Patches and masks are small.
    with MemoryFile() as memory:
        with memory.open(**profile) as dst:
            dst.write(data)
            for index, name in enumerate(band_names or [], start=1):
                dst.set_band_description(index, name)
            if tags:
                dst.update_tags(**tags)
        encoded = memory.getbuffer()
        # raster.write:<name> is where reliability tests crash, between the write and the rename
        with atomic_path(path, fault_point=f"raster.write:{path.name}") as tmp:
            tmp.write_bytes(encoded)
    return path
