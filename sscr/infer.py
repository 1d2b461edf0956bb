"""Scene inference (``sscr infer``): Sentinel products in, Cloud-Optimized GeoTIFFs out, tile by tile.

:func:`infer_scene` runs a model on a cloudy Sentinel-2 scene of any size (a whole
tile is 10980 x 10980 px): an L1C product (``.SAFE``, ``.zip``) or a 13-band GeoTIFF
(:mod:`sscr.data.sentinel2`), with Sentinel-1 in any CRS, pixel size and unit
reprojected by windows onto the S2 grid (:mod:`sscr.data.sentinel1`), and the cloud mask
only for networks that take one (:mod:`sscr.data.scene_masks`). Memory does not grow with
the scene: tiles are read through windows in rows, top to bottom and left to right,
overlapping tiles are blended with cosine ramps, and each block of the output is written
as soon as no later tile touches it. What stays in memory between tiles is one tile's
accumulator, the strip of ``overlap`` columns it shares with the next tile of its row,
and the strip of ``overlap`` rows a tile row shares with the next row (see
:meth:`SceneTiling.buffer_shapes`). Outputs are staged by windows and made COGs at the
end (:mod:`sscr.data.cog`), all together or none. Each batch of tiles goes through
:func:`sscr.predict.predict_tensors`; the model comes from :func:`sscr.serving.load_model`.
What saves time without changing a byte of the output (s2cloudless once per pixel, a
second reading thread, clear tiles passed through) is :class:`SceneSpeed`; where the time
goes is :attr:`SceneReport.stage_seconds`.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn
from tqdm import tqdm

from sscr import faults
from sscr.bands import S2_BANDS
from sscr.clouds.detect import THREADS_ENV as S2CLOUDLESS_THREADS_ENV
from sscr.config import DEFAULT_MASK_KIND
from sscr.data.cog import (
    GDAL_CACHE_BYTES,
    create_staging,
    finish_cogs,
    mask_spec,
    mask_to_percent,
    output_tags,
    prediction_spec,
    remove_stale_staging,
    variance_spec,
)
from sscr.data.io import PatchError, denormalize_s2, normalize_s1, normalize_s2
from sscr.data.scene_masks import MaskChoice, SceneMasker, open_mask_file, pad_to, read_mask
from sscr.data.sentinel1 import open_s1
from sscr.data.sentinel2 import open_s2
from sscr.fsutil import disk_full
from sscr.predict import passed_through, passes_through, predict_tensors

log = logging.getLogger(__name__)

BLOCK_MULTIPLE = 16
"""GeoTIFF tile sizes must be multiples of 16; the tile stride is rounded down to one (see SceneTiling)."""
_VAR_BANDS = {"diag": len(S2_BANDS), "iso": 1}
DEFAULT_MASK_SOURCE = "s2cloudless-10m"
"""Where the mask of a model that takes one comes from by default: s2cloudless at 10 m, as the benchmark's masks."""


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
    mask_path: Path | None
    tile: int
    overlap: int
    """Effective overlap in px (the stride is rounded to a multiple of 16)."""
    batch_size: int
    """Tiles per forward pass."""
    mask_kind: str | None
    """The cloud mask fed to the model (None: the model takes none, or ``--mask none``)."""
    mask_source: str | None
    """Where that mask came from: s2cloudless-10m, s2cloudless-60m or a file."""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per stage (:class:`StageClock`): read, mask, forward, blend, write, cog, and wait with prefetch."""
    pixels_classified: int = 0
    """Pixels s2cloudless classified at 10 m (each scene pixel at most once; 0 for other mask sources)."""
    tiles_passed_through: int = 0
    """Tiles clear throughout (by the mask), whose output is their input: not run through the model."""

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for JSON and logs."""
        data = asdict(self)
        data["size"] = list(self.size)
        for key in ("out_path", "var_path", "mask_path"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data


@dataclass(frozen=True)
class SceneInputs:
    """Where a scene comes from and how to read it (the ``sscr infer`` input flags)."""

    s2: Path
    """L1C product (``.SAFE`` directory, its ``.zip``, ``MTD_MSIL1C.xml``) or a 13-band GeoTIFF."""
    s1: tuple[Path, ...] = ()
    """One 2-band file (VV, VH) or two single-band files, any CRS and pixel size; empty for optical models."""
    s1_units: str = "db"
    s2_resampling: str = "nearest"
    window: tuple[int, int, int, int] | None = None
    """(col_off, row_off, width, height) on the 10 m grid."""
    bbox: tuple[float, float, float, float] | None = None
    """(west, south, east, north) in ``bbox_crs``."""
    bbox_crs: str = "EPSG:4326"

    @classmethod
    def of(cls, s2: str | Path, s1: str | Path | Sequence[str | Path] | None = None, **kwargs: Any) -> SceneInputs:
        """Build from loose arguments: ``s1`` a path, a list of paths or None."""
        if s1 is None:
            paths: tuple[Path, ...] = ()
        elif isinstance(s1, str | Path):
            paths = (Path(s1),)
        else:
            paths = tuple(Path(p) for p in s1)
        return cls(Path(s2), paths, **kwargs)


@dataclass(frozen=True)
class SceneOutputs:
    """The COGs to write: prediction, and optionally the variance and the cloud mask the model used."""

    out: Path
    var: Path | None = None
    mask: Path | None = None

    def named(self) -> dict[str, Path]:
        """``{flag: path}`` of the outputs asked for, by their ``sscr infer`` flags."""
        pairs = (("--out", self.out), ("--var-out", self.var), ("--mask-out", self.mask))
        return {flag: Path(path) for flag, path in pairs if path is not None}


@dataclass(frozen=True)
class SceneSpeed:
    """How a scene run saves time; every choice keeps the output (the tests compare each with the plain path).

    ``share_mask``: s2cloudless at 10 m classifies each scene pixel once, not once per
    overlapping tile (:class:`sscr.data.scene_masks.SceneMasker`: the same masks bit for bit).
    ``prefetch``: a second thread reads the next batch and computes its mask while the model
    runs. ``mask_threads``: LightGBM threads of s2cloudless (None: ``SSCR_S2CLOUDLESS_THREADS``
    if set, else torch's thread count). ``skip_clear``: a tile whose output the model says
    is its input throughout, from the mask alone (``sscr_lite`` where the mask is clear,
    :func:`sscr.predict.passes_through`), is not run through the model: the same output, bit
    for bit, at the cost of its mask.
    """

    share_mask: bool = True
    prefetch: bool = True
    mask_threads: int | None = None
    skip_clear: bool = True

    def threads(self) -> int:
        """LightGBM threads for s2cloudless."""
        if self.mask_threads is not None:
            return max(1, self.mask_threads)
        value = os.environ.get(S2CLOUDLESS_THREADS_ENV, "").strip()
        return max(1, int(value)) if value.isdigit() else torch.get_num_threads()


PLAIN = SceneSpeed(share_mask=False, prefetch=False, mask_threads=None, skip_clear=False)
"""The path before the speed-ups: a mask per tile, no second thread, every tile through the model (for comparisons)."""


def infer_scene(
    model: nn.Module,
    s2_path: str | Path | SceneInputs,
    s1_path: str | Path | Sequence[str | Path] | None,
    out_path: str | Path,
    var_path: str | Path | None = None,
    *,
    mask_path: str | Path | None = None,
    tile: int = 256,
    overlap: int = 32,
    batch_size: int | None = None,
    mask_kind: str | None = DEFAULT_MASK_KIND,
    mask: str | MaskChoice = DEFAULT_MASK_SOURCE,
    model_source: str = "",
    model_version: str | None = None,
    model_files: Sequence[Path] = (),
    decoded_dir: str | Path | None = None,
    progress: bool = True,
    speed: SceneSpeed = SceneSpeed(),  # noqa: B008 - frozen
) -> SceneReport:
    """Remove clouds from a whole scene: cloudy S2 (+ S1) -> cloud-free S2 as a Cloud-Optimized GeoTIFF.

    ``s2_path``: an L1C product or a 13-band GeoTIFF (:func:`sscr.data.sentinel2.open_s2`),
    or a :class:`SceneInputs` with crops, resampling and S1 units (then ``s1_path`` is
    ignored); ``s1_path``: VV and VH in dB, one 2-band file or two files, any CRS and pixel
    size (:func:`sscr.data.sentinel1.open_s1` reprojects them by windows onto the S2 grid),
    required when the model fuses SAR. Tiles of ``tile`` px overlapping by ``overlap`` px
    (the stride is rounded down to a multiple of 16 and of the model's ``size_multiple``,
    see :meth:`SceneTiling.plan`) are normalised as the data set is, run ``batch_size`` at
    a time (default: 1 on CPU, where one tile at a time stays in cache and runs ~1.8x
    faster per tile than 4, ``benchmarks/results/inference_speedup.md``; 4 on a GPU) and
    blended with cosine ramps.

    Cloud mask: only for models that take one (``model.use_mask``): ``mask_kind`` (the
    kind the model was trained with) computed as ``mask`` says (``s2cloudless-10m``, the
    benchmark's; ``s2cloudless-60m``; ``none``; or a mask file's path, see
    :class:`sscr.data.scene_masks.MaskChoice`); ``mask_kind=None`` feeds no mask.

    Outputs (COGs, :mod:`sscr.data.cog`): ``out_path``, 13 bands uint16 DN in the input's
    radiometric convention (a baseline >= 04.00 product gets its offset back), 0 = no data
    where every input band is 0; ``var_path`` (float32 variance of [0, 1] reflectance,
    13 or 1 bands) when the model predicts one; ``mask_path`` (uint8 percent) when a mask
    was used. Tags name the model (``model_source``, ``model_version``) and what was done
    to the inputs. No output may be an input (``model_files`` too) or another output.
    Each output is staged beside its target and made a COG at the end: a failure leaves
    no partial output. Memory does not depend on the scene size beyond ``overlap`` rows of
    the scene width (:meth:`SceneTiling.buffer_shapes`); JPEG 2000 bands are first
    decoded once into ``decoded_dir`` (default: beside the output; removed on success).
    ``speed``: see :class:`SceneSpeed`; :attr:`SceneReport.stage_seconds` says where the time went.
    Outputs are all-or-nothing as a set: all are converted under temporary names, then renamed
    into place; a staging or temporary file that a killed run left beside an output is removed
    first (and logged).
    """
    inputs = s2_path if isinstance(s2_path, SceneInputs) else SceneInputs.of(s2_path, s1_path)
    outputs = SceneOutputs(Path(out_path), Path(var_path) if var_path is not None else None,
                           Path(mask_path) if mask_path is not None else None)
    use_sar = bool(getattr(model, "use_sar", False))
    choice = _mask_choice(model, mask, mask_kind)
    _check_paths(use_sar, inputs, outputs, choice, model_files)
    batch_size = _batch_size(model, batch_size)
    var_bands, outputs = _variance_output(model, outputs)
    if outputs.mask is not None and choice is None:
        log.warning("%s is fed no cloud mask: %s is not written", type(model).__name__, outputs.mask)
        outputs = SceneOutputs(outputs.out, outputs.var, None)

    started = time.perf_counter()
    model.eval()
    for path in outputs.named().values():
        for stale in remove_stale_staging(path):
            log.warning("removed %s, left by an interrupted run that was writing %s", stale, path)
    clock = StageClock()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
        scene = open_s2(inputs.s2, inputs.s2_resampling, inputs.window, inputs.bbox, inputs.bbox_crs)
        _check_outputs_against(outputs, [Path(s.path) for s in scene.sources if not s.path.startswith("/vsi")])
        decoded = Path(decoded_dir) if decoded_dir is not None else outputs.out.with_name(
            f".{outputs.out.name}.s2_decoded")
        scene = scene.decoded(decoded)
        if decoded_dir is None:
            scene.processing.pop("s2_decoded_to", None)  # a cache removed at the end, not worth a tag
        report = _run(model, scene, inputs if use_sar else None, outputs, choice, var_bands, tile, overlap,
                      batch_size, output_tags(model_source or type(model).__name__, model_version), progress,
                      speed, clock)
    if decoded_dir is None and decoded.is_dir():
        shutil.rmtree(decoded)  # a resumable cache while the run lasts; a failed run keeps it for the next
    seconds = time.perf_counter() - started
    width, height = report["size"]
    return SceneReport(
        size=(width, height), tiles=report["tiles"], tiles_skipped=report["skipped"], seconds=seconds,
        pixels_per_second=width * height / max(seconds, 1e-9), out_path=outputs.out, var_path=outputs.var,
        mask_path=outputs.mask, tile=tile, overlap=report["overlap"], batch_size=batch_size,
        mask_kind=choice.kind if choice else None, mask_source=choice.source.describe() if choice else None,
        stage_seconds={stage: round(value, 3) for stage, value in clock.seconds.items()},
        pixels_classified=report["classified"], tiles_passed_through=report["passed"],
    )


@dataclass(frozen=True)
class _Mask:
    """The cloud mask a run feeds the model: its kind and where it comes from."""

    kind: str
    source: MaskChoice


def _mask_choice(model: nn.Module, mask: str | MaskChoice, mask_kind: str | None) -> _Mask | None:
    """None for networks that take no mask (no s2cloudless is computed for them), ``--mask none`` or no kind."""
    choice = mask if isinstance(mask, MaskChoice) else MaskChoice.parse(str(mask))
    if not getattr(model, "use_mask", False) or mask_kind is None or choice.source == "none":
        return None
    return _Mask(mask_kind, choice)


def _run(model: nn.Module, scene: Any, sar_inputs: SceneInputs | None, outputs: SceneOutputs,
         choice: _Mask | None, var_bands: int, tile: int, overlap: int, batch_size: int,
         tags: dict[str, str], progress: bool, speed: SceneSpeed, clock: StageClock) -> dict[str, Any]:
    """Open the readers and the staging files, stream the tiles, then turn the staging files into COGs."""
    grid = scene.grid
    tiling = SceneTiling.plan(grid.width, grid.height, tile, overlap, int(getattr(model, "size_multiple", 1)))
    specs = {"out": prediction_spec(scene.radiometry)}
    if outputs.var is not None:
        specs["var"] = variance_spec(var_bands)
    if outputs.mask is not None and choice is not None:
        specs["mask"] = mask_spec(choice.kind)
    paths = {"out": outputs.out, "var": outputs.var, "mask": outputs.mask}
    with contextlib.ExitStack() as files:
        s2 = files.enter_context(scene.open())
        s1 = files.enter_context(open_s1(list(sar_inputs.s1), grid, sar_inputs.s1_units)) if sar_inputs else None
        if s1 is not None:
            _check_s1_covers(s1, scene)
        mask_file = None
        if choice is not None and choice.source.source == "file":
            mask_file = files.enter_context(open_mask_file(choice.source.path, grid))
        processing = {**s2.tags(), **(s1.processing if s1 is not None else {}),
                      **(mask_file.processing if mask_file is not None else {}),
                      "sscr_tiling": f"tile {tiling.x.tile} x {tiling.y.tile} px, overlap {max(tiling.x.overlap, tiling.y.overlap)} "
                                     "px, cosine blending",
                      "sscr_cloud_mask": f"{choice.kind} from {choice.source.describe()}" if choice else "none"}
        masker = None
        if choice is not None and mask_file is None:
            masker = SceneMasker(choice.kind, choice.source, grid.width, speed.threads(), share=speed.share_mask)
        staged = {}
        try:
            for key, spec in specs.items():
                staged[key] = create_staging(paths[key], grid, spec, tiling.block_shape)
            readers = _Readers(s2, s1, mask_file)
            skipped, passed = _stream_tiles(model, readers, tiling, staged, scene.radiometry, var_bands,
                                            batch_size, masker, speed, clock, progress)
            for dataset in staged.values():
                dataset.close()
            # libtiff reports a block it could not flush at close as a GDAL error message, not an exception
            full = next((paths[key] for key in specs if disk_full(paths[key].parent)), None)
            if full is not None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(full))
            faults.checkpoint("infer.cog")  # tests stop or kill the run here: tiles done, no COG yet
            with clock("cog"):
                # all or nothing: every COG under a temporary name first, then all renamed into place
                finish_cogs([(paths[key], specs[key]) for key in specs], {**tags, **processing})
        except BaseException as err:
            for dataset in staged.values():
                dataset.close()
            full = next((paths[key] for key in specs if disk_full(paths[key].parent)), None)  # before freeing any
            for key in specs:
                remove_stale_staging(paths[key])  # staging, temporary COG and GDAL's temporary overviews
            if full is not None and isinstance(err, Exception) and getattr(err, "errno", None) != errno.ENOSPC:
                # GDAL reports a full disk as "Write failed"; say what it is, naming the output
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(full)) from err
            raise
    return {"size": (grid.width, grid.height), "tiles": tiling.tiles, "skipped": skipped,
            "overlap": max(tiling.x.overlap, tiling.y.overlap),
            "classified": masker.classified if masker is not None else 0, "passed": passed}


