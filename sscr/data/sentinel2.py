"""Sentinel-2 L1C scenes as the models read them: 13 bands on the 10 m grid, in the training data's DN.

A user has a Sentinel-2 L1C product as ESA distributes it: a ``.SAFE`` directory, or
its ``.zip``, holding one JPEG 2000 file per band at the band's native resolution
(10 m: B2 B3 B4 B8; 20 m: B5 B6 B7 B8A B11 B12; 60 m: B1 B9 B10) and the product
metadata ``MTD_MSIL1C.xml``. The models were trained on SEN12MS-CR, whose patches hold
the 13 bands in the order B1 ... B8, B8A, B9 ... B12 at 10 m, in L1C DN =
top-of-atmosphere reflectance x 10000 as produced before processing baseline 04.00.

:func:`open_s2` turns a product (or, as before, a 13-band GeoTIFF) into a :class:`S2Scene`
whose reader (:meth:`S2Scene.open`, an :class:`S2Reader`) answers ``read(window=...)`` on
the 10 m grid like an open GeoTIFF, so the tiled inference never holds the whole scene. It

- stacks the 13 JP2 bands in the SEN12MS-CR order (GDAL paths from the metadata, through
  ``/vsizip/`` for a zip, decoded by the JP2OpenJPEG driver of rasterio's GDAL);
- resamples the 20 m and 60 m bands onto the 10 m grid of B2 (:data:`DEFAULT_RESAMPLING`,
  nearest neighbour; see below). Files are read one-to-one and resampled in memory with
  ``rasterio.warp.reproject`` (:class:`~sscr.data.regrid.GridReader`): GDAL's JPEG 2000
  driver is pathologically slow when asked to upsample a window itself (150 s instead of
  0.3 s for one 256 px tile here), which rules out a GDAL VRT doing the resampling;
- harmonises the radiometry: from processing baseline 04.00 (25 January 2022) L1C DN
  carry an offset, reflectance = (DN + RADIO_ADD_OFFSET) / QUANTIFICATION_VALUE with
  RADIO_ADD_OFFSET = -1000, while the training data has reflectance = DN / 10000 with valid
  DN >= 1 (negative reflectance was clamped to 1). Each band goes through
  :meth:`Radiometry.band_converter` before resampling: 0 (no data) stays no data, DN becomes
  max((DN + offset) * 10000 / Q, 1), 65535 (saturated) stays 65535. The offsets are read
  from the metadata (``Radiometric_Offset_List``), so a product without them (baseline
  < 04.00) passes unchanged;
- crops to an area of interest: a pixel ``window`` on the 10 m grid or a ``bbox``
  (west, south, east, north) in longitude/latitude (WGS 84, ``bbox_crs`` to change it),
  rounded outward to whole 10 m pixels.

Before a tiled inference over a product, call :meth:`S2Scene.decoded`: GDAL's JPEG 2000
driver decodes the requested area at every read, so reading 256 px tiles straight from the
13 JP2 files costs about 5 s per tile (hours for a 10980 px tile); decoding the needed part
of each band once into GeoTIFFs took 37 s for a 10980 x 2040 px product here, after which
its 441 tiles read in 30 s (a shared 2-core machine, load 6-7).

What was done is in :attr:`S2Scene.processing` (the reader's ``tags()``), for the
output's tags; :attr:`S2Scene.radiometry` is what the output writer needs to write the
prediction back in the input's convention (:mod:`sscr.data.cog`).

Resampling. The SEN12MS and SEN12MS-CR papers state that the patches were exported from
Google Earth Engine at 10 m, and name no resampling method; Earth Engine reprojects with
nearest neighbour unless told otherwise, so ``nearest`` is the default here (a 20 m pixel
becomes 2 x 2 equal 10 m pixels, a 60 m pixel 6 x 6, exactly, since the grids of one
tile share their origin). ``bilinear`` and ``cubic`` are there for users who prefer
smooth bands; they are not what the models saw in training (an assumption to check on
real SEN12MS-CR patches: their B1, B9 and B10 should come in 6 x 6 blocks).
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.drivers import raster_driver_extensions
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from sscr.bands import S2_BANDS, S2_DN_MAX
from sscr.data.io import PatchError, check_s2_dtype
from sscr.data.regrid import BandSource, Grid, GridReader
from sscr.fsutil import atomic_path

#: Band codes in product file names (``T32TQM_20230823T095559_B8A.jp2``), in the order of ``S2_BANDS``.
PRODUCT_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12",
)
#: Native resolution (m) of each band, keyed by its ``S2_BANDS`` name.
BAND_RESOLUTION_M: dict[str, int] = {
    "B1": 60, "B2": 10, "B3": 10, "B4": 10, "B5": 20, "B6": 20, "B7": 20, "B8": 10, "B8A": 20,
    "B9": 60, "B10": 60, "B11": 20, "B12": 20,
}
TARGET_RESOLUTION_M = 10
#: The 10 m band whose grid the scene takes (any 10 m band would do; B2 is the first).
GRID_BAND = "B2"
RESAMPLING: tuple[str, ...] = ("nearest", "bilinear", "cubic")
DEFAULT_RESAMPLING = "nearest"
#: L1C special values (``Special_Values`` in the metadata): no data and saturated.
NODATA_DN = 0
SATURATED_DN = 65535
#: Smallest valid DN of the pre-04.00 convention: reflectance <= 0 was stored as 1.
MIN_VALID_DN = 1
#: Processing baseline from which L1C DN carry RADIO_ADD_OFFSET.
OFFSET_BASELINE = (4, 0)
HARMONISATION = ("DN -> max((DN + RADIO_ADD_OFFSET) * 10000 / QUANTIFICATION_VALUE, 1); 0 (no data) and 65535 "
                 "(saturated) kept")

METADATA_MAX_BYTES = 4 * 1024 * 1024
"""Largest product metadata XML read (``MTD_MSIL1C.xml`` is 50-70 KB): checked on the file's size, on a zip
member's declared size, and while inflating it, so a member that inflates to gigabytes costs at most this."""
_METADATA_NAMES = re.compile(r"(^|/)(MTD_MSIL1C|S2[AB]_OPER_MTD_SAFL1C[^/]*)\.xml$")
_L2A_NAMES = re.compile(r"(^|/)(MTD_MSIL2A|S2[AB]_(OPER|USER)_MTD_SAFL2A[^/]*)\.xml$")


