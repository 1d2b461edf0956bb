"""Tiny Sentinel-2 L1C products, written by code: one scene, processing baselines before and after 04.00."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from sscr.data.synth import synth_patch
from sscr.data.synth_products import write_l1c_product
from sscr.layout import PatchId


@dataclass(frozen=True)
class L1CGrid:
    """The 10 m grid of the test products: 120 x 120 px (20 x 20 pixels of 60 m), UTM 32N, origin on the 60 m grid."""

    size: int = 120
    crs: str = "EPSG:32632"
    transform: Affine = Affine(10.0, 0.0, 699960.0, 0.0, -10.0, 5100000.0)
    nodata: tuple[slice, slice] = (slice(0, 12), slice(0, 18))
    """A no-data corner (all bands 0), as at the edge of a swath."""
    dark: tuple[slice, slice] = (slice(60, 66), slice(60, 66))
    """A dark block (DN 1: reflectance clamped at 0)."""


GRID = L1CGrid()


@pytest.fixture(scope="session")
def l1c_grid() -> L1CGrid:
    """Size, CRS, transform and special regions of the test products."""
    return GRID


@pytest.fixture(scope="session")
def l1c_scene() -> np.ndarray:
    """The scene's 13-band DN in the training convention (uint16): synthetic cloudy S2, a no-data corner, a dark block.

    The no-data corner and the dark block (DN 1, reflectance clamped at 0) are aligned on
    the 60 m grid, so every band keeps them exactly at its native resolution.
    """
    dn = synth_patch(PatchId("ROIs1158_spring", 7, 3), patch_size=GRID.size, seed=5)["s2_cloudy"].copy()
    dn[(slice(None), *GRID.nodata)] = 0
    dn[(slice(None), *GRID.dark)] = 1
    return dn


@pytest.fixture(scope="session")
def l1c_products(tmp_path_factory: pytest.TempPathFactory, l1c_scene: np.ndarray) -> dict[str, Path]:
    """The same scene as products of baseline 03.01 (no offset) and 05.09 (RADIO_ADD_OFFSET -1000), dir and zip."""
    root = tmp_path_factory.mktemp("l1c")
    crs, transform = GRID.crs, GRID.transform
    return {
        "old": write_l1c_product(root / "old", l1c_scene, crs, transform, baseline="03.01"),
        "new": write_l1c_product(root / "new", l1c_scene, crs, transform, baseline="05.09"),
        "new_zip": write_l1c_product(root / "zip", l1c_scene, crs, transform, baseline="05.09", zipped=True),
    }
