"""Cloud masks for whole scenes: where they come from, and s2cloudless at 60 m.

Only networks that take a cloud mask (``model.use_mask``) need one. For those, the mask
can come from (:data:`MASK_SOURCES`):

``s2cloudless-10m``
    s2cloudless on every 10 m pixel, as the benchmark's masks were computed
    (:func:`sscr.clouds.detect.compute_masks`). About 1 s per 256 x 256 px on one core.
    Its classifier works pixel by pixel, so a scene's tiles share it: :class:`SceneMasker`
    classifies each pixel once (:class:`SceneProbability`) however many tiles overlap it,
    and gives every tile the mask :func:`tile_masks` would, bit for bit.
``s2cloudless-60m``
    s2cloudless's classifier on 6 x 6 block means of the DN (the 60 m grid of B1, B9
    and B10; 36 times fewer pixels), its probability upsampled bilinearly to 10 m, then
    the benchmark's post-processing at 10 m (disk average and threshold for the binary
    mask, floor and Gaussian blur for the map). Agreement with 10 m and the speed ratio:
    ``benchmarks/results/mask_resolution.md``.
``file``
    a precomputed mask (cloud probability in [0, 1], or 0/1, or integers with GDAL
    scale/offset metadata such as 0..100 with scale 0.01) on any grid, reprojected onto
    the S2 grid (:func:`open_mask_file`); pixels it does not cover count as cloudy.
``none``
    no mask: a network that takes one then treats every pixel as cloudy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window
from scipy import ndimage

from sscr.clouds.detect import (
    S2CLOUDLESS_KINDS,
    _clipped_dn,
    _probability,
    cloud_shadow_mask,
    compute_masks,
    is_blank,
    masks_from_probability,
    s2cloudless_probability,
)
from sscr.config import MASK_KINDS
from sscr.data.io import PatchError
from sscr.data.regrid import BandSource, Grid, GridReader

MASK_SOURCES: tuple[str, ...] = ("s2cloudless-10m", "s2cloudless-60m", "file", "none")
#: 10 m pixels per 60 m pixel, per side.
COARSE_FACTOR = 6


def block_mean(dn: np.ndarray, factor: int) -> np.ndarray:
    """(bands, H, W) -> (bands, ceil(H / f), ceil(W / f)) float32 means of f x f blocks (edge blocks: their pixels)."""
    dn = np.asarray(dn, np.float32)
    bands, height, width = dn.shape
    pad_h, pad_w = (-height) % factor, (-width) % factor
    padded = np.pad(dn, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=np.nan)
    blocks = padded.reshape(bands, (height + pad_h) // factor, factor, (width + pad_w) // factor, factor)
    return np.nanmean(blocks, axis=(2, 4)).astype(np.float32)


def upsample_bilinear(coarse: np.ndarray, factor: int, shape: tuple[int, int]) -> np.ndarray:
    """(h, w) on a grid ``factor`` times coarser -> (H, W), bilinear, pixel centres aligned (edges held)."""
    rows = (np.arange(shape[0], dtype=np.float64) + 0.5) / factor - 0.5
    cols = (np.arange(shape[1], dtype=np.float64) + 0.5) / factor - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    return ndimage.map_coordinates(np.asarray(coarse, np.float32), grid, order=1, mode="nearest").astype(np.float32)


def s2cloudless_probability_coarse(dn: np.ndarray, factor: int = COARSE_FACTOR,
                                   threads: int | None = None) -> np.ndarray:
    """s2cloudless probability (H, W) of one (13, H, W) DN patch, classified on ``factor`` x ``factor`` block means.

    Blank patch: all ones, as at 10 m.
    """
    clipped = _clipped_dn(dn)
    if is_blank(clipped):
        return np.ones(clipped.shape[1:], np.float32)
    coarse = s2cloudless_probability(block_mean(clipped, factor), threads)
    return upsample_bilinear(coarse, factor, clipped.shape[1:])


def compute_masks_at(dn: np.ndarray, kinds: Sequence[str], resolution_m: int = 10,
                     threads: int | None = None) -> dict[str, np.ndarray]:
    """:func:`~sscr.clouds.detect.compute_masks` with s2cloudless's classifier run at ``resolution_m`` (10 or 60).

    At 60 m the probability comes from :func:`s2cloudless_probability_coarse`; the binary
    mask and the map are then made at 10 m as the benchmark makes them. The DSen2-CR
    heuristic (``cloud_cloudshadow_mask``) is cheap and always computed at 10 m, and so are the
    shadows of ``s2cloudless_shadow_map`` (matched on the 10 m DN to the 60 m probability's clouds).
    """
    if resolution_m == 10:
        return compute_masks(dn, kinds, threads)
    if resolution_m != 10 * COARSE_FACTOR:
        raise ValueError(f"s2cloudless runs at 10 or {10 * COARSE_FACTOR} m, got {resolution_m}")
    unknown = [kind for kind in kinds if kind not in MASK_KINDS]
    if unknown:
        raise ValueError(f"unknown mask kinds {unknown}; expected names from {list(MASK_KINDS)}")
    clipped = _clipped_dn(dn)
    if is_blank(clipped):
        return {kind: np.ones(clipped.shape[1:], np.float32) for kind in kinds}
    masks: dict[str, np.ndarray] = {}
    wanted = [kind for kind in kinds if kind in S2CLOUDLESS_KINDS]
    if wanted:
        probability = s2cloudless_probability_coarse(clipped, COARSE_FACTOR, threads)
        masks.update(masks_from_probability(probability, wanted, clipped))
    if "cloud_cloudshadow_mask" in kinds:
        masks["cloud_cloudshadow_mask"] = cloud_shadow_mask(clipped)
    return {kind: masks[kind] for kind in kinds}


# ---------------------------------------------------------------- a precomputed mask file


def open_mask_file(path: str | Path, grid: Grid, resampling: str = "bilinear") -> GridReader:
    """A precomputed cloud mask (1 band) read by windows of the S2 ``grid``, as cloud probability in [0, 1].

    The band's GDAL scale and offset are applied (so 0..100 % with scale 0.01 works);
    values must then lie in [0, 1]. Read it with :func:`read_mask`, which counts pixels the
    file does not cover (or marks no-data) as cloudy.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with rasterio.open(path) as src:
            count, scale, offset = src.count, src.scales[0], src.offsets[0]
            side = (min(64, src.height), min(64, src.width))
            sample = src.read(1, out_shape=side, masked=True).astype(np.float64).filled(np.nan) * scale + offset
    except rasterio.errors.RasterioIOError as err:
        raise PatchError(path, f"cannot read the cloud mask ({str(err).splitlines()[0]})") from None
    if count != 1:
        raise PatchError(path, f"cloud mask has {count} bands, expected 1 (cloud probability in [0, 1] or 0/1)")
    finite = sample[np.isfinite(sample)]
    if finite.size and (finite.min() < -1e-6 or finite.max() > 1 + 1e-6):
        raise PatchError(path, f"cloud mask values span {finite.min():g}..{finite.max():g}; expected a probability "
                               "in [0, 1] or 0/1 (for 0..100 or 0..255 set the band scale, e.g. "
                               "gdal_edit.py -scale 0.01)")

    def to_probability(values: np.ndarray) -> np.ndarray:
        return np.clip(values * np.float32(scale) + np.float32(offset), 0.0, 1.0)

    reader = GridReader([BandSource(str(path), 1, "cloud")], grid, Resampling[resampling], to_probability,
                        name=str(path))
    aligned = reader.source_grid(0).aligned_with(grid)
    reader.processing = {
        "mask_input": str(path),
        "mask_reprojection": "none (already on the S2 grid)" if aligned else f"rasterio.warp.reproject, {resampling}",
        "mask_outside": "pixels the file does not cover count as cloudy (1)",
    }
    return reader


def read_mask(reader: GridReader, window: Window) -> np.ndarray:
    """(h, w) float32 cloud probability over ``window`` of the S2 grid; uncovered or no-data pixels -> 1 (cloudy)."""
    values = reader.read(1, window=window)
    return np.where(np.isnan(values), np.float32(1.0), values).astype(np.float32)


# ---------------------------------------------------------------- choosing the source


@dataclass(frozen=True)
class MaskChoice:
    """Where a scene's cloud mask comes from: one of :data:`MASK_SOURCES`, and the file for ``file``."""

    source: str = "s2cloudless-10m"
    path: Path | None = None

    @classmethod
    def parse(cls, text: str) -> MaskChoice:
        """``s2cloudless-10m``, ``s2cloudless-60m``, ``none``, or a path to a mask file (the ``--mask`` value)."""
        if text in MASK_SOURCES and text != "file":
            return cls(text)
        path = Path(text)
        if not path.suffix:
            raise ValueError(f"--mask {text!r}: expected one of s2cloudless-10m, s2cloudless-60m, none, or a mask "
                             "GeoTIFF path")
        return cls("file", path)

    def describe(self) -> str:
        """One line for tags."""
        return f"file {self.path}" if self.source == "file" else self.source


def tile_masks(dn: np.ndarray, kind: str, choice: MaskChoice, threads: int | None = None) -> np.ndarray | None:
    """The mask of ``kind`` for a batch of tiles (B, 13, h, w) DN computed as ``choice`` says -> (B, h, w) or None.

    Covers the computed sources; ``none`` gives None; ``file`` is read by window with
    :func:`read_mask` instead (the tile's position is needed).
    """
    if choice.source == "none":
        return None
    if choice.source == "file":
        raise ValueError("a mask file is read by window: use open_mask_file and read_mask")
    resolution = 10 if choice.source == "s2cloudless-10m" else 10 * COARSE_FACTOR
    return np.stack([compute_masks_at(tile, [kind], resolution, threads)[kind] for tile in dn]).astype(np.float32)


# ---------------------------------------------------------------- one scene, each pixel classified once


def pad_to(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pad (..., h, w) at the bottom and right to ``shape``: reflect, or edge when a side is too short to reflect.

    How a tile cut short by the scene edge is completed (as the whole scene would be padded).
    """
    pad_h, pad_w = shape[0] - data.shape[-2], shape[1] - data.shape[-1]
    if not (pad_h or pad_w):
        return data
    mode = "reflect" if pad_h < data.shape[-2] and pad_w < data.shape[-1] else "edge"
    return np.pad(data, [(0, 0)] * (data.ndim - 2) + [(0, pad_h), (0, pad_w)], mode=mode)


class SceneProbability:
    """s2cloudless cloud probability of a scene's pixels, each pixel classified once, for windows visited in row bands.

    Windows come as a tile grid visits them: bands of rows top to bottom (a band may overlap the
    previous one, never start above it), windows within a band in any order. The classifier
    works pixel by pixel, so a window cut from what is held equals the window classified on its
    own, bit for bit; only the pixels not classified yet are. Holds the current band: its rows
    x the scene width, float32 and a flag per pixel (for a 256 px band of a 10980 px scene, 14 MB).
    """

    def __init__(self, width: int, threads: int | None = None) -> None:
        self.width = width
        self.threads = threads
        self.top = 0
        self.probability = np.zeros((0, width), np.float32)
        self.known = np.zeros((0, width), bool)
        self.classified = 0
        """Pixels classified so far."""

    def _hold(self, top: int, bottom: int) -> None:
        """Hold rows [top, bottom): keep what is held of them, drop the rows above."""
        if top < self.top:
            raise ValueError(f"rows must come top to bottom: a window starts at row {top}, above row {self.top}")
        held = self.top + len(self.probability)
        if top == self.top and bottom <= held:
            return
        keep = max(0, min(held, bottom) - top)
        probability = np.zeros((bottom - top, self.width), np.float32)
        known = np.zeros((bottom - top, self.width), bool)
        if keep:
            probability[:keep] = self.probability[top - self.top: top - self.top + keep]
            known[:keep] = self.known[top - self.top: top - self.top + keep]
        self.top, self.probability, self.known = top, probability, known

    def window(self, rows: tuple[int, int], cols: tuple[int, int], clipped: np.ndarray) -> np.ndarray:
        """Probability (h, w) over rows x cols, given the window's DN ``clipped`` (13, h, w), clipped to [0, 10000]."""
        (top, bottom), (left, right) = rows, cols
        if clipped.shape[1:] != (bottom - top, right - left):
            raise ValueError(f"DN of shape {clipped.shape} for a window of {bottom - top} x {right - left} px")
        self._hold(top, bottom)
        y0, y1 = top - self.top, bottom - self.top
        known = self.known[y0:y1, left:right]
        todo = ~known
        count = int(todo.sum())
        if count:
            pixels = clipped[:, todo]  # (13, n): the classifier sees one row of n pixels
            self.probability[y0:y1, left:right][todo] = _probability(pixels[:, None, :], self.threads)[0]
            known[todo] = True
            self.classified += count
        return self.probability[y0:y1, left:right].copy()


class SceneMasker:
    """The cloud mask of ``kind`` for the tiles of one scene, computed as ``choice`` says; equal to :func:`tile_masks`.

    For s2cloudless at 10 m the probability comes from a :class:`SceneProbability`, so a
    pixel shared by overlapping tiles is classified once; the post-processing (threshold,
    disk average and dilation, or floor and blur) is then done per tile on its own window,
    as :func:`tile_masks` does it, so tile edges are treated the same. Other sources go
    through :func:`tile_masks` (so does everything with ``share=False``, for comparisons).
    """

    def __init__(self, kind: str, choice: MaskChoice, width: int, threads: int | None = None,
                 share: bool = True) -> None:
        self.kind, self.choice, self.threads = kind, choice, threads
        shared = share and choice.source == "s2cloudless-10m" and kind in S2CLOUDLESS_KINDS
        self.scene = SceneProbability(width, threads) if shared else None

    @property
    def classified(self) -> int:
        """Pixels classified at 10 m through the shared probability so far (0 when not shared)."""
        return self.scene.classified if self.scene is not None else 0

    def __call__(self, dn: np.ndarray, windows: Sequence[tuple[tuple[int, int], tuple[int, int]]]) -> np.ndarray | None:
        """Masks (B, h, w) of tiles ``dn`` (B, 13, h, w): each its read window ``(rows, cols)`` padded by :func:`pad_to`."""
        if self.scene is None:
            return tile_masks(dn, self.kind, self.choice, self.threads)
        masks = []
        for tile, (rows, cols) in zip(dn, windows, strict=True):
            clipped = _clipped_dn(tile)
            if is_blank(clipped):
                masks.append(np.ones(clipped.shape[1:], np.float32))
                continue
            height, width = rows[1] - rows[0], cols[1] - cols[0]
            probability = self.scene.window(rows, cols, clipped[:, :height, :width])
            probability = pad_to(probability, clipped.shape[1:])
            masks.append(masks_from_probability(probability, [self.kind], clipped)[self.kind])
        return np.stack(masks).astype(np.float32)
