"""Cloud shadows of one Sentinel-2 patch: the clouds' footprint cast on the ground, matched to dark pixels.

A cloud's shadow is the cloud itself, shifted away from the sun by (cloud height x tan of
the solar zenith angle): the same shape, a few to a hundred pixels off. A SEN12MS-CR patch
carries no sun angles, so the shift is found in the image, as Fmask's shadow matching does
(Zhu and Woodcock, Remote Sens. Environ. 118, 2012): among all shifts up to
:data:`MAX_SHIFT_PX`, the one that lays the cloud footprint onto the largest share of dark
pixels. Dark means a cloud-shadow index CSI = (B8 + B11) / 2 below :data:`DARK_FRACTION` of
the patch's median over clear land (a shadow removes the direct sunlight, which is most of
the NIR and SWIR; water, dark in both, is excluded by its NDWI). The shadow is the shifted
footprint where it is dark and not cloud, kept only if that share beats the share of dark
pixels in the rest of the patch by :data:`MIN_CONTRAST`; a patch without enough cloud (or
with clouds that cast no visible shadow) has none.

Every count of the matching is an integer (the correlations run as FFTs in float64 and are
rounded), so the chosen shift, and the mask, are the same on every CPU.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from sscr.bands import s2_index

CLOUD_LEVEL = 0.5
"""Cloud probability from which a pixel is cloud (as the metrics' mask threshold)."""
MIN_CLOUD_PIXELS = 100
"""Fewer cloud pixels (after removing isolated detections) cast no shadow worth matching."""
MIN_SHIFT_PX = 2
MAX_SHIFT_PX = 96
"""Shifts searched, in px (10 m): 20 m to 960 m, e.g. a 1 km high cloud under a 44 degree sun."""
DARK_FRACTION = 0.7
"""Dark: CSI below this share of the median CSI of clear, non-water pixels."""
WATER_NDWI = 0.1
"""Water (never a shadow candidate): NDWI = (B3 - B8) / (B3 + B8) above this."""
MIN_CONTRAST = 0.25
"""The footprint must be this much darker (share of dark pixels) than the rest of the clear patch."""
MIN_FOOTPRINT_SHARE = 0.05
"""A shift is only considered when at least this share of the cloud's footprint lands on clear land."""
SHADOW_BLUR_SIGMA = 2.0
"""The binary shadow is softened like ``s2cloudless_map`` (Gaussian, sigma 2 px)."""


def _correlate(first: np.ndarray, second: np.ndarray, radius: int) -> np.ndarray:
    """Integer cross-correlation ``c[dy, dx] = sum_x first[x] * second[x + (dy, dx)]`` for |dy|, |dx| <= radius.

    Both are (H, W) 0/1 arrays; shifts reaching outside the image count the outside as 0.
    Computed by FFT in float64 and rounded: exact while the counts stay below 2**52.
    """
    height, width = first.shape
    shape = (sfft.next_fast_len(height + radius), sfft.next_fast_len(width + radius))
    spectrum = np.conj(sfft.rfft2(first.astype(np.float64), shape)) * sfft.rfft2(second.astype(np.float64), shape)
    full = np.rint(sfft.irfft2(spectrum, shape))
    rows = np.r_[shape[0] - radius:shape[0], 0:radius + 1]
    cols = np.r_[shape[1] - radius:shape[1], 0:radius + 1]
    return full[np.ix_(rows, cols)].astype(np.int64)


def _bodies(cloud: np.ndarray) -> np.ndarray:
    """Cloud bodies: the cloud pixels that survive a 3 x 3 opening (isolated false detections removed)."""
    return ndimage.binary_opening(cloud, np.ones((3, 3), bool))


def shadow_mask(reflectance: np.ndarray, cloud_probability: np.ndarray) -> np.ndarray:
    """Binary cloud-shadow mask (H, W) bool of a (13, H, W) reflectance patch and its cloud probability."""
    cloud = np.asarray(cloud_probability) >= CLOUD_LEVEL
    bodies = _bodies(cloud)
    none = np.zeros(cloud.shape, bool)
    if bodies.sum() < MIN_CLOUD_PIXELS:
        return none
    green, nir, swir = (reflectance[s2_index(b)] for b in ("B3", "B8", "B11"))
    water = (green - nir) > WATER_NDWI * (green + nir)
    clear_land = ~cloud & ~water
    if clear_land.sum() < MIN_CLOUD_PIXELS:
        return none
    csi = (nir + swir) / 2.0
    dark = clear_land & (csi < DARK_FRACTION * float(np.median(csi[clear_land])))
    # For each shift s: cloud pixels whose shifted position is dark, and whose shifted position is clear land.
    on_dark = _correlate(bodies, dark, MAX_SHIFT_PX)
    on_clear = _correlate(bodies, clear_land, MAX_SHIFT_PX)
    offsets = np.arange(-MAX_SHIFT_PX, MAX_SHIFT_PX + 1)
    distance = np.hypot(offsets[:, None], offsets[None, :])
    allowed = (distance >= MIN_SHIFT_PX) & (distance <= MAX_SHIFT_PX)
    allowed &= on_clear >= max(MIN_CLOUD_PIXELS, MIN_FOOTPRINT_SHARE * bodies.sum())
    if not allowed.any():
        return none
    share = np.where(allowed, on_dark / np.maximum(on_clear, 1), -1.0)
    best = np.unravel_index(int(np.argmax(share)), share.shape)  # ties: the first in row-major order
    background = dark.sum() / clear_land.sum()
    if share[best] < background + MIN_CONTRAST:
        return none
    dy, dx = int(offsets[best[0]]), int(offsets[best[1]])
    footprint = np.zeros_like(bodies)
    height, width = bodies.shape
    footprint[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        bodies[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    shadow = ndimage.binary_dilation(footprint, np.ones((3, 3), bool)) & dark
    return ndimage.binary_closing(shadow, np.ones((3, 3), bool)) & ~cloud


def shadow_map(reflectance: np.ndarray, cloud_probability: np.ndarray) -> np.ndarray:
    """Soft cloud-shadow map (H, W) float32 in [0, 1]: :func:`shadow_mask` blurred with sigma 2 px."""
    shadow = shadow_mask(reflectance, cloud_probability).astype(np.float32)
    if not shadow.any():
        return shadow
    return np.clip(ndimage.gaussian_filter(shadow, SHADOW_BLUR_SIGMA), 0.0, 1.0).astype(np.float32)
