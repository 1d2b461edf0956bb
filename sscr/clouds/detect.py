"""Cloud masks of one Sentinel-2 L1C patch, as the SEN12MS-CR literature computes them.

Four kinds (``sscr.config.MASK_KINDS``), each an (H, W) float32 array:

``s2cloudless_mask``
    Binary mask of Sentinel Hub's pixel classifier *s2cloudless* (a LightGBM
    model on 10 of the 13 bands; https://github.com/sentinel-hub/sentinel2-cloud-detector),
    configured as in UnCRtainTS (Ebel et al., CVPRW 2023):
    ``S2PixelCloudDetector(threshold=0.4, all_bands=True, average_over=4, dilation_size=2)``.
``s2cloudless_map``
    The s2cloudless cloud probability with values below 0.5 set to 0, then a
    Gaussian blur with sigma 2: a soft mask in [0, 1].
``s2cloudless_shadow_map``
    ``s2cloudless_map`` with the cloud shadows added: the maximum of the map and the
    cloud footprint matched to dark pixels (:mod:`sscr.clouds.shadows`), blurred alike.
    The mask the default model is fed: a shadow is repainted, not kept.
``cloud_cloudshadow_mask``
    The spectral cloud and cloud-shadow heuristic of DSen2-CR (Meraner et al.,
    "Cloud removal in Sentinel-2 imagery using a deep residual neural network and
    SAR-optical data fusion", ISPRS J. Photogramm. Remote Sens. 166, 2020), itself
    adapted from Sam Murphy's Sentinel-2 cloud masking and the shadow index of
    Zhai et al. (2018): 1 where cloud or shadow, else 0.

Every function takes the raw DN of one patch, (13, H, W) uint16 or float
(reflectance x 10000). A blank patch (mean and standard deviation of its DN below
1e-5) gets an all-cloudy mask (all ones) for every kind, as in the reference code.

s2cloudless costs about a second per 256 x 256 patch on one core. Its LightGBM
thread count comes from the ``threads`` argument, else the environment variable
``SSCR_S2CLOUDLESS_THREADS``, else 1: the mask stage runs one process per core.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from sscr.bands import S2_CHANNELS, S2_DN_MAX, s2_index
from sscr.clouds.shadows import shadow_map
from sscr.config import MASK_KINDS

THREADS_ENV = "SSCR_S2CLOUDLESS_THREADS"
#: s2cloudless settings of the SEN12MS-CR literature (UnCRtainTS data loader).
S2CLOUDLESS_SETTINGS: dict[str, Any] = {
    "threshold": 0.4, "all_bands": True, "average_over": 4, "dilation_size": 2,
}
S2CLOUDLESS_KINDS: tuple[str, ...] = ("s2cloudless_mask", "s2cloudless_map", "s2cloudless_shadow_map")
"""The kinds made from s2cloudless' probability (s2cloudless runs once for all of them)."""
MAP_PROBABILITY_FLOOR = 0.5
MAP_BLUR_SIGMA = 2.0
HEURISTIC_CLOUD_THRESHOLD = 0.2
BLANK_TOLERANCE = 1e-5

_detector: Any = None


def _get_detector() -> Any:
    """The process's single s2cloudless detector, created (and its model loaded) on first use."""
    global _detector
    if _detector is None:
        from s2cloudless import S2PixelCloudDetector  # heavy import (LightGBM, sentinelhub): only when needed

        _detector = S2PixelCloudDetector(**S2CLOUDLESS_SETTINGS)
    return _detector


def _threads(threads: int | None) -> int:
    if threads is not None:
        return max(1, int(threads))
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return 1
    try:
        return max(1, int(value))
    except ValueError:
        raise ValueError(
            f"{THREADS_ENV}={value!r} is not an integer; set it to the LightGBM threads per process"
        ) from None


def _clipped_dn(dn: np.ndarray) -> np.ndarray:
    """Validate a (13, H, W) patch and return its DN as float32, NaN -> 0, clipped to [0, 10000]."""
    dn = np.asarray(dn)
    if dn.ndim != 3 or dn.shape[0] != S2_CHANNELS:
        raise ValueError(
            f"expected one Sentinel-2 patch of shape ({S2_CHANNELS}, H, W) in DN, got shape {dn.shape}"
        )
    return np.clip(np.nan_to_num(dn.astype(np.float32), nan=0.0), 0.0, S2_DN_MAX)


