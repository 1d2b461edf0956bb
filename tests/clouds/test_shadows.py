"""Cloud shadows: the cloud footprint shifted onto dark pixels, exactly and on every CPU alike."""

from __future__ import annotations

import numpy as np
import pytest

from sscr.clouds import shadows
from sscr.clouds.detect import masks_from_probability
from sscr.clouds.shadows import shadow_map, shadow_mask

SIZE = 128
LAND = {2: 0.06, 7: 0.30, 11: 0.18}  # B3, B8, B11 of vegetated land (reflectance)


def _scene(shift: tuple[int, int] = (18, -26), water_under_shadow: bool = False):
    """Vegetated land with texture, a 30 x 40 px cloud and its shadow ``shift`` px away (NIR and SWIR x 0.4)."""
    rng = np.random.default_rng(0)
    reflectance = np.full((13, SIZE, SIZE), 0.08)
    for band, value in LAND.items():
        reflectance[band] = value * rng.uniform(0.9, 1.1, (SIZE, SIZE))
    probability = np.zeros((SIZE, SIZE), np.float32)
    probability[40:70, 50:90] = 0.95
    shadow = np.zeros((SIZE, SIZE), bool)
    shadow[40 + shift[0]:70 + shift[0], 50 + shift[1]:90 + shift[1]] = True
    shadow &= probability < 0.5
    reflectance[:, shadow] *= 0.4
    if water_under_shadow:  # a lake exactly where the shadow would fall: dark, but water
        reflectance[2, shadow] = 0.05
        reflectance[7, shadow] = 0.01
        reflectance[11, shadow] = 0.005
    # a dark field elsewhere, not shaped like the cloud (a forest): must not be taken for the shadow
    reflectance[7, 100:124, 4:30] *= 0.5
    reflectance[11, 100:124, 4:30] *= 0.5
    return reflectance, probability, shadow


def test_the_shadow_is_the_cloud_footprint_cast_onto_dark_pixels():
    reflectance, probability, truth = _scene()
    found = shadow_mask(reflectance, probability)
    iou = (found & truth).sum() / (found | truth).sum()
    assert iou > 0.85
    assert not (found & (probability >= 0.5)).any()  # a cloud is never its own shadow
    assert not found[100:124, 4:30].any()  # the dark forest is not shaped like the cloud


def test_no_cloud_and_shadows_on_water_give_no_shadow():
    reflectance, probability, _ = _scene()
    assert not shadow_mask(reflectance, np.zeros_like(probability)).any()
    reflectance, probability, truth = _scene(water_under_shadow=True)
    assert not (shadow_mask(reflectance, probability) & truth).any()


def test_shadow_map_is_soft_and_in_range():
    reflectance, probability, truth = _scene()
    soft = shadow_map(reflectance, probability)
    assert soft.dtype == np.float32 and soft.min() >= 0.0 and soft.max() <= 1.0
    assert soft[truth].mean() > 0.8 and soft[~truth].mean() < 0.05
    # the combined kind: the cloud map where it is higher, the shadow elsewhere
    dn = reflectance * 10000
    combined = masks_from_probability(probability, ["s2cloudless_shadow_map", "s2cloudless_map"], dn)
    assert (combined["s2cloudless_shadow_map"] >= combined["s2cloudless_map"]).all()
    assert combined["s2cloudless_shadow_map"][truth].mean() > 0.8 > combined["s2cloudless_map"][truth].mean()
    with pytest.raises(ValueError, match="needs the patch's DN"):
        masks_from_probability(probability, ["s2cloudless_shadow_map"])


def test_footprint_correlation_is_exact_integer_counts():
    rng = np.random.default_rng(1)
    first, second = rng.random((20, 24)) < 0.3, rng.random((20, 24)) < 0.5
    counts = shadows._correlate(first, second, 5)
    for dy in range(-5, 6):
        for dx in range(-5, 6):
            shifted = np.zeros_like(second)
            # second[x + s] for every x, zero outside the image
            src = second[max(dy, 0):20 + min(dy, 0), max(dx, 0):24 + min(dx, 0)]
            shifted[max(-dy, 0):max(-dy, 0) + src.shape[0], max(-dx, 0):max(-dx, 0) + src.shape[1]] = src
            assert counts[dy + 5, dx + 5] == int((first & shifted).sum()), (dy, dx)
