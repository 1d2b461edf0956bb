"""Sentinel-1 as users have it: any CRS and pixel size, one or two files, dB or linear, onto the S2 grid."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform
from rasterio.windows import Window

from sscr.data.io import PatchError, write_raster
from sscr.data.regrid import Grid
from sscr.data.sentinel1 import linear_to_db, open_s1
from sscr.data.synth_products import write_s1_geotiff

# The S2 grid: UTM 32N next to the border of zone 33 (about 11.9 E); 300 x 240 px at 10 m.
S2_GRID = Grid(CRS.from_epsg(32632), Affine(10.0, 0.0, 740000.0, 0.0, -10.0, 5100000.0), 300, 240)
# S1 in zone 33 at 20 m, covering the S2 scene's east two thirds only (its west edge cuts the scene).
S1_CRS = "EPSG:32633"
S1_TRANSFORM = Affine(20.0, 0.0, 276000.0, 0.0, -20.0, 5099900.0)
S1_SHAPE = (150, 120)


def _backscatter_db(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A field linear in the S1 CRS's coordinates (so bilinear resampling reproduces it), VV about -12 dB."""
    return -12.0 + 0.002 * (x - S1_TRANSFORM.c) - 0.001 * (S1_TRANSFORM.f - y)


@pytest.fixture(scope="module")
def s1_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("s1")
    rows, cols = np.mgrid[0 : S1_SHAPE[0], 0 : S1_SHAPE[1]]
    x, y = S1_TRANSFORM @ (cols + 0.5, rows + 0.5)
    vv = _backscatter_db(x, y)
    db = np.stack([vv, vv - 7.0]).astype(np.float32)
    db[:, 70:73, 50:53] = np.nan  # a hole of no data inside the footprint
    return {
        "db": write_s1_geotiff(root / "s1_db.tif", db, S1_CRS, S1_TRANSFORM)[0],
        "linear": write_s1_geotiff(root / "s1_linear.tif", db, S1_CRS, S1_TRANSFORM, units="linear",
                                   separate=True, nodata=0.0),
        "array": db,
    }


def _expected_on_s2_grid() -> tuple[np.ndarray, np.ndarray]:
    """The field at S2 pixel centres, and where those centres fall inside the S1 footprint (by > 1.5 S1 px)."""
    rows, cols = np.mgrid[0 : S2_GRID.height, 0 : S2_GRID.width]
    x, y = S2_GRID.transform @ (cols + 0.5, rows + 0.5)
    x1, y1 = (np.asarray(v).reshape(rows.shape) for v in transform(S2_GRID.crs, S1_CRS, x.ravel(), y.ravel()))
    col1, row1 = ~S1_TRANSFORM @ (x1, y1)
    inside = (col1 > 1.5) & (col1 < S1_SHAPE[1] - 1.5) & (row1 > 1.5) & (row1 < S1_SHAPE[0] - 1.5)
    outside = (col1 < -0.5) | (col1 > S1_SHAPE[1] + 0.5) | (row1 < -0.5) | (row1 > S1_SHAPE[0] + 0.5)
    return _backscatter_db(x1, y1), inside & ~_near_hole(col1, row1), outside


def _near_hole(col1: np.ndarray, row1: np.ndarray) -> np.ndarray:
    return (col1 > 48) & (col1 < 55) & (row1 > 68) & (row1 < 75)


def test_s1_in_another_utm_zone_at_20m_lands_on_the_s2_grid(s1_files):
    with open_s1(s1_files["db"], S2_GRID) as sar:
        assert (sar.count, sar.width, sar.height, sar.crs, sar.transform) == (
            2, S2_GRID.width, S2_GRID.height, S2_GRID.crs, S2_GRID.transform)
        db = sar.read()
        processing = sar.processing
    expected, inside, outside = _expected_on_s2_grid()
    assert 0.3 < inside.mean() < 0.8 and outside.mean() > 0.1, "the footprint must cut the scene"
    np.testing.assert_allclose(db[0][inside], expected[inside], atol=1e-3)
    np.testing.assert_allclose(db[1][inside], expected[inside] - 7.0, atol=1e-3)
    assert np.isnan(db[:, outside]).all()
    assert np.isfinite(db[:, inside]).all()
    # the no-data hole stays no data (NaN), not a made-up value
    x1, y1 = S1_TRANSFORM @ (51.5, 71.5)  # its centre
    (x,), (y,) = transform(S1_CRS, S2_GRID.crs, [x1], [y1])
    col, row = ~S2_GRID.transform @ (x, y)
    assert np.isnan(db[:, int(row), int(col)]).all()
    assert processing["s1_source_grid"] == "EPSG:32633 at 20 x 20"
    assert "rasterio.warp.reproject, bilinear" in processing["s1_reprojection"]


