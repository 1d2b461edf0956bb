"""Validation evidence for promotion: per-image scores on the validation split, and the paired comparison.

The test split is for reporting; promotion decides on the validation split. The
``evaluate`` stage scores the checkpoint on every validation image
(:mod:`sscr.validation`) and writes :data:`SCORES_FILE` beside ``metrics.json``;
registration attaches those scores to the model version. Two versions are compared
image by image on the same validation images (same sample ids, same target pixels:
:attr:`SplitScores.digest`): the mean per-image difference, with a paired bootstrap
interval over the images, must lie above zero *and* reach a margin no smaller than
the measured seed-to-seed spread (``registry.min_gain``). Either alone is noise: the
bootstrap interval covers which images happened to be in the split, the margin covers
which seed (and which CPU kernels) the training happened to get.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sscr.fsutil import write_text

#: The per-image validation scores of a run, in its record directory (``metrics/<experiment>/``).
SCORES_FILE = "val_images.json"
#: Bootstrap resamples and their seed: the interval is the same numbers on every machine.
RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


class EvidenceError(ValueError):
    """Validation scores that are missing, malformed or not comparable; the message names them and the fix."""


@dataclass(frozen=True)
class SplitScores:
    """One checkpoint's score on every image of a split (``images``: sample id -> score)."""

    split: str
    metric: str
    checkpoint_sha256: str
    digest: str
    images: dict[str, float] = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        """How many images were scored."""
        return len(self.images)

    @property
    def mean(self) -> float:
        """Mean over the images with a finite score (a perfect image's +inf PSNR is left out, as in metrics.json)."""
        finite = [v for v in self.images.values() if math.isfinite(v)]
        return float(np.mean(finite)) if finite else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """The JSON record: what was scored, on which images, and every image's score."""
        return {"split": self.split, "metric": self.metric, "checkpoint_sha256": self.checkpoint_sha256,
                "digest": self.digest, "n_images": self.n_images, "mean": _finite_or_none(self.mean),
                "images": {key: _finite_or_none(value) for key, value in sorted(self.images.items())}}

    def to_json(self) -> str:
        """:meth:`as_dict` as indented JSON (what :meth:`write` writes)."""
        return json.dumps(self.as_dict(), indent=1)

    def write(self, path: str | Path) -> Path:
        """Write the record atomically."""
        return write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> SplitScores:
        """Parse a record; :class:`EvidenceError` naming ``source`` when it is not one."""
        try:
            images = {str(key): float("nan") if value is None else float(value)
                      for key, value in dict(data["images"]).items()}
            return cls(str(data["split"]), str(data["metric"]), str(data["checkpoint_sha256"]), str(data["digest"]),
                       images)
        except (KeyError, TypeError, ValueError) as err:
            raise EvidenceError(f"{source} is not a validation-scores record ({type(err).__name__}: {err}); "
                                "re-run `sscr evaluate` to write it") from None

    @classmethod
    def read(cls, path: str | Path) -> SplitScores:
        """Read a record written by :meth:`write`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise EvidenceError(f"{path} is missing: the validation scores that promotion compares are written by "
                                "`sscr evaluate` (stage evaluate); run it, then register") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EvidenceError(f"{path} is not valid JSON ({err}); re-run `sscr evaluate` to write it") from None
        return cls.from_dict(data, str(path))


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def image_digest(sample_id: str, target: bytes) -> str:
    """Fingerprint of one validation image: its sample id and its target pixels."""
    return hashlib.sha256(sample_id.encode() + b"\0" + target).hexdigest()


def split_digest(image_digests: Mapping[str, str]) -> str:
    """Fingerprint of a split from its images' fingerprints (order-free: sorted by sample id)."""
    digest = hashlib.sha256()
    for key in sorted(image_digests):
        digest.update(f"{key}:{image_digests[key]}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class Comparison:
    """A candidate against the champion on the same validation images, and what the rule says."""

    metric: str
    split: str
    n_images: int
    candidate_mean: float
    champion_mean: float
    mean_difference: float
    interval: tuple[float, float]
    confidence: float
    min_gain: float
    better: bool

    @property
    def rule(self) -> str:
        """The rule, in words, with its numbers."""
        return rule_text(self.metric, self.confidence, self.min_gain)

    def summary(self) -> str:
        """One line: the difference, its interval, the margin and the verdict."""
        low, high = self.interval
        verdict = "beyond noise" if self.better else "not beyond noise"
        return (f"validation {self.metric} {self.candidate_mean:.4f} vs {self.champion_mean:.4f} dB: "
                f"{self.mean_difference:+.4f} dB, {self.confidence:.0%} interval [{low:+.4f}, {high:+.4f}] over "
                f"{self.n_images} images, margin {self.min_gain:.2f} dB: {verdict}")

    def as_dict(self) -> dict[str, Any]:
        """The evidence as a plain dict (recorded with the decision)."""
        return {"split": self.split, "metric": self.metric, "n_images": self.n_images,
                "candidate_mean": round(self.candidate_mean, 6), "champion_mean": round(self.champion_mean, 6),
                "mean_difference": round(self.mean_difference, 6),
                "interval": [round(self.interval[0], 6), round(self.interval[1], 6)],
                "confidence": self.confidence, "min_gain": self.min_gain, "better": self.better}


def rule_text(metric: str, confidence: float, min_gain: float) -> str:
    """Rule 1, as recorded with every decision."""
    return (f"paired per-image comparison on the validation split: promote only when the mean {metric} difference "
            f"(candidate - champion) is at least registry.min_gain = {min_gain:g} dB (no smaller than the measured "
            f"seed-to-seed spread) and its {confidence:.0%} paired bootstrap interval ({RESAMPLES} resamples of the "
            "images) lies above 0")


def compare(candidate: SplitScores, champion: SplitScores, min_gain: float, confidence: float = 0.95) -> Comparison:
    """Rule 1: ``candidate`` beats ``champion`` beyond noise on the same validation images.

    Raises :class:`EvidenceError` when the two were not scored on the same images
    (other sample ids, or other target pixels under the same ids) or with another metric.
    """
    if candidate.metric != champion.metric or candidate.split != champion.split:
        raise EvidenceError(f"the scores compare {candidate.metric} on {candidate.split} with {champion.metric} on "
                            f"{champion.split}; both must be scored the same way")
    if candidate.digest != champion.digest or candidate.images.keys() != champion.images.keys():
        raise EvidenceError(
            f"the candidate and the champion were scored on different validation images ({candidate.n_images} "
            f"images, digest {candidate.digest[:12]} vs {champion.n_images} images, digest {champion.digest[:12]}): "
            "another data set or data version; no paired comparison is possible. Promote explicitly with "
            "`sscr promote --version N --force --reason ...`")
    keys = [key for key in sorted(candidate.images)
            if math.isfinite(candidate.images[key]) and math.isfinite(champion.images[key])]
    if not keys:
        raise EvidenceError("no validation image has a finite score for both models; nothing to compare")
    ours = np.array([candidate.images[key] for key in keys])
    theirs = np.array([champion.images[key] for key in keys])
    difference = ours - theirs
    low, high = bootstrap_interval(difference, confidence)
    mean = float(difference.mean())
    better = bool(mean >= min_gain and low > 0)
    return Comparison(candidate.metric, candidate.split, len(keys), float(ours.mean()), float(theirs.mean()), mean,
                      (low, high), confidence, min_gain, better)


def bootstrap_interval(values: np.ndarray, confidence: float = 0.95, resamples: int = RESAMPLES,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampled with replacement, seeded)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = []
    chunk = max(1, min(resamples, 4_000_000 // max(1, values.size)))  # bounded memory for large splits
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, values.size, size=(min(chunk, resamples - start), values.size))
        means.append(values[draws].mean(axis=1))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(np.concatenate(means), [alpha, 1 - alpha])
    return float(low), float(high)
