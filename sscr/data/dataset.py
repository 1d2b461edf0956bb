"""The SEN12MS-CR data set as a ``torch.utils.data.Dataset``, built from params, and its batches as model inputs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from torch.utils.data import Dataset

from sscr.bands import RGB_BANDS, S1_BANDS, S1_CHANNELS, S2_BANDS, S2_CHANNELS
from sscr.clouds.detect import compute_masks
from sscr.config import MASK_KINDS, Params
from sscr.data.index import IndexReport, Triplet, check_content, dropped_lines, index_dataset
from sscr.data.io import PatchError, normalize_s1, normalize_s2, read_raster
from sscr.data.masks import (
    COVERAGE_TABLE,
    coverage,
    has_coverage_table,
    read_coverage_table,
    read_invalid_table,
    read_mask,
)
from sscr.layout import PATCH_SIZE


class SEN12MSCR(Dataset):
    """SEN12MS-CR: co-registered Sentinel-1 / Sentinel-2 (clear) / Sentinel-2 (cloudy) triplets.

    Facts: 256 x 256 px patches at 10 m in UTM GeoTIFFs; S1 GRD has 2 bands
    (VV, VH) as float32 backscatter in dB (NaN possible); S2 L1C has 13 bands
    (B1 ... B12) as uint16 top-of-atmosphere reflectance x 10000. About
    122,000 triplets over four seasons (450 GiB). Normalisation is the
    benchmark's "default": S1 clip [-25, 0] dB, map to [0, 1], then NaN -> 0;
    S2 clip [0, 10000] / 10000. The official ROI split is applied by exact ROI
    key, so no val or test ROI leaks into training (``split_match="substring"`` reproduces the
    published loaders' leaky match for like-for-like comparisons).

    Each item is a dict: ``sar`` (2, H, W), ``cloudy`` (13, H, W), ``target``
    (13, H, W), all float32 in [0, 1]; ``mask`` (H, W) float32, 1 = cloud or
    shadow (zeros when ``cloud_mask`` is None); ``coverage`` (float, the mean
    binary mask); ``meta`` (sample id, season, ROI, patch, split, paths, CRS,
    affine transform as 6 floats).

    Citation: P. Ebel, A. Meraner, M. Schmitt, X. X. Zhu, "Multisensor Data
    Fusion for Cloud Removal in Global and All-Season Sentinel-2 Imagery",
    IEEE TGRS 59(7), 2021.

    Args:
        root: data-set root holding the ``ROIs*_s1``, ``_s2``, ``_s2_cloudy`` directories.
        split: "train", "val", "test" or None (all ROIs of the official lists).
        seasons: short or full season names; None = all four.
        cloud_mask: one of ``s2cloudless_mask``, ``s2cloudless_map``,
            ``cloud_cloudshadow_mask`` or None.
        masks_dir: precomputed masks (stage ``cloudmasks``); None = compute on the fly.
        coverage_range: keep samples whose coverage lies in [min, max].
        max_samples: keep at most this many (the first, in sorted order).
        patch_size: expected patch size (checked per file); None = any.
        on_error: "raise" stops at the first bad or unpaired file; "skip" leaves it out, counted in
            ``dropped`` (by reason: unpaired, not_a_patch_file, invalid, invalid_by_mask_stage,
            not_in_coverage_table).
        split_match: "exact" ROI keys (leak-free) or "substring" (the published loaders' match, which
            puts 6 test and 3 val ROIs into train; warns naming them).
    """

    S1_BANDS = S1_BANDS
    S2_BANDS = S2_BANDS
    RGB_BANDS = RGB_BANDS

    def __init__(
        self,
        root: str | Path,
        split: str | None = "train",
        seasons: Sequence[str] | None = None,
        cloud_mask: str | None = "s2cloudless_map",
        masks_dir: str | Path | None = None,
        coverage_range: tuple[float, float] = (0.0, 1.0),
        max_samples: int | None = None,
        patch_size: int | None = PATCH_SIZE,
        on_error: str = "raise",
        split_match: str = "exact",
    ) -> None:
        if cloud_mask is not None and cloud_mask not in MASK_KINDS:
            raise ValueError(f"cloud_mask must be one of {MASK_KINDS} or None, got {cloud_mask!r}")
        self.root = Path(root)
        self.split = split
        self.cloud_mask = cloud_mask
        self.masks_dir = Path(masks_dir) if masks_dir is not None else None
        self.patch_size = patch_size
        self.report: IndexReport = index_dataset(
            self.root, seasons=seasons, splits=None if split is None else [split],
            patch_size=patch_size, on_error=on_error, split_match=split_match,
        )
        triplets = self.report.triplets
        self._coverage: dict[str, float] = {}
        #: Everything left out, by reason, with the file: indexing's, then the mask stage's verdicts.
        self.dropped: dict[str, list[PatchError]] = self.report.dropped()
        if cloud_mask is not None and self.masks_dir is not None:
            table = read_coverage_table(self.masks_dir)
            self._coverage = {name: row[cloud_mask] for name, row in table.items() if cloud_mask in row}
            triplets = self._mask_stage_verdicts(triplets, on_error)
        lo, hi = coverage_range
        if (lo, hi) != (0.0, 1.0):
            if cloud_mask is None:
                raise ValueError("a coverage range needs a cloud_mask kind to measure coverage with")
            triplets = [t for t in triplets if lo <= self.sample_coverage(t) <= hi]
        self.triplets: list[Triplet] = triplets[:max_samples] if max_samples else triplets

    def _mask_stage_verdicts(self, triplets: list[Triplet], on_error: str) -> list[Triplet]:
        """Keep the samples the mask stage validated (in its coverage table); record why the others are left out.

        The mask stage checks every triplet's content and lists the bad ones in ``invalid.csv``, so
        train and evaluate leave out the same samples it did. A sample in neither table appeared after
        the stage ran. With ``on_error: raise`` either is an error naming the file.
        """
        assert self.masks_dir is not None
        invalid = read_invalid_table(self.masks_dir)
        kept, found_invalid, unknown = [], [], []
        for triplet in triplets:
            name = triplet.pid.name
            if name in self._coverage:
                kept.append(triplet)
            elif name in invalid:
                found_invalid.append(invalid[name])
            else:
                unknown.append(PatchError(
                    triplet.path("s2_cloudy"), f"is not in {self.masks_dir / COVERAGE_TABLE}: the data changed after "
                    "`sscr masks` (stage cloudmasks) ran; run it again",
                ))
        if on_error == "raise" and (found_invalid or unknown):
            raise (found_invalid or unknown)[0]
        if found_invalid:
            self.dropped["invalid_by_mask_stage"] = found_invalid
        if unknown:
            self.dropped["not_in_coverage_table"] = unknown
        return kept

    def dropped_lines(self, limit: int = 5) -> list[str]:
        """What this split left out, for a stage to print: a count by reason, then the first ``limit`` files."""
        return dropped_lines(self.dropped, f"{self.split or 'all'} split", len(self.triplets), limit)

    def __len__(self) -> int:
        return len(self.triplets)

    def sample_coverage(self, triplet: Triplet) -> float:
        """Coverage of one triplet: from the coverage table when precomputed, else computed now."""
        if triplet.pid.name in self._coverage:
            return self._coverage[triplet.pid.name]
        return coverage(self._mask(triplet, None))

    def _mask(self, triplet: Triplet, cloudy_dn: np.ndarray | None) -> np.ndarray:
        assert self.cloud_mask is not None
        if self.masks_dir is not None:
            return read_mask(self.masks_dir, triplet.pid, self.cloud_mask)
        if cloudy_dn is None:
            cloudy_dn, _ = read_raster(triplet.path("s2_cloudy"), S2_CHANNELS, "S2 cloudy", self.patch_size)
        return compute_masks(cloudy_dn, [self.cloud_mask])[self.cloud_mask]

    def __getitem__(self, index: int) -> dict[str, Any]:
        # One GDAL environment for the item's four files, not one set up and torn down per file.
        with rasterio.Env():
            return self._item(index)

    def _item(self, index: int) -> dict[str, Any]:
        triplet = self.triplets[index]
        s1_db, info = read_raster(triplet.path("s1"), S1_CHANNELS, "S1", self.patch_size)
        target_dn, _ = read_raster(triplet.path("s2"), S2_CHANNELS, "S2", self.patch_size)
        cloudy_dn, _ = read_raster(triplet.path("s2_cloudy"), S2_CHANNELS, "S2 cloudy", self.patch_size)
        check_content(triplet, s1_db, target_dn)
        height, width = cloudy_dn.shape[1:]
        if self.cloud_mask is None:
            mask = np.zeros((height, width), np.float32)
        else:
            mask = self._mask(triplet, cloudy_dn).astype(np.float32)
        return {
            "sar": torch.from_numpy(normalize_s1(s1_db)),
            "cloudy": torch.from_numpy(normalize_s2(cloudy_dn)),
            "target": torch.from_numpy(normalize_s2(target_dn)),
            "mask": torch.from_numpy(mask),
            "coverage": coverage(mask) if self.cloud_mask is not None else 0.0,
            "meta": {
                "sample_id": triplet.pid.name,
                "season": triplet.season,
                "roi": triplet.pid.roi,
                "patch": triplet.pid.patch,
                "split": triplet.split or "",
                "s1_path": str(triplet.path("s1")),
                "s2_path": str(triplet.path("s2")),
                "s2_cloudy_path": str(triplet.path("s2_cloudy")),
                "crs": info.crs.to_string() if info.crs else "",
                "transform": torch.tensor(list(info.transform)[:6], dtype=torch.float64),
            },
        }

    def plot(self, index: int, ax: Any = None) -> Any:
        """Show cloudy RGB, SAR (VV), target RGB and mask of one sample; returns the figure."""
        from sscr.plots import sample_panel

        sample = self[index]
        return sample_panel(
            cloudy=sample["cloudy"], sar=sample["sar"], target=sample["target"], mask=sample["mask"],
            title=sample["meta"]["sample_id"],
        )


def build_dataset(params: Params, split: str) -> SEN12MSCR:
    """The data set of ``split`` as configured (precomputed masks when the mask stage has run).

    Training takes the ``train.min_cov``/``max_cov`` coverage range and ``train.max_samples``; other splits
    are used whole, so validation and test always see the official lists.
    """
    masks_dir = params.masks.dir if has_coverage_table(params.masks.dir) else None
    train = params.train
    return SEN12MSCR(
        params.data.root, split=split, seasons=params.data.seasons, cloud_mask=params.masks.use,
        masks_dir=masks_dir, coverage_range=(train.min_cov, train.max_cov) if split == "train" else (0.0, 1.0),
        max_samples=train.max_samples if split == "train" else None,
        patch_size=params.data.patch_size, on_error=params.data.on_error, split_match=params.data.split_match,
    )


def model_inputs(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor | None]:
    """Keyword arguments of a model's forward from a batch of items: cloudy, sar, mask (B, 1, H, W)."""
    return {
        "cloudy": batch["cloudy"].to(device, non_blocking=True),
        "sar": batch["sar"].to(device, non_blocking=True),
        "mask": batch["mask"].to(device, non_blocking=True).unsqueeze(1),
    }
