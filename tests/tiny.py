"""Overrides that shrink the whole pipeline to seconds, shared by fixtures and end-to-end tests."""

from __future__ import annotations

#: Overrides of params.yaml that make the whole pipeline run in seconds (64 px patches, tiny widths).
TINY: dict = {
    "data": {"patch_size": 64, "synth": {"rois": {"train": 3, "val": 1, "test": 1}, "patches_per_roi": 2}},
    "masks": {"workers": 1},
    "model": {"name": "sscr_lite", "encoder_widths": [8, 16], "decoder_widths": [8, 16], "n_head": 2, "d_model": 16},
    "loss": {"name": "l1"},
    "train": {"epochs": 2, "batch_size": 2, "crop_size": None, "val_every": 1, "repeats": 1},
    "evaluate": {"n_panels": 1, "batch_size": 2},
}


def deep_update(base: dict, update: dict) -> dict:
    """Recursively merge ``update`` into a copy of ``base``."""
    out = dict(base)
    for key, value in update.items():
        out[key] = deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out
