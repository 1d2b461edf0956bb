"""Index SEN12MS-CR triplets on disk, apply the official split, validate headers.

Torch-free on purpose: the mask stage and the downloader use it in worker
processes that need no deep-learning import.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from sscr.bands import S1_CHANNELS, S2_CHANNELS
from sscr.data.io import PatchError
from sscr.layout import EXPECTED_LAYOUT, MODALITIES, SEASONS, PatchId, season_dir, split_of


class DataNotFoundError(FileNotFoundError):
    """The data-set root is missing or holds no SEN12MS-CR triplet; the message shows the layout."""

    def __init__(self, root: str | Path, detail: str = "") -> None:
        self.root = Path(root)
        message = (
            f"No SEN12MS-CR triplets found under {root}{': ' + detail if detail else ''}.\n"
            f"Expected layout:\n{EXPECTED_LAYOUT}\n"
            "Fix: run `sscr data synth --root <root>` for the embedded synthetic sample, "
            "`sscr data download` with data.source: sen12mscr for the real data set, "
            "or point data.root (--root3) at an existing copy."
        )
        super().__init__(message)


@dataclass(frozen=True)
class Triplet:
    """One co-registered sample: S1, clear S2 (target) and cloudy S2 of the same patch."""

    pid: PatchId
    split: str | None
    root: Path

    def path(self, modality: str) -> Path:
        """Absolute path of this triplet's file for ``modality`` (s1, s2, s2_cloudy)."""
        return self.root / self.pid.relpath(modality)

    @property
    def season(self) -> str:
        """Short season name (spring, summer, fall, winter)."""
        return next(short for short, full in SEASONS.items() if full == self.pid.season)


@dataclass
class IndexReport:
    """What indexing found: usable triplets and what was left out, with reasons."""

    triplets: list[Triplet] = field(default_factory=list)
    unpaired: int = 0
    invalid: list[PatchError] = field(default_factory=list)


def _patch_files(directory: Path) -> dict[PatchId, str]:
    found: dict[PatchId, str] = {}
    with os.scandir(directory) as entries:
        for entry in entries:
            parsed = PatchId.from_filename(entry.name)
            if parsed is not None and entry.is_file():
                found[parsed[0]] = parsed[1]
    return found


def scan_triplets(root: str | Path, seasons: Iterable[str] | None = None) -> tuple[list[Triplet], int]:
    """List complete triplets under ``root`` (sorted), and how many unpaired files were skipped.

    A triplet exists only where the S1, S2 and S2-cloudy files of a patch all
    exist; any file without its two partners counts as unpaired.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataNotFoundError(root, "the directory does not exist")
    by_modality: dict[str, set[PatchId]] = {m: set() for m in MODALITIES}
    for season in seasons or SEASONS:
        prefix = season_dir(season)
        for modality in MODALITIES:
            mod_dir = root / f"{prefix}_{modality}"
            if not mod_dir.is_dir():
                continue
            for roi_dir in sorted(mod_dir.iterdir()):
                if roi_dir.is_dir() and roi_dir.name.startswith(f"{modality}_"):
                    for pid, found_modality in _patch_files(roi_dir).items():
                        if found_modality == modality and pid.season == prefix:
                            by_modality[modality].add(pid)
    complete = by_modality["s1"] & by_modality["s2"] & by_modality["s2_cloudy"]
    unpaired = sum(len(pids - complete) for pids in by_modality.values())
    triplets = [Triplet(pid, split_of(pid), root) for pid in sorted(complete)]
    return triplets, unpaired


def check_triplet(triplet: Triplet, patch_size: int | None) -> None:
    """Check the three headers: band counts, size, S1/S2 size and CRS agreement.

    Raises :class:`PatchError` naming the offending file and what was expected.
    """
    expected = {"s1": (S1_CHANNELS, "S1"), "s2": (S2_CHANNELS, "S2"), "s2_cloudy": (S2_CHANNELS, "S2 cloudy")}
    shapes: dict[str, tuple[int, int]] = {}
    crs: dict[str, object] = {}
    for modality, (bands, kind) in expected.items():
        path = triplet.path(modality)
        try:
            with rasterio.open(path) as src:
                count, shapes[modality], crs[modality] = src.count, (src.height, src.width), src.crs
        except (RasterioIOError, OSError) as err:
            raise PatchError(
                path, f"cannot read {kind} GeoTIFF ({err}); the file is corrupt or truncated:"
                " delete it and download or regenerate it",
            ) from None
        if count != bands:
            raise PatchError(path, f"{kind} patch has {count} bands, expected {bands}")
        if patch_size is not None and shapes[modality] != (patch_size, patch_size):
            height, width = shapes[modality]
            raise PatchError(
                path,
                f"{kind} patch is {width} x {height} px, expected {patch_size} x {patch_size}"
                " (data.patch_size)",
            )
    for modality in ("s2", "s2_cloudy"):
        if shapes[modality] != shapes["s1"]:
            raise PatchError(
                triplet.path(modality),
                f"size {shapes[modality][1]} x {shapes[modality][0]} does not match its S1 partner "
                f"{triplet.path('s1')} ({shapes['s1'][1]} x {shapes['s1'][0]})",
            )
        if crs[modality] != crs["s1"]:
            raise PatchError(
                triplet.path(modality),
                f"CRS {crs[modality]} does not match its S1 partner {triplet.path('s1')} ({crs['s1']})",
            )


def check_content(triplet: Triplet, s1_db: np.ndarray, target_dn: np.ndarray) -> None:
    """Refuse patches that carry no information: all-NaN S1, blank (all-zero) clear S2."""
    if np.isnan(s1_db).all():
        raise PatchError(triplet.path("s1"), "S1 patch is all NaN (no SAR backscatter); delete the triplet, "
                         "or set data.on_error: skip and rerun the cloudmasks stage to leave it out")
    if not np.any(target_dn > 0):
        raise PatchError(triplet.path("s2"), "clear S2 target is blank (all zero DN), nothing to learn or score "
                         "against; delete the triplet, or set data.on_error: skip and rerun the cloudmasks stage")


def index_dataset(
    root: str | Path,
    seasons: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    patch_size: int | None = 256,
    on_error: str = "raise",
    validate: bool = True,
) -> IndexReport:
    """Index, split-filter and (optionally) validate the triplets under ``root``.

    ``on_error="raise"`` stops at the first bad file with its path;
    ``"skip"`` leaves bad triplets out and lists them in the report.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    triplets, unpaired = scan_triplets(root, seasons)
    if not triplets:
        raise DataNotFoundError(root)
    wanted = set(splits) if splits is not None else None
    report = IndexReport(unpaired=unpaired)
    for triplet in triplets:
        if wanted is not None and triplet.split not in wanted:
            continue
        if validate:
            try:
                check_triplet(triplet, patch_size)
            except PatchError as err:
                if on_error == "raise":
                    raise
                report.invalid.append(err)
                continue
        report.triplets.append(triplet)
    return report
