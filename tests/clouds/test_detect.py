"""Cloud masks: s2cloudless as configured in the literature, the DSen2-CR heuristic, blank patches."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from sscr.clouds import detect
from sscr.clouds.detect import (
    cloud_shadow_mask,
    compute_masks,
    heuristic_cloud_score,
    s2cloudless_map,
    s2cloudless_mask,
    s2cloudless_probability,
)
from sscr.config import MASK_KINDS
from sscr.data.synth import synth_patch
from sscr.layout import PatchId

SIZE = 64
BACKGROUND = {  # vegetated land, top-of-atmosphere reflectance per band index
    0: 0.11, 1: 0.08, 2: 0.07, 3: 0.05, 4: 0.09, 5: 0.2, 6: 0.26, 7: 0.3, 8: 0.31, 9: 0.1, 10: 0.003,
    11: 0.16, 12: 0.08,
}


def _patch(size: int = SIZE) -> np.ndarray:
    dn = np.zeros((13, size, size), np.float32)
    for band, value in BACKGROUND.items():
        dn[band] = value * 10000
    rng = np.random.default_rng(0)
    return dn * rng.uniform(0.95, 1.05, (1, size, size)).astype(np.float32)


def _synthetic(coverage: str) -> np.ndarray:
    """The cloudy DN of a small synthetic patch that is clear or overcast."""
    for patch in range(1, 200):
        arrays = synth_patch(PatchId("ROIs1868_summer", 76, patch), SIZE, seed=11, snow=False)
        cover = arrays["cloud"].mean()
        if (coverage == "clear" and cover == 0) or (coverage == "overcast" and arrays["opacity"].min() > 0.9):
            return arrays["s2_cloudy"]
    raise AssertionError(f"no {coverage} synthetic patch found")


@pytest.fixture(scope="module")
def clear_dn() -> np.ndarray:
    return _synthetic("clear")


@pytest.fixture(scope="module")
def overcast_dn() -> np.ndarray:
    return _synthetic("overcast")


# ---------------------------------------------------------------- DSen2-CR heuristic


def test_heuristic_marks_a_bright_block_as_cloud_and_a_dark_block_as_shadow():
    dn = _patch()
    cloud = (slice(8, 24), slice(8, 24))
    shadow = (slice(40, 56), slice(36, 52))
    dn[(slice(0, 10), *cloud)] = 5000  # bright in B1-B9 ...
    dn[(10, *cloud)] = 1500  # ... and in cirrus B10
    dn[(slice(11, 13), *cloud)] = 3500
    dn[(slice(None), *shadow)] *= 0.25  # a shadow: everything darker, NIR and SWIR most of all
    mask = cloud_shadow_mask(dn)
    assert mask.shape == (SIZE, SIZE) and mask.dtype == np.float32
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask[12:20, 12:20].all() and mask[44:52, 40:48].all()
    assert not mask[30:34, :].any() and not mask[:, 58:].any()  # background stays clear
    score = heuristic_cloud_score(np.clip(dn, 0, 10000) / 10000)
    assert score[16, 16] >= 0.2 > score[48, 44]  # the dark block is shadow, not cloud


def test_heuristic_does_not_call_snow_cloud():
    dn = _patch()
    block = (slice(16, 48), slice(16, 48))
    dn[(slice(0, 10), *block)] = 6000
    dn[(10, *block)] = 3000
    dn[(slice(11, 13), *block)] = 400  # snow: bright visible, dark SWIR -> NDSI > 0.8
    assert not cloud_shadow_mask(dn)[24:40, 24:40].any()
    dn[(slice(11, 13), *block)] = 4000  # same block, cloud-like SWIR
    assert cloud_shadow_mask(dn)[24:40, 24:40].all()


def test_heuristic_clips_dn_and_tolerates_nan():
    dn = _patch()
    dn[(slice(None), slice(8, 24), slice(8, 24))] = 30000  # saturated: clipped to 10000
    dn[0, 0, 0] = np.nan
    mask = cloud_shadow_mask(dn)
    assert mask[12:20, 12:20].all() and np.isfinite(mask).all()


# ---------------------------------------------------------------- s2cloudless


def test_s2cloudless_matches_the_detector_configured_as_in_the_literature(overcast_dn, clear_dn):
    from s2cloudless import S2PixelCloudDetector

    reference = S2PixelCloudDetector(threshold=0.4, all_bands=True, average_over=4, dilation_size=2)
    for dn in (overcast_dn, clear_dn):
        reflectance = np.moveaxis(np.clip(dn.astype(np.float32), 0, 10000) / 10000, 0, -1)[None]
        expected_mask = reference.get_cloud_masks(reflectance)[0]
        expected_probability = reference.get_cloud_probability_maps(reflectance)[0]
        np.testing.assert_allclose(s2cloudless_probability(dn), expected_probability, atol=1e-6)
        np.testing.assert_array_equal(s2cloudless_mask(dn), expected_mask.astype(np.float32))


def test_s2cloudless_sees_overcast_and_clear(overcast_dn, clear_dn):
    assert s2cloudless_mask(overcast_dn).mean() > 0.95
    assert s2cloudless_mask(clear_dn).mean() < 0.05
    assert s2cloudless_probability(overcast_dn).min() > 0.4


def test_s2cloudless_map_keeps_only_confident_clouds_blurred(overcast_dn, clear_dn):
    probability = s2cloudless_probability(clear_dn)
    confident = probability >= 0.5
    assert confident.mean() < 0.01
    # Values below 0.5 are dropped before the blur (sigma 2, radius 8 px): the map is exactly zero
    # wherever no confident pixel lies within 8 px, however high the probability there was.
    far = ndimage.distance_transform_edt(~confident) > 8 * np.sqrt(2)
    assert far.mean() > 0.5 and not s2cloudless_map(clear_dn)[far].any()
    assert probability[far].max() > 0.0
    # Half overcast, half clear: the map is high inside, zero far outside, soft across the edge.
    dn = clear_dn.copy()
    dn[:, :, : SIZE // 2] = overcast_dn[:, :, : SIZE // 2]
    cloud_map = s2cloudless_map(dn)
    assert cloud_map.dtype == np.float32 and cloud_map.min() >= 0.0 and cloud_map.max() <= 1.0
    assert cloud_map[:, : SIZE // 2 - 8].min() > 0.4
    assert np.median(cloud_map[:, SIZE // 2 + 8 :]) == 0.0
    edge = cloud_map[:, SIZE // 2 - 3 : SIZE // 2 + 3]
    assert np.any((edge > 0.05) & (edge < 0.5))  # the Gaussian blur makes the edge soft
    kept = np.where(s2cloudless_probability(dn) < 0.5, 0, s2cloudless_probability(dn))
    np.testing.assert_allclose(cloud_map, ndimage.gaussian_filter(kept, 2), atol=1e-6)


def test_compute_masks_returns_every_kind_consistently(overcast_dn, clear_dn):
    dn = clear_dn.copy()
    dn[:, : SIZE // 2] = overcast_dn[:, : SIZE // 2]
    masks = compute_masks(dn, list(MASK_KINDS))
    assert list(masks) == list(MASK_KINDS)
    for kind, mask in masks.items():
        assert mask.shape == (SIZE, SIZE) and mask.dtype == np.float32, kind
    np.testing.assert_array_equal(masks["s2cloudless_mask"], s2cloudless_mask(dn))
    np.testing.assert_array_equal(masks["s2cloudless_map"], s2cloudless_map(dn))
    np.testing.assert_array_equal(masks["cloud_cloudshadow_mask"], cloud_shadow_mask(dn))
    assert masks["s2cloudless_mask"][: SIZE // 2 - 4].all() and not masks["s2cloudless_mask"][-8:].any()
    assert list(compute_masks(dn, ["s2cloudless_map"])) == ["s2cloudless_map"]


def test_s2cloudless_runs_once_for_both_kinds(monkeypatch, clear_dn):
    calls = []
    original = detect._probability
    monkeypatch.setattr(detect, "_probability", lambda *a: calls.append(1) or original(*a))
    compute_masks(clear_dn, ["s2cloudless_mask", "s2cloudless_map"])
    assert len(calls) == 1
    compute_masks(clear_dn, ["cloud_cloudshadow_mask"])
    assert len(calls) == 1  # the heuristic alone never loads the classifier


# ---------------------------------------------------------------- blank patches and errors


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_blank_patch_is_all_cloudy_for_every_kind(dtype):
    blank = np.zeros((13, 24, 40), dtype)
    for kind, mask in compute_masks(blank, list(MASK_KINDS)).items():
        assert mask.shape == (24, 40) and mask.dtype == np.float32, kind
        assert (mask == 1).all(), kind
    for function in (s2cloudless_probability, s2cloudless_mask, s2cloudless_map, cloud_shadow_mask):
        assert (function(blank) == 1).all()
    nearly_blank = blank.copy()
    nearly_blank[0, 0, 0] = 1  # one non-zero DN: mean 1e-4 > 1e-5, not blank any more
    assert not (cloud_shadow_mask(nearly_blank) == 1).all()


def test_bad_inputs_are_refused_with_a_clear_message(monkeypatch):
    with pytest.raises(ValueError, match=r"\(13, H, W\)"):
        cloud_shadow_mask(np.zeros((12, 8, 8), np.uint16))
    with pytest.raises(ValueError, match="unknown mask kinds"):
        compute_masks(np.zeros((13, 8, 8), np.uint16), ["fmask"])
    monkeypatch.setenv(detect.THREADS_ENV, "many")
    with pytest.raises(ValueError, match=detect.THREADS_ENV):
        s2cloudless_probability(_patch(8))
    monkeypatch.setenv(detect.THREADS_ENV, "2")
    assert detect._threads(None) == 2 and detect._threads(1) == 1
    monkeypatch.delenv(detect.THREADS_ENV)
    assert detect._threads(None) == 1
