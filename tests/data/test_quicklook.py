"""The quick-look of `sscr infer`: inputs and outputs read small onto one grid, drawn under one stretch."""

from __future__ import annotations

import matplotlib.image
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from sscr.checkpoint import save_atomic
from sscr.cli import main
from sscr.data.cog import mask_spec, prediction_spec, write_cog
from sscr.data.demo_scene import write_demo_scene
from sscr.data.quicklook import coarse_grid, read_quicklook, write_quicklook
from sscr.data.regrid import Grid
from sscr.data.sentinel2 import open_s2
from sscr.models import build_model

SIZE = 96


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo scene (L1C .zip of baseline 05.09, S1 in the next UTM zone at 20 m)."""
    return write_demo_scene(tmp_path_factory.mktemp("demo"), size=SIZE)


def test_input_and_output_are_the_same_reflectance_when_the_output_is_the_input(demo, tmp_path):
    """An "output" that is the input written back in its convention (offset restored) reads as the same
    reflectance as the product's bands: cloudy and output panels share one scale, so one stretch shows both."""
    scene = open_s2(demo.s2)
    with scene.open() as reader:
        dn = reader.read()  # training convention: the offset removed
    out = write_cog(tmp_path / "clear.tif", scene.radiometry.restore(dn), scene.grid, prediction_spec(scene.radiometry))
    probability = np.linspace(0, 1, SIZE * SIZE, dtype=np.float32).reshape(1, SIZE, SIZE)
    mask = write_cog(tmp_path / "mask.tif", np.rint(probability * 100).astype(np.uint8), scene.grid,
                     mask_spec("s2cloudless_map"))

    look = read_quicklook(out, demo.s2, [demo.s1], mask=mask, max_side=SIZE // 2)

    assert (look.grid.width, look.grid.height) == (SIZE // 2, SIZE // 2)
    assert look.cloudy.shape == look.prediction.shape == (3, SIZE // 2, SIZE // 2)
    np.testing.assert_allclose(look.prediction, look.cloudy, atol=1e-6)
    assert 0 < np.nanmedian(look.cloudy) < 1  # reflectance, not DN
    assert look.sar.shape == (2, SIZE // 2, SIZE // 2) and np.isfinite(look.sar).all()
    assert 0 <= look.sar.min() and look.sar.max() <= 1 and look.sar.std() > 0
    assert look.mask.min() >= 0 and look.mask.max() <= 1
    assert look.mask[0, 0] < 0.05 and look.mask[-1, -1] > 0.95  # the mask's ramp, top-left to bottom-right

    png = write_quicklook(tmp_path / "look.png", out, demo.s2, [demo.s1], mask=mask)
    image = matplotlib.image.imread(png)
    assert image.shape[1] == 1280 and 250 < image.shape[0] < 500  # four square panels side by side
    again = write_quicklook(tmp_path / "again.png", out, demo.s2, [demo.s1], mask=mask)
    assert again.read_bytes() == png.read_bytes()  # no timestamp: the same scene draws the same bytes


def test_a_whole_tile_is_read_at_most_max_side_pixels_over_the_same_area():
    tile = Grid(CRS.from_epsg(32632), Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200020.0), 10980, 10980)
    small = coarse_grid(tile, 800)
    assert max(small.width, small.height) <= 800
    assert small.bounds[0] == tile.bounds[0] and small.bounds[3] == tile.bounds[3]
    assert small.bounds[2] >= tile.bounds[2] and small.bounds[1] <= tile.bounds[1]  # covers it, by < 1 coarse px
    assert small.bounds[2] - tile.bounds[2] < small.res[0]


def test_sscr_infer_writes_the_quicklook_and_nothing_else(demo, tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    model = build_model("sscr_lite", encoder_widths=[8, 16], decoder_widths=[8, 16], n_head=2, d_model=16,
                        use_sar=True, use_mask=True)
    checkpoint = save_atomic({"model": model.state_dict(), "model_name": "sscr_lite", "model_config": dict(model.config),
                              "config": {"masks": {"use": "s2cloudless_map"}}}, tmp_path / "model_best.pt")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    args = ["infer", "--model", str(checkpoint), "--s2", str(demo.s2), "--s1", str(demo.s1), "--out", "clear.tif",
            "--no-progress"]

    with pytest.raises(SystemExit) as refused:
        main([*args, "--quicklook", "look.tif"])  # a PNG name, so it can be no input and no GeoTIFF output
    assert refused.value.code == 2
    assert "expected a file name ending in .png" in capsys.readouterr().err

    assert main([*args, "--quicklook", "look.png"]) == 0
    # the mask panel's mask was written for the drawing and removed: only what was asked for is left
    assert sorted(path.name for path in work.iterdir()) == ["clear.tif", "look.png"]
    assert '"quicklook": "look.png"' in capsys.readouterr().out
    assert matplotlib.image.imread("look.png").shape[1] == 1280
    with rasterio.open("clear.tif") as dataset:
        assert dataset.count == 13
