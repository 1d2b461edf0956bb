"""A quick-look PNG of a scene ``sscr infer`` processed: its inputs and outputs, read small.

:func:`write_quicklook` reads the cloudy S2 (an L1C product or a GeoTIFF, harmonised as
the model saw it), the S1 file(s) (any grid, reprojected), the cloud-free COG and the
cloud-mask COG onto one coarse grid over the output's area, at most ``max_side`` pixels
per side, and draws them side by side with :func:`sscr.plots.quicklook_figure`. Reading
is bounded whatever the scene size: every file is read with a decimated ``out_shape``,
which GDAL serves from the COGs' internal overviews and from JPEG 2000 resolution levels,
then warped in memory onto the coarse grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window, from_bounds

from sscr import plots
from sscr.bands import RGB_BANDS, S2_DN_MAX
from sscr.data.io import normalize_s1
from sscr.data.regrid import Grid
from sscr.data.sentinel1 import open_s1
from sscr.data.sentinel2 import open_s2

QUICKLOOK_MAX_SIDE = 800
"""Pixels per side of the coarse grid the quick-look is drawn from (the PNG itself has a fixed size)."""
QUICKLOOK_DPI = 80
"""Four 4-inch panels: a PNG 1280 px wide, whatever the scene."""


def coarse_grid(grid: Grid, max_side: int = QUICKLOOK_MAX_SIDE) -> Grid:
    """``grid`` with pixels ``ceil(max(width, height) / max_side)`` times larger (the same area, rounded up)."""
    factor = max(1, math.ceil(max(grid.width, grid.height) / max_side))
    return Grid(grid.crs, grid.transform @ Affine.scale(factor), math.ceil(grid.width / factor),
                math.ceil(grid.height / factor))


def read_onto(path: str | Path, bands: Sequence[int], grid: Grid, resampling: Resampling = Resampling.nearest,
              convert: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Bands (1-based) of a raster file on ``grid``: (bands, h, w) float32, NaN where the file has no data.

    The file's part under ``grid`` is read decimated to about ``grid``'s pixel size (the
    dataset's nodata masked; ``convert`` then maps the values, e.g. DN to harmonised DN),
    and warped bilinearly onto ``grid``.
    """
    out = np.full((len(bands), grid.height, grid.width), np.nan, np.float32)
    with rasterio.open(path) as src:
        left, bottom, right, top = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
        area = from_bounds(left, bottom, right, top, src.transform)
        col0, row0 = max(math.floor(area.col_off) - 1, 0), max(math.floor(area.row_off) - 1, 0)
        col1 = min(math.ceil(area.col_off + area.width) + 1, src.width)
        row1 = min(math.ceil(area.row_off + area.height) + 1, src.height)
        if col1 <= col0 or row1 <= row0:
            return out
        window = Window(col0, row0, col1 - col0, row1 - row0)
        step = max(1, math.floor(min((right - left) / grid.width / src.res[0],
                                     (top - bottom) / grid.height / src.res[1])))
        shape = (len(bands), math.ceil(window.height / step), math.ceil(window.width / step))
        data = src.read(list(bands), window=window, out_shape=shape, masked=True, resampling=resampling)
        values = data.astype(np.float32).filled(np.nan)
        if convert is not None:
            values = np.stack([convert(band) for band in values])
        source_transform = src.window_transform(window) @ Affine.scale(window.width / shape[2],
                                                                       window.height / shape[1])
        reproject(values, out, src_transform=source_transform, src_crs=src.crs, src_nodata=np.nan,
                  dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan, resampling=Resampling.bilinear)
    return out


def _reflectance(path: Path, bands: Sequence[int], grid: Grid) -> np.ndarray:
    """An output COG's DN -> reflectance by its own scale and offset (``DN * scale + offset``), no data NaN."""
    with rasterio.open(path) as src:
        scales = np.asarray([src.scales[b - 1] for b in bands], np.float32)[:, None, None]
        offsets = np.asarray([src.offsets[b - 1] for b in bands], np.float32)[:, None, None]
    return read_onto(path, bands, grid) * scales + offsets


@dataclass
class QuickLook:
    """A scene on the coarse grid, as drawn: reflectance RGB (B4, B3, B2) in and out, SAR, cloud probability."""

    grid: Grid
    cloudy: np.ndarray
    """(3, h, w) top-of-atmosphere reflectance of the input, harmonised as the model saw it; NaN = no data."""
    sar: np.ndarray | None
    """(2, h, w) VV, VH normalised as the model sees them; NaN = no SAR; None for an optical model."""
    prediction: np.ndarray
    """(3, h, w) reflectance of the output COG (its own scale and offset); NaN = no data."""
    mask: np.ndarray | None
    """(h, w) cloud probability fed to the model; None when it takes none."""


def read_quicklook(out: str | Path, s2: str | Path, s1: Sequence[str | Path] = (), s1_units: str = "db",
                   mask: str | Path | None = None, max_side: int = QUICKLOOK_MAX_SIDE) -> QuickLook:
    """The inputs and outputs of one ``sscr infer`` run on a grid of at most ``max_side`` px over ``out``'s area.

    ``s2`` and ``s1`` are the inputs as given to ``sscr infer`` (a crop is the output's
    area, so none is needed here); no ``s1`` for an optical model, no ``mask`` (the mask
    COG) for a model that takes none. The cloudy input is harmonised to the training
    convention's reflectance (a baseline >= 04.00 offset removed) and the output read by its
    own scale and offset, so both are reflectance and can be drawn under one stretch.
    """
    with rasterio.open(out) as dataset:
        grid = coarse_grid(Grid.of(dataset), max_side)
    scene = open_s2(s2)
    rgb_sources = [scene.sources[band] for band in RGB_BANDS]
    cloudy = np.stack([read_onto(source.path, [source.band], grid, convert=source.convert)[0]
                       for source in rgb_sources]) / S2_DN_MAX
    sar = None
    if s1:
        with open_s1(list(s1), grid, s1_units) as reader:
            sources = list(reader.sources)
            default_convert = reader.convert
        db = np.stack([read_onto(source.path, [source.band], grid, Resampling.average,
                                 source.convert or default_convert)[0] for source in sources])
        sar = np.where(np.isnan(db), np.nan, normalize_s1(db))
    prediction = _reflectance(Path(out), [band + 1 for band in RGB_BANDS], grid)
    probability = None
    if mask is not None:
        with rasterio.open(mask) as src:
            scale, offset = src.scales[0], src.offsets[0]
        probability = read_onto(mask, [1], grid)[0] * scale + offset
    return QuickLook(grid, cloudy, sar, prediction, probability)


def write_quicklook(png: str | Path, out: str | Path, s2: str | Path, s1: Sequence[str | Path] = (),
                    s1_units: str = "db", mask: str | Path | None = None, max_side: int = QUICKLOOK_MAX_SIDE,
                    title: str = "") -> Path:
    """Draw cloudy RGB | S1 | the output ``out`` | ``mask`` side by side into ``png`` (:func:`read_quicklook`,
    :func:`sscr.plots.quicklook_figure`); written atomically."""
    look = read_quicklook(out, s2, s1, s1_units, mask, max_side)
    figure = plots.quicklook_figure(look.cloudy, look.sar, look.prediction, look.mask, title=title or Path(out).name)
    return plots.save_png(figure, png, dpi=QUICKLOOK_DPI, palette=True)
