"""Tiled full-scene inference: equal to whole-scene inference away from seams, georeferenced, bounded, safe."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

import sscr.data.scene_masks as scene_masks
import sscr.infer as infer
from sscr.bands import S1_BANDS, S2_BANDS
from sscr.data.io import PatchError, normalize_s1, normalize_s2, write_raster
from sscr.data.synth import synth_patch
from sscr.infer import AxisTiling, SceneTiling, StreamingBlender, infer_scene
from sscr.layout import PatchId
from sscr.models import build_model
from sscr.predict import predict_tensors

HEIGHT, WIDTH = 301, 421  # odd, larger than a tile, last tiles irregular in both axes
TILE, OVERLAP = 128, 32
CRS = "EPSG:32632"
TRANSFORM = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200000.0)


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A cloudy S2 scene (13 bands uint16 DN) and its S1 (2 bands float32 dB) as UTM GeoTIFFs."""
    root = tmp_path_factory.mktemp("scene")
    arrays = synth_patch(PatchId("ROIs1158_spring", 1, 1), patch_size=448, seed=3)
    s2 = np.ascontiguousarray(arrays["s2_cloudy"][:, :HEIGHT, :WIDTH])
    s1 = np.ascontiguousarray(arrays["s1"][:, :HEIGHT, :WIDTH])
    return {
        "s2": write_raster(root / "s2_cloudy.tif", s2, CRS, TRANSFORM, band_names=S2_BANDS),
        "s1": write_raster(root / "s1.tif", s1, CRS, TRANSFORM, band_names=S1_BANDS),
    }


