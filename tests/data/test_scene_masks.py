"""Scene masks: s2cloudless at 60 m against 10 m, a precomputed mask file on another grid, the --mask choice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from sscr.clouds.detect import compute_masks
from sscr.data.io import PatchError, write_raster
from sscr.data.regrid import Grid
from sscr.data.scene_masks import (
    MaskChoice,
    block_mean,
    compute_masks_at,
    open_mask_file,
    read_mask,
    tile_masks,
    upsample_bilinear,
)
from sscr.data.synth import synth_patch
from sscr.layout import PatchId

KINDS = ["s2cloudless_mask", "s2cloudless_map", "cloud_cloudshadow_mask"]
GRID = Grid(CRS.from_epsg(32632), Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), 200, 150)


@pytest.fixture(scope="module")
def cloudy() -> np.ndarray:
    """A synthetic cloudy patch with partial cloud cover (128 px)."""
    return synth_patch(PatchId("ROIs1868_summer", 12, 2), patch_size=128, seed=0)["s2_cloudy"]


def test_s2cloudless_at_60m_agrees_with_10m(cloudy):
    fine = compute_masks_at(cloudy, KINDS, 10)
    coarse = compute_masks_at(cloudy, KINDS, 60)
    for kind in KINDS:
        assert coarse[kind].shape == cloudy.shape[1:] and coarse[kind].dtype == np.float32
    np.testing.assert_array_equal(fine["s2cloudless_mask"], compute_masks(cloudy, ["s2cloudless_mask"])["s2cloudless_mask"])
    # the heuristic is cheap and stays at 10 m
    np.testing.assert_array_equal(coarse["cloud_cloudshadow_mask"], fine["cloud_cloudshadow_mask"])
    binary_fine, binary_coarse = fine["s2cloudless_mask"] > 0, coarse["s2cloudless_mask"] > 0
    assert 0.05 < binary_fine.mean() < 0.95, "the patch must be partly cloudy for this test to mean something"
    iou = (binary_fine & binary_coarse).sum() / (binary_fine | binary_coarse).sum()
    # (the synthetic clouds have the real patches' diffuse edges, benchmarks/results/realism.md: at 60 m their
    # contour moves by a pixel or two more than a sharp edge's would)
    assert iou > 0.75 and (binary_fine == binary_coarse).mean() > 0.85
    assert np.abs(fine["s2cloudless_map"] - coarse["s2cloudless_map"]).mean() < 0.1
    assert set(np.unique(coarse["s2cloudless_mask"])) <= {0.0, 1.0}
    blank = compute_masks_at(np.zeros((13, 30, 30), np.uint16), KINDS, 60)
    assert all((mask == 1).all() for mask in blank.values())
    with pytest.raises(ValueError, match="10 or 60 m"):
        compute_masks_at(cloudy, KINDS, 20)


def test_block_mean_and_bilinear_upsampling():
    ramp = np.add.outer(np.arange(60, dtype=np.float32), 2 * np.arange(66, dtype=np.float32))
    coarse = block_mean(np.stack([ramp, np.full_like(ramp, 7.0)]), 6)
    assert coarse.shape == (2, 10, 11) and (coarse[1] == 7).all()
    assert coarse[0, 0, 0] == pytest.approx(ramp[:6, :6].mean())
    # bilinear between block centres reproduces a linear ramp away from the edges
    fine = upsample_bilinear(coarse[0], 6, ramp.shape)
    np.testing.assert_allclose(fine[3:-3, 3:-3], ramp[3:-3, 3:-3], atol=1e-4)
    # edge blocks of a size that is no multiple of 6 average the pixels they have
    assert block_mean(np.ones((1, 7, 13), np.float32), 6).shape == (1, 2, 3)


def _mask_file(path: Path, values: np.ndarray, grid: Grid, scale: float | None = None) -> Path:
    import rasterio

    write_raster(path, values, grid.crs, grid.transform, band_names=("cloud",))
    if scale is not None:
        with rasterio.open(path, "r+") as dataset:
            dataset.scales = (scale,)
    return path


def test_mask_file_on_another_grid_in_percent(tmp_path):
    # a 60 m mask in percent (0..100, scale 0.01) covering the west half of the scene: cloud in its north half
    coarse = Grid(GRID.crs, Affine(60.0, 0.0, 500000.0, 0.0, -60.0, 5000000.0), 17, 25)
    percent = np.zeros((1, 25, 17), np.uint8)
    percent[:, :12] = 100
    path = _mask_file(tmp_path / "mask_percent.tif", percent, coarse, scale=0.01)
    with open_mask_file(path, GRID, resampling="nearest") as reader:
        mask = read_mask(reader, Window(0, 0, GRID.width, GRID.height))
        part = read_mask(reader, Window(40, 30, 50, 40))
        assert reader.processing["mask_reprojection"].startswith("rasterio.warp.reproject")
    assert mask.dtype == np.float32 and mask.shape == (GRID.height, GRID.width)
    assert (mask[:70, :100] == 1).all() and (mask[74:, :100] == 0).all()
    assert (mask[:, 102:] == 1).all(), "pixels the file does not cover count as cloudy"
    np.testing.assert_array_equal(part, mask[30:70, 40:90])


def test_bad_mask_files_are_refused(tmp_path):
    path = _mask_file(tmp_path / "bytes.tif", np.full((1, 20, 20), 200, np.uint8), GRID)
    with pytest.raises(PatchError, match=r"values span 200\.\.200; expected a probability in \[0, 1\]"):
        open_mask_file(path, GRID)
    two = write_raster(tmp_path / "two.tif", np.zeros((2, 8, 8), np.float32), GRID.crs, GRID.transform)
    with pytest.raises(PatchError, match="has 2 bands, expected 1"):
        open_mask_file(two, GRID)


def test_mask_choice_and_tile_masks(cloudy, tmp_path):
    assert MaskChoice.parse("s2cloudless-60m") == MaskChoice("s2cloudless-60m")
    assert MaskChoice.parse("none").source == "none"
    choice = MaskChoice.parse(str(tmp_path / "mask.tif"))
    assert choice.source == "file" and choice.describe() == f"file {tmp_path / 'mask.tif'}"
    with pytest.raises(ValueError, match="expected one of s2cloudless-10m, s2cloudless-60m, none"):
        MaskChoice.parse("s2cloudless")
    batch = np.stack([cloudy[:, :64, :64], cloudy[:, 64:, 64:]])
    assert tile_masks(batch, "s2cloudless_map", MaskChoice("none")) is None
    masks = tile_masks(batch, "s2cloudless_map", MaskChoice("s2cloudless-60m"))
    assert masks.shape == (2, 64, 64) and masks.dtype == np.float32
    np.testing.assert_array_equal(masks[1], compute_masks_at(batch[1], ["s2cloudless_map"], 60)["s2cloudless_map"])