def _check_s1_covers(s1: Any, scene: Any) -> None:
    """S1 must overlap the S2 area: a model fed only "no SAR" everywhere would silently ignore its SAR input."""
    from rasterio.warp import transform_bounds

    left, bottom, right, top = scene.grid.bounds
    for index, source in enumerate(s1.sources):
        grid = s1.source_grid(index)
        west, south, east, north = transform_bounds(scene.crs, grid.crs, left, bottom, right, top, densify_pts=21)
        s_left, s_bottom, s_right, s_top = grid.bounds
        if east <= s_left or west >= s_right or north <= s_bottom or south >= s_top:
            raise PatchError(source.path, f"S1 {source.name} ({grid.crs.to_string()}, bounds "
                                          f"{tuple(round(v) for v in grid.bounds)}) does not overlap the S2 scene "
                                          f"(bounds {tuple(round(v) for v in (west, south, east, north))} in its CRS): "
                                          "pass S1 of the same area")


# ---------------------------------------------------------------- paths


def _same_file(first: Path, second: Path) -> bool:
    """The same file: equal resolved paths (symlinks followed), or one inode (hard links) when both exist."""
    if first.resolve() == second.resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def _check_outputs_against(outputs: SceneOutputs, inputs: Sequence[Path]) -> None:
    """No output is an input, also through a symlink or a hard link."""
    for flag, path in outputs.named().items():
        for source in inputs:
            if _same_file(path, source):
                raise ValueError(f"{flag} {path} is the input {source}: writing it would destroy the input; "
                                 "choose another output path")


