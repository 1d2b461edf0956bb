"""Sentinel-1 backscatter as users have it, on the S2 scene's grid, in dB.

The models were trained on SEN12MS-CR's S1 patches: VV and VH backscatter of GRD
products in dB, on the 10 m grid of the S2 patch. Users have S1 as one 2-band GeoTIFF
(VV, VH) or two single-band files, in dB or in linear power, in whatever CRS and pixel
size their processor (SNAP, Sentinel Hub, Earth Engine, ...) gave them.

:func:`open_s1` returns a :class:`~sscr.data.regrid.GridReader` that reads the VV and VH
bands by windows of the S2 grid: linear power is converted to dB *before* resampling
(10 log10(x); x <= 0 becomes NaN), as the training data were resampled in dB (Earth
Engine's S1 GRD collection is stored in dB), so linear and dB inputs give the same
result; the values are then reprojected onto the S2 grid with
``rasterio.warp.reproject`` (``bilinear`` by default). Pixels with no S1 coverage are
NaN, which the S1 normalisation handles. The result goes to the existing S1 normalisation
(clip to [-25, 0] dB, map to [0, 1], NaN -> 0).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from sscr.bands import S1_BANDS
from sscr.data.io import PatchError
from sscr.data.regrid import BandSource, Grid, GridReader

S1_UNITS: tuple[str, ...] = ("db", "linear")
S1_RESAMPLING: tuple[str, ...] = ("bilinear", "nearest", "cubic", "average")
DEFAULT_S1_RESAMPLING = "bilinear"
#: Pixels read (per side) to check that the declared units are plausible.
_UNITS_SAMPLE = 64


def linear_to_db(power: np.ndarray) -> np.ndarray:
    """Backscatter power (linear) -> dB = 10 log10(power); power <= 0 (and NaN) -> NaN. float32."""
    power = np.asarray(power, np.float32)
    out = np.full(power.shape, np.nan, np.float32)
    positive = power > 0
    out[positive] = 10.0 * np.log10(power[positive])
    return out


def _band_sources(paths: Sequence[Path]) -> list[BandSource]:
    """VV and VH as (file, band): one file with 2 bands, or two single-band files in the order VV, VH."""
    def token(path: Path) -> str | None:
        found = re.findall(r"(?<![a-z])(vv|vh)(?![a-z])", path.stem.lower())
        return found[-1].upper() if found else None

    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} does not exist")
    if len(paths) == 1:
        path = Path(paths[0])
        try:
            with rasterio.open(path) as src:
                count, descriptions = src.count, [(d or "").upper() for d in src.descriptions]
        except RasterioIOError as err:
            raise PatchError(path, f"cannot read S1 GeoTIFF ({str(err).splitlines()[0]})") from None
        if count != len(S1_BANDS):
            raise PatchError(path, f"S1 scene has {count} band(s), expected {len(S1_BANDS)} (VV, VH); or pass two "
                                   "single-band files, VV first")
        if set(descriptions) == set(S1_BANDS):
            # The file names its bands: take them by name, whatever their order.
            return [BandSource(str(path), descriptions.index(name) + 1, name) for name in S1_BANDS]
        return [BandSource(str(path), index, name) for index, name in enumerate(S1_BANDS, start=1)]
    if len(paths) == 2:
        sources = []
        for path, name in zip(paths, S1_BANDS, strict=True):
            path = Path(path)
            named = token(path)
            if named is not None and named != name:
                raise PatchError(path, f"is named {named} but was passed as {name}: pass the S1 files in the order "
                                       "VV, VH")
            sources.append(BandSource(str(path), 1, name))
        return sources
    raise ValueError(f"pass S1 as one 2-band file (VV, VH) or two single-band files (VV, VH), got {len(paths)} files")


def _check_units(reader: GridReader, units: str) -> None:
    """Refuse units that the data contradict (a decimated read of each source band, cheap)."""
    for source in reader.sources:
        dataset = reader.dataset_of(source)
        side = (min(_UNITS_SAMPLE, dataset.height), min(_UNITS_SAMPLE, dataset.width))
        values = dataset.read(source.band, out_shape=side, masked=True).astype(np.float64).filled(np.nan)
        values = values[np.isfinite(values)]
        if values.size == 0:
            raise PatchError(source.path, f"{source.name} holds no valid value (all no-data or NaN)")
        median = float(np.median(values))
        if units == "db" and values.min() >= 0 and median < 1.0:
            raise PatchError(source.path, f"{source.name} looks like linear power (all values >= 0, median "
                                          f"{median:.3g}), not dB: pass units 'linear' (--s1-units linear)")
        if units == "linear" and median < 0:
            raise PatchError(source.path, f"{source.name} looks like dB (median {median:.3g} < 0), not linear power: "
                                          "pass units 'db' (--s1-units db)")


def open_s1(
    paths: str | Path | Sequence[str | Path],
    grid: Grid,
    units: str = "db",
    resampling: str = DEFAULT_S1_RESAMPLING,
) -> GridReader:
    """S1 VV, VH in dB on ``grid`` (the S2 scene's), read by windows; a context manager.

    ``paths``: one 2-band file (VV, VH; band descriptions ``VV``/``VH`` are honoured in any
    order) or two single-band files in the order VV, VH; any CRS and pixel size GDAL
    reads. ``units``: ``db`` or ``linear`` power (converted to dB before resampling).
    ``resampling``: :data:`S1_RESAMPLING`. The reader's ``processing`` dict records what
    was done, for the output's tags.
    """
    if units not in S1_UNITS:
        raise ValueError(f"S1 units {units!r} is not one of {', '.join(S1_UNITS)}")
    if resampling not in S1_RESAMPLING:
        raise ValueError(f"S1 resampling {resampling!r} is not one of {', '.join(S1_RESAMPLING)}")
    path_list = [Path(paths)] if isinstance(paths, str | Path) else [Path(p) for p in paths]
    sources = _band_sources(path_list)
    reader = GridReader(sources, grid, Resampling[resampling], linear_to_db if units == "linear" else None,
                        name=" + ".join(dict.fromkeys(str(s.path) for s in sources)))
    try:
        _check_units(reader, units)
        aligned = all(reader.source_grid(i).aligned_with(grid) for i in range(reader.count))
        first = reader.source_grid(0)
        reader.processing = {
            "s1_input": " + ".join(f"{s.path} ({s.name}: band {s.band})" for s in sources),
            "s1_source_grid": f"{first.crs.to_string()} at {first.res[0]:g} x {first.res[1]:g}",
            "s1_units_in": units,
            "s1_conversion": "10 log10(power), power <= 0 -> NaN, before resampling" if units == "linear" else "none (dB)",
            "s1_reprojection": "none (already on the S2 grid)" if aligned
            else f"rasterio.warp.reproject, {resampling}, onto the S2 grid; NaN where S1 does not cover it",
        }
    except BaseException:
        reader.close()
        raise
    return reader