def _calibrated(model: torch.nn.Module, scene: dict[str, Path]) -> torch.nn.Module:
    """Give batch norm running statistics of real inputs (random init has mean 0, var 1), then eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average
    cloudy, sar = _read_normalised(scene)
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(cloudy[None, :, :128, :128]), torch.from_numpy(sar[None, :, :128, :128]))
    return model.eval()


def _read_normalised(scene: dict[str, Path]) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(scene["s2"]) as s2, rasterio.open(scene["s1"]) as s1:
        return normalize_s2(s2.read()), normalize_s1(s1.read())


@pytest.fixture(scope="module")
def unet(scene: dict[str, Path]) -> torch.nn.Module:
    """A small U-Net with SAR and a per-band variance; batch norm in eval mode keeps it local."""
    torch.manual_seed(0)
    model = build_model("mask_unet", encoder_widths=[8, 16], use_sar=True, use_mask=False, variance="diag")
    with torch.no_grad():  # an untrained head predicts about 0.5 everywhere: spread it over the DN range
        model.heads.conv.weight.mul_(10.0)
    return _calibrated(model, scene)


def _receptive_radius(model: torch.nn.Module) -> int:
    """Measured: how far (px) a change of one input pixel reaches in the output, plus 2 for pooling parity."""
    size, centre = 96, 48
    rng = np.random.default_rng(1)
    cloudy = torch.from_numpy(rng.uniform(0, 0.4, (1, 13, size, size)).astype(np.float32))
    sar = torch.from_numpy(rng.uniform(0, 1, (1, 2, size, size)).astype(np.float32))
    base = predict_tensors(model, cloudy, sar, None)["mean"]
    cloudy[..., centre, centre] += 0.5
    changed = (predict_tensors(model, cloudy, sar, None)["mean"] - base).abs().amax(dim=(0, 1)) > 0
    rows, cols = torch.nonzero(changed, as_tuple=True)
    reach = max(centre - int(rows.min()), int(rows.max()) - centre, centre - int(cols.min()), int(cols.max()) - centre)
    assert 0 < reach < size // 2 - 2, "the receptive field must be finite and measurable for this test"
    return reach + 2


def _unaffected_by_tiling(axis: AxisTiling, radius: int) -> np.ndarray:
    """Per pixel of an axis: every tile covering it sees its full receptive field (as the whole scene does).

    The whole scene is padded to an even size at the far edge, so pixels within ``radius`` of it are excluded.
    """
    ok = np.ones(axis.size, bool)
    ok[axis.size - radius :] = False
    for index in range(axis.count):
        start, end = axis.span(index)
        read_start, read_end = axis.read_span(index)
        for pixel in range(start, end):
            if (read_start > 0 and pixel - read_start < radius) or (read_end < axis.size and read_end - 1 - pixel < radius):
                ok[pixel] = False
    return ok


def test_tiled_equals_whole_scene_inference_away_from_seams(scene, unet, tmp_path):
    out, var = tmp_path / "clear.tif", tmp_path / "clear_var.tif"
    report = infer_scene(unet, scene["s2"], scene["s1"], out, var_path=var, tile=TILE, overlap=OVERLAP,
                         batch_size=3, progress=False)
    cloudy, sar = _read_normalised(scene)
    direct = predict_tensors(unet, torch.from_numpy(cloudy[None]), torch.from_numpy(sar[None]), None)
    expected_dn = np.rint(direct["mean"][0].numpy() * 10000)
    expected_var = direct["var"][0].numpy()

    with rasterio.open(out) as dataset:
        tiled = dataset.read().astype(np.float64)
        assert (dataset.count, dataset.dtypes[0]) == (13, "uint16")
        assert dataset.crs.to_string() == CRS and dataset.transform == TRANSFORM
        assert dataset.descriptions == S2_BANDS
    with rasterio.open(var) as dataset:
        tiled_var = dataset.read()
        assert (dataset.count, dataset.dtypes[0]) == (13, "float32")
        assert dataset.crs.to_string() == CRS and dataset.transform == TRANSFORM

    tiling = SceneTiling.plan(WIDTH, HEIGHT, TILE, OVERLAP, align=unet.size_multiple)
    radius = _receptive_radius(unet)
    interior = np.outer(_unaffected_by_tiling(tiling.y, radius), _unaffected_by_tiling(tiling.x, radius))
    assert interior.mean() > 0.3, f"the comparison must cover much of the scene, covers {interior.mean():.0%}"
    assert np.abs(tiled - expected_dn)[:, interior].max() <= 1
    np.testing.assert_allclose(tiled_var[:, interior], expected_var[:, interior], rtol=1e-4, atol=1e-7)
    # the check means something: the model's output depends on context, so near seams tiles differ from the whole
    assert np.abs(tiled - expected_dn)[:, ~interior].max() > 1
    assert tiled.std() > 300, "the random model's predictions must vary, or the comparison is weak"
    assert np.isin(tiled, (0, 10000)).mean() < 0.2, "and must not be saturated"
    assert report.size == (WIDTH, HEIGHT) and report.tiles == tiling.tiles == 3 * 5
    assert report.var_path == var and report.pixels_per_second > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["clear.tif", "clear_var.tif"]  # no staging left


def test_mask_is_computed_per_tile_from_its_dn_and_aligned(scene, tmp_path, monkeypatch):
    """sscr passes clear pixels through (mean = mask * decoded + (1 - mask) * cloudy): mask 0 -> output = input."""
    calls = []

    def pixelwise_mask(dn: np.ndarray, kind: str, choice, threads=None) -> np.ndarray:
        calls.append((kind, choice.source, dn.shape))
        return (dn[:, 1] > 3000.5).astype(np.float32)  # B2 reflectance: bright = cloud

    monkeypatch.setattr(scene_masks, "tile_masks", pixelwise_mask)
    torch.manual_seed(0)
    model = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_sar=True, use_mask=True).eval()
    out, mask_out = tmp_path / "clear.tif", tmp_path / "mask.tif"
    report = infer_scene(model, scene["s2"], scene["s1"], out, mask_path=mask_out, tile=TILE, overlap=OVERLAP,
                         batch_size=4, mask_kind="cloud_cloudshadow_mask", progress=False)
    with rasterio.open(scene["s2"]) as src, rasterio.open(out) as dst, rasterio.open(mask_out) as mask:
        cloudy_dn, clear_dn = src.read().astype(np.int64), dst.read().astype(np.int64)
        written_mask = mask.read(1)
        assert mask.descriptions == ("cloud_cloudshadow_mask",) and mask.scales == (0.01,)
    cloud = cloudy_dn[1] > 3000.5
    assert 0.05 < cloud.mean() < 0.95
    assert np.abs(clear_dn - np.minimum(cloudy_dn, 10000))[:, ~cloud].max() <= 1
    assert (np.abs(clear_dn - cloudy_dn)[:, cloud] > 1).mean() > 0.5
    assert {(kind, source) for kind, source, _ in calls} == {("cloud_cloudshadow_mask", "s2cloudless-10m")}
    assert all(shape[1:] == (13, TILE, TILE) for _, _, shape in calls)  # full tiles, also at the scene edges
    np.testing.assert_array_equal(written_mask, np.where(cloud, 100, 0))  # the mask fed to the model, in percent
    assert (report.mask_kind, report.mask_source) == ("cloud_cloudshadow_mask", "s2cloudless-10m")


def test_real_mask_and_no_data_tiles(tmp_path):
    """A real (heuristic) mask on a scene half no-data: blank tiles are skipped and written as nodata 0."""
    arrays = synth_patch(PatchId("ROIs1868_summer", 2, 1), patch_size=160, seed=1)
    s2 = arrays["s2_cloudy"].copy()
    s2[:, :, 96:] = 0  # outside the swath: L1C no-data
    s2_path = write_raster(tmp_path / "s2.tif", s2, CRS, TRANSFORM)
    s1_path = write_raster(tmp_path / "s1.tif", arrays["s1"], CRS, TRANSFORM)
    model = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_sar=True, use_mask=True).eval()
    report = infer_scene(model, s2_path, s1_path, tmp_path / "out.tif", tile=64, overlap=16,
                         mask_kind="cloud_cloudshadow_mask", progress=False)
    with rasterio.open(tmp_path / "out.tif") as dataset:
        out = dataset.read()
        assert dataset.nodata == 0
    assert (out[:, :, 96:] == 0).all()
    assert (out[:, :, :96] > 0).all()
    assert report.tiles == 9 and report.tiles_skipped == 3  # the last tile column lies in the no-data
    assert report.batch_size == 1  # the CPU default: one tile per forward pass


@pytest.mark.parametrize("align", [1, 4, 8])
@pytest.mark.parametrize("size", [37, 128, 301, 421, 1000])
def test_axis_tiling_covers_every_pixel_with_fixed_overlap(size, align):
    axis = AxisTiling.plan(size, TILE, OVERLAP, align)
    spans = [axis.span(k) for k in range(axis.count)]
    assert spans[0][0] == 0 and spans[-1][1] == size
    for (start, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        assert end - next_start == OVERLAP  # consecutive tiles overlap by exactly the overlap
        assert end - start == TILE
    for k in range(axis.count):
        read_start, read_end = axis.read_span(k)
        assert min(TILE, size) - align < read_end - read_start <= min(TILE, size)
        assert read_start % align == 0 and 0 <= read_start and read_end <= size  # same pooling phase as the scene
        assert read_start <= spans[k][0] and spans[k][1] <= read_end
    assert sum(axis.final_length(k) for k in range(axis.count)) == size
    total = np.zeros(size)
    for k, (start, end) in enumerate(spans):
        total[start:end] += axis.ramp(k)
        assert (axis.ramp(k) > 0).all()
    np.testing.assert_allclose(total, 1.0, atol=1e-6)  # complementary ramps


@pytest.mark.parametrize(("width", "height"), [(421, 301), (128, 40), (500, 97), (30, 700)])
def test_streaming_blender_reproduces_a_smooth_field_and_emits_each_pixel_once(width, height):
    """Tiles that agree (a global linear field) must blend back to that field exactly, every pixel written once."""
    tiling = SceneTiling.plan(width, height, TILE, OVERLAP)
    blender = StreamingBlender(tiling, channels=2)
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    field = np.stack([0.001 * rows + 0.002 * cols, np.sin(rows / 7) * np.cos(cols / 11)])
    written = np.zeros((2, height, width), np.float32)
    count = np.zeros((height, width), int)
    block_rows, block_cols = tiling.block_shape
    for row in range(tiling.y.count):
        for col in range(tiling.x.count):
            (y0, y1), (x0, x1) = tiling.y.span(row), tiling.x.span(col)
            top, left, region = blender.add(row, col, field[:, y0:y1, x0:x1])
            assert (top, left) == (y0, x0) and top % block_rows == 0 and left % block_cols == 0
            written[:, top : top + region.shape[1], left : left + region.shape[2]] = region
            count[top : top + region.shape[1], left : left + region.shape[2]] += 1
    assert (count == 1).all()
    np.testing.assert_allclose(written, field, atol=1e-5)


def test_blend_of_disagreeing_tiles_is_a_smooth_transition():
    """Tiles predicting different constants: a pixel of one tile only keeps its value; overlaps mix monotonically."""
    tiling = SceneTiling.plan(300, 100, TILE, OVERLAP)
    blender = StreamingBlender(tiling, channels=1)
    line = np.zeros(300, np.float32)
    for col in range(tiling.x.count):
        (y0, y1), (x0, x1) = tiling.y.span(0), tiling.x.span(col)
        _, left, region = blender.add(0, col, np.full((1, y1 - y0, x1 - x0), float(col), np.float32))
        line[left : left + region.shape[2]] = region[0, 0]
    assert line[0] == 0 and line[OVERLAP + 10] == 0 and line[-1] == tiling.x.count - 1
    seam = line[96:128]  # tiles 0 and 1 overlap here
    assert (np.diff(seam) > 0).all() and 0 < seam[0] < 0.1 and 0.9 < seam[-1] < 1


def test_buffers_do_not_grow_with_the_scene():
    """Accumulators are tile-sized; only the carry spans the width, with ``overlap`` rows (never a tile row)."""
    small = SceneTiling.plan(2048, 2048, 256, 32).buffer_shapes(14)
    sentinel_tile = SceneTiling.plan(10980, 10980, 256, 32).buffer_shapes(14)
    tall = SceneTiling.plan(2048, 50000, 256, 32).buffer_shapes(14)
    assert small["tile"] == sentinel_tile["tile"] == tall["tile"] == (15, 256, 256)
    assert small["side"] == sentinel_tile["side"] == tall["side"] == (15, 256, 32)
    assert sentinel_tile["carry"] == (15, 32, 10980) and small["carry"] == tall["carry"] == (15, 32, 2048)
    assert SceneTiling.plan(10980, 10980, 256, 32).buffer_bytes(27) < 64 * 2**20


def test_stride_is_rounded_to_geotiff_blocks_and_overlap_checked():
    assert SceneTiling.plan(1000, 1000, 256, 40).x.stride == 208  # 216 rounded down to a multiple of 16
    with pytest.raises(ValueError, match="overlap 200 is too large for tile 256.*overlap <= 128"):
        SceneTiling.plan(1000, 1000, 256, 200)


def _write_scene(root: Path, s2_bands: int = 13, s1_crs: str = CRS, s1_size: tuple[int, int] = (70, 50),
                 s1_transform: Affine = TRANSFORM, s1_bands: int = 2, s2_reflectance: bool = False) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    dn = rng.integers(1, 5000, (s2_bands, 50, 70)).astype(np.uint16)
    # s2_reflectance: the wrong convention, float32 reflectance in [0, 1]
    s2 = write_raster(root / "cloudy.tif", (dn / 10000).astype(np.float32) if s2_reflectance else dn, CRS, TRANSFORM)
    width, height = s1_size
    s1 = write_raster(root / "sar.tif", rng.uniform(-25, 0, (s1_bands, height, width)).astype(np.float32), s1_crs,
                      s1_transform)
    return s2, s1


@pytest.mark.parametrize(
    ("kwargs", "bad", "message"),
    [
        ({"s1_transform": TRANSFORM @ Affine.translation(500, 0)}, "sar.tif",
         "S1 VV .* does not overlap the S2 scene .*: pass S1 of the same area"),
        ({"s1_bands": 3}, "sar.tif", "S1 scene has 3 band\\(s\\), expected 2"),
        ({"s2_bands": 12}, "cloudy.tif", "S2 scene has 12 bands, expected 13"),
        ({"s2_reflectance": True}, "cloudy.tif", "S2 scene is float32, expected uint16 DN .* -scale 0 1 0 10000"),
    ],
)
def test_mismatched_inputs_are_refused_and_leave_nothing(tmp_path, unet, kwargs, bad, message):
    s2, s1 = _write_scene(tmp_path, **kwargs)
    out_dir = tmp_path / "out"
    with pytest.raises(PatchError, match=message) as caught:
        infer_scene(unet, s2, s1, out_dir / "clear.tif", var_path=out_dir / "var.tif", tile=64, overlap=16,
                    progress=False)
    assert Path(caught.value.path).name == bad
    assert not out_dir.exists() or not any(out_dir.iterdir())


def test_failure_midway_leaves_no_output(tmp_path, unet, monkeypatch):
    s2, s1 = _write_scene(tmp_path)
    calls = {"n": 0}
    real = infer.predict_tensors

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(infer, "predict_tensors", failing)
    with pytest.raises(RuntimeError, match="simulated"):
        infer_scene(unet, s2, s1, tmp_path / "out" / "clear.tif", var_path=tmp_path / "out" / "var.tif",
                    tile=32, overlap=0, batch_size=1, progress=False)
    assert calls["n"] == 2
    assert list((tmp_path / "out").iterdir()) == []


def test_sar_model_needs_s1(tmp_path, unet):
    s2, _ = _write_scene(tmp_path)
    with pytest.raises(ValueError, match="fuses SAR"):
        infer_scene(unet, s2, None, tmp_path / "clear.tif", progress=False)


# ---------------------------------------------------------------- Sentinel inputs, COG outputs, masks when needed


def _s1_in_zone_33_at_20m(scene: dict[str, Path], root: Path) -> tuple[Path, Path]:
    """The scene's S1 as a user may have it (UTM 33N, 20 m, a margin around the scene), and that file warped onto
    the S2 grid in one piece with rasterio (what a user would otherwise do with gdalwarp first)."""
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(scene["s1"]) as src:
        db, bounds = src.read(), src.bounds
    dst_transform, width, height = calculate_default_transform(CRS, "EPSG:32633", WIDTH, HEIGHT, *bounds,
                                                               resolution=20)
    dst_transform = dst_transform @ Affine.translation(-3, -3)  # a margin, so the scene lies inside the file
    zone33 = np.full((2, height + 6, width + 6), np.nan, np.float32)
    reproject(db, zone33, src_transform=TRANSFORM, src_crs=CRS, dst_transform=dst_transform,
              dst_crs="EPSG:32633", resampling=Resampling.average, src_nodata=np.nan, dst_nodata=np.nan)
    zone33 = np.where(np.isnan(zone33), -15.0, zone33).astype(np.float32)
    s1_33 = write_raster(root / "s1_utm33_20m.tif", zone33, "EPSG:32633", dst_transform, band_names=S1_BANDS)
    warped = np.full((2, HEIGHT, WIDTH), np.nan, np.float32)
    reproject(zone33, warped, src_transform=dst_transform, src_crs="EPSG:32633", dst_transform=TRANSFORM,
              dst_crs=CRS, resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan, tolerance=0)
    return s1_33, write_raster(root / "s1_warped.tif", warped, CRS, TRANSFORM, band_names=S1_BANDS)


def test_s1_in_another_utm_zone_at_20m_equals_s1_warped_first(scene, unet, tmp_path):
    """S1 in UTM 33N at 20 m gives the prediction of the same S1 warped onto the S2 grid first (GDAL's whole-image
    bilinear warp is itself ~0.01 dB off exact bilinear; the window reads are closer), and SAR is really used."""
    s1_33, s1_warped = _s1_in_zone_33_at_20m(scene, tmp_path)
    with rasterio.open(s1_33) as src:
        flat = write_raster(tmp_path / "s1_flat.tif", np.full((2, src.height, src.width), -15.0, np.float32),
                            src.crs, src.transform)
    outputs = {}
    for name, s1 in (("utm33", s1_33), ("warped", s1_warped), ("flat", flat)):
        out = tmp_path / name / "clear.tif"
        infer_scene(unet, scene["s2"], s1, out, tile=TILE, overlap=OVERLAP, progress=False)
        with rasterio.open(out) as dataset:
            outputs[name] = dataset.read().astype(np.int64)
            assert dataset.crs.to_string() == CRS and dataset.transform == TRANSFORM
    difference = np.abs(outputs["utm33"] - outputs["warped"])
    assert difference.max() <= 8 and difference.mean() < 0.5  # mostly 0, some 1-DN rounding flips
    assert np.abs(outputs["utm33"] - outputs["flat"]).mean() > 20 * difference.mean()
    with rasterio.open(tmp_path / "utm33" / "clear.tif") as dataset:
        tags = dataset.tags()
    assert tags["s1_source_grid"] == "EPSG:32633 at 20 x 20"
    assert tags["s1_reprojection"].startswith("rasterio.warp.reproject, bilinear")


def test_outputs_are_cogs_tagged_with_the_model_and_the_processing(scene, tmp_path):
    """Prediction, variance and the mask used: valid COGs (rio-cogeo), band names, scale/offset, nodata, tags."""
    from rio_cogeo.cogeo import cog_validate

    torch.manual_seed(0)
    model = build_model("mask_unet", encoder_widths=[8, 16], use_sar=True, use_mask=True, variance="diag").eval()
    out, var, mask = tmp_path / "clear.tif", tmp_path / "var.tif", tmp_path / "mask.tif"
    report = infer_scene(model, scene["s2"], scene["s1"], out, var_path=var, mask_path=mask, tile=TILE,
                         overlap=OVERLAP, mask="s2cloudless-60m", model_source="models:/sscr@champion",
                         model_version="sscr/7", progress=False)
    expected = {out: (13, "uint16", 0, S2_BANDS[0], 1e-4), var: (13, "float32", None, "B1_var", 1.0),
                mask: (1, "uint8", 255, "s2cloudless_map", 0.01)}
    for path, (count, dtype, nodata, first_band, scale) in expected.items():
        valid, errors, warnings = cog_validate(str(path), strict=True)
        assert valid and not errors and not warnings, (path, errors, warnings)
        with rasterio.open(path) as dataset:
            assert (dataset.count, dataset.dtypes[0], dataset.descriptions[0]) == (count, dtype, first_band)
            assert nodata is None and np.isnan(dataset.nodata) or dataset.nodata == nodata
            assert dataset.scales[0] == pytest.approx(scale)
            assert dataset.crs.to_string() == CRS and dataset.transform == TRANSFORM
            tags = dataset.tags()
            assert (tags["sscr_model"], tags["sscr_model_version"]) == ("models:/sscr@champion", "sscr/7")
            assert tags["sscr_cloud_mask"] == "s2cloudless_map from s2cloudless-60m"
            assert tags["s1_units_in"] == "db" and tags["s2_input"] == str(scene["s2"])
    with rasterio.open(mask) as dataset:
        percent = dataset.read(1)
    assert percent.max() <= 100 and percent.std() > 0  # a real s2cloudless map of the synthetic clouds
    assert (report.mask_kind, report.mask_source, report.mask_path) == ("s2cloudless_map", "s2cloudless-60m", mask)


def test_no_mask_is_computed_for_networks_without_a_mask_input(scene, unet, tmp_path, monkeypatch):
    def no_mask_expected(*args, **kwargs):
        raise AssertionError("a cloud mask was computed for a network that takes none")

    monkeypatch.setattr(scene_masks, "tile_masks", no_mask_expected)
    monkeypatch.setattr(scene_masks.SceneMasker, "__init__", no_mask_expected)
    mask = tmp_path / "mask.tif"
    report = infer_scene(unet, scene["s2"], scene["s1"], tmp_path / "clear.tif", mask_path=mask, tile=TILE,
                         overlap=OVERLAP, mask="s2cloudless-10m", progress=False)
    assert report.mask_kind is None and report.mask_path is None and not mask.exists()


def test_a_clear_mask_file_passes_the_cloudy_input_through(scene, tmp_path):
    """A precomputed mask on a 20 m grid saying "clear" everywhere: sscr_lite returns its input, the file is used."""
    mask_file = write_raster(tmp_path / "clear_mask_20m.tif", np.zeros((1, 160, 220), np.float32), CRS,
                             TRANSFORM @ Affine.scale(2))
    torch.manual_seed(0)
    model = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_sar=True, use_mask=True).eval()
    out = tmp_path / "clear.tif"
    report = infer_scene(model, scene["s2"], scene["s1"], out, mask_path=tmp_path / "mask.tif", tile=TILE,
                         overlap=OVERLAP, mask=str(mask_file), progress=False)
    with rasterio.open(scene["s2"]) as src, rasterio.open(out) as dst:
        np.testing.assert_allclose(dst.read().astype(np.int64), np.clip(src.read().astype(np.int64), 1, 10000),
                                   atol=1)
        assert dst.tags()["mask_input"] == str(mask_file)
    with rasterio.open(tmp_path / "mask.tif") as dataset:
        assert (dataset.read(1) == 0).all()
    assert report.mask_source == f"file {mask_file}"


def _digest(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        (lambda s2, s1, model, root: {"var_path": s2}, r"--var-out .*cloudy.tif is the input .*cloudy.tif"),
        (lambda s2, s1, model, root: {"mask_path": _link(root / "m.tif", s1, "symlink")}, r"--mask-out .* is the input"),
        (lambda s2, s1, model, root: {"out_path": _link(root / "o.tif", s2, "hardlink")}, r"--out .* is the input"),
        (lambda s2, s1, model, root: {"out_path": model}, r"--out .*model_best.pt is the input"),
        (lambda s2, s1, model, root: {"var_path": root / "out.tif"}, "--out and --var-out are the same file"),
        (lambda s2, s1, model, root: {"out_path": root}, r"--out .* is a directory: pass a file name"),
    ],
    ids=["var-out-is-s2", "mask-out-symlink-to-s1", "out-hardlink-to-s2", "out-is-the-model", "out-is-var-out",
         "out-is-a-directory"],
)
def test_outputs_never_overwrite_inputs_or_each_other(tmp_path, outputs, message):
    torch.manual_seed(0)
    model = build_model("mask_unet", encoder_widths=[8, 16], use_sar=True, use_mask=True, variance="diag").eval()
    s2, s1 = _write_scene(tmp_path)
    checkpoint = tmp_path / "model_best.pt"
    checkpoint.write_bytes(b"weights")
    before = {path: _digest(path) for path in (s2, s1, checkpoint)}
    kwargs = {"out_path": tmp_path / "out.tif", "var_path": None, "mask_path": tmp_path / "mask.tif",
              **outputs(s2, s1, checkpoint, tmp_path)}
    with pytest.raises(ValueError, match=message):
        infer_scene(model, s2, s1, kwargs.pop("out_path"), **kwargs, model_files=[checkpoint], tile=64, overlap=16,
                    progress=False)
    assert {path: _digest(path) for path in before} == before


def _link(link: Path, target: Path, kind: str) -> Path:
    import os

    if kind == "symlink":
        link.symlink_to(target)
    else:
        os.link(target, link)
    return link


# ---------------------------------------------------------------- the command line


def test_one_command_from_an_l1c_product_and_s1_to_a_cog_leaves_nothing_else(tmp_path, monkeypatch, capsys):
    """The README's command on a zipped L1C product (baseline 05.09) and an S1 GeoTIFF in another UTM zone, from
    an empty directory: a COG appears and nothing else (no tracking store for a local checkpoint)."""
    from rio_cogeo.cogeo import cog_validate

    from sscr.checkpoint import save_atomic
    from sscr.cli import main
    from sscr.data.synth_products import write_l1c_product

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    product = write_l1c_product(inputs / "product", synth_patch(PatchId("ROIs1158_spring", 1, 1), patch_size=120,
                                                               seed=3)["s2_cloudy"], CRS, TRANSFORM, zipped=True)
    scene = {"s1": write_raster(inputs / "s1_32.tif", synth_patch(PatchId("ROIs1158_spring", 1, 1), patch_size=120,
                                                                  seed=3)["s1"], CRS, TRANSFORM)}
    with rasterio.open(scene["s1"]) as src:  # the S1 file in UTM 33N at 20 m, built as in the test above
        assert src.bounds.left == TRANSFORM.c
    global WIDTH, HEIGHT
    size = (WIDTH, HEIGHT)
    WIDTH, HEIGHT = 120, 120
    try:
        s1, _ = _s1_in_zone_33_at_20m(scene, inputs)
    finally:
        WIDTH, HEIGHT = size
    torch.manual_seed(0)
    model = build_model("mask_unet", encoder_widths=[8, 16], use_sar=True, use_mask=False)
    checkpoint = save_atomic({"model": model.state_dict(), "model_name": "mask_unet", "model_config": dict(model.config),
                              "config": {}}, inputs / "model_best.pt")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert main(["infer", "--model", str(checkpoint), "--s2", str(product), "--s1", str(s1), "--out", "clear.tif",
                 "--no-progress"]) == 0
    assert sorted(path.name for path in work.iterdir()) == ["clear.tif"]
    assert cog_validate("clear.tif", strict=True)[0]
    with rasterio.open("clear.tif") as dataset:
        assert dataset.crs.to_string() == CRS and dataset.transform == TRANSFORM and dataset.count == 13
        assert dataset.tags()["sscr_model_version"] == f"sha256:{_digest(checkpoint)[:16]}"
    capsys.readouterr()

    # a directory passed as --model, and --out a directory: one line each, naming the path and the fix
    folder = inputs / "not_a_run"  # a directory without model_best.pt (a run directory stands for that file)
    folder.mkdir()
    assert main(["infer", "--model", str(folder), "--s2", str(product), "--s1", str(s1), "--out", "x.tif"]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (f"sscr: error: --model {folder} is a directory, not a checkpoint: pass the checkpoint file "
                     f"inside it, e.g. {folder / 'model_best.pt'}")
    assert main(["infer", "--model", str(checkpoint), "--s2", str(product), "--s1", str(s1), "--out", "."]) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("sscr: error: --out . is a directory: pass a file name") and "\n" not in error
    assert sorted(path.name for path in work.iterdir()) == ["clear.tif"]

    # sscr ensemble in an empty directory: its two outputs and nothing else
    shutil_copy = __import__("shutil").copy
    shutil_copy("clear.tif", inputs / "a.tif")
    shutil_copy("clear.tif", inputs / "b.tif")
    ensemble_dir = tmp_path / "ensemble"
    ensemble_dir.mkdir()
    monkeypatch.chdir(ensemble_dir)
    assert main(["ensemble", str(inputs / "a.tif"), str(inputs / "b.tif"), "--out-mean", "mean.tif",
                 "--out-var", "var.tif"]) == 0
    assert sorted(path.name for path in ensemble_dir.iterdir()) == ["mean.tif", "var.tif"]


# ---------------------------------------------------------------- speed: the same output, less work


@pytest.mark.parametrize(("height", "width", "kind"), [(301, 421, "s2cloudless_map"), (100, 421, "s2cloudless_mask"),
                                                      (301, 421, "s2cloudless_shadow_map")],
                         ids=["irregular-edges", "shorter-than-a-tile", "shadow-map"])
def test_scene_masker_gives_every_tile_its_own_mask_classifying_each_pixel_once(scene, height, width, kind):
    """s2cloudless at 10 m shared by the tiles of a scene: each tile's mask equals tile_masks' bit for bit (edges,
    padded tiles and a tile left out included), and each scene pixel is classified once."""
    from sscr.data.scene_masks import MaskChoice, SceneMasker, pad_to, tile_masks

    with rasterio.open(scene["s2"]) as src:
        dn = src.read()[:, :height, :width]
    tiling = SceneTiling.plan(width, height, TILE, OVERLAP, align=4)
    choice = MaskChoice("s2cloudless-10m")
    masker = SceneMasker(kind, choice, width, threads=1)
    tiles = [(row, col) for row in range(tiling.y.count) for col in range(tiling.x.count)]
    left_out = tiles[len(tiles) // 2]  # as a tile of no data is: its neighbours classify what they share with it
    covered = np.zeros((height, width), bool)
    for row, col in tiles:
        if (row, col) == left_out:
            continue
        rows, cols = tiling.y.read_span(row), tiling.x.read_span(col)
        covered[rows[0]: rows[1], cols[0]: cols[1]] = True
        tile = pad_to(dn[:, rows[0]: rows[1], cols[0]: cols[1]], (tiling.y.tile, tiling.x.tile))
        shared = masker(tile[None], [(rows, cols)])
        np.testing.assert_array_equal(shared, tile_masks(tile[None], kind, choice))
        assert shared.shape == (1, tiling.y.tile, tiling.x.tile)
    assert masker.classified == covered.sum() < tiling.tiles * TILE * TILE / 1.2  # each pixel once
    assert not covered.all()  # the left-out tile's own pixels were not classified


def test_the_fast_path_writes_the_plain_paths_outputs_byte_for_byte(scene, tmp_path):
    """A shared 10 m mask, a second reading thread and LightGBM on every core change nothing in the outputs."""
    from sscr.infer import PLAIN, SceneSpeed

    torch.manual_seed(0)
    model = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_sar=True, use_mask=True).eval()
    outputs = {}
    for name, speed in (("plain", PLAIN), ("fast", SceneSpeed(mask_threads=2))):
        out, mask = tmp_path / name / "clear.tif", tmp_path / name / "mask.tif"
        report = infer_scene(model, scene["s2"], scene["s1"], out, mask_path=mask, tile=TILE, overlap=OVERLAP,
                             mask_kind="s2cloudless_map", mask="s2cloudless-10m", speed=speed, progress=False)
        with rasterio.open(out) as prediction, rasterio.open(mask) as used:
            outputs[name] = (prediction.read(), used.read(), report)
    (plain, plain_mask, slow), (fast, fast_mask, quick) = outputs["plain"], outputs["fast"]
    np.testing.assert_array_equal(fast, plain)
    np.testing.assert_array_equal(fast_mask, plain_mask)
    assert 0 < (plain_mask > 50).mean() < 1  # the scene has clouds and clear land
    assert (slow.pixels_classified, quick.pixels_classified) == (0, WIDTH * HEIGHT)
    assert {"read", "mask", "forward", "blend", "write", "cog"} <= set(quick.stage_seconds)
    assert "wait" in quick.stage_seconds and "wait" not in slow.stage_seconds  # the second thread did the reading


# ---------------------------------------------------------------- all or nothing: a full disk, signals, a killed run


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: _digest(path) for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def cli_run(scene, tmp_path_factory):
    """``sscr infer`` in a subprocess on the test scene (a small cloud-gated model, prediction and mask), and the
    outputs of one finished run (``before/``: c.tif, m.tif) to stand for the files a new run must not break."""
    import subprocess
    import sys

    from sscr.checkpoint import save_atomic

    from sandbox import subprocess_env

    root = tmp_path_factory.mktemp("cli_run")
    torch.manual_seed(0)
    model = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_sar=True, use_mask=True)
    checkpoint = save_atomic({"model": model.state_dict(), "model_name": "sscr_lite",
                              "model_config": dict(model.config), "config": {}}, root / "model_best.pt")

    def command(folder: str) -> list[str]:
        return [sys.executable, "-m", "sscr.cli", "infer", "--model", str(checkpoint), "--s2", str(scene["s2"]),
                "--s1", str(scene["s1"]), "--out", f"{folder}/c.tif", "--mask-out", f"{folder}/m.tif",
                "--mask-kind", "cloud_cloudshadow_mask", "--tile", str(TILE), "--overlap", str(OVERLAP),
                "--no-progress"]

    def run(folder: str, cwd: Path = root, setup: list[str] | None = None, **env: str):
        return subprocess.run([*(setup or []), *command(folder)], cwd=cwd, env=subprocess_env(**env),
                              capture_output=True, text=True, timeout=600)

    done = run("before")
    assert done.returncode == 0, done.stderr[-3000:]
    return {"root": root, "run": run, "command": command, "before": root / "before"}


def _staging_sizes(cli_run) -> int:
    """Bytes of the staging files a run leaves when it is killed after its tiles (SIGKILL at ``infer.cog``)."""
    folder = cli_run["root"] / "killed"
    done = cli_run["run"]("killed", SSCR_FAULT="infer.cog")
    assert done.returncode == -9
    staged = sorted(path.name for path in folder.iterdir())
    assert staged == [".c.tif.staging.tif", ".m.tif.staging.tif"], staged
    return sum(path.stat().st_size for path in folder.iterdir())


@pytest.mark.parametrize("when", ["tiles", "cog"])
def test_a_full_disk_changes_no_output_and_says_so_in_one_line(cli_run, tmp_path, when):
    """Issue 21 row 6: prediction and mask of one run are replaced together or not at all; nothing else is left."""
    import shutil

    from sandbox import can_mount

    if not can_mount(tmp_path):
        pytest.skip("needs root and mount namespaces (unshare -m) for a real full file system")
    before = cli_run["before"]
    kept = sum(path.stat().st_size for path in before.iterdir())
    # "tiles": no room for the staging files; "cog": room for them, not for the COGs beside them
    room = 8 * 1024 + (_staging_sizes(cli_run) if when == "cog" else 0)
    size_k = (kept + room) // 1024 + 8
    shutil.copytree(before, tmp_path / "old")
    # inside a private mount namespace: a small tmpfs holding the previous outputs; what it holds afterwards is
    # listed and copied out before the namespace (and the tmpfs) goes
    # "cog": a first run killed after its tiles shows that they fit (its staging files, left behind, are removed by
    # the second run); the second run then fails in the COG conversion
    first = 'SSCR_FAULT=infer.cog "$@"; echo $? > killed.txt; ' if when == "cog" else ""
    script = (f"mkdir -p full after && mount -t tmpfs -o size={size_k}k tmpfs full && cp old/* full/ && {first}"
              '"$@"; code=$?; ls -A full > left.txt; cp full/* after/; exit $code')
    done = cli_run["run"]("full", cwd=tmp_path, setup=["unshare", "-m", "--propagation", "private", "sh", "-c",
                                                       script, "sh"])
    assert done.returncode == 1, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("sscr:")]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith("sscr: error: full/") and "No space left on device (ENOSPC)" in lines[0]
    assert "free space" in lines[0] and "--out" in lines[0]
    assert (tmp_path / "left.txt").read_text().split() == ["c.tif", "m.tif"]  # no staging, no partial COG
    assert _digests(tmp_path / "after") == _digests(before)  # both outputs as the previous run left them
    if when == "cog":
        assert (tmp_path / "killed.txt").read_text().strip() == str(128 + 9)  # the tiles fitted: killed at the COGs
        assert "removed full/.c.tif.staging.tif, left by an interrupted run" in done.stderr


@pytest.mark.parametrize(("signum", "point"), [("SIGTERM", "infer.tile"), ("SIGINT", "infer.cog")],
                         ids=["sigterm-amid-tiles", "sigint-before-cogs"])
def test_a_signal_leaves_no_staging_file_and_one_line(cli_run, tmp_path, signum, point):
    """Issue 21 row 7: stopped amid its tiles or with its staging files done, a run removes them, changes no
    output, says so in one line and exits 128 + the signal's number."""
    import shutil
    import signal
    import subprocess
    import time

    from sandbox import ctrl_c_as_in_a_terminal, subprocess_env

    folder = tmp_path / "out"
    shutil.copytree(cli_run["before"], folder)
    before = _digests(folder)
    faults = tmp_path / "faults"
    faults.mkdir()
    process = subprocess.Popen(cli_run["command"]("out"), cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                               env=subprocess_env(SSCR_FAULT=f"pause:{point}", SSCR_FAULT_DIR=str(faults)),
                               preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 300
        while not (faults / "paused").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run never reached the fault point"
            time.sleep(0.1)
        assert any(path.name.endswith(".staging.tif") for path in folder.iterdir())  # caught with its files open
        process.send_signal(getattr(signal, signum))
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    number = getattr(signal, signum).value
    assert process.returncode == 128 + number, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (f"sscr: infer interrupted ({signum}): out/c.tif and the other "
                                               "outputs are as they were before, no partial file left")
    assert _digests(folder) == before  # c.tif and m.tif as they were, and nothing else


def test_a_killed_runs_leftovers_are_removed_by_the_next_run(cli_run, tmp_path):
    """Issue 21 row 7: SIGKILL leaves staging files (and, amid the COG conversion, GDAL's temporary overviews);
    the next run writing those outputs removes them, says which, and leaves only its outputs."""
    folder = tmp_path / "out"
    killed = cli_run["run"]("out", cwd=tmp_path, SSCR_FAULT="infer.cog")
    assert killed.returncode == -9
    (folder / ".c.tif.partial").write_bytes(b"half a COG")  # what a kill amid the conversion leaves as well
    (folder / ".c.tif.partial.ovr.tmp").write_bytes(b"GDAL's overviews")
    left = sorted(path.name for path in folder.iterdir())
    assert left == [".c.tif.partial", ".c.tif.partial.ovr.tmp", ".c.tif.staging.tif", ".m.tif.staging.tif"]
    done = cli_run["run"]("out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(path.name for path in folder.iterdir()) == ["c.tif", "m.tif"]
    for name in left:
        assert f"removed out/{name}, left by an interrupted run" in done.stderr


def test_batch_size_zero_names_the_infer_option(tmp_path, capsys):
    """Issue 21 row 11: ``sscr infer --batch-size 0`` is refused naming --batch-size, not train.batch_size."""
    from sscr.cli import main

    code = main(["infer", "--model", str(tmp_path / "none.pt"), "--s2", str(tmp_path / "s2.tif"), "--out",
                 str(tmp_path / "c.tif"), "--batch-size", "0"])
    error = capsys.readouterr().err.strip()
    assert code == 1 and error == ("sscr: error: --batch-size must be at least 1 (tiles per forward pass), got 0; "
                                   "leave it out for the default (1 on CPU, 4 on a GPU)")
    assert list(tmp_path.iterdir()) == []


def test_the_shared_probability_holds_one_band_of_rows_whatever_the_scene_height(monkeypatch):
    """Memory stays bounded: across a 10980 px wide, 3000 px tall scene the shared s2cloudless probability holds at
    most one tile row's read rows (a cheap stand-in classifier: the buffers are what is measured)."""
    from sscr.data import scene_masks
    from sscr.data.scene_masks import MaskChoice, SceneMasker

    monkeypatch.setattr(scene_masks, "_probability", lambda pixels, threads: pixels[1] / 10000.0)
    width, height = 10980, 3000
    tiling = SceneTiling.plan(width, height, 256, 32, align=4)
    masker = SceneMasker("s2cloudless_map", MaskChoice("s2cloudless-10m"), width, threads=1)
    tile = np.full((1, 13, 256, 256), 1000, np.uint16)
    held = 0
    for row in range(tiling.y.count):
        for col in (0, 1, tiling.x.count - 1):  # enough columns to move through the rows
            masker(tile, [(tiling.y.read_span(row), tiling.x.read_span(col))])
            held = max(held, masker.scene.probability.shape[0])
    assert held == 256 and masker.scene.probability.shape == masker.scene.known.shape == (256, width)
    assert masker.scene.probability.nbytes + masker.scene.known.nbytes < 16 * 2**20  # 13.7 MB at 10980 px


def test_tiles_clear_throughout_skip_the_model_and_keep_its_output(scene, tmp_path):
    """sscr_lite passes clear pixels (probability 0, isolated detections) through unchanged: a tile clear throughout
    is not run through the model, and every output byte is the one the model would have written."""
    from sscr.infer import PLAIN, SceneSpeed

    cloud = np.zeros((1, HEIGHT, WIDTH), np.float32)
    cloud[:, :, 260:] = 0.9  # the right part cloudy, the left clear ...
    cloud[:, 40:42, 50:52] = 0.95  # ... but for a 2 x 2 px detection far from any cloud (a bright roof)
    mask_file = write_raster(tmp_path / "mask.tif", cloud, CRS, TRANSFORM)
    torch.manual_seed(0)
    model = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_sar=True, use_mask=True).eval()
    outputs = {}
    for name, speed in (("plain", PLAIN), ("fast", SceneSpeed())):
        out = tmp_path / name / "clear.tif"
        report = infer_scene(model, scene["s2"], scene["s1"], out, tile=TILE, overlap=OVERLAP, mask=str(mask_file),
                             speed=speed, progress=False)
        with rasterio.open(out) as dataset:
            outputs[name] = (dataset.read(), report)
    (plain, slow), (fast, quick) = outputs["plain"], outputs["fast"]
    np.testing.assert_array_equal(fast, plain)
    tiling = SceneTiling.plan(WIDTH, HEIGHT, TILE, OVERLAP, align=model.size_multiple)
    clear_columns = sum(1 for col in range(tiling.x.count) if tiling.x.read_span(col)[1] <= 260)
    assert clear_columns >= 2 and quick.tiles_passed_through == clear_columns * tiling.y.count
    assert slow.tiles_passed_through == 0
    with rasterio.open(scene["s2"]) as src:
        cloudy = np.clip(src.read().astype(np.int64), 1, 10000)
    assert (plain[:, :, :200] == cloudy[:, :, :200]).all()  # what was skipped is the input, as the model says
    assert (np.abs(plain[:, :, 300:].astype(np.int64) - cloudy[:, :, 300:]) > 1).mean() > 0.5  # the rest was not


def test_passes_through_marks_exactly_pixels_whose_output_is_the_input():
    """The rule sscr_lite gives for skipping: every pixel it marks has mean == clip(cloudy) bit for bit in a real
    forward pass, and a mask with a real cloud body is not marked clear throughout."""
    from sscr.predict import passes_through

    torch.manual_seed(0)
    model = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_sar=True, use_mask=True).eval()
    rng = np.random.default_rng(0)
    cloudy = torch.from_numpy(rng.uniform(0, 1.2, (1, 13, 64, 64)).astype(np.float32))
    sar = torch.from_numpy(rng.uniform(0, 1, (1, 2, 64, 64)).astype(np.float32))
    mask = torch.zeros(1, 64, 64)
    mask[:, 10:12, 10:12] = 0.9  # isolated
    mask[:, 30:50, 30:50] = 0.8  # a cloud body, with a blurred skirt
    mask[:, 28:52, 28:52] = torch.maximum(mask[:, 28:52, 28:52], torch.tensor(0.2))
    marked = model.passes_through(mask)[0, 0]
    mean = predict_tensors(model, cloudy, sar, mask)["mean"][0]
    assert marked[10, 10] and not marked[40, 40] and 0.5 < marked.float().mean() < 0.95
    assert torch.equal(mean[:, marked], cloudy[0].clamp(0, 1)[:, marked])
    assert (mean[:, ~marked] != cloudy[0].clamp(0, 1)[:, ~marked]).float().mean() > 0.9
    assert not passes_through(model, cloudy, mask)
    clear = mask.clone()
    clear[:, 20:60, 20:60] = 0.0  # only the isolated detection left
    assert passes_through(model, cloudy, clear)
    variance = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_mask=True, variance="diag").eval()
    assert not passes_through(variance, cloudy, clear)  # its variance is needed: it always runs