@dataclass(frozen=True)
class Radiometry:
    """How a scene's DN relate to reflectance: reflectance = (DN + offset) / quantification, per band.

    Pre-04.00 products and SEN12MS-CR: offsets 0, quantification 10000. From baseline
    04.00: offsets -1000. :meth:`harmonise` maps DN of this convention to the training
    data's, :meth:`restore` maps back.
    """

    offsets: tuple[int, ...] = (0,) * len(S2_BANDS)
    quantification: float = S2_DN_MAX

    def __post_init__(self) -> None:
        if len(self.offsets) != len(S2_BANDS):
            raise ValueError(f"Radiometry needs one offset per band ({len(S2_BANDS)}), got {len(self.offsets)}")
        if not self.quantification > 0:
            raise ValueError(f"quantification value must be positive, got {self.quantification}")

    @property
    def is_training_convention(self) -> bool:
        """True when DN already are the training data's (no offset, quantification 10000)."""
        return not any(self.offsets) and self.quantification == S2_DN_MAX

    def _gain(self) -> float:
        return S2_DN_MAX / self.quantification

    def _offsets_for(self, dn: np.ndarray) -> np.ndarray:
        if dn.ndim < 1 or dn.shape[0] != len(S2_BANDS):
            raise ValueError(f"expected DN of the {len(S2_BANDS)} bands first, (13, H, W), got shape {dn.shape}")
        return np.asarray(self.offsets, np.float64).reshape(-1, *([1] * (dn.ndim - 1)))

    def harmonise(self, dn: np.ndarray) -> np.ndarray:
        """(13, H, W) DN of this convention -> uint16 DN of the training data (0 and 65535 kept).

        Valid DN become max(round((DN + offset) * 10000 / Q), 1): the pre-04.00 products
        clamped reflectance <= 0 to DN 1, and 0 must stay the no-data value.
        """
        dn = np.asarray(dn)
        offsets = self._offsets_for(dn)
        out = np.rint((dn.astype(np.float64) + offsets) * self._gain())
        out = np.clip(out, MIN_VALID_DN, SATURATED_DN - 1)
        out = np.where(dn == NODATA_DN, NODATA_DN, np.where(dn == SATURATED_DN, SATURATED_DN, out))
        return out.astype(np.uint16)

    def restore(self, dn: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """(13, H, W) DN of the training convention -> uint16 DN of this convention (the inverse of harmonise).

        ``valid`` (H, W) marks pixels holding data; the others are written 0 (no data).
        Without it, pixels that are 0 in every band are taken as no data. Valid pixels
        stay >= 1 so that no prediction is mistaken for no data.
        """
        dn = np.asarray(dn)
        if valid is None:
            valid = (dn != NODATA_DN).any(axis=0)
        offsets = self._offsets_for(dn)
        out = np.rint(dn.astype(np.float64) / self._gain() - offsets)
        out = np.clip(out, MIN_VALID_DN, SATURATED_DN - 1).astype(np.uint16)
        out[:, ~np.asarray(valid, bool)] = NODATA_DN
        return out

    def band_converter(self, band: int) -> Callable[[np.ndarray], np.ndarray]:
        """:meth:`harmonise` of band index ``band`` on float32 values, no data (0) -> NaN, for resampling.

        NaN keeps no-data pixels out of bilinear and cubic kernels; the reader writes 0 back.
        """
        offset, gain = float(self.offsets[band]), self._gain()

        def convert(values: np.ndarray) -> np.ndarray:
            out = np.maximum((values + offset) * gain, MIN_VALID_DN) if offset or gain != 1.0 else values.copy()
            out[values == SATURATED_DN] = SATURATED_DN
            out[values == NODATA_DN] = np.nan
            return out.astype(np.float32, copy=False)

        return convert

    def reflectance_scale_offset(self, band: int) -> tuple[float, float]:
        """(scale, offset) with reflectance = DN * scale + offset, for GDAL band metadata."""
        return 1.0 / self.quantification, self.offsets[band] / self.quantification

    def describe(self) -> str:
        """One line for tags: the offsets (one value if all bands share it) and the quantification value."""
        distinct = sorted(set(self.offsets))
        offsets = str(distinct[0]) if len(distinct) == 1 else " ".join(map(str, self.offsets))
        return f"RADIO_ADD_OFFSET {offsets}, QUANTIFICATION_VALUE {self.quantification:g}"


@dataclass(frozen=True)
class L1CProduct:
    """What the reader needs from ``MTD_MSIL1C.xml``: identity, baseline, radiometry and band files."""

    product_id: str
    processing_baseline: str
    radiometry: Radiometry
    band_files: dict[str, str]
    """GDAL path of each band's JP2, keyed by ``S2_BANDS`` name (``/vsizip/...`` inside a zip)."""
    metadata_path: str
    sensing_time: str = ""
    spacecraft: str = ""


def _baseline_tuple(baseline: str) -> tuple[int, int]:
    match = re.match(r"^\s*(\d+)\.(\d+)", baseline or "")
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _text(root: ElementTree.Element, tag: str) -> str:
    node = root.find(f".//{{*}}{tag}")
    return (node.text or "").strip() if node is not None and node.text else ""


def parse_l1c_metadata(xml: bytes | str, metadata_path: str, product_root: str) -> L1CProduct:
    """Parse ``MTD_MSIL1C.xml`` (its bytes) of a product whose files lie under ``product_root`` (a GDAL path).

    Raises :class:`~sscr.data.io.PatchError` naming ``metadata_path`` when the document is
    not a single-tile L1C product with all 13 bands.
    """
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as err:
        raise PatchError(metadata_path, f"is not valid XML ({err}); the product is damaged: download it again") from None
    kind = root.tag.rsplit("}", 1)[-1]
    if "Level-2A" in kind:
        raise PatchError(metadata_path, "is a Level-2A product; the models take Level-1C (top-of-atmosphere) "
                                        "DN: download the L1C product (type S2MSI1C) of the same date")
    if "Level-1C" not in kind:
        raise PatchError(metadata_path, f"is not Sentinel-2 Level-1C product metadata (root element {kind!r})")
    baseline = _text(root, "PROCESSING_BASELINE")
    quantification = float(_text(root, "QUANTIFICATION_VALUE") or S2_DN_MAX)
    offsets = [0] * len(S2_BANDS)
    for node in root.iterfind(".//{*}Radiometric_Offset_List/{*}RADIO_ADD_OFFSET"):
        band_id = int(node.get("band_id", "-1"))
        if not 0 <= band_id < len(S2_BANDS):
            raise PatchError(metadata_path, f"RADIO_ADD_OFFSET has band_id {band_id}, expected 0..{len(S2_BANDS) - 1}")
        offsets[band_id] = round(float(node.text or 0))
    if _baseline_tuple(baseline) >= OFFSET_BASELINE and not any(offsets):
        # Every product from 04.00 on lists the offsets; without them the DN would be read 1000 too high.
        raise PatchError(metadata_path, f"processing baseline {baseline} but no RADIO_ADD_OFFSET in "
                                        "Radiometric_Offset_List: the metadata is incomplete; download the product again")
    granules = root.findall(".//{*}Granule_List/{*}Granule") or root.findall(".//{*}Granule_List/{*}Granules")
    if len(granules) != 1:
        raise PatchError(metadata_path, f"lists {len(granules)} granules; only single-tile products are read "
                                        "(every product since December 2016 and the Collection-1 reprocessing is one): "
                                        "download the tile's current product, or stack the 13 bands into a GeoTIFF")
    band_files: dict[str, str] = {}
    for node in granules[0].iterfind("{*}IMAGE_FILE"):
        name = (node.text or "").strip()
        code = name[-3:]
        if code in PRODUCT_BANDS:
            band = S2_BANDS[PRODUCT_BANDS.index(code)]
            band_files[band] = _inside(name + ("" if name.lower().endswith(".jp2") else ".jp2"), product_root,
                                       metadata_path)
    missing = [band for band in S2_BANDS if band not in band_files]
    if missing:
        raise PatchError(metadata_path, f"lists no image file for band(s) {' '.join(missing)}; "
                                        "the product is incomplete: download it again")
    uri = _text(root, "PRODUCT_URI") or Path(product_root).name
    return L1CProduct(
        product_id=re.sub(r"\.SAFE$", "", uri), processing_baseline=baseline or "unknown",
        radiometry=Radiometry(tuple(offsets), quantification), band_files=band_files,
        metadata_path=metadata_path, sensing_time=_text(root, "PRODUCT_START_TIME"),
        spacecraft=_text(root, "SPACECRAFT_NAME"),
    )


def _too_large(where: str | Path, size: int | None = None) -> PatchError:
    told = f" ({size:,} bytes)" if size is not None else ""
    return PatchError(where, f"is larger than {METADATA_MAX_BYTES // (1024 * 1024)} MiB{told}, the limit for product "
                             "metadata (MTD_MSIL1C.xml is under 100 KB): the product is damaged or not an L1C "
                             "product; download it again")


def _read_metadata_file(path: Path) -> bytes:
    """A metadata file's bytes, at most :data:`METADATA_MAX_BYTES` of them read."""
    with path.open("rb") as handle:
        data = handle.read(METADATA_MAX_BYTES + 1)
    if len(data) > METADATA_MAX_BYTES:
        raise _too_large(path)
    return data


def _read_metadata_member(archive: zipfile.ZipFile, member: str, where: str) -> bytes:
    """A zip member's bytes: refused on its declared size, then inflated with a cap (a header may lie)."""
    info = archive.getinfo(member)
    if info.file_size > METADATA_MAX_BYTES:
        raise _too_large(where, info.file_size)
    with archive.open(info) as handle:
        data = handle.read(METADATA_MAX_BYTES + 1)
    if len(data) > METADATA_MAX_BYTES:
        raise _too_large(where)
    return data


def _inside(name: str, product_root: str, metadata_path: str) -> str:
    """The GDAL path of the product file ``name`` (an ``IMAGE_FILE``), refused unless it lies inside the product.

    ``..``, absolute names and, in a directory, symbolic links that lead out of it are refused: a
    product's metadata must not make the reader open files elsewhere.
    """
    relative = posixpath.normpath(name)
    outside = relative.startswith("/") or relative == ".." or relative.startswith("../")
    path = f"{product_root}/{relative}"
    if not outside and not product_root.startswith("/vsi"):
        root = Path(product_root).resolve()
        outside = not Path(path).resolve().is_relative_to(root)  # follows symbolic links
    if outside:
        raise PatchError(metadata_path, f"IMAGE_FILE {name!r} points outside the product ({product_root}): "
                                        "refused, a product's files are read only from inside it; the metadata "
                                        "is damaged or crafted: download the product again")
    return path


def read_l1c_product(path: str | Path) -> L1CProduct:
    """Find and parse the metadata of an L1C product given as a ``.SAFE`` directory, its ``.zip`` or its XML.

    The metadata is read up to :data:`METADATA_MAX_BYTES`, and the band files it names must lie inside
    the product.
    """
    path = Path(path)
    if path.is_dir():
        candidates = sorted(p for p in path.rglob("*.xml") if _METADATA_NAMES.search(p.as_posix()))
        if not candidates:
            l2a = [p for p in path.rglob("*.xml") if _L2A_NAMES.search(p.as_posix())]
            if l2a:
                return parse_l1c_metadata(_read_metadata_file(l2a[0]), str(l2a[0]), str(l2a[0].parent))
            raise PatchError(path, "holds no MTD_MSIL1C.xml: pass a Sentinel-2 L1C .SAFE directory, its .zip, "
                                   "or a 13-band GeoTIFF")
        metadata = min(candidates, key=lambda p: len(p.parts))
        return parse_l1c_metadata(_read_metadata_file(metadata), str(metadata), str(metadata.parent.resolve()))
    if path.suffix.lower() == ".xml":
        return parse_l1c_metadata(_read_metadata_file(path), str(path), str(path.parent.resolve()))
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            candidates = [n for n in names if _METADATA_NAMES.search(n)]
            if not candidates:
                l2a = [n for n in names if _L2A_NAMES.search(n)]
                if not l2a:
                    raise PatchError(path, "is a zip without MTD_MSIL1C.xml: pass the zip of a Sentinel-2 "
                                           "L1C product as downloaded, or a 13-band GeoTIFF")
                candidates = l2a
            member = min(candidates, key=lambda n: n.count("/"))
            xml = _read_metadata_member(archive, member, f"{path}!/{member}")
        inner = member.rsplit("/", 1)[0] if "/" in member else ""
        root = f"/vsizip/{path.resolve().as_posix()}" + (f"/{inner}" if inner else "")
        return parse_l1c_metadata(xml, f"{path}!/{member}", root)
    raise PatchError(path, "is neither a .SAFE directory, a .zip product nor metadata XML")


# ---------------------------------------------------------------- the scene on the 10 m grid


@dataclass(frozen=True)
class S2Scene:
    """A cloudy Sentinel-2 scene on its 10 m grid: 13 band files, how to read them, and what was done.

    :meth:`open` gives a reader (:class:`S2Reader`) whose ``read(window=...)`` returns
    uint16 DN of the training convention in ``S2_BANDS`` order, 0 = no data.
    """

    sources: tuple[BandSource, ...]
    """The 13 bands in ``S2_BANDS`` order: GDAL path, band index, per-band harmonisation."""
    grid: Grid
    resampling: str
    radiometry: Radiometry
    """The input's convention: write the prediction back with it (``Radiometry.restore``)."""
    processing: dict[str, str] = field(default_factory=dict)
    """What was done to the input, for the output's tags."""

    crs = property(lambda self: self.grid.crs)
    transform = property(lambda self: self.grid.transform)
    width = property(lambda self: self.grid.width)
    height = property(lambda self: self.grid.height)

    def open(self) -> S2Reader:
        """The scene as a reader by windows (a context manager, like an open rasterio dataset)."""
        return S2Reader(self)

    @property
    def is_jpeg2000(self) -> bool:
        """True when the band files are JPEG 2000 (an L1C product), which :meth:`decoded` speeds up."""
        return any(source.path.lower().endswith(".jp2") for source in self.sources)

    def decoded(self, directory: str | Path) -> S2Scene:
        """The same scene read from GeoTIFFs: each JPEG 2000 band decoded once, at its native resolution.

        GDAL's JPEG 2000 driver decodes the requested area at every read and keeps nothing
        between reads of 13 interleaved files: the tiled inference would decode each
        1024 px JP2 tile again for every model tile over it (0.3-0.5 s per band per 256 px
        tile here, hours for a whole 10980 px tile). This decodes, per band, only the part
        of the file the scene needs (plus the resampling margin), one row of JP2 tiles at a
        time (memory: one such row), into a tiled, deflated GeoTIFF under ``directory``,
        named after the band file and a digest of its path and the grid (so two products of one
        tile and date, or two crops, never share a file). A file already there is reused (they
        are written atomically), so an interrupted run resumes. GeoTIFF scenes are returned unchanged.
        """
        if not self.is_jpeg2000:
            return self
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        sources = tuple(
            BandSource(str(_decode_band(source, self.grid, directory)), 1, source.name, source.convert)
            for source in self.sources
        )
        processing = {**self.processing, "s2_decoded_to": str(directory)}
        return S2Scene(sources, self.grid, self.resampling, self.radiometry, processing)

    def write_geotiff(self, path: str | Path, block: int = 1024) -> Path:
        """Write the scene as it is read (13 bands uint16, tiled, deflate) to ``path``, ``block`` px at a time.

        For tools that need a file; memory is one block of 13 bands. Atomic (temp name, rename).
        """
        path = Path(path)
        profile = {"driver": "GTiff", "width": self.width, "height": self.height, "count": len(S2_BANDS),
                   "dtype": "uint16", "crs": self.crs, "transform": self.transform, "nodata": NODATA_DN,
                   "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "predictor": 2,
                   "BIGTIFF": "IF_SAFER"}
        with atomic_path(path) as partial, self.open() as reader, rasterio.open(partial, "w", **profile) as out:
            for row in range(0, self.height, block):
                for col in range(0, self.width, block):
                    window = Window(col, row, min(block, self.width - col), min(block, self.height - row))
                    out.write(reader.read(window=window), window=window)
            out.descriptions = S2_BANDS
            out.scales = reader.scales
            out.offsets = reader.offsets
            out.update_tags(**self.processing)
        return path


#: Pixels of the native band read around the scene's footprint, for the resampling kernels.
_DECODE_MARGIN = 4


def _decode_band(source: BandSource, grid: Grid, directory: Path) -> Path:
    """Decode the part of one JPEG 2000 band that ``grid`` needs into ``directory``; the GeoTIFF's path."""
    # the band file's name, and a digest of its full path and the grid: products of one tile and date
    # (e.g. two processing baselines) and different crops never share a file
    digest = hashlib.sha1(f"{source.path}|{source.band}|{grid}".encode()).hexdigest()[:12]
    target = directory / f"{Path(source.path.rsplit('/', 1)[-1]).stem}_{digest}.tif"
    if target.is_file():
        return target
    with rasterio.open(source.path) as src:
        left, bottom, right, top = grid.bounds
        area = from_bounds(left, bottom, right, top, src.transform)
        block_rows, block_cols = src.block_shapes[0]
        # whole JP2 tiles: a request that cuts a tile decodes it anyway
        row0 = max(math.floor(area.row_off) - _DECODE_MARGIN, 0) // block_rows * block_rows
        col0 = max(math.floor(area.col_off) - _DECODE_MARGIN, 0) // block_cols * block_cols
        row1 = min(-(-(math.ceil(area.row_off + area.height) + _DECODE_MARGIN) // block_rows) * block_rows, src.height)
        col1 = min(-(-(math.ceil(area.col_off + area.width) + _DECODE_MARGIN) // block_cols) * block_cols, src.width)
        window = Window(col0, row0, col1 - col0, row1 - row0)
        profile = {"driver": "GTiff", "width": col1 - col0, "height": row1 - row0, "count": 1,
                   "dtype": src.dtypes[0], "crs": src.crs, "transform": src.window_transform(window),
                   "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "predictor": 2,
                   "zlevel": 1, "BIGTIFF": "IF_SAFER"}
        with atomic_path(target) as partial, rasterio.open(partial, "w", **profile) as out:
            for row in range(row0, row1, block_rows):
                rows = min(block_rows, row1 - row)
                data = src.read(source.band, window=Window(col0, row, col1 - col0, rows))
                out.write(data, 1, window=Window(0, row - row0, col1 - col0, rows))
    return target


class S2Reader(GridReader):
    """Reads an :class:`S2Scene` by windows of its 10 m grid: (bands, h, w) uint16 DN, 0 = no data.

    Each band file is read one-to-one; 20 m and 60 m bands are resampled in memory
    (:class:`~sscr.data.regrid.GridReader`), harmonised before resampling.
    """

    nodata = NODATA_DN

    def __init__(self, scene: S2Scene) -> None:
        super().__init__(scene.sources, scene.grid, Resampling[scene.resampling],
                         name=scene.processing.get("s2_input", "S2 scene"))
        self.processing = dict(scene.processing)
        pairs = [Radiometry().reflectance_scale_offset(i) for i in range(len(S2_BANDS))]
        self.scales = tuple(p[0] for p in pairs)
        self.offsets = tuple(p[1] for p in pairs)

    dtypes = property(lambda self: ("uint16",) * self.count)

    def tags(self) -> dict[str, str]:
        """What was done to the input (as a rasterio dataset's tags)."""
        return dict(self.processing)

    def read(self, indexes: int | Sequence[int] | None = None, window: Window | None = None,
             **kwargs: Any) -> np.ndarray:
        """Bands (1-based ``indexes``, default all) over ``window``, uint16 DN of the training convention."""
        values = super().read(indexes, window, **kwargs)
        return np.clip(np.rint(np.nan_to_num(values, nan=NODATA_DN)), 0, SATURATED_DN).astype(np.uint16)


def _open_band(path: str, band: str, where: str) -> tuple[CRS, Affine, int, int]:
    """CRS, transform, width and height of a band file."""
    try:
        with rasterio.open(path) as src:
            if src.crs is None:
                raise PatchError(path, f"band {band} has no CRS; the product is damaged: download it again")
            return src.crs, src.transform, src.width, src.height
    except RasterioIOError as err:
        hint = "" if "JP2OpenJPEG" in raster_driver_extensions().values() else (
            " (this GDAL has no JPEG 2000 driver: install rasterio's wheel, which ships JP2OpenJPEG)")
        raise PatchError(path, f"cannot read band {band} of {where} ({str(err).splitlines()[0]}){hint}; "
                               "the product is incomplete or damaged: download it again") from None


def _grid_of_product(product: L1CProduct) -> tuple[CRS, Affine, int, int]:
    """The 10 m grid (from B2).

    Every band is checked to cover the same extent in the same CRS at its own resolution.
    """
    grids: dict[str, tuple[Affine, int, int]] = {}
    crs = None
    for band in S2_BANDS:
        band_crs, transform, width, height = _open_band(product.band_files[band], band, product.metadata_path)
        if crs is None:
            crs = band_crs
        elif band_crs != crs:
            raise PatchError(product.band_files[band], f"band {band} has CRS {band_crs}, band B1 has {crs}: "
                                                       "the product is inconsistent")
        grids[band] = (transform, width, height)
    ref_transform, ref_width, ref_height = grids[GRID_BAND]
    if not math.isclose(abs(ref_transform.a), TARGET_RESOLUTION_M, rel_tol=1e-6):
        raise PatchError(product.band_files[GRID_BAND], f"band {GRID_BAND} has {abs(ref_transform.a):g} m pixels, "
                                                        f"expected {TARGET_RESOLUTION_M} m")
    extent = (ref_transform.c, ref_transform.f, ref_width * ref_transform.a, ref_height * ref_transform.e)
    for band, (transform, width, height) in grids.items():
        res = BAND_RESOLUTION_M[band]
        mine = (transform.c, transform.f, width * transform.a, height * transform.e)
        if not math.isclose(abs(transform.a), res, rel_tol=1e-6) or not np.allclose(mine, extent, atol=res / 2):
            raise PatchError(product.band_files[band], f"band {band} ({abs(transform.a):g} m, extent {mine}) does "
                                                       f"not cover the {GRID_BAND} grid ({extent}) at {res} m: "
                                                       "the product is inconsistent")
    return crs, ref_transform, ref_width, ref_height


def crop_window(width: int, height: int, transform: Affine, crs: CRS, window: Window | tuple | None = None,
                bbox: tuple[float, float, float, float] | None = None, bbox_crs: str | CRS = "EPSG:4326",
                where: str = "scene") -> Window | None:
    """The pixel window of an area of interest on a grid, whole pixels, inside the grid; None for the whole.

    ``window``: (col_off, row_off, width, height) in pixels of the grid. ``bbox``: (west,
    south, east, north) in ``bbox_crs`` (longitude/latitude by default), transformed to
    the grid's CRS (edges densified) and rounded outward to whole pixels.
    """
    if window is not None and bbox is not None:
        raise ValueError("give either a window or a bbox, not both")
    if bbox is not None:
        west, south, east, north = map(float, bbox)
        if not (west < east and south < north):
            raise ValueError(f"bbox {bbox} must be (west, south, east, north) with west < east and south < north")
        left, bottom, right, top = transform_bounds(CRS.from_user_input(bbox_crs), crs, west, south, east,
                                                    north, densify_pts=21)
        area = from_bounds(left, bottom, right, top, transform)
        col0, row0 = math.floor(area.col_off + 1e-9), math.floor(area.row_off + 1e-9)
        col1 = math.ceil(area.col_off + area.width - 1e-9)
        row1 = math.ceil(area.row_off + area.height - 1e-9)
        col0, row0, col1, row1 = max(col0, 0), max(row0, 0), min(col1, width), min(row1, height)
        if col1 <= col0 or row1 <= row0:
            scene_bounds = transform_bounds(crs, CRS.from_user_input(bbox_crs),
                                            *array_bounds(height, width, transform))
            raise ValueError(f"bbox {tuple(bbox)} ({bbox_crs}) does not overlap {where}, which covers "
                             f"{tuple(round(v, 5) for v in scene_bounds)} in {bbox_crs}")
        return Window(col0, row0, col1 - col0, row1 - row0)
    if window is not None:
        col_off, row_off, w, h = (int(v) for v in (window.flatten() if isinstance(window, Window) else window))
        if w < 1 or h < 1 or col_off < 0 or row_off < 0 or col_off + w > width or row_off + h > height:
            raise ValueError(f"window (col_off, row_off, width, height) = {(col_off, row_off, w, h)} is not inside "
                             f"{where} of {width} x {height} px")
        return Window(col_off, row_off, w, h)
    return None


def _product_scene(path: Path, resampling: str, window: Window | None, bbox: tuple | None,
                   bbox_crs: str | CRS) -> S2Scene:
    product = read_l1c_product(path)
    crs, grid_transform, grid_width, grid_height = _grid_of_product(product)
    crop = crop_window(grid_width, grid_height, grid_transform, crs, window, bbox, bbox_crs, where=str(path))
    crop = crop or Window(0, 0, grid_width, grid_height)
    col0, row0, width, height = (int(v) for v in crop.flatten())
    grid = Grid(crs, grid_transform @ Affine.translation(col0, row0), width, height)
    radiometry = product.radiometry
    sources = tuple(BandSource(product.band_files[band], 1, band, radiometry.band_converter(index))
                    for index, band in enumerate(S2_BANDS))
    processing = {
        "s2_input": str(path),
        "s2_product": product.product_id,
        "s2_processing_baseline": product.processing_baseline,
        "s2_radiometry_in": radiometry.describe(),
        "s2_harmonisation": "none needed (no offset)" if radiometry.is_training_convention else HARMONISATION,
        "s2_resampling": f"{resampling} (20 m and 60 m bands to 10 m, rasterio.warp.reproject)",
        "s2_window": f"col_off={col0} row_off={row0} width={width} height={height} of {grid_width} x {grid_height}",
    }
    if bbox is not None:
        processing["s2_bbox"] = f"{tuple(bbox)} in {CRS.from_user_input(bbox_crs).to_string()}"
    return S2Scene(sources, grid, resampling, radiometry, processing)


def _geotiff_scene(path: Path, window: Window | None, bbox: tuple | None, bbox_crs: str | CRS,
                   radiometry: Radiometry) -> S2Scene:
    try:
        with rasterio.open(path) as src:
            count, crs, transform, width, height = src.count, src.crs, src.transform, src.width, src.height
            dtype = src.dtypes[0]
    except RasterioIOError as err:
        raise PatchError(path, f"cannot read the S2 scene ({str(err).splitlines()[0]}): pass a Sentinel-2 L1C "
                               ".SAFE directory, its .zip, or a 13-band GeoTIFF") from None
    if count != len(S2_BANDS):
        raise PatchError(path, f"S2 scene has {count} bands, expected {len(S2_BANDS)} ({' '.join(S2_BANDS)}, "
                               "L1C DN as uint16), or pass the L1C product (.SAFE or .zip) itself")
    # A float scene of reflectance in [0, 1] would be read as DN 0..1: an all-black prediction.
    check_s2_dtype(path, dtype, "S2 scene")
    if crs is None:
        raise PatchError(path, "S2 scene has no CRS: georeference it (e.g. gdal_translate -a_srs EPSG:326xx)")
    crop = crop_window(width, height, transform, crs, window, bbox, bbox_crs, where=str(path))
    crop = crop or Window(0, 0, width, height)
    col0, row0, w, h = (int(v) for v in crop.flatten())
    processing = {
        "s2_input": str(path),
        "s2_radiometry_in": radiometry.describe(),
        "s2_harmonisation": "none needed (no offset)" if radiometry.is_training_convention else HARMONISATION,
        "s2_window": f"col_off={col0} row_off={row0} width={w} height={h} of {width} x {height}",
    }
    if bbox is not None:
        processing["s2_bbox"] = f"{tuple(bbox)} in {CRS.from_user_input(bbox_crs).to_string()}"
    sources = tuple(BandSource(str(path), index + 1, band, radiometry.band_converter(index))
                    for index, band in enumerate(S2_BANDS))
    grid = Grid(crs, transform @ Affine.translation(col0, row0), w, h)
    return S2Scene(sources, grid, "nearest", radiometry, processing)


def open_s2(
    path: str | Path,
    resampling: str = DEFAULT_RESAMPLING,
    window: Window | tuple[int, int, int, int] | None = None,
    bbox: tuple[float, float, float, float] | None = None,
    bbox_crs: str | CRS = "EPSG:4326",
    geotiff_radiometry: Radiometry | None = None,
) -> S2Scene:
    """A cloudy S2 scene from an L1C product (``.SAFE`` directory, ``.zip``, ``MTD_MSIL1C.xml``) or a GeoTIFF.

    Products: 13 bands stacked on the 10 m grid with ``resampling`` (:data:`RESAMPLING`),
    harmonised to the pre-04.00 DN (:meth:`Radiometry.harmonise`). GeoTIFF: used as it is
    (13 bands in ``S2_BANDS`` order), taken to be in ``geotiff_radiometry`` (default: the
    training convention, no offset). Either can be cropped by ``window`` (pixels of the
    10 m grid) or ``bbox`` (west, south, east, north in ``bbox_crs``, lon/lat by default).
    Errors (:class:`~sscr.data.io.PatchError`, ``ValueError``) name the file and the fix.
    """
    path = Path(path)
    if resampling not in RESAMPLING:
        raise ValueError(f"resampling {resampling!r} is not one of {', '.join(RESAMPLING)}")
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a Sentinel-2 L1C .SAFE directory, its .zip, or a "
                                "13-band GeoTIFF")
    is_product = path.is_dir() or path.suffix.lower() == ".xml" or zipfile.is_zipfile(path)
    if is_product:
        if geotiff_radiometry is not None:
            raise ValueError("geotiff_radiometry applies to GeoTIFF input; a product's metadata gives its radiometry")
        return _product_scene(path, resampling, window, bbox, bbox_crs)
    return _geotiff_scene(path, window, bbox, bbox_crs, geotiff_radiometry or Radiometry())
