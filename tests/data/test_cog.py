"""COG outputs: written by windows, valid COGs (rio-cogeo), with the metadata a user's tools need."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from sscr.bands import S2_BANDS
from sscr.data.cog import (
    MASK_NODATA,
    cog_writer,
    mask_spec,
    mask_to_percent,
    output_tags,
    prediction_spec,
    variance_spec,
    write_cog,
)
from sscr.data.regrid import Grid
from sscr.data.sentinel2 import Radiometry

GRID = Grid(CRS.from_epsg(32632), Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200000.0), 700, 600)
BLOCK = 256  # small blocks, so a 700 x 600 px scene gets internal overviews
BAND_04 = Radiometry((-1000,) * 13)


def _windows(grid: Grid, rows: int = 80, cols: int = 96):
    """The write pattern of the tiled inference: row-major regions, the last ones cut by the scene edge."""
    for row in range(0, grid.height, rows):
        for col in range(0, grid.width, cols):
            yield Window(col, row, min(cols, grid.width - col), min(rows, grid.height - row))


def _check_layout(path, count: int, dtype: str, predictor: str) -> rasterio.io.DatasetReader:
    valid, errors, warnings = cog_validate(str(path), strict=True)
    assert valid and not errors and not warnings, (errors, warnings)
    dataset = rasterio.open(path)
    assert (dataset.count, dataset.dtypes[0]) == (count, dtype)
    assert dataset.block_shapes[0] == (BLOCK, BLOCK)
    assert dataset.overviews(1) == [2, 4]
    structure = dataset.tags(ns="IMAGE_STRUCTURE")
    assert (structure["LAYOUT"], structure["COMPRESSION"], structure["PREDICTOR"]) == ("COG", "DEFLATE", predictor)
    assert dataset.crs == GRID.crs and dataset.transform == GRID.transform
    return dataset


def test_prediction_written_by_windows_is_a_cog_in_the_input_convention(tmp_path):
    rng = np.random.default_rng(0)
    harmonised = rng.integers(0, 6000, (13, GRID.height, GRID.width)).astype(np.uint16)  # DN of the models
    valid = np.ones((GRID.height, GRID.width), bool)
    valid[:40, :50] = False  # no data, as at a swath edge
    tags = output_tags("models:/sscr@champion", "7", {"s2_product": "S2B_MSIL1C_X", "s1_units_in": "linear"},
                       cloud_mask="s2cloudless-60m")
    out = tmp_path / "clear.tif"
    with cog_writer(out, GRID, prediction_spec(BAND_04), tags, block_shape=(80, 96), blocksize=BLOCK) as dst:
        for window in _windows(GRID):
            rows, cols = window.toslices()
            dst.write(BAND_04.restore(harmonised[:, rows, cols], valid[rows, cols]), window=window)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clear.tif"], "no staging or partial file is left"
    with _check_layout(out, 13, "uint16", "2") as dataset:
        dn = dataset.read()
        assert dataset.descriptions == S2_BANDS and dataset.nodata == 0
        assert dataset.scales == (1e-4,) * 13 and dataset.offsets == (-0.1,) * 13
        found = dataset.tags()
        assert {key: found[key] for key in tags} == tags
        assert found["sscr_model_version"] == "7" and found["cloud_mask"] == "s2cloudless-60m"
        assert found["sscr_layer"] == "prediction" and "RADIO_ADD_OFFSET -1000" in found["units"]
        reflectance = dn * np.array(dataset.scales)[:, None, None] + np.array(dataset.offsets)[:, None, None]
    # baseline >= 04.00 input: the DN carry the +1000 again (reflectance 0 is DN 1000, a valid value), and
    # DN * scale + offset is the models' reflectance
    assert (dn[:, ~valid] == 0).all()
    np.testing.assert_array_equal(dn[:, valid], harmonised[:, valid].astype(np.int64) + 1000)
    np.testing.assert_allclose(reflectance[:, valid], harmonised[:, valid] / 1e4, atol=1e-9)


def test_variance_and_mask_layers(tmp_path):
    rng = np.random.default_rng(1)
    rows, cols = np.mgrid[0 : GRID.height, 0 : GRID.width].astype(np.float32)
    variance = (np.arange(1, 14, dtype=np.float32)[:, None, None] * 1e-4 * (1 + np.sin(rows / 50) * np.cos(cols / 70)))
    variance[:, :10, :10] = np.nan
    path = write_cog(tmp_path / "var.tif", variance, GRID, variance_spec(13), output_tags("run.pt"), blocksize=BLOCK)
    with _check_layout(path, 13, "float32", "3") as dataset:
        np.testing.assert_array_equal(dataset.read(), variance)
        assert np.isnan(dataset.nodata) and dataset.descriptions[0] == "B1_var"
        assert dataset.tags()["sscr_model"] == "run.pt"
    probability = rng.random((GRID.height, GRID.width), dtype=np.float32)
    valid = np.ones(probability.shape, bool)
    valid[-5:] = False
    percent = mask_to_percent(probability, valid)[None]
    path = write_cog(tmp_path / "mask.tif", percent, GRID, mask_spec("s2cloudless_map"), blocksize=BLOCK)
    with _check_layout(path, 1, "uint8", "2") as dataset:
        stored = dataset.read(1)
        assert dataset.nodata == MASK_NODATA and dataset.scales == (0.01,) and dataset.descriptions == ("s2cloudless_map",)
    assert (stored[-5:] == MASK_NODATA).all()
    np.testing.assert_allclose(stored[valid] * 0.01, probability[valid], atol=0.005 + 1e-6)
    with pytest.raises(ValueError, match="1 or 13 bands"):
        variance_spec(4)


def test_default_blocks_are_512_with_overviews(tmp_path):
    grid = Grid(GRID.crs, GRID.transform, 1100, 1030)
    probability = np.linspace(0, 1, grid.width * grid.height, dtype=np.float32).reshape(grid.height, grid.width)
    path = write_cog(tmp_path / "mask.tif", mask_to_percent(probability)[None], grid, mask_spec("s2cloudless_mask"))
    assert cog_validate(str(path), strict=True)[0]
    with rasterio.open(path) as dataset:
        assert dataset.block_shapes[0] == (512, 512) and dataset.overviews(1) == [2, 4]


def test_a_failed_inference_leaves_no_cog_and_no_staging_file(tmp_path):
    out = tmp_path / "clear.tif"
    with pytest.raises(RuntimeError, match="model failed"):
        with cog_writer(out, GRID, prediction_spec(Radiometry()), blocksize=BLOCK) as dst:
            dst.write(np.ones((13, 80, 96), np.uint16), window=Window(0, 0, 96, 80))
            raise RuntimeError("model failed")
    assert list(tmp_path.iterdir()) == []