def _check_paths(use_sar: bool, inputs: SceneInputs, outputs: SceneOutputs, choice: _Mask | None,
                 model_files: Sequence[Path]) -> None:
    """Inputs exist (S1 too when the model fuses SAR); outputs are files that are neither inputs nor each other."""
    if use_sar and not inputs.s1:
        raise ValueError("this model fuses SAR: pass S1 (--s1 FILE: VV and VH in one file, or --s1 VV.tif VH.tif)")
    sources = [inputs.s2, *(inputs.s1 if use_sar else ())]
    if choice is not None and choice.source.path is not None:
        sources.append(choice.source.path)
    for path in sources:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
    named = outputs.named()
    for flag, path in named.items():
        if path.is_dir():
            raise ValueError(f"{flag} {path} is a directory: pass a file name, e.g. {path / 'clear.tif'}")
    _check_outputs_against(outputs, [*sources, *(Path(p) for p in model_files)])
    flags = list(named)
    for i, first in enumerate(flags):
        for second in flags[i + 1:]:
            if _same_file(named[first], named[second]):
                raise ValueError(f"{first} and {second} are the same file {named[first]}: give each output its own path")


def check_batch_size(batch_size: int | None) -> None:
    """Refuse a batch size below 1, naming ``sscr infer``'s option (before a model is loaded for nothing)."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1 (tiles per forward pass), got {batch_size}; "
                         "leave it out for the default (1 on CPU, 4 on a GPU)")


def _batch_size(model: nn.Module, batch_size: int | None) -> int:
    """Tiles per forward pass: as asked, else 1 on CPU and 4 on a GPU."""
    check_batch_size(batch_size)
    if batch_size is None:
        batch_size = 1 if next(model.parameters()).device.type == "cpu" else 4
    return batch_size


def _variance_output(model: nn.Module, outputs: SceneOutputs) -> tuple[int, SceneOutputs]:
    """(variance bands to write, outputs): no variance when none is asked or the model predicts none."""
    var_bands = _VAR_BANDS.get(getattr(model, "variance", None) or "", 0)
    if outputs.var is not None and not var_bands:
        log.warning("%s predicts no variance: %s is not written", type(model).__name__, outputs.var)
        return 0, SceneOutputs(outputs.out, None, outputs.mask)
    return (var_bands if outputs.var is not None else 0), outputs


# ---------------------------------------------------------------- tiles


class StageClock:
    """Seconds spent per stage of a scene run (read, mask, forward, blend, write, cog, ...), from any thread.

    With ``prefetch``, read and mask run in a second thread beside forward, blend and
    write, so the stages add up to more than the wall time; ``wait`` is the time the tile
    loop waited for the next batch to be read.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - started
            with self._lock:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + elapsed