def is_blank(dn: np.ndarray) -> bool:
    """True for a blank patch: mean and standard deviation of its (clipped) DN below 1e-5."""
    values = _clipped_dn(dn).astype(np.float64)
    return bool(values.mean() < BLANK_TOLERANCE and values.std() < BLANK_TOLERANCE)


def _all_cloudy(dn: np.ndarray) -> np.ndarray:
    return np.ones(np.asarray(dn).shape[1:], np.float32)


def _probability(clipped: np.ndarray, threads: int | None) -> np.ndarray:
    reflectance = np.moveaxis(clipped / S2_DN_MAX, 0, -1)[None]  # (1, H, W, 13)
    probability = _get_detector().get_cloud_probability_maps(reflectance, num_threads=_threads(threads))
    return probability[0].astype(np.float32)


def _mask_from_probability(probability: np.ndarray) -> np.ndarray:
    # The detector's own post-processing: disk average (radius 4), threshold 0.4, disk dilation (radius 2).
    return _get_detector().get_mask_from_prob(probability[None])[0].astype(np.float32)


def _map_from_probability(probability: np.ndarray) -> np.ndarray:
    kept = np.where(probability < MAP_PROBABILITY_FLOOR, 0.0, probability).astype(np.float32)
    return ndimage.gaussian_filter(kept, sigma=MAP_BLUR_SIGMA).astype(np.float32)


def s2cloudless_probability(dn: np.ndarray, threads: int | None = None) -> np.ndarray:
    """s2cloudless cloud probability (H, W) in [0, 1] of one (13, H, W) DN patch (blank patch: ones).

    Input to the classifier: ``clip(DN, 0, 10000) / 10000`` as (1, H, W, 13).
    """
    clipped = _clipped_dn(dn)
    if is_blank(clipped):
        return _all_cloudy(clipped)
    return _probability(clipped, threads)


