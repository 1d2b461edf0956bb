"""Stage cloudmasks: every triplet checked on every run, bad ones reported alike by one or many workers,
recorded for train and evaluate; workers die with the stage."""

from __future__ import annotations

import csv
import pickle

import numpy as np
import pytest
import rasterio
import yaml

from sscr import cli
from sscr.cloudmasks import precompute_masks
from sscr.data.dataset import SEN12MSCR
from sscr.data.index import DataNotFoundError
from sscr.data.io import PatchError, write_raster
from sscr.data.masks import read_coverage_table, read_invalid_table
from sscr.layout import PatchId

KINDS = ["s2cloudless_map"]
SIZE = 32


def _rewrite(path, transform) -> None:
    with rasterio.open(path) as src:
        data, crs, affine = src.read(), src.crs, src.transform
    write_raster(path, transform(data), crs, affine)


@pytest.fixture
def tree(tmp_path, triplet_writer):
    """Four train triplets (fall ROI 3); patch 2 has an all-NaN S1, patch 3 a blank clear S2."""
    paths = {patch: triplet_writer(tmp_path / "data", PatchId("ROIs1970_fall", 3, patch), size=SIZE, seed=patch)
             for patch in range(4)}
    _rewrite(paths[2]["s1"], lambda a: np.full_like(a, np.nan))
    _rewrite(paths[3]["s2"], np.zeros_like)
    return tmp_path, paths


def test_errors_cross_process_boundaries():
    error = pickle.loads(pickle.dumps(PatchError("/data/x.tif", "S1 patch is all NaN")))
    assert (error.path.as_posix(), error.reason, str(error)) == ("/data/x.tif", "S1 patch is all NaN",
                                                                  "/data/x.tif: S1 patch is all NaN")
    missing = pickle.loads(pickle.dumps(DataNotFoundError("/nowhere", "the directory does not exist")))
    assert "/nowhere: the directory does not exist" in str(missing)


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_triplets_are_reported_alike_by_one_or_two_workers(tree, workers, capsys, monkeypatch):
    folder, paths = tree
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"root": str(folder / "data"), "patch_size": SIZE, "on_error": "skip"},
                                      "masks": {"dir": str(folder / "masks"), "kinds": KINDS, "use": KINDS[0]}}))
    assert cli.main(["masks", "--params", str(params), "--workers", str(workers)]) == 0
    out, err = capsys.readouterr()
    assert "2 computed, 0 already done, 2 invalid" in out
    assert "2 samples used, 2 left out (2 invalid)" in err
    assert str(paths[2]["s1"]) in err and "all NaN" in err and str(paths[3]["s2"]) in err and "blank" in err
    assert sorted(read_coverage_table(folder / "masks")) == ["ROIs1970_fall_3_p0", "ROIs1970_fall_3_p1"]
    invalid = read_invalid_table(folder / "masks")
    assert {name: error.path for name, error in invalid.items()} == {
        "ROIs1970_fall_3_p2": paths[2]["s1"], "ROIs1970_fall_3_p3": paths[3]["s2"]}
    # on_error: raise stops at a bad triplet with the file named, whatever the number of workers
    monkeypatch.chdir(folder)
    code = cli.main(["masks", "--params", str(params), "--workers", str(workers), "--set", "data.on_error=raise"])
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert code == 1 and last.startswith("sscr: error: ")
    assert str(paths[2]["s1"]) in last or str(paths[3]["s2"]) in last


def test_a_file_damaged_after_its_masks_were_made_is_found_and_skipped_by_train_too(tree):
    folder, paths = tree
    masks = folder / "masks"
    first = precompute_masks(folder / "data", masks, KINDS, patch_size=SIZE, workers=1, on_error="skip",
                             progress=False)
    assert (first.computed, len(first.invalid)) == (2, 2)
    # Damage the S1 of a sample whose masks exist: its cloudy file is unchanged, so the masks are reused,
    # but the stage checks the whole triplet again.
    _rewrite(paths[1]["s1"], lambda a: np.full_like(a, np.nan))
    again = precompute_masks(folder / "data", masks, KINDS, patch_size=SIZE, workers=1, on_error="skip",
                             progress=False)
    assert (again.computed, again.skipped) == (0, 1)
    assert sorted(str(e.path) for e in again.invalid) == sorted(str(p) for p in (paths[1]["s1"], paths[2]["s1"],
                                                                                 paths[3]["s2"]))
    assert list(read_coverage_table(masks)) == ["ROIs1970_fall_3_p0"]
    with (masks / "invalid.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3
    # The data set leaves out exactly the samples the stage found invalid, and says why ...
    dataset = SEN12MSCR(folder / "data", split="train", cloud_mask=KINDS[0], masks_dir=masks, patch_size=SIZE,
                        on_error="skip")
    assert [t.pid.patch for t in dataset.triplets] == [0]
    assert {str(e.path) for e in dataset.dropped["invalid_by_mask_stage"]} == {str(p) for p in (
        paths[1]["s1"], paths[2]["s1"], paths[3]["s2"])}
    assert "1 samples used, 3 left out (3 invalid by mask stage)" in dataset.dropped_lines()[0]
    # ... or, with on_error: raise, refuses them naming the file
    with pytest.raises(PatchError) as refused:
        SEN12MSCR(folder / "data", split="train", cloud_mask=KINDS[0], masks_dir=masks, patch_size=SIZE)
    assert refused.value.path == paths[1]["s1"] and "all NaN" in str(refused.value)


def test_a_sample_added_after_the_mask_stage_is_counted_or_refused(tree, triplet_writer):
    folder, paths = tree
    for path in [*paths[2].values(), *paths[3].values()]:
        path.unlink()  # only good triplets here
    masks = folder / "masks"
    precompute_masks(folder / "data", masks, KINDS, patch_size=SIZE, workers=1, progress=False)
    added = triplet_writer(folder / "data", PatchId("ROIs1970_fall", 3, 9), size=SIZE)
    dataset = SEN12MSCR(folder / "data", split="train", cloud_mask=KINDS[0], masks_dir=masks, patch_size=SIZE,
                        on_error="skip")
    assert [e.path for e in dataset.dropped["not_in_coverage_table"]] == [added["s2_cloudy"]]
    with pytest.raises(PatchError, match="run it again"):
        SEN12MSCR(folder / "data", split="train", cloud_mask=KINDS[0], masks_dir=masks, patch_size=SIZE)
