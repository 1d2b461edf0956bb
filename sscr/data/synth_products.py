"""Tiny synthetic Sentinel products in the real formats, for tests, benchmarks and a README demo.

:func:`write_l1c_product` writes a Sentinel-2 L1C product as ESA distributes it (PSD 14
"SAFE compact" layout): ``<id>.SAFE/MTD_MSIL1C.xml``, ``GRANULE/<granule>/MTD_TL.xml`` and
one lossless JPEG 2000 file per band at its native resolution under ``IMG_DATA/``,
georeferenced (GeoJP2 + GMLJP2), optionally zipped. The radiometry follows the processing
baseline: from 04.00 the DN carry ``RADIO_ADD_OFFSET`` = -1000 and the metadata lists it.
The content comes from a 10 m, 13-band DN array in the training convention (e.g.
``sscr.data.synth.synth_patch``); the 20 m and 60 m bands are its block means, as a coarser
detector would see them. GDAL's own SENTINEL2 driver opens these products.

:func:`write_s1_geotiff` writes Sentinel-1 backscatter as users have it: one 2-band file or
two single-band files (VV, VH), in dB or linear power, on any grid.
"""

from __future__ import annotations

import shutil
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS

from sscr.bands import S1_BANDS, S2_BANDS
from sscr.data.sentinel2 import BAND_RESOLUTION_M, NODATA_DN, PRODUCT_BANDS, TARGET_RESOLUTION_M

_SPECTRAL = [  # (physical band, central wavelength nm) in band_id order 0..12
    ("B1", 442.7), ("B2", 492.7), ("B3", 559.8), ("B4", 664.6), ("B5", 704.1), ("B6", 740.5), ("B7", 782.8),
    ("B8", 832.8), ("B8A", 864.7), ("B9", 945.1), ("B10", 1373.5), ("B11", 1613.7), ("B12", 2202.4),
]


