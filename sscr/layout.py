"""SEN12MS-CR on disk: seasons, modalities, file naming and the official ROI split.

The data set (Ebel et al., "Multisensor data fusion for cloud removal in global
and all-season Sentinel-2 imagery", IEEE TGRS 2021) stores co-registered
triplets of 256 x 256 px patches at 10 m in UTM GeoTIFFs::

    <root>/ROIs1158_spring_s1/s1_<roi>/ROIs1158_spring_s1_<roi>_p<patch>.tif
    <root>/ROIs1158_spring_s2/s2_<roi>/ROIs1158_spring_s2_<roi>_p<patch>.tif
    <root>/ROIs1158_spring_s2_cloudy/s2_cloudy_<roi>/ROIs1158_spring_s2_cloudy_<roi>_p<patch>.tif

Everything that knows these names lives here, so the reader, the synthetic
writer, the downloader, the params schema and the mask stage agree on them by
construction. The bands of each file are in :mod:`sscr.bands`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

#: The four season directories of SEN12MS-CR, keyed by their short name.
SEASONS: dict[str, str] = {
    "spring": "ROIs1158_spring",
    "summer": "ROIs1868_summer",
    "fall": "ROIs1970_fall",
    "winter": "ROIs2017_winter",
}
#: The three modalities of a triplet, as they appear in directory names.
MODALITIES: tuple[str, ...] = ("s1", "s2", "s2_cloudy")

PATCH_SIZE = 256
SPLITS: tuple[str, ...] = ("train", "val", "test")

_FILE_RE = re.compile(
    r"^(?P<season>ROIs\d{4}_[a-z]+)_(?P<modality>s1|s2|s2_cloudy)_(?P<roi>\d+)_p(?P<patch>\d+)\.tif$"
)


def season_dir(season: str) -> str:
    """Return the season directory prefix (``ROIs1158_spring``) for a short or full season name."""
    if season in SEASONS:
        return SEASONS[season]
    if season in SEASONS.values():
        return season
    raise ValueError(
        f"unknown season {season!r}; expected one of {sorted(SEASONS)} or {sorted(SEASONS.values())}"
    )


def season_name(season: str) -> str:
    """Return the short season name (``spring``) for a short or full season name."""
    full = season_dir(season)
    return next(short for short, long in SEASONS.items() if long == full)


@dataclass(frozen=True, order=True)
class PatchId:
    """Identity of one triplet: season directory, ROI number and patch number."""

    season: str  # full season prefix, e.g. ROIs1158_spring
    roi: int
    patch: int

    @property
    def roi_key(self) -> str:
        """The ROI as written in the official split file: ``<season>_s1/s1_<roi>``."""
        return f"{self.season}_s1/s1_{self.roi}"

    @property
    def name(self) -> str:
        """A stable sample id, ``<season>_<roi>_p<patch>``, used by masks and tables."""
        return f"{self.season}_{self.roi}_p{self.patch}"

    def relpath(self, modality: str) -> Path:
        """Path of this patch's file for ``modality`` relative to the data-set root."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return (
            Path(f"{self.season}_{modality}")
            / f"{modality}_{self.roi}"
            / f"{self.season}_{modality}_{self.roi}_p{self.patch}.tif"
        )

    @classmethod
    def from_filename(cls, filename: str) -> tuple[PatchId, str] | None:
        """Parse ``ROIs1158_spring_s2_cloudy_7_p12.tif`` into (PatchId, modality), or None."""
        match = _FILE_RE.match(Path(filename).name)
        if match is None:
            return None
        return (
            cls(match["season"], int(match["roi"]), int(match["patch"])),
            match["modality"],
        )


def archive_name(season: str, modality: str) -> str:
    """Name of the official tar.gz archive holding one season and modality."""
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
    return f"{season_dir(season)}_{modality}.tar.gz"


@lru_cache(maxsize=1)
def official_splits() -> dict[str, frozenset[str]]:
    """The official train/val/test ROI lists, as exact ``<season>_s1/s1_<roi>`` keys.

    Matching is by exact key (set membership), never by substring: a substring
    test would let ``s1_106`` match ``s1_1`` and leak test ROIs into training.
    """
    text = resources.files("sscr").joinpath("splits.json").read_text()
    raw = json.loads(text)
    return {split: frozenset(raw[split]) for split in SPLITS}


def split_of(pid: PatchId) -> str | None:
    """The official split of a patch's ROI, or None if the ROI is in no list."""
    for split, keys in official_splits().items():
        if pid.roi_key in keys:
            return split
    return None


SPLIT_MATCHES: tuple[str, ...] = ("exact", "substring")
"""How a patch is matched to the split lists (``data.split_match``): exact ROI key, or the published loaders' way."""


def splits_of(pid: PatchId, match: str = "exact") -> frozenset[str]:
    """The splits a patch belongs to under ``match``.

    ``exact``: its ROI's own list (:func:`split_of`), at most one. ``substring``: as the
    published SEN12MS-CR loaders decide it, every split one of whose ROI keys is a
    substring of the patch's S1 path, so ``ROIs1158_spring_s1/s1_1`` (train) also takes
    ``s1_106`` (test): a patch can be in two splits (:func:`leaked_rois`).
    """
    if match == "exact":
        split = split_of(pid)
        return frozenset() if split is None else frozenset({split})
    if match != "substring":
        raise ValueError(f"data.split_match must be one of {', '.join(SPLIT_MATCHES)}, got {match!r}")
    # The published loaders test the key against the S1 file's path; "/s1_" occurs only in its ROI folder.
    path = pid.relpath("s1").as_posix()
    return frozenset(split for split, keys in official_splits().items() if any(key in path for key in keys))


def leaked_rois(match: str = "substring") -> dict[tuple[str, str], list[str]]:
    """ROI keys that ``match`` puts into a split besides their own: ``{(own split, other split): [keys]}``.

    Empty for ``exact``. For ``substring``: 6 test and 3 val ROIs of the official lists also land in train.
    """
    leaks: dict[tuple[str, str], list[str]] = {}
    for own, keys in official_splits().items():
        for key in sorted(keys):
            season, roi = parse_roi_key(key)
            for other in sorted(splits_of(PatchId(season, roi, 1), match) - {own}):
                leaks.setdefault((own, other), []).append(key)
    return leaks


def parse_roi_key(key: str) -> tuple[str, int]:
    """Split ``ROIs1158_spring_s1/s1_106`` into (``ROIs1158_spring``, 106)."""
    season_part, roi_part = key.split("/")
    return season_part.removesuffix("_s1"), int(roi_part.removeprefix("s1_"))


EXPECTED_LAYOUT = """\
<root>/ROIs1158_spring_s1/s1_<roi>/ROIs1158_spring_s1_<roi>_p<patch>.tif
<root>/ROIs1158_spring_s2/s2_<roi>/ROIs1158_spring_s2_<roi>_p<patch>.tif
<root>/ROIs1158_spring_s2_cloudy/s2_cloudy_<roi>/ROIs1158_spring_s2_cloudy_<roi>_p<patch>.tif
(likewise for ROIs1868_summer, ROIs1970_fall, ROIs2017_winter)"""
