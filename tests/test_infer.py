"""Tiled full-scene inference: equal to whole-scene inference away from seams, georeferenced, bounded, safe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine

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
    model = build_model("unet", encoder_widths=[8, 16], use_sar=True, use_mask=False, variance="diag")
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
    assert not list(tmp_path.glob(".*partial"))


def test_mask_is_computed_per_tile_from_its_dn_and_aligned(scene, tmp_path, monkeypatch):
    """sscr passes clear pixels through (mean = mask * decoded + (1 - mask) * cloudy): mask 0 -> output = input."""
    calls = []

    def pixelwise_mask(cloudy: np.ndarray, kind: str | None) -> np.ndarray:
        calls.append((kind, cloudy.shape))
        return (cloudy[:, 1] > 0.30005).astype(np.float32)  # B2 reflectance: bright = cloud

    monkeypatch.setattr(infer, "cloud_probability", pixelwise_mask)
    torch.manual_seed(0)
    model = build_model("sscr_lite", encoder_widths=[8, 16], n_head=2, use_sar=True, use_mask=True).eval()
    out = tmp_path / "clear.tif"
    report = infer_scene(model, scene["s2"], scene["s1"], out, tile=TILE, overlap=OVERLAP, batch_size=4,
                         mask_kind="cloud_cloudshadow_mask", progress=False)
    with rasterio.open(scene["s2"]) as src, rasterio.open(out) as dst:
        cloudy_dn, clear_dn = src.read().astype(np.int64), dst.read().astype(np.int64)
    cloud = cloudy_dn[1] > 3000.5
    assert 0.05 < cloud.mean() < 0.95
    assert np.abs(clear_dn - np.minimum(cloudy_dn, 10000))[:, ~cloud].max() <= 1
    assert (np.abs(clear_dn - cloudy_dn)[:, cloud] > 1).mean() > 0.5
    assert {kind for kind, _ in calls} == {"cloud_cloudshadow_mask"}
    assert all(shape[1:] == (13, TILE, TILE) for _, shape in calls)  # full tiles, also at the scene edges
    assert report.mask_kind == "cloud_cloudshadow_mask"


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
                 s1_transform: Affine = TRANSFORM, s2_reflectance: bool = False,
                 s1_dtype: str = "float32") -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    dn = rng.integers(1, 5000, (s2_bands, 50, 70)).astype(np.uint16)
    # s2_reflectance: the wrong convention, float32 reflectance in [0, 1]
    s2 = write_raster(root / "cloudy.tif", (dn / 10000).astype(np.float32) if s2_reflectance else dn, CRS, TRANSFORM)
    width, height = s1_size
    s1 = write_raster(root / "sar.tif", rng.uniform(-25, 0, (2, height, width)).astype(s1_dtype), s1_crs,
                      s1_transform)
    return s2, s1


@pytest.mark.parametrize(
    ("kwargs", "bad", "message"),
    [
        ({"s1_crs": "EPSG:32633"}, "sar.tif", "S1 has CRS EPSG:32633, S2 .*cloudy.tif has EPSG:32632: reproject S1"),
        ({"s1_size": (70, 49)}, "sar.tif", "S1 is 70 x 49 px, S2 .*cloudy.tif is 70 x 50 px: reproject S1.*gdalwarp"),
        ({"s1_transform": TRANSFORM @ Affine.translation(3, 0)}, "sar.tif", "S1 transform .* differs from S2"),
        ({"s2_bands": 12}, "cloudy.tif", "S2 scene has 12 bands, expected 13"),
        ({"s2_reflectance": True}, "cloudy.tif", "S2 scene is float32, expected uint16 DN .* -scale 0 1 0 10000"),
        ({"s1_dtype": "int16"}, "sar.tif", "S1 scene is int16, expected float32 backscatter in dB"),
    ],
)
def test_mismatched_inputs_are_refused_and_leave_nothing(tmp_path, unet, kwargs, bad, message):
    s2, s1 = _write_scene(tmp_path, **kwargs)
    out_dir = tmp_path / "out"
    with pytest.raises(PatchError, match=message) as caught:
        infer_scene(unet, s2, s1, out_dir / "clear.tif", var_path=out_dir / "var.tif", tile=64, overlap=16,
                    progress=False)
    assert caught.value.path.name == bad
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
