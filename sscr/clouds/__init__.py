"""Cloud and cloud-shadow detection on Sentinel-2 patches; their precomputation is :mod:`sscr.cloudmasks`."""

from sscr.clouds.detect import (
    cloud_shadow_mask,
    compute_masks,
    s2cloudless_map,
    s2cloudless_mask,
    s2cloudless_probability,
    shadow_map_from_probability,
)
from sscr.clouds.shadows import shadow_map, shadow_mask

__all__ = [
    "cloud_shadow_mask",
    "compute_masks",
    "s2cloudless_map",
    "s2cloudless_mask",
    "s2cloudless_probability",
    "shadow_map",
    "shadow_map_from_probability",
    "shadow_mask",
]
