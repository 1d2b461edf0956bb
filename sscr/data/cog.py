"""Cloud-Optimized GeoTIFF outputs: prediction, variance and cloud mask, written by windows, then as COG.

A COG cannot be written window by window: its overviews and the order of its blocks are
known only when the whole image is. The tiled inference therefore writes a tiled
GeoTIFF by windows (:func:`create_staging`), and :func:`finish_cog` copies it with GDAL's
COG driver (``rasterio.shutil.copy(..., driver="COG")``, GDAL >= 3.1): 512 px blocks,
DEFLATE with the predictor for the data type, internal overviews (average for reflectance
and variance, nearest for the mask), then renames it into place and removes the staging
file, so a COG that exists is complete.

Each layer (:class:`LayerSpec`) carries its band names, no-data value, and GDAL scale
and offset such that value * scale + offset is the physical quantity:

- prediction: 13 bands uint16 L1C DN in the *input's* radiometric convention
  (:class:`~sscr.data.sentinel2.Radiometry`): a product of baseline >= 04.00 is written
  with its RADIO_ADD_OFFSET put back (DN = reflectance x 10000 + 1000), so tools that know
  L1C read it as they read the input; scale 1 / QUANTIFICATION_VALUE and offset
  RADIO_ADD_OFFSET / QUANTIFICATION_VALUE give reflectance either way; 0 = no data;
- variance: float32 variance of the [0, 1] reflectance (13 bands, or 1 when isotropic), NaN = no data;
- cloud mask: uint8 cloud probability in percent (0..100, scale 0.01), 255 = no data.

Tags (:func:`output_tags`) record the model, its version and what was done to the inputs.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from sscr.bands import S2_BANDS
from sscr.data.regrid import Grid
from sscr.data.sentinel2 import NODATA_DN, Radiometry
from sscr.fsutil import atomic_path, disk_full, temporary_path

COG_BLOCKSIZE = 512
GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL's block cache while a scene is read, written and converted (``rasterio.Env(GDAL_CACHEMAX=...)``).

In bytes: rasterio hands an integer to GDAL as a byte count, so the ``GDAL_CACHEMAX=64`` this
replaces was a 64-byte cache, not 64 MB: every block was decoded again for each read that
touched it, and the COG conversion of a 2048 px prediction took 10 s instead of 1.7
(``benchmarks/results/scene_inference_whole_tile.md``). Tiles are read once or twice; a
bigger cache only costs RAM.
"""
COMPRESS = "DEFLATE"
MASK_NODATA = 255
MASK_SCALE = 0.01


@dataclass(frozen=True)
class LayerSpec:
    """One output raster: data type, no-data value, band names, scale/offset per band, overview resampling."""

    name: str
    dtype: str
    nodata: float
    band_names: tuple[str, ...]
    scales: tuple[float, ...]
    offsets: tuple[float, ...]
    overview_resampling: str
    units: str
    """What value * scale + offset means, for the ``units`` tag."""

    @property
    def count(self) -> int:
        """Number of bands."""
        return len(self.band_names)


def prediction_spec(radiometry: Radiometry) -> LayerSpec:
    """The cloud-free prediction: 13 bands uint16 DN in ``radiometry``'s convention (the input's)."""
    pairs = [radiometry.reflectance_scale_offset(i) for i in range(len(S2_BANDS))]
    return LayerSpec(
        name="prediction", dtype="uint16", nodata=NODATA_DN, band_names=tuple(S2_BANDS),
        scales=tuple(p[0] for p in pairs), offsets=tuple(p[1] for p in pairs), overview_resampling="average",
        units=f"top-of-atmosphere reflectance = DN * scale + offset ({radiometry.describe()})",
    )


def variance_spec(bands: int) -> LayerSpec:
    """The predicted variance of [0, 1] reflectance: 13 bands (``diag``) or 1 (``iso``), float32."""
    names = tuple(f"{band}_var" for band in S2_BANDS) if bands > 1 else ("var",)
    if bands not in (1, len(S2_BANDS)):
        raise ValueError(f"variance has 1 or {len(S2_BANDS)} bands, got {bands}")
    return LayerSpec(
        name="variance", dtype="float32", nodata=float("nan"), band_names=names, scales=(1.0,) * bands,
        offsets=(0.0,) * bands, overview_resampling="average", units="variance of reflectance in [0, 1]",
    )


