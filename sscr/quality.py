"""The "do no harm" check: the model against the cloudy input, row by row.

A cloud-removal model must not make an image worse than leaving it alone. The
check compares the model with the cloudy input used as the prediction on
PSNR, SSIM, SAM and MAE, over all pixels and inside clouds, on PSNR in cloud
shadows and in the ring around clouds (where a kept shadow or a rim at the mask's
edge shows), and on PSNR inside clouds in every coverage bin that holds test
images with cloud pixels. Each row
gets a verdict: ``beats``, ``ties`` (the two differ by less than the precision
the table prints, :data:`TIE_TOLERANCE`) or ``worse``. The check passes when no
row is worse; a tie is reported as a tie, not as a win.

The evaluate stage writes the table beside ``metrics.json``, prints it and tags
the MLflow run with the verdict; a failed check marks the table, not the
pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Verdict = Literal["beats", "ties", "worse"]

METRICS: tuple[tuple[str, bool, str], ...] = (
    ("PSNR", True, "dB"), ("SSIM", True, ""), ("SAM", False, "deg"), ("MAE", False, ""),
)
"""The compared metrics: name, whether higher is better, unit."""
TIE_TOLERANCE: dict[str, float] = {"PSNR": 0.01, "SSIM": 0.001, "SAM": 0.01, "MAE": 0.0001}
"""A difference smaller than this is a tie: one unit of the precision the table prints."""
DECIMALS: dict[str, int] = {"PSNR": 2, "SSIM": 3, "SAM": 2, "MAE": 4}
TRACE_ROWS: tuple[tuple[str, str], ...] = (
    ("shadow", "in cloud shadows"), ("ring", "in the 5 px ring around clouds"),
)
"""Where clouds leave traces outside the mask (``sscr.metrics.shadow_region``, ``cloud_ring``): PSNR rows."""


@dataclass(frozen=True)
class QualityRow:
    """One row: a metric on a region, the model's and the cloudy input's value and the verdict."""

    row: str
    metric: str
    model: float
    cloudy_input: float
    verdict: Verdict


@dataclass
class QualityCheck:
    """Every row of the check; :attr:`passed` when none is worse than the cloudy input."""

    rows: list[QualityRow] = field(default_factory=list)

    def names(self, verdict: Verdict) -> list[str]:
        """The rows with ``verdict``."""
        return [row.row for row in self.rows if row.verdict == verdict]

    @property
    def passed(self) -> bool:
        """True when the model is nowhere worse than the cloudy input."""
        return not self.names("worse")

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` records: the verdict, how many rows beat, tie and are worse, which are worse."""
        return {"passed": self.passed, **{verdict: len(self.names(verdict)) for verdict in ("beats", "ties", "worse")},
                "worse_rows": self.names("worse")}

    def headline(self) -> str:
        """One line: PASS or FAIL and the counts, naming the rows that are worse."""
        counts = f"{len(self.names('beats'))} of {len(self.rows)} rows beat the cloudy input, " \
                 f"{len(self.names('ties'))} tie, {len(self.names('worse'))} worse"
        if self.passed:
            return f"Quality check PASS: {counts}"
        return f"Quality check FAIL: {counts} ({'; '.join(self.names('worse'))})"

    def markdown(self) -> str:
        """The headline and the table (model, cloudy input, verdict per row), as Markdown."""
        lines = [self.headline(), "", "| row | model | cloudy input | model vs input |", "| --- | ---: | ---: | --- |"]
        for row in self.rows:
            digits = DECIMALS[row.metric]
            lines.append(f"| {row.row} | {row.model:.{digits}f} | {row.cloudy_input:.{digits}f} | "
                         f"{row.verdict.upper() if row.verdict == 'worse' else row.verdict} |")
        lines.append("")
        lines.append(f"ties: within {', '.join(f'{v:g} {k}' for k, v in TIE_TOLERANCE.items())} (the printed "
                     "precision); bins: PSNR inside clouds of the test images in that cloud-coverage bin")
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``quality.json``."""
        return {**self.summary(), "rows": [asdict(row) for row in self.rows]}


def verdict(metric: str, model: float, cloudy_input: float) -> Verdict:
    """``beats``, ``ties`` or ``worse`` for one metric (SAM and MAE: lower is better)."""
    higher = next(better for name, better, _ in METRICS if name == metric)
    if model == cloudy_input:  # also two equal infinities (a perfect image)
        return "ties"
    gain = (model - cloudy_input) if higher else (cloudy_input - model)
    if math.isnan(gain):
        return "worse"  # a NaN model value has nothing to show for itself
    if abs(gain) < TIE_TOLERANCE[metric]:
        return "ties"
    return "beats" if gain > 0 else "worse"


def quality_check(metrics: Mapping[str, Any], coverage_rows: Sequence[Mapping[str, Any]]) -> QualityCheck:
    """The check from an evaluation's metrics and its coverage-bin rows.

    ``metrics``: ``test``, ``test_cloudy``, ``baseline``, ``baseline_cloudy`` (metric -> value), as
    ``sscr.evaluate`` builds them, and optionally ``test_shadow`` / ``baseline_shadow`` and
    ``test_ring`` / ``baseline_ring`` (a region no image has is no row). ``coverage_rows``: per bin
    ``bin``, ``n``, ``n_cloudy`` (images with cloud pixels), ``model_PSNR`` and ``baseline_PSNR``
    inside clouds; a bin without an image with cloud pixels has no PSNR inside clouds and is no row.
    """
    check = QualityCheck()
    for region, label in (("", "overall"), ("_cloudy", "inside clouds")):
        for metric, _, unit in METRICS:
            model, cloudy_input = float(metrics[f"test{region}"][metric]), float(metrics[f"baseline{region}"][metric])
            name = f"{metric} {label}" + (f" ({unit})" if unit else "")
            check.rows.append(QualityRow(name, metric, model, cloudy_input, verdict(metric, model, cloudy_input)))
    for region, label in TRACE_ROWS:
        model, cloudy_input = (float((metrics.get(f"{prefix}_{region}") or {}).get("PSNR", math.nan))
                               for prefix in ("test", "baseline"))
        if math.isnan(cloudy_input):
            continue  # no test image has pixels in that region
        name = f"PSNR {label} (dB)"
        check.rows.append(QualityRow(name, "PSNR", model, cloudy_input, verdict("PSNR", model, cloudy_input)))
    for row in coverage_rows:
        if not row.get("n_cloudy"):
            continue
        model, cloudy_input = float(row["model_PSNR"]), float(row["baseline_PSNR"])
        name = f"PSNR inside clouds (dB), coverage {row['bin']} ({row['n_cloudy']} of {row['n']} images with cloud)"
        check.rows.append(QualityRow(name, "PSNR", model, cloudy_input, verdict("PSNR", model, cloudy_input)))
    return check


def mlflow_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    """MLflow run tags from :meth:`QualityCheck.summary`: ``quality_check`` pass|fail, the counts, the worse rows."""
    return {
        "quality_check": "pass" if summary["passed"] else "fail",
        "quality_rows": f"{summary['beats']} beat, {summary['ties']} tie, {summary['worse']} worse",
        "quality_worse_rows": "; ".join(summary["worse_rows"])[:5000] or "none",
    }
