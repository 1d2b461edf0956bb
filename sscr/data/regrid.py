"""Rasters of any CRS and resolution, read by windows of another grid (the S2 scene's).

Sentinel-1 backscatter and precomputed cloud masks come on their own grids; the tiled
inference reads the S2 scene window by window. :class:`GridReader` answers each window
read on the target grid by reading only the source pixels that window needs (plus a
margin for the resampling kernel), converting them (e.g. linear power -> dB) and
reprojecting them with ``rasterio.warp.reproject``: a whole 10980 px tile never holds a
whole source raster in memory, and a window's values equal the whole-grid reprojection's
to float rounding (measured: 2.5e-5 dB; the margin covers the kernel). A source already on
the grid is read directly, with no resampling.

It answers the part of the rasterio dataset interface the inference uses (``read``,
``count``, ``width``, ``height``, ``crs``, ``transform``, ``bounds``, ``res``, ``name``,
``nodata``), so it can stand where an open GeoTIFF stood.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.transform import array_bounds
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from sscr.data.io import PatchError

#: Half-width of each resampling kernel in source pixels (before scaling when downsampling).
_KERNEL_RADIUS = {Resampling.nearest: 1, Resampling.bilinear: 1, Resampling.cubic: 2, Resampling.cubic_spline: 2,
                  Resampling.lanczos: 3, Resampling.average: 1}


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform and size in pixels."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset: Any) -> Grid:
        """The grid of an open dataset (anything with ``crs``, ``transform``, ``width``, ``height``)."""
        return cls(dataset.crs, dataset.transform, dataset.width, dataset.height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the grid's CRS."""
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return west, south, east, north

    @property
    def res(self) -> tuple[float, float]:
        """Pixel size (x, y), positive."""
        return abs(self.transform.a), abs(self.transform.e)

    def aligned_with(self, other: Grid) -> bool:
        """Same CRS and pixel size, and pixel corners that coincide (integer offset), so no resampling is needed."""
        if self.crs != other.crs or not np.allclose(self.res, other.res, rtol=1e-9):
            return False
        col, row = ~self.transform @ (other.transform.c, other.transform.f)
        return (self.transform.b == other.transform.b == 0 and self.transform.d == other.transform.d == 0
                and abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6)


@dataclass(frozen=True)
class BandSource:
    """One band of a raster file: its GDAL path, the 1-based band index, a name, and its own conversion.

    ``path`` is a string because GDAL paths such as ``/vsizip//data/product.zip/...`` are
    not file-system paths (``pathlib`` would fold the double slash). ``convert`` maps
    this band's values (float32, no data NaN) before resampling; None: the reader's.
    """

    path: str
    band: int
    name: str
    convert: Callable[[np.ndarray], np.ndarray] | None = None