def _block_mean(band: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor`` x ``factor`` blocks, no-data (0) pixels left out; an all-no-data block stays 0."""
    if factor == 1:
        return band
    height, width = band.shape
    blocks = band.reshape(height // factor, factor, width // factor, factor).astype(np.float64)
    valid = blocks > 0
    total = (blocks * valid).sum(axis=(1, 3))
    count = valid.sum(axis=(1, 3))
    return np.where(count > 0, np.rint(total / np.maximum(count, 1)), 0).astype(np.uint16)


def native_bands(dn: np.ndarray) -> dict[str, np.ndarray]:
    """The 13 bands at their native resolution (block means of the 10 m array), keyed by ``S2_BANDS`` name."""
    return {band: _block_mean(dn[i], BAND_RESOLUTION_M[band] // TARGET_RESOLUTION_M)
            for i, band in enumerate(S2_BANDS)}


def product_name(tile: str, sensing: datetime, baseline: str, spacecraft: str = "S2B", orbit: int = 22) -> str:
    """ESA's product name without ``.SAFE``: ``S2B_MSIL1C_<sensing>_N<baseline>_R<orbit>_T<tile>_<generation>``."""
    stamp = sensing.strftime("%Y%m%dT%H%M%S")
    return f"{spacecraft}_MSIL1C_{stamp}_N{baseline.replace('.', '')}_R{orbit:03d}_T{tile}_{stamp}"


def _product_metadata(name: str, granule: str, image_files: list[str], baseline: str, offset: int | None,
                      sensing: datetime, spacecraft: str) -> str:
    images = "\n".join(f"            <IMAGE_FILE>{f}</IMAGE_FILE>" for f in image_files)
    offsets = ""
    if offset is not None:
        offsets = "<Radiometric_Offset_List>\n" + "\n".join(
            f'        <RADIO_ADD_OFFSET band_id="{i}">{offset}</RADIO_ADD_OFFSET>' for i in range(len(S2_BANDS))
        ) + "\n      </Radiometric_Offset_List>"
    spectral = "\n".join(
        f'        <Spectral_Information bandId="{i}" physicalBand="{band}"><RESOLUTION>{BAND_RESOLUTION_M[band]}'
        f'</RESOLUTION><Wavelength><CENTRAL unit="nm">{centre}</CENTRAL></Wavelength></Spectral_Information>'
        for i, (band, centre) in enumerate(_SPECTRAL)
    )
    time = sensing.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-1C_User_Product xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-1C.xsd">
  <n1:General_Info>
    <Product_Info>
      <PRODUCT_START_TIME>{time}</PRODUCT_START_TIME>
      <PRODUCT_STOP_TIME>{time}</PRODUCT_STOP_TIME>
      <PRODUCT_URI>{name}.SAFE</PRODUCT_URI>
      <PROCESSING_LEVEL>Level-1C</PROCESSING_LEVEL>
      <PRODUCT_TYPE>S2MSI1C</PRODUCT_TYPE>
      <PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE>
      <GENERATION_TIME>{time}</GENERATION_TIME>
      <Datatake datatakeIdentifier="G{name[:3]}_{sensing:%Y%m%dT%H%M%S}_000000_N{baseline}">
        <SPACECRAFT_NAME>{spacecraft}</SPACECRAFT_NAME>
        <DATATAKE_TYPE>INS-NOBS</DATATAKE_TYPE>
        <SENSING_ORBIT_NUMBER>22</SENSING_ORBIT_NUMBER>
        <SENSING_ORBIT_DIRECTION>DESCENDING</SENSING_ORBIT_DIRECTION>
      </Datatake>
      <Query_Options completeSingleTile="true"><PRODUCT_FORMAT>SAFE_COMPACT</PRODUCT_FORMAT></Query_Options>
      <Product_Organisation>
        <Granule_List>
          <Granule datastripIdentifier="DS_SYNTH" granuleIdentifier="{granule}" imageFormat="JPEG2000">
{images}
          </Granule>
        </Granule_List>
      </Product_Organisation>
    </Product_Info>
    <Product_Image_Characteristics>
      <Special_Values><SPECIAL_VALUE_TEXT>NODATA</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>0</SPECIAL_VALUE_INDEX></Special_Values>
      <Special_Values><SPECIAL_VALUE_TEXT>SATURATED</SPECIAL_VALUE_TEXT><SPECIAL_VALUE_INDEX>65535</SPECIAL_VALUE_INDEX></Special_Values>
      <QUANTIFICATION_VALUE unit="none">10000</QUANTIFICATION_VALUE>
      {offsets}
      <Spectral_Information_List>
{spectral}
      </Spectral_Information_List>
    </Product_Image_Characteristics>
  </n1:General_Info>
</n1:Level-1C_User_Product>
"""


def _tile_metadata(granule: str, crs: CRS, transform: Affine, width: int, height: int) -> str:
    sizes = "".join(
        f'<Size resolution="{res}"><NROWS>{height * 10 // res}</NROWS><NCOLS>{width * 10 // res}</NCOLS></Size>'
        for res in (10, 20, 60)
    )
    positions = "".join(
        f'<Geoposition resolution="{res}"><ULX>{transform.c:.0f}</ULX><ULY>{transform.f:.0f}</ULY>'
        f"<XDIM>{res}</XDIM><YDIM>-{res}</YDIM></Geoposition>"
        for res in (10, 20, 60)
    )
    return f"""<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<n1:Level-1C_Tile_ID xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/S2_PDI_Level-1C_Tile_Metadata.xsd">
  <n1:General_Info><TILE_ID metadataLevel="Brief">{granule}</TILE_ID></n1:General_Info>
  <n1:Geometric_Info>
    <Tile_Geocoding metadataLevel="Brief">
      <HORIZONTAL_CS_NAME>{crs.to_string()}</HORIZONTAL_CS_NAME>
      <HORIZONTAL_CS_CODE>EPSG:{crs.to_epsg()}</HORIZONTAL_CS_CODE>
      {sizes}
      {positions}
    </Tile_Geocoding>
  </n1:Geometric_Info>
</n1:Level-1C_Tile_ID>
"""


def write_l1c_product(
    directory: str | Path,
    dn: np.ndarray,
    crs: str | CRS,
    transform: Affine,
    baseline: str = "05.09",
    tile: str = "32TQM",
    sensing: datetime = datetime(2023, 8, 23, 10, 15, 59),
    spacecraft: str = "Sentinel-2B",
    offset: int | None = None,
    zipped: bool = False,
) -> Path:
    """Write an L1C product of ``dn`` (13, H, W) uint16 training-convention DN at 10 m; returns the .SAFE (or .zip).

    ``transform`` is the 10 m grid's (north-up, 10 m pixels); H and W must be multiples of
    6 so that the 60 m grid covers the same extent. ``offset`` is the RADIO_ADD_OFFSET
    written into the metadata and the DN (default: -1000 from baseline 04.00, none
    before); 0 (no data) stays 0. ``zipped`` writes ``<name>.zip`` holding ``<name>.SAFE/``
    (as downloaded) and removes the directory.
    """
    dn = np.asarray(dn)
    crs = CRS.from_user_input(crs)
    bands, height, width = dn.shape
    if bands != len(S2_BANDS) or height % 6 or width % 6:
        raise ValueError(f"dn must be (13, H, W) with H and W multiples of 6, got {dn.shape}")
    if offset is None:
        offset = -1000 if tuple(int(p) for p in baseline.split(".")) >= (4, 0) else 0
    sensing_stamp = sensing.strftime("%Y%m%dT%H%M%S")
    name = product_name(tile, sensing, baseline, spacecraft="S2B" if spacecraft.endswith("B") else "S2A")
    granule = f"L1C_T{tile}_A000000_{sensing_stamp}"
    safe = Path(directory) / f"{name}.SAFE"
    img_dir = safe / "GRANULE" / granule / "IMG_DATA"
    img_dir.mkdir(parents=True, exist_ok=True)
    image_files = []
    natives = native_bands(dn)
    for band, code in zip(S2_BANDS, PRODUCT_BANDS, strict=True):
        res = BAND_RESOLUTION_M[band]
        data = natives[band].astype(np.int64)
        # The product DN: reflectance * 10000 - RADIO_ADD_OFFSET; no data stays 0.
        product_dn = np.where(data == NODATA_DN, NODATA_DN, np.clip(data - offset, 1, 65535)).astype(np.uint16)
        stem = f"T{tile}_{sensing_stamp}_{code}"
        band_transform = Affine(res, 0.0, transform.c, 0.0, -res, transform.f)
        with rasterio.open(img_dir / f"{stem}.jp2", "w", driver="JP2OpenJPEG", width=product_dn.shape[1],
                           height=product_dn.shape[0], count=1, dtype="uint16", crs=crs, transform=band_transform,
                           QUALITY=100, REVERSIBLE="YES", RESOLUTIONS=1) as dst:
            dst.write(product_dn, 1)
        image_files.append(f"GRANULE/{granule}/IMG_DATA/{stem}")
    (safe / "MTD_MSIL1C.xml").write_text(
        _product_metadata(name, granule, image_files, baseline, offset if offset else None, sensing, spacecraft)
    )
    (safe / "GRANULE" / granule / "MTD_TL.xml").write_text(_tile_metadata(granule, crs, transform, width, height))
    if not zipped:
        return safe
    archive = safe.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_STORED) as out:
        for path in sorted(safe.rglob("*")):
            out.write(path, path.relative_to(safe.parent).as_posix())
    shutil.rmtree(safe)
    return archive


def write_s1_geotiff(
    path: str | Path,
    db: np.ndarray,
    crs: str | CRS,
    transform: Affine,
    units: str = "db",
    separate: bool = False,
    nodata: float | None = None,
) -> list[Path]:
    """Write (2, H, W) VV, VH backscatter in dB as a user might have it; returns the file(s) written.

    ``units``: ``db`` as given, or ``linear`` power (10 ** (dB / 10)); NaN pixels become
    ``nodata`` when one is given. ``separate`` writes ``<stem>_VV.tif`` and ``<stem>_VH.tif``
    instead of one 2-band file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.asarray(db, np.float32)
    if units == "linear":
        data = np.power(10.0, data / 10.0, dtype=np.float32)
    elif units != "db":
        raise ValueError(f"units must be 'db' or 'linear', got {units!r}")
    if nodata is not None:
        data = np.where(np.isnan(data), np.float32(nodata), data)
    profile = {"driver": "GTiff", "dtype": "float32", "crs": crs, "transform": transform,
               "width": data.shape[2], "height": data.shape[1], "nodata": nodata, "compress": "deflate"}
    if not separate:
        with rasterio.open(path, "w", count=2, **profile) as dst:
            dst.write(data)
            for index, name in enumerate(S1_BANDS, start=1):
                dst.set_band_description(index, name)
        return [path]
    written = []
    for index, name in enumerate(S1_BANDS):
        target = path.with_name(f"{path.stem}_{name}{path.suffix}")
        with rasterio.open(target, "w", count=1, **profile) as dst:
            dst.write(data[index], 1)
            dst.set_band_description(1, name)
        written.append(target)
    return written
