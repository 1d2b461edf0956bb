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
    lonely = triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 2), modalities=("s1", "s2"))
    cloudy_only = triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 3), modalities=("s2_cloudy",))
    (tmp_path / "ROIs1970_fall_s1" / "s1_3" / "notes.txt").write_text("not a patch")
    scan = scan_triplets(tmp_path)
    assert [t.pid.patch for t in scan.triplets] == [1]
    assert sorted(e.path for e in scan.unpaired) == sorted([lonely["s1"], lonely["s2"], cloudy_only["s2_cloudy"]])
    assert scan.triplets[0].path("s2_cloudy").name == "ROIs1970_fall_s2_cloudy_3_p1.tif"
    by_path = {e.path: str(e) for e in scan.unpaired}
    assert "S2 cloudy partner" in by_path[lonely["s1"]] and "ROIs1970_fall_s2_cloudy_3_p2.tif" in by_path[lonely["s1"]]
    assert "S1 and S2 partners" in by_path[cloudy_only["s2_cloudy"]]
    assert not scan.stray  # notes.txt is not named like a patch: not data, not counted


def test_unpaired_and_stray_files_are_listed_in_skip_mode_and_an_error_in_raise_mode(tmp_path, triplet_writer):
    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1))
    lonely = triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 2), modalities=("s1", "s2"))
    # a directory named like a patch (an archive extracted into a folder of the file's name), a patch file in
    # another ROI's folder, and a symlink loop named like a patch
    folder = tmp_path / PatchId("ROIs1970_fall", 3, 4).relpath("s2")
    folder.mkdir(parents=True)
    misplaced = tmp_path / "ROIs1970_fall_s1" / "s1_3" / "ROIs1970_fall_s1_5_p1.tif"
    misplaced.write_bytes(b"")
    loop = tmp_path / PatchId("ROIs1970_fall", 3, 6).relpath("s1")
    loop.symlink_to(loop)
    report = index_dataset(tmp_path, patch_size=32, on_error="skip")
    assert [t.pid.patch for t in report.triplets] == [1]
    assert sorted(e.path for e in report.unpaired) == sorted([lonely["s1"], lonely["s2"]])
    reasons = {e.path: e.reason for e in report.stray}
    assert set(reasons) == {folder, misplaced, loop}
    assert "is a directory" in reasons[folder] and "symlink loop" in reasons[loop]
    assert "ROIs1970_fall_s1/s1_5/ROIs1970_fall_s1_5_p1.tif" in reasons[misplaced]
    assert {k: len(v) for k, v in report.dropped().items()} == {"unpaired": 2, "not_a_patch_file": 3}
    with pytest.raises(PatchError) as err:
        index_dataset(tmp_path, patch_size=32)  # on_error: raise; a stray entry is named first
    assert err.value.path in {folder, misplaced, loop} and "on_error: skip" in str(err.value)
    for path in (folder, misplaced, loop):
        path.unlink() if path != folder else path.rmdir()
    with pytest.raises(PatchError) as err:
        index_dataset(tmp_path, patch_size=32)
    assert err.value.path == lonely["s1"] and "unpaired" in str(err.value) and "on_error: skip" in str(err.value)
    # Only the split asked for is concerned: fall ROI 3 is a train ROI.
    assert not index_dataset(tmp_path, splits=["test"], patch_size=32, on_error="raise").triplets


def test_dropped_lines_count_by_reason_and_name_the_first_files(tmp_path, triplet_writer):
    from sscr.data.index import dropped_lines

    triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1))
    for patch in range(2, 9):
        triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, patch), modalities=("s1",))
    report = index_dataset(tmp_path, patch_size=32, on_error="skip")
    lines = dropped_lines(report.dropped(), "train split", len(report.triplets), limit=3)
    assert lines[0] == "sscr: train split: 1 samples used, 7 left out (7 unpaired):"
    assert len(lines) == 5 and "ROIs1970_fall_s1_3_p2.tif" in lines[1] and lines[-1] == "  ... and 4 more"
    assert dropped_lines({}, "train split", 1) == []


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


