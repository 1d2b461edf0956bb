"""Ensembles of prediction GeoTIFFs: numpy's mean and variance, block by block, on the members' grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from sscr.bands import S2_BANDS
from sscr.data.io import PatchError, write_raster
from sscr.ensemble import ensemble, ensemble_dirs

HEIGHT, WIDTH = 45, 70  # odd and larger than the 32 px blocks used below: several partial windows
CRS = "EPSG:32631"
TRANSFORM = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 4600000.0)


def _members(root: Path, count: int = 3, seed: int = 0, **overrides) -> tuple[list[Path], np.ndarray]:
    """``count`` predictions of one grid (the second with extra ``*_std`` bands, as `sscr evaluate` exports)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 9000, (13, HEIGHT, WIDTH))
    stacks, paths = [], []
    for index in range(count):
        dn = np.clip(base + rng.integers(-800, 800, base.shape), 0, 10000).astype(np.uint16)
        stacks.append(dn)
        data, names = dn, list(S2_BANDS)
        if index == 1:
            data = np.concatenate([dn, rng.integers(0, 60000, dn.shape).astype(np.uint16)])
            names += [f"{band}_std" for band in S2_BANDS]
        kwargs = {"crs": CRS, "transform": TRANSFORM} | (overrides if index == count - 1 else {})
        paths.append(write_raster(root / f"model{index}" / "sample_pred.tif", data, kwargs["crs"],
                                  kwargs["transform"], band_names=names))
    return paths, np.stack(stacks)


def test_mean_and_variance_equal_numpys(tmp_path):
    paths, stack = _members(tmp_path)
    result = ensemble(paths, tmp_path / "out" / "mean.tif", tmp_path / "out" / "var.tif", block=32)
    reflectance = stack.astype(np.float64) / 10000
    with rasterio.open(result.mean_path) as dataset:
        mean = dataset.read()
        assert dataset.dtypes[0] == "uint16" and dataset.count == 13
        assert dataset.crs.to_string() == CRS and dataset.transform == TRANSFORM
        assert dataset.descriptions == S2_BANDS
    with rasterio.open(result.var_path) as dataset:
        var = dataset.read()
        assert dataset.dtypes[0] == "float32" and dataset.count == 13
        assert dataset.crs.to_string() == CRS and dataset.transform == TRANSFORM
    np.testing.assert_array_equal(mean, np.rint(reflectance.mean(axis=0) * 10000).astype(np.uint16))
    np.testing.assert_allclose(var, reflectance.var(axis=0), rtol=1e-5, atol=1e-10)
    assert var.max() > 1e-4  # members disagree, so the test is not trivially zero
    assert result.size == (WIDTH, HEIGHT) and result.members == paths
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mean.tif", "var.tif"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"transform": TRANSFORM @ Affine.translation(1, 0)}, "transform .* differs"),
        ({"crs": "EPSG:32632"}, "has CRS EPSG:32632"),
    ],
)
def test_mismatched_grid_is_refused_naming_the_file(tmp_path, overrides, message):
    paths, _ = _members(tmp_path, **overrides)
    with pytest.raises(PatchError, match=message) as caught:
        ensemble(paths, tmp_path / "out" / "mean.tif", tmp_path / "out" / "var.tif")
    assert caught.value.path == paths[-1]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_other_size_and_band_count_are_refused(tmp_path):
    paths, _ = _members(tmp_path, count=2)
    small = write_raster(tmp_path / "small.tif", np.zeros((13, HEIGHT - 1, WIDTH), np.uint16), CRS, TRANSFORM)
    with pytest.raises(PatchError, match=f"{WIDTH} x {HEIGHT - 1} px, but .*must share a grid"):
        ensemble([*paths, small], tmp_path / "mean.tif", tmp_path / "var.tif")
    twelve = write_raster(tmp_path / "twelve.tif", np.zeros((12, HEIGHT, WIDTH), np.uint16), CRS, TRANSFORM)
    with pytest.raises(PatchError, match="twelve.tif: prediction has 12 bands, expected at least 13"):
        ensemble([*paths, twelve], tmp_path / "mean.tif", tmp_path / "var.tif")
    with pytest.raises(ValueError, match="at least 2"):
        ensemble(paths[:1], tmp_path / "mean.tif", tmp_path / "var.tif")


def test_directories_are_matched_by_file_name(tmp_path):
    paths, stack = _members(tmp_path)
    dirs = [path.parent for path in paths]
    results = ensemble_dirs(dirs, tmp_path / "ensemble")
    assert [r.mean_path for r in results] == [tmp_path / "ensemble" / "mean" / "sample_pred.tif"]
    with rasterio.open(results[0].mean_path) as dataset:
        np.testing.assert_array_equal(dataset.read(), np.rint(stack.mean(axis=0)).astype(np.uint16))

    write_raster(dirs[0] / "only_here_pred.tif", stack[0], CRS, TRANSFORM)
    with pytest.raises(ValueError, match="model1 lacks 1 \\(e.g. only_here_pred.tif\\)"):
        ensemble_dirs(dirs, tmp_path / "ensemble")
    assert len(ensemble_dirs(dirs, tmp_path / "ensemble", allow_missing=True)) == 1
