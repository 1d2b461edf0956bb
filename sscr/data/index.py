"""Index SEN12MS-CR triplets on disk, apply the official split, validate headers.

Torch-free on purpose: the mask stage and the downloader use it in worker
processes that need no deep-learning import.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from sscr.bands import S1_CHANNELS, S2_CHANNELS
from sscr.data.io import PatchError, check_dtype
from sscr.layout import (
    EXPECTED_LAYOUT,
    MODALITIES,
    SEASONS,
    SPLIT_MATCHES,
    PatchId,
    leaked_rois,
    season_dir,
    split_of,
    splits_of,
)


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
        self.detail = detail

    def __reduce__(self) -> tuple[type[DataNotFoundError], tuple[Path, str]]:
        return type(self), (self.root, self.detail)  # picklable across worker processes (see PatchError)


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
    """What indexing found: usable triplets, and everything left out with the file and the reason.

    ``unpaired``: one error per patch file whose partners are missing; ``stray``: entries named
    like a patch that are not a regular file where it belongs (a directory, a broken link, a
    symlink loop, a file in another ROI's folder); ``invalid``: triplets whose headers are wrong
    (left out under ``on_error: skip``). Every stage that reads data prints and logs them
    (:meth:`dropped`), so nothing is left out silently.
    """

    triplets: list[Triplet] = field(default_factory=list)
    unpaired: list[PatchError] = field(default_factory=list)
    stray: list[PatchError] = field(default_factory=list)
    invalid: list[PatchError] = field(default_factory=list)

    def dropped(self) -> dict[str, list[PatchError]]:
        """What was left out, by reason (only reasons that occurred)."""
        groups = {"unpaired": self.unpaired, "not_a_patch_file": self.stray, "invalid": self.invalid}
        return {reason: errors for reason, errors in groups.items() if errors}


@dataclass
class Scan:
    """The patch files found under a root: complete triplets, and the files left out of them."""

    triplets: list[Triplet]
    unpaired: list[PatchError]
    stray: list[PatchError]


_KIND = {"s1": "S1", "s2": "S2", "s2_cloudy": "S2 cloudy"}
_SKIP_FIX = "or set data.on_error: skip to leave the patch out (it is counted and listed)"


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a symlink loop raises ELOOP here (Path.is_file would say False)
        return False


def _roi_entries(root: Path, roi_dir: Path, modality: str, season: str) -> tuple[set[PatchId], list[PatchError]]:
    """Patches of ``modality`` in one ROI folder, and the entries named like patches that are not usable files."""
    found: set[PatchId] = set()
    stray: list[PatchError] = []
    with os.scandir(roi_dir) as entries:
        for entry in entries:
            parsed = PatchId.from_filename(entry.name)
            if parsed is None:
                continue  # not named like a patch (notes, .aux.xml, temporary files): not data
            pid, named_modality = parsed
            path = Path(entry.path)
            if named_modality != modality or pid.season != season or path != root / pid.relpath(modality):
                stray.append(PatchError(path, f"is named like a {_KIND[named_modality]} patch but lies in "
                                              f"{roi_dir}, not at {root / pid.relpath(named_modality)}: move it "
                                              f"there or delete it, {_SKIP_FIX}"))
            elif not _is_file(entry):
                what = "a directory" if Path(entry.path).is_dir() else "a broken symbolic link or a symlink loop" \
                    if entry.is_symlink() else "not a regular file"
                stray.append(PatchError(path, f"is named like a {_KIND[modality]} patch but is {what}: replace it "
                                              f"with the GeoTIFF (download it again) or delete it, {_SKIP_FIX}"))
            else:
                found.add(pid)
    return found, stray


def scan_triplets(root: str | Path, seasons: Iterable[str] | None = None) -> Scan:
    """List complete triplets under ``root`` (sorted), and the patch files left out, with reasons.

    A triplet exists only where the S1, S2 and S2-cloudy files of a patch all
    exist; any file without its two partners is unpaired.
    """
    root = Path(root)
    if not root.is_dir():
        detail = "it is a broken symbolic link or a symlink loop" if root.is_symlink() else "the directory does not exist"
        raise DataNotFoundError(root, detail)
    by_modality: dict[str, set[PatchId]] = {m: set() for m in MODALITIES}
    stray: list[PatchError] = []
    for season in seasons or SEASONS:
        prefix = season_dir(season)
        for modality in MODALITIES:
            mod_dir = root / f"{prefix}_{modality}"
            if not mod_dir.is_dir():
                continue
            for roi_dir in sorted(mod_dir.iterdir()):
                if roi_dir.is_dir() and roi_dir.name.startswith(f"{modality}_"):
                    found, misplaced = _roi_entries(root, roi_dir, modality, prefix)
                    by_modality[modality] |= found
                    stray += misplaced
    complete = by_modality["s1"] & by_modality["s2"] & by_modality["s2_cloudy"]
    unpaired = []
    for modality, pids in by_modality.items():
        for pid in sorted(pids - complete):
            missing = [m for m in MODALITIES if pid not in by_modality[m]]
            unpaired.append(PatchError(
                root / pid.relpath(modality),
                f"unpaired: its {' and '.join(_KIND[m] for m in missing)} partner"
                f"{'s' if len(missing) > 1 else ''} ({', '.join(str(root / pid.relpath(m)) for m in missing)}) "
                f"{'are' if len(missing) > 1 else 'is'} missing; restore {'them' if len(missing) > 1 else 'it'} "
                f"(download again) or delete this file, {_SKIP_FIX}",
            ))
    triplets = [Triplet(pid, split_of(pid), root) for pid in sorted(complete)]
    return Scan(triplets, sorted(unpaired, key=lambda e: e.path), sorted(stray, key=lambda e: e.path))


def check_triplet(triplet: Triplet, patch_size: int | None) -> None:
    """Check the three headers: band counts, dtypes, size, S1/S2 size and CRS agreement.

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
                dtype = src.dtypes[0]
        except (RasterioIOError, OSError) as err:
            raise PatchError(
                path, f"cannot read {kind} GeoTIFF ({err}); the file is corrupt or truncated:"
                " delete it and download or regenerate it",
            ) from None
        if count != bands:
            raise PatchError(path, f"{kind} patch has {count} bands, expected {bands}")
        check_dtype(path, dtype, kind)
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


#: The fix for a triplet whose content is unusable, wherever it is found (mask stage or data set).
CONTENT_FIX = ("delete the triplet, or leave it out with data.on_error: skip and `sscr masks` (stage cloudmasks), "
               "which checks every triplet and lists the bad ones in <masks.dir>/invalid.csv for train and evaluate "
               "to skip")


def check_content(triplet: Triplet, s1_db: np.ndarray, target_dn: np.ndarray) -> None:
    """Refuse patches that carry no information or break the value conventions.

    All-NaN S1, S1 in linear power instead of dB (no value below 0), blank (all-zero) clear S2.
    """
    s1_path = triplet.path("s1")
    if np.isnan(s1_db).all():
        raise PatchError(s1_path, f"S1 patch is all NaN (no SAR backscatter): {CONTENT_FIX}")
    # Backscatter in dB is negative almost everywhere; a patch without one negative value is linear power.
    if np.nanmin(s1_db) >= 0:
        raise PatchError(s1_path, "S1 patch has no value below 0, so it holds linear power or scaled values, not "
                                  "backscatter in dB: convert linear power with 10 * log10(power); or "
                                  f"{CONTENT_FIX}")
    if not np.any(target_dn > 0):
        raise PatchError(triplet.path("s2"), "clear S2 target is blank (all zero DN), nothing to learn or score "
                                             f"against: {CONTENT_FIX}")


def _pid_of(error: PatchError) -> PatchId:
    parsed = PatchId.from_filename(error.path.name)
    assert parsed is not None  # only files named like patches are reported
    return parsed[0]


def index_dataset(
    root: str | Path,
    seasons: Iterable[str] | None = None,
    splits: Iterable[str] | None = None,
    patch_size: int | None = 256,
    on_error: str = "raise",
    validate: bool = True,
    split_match: str = "exact",
) -> IndexReport:
    """Index, split-filter and (optionally) validate the triplets under ``root``.

    ``on_error="raise"`` stops at the first unpaired or misplaced patch file or bad
    header, naming the file; ``"skip"`` leaves them out and lists them in the report.
    ``split_match`` (``data.split_match``): ``exact`` ROI keys (leak-free), or
    ``substring`` as the published loaders match, which puts 6 test and 3 val ROIs
    into train; it warns (:class:`SplitLeakWarning`) naming them.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"data.on_error must be 'raise' or 'skip', got {on_error!r}")
    if split_match not in SPLIT_MATCHES:
        raise ValueError(f"data.split_match must be one of {', '.join(SPLIT_MATCHES)}, got {split_match!r}")
    scan = scan_triplets(root, seasons)
    if not scan.triplets:
        left_out = len(scan.unpaired) + len(scan.stray)
        raise DataNotFoundError(root, f"{left_out} patch files without their partners" if left_out else "")
    wanted = set(splits) if splits is not None else None

    def selected(pid: PatchId) -> bool:
        return wanted is None or bool(splits_of(pid, split_match) & wanted)

    report = IndexReport(unpaired=[e for e in scan.unpaired if selected(_pid_of(e))],
                         stray=[e for e in scan.stray if selected(_pid_of(e))])
    if on_error == "raise" and (report.unpaired or report.stray):
        # A stray entry (a directory, a link loop) is often why its partners are unpaired: name it first.
        raise (report.stray or report.unpaired)[0]
    for triplet in scan.triplets:
        if not selected(triplet.pid):
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
    if wanted is not None:
        _warn_leaks(report.triplets, wanted, split_match)
    return report


def dropped_lines(dropped: Mapping[str, Sequence[PatchError]], what: str, kept: int, limit: int = 5) -> list[str]:
    """Lines a stage prints about what it left out: a count by reason, then the first ``limit`` files and why.

    Empty when nothing was left out. Unpaired and stray entries count files; the other reasons, samples.
    """
    total = sum(len(errors) for errors in dropped.values())
    if not total:
        return []
    counts = ", ".join(f"{len(errors)} {reason.replace('_', ' ')}" for reason, errors in dropped.items())
    lines = [f"sscr: {what}: {kept} samples used, {total} left out ({counts}):"]
    first = [error for errors in dropped.values() for error in errors][:limit]
    lines += [f"  {error}" for error in first]
    if total > len(first):
        lines.append(f"  ... and {total - len(first)} more")
    return lines


class SplitLeakWarning(UserWarning):
    """``data.split_match: substring`` put val or test ROIs into another split, as the published loaders do."""


def _warn_leaks(triplets: list[Triplet], wanted: set[str], split_match: str) -> None:
    leaks = {pair: keys for pair, keys in leaked_rois(split_match).items() if pair[1] in wanted}
    if not leaks:
        return
    taken = sum(t.split not in wanted for t in triplets)
    parts = [f"{len(keys)} {own} ROIs ({', '.join(keys)}) into {other}" for (own, other), keys in sorted(leaks.items())]
    warnings.warn(
        f"data.split_match: substring matches split lists as the published SEN12MS-CR loaders do, which puts "
        f"{'; '.join(parts)}; here {taken} patches of other splits are in {', '.join(sorted(wanted))}. Numbers are "
        "comparable with published ones but not leak-free; data.split_match: exact (the default) avoids it",
        SplitLeakWarning, stacklevel=3,
    )
