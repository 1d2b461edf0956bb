"""The synthetic SEN12MS-CR sample: real file format, official split, determinism, physics, detectability."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import rasterio

from sscr.bands import S1_BANDS, S2_BANDS
from sscr.config import SynthConfig
from sscr.data.index import index_dataset
from sscr.data.synth import (
    BARE,
    CLOUD_TRUTH_OPACITY,
    CROP,
    FOREST,
    GRASS,
    SNOW,
    URBAN,
    WATER,
    sample_patch_ids,
    synth_patch,
    truth_path,
    write_synthetic_sample,
)
from sscr.layout import PatchId, official_splits, split_of

SIZE = 256
SMALL = 64  # for tests that only need the generator's logic, not the default sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[PatchId]]:
    """The default synthetic sample (SynthConfig() defaults, 256 px), written once for this module."""
    root = tmp_path_factory.mktemp("sen12mscr")
    pids = write_synthetic_sample(root, SynthConfig(), patch_size=SIZE, progress=False)
    return root, pids


@pytest.fixture(scope="module")
def scenes(sample: tuple[Path, list[PatchId]]) -> dict[PatchId, dict[str, np.ndarray]]:
    """In-memory arrays (with land cover) of the first patch of every ROI of the default sample."""
    _, pids = sample
    first = {}
    for pid in pids:
        first.setdefault((pid.season, pid.roi), pid)
    return {pid: synth_patch(pid, SIZE, seed=0) for pid in first.values()}


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# ---------------------------------------------------------------- layout and split


def test_sample_uses_official_rois_in_their_splits(sample):
    root, pids = sample
    synth = SynthConfig()
    assert len(pids) == sum(synth.rois.values()) * synth.patches_per_roi == 40
    splits = official_splits()
    rois_per_split: dict[str, set[tuple[str, int]]] = {}
    for pid in pids:
        split = split_of(pid)
        assert split is not None and pid.roi_key in splits[split]  # exact key, no substring matching
        rois_per_split.setdefault(split, set()).add((pid.season, pid.roi))
    assert {split: len(rois) for split, rois in rois_per_split.items()} == synth.rois
    patches = Counter((pid.season, pid.roi) for pid in pids)
    assert set(patches.values()) == {synth.patches_per_roi}
    # The sample spans several seasons, so snow, phenology and sun geometry vary.
    assert len({pid.season for pid in pids}) >= 3


def test_files_have_the_real_names_and_the_index_finds_every_triplet(sample):
    root, pids = sample
    for pid in pids[:8]:
        for modality in ("s1", "s2", "s2_cloudy"):
            path = root / pid.relpath(modality)
            assert path.is_file()
            assert PatchId.from_filename(path.name) == (pid, modality)
        assert path.parent.name == f"s2_cloudy_{pid.roi}"
        assert path.parent.parent.name == f"{pid.season}_s2_cloudy"
    report = index_dataset(root, patch_size=SIZE)
    assert sorted(t.pid for t in report.triplets) == sorted(pids)  # truth masks do not disturb the index
    assert not report.unpaired and not report.stray and not report.invalid
    assert {t.pid: t.split for t in report.triplets} == {pid: split_of(pid) for pid in pids}


def test_geotiff_metadata_is_that_of_sen12mscr(sample):
    root, pids = sample
    expected = {
        "s1": (2, "float32", S1_BANDS), "s2": (13, "uint16", S2_BANDS), "s2_cloudy": (13, "uint16", S2_BANDS),
    }
    for pid in pids:
        transforms = set()
        for modality, (count, dtype, names) in expected.items():
            with rasterio.open(root / pid.relpath(modality)) as src:
                assert (src.count, src.width, src.height) == (count, SIZE, SIZE)
                assert set(src.dtypes) == {dtype}
                assert src.descriptions == names
                epsg = src.crs.to_epsg()
                assert 32601 <= epsg <= 32660 or 32701 <= epsg <= 32760, epsg  # WGS 84 / UTM
                t = src.transform
                assert (t.a, t.b, t.d, t.e) == (10.0, 0.0, 0.0, -10.0)
                transforms.add(tuple(t)[:6])
        assert len(transforms) == 1  # the three files of a triplet are co-registered


def test_patches_of_a_roi_tile_a_grid(sample):
    root, pids = sample
    pid = pids[0]
    origins = {}
    for patch in range(1, 5):
        with rasterio.open(root / PatchId(pid.season, pid.roi, patch).relpath("s2")) as src:
            origins[patch] = (src.transform.c, src.transform.f, src.crs)
    assert len({crs for _, _, crs in origins.values()}) == 1
    for patch in range(2, 5):
        assert origins[patch][0] - origins[patch - 1][0] == SIZE * 10.0  # edge to edge, 2560 m apart
        assert origins[patch][1] == origins[1][1]


def test_truth_masks_are_written_beside_the_data(sample):
    root, pids = sample
    pid = pids[5]
    path = truth_path(root, pid)
    assert path.is_relative_to(root / "synth_truth")
    with rasterio.open(path) as src:
        assert src.count == 2 and set(src.dtypes) == {"uint8"}
        assert src.descriptions == ("cloud", "shadow")
        truth = src.read()
    assert set(np.unique(truth)) <= {0, 1}
    assert not np.any(truth[0] & truth[1])  # a pixel is cloud or shadow, not both
    arrays = synth_patch(pid, SIZE, seed=0)
    np.testing.assert_array_equal(truth[0], arrays["cloud"])
    np.testing.assert_array_equal(truth[1], arrays["shadow"])
    np.testing.assert_array_equal(_read(root / pid.relpath("s2_cloudy")), arrays["s2_cloudy"])
    np.testing.assert_array_equal(_read(root / pid.relpath("s1")), arrays["s1"])  # NaN compare equal here


def test_season_restriction_and_roi_cap():
    synth = SynthConfig(rois={"train": 3, "val": 50, "test": 1}, patches_per_roi=1)
    chosen = sample_patch_ids(synth, seasons=["winter"])
    assert all(pid.season == "ROIs2017_winter" for pids in chosen.values() for pid in pids)
    assert len(chosen["train"]) == 3 and len(chosen["test"]) == 1
    winter_val = {key for key in official_splits()["val"] if key.startswith("ROIs2017_winter")}
    assert {pid.roi_key for pid in chosen["val"]} == winter_val  # capped at what the official list has
    assert sample_patch_ids(synth, seasons=["winter"]) == chosen  # same choice every time


# ---------------------------------------------------------------- determinism and resumability


def test_generation_is_deterministic_and_order_independent():
    first, second = PatchId("ROIs1868_summer", 80, 1), PatchId("ROIs1868_summer", 80, 2)
    a = synth_patch(first, SMALL, seed=3)
    synth_patch(second, SMALL, seed=3)  # generating another patch in between changes nothing
    b = synth_patch(first, SMALL, seed=3)
    for key in ("s1", "s2", "s2_cloudy", "cloud", "shadow", "land_cover"):
        np.testing.assert_array_equal(a[key], b[key])
    other = synth_patch(first, SMALL, seed=4)
    assert not np.array_equal(a["s2"], other["s2"])
    assert not np.array_equal(synth_patch(second, SMALL, seed=3)["s2"], a["s2"])


def test_same_seed_writes_the_same_bytes_and_another_seed_does_not(tmp_path):
    synth = SynthConfig(rois={"train": 1, "val": 0, "test": 0}, patches_per_roi=1)
    pids = write_synthetic_sample(tmp_path / "a", synth, patch_size=SMALL, progress=False)
    again = write_synthetic_sample(tmp_path / "b", synth, patch_size=SMALL, progress=False)
    assert pids == again and len(pids) == 1
    for modality in ("s1", "s2", "s2_cloudy"):
        rel = pids[0].relpath(modality)
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    reseeded = synth.model_copy(update={"seed": 1})
    other_pids = write_synthetic_sample(tmp_path / "c", reseeded, patch_size=SMALL, progress=False)
    pid = pids[0]
    # Another seed draws another ROI, or the same ROI with other content.
    assert other_pids != pids or not np.array_equal(
        _read(tmp_path / "a" / pid.relpath("s2")), _read(tmp_path / "c" / pid.relpath("s2"))
    )


def test_rerun_skips_complete_patches_and_fills_gaps(tmp_path):
    synth = SynthConfig(rois={"train": 1, "val": 0, "test": 0}, patches_per_roi=2)
    pids = write_synthetic_sample(tmp_path, synth, patch_size=SMALL, progress=False)
    files = [tmp_path / pid.relpath(m) for pid in pids for m in ("s1", "s2", "s2_cloudy")]
    stamps = {path: path.stat().st_mtime_ns for path in files}
    removed = files[1]
    original = removed.read_bytes()
    removed.unlink()
    os.utime(files[0], ns=(1, 1))
    write_synthetic_sample(tmp_path, synth, patch_size=SMALL, progress=False)
    assert removed.read_bytes() == original  # regenerated identically
    assert files[0].stat().st_mtime_ns == 1  # untouched (not rewritten)
    assert all(path.stat().st_mtime_ns == stamps[path] for path in files[2:])
    # A missing truth mask is written alone: the data files (and masks computed from them) stay valid.
    truth = truth_path(tmp_path, pids[1])
    truth.unlink()
    write_synthetic_sample(tmp_path, synth, patch_size=SMALL, progress=False)
    assert truth.is_file()
    assert all(path.stat().st_mtime_ns == stamps[path] for path in files[3:])


# ---------------------------------------------------------------- physical plausibility


def _reflectance(dn: np.ndarray) -> np.ndarray:
    return dn.astype(np.float64) / 10000.0


def _pixels(scenes, classes: tuple[int, ...], key: str = "s2") -> np.ndarray:
    """(bands, N) values of ``key`` over all pixels of the given land-cover classes, cloud-free only."""
    columns = []
    for arrays in scenes.values():
        keep = np.isin(arrays["land_cover"], classes)
        if key == "s2_cloudy":
            keep &= (arrays["opacity"] == 0) & (arrays["shadow"] == 0)
        columns.append(arrays[key][:, keep])
    return np.concatenate(columns, axis=1)


def test_optical_signatures_have_the_right_magnitude(scenes):
    veg = _reflectance(_pixels(scenes, (FOREST, CROP, GRASS)))
    green = veg[:, (veg[7] - veg[3]) / (veg[7] + veg[3]) > 0.6]  # dense green vegetation
    assert green.shape[1] > 10_000
    red, nir = np.median(green[3]), np.median(green[7])
    assert 0.02 < red < 0.07 and 0.22 < nir < 0.5
    water = _reflectance(_pixels(scenes, (WATER,)))
    assert np.median(water[7]) < 0.03 and np.median(water[1]) > np.median(water[7])
    ndvi = lambda px: np.median((px[7] - px[3]) / (px[7] + px[3]))  # noqa: E731
    assert ndvi(veg) > 0.3 > 0.0 > ndvi(water)
    land = _reflectance(_pixels(scenes, (FOREST, CROP, GRASS, BARE, URBAN)))
    assert np.percentile(land[10], 99) < 0.01  # cirrus band: clear land is dark (water vapour)
    assert np.median(land[0]) > np.median(land[3]) * 0.8  # B1 carries the bright aerosol path radiance
    if any(np.any(a["land_cover"] == SNOW) for a in scenes.values()):
        snow = _reflectance(_pixels(scenes, (SNOW,)))
        assert np.median(snow[2]) > 0.4 and np.median(snow[11]) < 0.15  # bright visible, dark SWIR


def test_radar_backscatter_follows_land_cover(scenes):
    vv = {c: np.nanmedian(_pixels(scenes, (c,), "s1")[0]) for c in (WATER, FOREST, URBAN)}
    assert -27 < vv[WATER] < -16
    assert -12 < vv[FOREST] < -4
    assert vv[WATER] < vv[FOREST] < vv[URBAN]
    forest = _pixels(scenes, (FOREST,), "s1")
    assert 3.0 < np.nanmedian(forest[0] - forest[1]) < 10.0  # VH several dB below VV
    s1 = np.stack([a["s1"] for a in scenes.values()])
    assert np.isnan(s1).mean() < 0.01
    # Speckle: fully developed, so neighbouring pixels of the same forest differ by dB, not by 0.1 dB.
    assert np.nanstd(forest[0]) > 1.5


def test_clouds_are_bright_and_shadows_dark(scenes):
    thick_patches = shadow_patches = 0
    for arrays in scenes.values():
        clear, cloudy = _reflectance(arrays["s2"]), _reflectance(arrays["s2_cloudy"])
        thick = (arrays["opacity"] >= 0.95) & (arrays["land_cover"] != SNOW)  # snow is as bright as cloud
        if thick.sum() > 1000:
            thick_patches += 1
            assert np.median(cloudy[[1, 2, 3]][:, thick]) > 0.3  # opaque clouds: bright in every visible band
            assert np.median(cloudy[1][thick] - clear[1][thick]) > 0.2
            # and brighter in cirrus B10 than clear land, which water vapour darkens (real thick clouds: about 0.015)
            assert np.median(cloudy[10][thick]) > max(0.007, 3 * np.median(clear[10]))
        shadow = arrays["shadow"].astype(bool)
        if shadow.sum() > 500:
            shadow_patches += 1
            nir_ratio = np.median(cloudy[7][shadow] / clear[7][shadow])
            blue_ratio = np.median(cloudy[1][shadow] / clear[1][shadow])
            assert nir_ratio < 0.85 and nir_ratio < blue_ratio  # darkest in NIR: skylight is blue
    assert thick_patches >= 3 and shadow_patches >= 3


def test_cloud_coverage_spans_clear_to_overcast(sample):
    root, pids = sample
    coverage = np.array([_read(truth_path(root, pid))[0].mean() for pid in pids])
    assert coverage.min() < 0.01 and coverage.max() > 0.99
    assert np.sum((coverage > 0.2) & (coverage < 0.8)) >= 8
    assert 0.3 < coverage.mean() < 0.8


def test_clear_target_and_cloudy_ground_are_close_but_not_identical(scenes):
    checked = 0
    for arrays in scenes.values():
        # outside clouds, their shadows and the thin haze skirt around clouds (opacity below 1 %)
        free = (arrays["opacity"] < 0.01) & (arrays["shadow"] == 0)
        if free.sum() < 5000:  # enough ground for a stable mean
            continue
        clear = _reflectance(arrays["s2"][:, free])
        cloudy = _reflectance(arrays["s2_cloudy"][:, free])
        difference = np.abs(clear - cloudy).mean()
        assert 0.001 < difference < 0.03  # a nearby date: small radiometric and phenological change
        checked += 1
    assert checked >= 3


# ---------------------------------------------------------------- detectability


def test_s2cloudless_finds_the_synthetic_clouds(sample):
    from sscr.clouds.detect import s2cloudless_mask

    root, pids = sample
    threads = min(2, os.cpu_count() or 1)
    intersection = union = 0
    for pid in pids:
        detected = s2cloudless_mask(_read(root / pid.relpath("s2_cloudy")), threads=threads) > 0.5
        cloud = _read(truth_path(root, pid))[0].astype(bool)
        intersection += int(np.sum(detected & cloud))
        union += int(np.sum(detected | cloud))
    iou = intersection / union
    assert iou >= 0.5, f"s2cloudless vs true clouds (opacity >= {CLOUD_TRUTH_OPACITY}): IoU {iou:.3f}"


def _simd_levels_to_disable() -> str:
    """The SIMD dispatch targets NumPy would use on this CPU, as NPY_DISABLE_CPU_FEATURES takes them."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return " ".join(name for name in __cpu_dispatch__ if __cpu_features__.get(name))