class GridReader:
    """Bands of raster files on their own grids, read as float32 by windows of a target ``grid``.

    ``convert`` maps the source values (float32, no-data already NaN) before resampling,
    e.g. linear power to dB (a source's own ``convert`` takes precedence); ``resampling``
    is a ``rasterio.enums.Resampling``. Source files are read one-to-one (whole pixels,
    no scaled reads): GDAL's JPEG 2000 driver is pathologically slow when asked to
    upsample (a 128 px window of a 20 m band read onto 256 px took 150 s here, the same
    window one-to-one 0.3 s), so every resampling happens in memory with the warper. Pixels of
    the grid that no source covers are NaN. Use it as a context manager (it holds the
    source files open) or call :meth:`close`.
    """

    def __init__(self, sources: Sequence[BandSource], grid: Grid, resampling: Resampling = Resampling.bilinear,
                 convert: Callable[[np.ndarray], np.ndarray] | None = None, name: str | None = None) -> None:
        self.sources = list(sources)
        self.grid = grid
        self.resampling = resampling
        self.convert = convert
        self.name = name or ",".join(str(s.path) for s in self.sources)
        self.processing: dict[str, str] = {}
        """What was done to the sources, for the output's tags (set by the function that opened them)."""
        self._datasets: dict[str, Any] = {}
        try:
            for source in self.sources:
                self.dataset_of(source)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- dataset-like interface

    count = property(lambda self: len(self.sources))
    width = property(lambda self: self.grid.width)
    height = property(lambda self: self.grid.height)
    crs = property(lambda self: self.grid.crs)
    transform = property(lambda self: self.grid.transform)
    bounds = property(lambda self: self.grid.bounds)
    res = property(lambda self: self.grid.res)
    nodata = float("nan")
    dtypes = property(lambda self: ("float32",) * len(self.sources))

    @property
    def descriptions(self) -> tuple[str, ...]:
        """Band names."""
        return tuple(source.name for source in self.sources)

    def __enter__(self) -> GridReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the source files."""
        for dataset in self._datasets.values():
            dataset.close()
        self._datasets.clear()

    def dataset_of(self, source: BandSource) -> Any:
        """The open file of ``source`` (opened and checked on first use)."""
        if source.path not in self._datasets:
            try:
                dataset = rasterio.open(source.path)
            except RasterioIOError as err:
                raise PatchError(source.path, f"cannot read {source.name} ({str(err).splitlines()[0]}); "
                                              "the file is corrupt or not a raster") from None
            if dataset.crs is None:
                dataset.close()
                raise PatchError(source.path, f"{source.name} has no CRS: georeference it "
                                              "(e.g. gdal_translate -a_srs EPSG:xxxx)")
            if source.band > dataset.count:
                dataset.close()
                raise PatchError(source.path, f"has {dataset.count} band(s), {source.name} was expected in band "
                                              f"{source.band}")
            self._datasets[source.path] = dataset
        return self._datasets[source.path]

    def source_grid(self, index: int) -> Grid:
        """The grid of source band ``index`` (0-based)."""
        return Grid.of(self.dataset_of(self.sources[index]))

    def read(self, indexes: int | Sequence[int] | None = None, window: Window | None = None,
             **_: Any) -> np.ndarray:
        """Bands (1-based ``indexes``, default all) over ``window`` of the target grid, float32 (bands, h, w)."""
        window = window or Window(0, 0, self.width, self.height)
        single = isinstance(indexes, int)
        wanted = [indexes] if single else list(indexes or range(1, self.count + 1))
        out = np.empty((len(wanted), int(window.height), int(window.width)), np.float32)
        by_file: dict[str, list[int]] = {}
        for position, index in enumerate(wanted):
            by_file.setdefault(self.sources[index - 1].path, []).append(position)
        for positions in by_file.values():
            sources = [self.sources[wanted[p] - 1] for p in positions]
            if len(sources) > 1 and Grid.of(self.dataset_of(sources[0])).aligned_with(self.grid):
                # One GDAL read for all bands of a file on the grid: a pixel-interleaved GeoTIFF holds every band
                # in each block, and band-by-band reads would decode each block once per band (13x for S2).
                out[positions] = self._read_aligned(sources, window)
            else:
                for position, source in zip(positions, sources, strict=True):
                    out[position] = self._read_band(source, window)
        return out[0] if single else out

    def _read_aligned(self, sources: Sequence[BandSource], window: Window) -> np.ndarray:
        """Bands of one file whose grid is aligned with the target grid, in one read; NaN outside the file."""
        dataset = self.dataset_of(sources[0])
        src = Grid.of(dataset)
        col0, row0 = int(window.col_off), int(window.row_off)
        height, width = int(window.height), int(window.width)
        out = np.full((len(sources), height, width), np.nan, np.float32)
        dst_transform = self.grid.transform @ Affine.translation(col0, row0)
        col, row = (round(v) for v in ~src.transform @ (dst_transform.c, dst_transform.f))
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + width, src.width), min(row + height, src.height)
        if c1 > c0 and r1 > r0:
            data = dataset.read([s.band for s in sources], window=Window(c0, r0, c1 - c0, r1 - r0), masked=True)
            values = data.astype(np.float32).filled(np.nan)
            for index, source in enumerate(sources):
                convert = source.convert or self.convert
                if convert is not None:
                    values[index] = convert(values[index])
            out[:, r0 - row: r1 - row, c0 - col: c1 - col] = values
        return out

    # ---------------------------------------------------------------- reading one band

    def _read_source(self, dataset: Any, source: BandSource, window: Window) -> np.ndarray:
        """Source values in ``window`` (inside the file), float32, no-data and masked pixels NaN, converted."""
        data = dataset.read(source.band, window=window, masked=True).astype(np.float32)
        values = data.filled(np.nan)
        convert = source.convert or self.convert
        return convert(values) if convert is not None else values

    def _read_band(self, source: BandSource, window: Window) -> np.ndarray:
        dataset = self.dataset_of(source)
        src = Grid.of(dataset)
        col0, row0 = int(window.col_off), int(window.row_off)
        height, width = int(window.height), int(window.width)
        out = np.full((height, width), np.nan, np.float32)
        dst_transform = self.grid.transform @ Affine.translation(col0, row0)
        if src.aligned_with(self.grid):
            # Same pixels: copy the overlap, no resampling.
            col, row = (round(v) for v in ~src.transform @ (dst_transform.c, dst_transform.f))
            c0, r0 = max(col, 0), max(row, 0)
            c1, r1 = min(col + width, src.width), min(row + height, src.height)
            if c1 > c0 and r1 > r0:
                out[r0 - row: r1 - row, c0 - col: c1 - col] = self._read_source(
                    dataset, source, Window(c0, r0, c1 - c0, r1 - r0))
            return out
        src_window = self._source_window(src, dst_transform, width, height)
        if src_window is None:
            return out
        values = self._read_source(dataset, source, src_window)
        reproject(
            values, out, src_transform=window_transform(src_window, src.transform), src_crs=src.crs,
            src_nodata=np.nan, dst_transform=dst_transform, dst_crs=self.grid.crs, dst_nodata=np.nan,
            resampling=self.resampling, tolerance=0,  # exact coordinates: the default approximation (0.125 px)
            # depends on the window, so windows would disagree with the whole-grid warp at their edges
        )
        return out

    def _source_window(self, src: Grid, dst_transform: Affine, width: int, height: int) -> Window | None:
        """Source pixels covering the destination window, plus the resampling kernel, inside the file; None if none."""
        bounds = array_bounds(height, width, dst_transform)
        left, bottom, right, top = transform_bounds(self.grid.crs, src.crs, *bounds, densify_pts=21)
        area = from_bounds(left, bottom, right, top, src.transform)
        ratio = max(self.grid.res[0] / src.res[0], self.grid.res[1] / src.res[1], 1.0)
        margin = math.ceil(_KERNEL_RADIUS.get(self.resampling, 4) * ratio) + 2
        col0 = max(math.floor(area.col_off) - margin, 0)
        row0 = max(math.floor(area.row_off) - margin, 0)
        col1 = min(math.ceil(area.col_off + area.width) + margin, src.width)
        row1 = min(math.ceil(area.row_off + area.height) + margin, src.height)
        if col1 <= col0 or row1 <= row0:
            return None
        return Window(col0, row0, col1 - col0, row1 - row0)