def test_linear_power_in_two_files_equals_db_in_one(s1_files):
    with open_s1(s1_files["db"], S2_GRID) as db_reader, \
            open_s1(s1_files["linear"], S2_GRID, units="linear") as linear_reader:
        from_db, from_linear = db_reader.read(), linear_reader.read()
        assert linear_reader.processing["s1_conversion"].startswith("10 log10(power)")
    np.testing.assert_array_equal(np.isnan(from_db), np.isnan(from_linear))
    np.testing.assert_allclose(from_linear, from_db, atol=1e-4, equal_nan=True)


def test_windows_read_what_the_whole_grid_reads(s1_files):
    with open_s1(s1_files["db"], S2_GRID) as sar:
        whole = sar.read()
        pieces = np.full_like(whole, -99.0)
        for row in range(0, S2_GRID.height, 64):
            for col in range(0, S2_GRID.width, 96):
                window = Window(col, row, min(96, S2_GRID.width - col), min(64, S2_GRID.height - row))
                pieces[:, row : row + window.height, col : col + window.width] = sar.read(window=window)
    np.testing.assert_array_equal(np.isnan(pieces), np.isnan(whole))
    np.testing.assert_allclose(pieces, whole, atol=1e-4, equal_nan=True)


def test_s1_already_on_the_grid_is_copied_not_resampled(tmp_path, s1_files):
    rng = np.random.default_rng(0)
    db = rng.uniform(-25, 0, (2, S2_GRID.height, S2_GRID.width)).astype(np.float32)
    # a file larger than the scene, same pixels: offset by whole pixels
    big = np.full((2, S2_GRID.height + 20, S2_GRID.width + 10), -5.0, np.float32)
    big[:, 10:-10, 10:] = db
    path = write_raster(tmp_path / "aligned.tif", big, S2_GRID.crs,
                        S2_GRID.transform @ Affine.translation(-10, -10), band_names=("VV", "VH"))
    with open_s1(path, S2_GRID) as sar:
        np.testing.assert_array_equal(sar.read(), db)
        np.testing.assert_array_equal(sar.read(window=Window(5, 7, 30, 20)), db[:, 7:27, 5:35])
        assert sar.processing["s1_reprojection"].startswith("none")


def test_band_names_and_file_names_decide_vv_and_vh(tmp_path):
    rng = np.random.default_rng(1)
    vv = rng.uniform(-15, -5, (1, 40, 40)).astype(np.float32)
    vh = vv - 8.0
    grid = Grid(CRS.from_epsg(32632), Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), 40, 40)
    swapped = write_raster(tmp_path / "vh_vv.tif", np.concatenate([vh, vv]), grid.crs, grid.transform,
                           band_names=("VH", "VV"))
    with open_s1(swapped, grid) as sar:
        np.testing.assert_array_equal(sar.read(), np.concatenate([vv, vh]))
    paths = {name: write_raster(tmp_path / f"scene_{name}.tif", band, grid.crs, grid.transform)
             for name, band in (("VV", vv), ("VH", vh))}
    with open_s1([paths["VV"], paths["VH"]], grid) as sar:
        np.testing.assert_array_equal(sar.read(), np.concatenate([vv, vh]))
    with pytest.raises(PatchError, match="is named VH but was passed as VV: pass the S1 files in the order VV, VH"):
        open_s1([paths["VH"], paths["VV"]], grid)


def test_wrong_units_and_band_counts_are_refused(tmp_path, s1_files):
    with pytest.raises(PatchError, match=r"looks like linear power .*\(--s1-units linear\)"):
        open_s1(s1_files["linear"], S2_GRID, units="db")
    with pytest.raises(PatchError, match=r"looks like dB .*\(--s1-units db\)"):
        open_s1(s1_files["db"], S2_GRID, units="linear")
    three = write_raster(tmp_path / "three.tif", np.zeros((3, 8, 8), np.float32) - 10, S2_GRID.crs,
                         S2_GRID.transform)
    with pytest.raises(PatchError, match="has 3 band"):
        open_s1(three, S2_GRID)
    with pytest.raises(ValueError, match="units 'decibel' is not one of db, linear"):
        open_s1(s1_files["db"], S2_GRID, units="decibel")


def test_linear_to_db_sends_non_positive_power_to_nan():
    out = linear_to_db(np.array([1.0, 0.1, 0.0, -0.5, np.nan], np.float32))
    np.testing.assert_allclose(out[:2], [0.0, -10.0], atol=1e-6)
    assert np.isnan(out[2:]).all() and out.dtype == np.float32