@dataclass
class _Readers:
    """The open inputs, all on the S2 grid: S2 DN, S1 dB (or None), a mask file (or None)."""

    s2: Any
    s1: Any | None
    mask_file: Any | None


@dataclass
class _TileInputs:
    """One batch of tiles as read, with the mask to feed each and what of each is no data."""

    tiles: list[tuple[int, int]]
    dn: np.ndarray  # (B, 13, h, w) uint16, the training data's convention
    db: np.ndarray | None  # (B, 2, h, w) float32, NaN where S1 has no data
    mask: np.ndarray | None  # (B, h, w) float32 cloud probability (file or computed), None: no mask
    spans: list[tuple[slice, slice]]
    """Where each tile's logical span sits in its read window."""
    windows: list[tuple[tuple[int, int], tuple[int, int]]]
    """Each tile's read window (rows, cols) on the scene, before padding to a full tile."""
    blanks: list[np.ndarray]
    """(h, w) True where every S2 band is 0, over each tile's logical span."""


def _read_tile(dataset: Any, window: Window, shape: tuple[int, int]) -> np.ndarray:
    """Read a window; a read cut short by the scene edge is padded (reflect) to ``shape`` like the whole scene."""
    return pad_to(dataset.read(window=window), shape)


def _read_batch(readers: _Readers, tiling: SceneTiling, tiles: list[tuple[int, int]]) -> _TileInputs:
    dns, dbs, masks, spans, windows = [], [], [], [], []
    shape = (tiling.y.tile, tiling.x.tile)
    for row, col in tiles:
        (ry0, ry1), (rx0, rx1) = tiling.y.read_span(row), tiling.x.read_span(col)
        window = Window(rx0, ry0, rx1 - rx0, ry1 - ry0)
        windows.append(((ry0, ry1), (rx0, rx1)))
        dns.append(_read_tile(readers.s2, window, shape))
        if readers.s1 is not None:
            dbs.append(_read_tile(readers.s1, window, shape))
        if readers.mask_file is not None:
            masks.append(_read_tile(_MaskWindows(readers.mask_file), window, shape))
        (ly0, ly1), (lx0, lx1) = tiling.y.span(row), tiling.x.span(col)
        spans.append((slice(ly0 - ry0, ly1 - ry0), slice(lx0 - rx0, lx1 - rx0)))
    dn = np.stack(dns)
    blanks = [_no_data(tile)[span] for tile, span in zip(dn, spans, strict=True)]
    return _TileInputs(tiles, dn, np.stack(dbs) if dbs else None, np.stack(masks) if masks else None, spans,
                       windows, blanks)