@functools.cache
def _gdal_get_cache_max64() -> Any:
    """GDALGetCacheMax64 of the libgdal rasterio loaded (looked up once, not at every forward pass)."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*.so*"))
    if not libs:
        pytest.skip("rasterio is not a wheel with its own libgdal: GDALGetCacheMax64 is not reachable here")
    function = ctypes.CDLL(libs[0]).GDALGetCacheMax64
    function.restype = ctypes.c_int64
    return function


def _gdal_cache_max() -> int:
    """GDAL's effective block cache in bytes."""
    return int(_gdal_get_cache_max64()())


class _CacheProbe(torch.nn.Module):
    """Passes the cloudy input through and records GDAL's block cache size at each forward pass."""

    use_sar = False
    use_mask = False

    def __init__(self) -> None:
        super().__init__()
        self.one = torch.nn.Parameter(torch.ones(()))  # a parameter says which device the model is on
        self.seen: list[int] = []

    def forward(self, cloudy: torch.Tensor, *args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        self.seen.append(_gdal_cache_max())
        return {"mean": cloudy * self.one}


def test_scene_runs_with_a_block_cache_of_megabytes_not_bytes(scene, tmp_path):
    """rasterio hands GDAL_CACHEMAX=<int> to GDAL as bytes: 64 meant a 64-byte cache (every block decoded again
    for each read, a 6x slower COG conversion). While a scene runs, the cache is GDAL_CACHE_BYTES, 64 MiB."""
    from sscr.data.cog import GDAL_CACHE_BYTES

    probe = _CacheProbe()
    infer_scene(probe, scene["s2"], None, tmp_path / "out.tif", tile=TILE, overlap=OVERLAP, mask_kind=None,
                progress=False)
    assert probe.seen and set(probe.seen) == {GDAL_CACHE_BYTES} == {64 * 2**20}
    assert _gdal_cache_max() != 64  # and GDAL's own default is back afterwards
