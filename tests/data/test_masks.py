"""Precomputed mask files: stamped with their source's content, so they reproduce and are reused exactly when valid."""

from __future__ import annotations

import os
import shutil

import rasterio

from sscr.cloudmasks import precompute_masks
from sscr.config import parse_params
from sscr.data.masks import mask_path
from sscr.data.synth import write_synthetic_sample

from tiny import TINY

KINDS = ["s2cloudless_map"]


def _sample(tmp_path):
    synth = parse_params(TINY).data.synth.model_copy(update={"rois": {"train": 1, "val": 1, "test": 0},
                                                              "patches_per_roi": 1})
    root = tmp_path / "data"
    return root, write_synthetic_sample(root, synth, patch_size=64, progress=False)


def test_mask_files_are_the_same_bytes_for_a_copy_with_other_mtimes(tmp_path):
    """The stamp is the cloudy file's content: a clone or copy (new mtimes) writes byte-identical masks."""
    root, pids = _sample(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)  # new inodes and mtimes, same bytes
    for path in copy.rglob("*.tif"):
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    precompute_masks(root, tmp_path / "masks_a", KINDS, patch_size=64, workers=1, progress=False)
    precompute_masks(copy, tmp_path / "masks_b", KINDS, patch_size=64, workers=1, progress=False)
    for pid in pids:
        a, b = mask_path(tmp_path / "masks_a", pid), mask_path(tmp_path / "masks_b", pid)
        assert a.read_bytes() == b.read_bytes(), pid
        with rasterio.open(a) as src:
            assert src.tags()["source"].startswith("sha256:")


def test_a_mask_is_reused_while_its_source_content_is_unchanged_and_recomputed_when_it_changes(tmp_path):
    root, pids = _sample(tmp_path)
    masks = tmp_path / "masks"
    first = precompute_masks(root, masks, KINDS, patch_size=64, workers=1, progress=False)
    assert (first.computed, first.skipped) == (len(pids), 0)
    touched, rewritten = (root / pid.relpath("s2_cloudy") for pid in pids)
    os.utime(touched, ns=(2_000_000_000, 2_000_000_000))  # same content, other mtime: nothing to redo
    with rasterio.open(rewritten, "r+") as dst:  # same size, one pixel changed: must be recomputed
        band = dst.read(1)
        band[0, 0] += 1
        dst.write(band, 1)
    before = {pid: mask_path(masks, pid).read_bytes() for pid in pids}
    again = precompute_masks(root, masks, KINDS, patch_size=64, workers=1, progress=False)
    assert (again.computed, again.skipped) == (1, 1)
    assert mask_path(masks, pids[0]).read_bytes() == before[pids[0]]
    assert mask_path(masks, pids[1]).read_bytes() != before[pids[1]]  # a new stamp at least