def mask_spec(kind: str) -> LayerSpec:
    """The cloud mask the model used (``kind``, e.g. ``s2cloudless_map``): uint8 percent, scale 0.01."""
    return LayerSpec(
        name="cloud_mask", dtype="uint8", nodata=MASK_NODATA, band_names=(kind,), scales=(MASK_SCALE,),
        offsets=(0.0,), overview_resampling="nearest", units="cloud probability in [0, 1] = value * 0.01",
    )


def mask_to_percent(probability: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Cloud probability in [0, 1] -> uint8 percent; pixels not ``valid`` (or NaN) -> 255 (no data)."""
    probability = np.asarray(probability, np.float32)
    out = np.rint(np.clip(np.nan_to_num(probability, nan=0.0), 0.0, 1.0) * 100).astype(np.uint8)
    out[np.isnan(probability)] = MASK_NODATA
    if valid is not None:
        out[..., ~np.asarray(valid, bool)] = MASK_NODATA
    return out


def output_tags(model: str, model_version: str | None = None,
                processing: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """Tags for every output: sscr's version, the model (URI or path) and its version, what was done, extras."""
    from sscr import __version__

    tags = {"sscr_version": str(__version__), "sscr_model": str(model)}
    if model_version is not None:
        tags["sscr_model_version"] = str(model_version)
    tags.update({key: str(value) for key, value in (processing or {}).items()})
    tags.update({key: str(value) for key, value in extra.items()})
    return tags


def _staging_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.staging.tif")


def create_staging(path: str | Path, grid: Grid, spec: LayerSpec,
                   block_shape: tuple[int, int] = (COG_BLOCKSIZE, COG_BLOCKSIZE)) -> Any:
    """Open the tiled GeoTIFF beside ``path`` that the inference writes by windows (a rasterio dataset in "w" mode).

    ``block_shape`` (rows, columns, multiples of 16): the inference's write regions, so each
    write fills whole blocks. Light compression (the file is temporary): ZSTD level 1, as small as DEFLATE
    level 1, 3x faster to write and a little faster to convert (``benchmarks/results/scene_inference_cog.md``);
    BigTIFF when needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset = rasterio.open(
        _staging_path(path), "w", driver="GTiff", width=grid.width, height=grid.height, count=spec.count,
        dtype=spec.dtype, crs=grid.crs, transform=grid.transform, nodata=spec.nodata, tiled=True,
        blockysize=block_shape[0], blockxsize=block_shape[1], compress="zstd", zstd_level=1, BIGTIFF="IF_SAFER",
    )
    _describe(dataset, spec)
    return dataset


def _describe(dataset: Any, spec: LayerSpec, tags: Mapping[str, str] | None = None) -> None:
    for index, band in enumerate(spec.band_names, start=1):
        dataset.set_band_description(index, band)
    dataset.scales = spec.scales
    dataset.offsets = spec.offsets
    dataset.update_tags(**{"sscr_layer": spec.name, "units": spec.units, **(tags or {})})


def finish_cog(path: str | Path, spec: LayerSpec, tags: Mapping[str, str] | None = None,
               blocksize: int = COG_BLOCKSIZE) -> Path:
    """Copy the staging GeoTIFF of ``path`` (written by windows) to the COG ``path``; remove the staging file.

    Band names, scale/offset, no-data and ``tags`` are set on the staging file first and
    carried over by the COG driver. Written under a temporary name and renamed: an
    interrupted call leaves no partial COG.
    """
    return finish_cogs([(path, spec)], tags, blocksize)[0]


def finish_cogs(layers: Sequence[tuple[str | Path, LayerSpec]], tags: Mapping[str, str] | None = None,
                blocksize: int = COG_BLOCKSIZE) -> list[Path]:
    """:func:`finish_cog` for several outputs of one run, all or nothing.

    Every staging file is converted under its output's temporary name (and removed, to free
    its space for the next), and only when all conversions succeeded are the COGs renamed
    into place, one after the other: a failure (a full disk, an interrupt) leaves every
    output as it was before and no temporary file.
    """
    paths = [Path(path) for path, _ in layers]
    for path in paths:
        staging = _staging_path(path)
        if not staging.is_file():
            raise FileNotFoundError(f"{staging} does not exist: open it with create_staging and write the windows "
                                    "first")
    with contextlib.ExitStack() as renames:
        # atomic_path renames on exit, last entered first: nothing is renamed until every conversion is done
        partials = [renames.enter_context(atomic_path(path)) for path in paths]
        for (path, spec), partial in zip(layers, partials, strict=True):
            staging = _staging_path(Path(path))
            with rasterio.open(staging, "r+") as dataset:
                _describe(dataset, spec, tags)
            try:
                rasterio.shutil.copy(
                    staging, partial, driver="COG", BLOCKSIZE=blocksize, COMPRESS=COMPRESS, PREDICTOR="YES",
                    OVERVIEWS="IGNORE_EXISTING", OVERVIEW_RESAMPLING=spec.overview_resampling.upper(),
                    BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS",
                )
            except Exception as err:
                if disk_full(partial.parent):  # name the output whose conversion ran out of space
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err
                raise
            if disk_full(partial.parent):
                # a block libtiff could not write in one of GDAL's compression threads is only a logged
                # message: the copy "succeeds" with a truncated file, which must not replace the output
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            staging.unlink()
    return paths


def discard_staging(path: str | Path) -> None:
    """Remove the staging file of ``path`` (after a failed inference)."""
    _staging_path(Path(path)).unlink(missing_ok=True)


def remove_stale_staging(path: str | Path) -> list[Path]:
    """Remove what a killed run left beside the output ``path``; returns the files removed.

    The staging GeoTIFF, the COG's temporary name and GDAL's temporary overview file of it
    (``<temporary>.ovr.tmp``): an exception removes them on the way out, a SIGKILL or a power
    cut cannot, so the next run writing ``path`` removes them before it starts. Their names
    belong to this output alone.
    """
    path = Path(path)
    partial = temporary_path(path)
    candidates = [_staging_path(path), partial, *sorted(path.parent.glob(f"{glob.escape(partial.name)}.*"))]
    removed = []
    for candidate in candidates:
        if candidate.is_file() and not candidate.is_symlink():
            candidate.unlink()
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def cog_writer(path: str | Path, grid: Grid, spec: LayerSpec, tags: Mapping[str, str] | None = None,
               block_shape: tuple[int, int] = (COG_BLOCKSIZE, COG_BLOCKSIZE),
               blocksize: int = COG_BLOCKSIZE) -> Iterator[Any]:
    """Write by windows inside the ``with``; the COG appears at ``path`` when the block ends without error.

    >>> with cog_writer(out, grid, prediction_spec(scene.radiometry), tags) as dst:  # doctest: +SKIP
    ...     dst.write(dn, window=window)
    """
    dataset = create_staging(path, grid, spec, block_shape)
    try:
        yield dataset
    except BaseException:
        dataset.close()
        discard_staging(path)
        raise
    dataset.close()
    finish_cog(path, spec, tags, blocksize)


def write_cog(path: str | Path, data: np.ndarray, grid: Grid, spec: LayerSpec,
              tags: Mapping[str, str] | None = None, blocksize: int = COG_BLOCKSIZE) -> Path:
    """Write an in-memory (bands, H, W) array as a COG (small outputs; big scenes use :func:`cog_writer`)."""
    data = np.asarray(data)
    if data.shape != (spec.count, grid.height, grid.width):
        raise ValueError(f"{spec.name} data has shape {data.shape}, expected {(spec.count, grid.height, grid.width)}")
    with cog_writer(path, grid, spec, tags, blocksize=blocksize) as dataset:
        dataset.write(data.astype(spec.dtype, copy=False), window=Window(0, 0, grid.width, grid.height))
    return Path(path)