@dataclass
class _MaskWindows:
    """A mask file read as cloud probability, uncovered pixels cloudy (:func:`read_mask`), by window."""

    reader: Any

    def read(self, window: Window) -> np.ndarray:
        return read_mask(self.reader, window)


def _tile_batches(tiling: SceneTiling, batch_size: int) -> Iterator[list[tuple[int, int]]]:
    """(row, col) tiles in row-major order, ``batch_size`` at a time (a batch may run on into the next row).

    Every read has the same shape, so batches are always full but the last, and the
    model's working set is the same for every scene size.
    """
    tiles = ((row, col) for row in range(tiling.y.count) for col in range(tiling.x.count))
    while batch := list(itertools.islice(tiles, batch_size)):
        yield batch


@dataclass
class _TileReader:
    """Reads a batch of tiles and computes the mask to feed them: what the second thread does with ``prefetch``."""

    readers: _Readers
    tiling: SceneTiling
    masker: SceneMasker | None
    clock: StageClock

    def __call__(self, tiles: list[tuple[int, int]] | None) -> _TileInputs | None:
        if tiles is None:
            return None
        with self.clock("read"):
            batch = _read_batch(self.readers, self.tiling, tiles)
        if self.masker is not None and batch.mask is None:
            # only the tiles that go through the model (not all no-data) need a mask
            run = [i for i, blank in enumerate(batch.blanks) if not blank.all()]
            if run:
                with self.clock("mask"):
                    computed = self.masker(batch.dn[run], [batch.windows[i] for i in run])
                batch.mask = np.ones(batch.dn.shape[:1] + batch.dn.shape[2:], np.float32)
                batch.mask[run] = computed
        return batch


