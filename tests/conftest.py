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


# ---------------------------------------------------------------- a tiny pipeline, shared by end-to-end tests

#: Overrides of params.yaml that make the whole pipeline run in seconds (64 px patches, tiny widths).
TINY: dict = {
    "data": {"patch_size": 64, "synth": {"rois": {"train": 3, "val": 1, "test": 1}, "patches_per_roi": 2}},
    "masks": {"workers": 1},
    "model": {"encoder_widths": [8, 16], "decoder_widths": [8, 16], "n_head": 2, "d_model": 16},
    "loss": {"name": "l1"},
    "train": {"epochs": 2, "batch_size": 2, "crop_size": None, "val_every": 1},
    "evaluate": {"n_panels": 1, "batch_size": 2},
}


def deep_update(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny synthetic SEN12MS-CR tree and its precomputed masks, written once per session: (root, masks)."""
    from sscr.clouds.precompute import precompute_masks
    from sscr.config import parse_params
    from sscr.data.synth import write_synthetic_sample

    base = tmp_path_factory.mktemp("tiny")
    params = parse_params(TINY)
    root, masks = base / "data", base / "masks"
    write_synthetic_sample(root, params.data.synth, patch_size=params.data.patch_size, progress=False)
    precompute_masks(root, masks, params.masks.kinds, patch_size=params.data.patch_size, workers=1,
                     progress=False)
    return root, masks


@pytest.fixture
def tiny_params(tmp_path, tiny_sample, monkeypatch):
    """Params for a seconds-long training run on the tiny sample, results and MLflow store in ``tmp_path``."""
    from sscr.config import parse_params

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from sscr import tracking

    tracking.configure()  # this test's own store: mlflow.db in tmp_path
    root, masks = tiny_sample
    raw = deep_update(TINY, {"data": {"root": str(root)}, "masks": {"dir": str(masks)},
                             "train": {"res_dir": str(tmp_path / "results")},
                             "evaluate": {"out_dir": str(tmp_path / "results" / "eval")}})
    return parse_params(raw)
