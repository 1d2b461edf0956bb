"""A small demo scene in the real product formats, for ``sscr infer`` without a download (``sscr data demo-scene``).

:func:`write_demo_scene` takes one synthetic scene of the sample's generator
(:func:`sscr.data.synth.synth_patch`, a region of the official *test* split, larger than
a training patch so that ``sscr infer`` tiles it) and writes it as a user has their
data: the cloudy acquisition as a zipped Sentinel-2 L1C product of processing baseline
05.09 (``RADIO_ADD_OFFSET`` -1000 in the metadata and the DN), and its Sentinel-1 VV, VH
backscatter in dB as one GeoTIFF on another grid (the neighbouring UTM zone, at 20 m), so
that reading the product, removing the offset and reprojecting S1 all happen as on real
data (:mod:`sscr.data.synth_products`). Deterministic: the same arguments write the same
pixels and metadata (the zip's member times are the write time). It is synthetic, like the embedded sample: the scene's facts are those of
:mod:`sscr.data.synth`, not of any real place.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import Resampling, calculate_default_transform, reproject, transform

from sscr.data.synth import patch_georeference, synth_patch
from sscr.data.synth_products import product_name, write_l1c_product, write_s1_geotiff
from sscr.fsutil import move_into_place
from sscr.layout import PatchId

DEMO_PATCH = PatchId("ROIs1158_spring", 106, 1)
"""A region of the official test split whose synthetic scene is about half cloud (and cloud shadow)."""
DEMO_SIZE = 384
"""Pixels per side at 10 m (3.84 km): four 256 px model tiles; a multiple of 6, as the 60 m bands need."""
DEMO_BASELINE = "05.09"
DEMO_SENSING = datetime(2023, 4, 18, 10, 15, 59)
S1_RESOLUTION_M = 20
S1_MARGIN_PX = 3
"""S1 pixels around the scene, so that the scene lies inside the S1 file as it would inside a swath."""
S1_NAME = "s1_vv_vh.tif"


@dataclass(frozen=True)
class DemoScene:
    """The files :func:`write_demo_scene` wrote: the L1C product (.zip) and the S1 GeoTIFF."""

    s2: Path
    s1: Path


def _utm_zone(crs: CRS) -> tuple[int, bool]:
    """(zone, north) of a WGS 84 / UTM CRS (EPSG 326xx north, 327xx south)."""
    epsg = crs.to_epsg() or 0
    if not (32601 <= epsg <= 32660 or 32701 <= epsg <= 32760):
        raise ValueError(f"the demo scene needs a WGS 84 / UTM grid, got {crs.to_string()}")
    return epsg % 100, epsg < 32700


def mgrs_tile(crs: CRS, easting: float, northing: float) -> str:
    """The MGRS tile id (``32TQM``) of a point of a UTM grid: zone, latitude band, 100 km square."""
    zone, _ = _utm_zone(crs)
    _, (lat,) = transform(crs, "EPSG:4326", [easting], [northing])
    lat = float(lat)
    band = "CDEFGHJKLMNPQRSTUVWX"[min(max(int((lat + 80) // 8), 0), 19)]
    columns = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")[zone % 3]
    rows = "ABCDEFGHJKLMNPQRSTUV"
    column = columns[int(easting // 100_000) - 1]
    row = rows[(int(northing // 100_000) + (5 if zone % 2 == 0 else 0)) % len(rows)]
    return f"{zone:02d}{band}{column}{row}"


def _s1_on_another_grid(db: np.ndarray, crs: CRS, grid_transform: Affine) -> tuple[np.ndarray, CRS, Affine]:
    """S1 dB on the S2 grid -> the same backscatter in the next UTM zone at 20 m (block averages), with a margin."""
    zone, north = _utm_zone(crs)
    other = CRS.from_epsg((32600 if north else 32700) + zone % 60 + 1)
    _, height, width = db.shape
    left, top = grid_transform.c, grid_transform.f
    bounds = (left, top + height * grid_transform.e, left + width * grid_transform.a, top)
    target, cols, rows = calculate_default_transform(crs, other, width, height, *bounds, resolution=S1_RESOLUTION_M)
    target = target @ Affine.translation(-S1_MARGIN_PX, -S1_MARGIN_PX)
    out = np.full((2, rows + 2 * S1_MARGIN_PX, cols + 2 * S1_MARGIN_PX), np.nan, np.float32)
    reproject(db, out, src_transform=grid_transform, src_crs=crs, dst_transform=target, dst_crs=other,
              resampling=Resampling.average, src_nodata=np.nan, dst_nodata=np.nan)
    return out, other, target


def write_demo_scene(out_dir: str | Path, pid: PatchId = DEMO_PATCH, size: int = DEMO_SIZE, seed: int = 0,
                     overwrite: bool = False) -> DemoScene:
    """Write the demo scene into ``out_dir``: ``<L1C product>.zip`` and ``s1_vv_vh.tif``; returns their paths.

    Both files are written into a temporary folder inside ``out_dir`` and moved into place
    together at the end, so a failure leaves neither. Existing files of the same names are
    refused unless ``overwrite``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out-dir {out_dir} is a file: pass a directory (it is created if missing)")
    crs, grid_transform = patch_georeference(pid, size, seed)
    tile = mgrs_tile(crs, grid_transform.c, grid_transform.f)
    scene = DemoScene(s2=out_dir / f"{product_name(tile, DEMO_SENSING, DEMO_BASELINE)}.zip", s1=out_dir / S1_NAME)
    existing = [str(path) for path in (scene.s2, scene.s1) if path.exists() or path.is_symlink()]
    if existing and not overwrite:
        raise FileExistsError(f"{' and '.join(existing)} already exist: remove them, choose another --out-dir, "
                              "or pass --overwrite")
    arrays = synth_patch(pid, patch_size=size, seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-scene-", dir=out_dir))
    try:
        product = write_l1c_product(staging, arrays["s2_cloudy"], crs, grid_transform, baseline=DEMO_BASELINE,
                                    tile=tile, sensing=DEMO_SENSING, zipped=True)
        db, s1_crs, s1_transform = _s1_on_another_grid(arrays["s1"], crs, grid_transform)
        (s1,) = write_s1_geotiff(staging / S1_NAME, db, s1_crs, s1_transform, nodata=float("nan"))
        # the product last: a product that is there has its S1 beside it
        move_into_place(s1, scene.s1)
        move_into_place(product, scene.s2)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
    return scene