def _predict_batch(model: nn.Module, cloudy_dn: np.ndarray, db: np.ndarray | None, mask: np.ndarray | None,
                   var_bands: int, skip_clear: bool = False) -> tuple[np.ndarray, bool]:
    """Normalise and predict a batch of tiles -> ((B, 13 + var_bands (+ 1 mask), h, w) float32, skipped).

    ``skipped``: the model was not run, the batch passes through it unchanged (``skip_clear``).
    """
    cloudy = torch.from_numpy(normalize_s2(cloudy_dn))
    mask_tensor = torch.from_numpy(mask) if mask is not None else None
    skipped = skip_clear and not var_bands and passes_through(model, cloudy, mask_tensor)
    if skipped:
        out = passed_through(cloudy)
    else:
        sar = normalize_s1(db) if db is not None else None
        out = predict_tensors(model, cloudy, torch.from_numpy(sar) if sar is not None else None, mask_tensor)
    parts = [out["mean"]]
    if var_bands:
        if "var" not in out or out["var"].shape[1] != var_bands:
            raise RuntimeError(f"{type(model).__name__} declares variance {model.variance!r} ({var_bands} bands) "
                               f"but returned {({k: tuple(v.shape) for k, v in out.items()})}")
        parts.append(out["var"])
    if mask is not None:
        parts.append(torch.from_numpy(np.asarray(mask, np.float32))[:, None])
    return torch.cat(parts, dim=1).cpu().numpy(), skipped


