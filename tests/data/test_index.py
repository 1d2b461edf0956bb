"""Triplet indexing, official split, header validation and the errors a user sees."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sscr.data.index import DataNotFoundError, index_dataset, scan_triplets
from sscr.data.io import PatchError
from sscr.layout import PatchId, official_splits, parse_roi_key, split_of

SPLITS_FILE = Path(__file__).resolve().parents[2] / "sscr" / "splits.json"


def test_splits_file_is_the_official_one_and_disjoint():
    raw = json.loads(SPLITS_FILE.read_text())
    splits = official_splits()
    assert {k: len(v) for k, v in splits.items()} == {"train": 155, "val": 10, "test": 10}
    assert set(raw["test"]) == splits["test"]
    assert not splits["train"] & splits["test"]
    assert not splits["train"] & splits["val"]
    assert not splits["val"] & splits["test"]


def test_split_matching_is_exact_not_substring():
    # s1_1 is a train ROI and a prefix of the test ROIs s1_106, s1_123, s1_140 in spring.
    assert split_of(PatchId("ROIs1158_spring", 1, 1)) == "train"
    for roi in (106, 123, 140):
        assert split_of(PatchId("ROIs1158_spring", roi, 1)) == "test"
    # Every val/test ROI resolves to its own split, never to train.
    for split in ("val", "test"):
        for key in official_splits()[split]:
            season, roi = parse_roi_key(key)
            assert split_of(PatchId(season, roi, 5)) == split
    # An ROI in no list has no split.
    assert split_of(PatchId("ROIs1158_spring", 9999, 1)) is None


def test_no_test_or_val_patch_in_train_on_a_tree(tmp_path, triplet_writer):
    pids = [
        PatchId("ROIs1158_spring", 1, 1),    # train
        PatchId("ROIs1158_spring", 106, 1),  # test, has s1_1 as a prefix
        PatchId("ROIs1158_spring", 17, 2),   # val
        PatchId("ROIs1158_spring", 140, 3),  # test
    ]
    for pid in pids:
        triplet_writer(tmp_path, pid)
    train = index_dataset(tmp_path, splits=["train"], patch_size=32).triplets
    test = index_dataset(tmp_path, splits=["test"], patch_size=32).triplets
    val = index_dataset(tmp_path, splits=["val"], patch_size=32).triplets
    assert [t.pid.roi for t in train] == [1]
    assert sorted(t.pid.roi for t in test) == [106, 140]
    assert [t.pid.roi for t in val] == [17]
    assert not {t.pid for t in train} & {t.pid for t in test + val}


def test_unpaired_files_are_skipped_and_counted(tmp_path, triplet_writer):
    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1))
    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 2), modalities=("s1", "s2"))
    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 3), modalities=("s2_cloudy",))
    (tmp_path / "ROIs1970_fall_s1" / "s1_3" / "notes.txt").write_text("not a patch")
    triplets, unpaired = scan_triplets(tmp_path)
    assert [t.pid.patch for t in triplets] == [1]
    assert unpaired == 3
    assert triplets[0].path("s2_cloudy").name == "ROIs1970_fall_s2_cloudy_3_p1.tif"


def test_missing_or_empty_root_prints_expected_layout(tmp_path):
    with pytest.raises(DataNotFoundError) as missing:
        index_dataset(tmp_path / "nowhere")
    assert "ROIs1158_spring_s2_cloudy/s2_cloudy_<roi>" in str(missing.value)
    assert "sscr data synth" in str(missing.value)
    with pytest.raises(DataNotFoundError):
        index_dataset(tmp_path)


def test_twelve_band_s2_is_named(tmp_path, triplet_writer):
    paths = triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1), s2_bands=12)
    with pytest.raises(PatchError) as err:
        index_dataset(tmp_path, patch_size=32)
    assert err.value.path == paths["s2"]
    assert "has 12 bands, expected 13" in str(err.value)


def test_s1_s2_size_mismatch_is_named(tmp_path, triplet_writer):
    paths = triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1), size=32, s2_size=48)
    with pytest.raises(PatchError) as err:
        index_dataset(tmp_path, patch_size=None)
    assert err.value.path == paths["s2"]
    assert "does not match its S1 partner" in str(err.value)
    with pytest.raises(PatchError, match="expected 32 x 32"):
        index_dataset(tmp_path, patch_size=32)


def test_crs_mismatch_and_corrupt_file_are_named(tmp_path, triplet_writer):
    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1), s2_crs="EPSG:32633")
    with pytest.raises(PatchError, match="CRS"):
        index_dataset(tmp_path, patch_size=32)
    other = tmp_path / "corrupt"
    paths = triplet_writer(other, PatchId("ROIs1970_fall", 3, 1))
    paths["s2_cloudy"].write_bytes(paths["s2_cloudy"].read_bytes()[:200])
    with pytest.raises(PatchError) as err:
        index_dataset(other, patch_size=32)
    assert err.value.path == paths["s2_cloudy"]
    assert "corrupt or truncated" in str(err.value)


def test_skip_mode_counts_bad_triplets(tmp_path, triplet_writer):
    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1))
    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 2), s2_bands=12)
    report = index_dataset(tmp_path, patch_size=32, on_error="skip")
    assert [t.pid.patch for t in report.triplets] == [1]
    assert len(report.invalid) == 1 and "12 bands" in str(report.invalid[0])
