"""`sscr data demo-scene`: a synthetic L1C product (baseline 05.09) and S1 on another grid, read as real data."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from sscr.cli import main
from sscr.data.demo_scene import DEMO_PATCH, mgrs_tile, write_demo_scene
from sscr.data.sentinel1 import open_s1
from sscr.data.sentinel2 import open_s2, read_l1c_product
from sscr.data.synth import patch_georeference, synth_patch

SIZE = 96  # a multiple of 6, small: the generator's time grows with the area


@pytest.mark.parametrize(("epsg", "easting", "northing", "tile"), [
    (32618, 323483, 4306479, "18SUJ"),  # the Washington Monument (MGRS 18SUJ2348306479)
    (32756, 334873, 6252265, "56HLH"),  # Sydney Opera House, southern hemisphere (56HLH3487352265)
])
def test_mgrs_tile_of_known_points(epsg, easting, northing, tile):
    assert mgrs_tile(CRS.from_epsg(epsg), easting, northing) == tile


def test_demo_scene_reads_back_as_the_synthetic_scene_with_offset_and_s1_on_another_grid(tmp_path):
    scene = write_demo_scene(tmp_path / "demo", size=SIZE)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == sorted([scene.s2.name, scene.s1.name])
    assert zipfile.is_zipfile(scene.s2) and scene.s2.name.startswith("S2B_MSIL1C_") and "_N0509_" in scene.s2.name

    product = read_l1c_product(scene.s2)
    assert product.processing_baseline == "05.09"
    assert set(product.radiometry.offsets) == {-1000}
    # the product's DN carry the offset; the reader removes it: the 10 m bands are the generator's cloudy DN
    arrays = synth_patch(DEMO_PATCH, patch_size=SIZE)
    s2 = open_s2(scene.s2)
    crs, transform = patch_georeference(DEMO_PATCH, SIZE)
    assert s2.crs == crs and s2.transform == transform and (s2.width, s2.height) == (SIZE, SIZE)
    with s2.open() as reader:
        dn = reader.read()
    np.testing.assert_array_equal(dn[[1, 2, 3, 7]], arrays["s2_cloudy"][[1, 2, 3, 7]])
    with zipfile.ZipFile(scene.s2) as archive:
        member = next(n for n in archive.namelist() if n.endswith("_B04.jp2"))
    with rasterio.open(f"/vsizip/{scene.s2}/{member}") as band:
        raw = band.read(1).astype(np.int64)
    valid = arrays["s2_cloudy"][3] > 0
    np.testing.assert_array_equal(raw[valid], arrays["s2_cloudy"][3][valid].astype(np.int64) + 1000)

    with rasterio.open(scene.s1) as s1:
        assert s1.crs.to_epsg() == crs.to_epsg() + 1 and s1.res == (20.0, 20.0)  # the next UTM zone, 20 m
        assert s1.descriptions == ("VV", "VH") and s1.dtypes == ("float32", "float32")
    # reprojected onto the S2 grid by sscr infer's reader: covered throughout, close to the generator's dB
    with open_s1(scene.s1, s2.grid) as reader:
        db = reader.read()
    assert np.isfinite(db).all()
    inner = (slice(None), slice(4, -4), slice(4, -4))
    difference = np.abs(db - arrays["s1"])[inner]
    assert np.median(difference) < 1.5  # dB: 10 m speckle averaged into 20 m pixels, then warped back


def test_demo_scene_command_refuses_to_overwrite_and_prints_the_infer_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "demo-scene", "--out-dir", "demo"]) == 0
    out = capsys.readouterr().out
    files = sorted((tmp_path / "demo").iterdir())
    assert [p.suffix for p in files] == [".zip", ".tif"]
    product, s1 = files
    assert f"sscr infer --model models:/sscr@champion --s2 demo/{product.name} --s1 demo/{s1.name} --out " \
           "demo/clear.tif" in out
    before = {p: p.read_bytes() for p in files}

    assert main(["data", "demo-scene", "--out-dir", "demo"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (f"sscr: error: demo/{product.name} and demo/{s1.name} already exist: remove them, choose "
                     "another --out-dir, or pass --overwrite")
    assert {p: p.read_bytes() for p in sorted((tmp_path / "demo").iterdir())} == before  # untouched, nothing added

    assert main(["data", "demo-scene", "--out-dir", "demo", "--overwrite"]) == 0
    assert sorted((tmp_path / "demo").iterdir()) == files  # no staging folder left behind
    assert s1.read_bytes() == before[s1]  # deterministic