def _stream_tiles(model: nn.Module, readers: _Readers, tiling: SceneTiling, staged: dict[str, Any],
                  radiometry: Any, var_bands: int, batch_size: int, masker: SceneMasker | None,
                  speed: SceneSpeed, clock: StageClock, progress: bool) -> tuple[int, int]:
    """Read, predict and blend every tile in row-major order, writing each final region as it completes.

    The mask the model was fed is blended like the prediction (s2cloudless' smoothing makes
    tile edges differ). With ``speed.prefetch`` the next batch is read (and its mask
    computed) in a second thread while this one runs the model. Returns the number of
    tiles skipped because they hold only no-data, and of those passed through unchanged
    (``speed.skip_clear``).
    """
    bands = len(S2_BANDS)
    masked = masker is not None or readers.mask_file is not None
    channels = bands + var_bands + int(masked)
    blender = StreamingBlender(tiling, channels)
    reader = _TileReader(readers, tiling, masker, clock)
    batches = _tile_batches(tiling, batch_size)
    skipped = passed = 0
    with (tqdm(total=tiling.tiles, desc="scene tiles", unit="tile", disable=not progress) as bar,
          ThreadPoolExecutor(1, thread_name_prefix="sscr-tile-reader") as pool):
        pending = pool.submit(reader, next(batches, None)) if speed.prefetch else None
        while True:
            if pending is not None:
                with clock("wait"):
                    batch = pending.result()
                pending = pool.submit(reader, next(batches, None)) if batch is not None else None
            else:
                batch = reader(next(batches, None))
            if batch is None:
                break
            # a tile that is no-data throughout is not worth a forward pass: its pixels are written as no-data
            run = [i for i, blank in enumerate(batch.blanks) if not blank.all()]
            skipped += len(batch.tiles) - len(run)
            predicted = {}
            if run:
                with clock("forward"):
                    outputs, clear = _predict_batch(model, batch.dn[run],
                                                    batch.db[run] if batch.db is not None else None,
                                                    batch.mask[run] if batch.mask is not None else None, var_bands,
                                                    speed.skip_clear)
                predicted = dict(zip(run, outputs, strict=True))
                passed += len(run) if clear else 0
            for i, (row, col) in enumerate(batch.tiles):
                rows, cols = batch.spans[i]
                with clock("blend"):
                    if i in predicted:
                        prediction = predicted[i][:, rows, cols]
                    else:
                        prediction = np.zeros((channels, rows.stop - rows.start, cols.stop - cols.start), np.float32)
                    top, left, blended = blender.add(row, col, prediction)
                    # the final region starts at the tile's logical origin, so its no-data is the tile's top-left
                    valid = ~batch.blanks[i][: blended.shape[1], : blended.shape[2]]
                    layers = {"out": radiometry.restore(denormalize_s2(blended[:bands]), valid)}
                    if "var" in staged:
                        var = np.ascontiguousarray(blended[bands: bands + var_bands], dtype=np.float32)
                        var[:, ~valid] = np.nan
                        layers["var"] = var
                    if "mask" in staged:
                        layers["mask"] = mask_to_percent(blended[-1:], valid)
                window = Window(left, top, blended.shape[2], blended.shape[1])
                with clock("write"):
                    for key, data in layers.items():
                        staged[key].write(data, window=window)
                bar.update(1)
            faults.checkpoint("infer.tile")  # tests interrupt or kill the run here, amid its tiles
    return skipped, passed


def _no_data(dn: np.ndarray) -> np.ndarray:
    """(h, w) True where every S2 band is 0 (L1C no data; the reader writes 0 there)."""
    return (dn == 0).all(axis=0)