def test_substring_split_match_leaks_exactly_the_rois_the_published_loaders_leak():
    from sscr.layout import leaked_rois

    splits = json.loads(SPLITS_FILE.read_text())
    # The published loaders' rule, applied literally to the S1 path of a patch of each val/test ROI.
    expected: dict[tuple[str, str], list[str]] = {}
    for own in ("val", "test"):
        for key in sorted(splits[own]):
            season, roi = parse_roi_key(key)
            path = f"/data/SEN12MSCR/{season}_s1/s1_{roi}/{season}_s1_{roi}_p30.tif"
            if any(train_key in path for train_key in splits["train"]):
                expected.setdefault((own, "train"), []).append(key)
    assert leaked_rois("substring") == expected
    assert len(expected[("test", "train")]) == 6 and len(expected[("val", "train")]) == 3
    # REFERENCE.md section 1 names these three (s1_1 is a train ROI).
    assert {f"ROIs1158_spring_s1/s1_{roi}" for roi in (106, 123, 140)} <= set(expected[("test", "train")])
    assert leaked_rois("exact") == {}


def test_substring_split_match_warns_and_names_the_leaked_rois(tmp_path, triplet_writer):
    from sscr.data.index import SplitLeakWarning

    for pid in (PatchId("ROIs1158_spring", 1, 1), PatchId("ROIs1158_spring", 106, 1),
                PatchId("ROIs1158_spring", 17, 1)):
        triplet_writer(tmp_path, pid)
    with pytest.warns(SplitLeakWarning) as warned:
        train = index_dataset(tmp_path, splits=["train"], patch_size=32, split_match="substring").triplets
    assert sorted(t.pid.roi for t in train) == [1, 17, 106]
    message = str(warned[0].message)
    assert "6 test ROIs" in message and "3 val ROIs" in message and "ROIs1158_spring_s1/s1_106" in message
    assert "2 patches of other splits are in train" in message
    # Test and val keep their own ROIs; exact matching (the default) leaks nothing and does not warn.
    assert [t.pid.roi for t in index_dataset(tmp_path, splits=["test"], patch_size=32,
                                             split_match="substring").triplets] == [106]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [t.pid.roi for t in index_dataset(tmp_path, splits=["train"], patch_size=32).triplets] == [1]


def _rewrite(path: Path, convert) -> None:
    import rasterio

    from sscr.data.io import write_raster

    with rasterio.open(path) as src:
        data, crs, transform = src.read(), src.crs, src.transform
    write_raster(path, convert(data), crs, transform)


@pytest.mark.parametrize(("modality", "convert", "expected"), [
    ("s2", lambda dn: (dn / 10000.0).astype("float32"), "S2 is float32, expected uint16 DN"),
    ("s2_cloudy", lambda dn: dn.astype("uint8"), "S2 cloudy is uint8, expected uint16 DN"),
    ("s1", lambda db: (db * -100).astype("uint16"), "S1 is uint16, expected float32 backscatter in dB"),
])
def test_wrong_dtypes_are_refused_naming_the_file_and_the_fix(tmp_path, triplet_writer, modality, convert, expected):
    from sscr.data.io import read_raster

    paths = triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1))
    _rewrite(paths[modality], convert)
    for check in (lambda: index_dataset(tmp_path, patch_size=32),
                  lambda: read_raster(paths[modality], 2 if modality == "s1" else 13, expected.split(" is ")[0])):
        with pytest.raises(PatchError) as err:
            check()
        assert err.value.path == paths[modality] and expected in str(err.value)
        assert ("gdal_translate" if modality != "s1" else "10 * log10") in str(err.value)


def test_s1_in_linear_power_is_refused_by_the_content_check(tmp_path, triplet_writer):
    import numpy as np

    from sscr.data.index import check_content

    paths = triplet_writer(tmp_path, PatchId("ROIs1970_fall", 3, 1))
    triplet = index_dataset(tmp_path, patch_size=32).triplets[0]
    target = np.ones((13, 4, 4), np.uint16)
    db = np.full((2, 4, 4), -12.0, np.float32)
    check_content(triplet, db, target)  # dB: fine
    with pytest.raises(PatchError) as err:
        check_content(triplet, 10 ** (db / 10), target)  # the same backscatter as linear power
    assert err.value.path == paths["s1"] and "not backscatter in dB" in str(err.value)
