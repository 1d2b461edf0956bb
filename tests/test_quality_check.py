"""The evaluate stage's "do no harm" check (model vs cloudy input, row by row) and the choice of panels."""

from __future__ import annotations

import json
import math

from mlflow.tracking import MlflowClient

from sscr.config import record_dir, run_dir
from sscr.plots import panel_indices
from sscr.quality import mlflow_tags, quality_check, verdict


def _metrics(psnr: float = 30.0, sam: float = 10.0, cloudy_psnr: float = 23.0) -> dict:
    """An evaluation's metric groups: the model (test*) against the cloudy input (baseline*)."""
    return {
        "test": {"PSNR": psnr, "SSIM": 0.7, "SAM": sam, "MAE": 0.03},
        "baseline": {"PSNR": 21.0, "SSIM": 0.5, "SAM": 12.0, "MAE": 0.15},
        "test_cloudy": {"PSNR": cloudy_psnr, "SSIM": 0.6, "SAM": 16.0, "MAE": 0.05},
        "baseline_cloudy": {"PSNR": 14.0, "SSIM": 0.3, "SAM": 18.0, "MAE": 0.27},
    }


def _bin(label: str, model: float, cloudy_input: float, n_cloudy: int = 1) -> dict:
    return {"bin": label, "n": 2, "n_cloudy": n_cloudy, "model_PSNR": model, "baseline_PSNR": cloudy_input}


def test_passes_when_every_row_beats_the_input():
    check = quality_check(_metrics(), [_bin("0.1-0.3", 25.0, 8.0), _bin("0.9-1.0", 20.0, 6.5)])
    assert check.passed and len(check.rows) == 10
    assert {row.verdict for row in check.rows} == {"beats"}
    assert check.summary() == {"passed": True, "beats": 10, "ties": 0, "worse": 0, "worse_rows": []}
    text = check.markdown()
    assert text.startswith("Quality check PASS: 10 of 10 rows beat the cloudy input, 0 tie, 0 worse")
    assert "| PSNR inside clouds (dB), coverage 0.9-1.0 (1 of 2 images with cloud) | 20.00 | 6.50 | beats |" in text


def test_names_every_worse_row_and_lower_is_better_for_sam_and_mae():
    check = quality_check(_metrics(psnr=20.0, sam=14.0), [_bin("0.0-0.1", 20.6, 42.0)])
    assert not check.passed
    assert check.names("worse") == ["PSNR overall (dB)", "SAM overall (deg)",
                                    "PSNR inside clouds (dB), coverage 0.0-0.1 (1 of 2 images with cloud)"]
    assert check.headline().startswith("Quality check FAIL: 6 of 9 rows beat the cloudy input, 0 tie, 3 worse (PSNR")
    assert "| SAM overall (deg) | 14.00 | 12.00 | WORSE |" in check.markdown()
    assert verdict("MAE", 0.03, 0.15) == "beats" and verdict("MAE", 0.15, 0.03) == "worse"
    assert mlflow_tags(check.summary()) == {
        "quality_check": "fail", "quality_rows": "6 beat, 0 tie, 3 worse",
        "quality_worse_rows": "; ".join(check.names("worse"))}


def test_a_tie_is_reported_as_a_tie_and_does_not_fail_the_check():
    # kept input on a false detection: the same PSNR; a difference below the printed precision is a tie too
    check = quality_check(_metrics(), [_bin("0.0-0.1", 42.01, 42.01), _bin("0.1-0.3", 8.204, 8.2)])
    assert check.passed and check.names("ties") == [row.row for row in check.rows[-2:]]
    assert "| 42.01 | 42.01 | ties |" in check.markdown()
    assert check.headline().startswith("Quality check PASS: 8 of 10 rows beat the cloudy input, 2 tie, 0 worse")
    assert verdict("PSNR", math.inf, math.inf) == "ties"  # two perfect images
    assert verdict("PSNR", math.nan, 20.0) == "worse"
    assert verdict("SSIM", 0.6004, 0.6) == "ties" and verdict("SSIM", 0.602, 0.6) == "beats"


def test_bins_without_cloud_pixels_are_no_rows():
    check = quality_check(_metrics(), [_bin("0.0-0.1", math.nan, math.nan, n_cloudy=0), _bin("0.5-0.7", 27.0, 14.0)])
    assert len(check.rows) == 9 and "0.0-0.1" not in check.markdown()


def test_panels_spread_over_coverage():
    coverages = [0.7, 0.55, 0.0, 0.24, 1.0, 0.85, 0.0, 0.17]
    assert panel_indices(coverages, 4) == {2, 7, 0, 4}  # coverage 0.0, 0.17, 0.7, 1.0
    assert panel_indices(coverages, 20) == set(range(8))
    assert panel_indices(coverages, 0) == set() and panel_indices([], 3) == set()


def test_evaluate_writes_the_check_beside_the_metrics_and_tags_the_run(in_workspace):
    _, params = in_workspace
    out_dir = record_dir(params)  # the run's records, beside metrics.json
    metrics = json.loads((out_dir / "metrics.json").read_text())
    stored = json.loads((out_dir / "quality.json").read_text())
    assert metrics["quality"]["passed"] == stored["passed"] == (stored["worse"] == 0)
    assert len(stored["rows"]) >= 8 and stored["beats"] + stored["ties"] + stored["worse"] == len(stored["rows"])
    row = stored["rows"][0]
    assert row["row"] == "PSNR overall (dB)" and row["model"] == metrics["test"]["PSNR"]
    assert row["cloudy_input"] == metrics["baseline"]["PSNR"]
    assert (out_dir / "quality.md").read_text().startswith(f"Quality check {'PASS' if stored['passed'] else 'FAIL'}")
    run_id = json.loads((run_dir(params) / "mlflow_run.json").read_text())["run_id"]
    tags = MlflowClient().get_run(run_id).data.tags
    assert tags["quality_check"] == ("pass" if stored["passed"] else "fail")
    assert tags["quality_rows"] == f"{stored['beats']} beat, {stored['ties']} tie, {stored['worse']} worse"


def test_shadow_and_ring_rows_join_the_check_when_the_split_has_them():
    metrics = {**_metrics(), "test_shadow": {"PSNR": 24.0}, "baseline_shadow": {"PSNR": 18.0},
               "test_ring": {"PSNR": 25.0}, "baseline_ring": {"PSNR": 27.5}}
    check = quality_check(metrics, [])
    assert [row.row for row in check.rows[-2:]] == ["PSNR in cloud shadows (dB)",
                                                    "PSNR in the 5 px ring around clouds (dB)"]
    assert check.names("worse") == ["PSNR in the 5 px ring around clouds (dB)"]  # a pale rim fails the check
    assert "| PSNR in cloud shadows (dB) | 24.00 | 18.00 | beats |" in check.markdown()
    # no test image with a shadow (NaN): no row, as for an empty coverage bin
    metrics["baseline_shadow"] = {"PSNR": math.nan}
    assert "PSNR in cloud shadows (dB)" not in [row.row for row in quality_check(metrics, []).rows]