def s2cloudless_mask(dn: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Binary s2cloudless cloud mask (H, W) float32 of one (13, H, W) DN patch (Sentinel Hub)."""
    return compute_masks(dn, ["s2cloudless_mask"], threads)["s2cloudless_mask"]


def s2cloudless_map(dn: np.ndarray, threads: int | None = None) -> np.ndarray:
    """Soft s2cloudless cloud map (H, W) float32: probability < 0.5 set to 0, Gaussian blur sigma 2."""
    return compute_masks(dn, ["s2cloudless_map"], threads)["s2cloudless_map"]


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    return (values - low) / (high - low)


def _normalized_difference(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    total = first + second
    total = np.where(total == 0, 0.001, total)  # a zero denominator counts as 0.001
    return (first - second) / total


def heuristic_cloud_score(reflectance: np.ndarray) -> np.ndarray:
    """DSen2-CR cloud score (H, W) in [1e-5, 1] of a (13, H, W) reflectance patch in [0, 1].

    Clouds are bright in blue, aerosol and cirrus and in all visible bands, and
    are not snow (NDSI); the score is the minimum of those tests, closed with a
    5 x 5 grey closing and smoothed with a 7 x 7 mean filter ('same' size, zero
    padding: equal to the reference code's ``scipy.signal.convolve2d`` with a box).
    """
    b1, b2, b3, b4, b10, b11 = (reflectance[s2_index(band)] for band in ("B1", "B2", "B3", "B4", "B10", "B11"))
    score = np.ones(b1.shape, np.float32)
    score = np.minimum(score, _rescale(b2, 0.1, 0.5))
    score = np.minimum(score, _rescale(b1, 0.1, 0.3))
    score = np.minimum(score, _rescale(b1 + b10, 0.4, 0.9))
    score = np.minimum(score, _rescale(b4 + b3 + b2, 0.2, 0.8))
    score = np.minimum(score, _rescale(_normalized_difference(b3, b11), 0.8, 0.6))
    score = ndimage.grey_closing(score, size=(5, 5))
    score = ndimage.uniform_filter(score.astype(np.float64), size=7, mode="constant", cval=0.0)
    return np.clip(score, 1e-5, 1.0).astype(np.float32)


def heuristic_shadow_mask(reflectance: np.ndarray) -> np.ndarray:
    """DSen2-CR cloud-shadow mask (H, W) float32 of a (13, H, W) reflectance patch in [0, 1].

    Shadow where the cloud-shadow index CSI = (B8 + B11) / 2 is below
    T3 = min + 3/4 (mean - min) of CSI and blue B2 below T4 = min + 5/6 (mean - min)
    of B2, then a 5 x 5 median filter (zero padding, as the reference's ``scipy.signal.medfilt2d``).
    """
    blue, nir, swir = reflectance[1], reflectance[7], reflectance[11]
    csi = (nir + swir) / 2.0
    t3 = csi.min() + 0.75 * (csi.mean() - csi.min())
    t4 = blue.min() + 5.0 / 6.0 * (blue.mean() - blue.min())
    shadow = ((csi < t3) & (blue < t4)).astype(np.float32)
    return ndimage.median_filter(shadow, size=5, mode="constant", cval=0.0)


def cloud_shadow_mask(dn: np.ndarray) -> np.ndarray:
    """DSen2-CR cloud and cloud-shadow mask (H, W) float32 of one (13, H, W) DN patch: 1 cloud or shadow.

    Cloud where :func:`heuristic_cloud_score` >= 0.2, shadow by :func:`heuristic_shadow_mask`,
    on reflectance ``clip(DN, 0, 10000) / 10000``. Blank patch: all ones.
    """
    clipped = _clipped_dn(dn)
    if is_blank(clipped):
        return _all_cloudy(clipped)
    reflectance = clipped / S2_DN_MAX
    cloud = heuristic_cloud_score(reflectance) >= HEURISTIC_CLOUD_THRESHOLD
    shadow = heuristic_shadow_mask(reflectance) > 0
    return (cloud | shadow).astype(np.float32)


def compute_masks(dn: np.ndarray, kinds: Sequence[str], threads: int | None = None) -> dict[str, np.ndarray]:
    """All requested mask kinds of one (13, H, W) DN patch, s2cloudless run at most once.

    ``kinds`` are names from ``sscr.config.MASK_KINDS``; the result maps each to an
    (H, W) float32 array. A blank patch gets all ones for every kind.
    """
    unknown = [kind for kind in kinds if kind not in MASK_KINDS]
    if unknown:
        raise ValueError(f"unknown mask kinds {unknown}; expected names from {list(MASK_KINDS)}")
    clipped = _clipped_dn(dn)
    if is_blank(clipped):
        return {kind: _all_cloudy(clipped) for kind in kinds}
    masks: dict[str, np.ndarray] = {}
    wanted = [kind for kind in kinds if kind in S2CLOUDLESS_KINDS]
    if wanted:
        masks.update(masks_from_probability(_probability(clipped, threads), wanted, clipped))
    if "cloud_cloudshadow_mask" in kinds:
        masks["cloud_cloudshadow_mask"] = cloud_shadow_mask(clipped)
    return {kind: masks[kind] for kind in kinds}


def shadow_map_from_probability(probability: np.ndarray, dn: np.ndarray) -> np.ndarray:
    """``s2cloudless_shadow_map`` (H, W): the maximum of ``s2cloudless_map`` and the soft cloud-shadow map.

    ``probability`` is s2cloudless' cloud probability of the (13, H, W) DN patch ``dn``; the
    shadow is its cloud footprint matched to dark pixels (:func:`sscr.clouds.shadows.shadow_map`).
    """
    reflectance = _clipped_dn(dn) / S2_DN_MAX
    return np.maximum(_map_from_probability(probability), shadow_map(reflectance, probability)).astype(np.float32)


def masks_from_probability(probability: np.ndarray, kinds: Sequence[str],
                           dn: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The s2cloudless kinds (:data:`S2CLOUDLESS_KINDS`) from an (H, W) cloud probability.

    The post-processing of :func:`compute_masks`, for a probability computed elsewhere
    (e.g. on a coarser grid and upsampled, :mod:`sscr.data.scene_masks`). ``s2cloudless_shadow_map``
    also needs the patch's DN (``dn``, (13, H, W)), where the shadows are found.
    """
    probability = np.asarray(probability, np.float32)
    unknown = [kind for kind in kinds if kind not in S2CLOUDLESS_KINDS]
    if unknown:
        raise ValueError(f"{unknown} are not s2cloudless mask kinds; expected names from {list(S2CLOUDLESS_KINDS)}")
    if "s2cloudless_shadow_map" in kinds and dn is None:
        raise ValueError("s2cloudless_shadow_map needs the patch's DN (dn=...) to find the shadows in")
    makers = {"s2cloudless_mask": _mask_from_probability, "s2cloudless_map": _map_from_probability,
              "s2cloudless_shadow_map": lambda p: shadow_map_from_probability(p, dn)}
    return {kind: makers[kind](probability) for kind in kinds}
