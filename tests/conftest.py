"""Shared fixtures: tiny SEN12MS-CR trees written by code (no binary blobs in the repo)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from affine import Affine

from sscr.data.io import write_raster
from sscr.data.layout import S1_BANDS, S2_BANDS, PatchId

os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def write_triplet(
    root: Path,
    pid: PatchId,
    size: int = 32,
    s1_bands: int = 2,
    s2_bands: int = 13,
    cloudy_bands: int = 13,
    s2_size: int | None = None,
    crs: str = "EPSG:32632",
    s2_crs: str | None = None,
    seed: int = 0,
    modalities: tuple[str, ...] = ("s1", "s2", "s2_cloudy"),
) -> dict[str, Path]:
    """Write one triplet of random but well-typed GeoTIFFs; knobs make it wrong on purpose."""
    rng = np.random.default_rng(seed)
    transform = Affine(10.0, 0.0, 500000.0 + 10 * size * pid.patch, 0.0, -10.0, 5000000.0)
    s2_size = s2_size or size
    arrays = {
        "s1": rng.uniform(-25, 0, (s1_bands, size, size)).astype(np.float32),
        "s2": rng.integers(0, 4000, (s2_bands, s2_size, s2_size)).astype(np.uint16),
        "s2_cloudy": rng.integers(0, 10000, (cloudy_bands, s2_size, s2_size)).astype(np.uint16),
    }
    paths = {}
    for modality in modalities:
        data = arrays[modality]
        names = S1_BANDS if modality == "s1" else S2_BANDS
        names = names if len(names) == data.shape[0] else None
        paths[modality] = write_raster(
            root / pid.relpath(modality), data, s2_crs if (s2_crs and modality != "s1") else crs,
            transform, band_names=names,
        )
    return paths


@pytest.fixture
def triplet_writer():
    """The :func:`write_triplet` helper, for tests that build their own trees."""
    return write_triplet
