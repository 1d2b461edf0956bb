"""The SEN12MSCR torch dataset: normalisation, item contents, options."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import torch
from torch.utils.data import DataLoader

from sscr.data.dataset import SEN12MSCR
from sscr.data.io import normalize_s1, normalize_s2, write_raster
from sscr.layout import PatchId


def test_normalisation_values():
    db = np.array([[[np.nan, -30.0, -25.0, -12.5, 0.0, 3.0, -np.inf, np.inf]]], np.float32)
    # Clip to [-25, 0] dB, map to [0, 1], and only then NaN -> 0 (= -25 dB), as the benchmark's loader does.
    np.testing.assert_allclose(normalize_s1(db)[0, 0], [0.0, 0.0, 0.0, 0.5, 1.0, 1.0, 0.0, 1.0])
    dn = np.array([[[0, 2500, 10000, 12000]]], np.uint16)
    np.testing.assert_allclose(normalize_s2(dn)[0, 0], [0.0, 0.25, 1.0, 1.0])
    assert normalize_s1(db).dtype == np.float32 and normalize_s2(dn).dtype == np.float32


def test_item_contents_and_meta(tmp_path, triplet_writer):
    pid = PatchId("ROIs1158_spring", 1, 7)
    paths = triplet_writer(tmp_path, pid)
    ds = SEN12MSCR(tmp_path, split="train", cloud_mask=None, patch_size=32)
    assert len(ds) == 1
    item = ds[0]
    assert item["sar"].shape == (2, 32, 32) and item["sar"].dtype == torch.float32
    assert item["cloudy"].shape == (13, 32, 32) and item["target"].shape == (13, 32, 32)
    assert item["mask"].shape == (32, 32) and float(item["mask"].sum()) == 0.0
    for key in ("sar", "cloudy", "target"):
        assert 0.0 <= float(item[key].min()) and float(item[key].max()) <= 1.0
    with rasterio.open(paths["s2"]) as src:
        np.testing.assert_allclose(item["target"].numpy(), np.clip(src.read() / 10000.0, 0, 1), rtol=1e-6)
        transform = list(src.transform)[:6]
    meta = item["meta"]
    assert meta["sample_id"] == "ROIs1158_spring_1_p7"
    assert (meta["season"], meta["roi"], meta["patch"], meta["split"]) == ("spring", 1, 7, "train")
    assert meta["crs"] == "EPSG:32632"
    assert meta["transform"].tolist() == transform
    batch = next(iter(DataLoader(ds, batch_size=1)))
    assert batch["cloudy"].shape == (1, 13, 32, 32) and batch["meta"]["transform"].shape == (1, 6)


def test_nan_in_s1_becomes_zero_after_scaling(tmp_path, triplet_writer):
    pid = PatchId("ROIs1158_spring", 1, 1)
    paths = triplet_writer(tmp_path, pid)
    with rasterio.open(paths["s1"]) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    data[0, :4, :4] = np.nan
    write_raster(paths["s1"], data, crs, transform)
    item = SEN12MSCR(tmp_path, split="train", cloud_mask=None, patch_size=32)[0]
    assert torch.isfinite(item["sar"]).all()
    assert torch.all(item["sar"][0, :4, :4] == 0.0)  # the value of -25 dB, not of 0 dB


def test_split_season_and_max_samples(tmp_path, triplet_writer):
    for patch in range(3):
        triplet_writer(tmp_path, PatchId("ROIs1158_spring", 1, patch))
    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1))  # a fall train ROI
    triplet_writer(tmp_path, PatchId("ROIs1158_spring", 106, 1))  # test
    assert len(SEN12MSCR(tmp_path, split="train", cloud_mask=None, patch_size=32)) == 4
    assert len(SEN12MSCR(tmp_path, split="train", seasons=["fall"], cloud_mask=None, patch_size=32)) == 1
    assert len(SEN12MSCR(tmp_path, split="test", cloud_mask=None, patch_size=32)) == 1
    assert len(SEN12MSCR(tmp_path, split=None, cloud_mask=None, patch_size=32)) == 5
    assert len(SEN12MSCR(tmp_path, split="train", cloud_mask=None, max_samples=2, patch_size=32)) == 2
    with pytest.raises(ValueError, match="cloud_mask"):
        SEN12MSCR(tmp_path, cloud_mask="clouds", patch_size=32)