def _sample_digests(root: Path, env: dict[str, str]) -> dict[str, str]:
    import hashlib
    import subprocess
    import sys

    script = ("import sys; from sscr.config import SynthConfig; from sscr.data.synth import write_synthetic_sample;"
              "write_synthetic_sample(sys.argv[1], SynthConfig(rois={'train': 3, 'val': 1, 'test': 1}, "
              "patches_per_roi=2), patch_size=64, progress=False)")
    done = subprocess.run([sys.executable, "-c", script, str(root)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_sample_bytes_do_not_depend_on_the_cpus_simd(tmp_path):
    """NumPy picks AVX-512, AVX2 or SSE code for exp, log10, arctan at run time; the files must not notice.

    DVC records the sample's hash in dvc.lock, so a machine with other SIMD must write the same bytes
    (issue 12: the lock was 44 bytes off on another machine).
    """
    disable = _simd_levels_to_disable()
    if not disable:
        pytest.skip("this CPU offers NumPy no SIMD beyond its baseline")
    native = _sample_digests(tmp_path / "native", dict(os.environ))
    baseline = _sample_digests(tmp_path / "baseline", {**os.environ, "NPY_DISABLE_CPU_FEATURES": disable})
    assert len(native) == 40  # 10 triplets of 3 files and their truth masks
    differing = sorted(name for name in native if native[name] != baseline.get(name))
    assert not differing, f"{len(differing)} files differ with SIMD ({disable}) off: {differing[:5]}"
