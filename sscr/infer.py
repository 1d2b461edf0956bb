"""Scene inference (``sscr infer``): whole scenes tile by tile through rasterio windows.

:func:`infer_scene` runs a model on a co-registered pair of GeoTIFFs of any size (a
whole Sentinel-2 tile is 10980 x 10980 px) with memory that does not grow with
the scene: tiles are read through windows in rows, top to bottom and left to
right, overlapping tiles are blended with cosine ramps, and each block of the
output is written as soon as no later tile touches it. What stays in memory
between tiles is one tile's accumulator, the strip of ``overlap`` columns it
shares with the next tile of its row, and the strip of ``overlap`` rows a tile
row shares with the next row (see :meth:`SceneTiling.buffer_shapes`). Each batch
of tiles goes through :func:`sscr.predict.predict_tensors`; the model comes from
:func:`sscr.serving.load_model`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn
from tqdm import tqdm

from sscr.bands import S1_BANDS, S2_BANDS
from sscr.config import DEFAULT_MASK_KIND
from sscr.data.io import (
    PatchError,
    check_s1_dtype,
    check_s2_dtype,
    denormalize_s2,
    normalize_s1,
    normalize_s2,
)
from sscr.fsutil import atomic_path
from sscr.predict import cloud_probability, predict_tensors

log = logging.getLogger(__name__)

GDAL_CACHE_MB = 64
"""GDAL block cache while a scene is processed: tiles are read once or twice, a big cache only costs RAM."""
BLOCK_MULTIPLE = 16
"""GeoTIFF tile sizes must be multiples of 16; the tile stride is rounded down to one (see SceneTiling)."""
_VAR_BANDS = {"diag": len(S2_BANDS), "iso": 1}


# ---------------------------------------------------------------- tiling and blending


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@dataclass(frozen=True)
class AxisTiling:
    """Tiles along one axis of ``size`` px: logical spans at a fixed stride, each overlapping the next by ``overlap``.

    Tile ``k`` covers ``[k * stride, min(k * stride + tile, size))`` (the last one may
    be shorter), so consecutive tiles always overlap by exactly ``overlap`` px and the
    carried strip never grows. The model still sees full tiles: a short last tile is
    *read* as a tile ending at the scene edge and its prediction cropped. Every read
    starts at a multiple of ``align`` (the model's total downsampling), so pooling and
    strided convolutions see the same pixel phase as on the whole scene.
    Pixels ``[k * stride, (k + 1) * stride)`` are final once tile ``k`` is blended.
    """

    size: int
    tile: int
    stride: int
    align: int = 1

    @classmethod
    def plan(cls, size: int, tile: int, overlap: int, align: int = 1) -> AxisTiling:
        """Tiling of ``size`` px with tiles of ``tile`` px overlapping by at least ``overlap`` px."""
        if size < 1:
            raise ValueError(f"cannot tile an axis of {size} px")
        if size <= tile:
            return cls(size=size, tile=size, stride=size, align=align)
        step = math.lcm(BLOCK_MULTIPLE, align)
        return cls(size=size, tile=tile, stride=(tile - overlap) // step * step, align=align)

    @property
    def overlap(self) -> int:
        """Pixels shared by consecutive tiles (0 when a single tile covers the axis)."""
        return self.tile - self.stride if self.count > 1 else 0

    @property
    def count(self) -> int:
        """Number of tiles: the fewest at this stride whose last one reaches beyond the overlap."""
        if self.size <= self.tile:
            return 1
        return math.ceil((self.size - (self.tile - self.stride)) / self.stride)

    def span(self, index: int) -> tuple[int, int]:
        """Logical span [start, end) of tile ``index``: what it contributes to the output."""
        start = index * self.stride
        return start, min(start + self.tile, self.size)

    def read_span(self, index: int) -> tuple[int, int]:
        """Span [start, end) read for tile ``index``: ``tile`` px, shifted back at the scene edge.

        The shift is rounded to ``align``, so the last read may be up to ``align - 1`` px
        short; it is then padded by reflection, as the whole scene would be.
        """
        start = min(index * self.stride, _round_up(max(self.size - self.tile, 0), self.align))
        return start, min(start + self.tile, self.size)

    def final_length(self, index: int) -> int:
        """Pixels at the start of tile ``index`` that no later tile touches."""
        start, end = self.span(index)
        return end - start if index == self.count - 1 else self.stride

    def ramp(self, index: int) -> np.ndarray:
        """Blending weight along the tile's logical span: cosine ramps over the overlaps, 1 elsewhere.

        Rising and falling ramps are complementary (they sum to 1 pixel by pixel) and
        strictly positive, so every pixel has weight and seams vanish.
        """
        start, end = self.span(index)
        weight = np.ones(end - start, np.float32)
        overlap = self.overlap
        if overlap:
            rise = (0.5 - 0.5 * np.cos(np.pi * (np.arange(overlap) + 0.5) / overlap)).astype(np.float32)
            if index > 0:
                weight[:overlap] = rise
            if index < self.count - 1:
                weight[-overlap:] = rise[::-1]
        return weight


@dataclass(frozen=True)
class SceneTiling:
    """The tile grid of a scene (rows = y, columns = x) and the buffers streaming through it needs."""

    y: AxisTiling
    x: AxisTiling

    @classmethod
    def plan(cls, width: int, height: int, tile: int = 256, overlap: int = 32, align: int = 1) -> SceneTiling:
        """Check ``tile`` and ``overlap`` and lay tiles over a ``width`` x ``height`` scene.

        The stride ``tile - overlap`` is rounded down to a multiple of 16 and of
        ``align`` (so each final region is exactly one GeoTIFF block, and every tile
        starts on the model's downsampling grid); the effective overlap can thus be a
        little larger than asked, and must stay at most half a tile.
        """
        if align < 1:
            raise ValueError(f"align must be >= 1, got {align}")
        step = math.lcm(BLOCK_MULTIPLE, align)
        if tile < 2 * step or tile % align:
            raise ValueError(f"tile must be a multiple of {align} (the model's size multiple) and at least "
                             f"{2 * step} px, got {tile}")
        if overlap < 0:
            raise ValueError(f"overlap must be >= 0, got {overlap}")
        stride = (tile - overlap) // step * step
        if 2 * stride < tile:
            raise ValueError(
                f"overlap {overlap} is too large for tile {tile}: the stride tile - overlap, rounded down to a "
                f"multiple of {step} (here {max(stride, 0)}), must be at least half a tile; "
                f"use overlap <= {tile - _round_up((tile + 1) // 2, step)}"
            )
        return cls(y=AxisTiling.plan(height, tile, overlap, align), x=AxisTiling.plan(width, tile, overlap, align))

    @property
    def tiles(self) -> int:
        """Number of tiles run through the model."""
        return self.y.count * self.x.count

    @property
    def block_shape(self) -> tuple[int, int]:
        """(rows, columns) of the output GeoTIFF's blocks: one final region per block."""
        def block(axis: AxisTiling) -> int:
            side = axis.stride if axis.count > 1 else axis.size
            return max(BLOCK_MULTIPLE, _round_up(side, BLOCK_MULTIPLE))

        return block(self.y), block(self.x)

    def buffer_shapes(self, channels: int) -> dict[str, tuple[int, int, int]]:
        """Shapes of the float32 buffers held while streaming ``channels`` output channels (+1 weight).

        ``tile``: one tile's accumulator; ``side``: the columns it shares with the next
        tile of its row; ``carry``: the rows a tile row shares with the next row. Only
        ``carry`` spans the scene width, and only ``overlap`` rows of it.
        """
        planes = channels + 1
        return {
            "tile": (planes, self.y.tile, self.x.tile),
            "side": (planes, self.y.tile, self.x.overlap),
            "carry": (planes, self.y.overlap, self.x.size),
        }

    def buffer_bytes(self, channels: int) -> int:
        """Total bytes of :meth:`buffer_shapes` (float32)."""
        return sum(4 * math.prod(shape) for shape in self.buffer_shapes(channels).values())


class StreamingBlender:
    """Blends tile predictions in row-major order; each :meth:`add` returns the region it made final.

    The returned region is the normalised blend (channels, h, w) whose top-left output
    pixel is (row, col): regions come out row by row, each exactly one block
    (:attr:`SceneTiling.block_shape`) of the output at that place.
    """

    def __init__(self, tiling: SceneTiling, channels: int) -> None:
        self.tiling = tiling
        self.channels = channels
        shapes = tiling.buffer_shapes(channels)
        self.carry = np.zeros(shapes["carry"], np.float32)
        self.side = np.zeros(shapes["side"], np.float32)
        self._next = (0, 0)

    def add(self, row: int, col: int, prediction: np.ndarray) -> tuple[int, int, np.ndarray]:
        """Blend tile (row, col)'s prediction (channels, h, w) over its logical span -> (row, col, final region)."""
        if (row, col) != self._next:
            raise RuntimeError(f"tiles must be added in row-major order: expected {self._next}, got {(row, col)}")
        y, x = self.tiling.y, self.tiling.x
        y0, y1 = y.span(row)
        x0, x1 = x.span(col)
        if prediction.shape != (self.channels, y1 - y0, x1 - x0):
            raise ValueError(f"tile {(row, col)} prediction has shape {prediction.shape}, "
                             f"expected {(self.channels, y1 - y0, x1 - x0)}")
        weight = np.outer(y.ramp(row), x.ramp(col))
        acc = np.empty((self.channels + 1, *weight.shape), np.float32)
        np.multiply(prediction, weight, out=acc[:-1])
        acc[-1] = weight
        if col > 0:  # the columns the previous tile of this row left behind
            acc[:, :, : x.overlap] += self.side[:, : acc.shape[1]]
        final_w = x.final_length(col)
        if col < x.count - 1:
            self.side[:, : acc.shape[1]] = acc[:, :, final_w:]
        region = acc[:, :, :final_w]
        if row > 0:  # the rows the previous tile row left behind, in this tile's final columns only
            region[:, : y.overlap] += self.carry[:, :, x0 : x0 + final_w]
        final_h = y.final_length(row)
        if row < y.count - 1:
            self.carry[:, :, x0 : x0 + final_w] = region[:, final_h:]
        self._next = (row, col + 1) if col + 1 < x.count else (row + 1, 0)
        return y0, x0, region[:-1, :final_h] / region[-1:, :final_h]


# ---------------------------------------------------------------- scene inference


@dataclass
class SceneReport:
    """What :func:`infer_scene` did: scene size, tiles, time and the files written."""

    size: tuple[int, int]
    """(width, height) in px."""
    tiles: int
    tiles_skipped: int
    """Tiles that were entirely no-data (all 13 S2 bands 0) and not run through the model."""
    seconds: float
    pixels_per_second: float
    out_path: Path
    var_path: Path | None
    tile: int
    overlap: int
    """Effective overlap in px (the stride is rounded to a multiple of 16)."""
    batch_size: int
    """Tiles per forward pass."""
    mask_kind: str | None

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and logs."""
        data = asdict(self)
        data["size"] = list(self.size)
        data["out_path"] = str(self.out_path)
        data["var_path"] = str(self.var_path) if self.var_path else None
        return data


def _grid_fix(s2: Any) -> str:
    left, bottom, right, top = s2.bounds
    res_x, res_y = s2.res
    crs = s2.crs.to_string() if s2.crs else "<S2 CRS>"
    return (f"reproject S1 onto the S2 grid first (e.g. gdalwarp -t_srs {crs} -tr {res_x:g} {res_y:g} "
            f"-te {left:g} {bottom:g} {right:g} {top:g} -r bilinear s1.tif s1_on_s2.tif)")


def check_scene(s2: Any, s1: Any | None) -> None:
    """Band counts and dtypes of S2 (13, integer DN) and S1 (2, float dB), and that S1 lies on the S2 grid.

    Raises PatchError naming the file.
    """
    if s2.count != len(S2_BANDS):
        raise PatchError(s2.name, f"S2 scene has {s2.count} bands, expected {len(S2_BANDS)} "
                                  f"({' '.join(S2_BANDS)}, L1C DN as uint16)")
    check_s2_dtype(s2.name, s2.dtypes[0], "S2 scene")
    if s1 is None:
        return
    if s1.count != len(S1_BANDS):
        raise PatchError(s1.name, f"S1 scene has {s1.count} bands, expected {len(S1_BANDS)} "
                                  f"({' '.join(S1_BANDS)}, backscatter in dB)")
    check_s1_dtype(s1.name, s1.dtypes[0], "S1 scene")
    def crs_name(dataset: Any) -> str:
        return dataset.crs.to_string() if dataset.crs else "no CRS"

    if s1.crs != s2.crs:
        raise PatchError(s1.name, f"S1 has CRS {crs_name(s1)}, S2 {s2.name} has {crs_name(s2)}: {_grid_fix(s2)}")
    if (s1.width, s1.height) != (s2.width, s2.height):
        raise PatchError(s1.name, f"S1 is {s1.width} x {s1.height} px, S2 {s2.name} is {s2.width} x {s2.height} px: "
                                  f"{_grid_fix(s2)}")
    if not s1.transform.almost_equals(s2.transform, precision=1e-6 * max(abs(s2.transform.a), 1.0)):
        raise PatchError(s1.name, f"S1 transform {tuple(s1.transform)[:6]} differs from S2 {s2.name} "
                                  f"{tuple(s2.transform)[:6]} (extent {s1.bounds} vs {s2.bounds}): {_grid_fix(s2)}")


def _create(path: Path, s2: Any, tiling: SceneTiling, band_names: list[str], dtype: str,
            nodata: float) -> Any:
    """Open an output GeoTIFF on the S2 grid, one block per final region (tiled, deflate, BigTIFF if needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    block_rows, block_cols = tiling.block_shape
    dataset = rasterio.open(
        path, "w", driver="GTiff", width=s2.width, height=s2.height, count=len(band_names), dtype=dtype,
        crs=s2.crs, transform=s2.transform, nodata=nodata, tiled=True, blockysize=block_rows,
        blockxsize=block_cols, compress="deflate", predictor=3 if dtype == "float32" else 2, BIGTIFF="IF_SAFER",
    )
    for index, name in enumerate(band_names, start=1):
        dataset.set_band_description(index, name)
    return dataset


def _tile_batches(tiling: SceneTiling, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """(row, col) tiles in row-major order, ``batch_size`` at a time (a batch may run on into the next row).

    Every read has the same shape, so batches are always full but the last, and the
    model's working set is the same for every scene size.
    """
    tiles = ((row, col) for row in range(tiling.y.count) for col in range(tiling.x.count))
    while batch := list(itertools.islice(tiles, batch_size)):
        yield batch


def infer_scene(
    model: nn.Module,
    s2_path: str | Path,
    s1_path: str | Path | None,
    out_path: str | Path,
    var_path: str | Path | None = None,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int | None = None,
    mask_kind: str | None = DEFAULT_MASK_KIND,
    progress: bool = True,
) -> SceneReport:
    """Remove clouds from a whole scene: cloudy S2 GeoTIFF (+ co-registered S1) -> cloud-free S2 GeoTIFF.

    ``s2_path``: 13 bands, L1C DN (uint16); ``s1_path``: 2 bands (VV, VH) in dB on the
    same grid (CRS, transform, size), required when the model fuses SAR. Tiles of
    ``tile`` px overlapping by ``overlap`` px (the stride is rounded down to a multiple
    of 16 and of the model's ``size_multiple``, see :meth:`SceneTiling.plan`) are
    normalised as the data set is, masked with ``mask_kind`` when the model
    uses a cloud mask (computed per tile from its DN), run ``batch_size`` at a time (default:
    1 on CPU, where one tile at a time stays in cache and runs ~1.8x faster per tile than 4,
    ``benchmarks/results/inference_speedup.md``; 4 on a GPU) and
    blended with cosine ramps. Output: 13 bands uint16 DN with the S2 CRS and transform
    (tiled, deflate; pixels where all S2 bands are 0, L1C no-data, are 0 = nodata), plus
    ``var_path`` (float32, 13 or 1 bands, variance of [0, 1] reflectance) when the model
    predicts a variance. Files are written under a temporary name and renamed at the
    end: a failure leaves no partial output. Memory does not depend on the scene size
    beyond ``overlap`` rows of the scene width (:meth:`SceneTiling.buffer_shapes`).
    """
    s2_path, out_path = Path(s2_path), Path(out_path)
    s1_path = Path(s1_path) if s1_path is not None else None
    var_path = Path(var_path) if var_path is not None else None
    use_sar = bool(getattr(model, "use_sar", False))
    use_mask = bool(getattr(model, "use_mask", False))
    _check_paths(use_sar, s2_path, s1_path, out_path, var_path)
    batch_size = _batch_size(model, batch_size)
    var_bands, var_path = _variance_output(model, var_path)

    started = time.perf_counter()
    model.eval()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), contextlib.ExitStack() as files:
        s2 = files.enter_context(rasterio.open(s2_path))
        s1 = files.enter_context(rasterio.open(s1_path)) if s1_path is not None else None
        check_scene(s2, s1)
        tiling = SceneTiling.plan(s2.width, s2.height, tile, overlap, int(getattr(model, "size_multiple", 1)))
        # Closed in reverse: the GeoTIFFs first, then the variance is put in place, then the output.
        out_tmp = files.enter_context(atomic_path(out_path))
        var_tmp = files.enter_context(atomic_path(var_path)) if var_path is not None else None
        out = files.enter_context(_create(out_tmp, s2, tiling, list(S2_BANDS), "uint16", 0))
        var_out = None
        if var_tmp is not None:
            names = [f"{band}_var" for band in S2_BANDS] if var_bands > 1 else ["var"]
            var_out = files.enter_context(_create(var_tmp, s2, tiling, names, "float32", float("nan")))
        skipped = _stream_tiles(model, s2, s1 if use_sar else None, tiling, out, var_out, var_bands,
                                batch_size, mask_kind if use_mask else None, progress)
    seconds = time.perf_counter() - started
    return SceneReport(
        size=(tiling.x.size, tiling.y.size), tiles=tiling.tiles, tiles_skipped=skipped, seconds=seconds,
        pixels_per_second=tiling.x.size * tiling.y.size / max(seconds, 1e-9), out_path=out_path,
        var_path=var_path, tile=tile, overlap=max(tiling.x.overlap, tiling.y.overlap), batch_size=batch_size,
        mask_kind=mask_kind if use_mask else None,
    )


def _check_paths(use_sar: bool, s2_path: Path, s1_path: Path | None, out_path: Path, var_path: Path | None) -> None:
    """Inputs exist (S1 too when the model fuses SAR) and no output overwrites an input."""
    if use_sar and s1_path is None:
        raise ValueError("this model fuses SAR: pass the co-registered S1 GeoTIFF (2 bands VV, VH in dB)")
    for path in (s2_path, s1_path):
        if path is not None and not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
    if out_path.resolve() in {p.resolve() for p in (s2_path, s1_path, var_path) if p is not None}:
        raise ValueError(f"output {out_path} would overwrite an input or the variance output")


def _batch_size(model: nn.Module, batch_size: int | None) -> int:
    """Tiles per forward pass: as asked, else 1 on CPU and 4 on a GPU."""
    if batch_size is None:
        batch_size = 1 if next(model.parameters()).device.type == "cpu" else 4
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return batch_size


def _variance_output(model: nn.Module, var_path: Path | None) -> tuple[int, Path | None]:
    """(variance bands to write, variance path): (0, None) when none is asked or the model predicts none."""
    var_bands = _VAR_BANDS.get(getattr(model, "variance", None) or "", 0)
    if var_path is not None and not var_bands:
        log.warning("%s predicts no variance: %s is not written", type(model).__name__, var_path)
        return 0, None
    return (var_bands, var_path) if var_path is not None else (0, None)


@dataclass
class _TileInputs:
    """One batch of tiles as read: DN, dB, and where each tile's logical span sits in its read window."""

    tiles: list[tuple[int, int]]
    dn: np.ndarray  # (B, 13, h, w) uint16
    db: np.ndarray | None  # (B, 2, h, w) float32
    spans: list[tuple[slice, slice]]


def _read_tile(dataset: Any, window: Window, shape: tuple[int, int]) -> np.ndarray:
    """Read a window; a read cut short by the scene edge is padded (reflect) to ``shape`` like the whole scene."""
    data = dataset.read(window=window)
    pad_h, pad_w = shape[0] - data.shape[1], shape[1] - data.shape[2]
    if pad_h or pad_w:
        mode = "reflect" if pad_h < data.shape[1] and pad_w < data.shape[2] else "edge"
        data = np.pad(data, ((0, 0), (0, pad_h), (0, pad_w)), mode=mode)
    return data


def _read_batch(s2: Any, s1: Any | None, tiling: SceneTiling, tiles: list[tuple[int, int]]) -> _TileInputs:
    dns, dbs, spans = [], [], []
    shape = (tiling.y.tile, tiling.x.tile)
    for row, col in tiles:
        (ry0, ry1), (rx0, rx1) = tiling.y.read_span(row), tiling.x.read_span(col)
        window = Window(rx0, ry0, rx1 - rx0, ry1 - ry0)
        dns.append(_read_tile(s2, window, shape))
        if s1 is not None:
            dbs.append(_read_tile(s1, window, shape))
        (ly0, ly1), (lx0, lx1) = tiling.y.span(row), tiling.x.span(col)
        spans.append((slice(ly0 - ry0, ly1 - ry0), slice(lx0 - rx0, lx1 - rx0)))
    return _TileInputs(tiles, np.stack(dns), np.stack(dbs) if dbs else None, spans)


def _predict_batch(model: nn.Module, dn: np.ndarray, db: np.ndarray | None, mask_kind: str | None,
                   var_bands: int) -> np.ndarray:
    """Normalise, mask and predict a batch of tiles -> (B, 13 + var_bands, h, w) float32."""
    cloudy = normalize_s2(dn)
    sar = normalize_s1(db) if db is not None else None
    mask = cloud_probability(cloudy, mask_kind) if mask_kind is not None else None
    out = predict_tensors(
        model, torch.from_numpy(cloudy), torch.from_numpy(sar) if sar is not None else None,
        torch.from_numpy(mask) if mask is not None else None,
    )
    parts = [out["mean"]]
    if var_bands:
        if "var" not in out or out["var"].shape[1] != var_bands:
            raise RuntimeError(f"{type(model).__name__} declares variance {model.variance!r} ({var_bands} bands) "
                               f"but returned {({k: tuple(v.shape) for k, v in out.items()})}")
        parts.append(out["var"])
    return torch.cat(parts, dim=1).cpu().numpy()


def _no_data(dn: np.ndarray, nodata: float | None) -> np.ndarray:
    """(h, w) True where every S2 band holds the no-data value (0 for L1C unless the file says otherwise)."""
    nodata = 0 if nodata is None else nodata
    return np.isnan(dn).all(axis=0) if np.isnan(nodata) else (dn == nodata).all(axis=0)


def _stream_tiles(model: nn.Module, s2: Any, s1: Any | None, tiling: SceneTiling, out: Any, var_out: Any | None,
                  var_bands: int, batch_size: int, mask_kind: str | None, progress: bool) -> int:
    """Read, predict and blend every tile in row-major order, writing each final region as it completes.

    Returns the number of tiles skipped because they hold only no-data.
    """
    bands = len(S2_BANDS)
    blender = StreamingBlender(tiling, bands + var_bands)
    skipped = 0
    with tqdm(total=tiling.tiles, desc="scene tiles", unit="tile", disable=not progress) as bar:
        for tiles in _tile_batches(tiling, batch_size):
            batch = _read_batch(s2, s1, tiling, tiles)
            blanks = [_no_data(dn, s2.nodata)[span] for dn, span in zip(batch.dn, batch.spans, strict=True)]
            # a tile that is no-data throughout is not worth a forward pass: its pixels are written as no-data
            run = [i for i, blank in enumerate(blanks) if not blank.all()]
            skipped += len(tiles) - len(run)
            predicted = {}
            if run:
                stacked = _predict_batch(model, batch.dn[run], batch.db[run] if batch.db is not None else None,
                                         mask_kind, var_bands)
                predicted = dict(zip(run, stacked, strict=True))
            for i, (row, col) in enumerate(tiles):
                rows, cols = batch.spans[i]
                if i in predicted:
                    prediction = predicted[i][:, rows, cols]
                else:
                    prediction = np.zeros((bands + var_bands, rows.stop - rows.start, cols.stop - cols.start),
                                          np.float32)
                top, left, blended = blender.add(row, col, prediction)
                # the final region starts at the tile's logical origin, so its no-data is the tile's top-left
                blank = blanks[i][: blended.shape[1], : blended.shape[2]]
                window = Window(left, top, blended.shape[2], blended.shape[1])
                dn = denormalize_s2(blended[:bands])
                dn[:, blank] = 0
                out.write(dn, window=window)
                if var_out is not None:
                    var = np.ascontiguousarray(blended[bands:], dtype=np.float32)
                    var[:, blank] = np.nan
                    var_out.write(var, window=window)
                bar.update(1)
    return skipped
