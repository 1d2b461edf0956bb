"""Sentinel-2 L1C products in: band order, resampling to 10 m, harmonisation of baseline 04.00, crops, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.warp import transform_bounds
from rio_cogeo.cogeo import cog_validate

from sscr.bands import S1_BANDS, S2_BANDS
from sscr.data.io import PatchError, write_raster
from sscr.data.sentinel2 import BAND_RESOLUTION_M, Radiometry, open_s2, read_l1c_product
from sscr.data.synth import synth_patch
from sscr.data.synth_products import native_bands
from sscr.infer import infer_scene
from sscr.layout import PatchId
from sscr.models import build_model

OFFSET = (-1000,) * 13
CRS = "EPSG:32632"
TRANSFORM = Affine(10.0, 0.0, 699960.0, 0.0, -10.0, 5100000.0)
SIZE = 120


@pytest.fixture(autouse=True)
def _same_grid_as_the_products(l1c_grid):
    assert (l1c_grid.crs, l1c_grid.transform, l1c_grid.size) == (CRS, TRANSFORM, SIZE)


def _read(scene) -> np.ndarray:
    with scene.open() as dataset:
        return dataset.read()


def _nearest_10m(dn: np.ndarray) -> np.ndarray:
    """What the reader must return by default: each band's native pixels repeated onto the 10 m grid."""
    native = native_bands(dn)
    return np.stack([np.kron(native[band], np.ones((BAND_RESOLUTION_M[band] // 10,) * 2, np.uint16))
                     for band in S2_BANDS])


def test_both_baselines_dir_and_zip_give_the_same_13_band_10m_scene(l1c_products, l1c_scene, l1c_grid):
    scenes = {name: open_s2(path) for name, path in l1c_products.items()}
    scenes["xml"] = open_s2(l1c_products["new"] / "MTD_MSIL1C.xml")
    arrays = {name: _read(scene) for name, scene in scenes.items()}
    expected = _nearest_10m(l1c_scene)
    for name, array in arrays.items():
        assert array.shape == (13, SIZE, SIZE) and array.dtype == np.uint16, name
        np.testing.assert_array_equal(array, expected, err_msg=name)
    # the 10 m bands are the scene itself; no-data stays 0 and the dark block stays at DN 1 after the offset
    np.testing.assert_array_equal(arrays["new"][[1, 2, 3, 7]], l1c_scene[[1, 2, 3, 7]])
    assert (arrays["new"][(slice(None), *l1c_grid.nodata)] == 0).all()
    assert (arrays["new"][(slice(None), *l1c_grid.dark)] == 1).all()
    # the 04.00 product really holds DN + 1000 on disk
    with rasterio.open(next((l1c_products["new"] / "GRANULE").glob("*/IMG_DATA/*_B02.jp2"))) as band:
        on_disk = band.read(1)
    assert on_disk[50, 50] == l1c_scene[1, 50, 50] + 1000 and on_disk[0, 0] == 0

    new, old = scenes["new"], scenes["old"]
    assert new.radiometry.offsets == OFFSET and old.radiometry.is_training_convention
    assert new.processing["s2_processing_baseline"] == "05.09" and old.processing["s2_processing_baseline"] == "03.01"
    assert "RADIO_ADD_OFFSET -1000" in new.processing["s2_radiometry_in"]
    assert new.processing["s2_harmonisation"].startswith("DN -> max((DN + RADIO_ADD_OFFSET)")
    assert old.processing["s2_harmonisation"].startswith("none")
    assert new.processing["s2_product"] == l1c_products["new"].name.removesuffix(".SAFE")
    with new.open() as dataset:
        assert dataset.descriptions == S2_BANDS
        assert dataset.crs.to_string() == CRS and dataset.transform == TRANSFORM
        assert dataset.nodata == 0 and dataset.scales[0] == pytest.approx(1e-4) and dataset.offsets[0] == 0
        assert dataset.tags()["s2_product"] == new.processing["s2_product"]


def test_band_order_matches_gdal_sentinel2_driver(l1c_products):
    """GDAL's own SENTINEL2 driver reads the product's bands by name: an independent check of order and grids."""
    ours = _read(open_s2(l1c_products["old"]))
    with rasterio.open(l1c_products["old"] / "MTD_MSIL1C.xml") as product:
        assert product.driver == "SENTINEL2"
        subdatasets = [s for s in product.subdatasets if re.search(r":(10|20|60)m:", s)]
    seen = set()
    for subdataset in subdatasets:
        with rasterio.open(subdataset) as resolution:
            for index in range(1, resolution.count + 1):
                band = resolution.tags(index)["BANDNAME"]
                factor = BAND_RESOLUTION_M[band] // 10
                assert resolution.res == (10.0 * factor, 10.0 * factor)
                upsampled = np.kron(resolution.read(index), np.ones((factor, factor), np.uint16))
                np.testing.assert_array_equal(ours[S2_BANDS.index(band)], upsampled, err_msg=band)
                seen.add(band)
    assert seen == set(S2_BANDS)


@pytest.mark.parametrize("resampling", ["bilinear", "cubic"])
def test_smooth_resampling_keeps_10m_bands_and_shape(l1c_products, l1c_scene, resampling):
    nearest = _read(open_s2(l1c_products["new"]))
    smooth = _read(open_s2(l1c_products["new_zip"], resampling=resampling))
    assert smooth.shape == (13, SIZE, SIZE)
    ten = [S2_BANDS.index(b) for b in S2_BANDS if BAND_RESOLUTION_M[b] == 10]
    np.testing.assert_array_equal(smooth[ten], nearest[ten])
    for index, band in enumerate(S2_BANDS):
        if BAND_RESOLUTION_M[band] > 10:
            inside = (slice(20, 100), slice(30, 110))  # away from the no-data corner
            assert not np.array_equal(smooth[index][inside], nearest[index][inside]), band
            # a smooth upsampling of a band stays close to its blocks (means over the whole interior)
            assert abs(smooth[index][inside].mean() - nearest[index][inside].mean()) < 0.02 * nearest[index].mean()


@pytest.mark.parametrize("resampling", ["nearest", "bilinear"])
def test_window_crop_is_a_slice_with_its_georeferencing(l1c_products, resampling):
    full = _read(open_s2(l1c_products["new"], resampling=resampling))
    scene = open_s2(l1c_products["new"], resampling=resampling, window=(7, 13, 50, 41))
    np.testing.assert_array_equal(_read(scene), full[:, 13:54, 7:57])
    assert scene.transform == TRANSFORM @ Affine.translation(7, 13)
    assert (scene.width, scene.height) == (50, 41)
    assert scene.processing["s2_window"].startswith("col_off=7 row_off=13 width=50 height=41")
    with pytest.raises(ValueError, match="is not inside"):
        open_s2(l1c_products["new"], window=(100, 0, 50, 10))


def test_bbox_crop_in_lonlat_and_in_the_scene_crs(l1c_products):
    full = _read(open_s2(l1c_products["new"]))
    # pixels cols 30..90, rows 24..84 of the grid, as a UTM box and as its lon/lat bounding box
    left, top = TRANSFORM @ (30, 24)
    right, bottom = TRANSFORM @ (90, 84)
    utm = open_s2(l1c_products["new"], bbox=(left, bottom, right, top), bbox_crs=CRS)
    assert (utm.transform, utm.width, utm.height) == (TRANSFORM @ Affine.translation(30, 24), 60, 60)
    np.testing.assert_array_equal(_read(utm), full[:, 24:84, 30:90])

    lonlat_box = transform_bounds(CRS, "EPSG:4326", left, bottom, right, top)
    scene = open_s2(l1c_products["new_zip"], bbox=lonlat_box)
    col, row = ~TRANSFORM @ (scene.transform.c, scene.transform.f)
    assert float(col).is_integer() and float(row).is_integer(), "the crop starts on a 10 m pixel corner"
    col, row = int(col), int(row)
    # the lon/lat box contains the UTM box (UTM north is not true north), by a few pixels at most
    assert col <= 30 and row <= 24 and col + scene.width >= 90 and row + scene.height >= 84
    assert scene.width <= 66 and scene.height <= 66
    np.testing.assert_array_equal(_read(scene), full[:, row:row + scene.height, col:col + scene.width])
    assert "EPSG:4326" in scene.processing["s2_bbox"]
    with pytest.raises(ValueError, match="does not overlap"):
        open_s2(l1c_products["new"], bbox=(20.0, 10.0, 20.1, 10.1))


@pytest.mark.parametrize("resampling", ["nearest", "cubic"])
def test_decoded_scene_reads_the_same_and_is_reused(l1c_products, tmp_path, resampling):
    """JPEG 2000 bands decoded once into GeoTIFFs (the part a crop needs) give the same scene."""
    scene = open_s2(l1c_products["new_zip"], resampling=resampling, window=(7, 13, 50, 41))
    assert scene.is_jpeg2000
    decoded = scene.decoded(tmp_path / "decoded")
    files = sorted((tmp_path / "decoded").iterdir())
    assert len(files) == 13 and all(s.path.endswith(".tif") for s in decoded.sources)
    np.testing.assert_array_equal(_read(decoded), _read(scene))
    assert decoded.processing["s2_decoded_to"] == str(tmp_path / "decoded")
    written = {path: path.stat().st_mtime_ns for path in files}
    scene.decoded(tmp_path / "decoded")
    assert {path: path.stat().st_mtime_ns for path in files} == written, "decoded bands are reused"
    # the other baseline's product of the same tile and date decodes into its own files
    old = open_s2(l1c_products["old"], resampling=resampling, window=(7, 13, 50, 41)).decoded(tmp_path / "decoded")
    assert len(list((tmp_path / "decoded").iterdir())) == 26
    np.testing.assert_array_equal(_read(old), _read(decoded))
    geotiff = open_s2(decoded.write_geotiff(tmp_path / "stack.tif"))
    assert not geotiff.is_jpeg2000 and geotiff.decoded(tmp_path / "unused") is geotiff


def test_band_harmonisation_equals_numpy_harmonisation_for_every_dn(tmp_path):
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    stack = np.repeat(values[None], 13, axis=0)
    path = write_raster(tmp_path / "all_dn.tif", stack, CRS, TRANSFORM, band_names=S2_BANDS)
    radiometry = Radiometry(OFFSET)
    scene = open_s2(path, geotiff_radiometry=radiometry)
    harmonised = _read(scene)
    np.testing.assert_array_equal(harmonised, radiometry.harmonise(stack))
    assert harmonised[0].ravel()[[0, 1, 1000, 1001, 1002, 11000, 65534, 65535]].tolist() == [
        0, 1, 1, 1, 2, 10000, 64534, 65535]
    # back to the product's convention: valid DN >= 1001 come back exactly, no data stays 0
    valid = (values >= 1001) & (values < 65535)
    restored = radiometry.restore(harmonised, valid)
    np.testing.assert_array_equal(restored[:, valid], stack[:, valid])
    assert (restored[:, ~valid] == 0).all()
    # the training convention is the identity (valid predictions stay >= 1)
    training = Radiometry().restore(np.zeros((13, 1, 3), np.uint16) + [0, 0, 5], np.array([[True, False, True]]))
    assert training[:, 0].tolist() == [[1, 0, 5]] * 13


def test_plain_geotiff_is_used_as_it_is(tmp_path, l1c_scene):
    path = write_raster(tmp_path / "stack.tif", l1c_scene, CRS, TRANSFORM, band_names=S2_BANDS)
    scene = open_s2(path)
    assert scene.radiometry.is_training_convention and scene.processing["s2_input"] == str(path)
    np.testing.assert_array_equal(_read(scene), l1c_scene)
    cropped = open_s2(path, window=(6, 6, 30, 20))
    np.testing.assert_array_equal(_read(cropped), l1c_scene[:, 6:26, 6:36])
    saved = cropped.write_geotiff(tmp_path / "crop.tif", block=16)
    with rasterio.open(saved) as dataset:
        np.testing.assert_array_equal(dataset.read(), l1c_scene[:, 6:26, 6:36])
        assert dataset.transform == TRANSFORM @ Affine.translation(6, 6) and dataset.descriptions == S2_BANDS
        assert dataset.tags()["s2_window"].startswith("col_off=6 row_off=6")


def _copy(product: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(product, tmp_path / product.name))


def test_bad_products_are_refused_naming_the_file_and_the_fix(l1c_products, tmp_path, l1c_scene):
    # a band file missing
    broken = _copy(l1c_products["new"], tmp_path / "missing")
    next((broken / "GRANULE").glob("*/IMG_DATA/*_B8A.jp2")).unlink()
    with pytest.raises(PatchError, match=r"_B8A\.jp2: cannot read band B8A .* download it again"):
        open_s2(broken)
    # an L2A product
    l2a = _copy(l1c_products["old"], tmp_path / "l2a")
    text = (l2a / "MTD_MSIL1C.xml").read_text().replace("Level-1C_User_Product", "Level-2A_User_Product")
    (l2a / "MTD_MSIL1C.xml").unlink()
    (l2a / "MTD_MSIL2A.xml").write_text(text)
    with pytest.raises(PatchError, match="Level-2A product; .* download the L1C product"):
        open_s2(l2a)
    # a baseline >= 04.00 whose metadata lost its offsets
    no_offset = _copy(l1c_products["new"], tmp_path / "no_offset")
    xml = no_offset / "MTD_MSIL1C.xml"
    xml.write_text(re.sub(r"<Radiometric_Offset_List>.*</Radiometric_Offset_List>", "", xml.read_text(), flags=re.S))
    with pytest.raises(PatchError, match="baseline 05.09 but no RADIO_ADD_OFFSET"):
        open_s2(no_offset)
    # two granules (the pre-2017 multi-tile format)
    multi = _copy(l1c_products["old"], tmp_path / "multi")
    xml = multi / "MTD_MSIL1C.xml"
    granule = re.search(r"<Granule .*?</Granule>", xml.read_text(), flags=re.S).group(0)
    xml.write_text(xml.read_text().replace(granule, granule + granule))
    with pytest.raises(PatchError, match="lists 2 granules; only single-tile products"):
        open_s2(multi)
    # not a product at all, and a GeoTIFF with 12 bands
    empty = tmp_path / "empty.SAFE"
    empty.mkdir()
    with pytest.raises(PatchError, match="holds no MTD_MSIL1C.xml"):
        open_s2(empty)
    twelve = write_raster(tmp_path / "twelve.tif", l1c_scene[:12], CRS, TRANSFORM)
    with pytest.raises(PatchError, match="has 12 bands, expected 13"):
        open_s2(twelve)
    assert read_l1c_product(l1c_products["new_zip"]).band_files["B1"].startswith("/vsizip/")


def test_same_prediction_with_and_without_the_offset(l1c_products, l1c_grid, tmp_path):
    """infer_scene on the 03.01 .SAFE and the 05.09 .zip of one scene: the same prediction, each written in its
    product's convention (05.09: RADIO_ADD_OFFSET put back, DN + 1000), as valid COGs on the product's grid."""
    sar = synth_patch(PatchId("ROIs1158_spring", 7, 3), patch_size=SIZE, seed=5)["s1"]
    s1 = write_raster(tmp_path / "s1.tif", sar, CRS, TRANSFORM, band_names=S1_BANDS)
    torch.manual_seed(0)
    model = build_model("mask_unet", encoder_widths=[8, 16], use_sar=True, use_mask=True).eval()
    outputs, tags = {}, {}
    for name in ("old", "new_zip"):
        out = tmp_path / name / "clear.tif"
        infer_scene(model, l1c_products[name], s1, out, tile=64, overlap=16, mask_kind="cloud_cloudshadow_mask",
                    progress=False)
        assert cog_validate(str(out), strict=True)[0]
        assert sorted(p.name for p in out.parent.iterdir()) == ["clear.tif"]  # the decoded bands are removed
        with rasterio.open(out) as dataset:
            outputs[name], tags[name] = dataset.read().astype(np.int64), dataset.tags()
            assert dataset.transform == TRANSFORM and dataset.crs.to_string() == CRS
    valid = outputs["old"] > 0
    assert outputs["old"].std() > 0 and (valid == (outputs["new_zip"] > 0)).all()
    assert (~valid[:, l1c_grid.nodata[0], l1c_grid.nodata[1]]).all()  # the no-data corner stays no data
    np.testing.assert_array_equal(outputs["new_zip"][valid], outputs["old"][valid] + 1000)
    assert tags["new_zip"]["s2_processing_baseline"] == "05.09" and "RADIO_ADD_OFFSET -1000" in tags["new_zip"]["units"]
    assert tags["old"]["s2_harmonisation"] == "none needed (no offset)"
