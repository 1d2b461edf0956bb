"""Mask stamps: what it costs to know that a precomputed mask file is still current.

    python -m benchmarks.mask_stamp            # the embedded default sample (40 cloudy patches), 5 rounds
    python -m benchmarks.mask_stamp --quick    # 3 rounds, masks recomputed for 2 patches
    python -m benchmarks.mask_stamp --smoke    # CI: 64 px sample, 1 round

Each mask file carries a stamp of the cloudy patch it was computed from; a rerun of the mask stage
reuses the file when the stamp still matches, and recomputes it otherwise. Candidates, per cloudy
file, timed round-robin over every cloudy file of the sample (one untimed warm-up round, so every
file is in the page cache: this measures the CPU, not the disk):

- ``size + mtime``: ``os.stat`` (the old stamp: cheap, but it changes with every clone or copy, so
  the mask files and DVC's lock differed between machines, and it misses a rewrite that keeps both);
- ``SHA-256 of the file's bytes``: ``hashlib.file_digest`` (the stamp now);
- ``MD5 of the file's bytes``: what DVC computes for the same file anyway (its ``dvc.lock`` hash);
- ``SHA-256 of the decoded pixels``: ``rasterio`` read + hash (blind to tags and compression, but
  it decodes every file);
- ``recompute the masks``: read + s2cloudless + cloud/shadow masks, what a stamp saves (on the
  first ``--recompute`` patches only: it is three orders of magnitude slower).

The projection to SEN12MS-CR takes its cloudy files as stored (uncompressed, 13 x 256 x 256 uint16,
1.70 MB each, about 122,000 of them) at the measured MB/s of each hash.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import rasterio

from benchmarks._common import (
    command_line,
    interleaved,
    machine_line,
    median,
    mode_of,
    results_path,
    sample_on_disk,
    spread,
    tiny_overrides,
    write_report,
)

NAME = "mask_stamp"
SEN12MSCR_CLOUDY_FILES = 122_000
SEN12MSCR_CLOUDY_BYTES = 13 * 256 * 256 * 2


def _stat(paths: list[Path]) -> Callable[[], None]:
    return lambda: [os.stat(path) for path in paths] and None


def _file_hash(paths: list[Path], name: str) -> Callable[[], None]:
    def run() -> None:
        for path in paths:
            with path.open("rb") as handle:
                hashlib.file_digest(handle, name)

    return run


def _pixel_hash(paths: list[Path]) -> Callable[[], None]:
    def run() -> None:
        for path in paths:
            with rasterio.open(path) as src:
                hashlib.sha256(src.read().tobytes())

    return run


def _recompute(paths: list[Path], kinds: list[str]) -> Callable[[], None]:
    from sscr.clouds.detect import compute_masks

    def run() -> None:
        for path in paths:
            with rasterio.open(path) as src:
                compute_masks(src.read(), kinds)

    return run


def main(argv: Sequence[str] | None = None) -> str:
    """Time the candidates, print and write the report; returns it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, masks recomputed for 2 patches")
    parser.add_argument("--smoke", action="store_true", help="CI size: 64 px sample, 1 round")
    parser.add_argument("--recompute", type=int, default=None, help="patches whose masks are recomputed")
    parser.add_argument("--out", type=Path, default=None, help="report file")
    args = parser.parse_args(argv)
    mode = mode_of(args.quick, args.smoke)
    repeats = {"full": 5, "quick": 3, "smoke": 1}[mode]
    recompute_count = args.recompute or {"full": 4, "quick": 2, "smoke": 1}[mode]
    params = sample_on_disk("sample_64" if mode == "smoke" else "sample", tiny_overrides() if mode == "smoke" else None)
    cloudy = sorted(Path(params.data.root).glob("*_s2_cloudy/*/*.tif"))
    size = params.data.patch_size
    candidates = {
        "size + mtime (the old stamp)": _stat(cloudy),
        "SHA-256 of the file's bytes (the stamp)": _file_hash(cloudy, "sha256"),
        "MD5 of the file's bytes (DVC's hash)": _file_hash(cloudy, "md5"),
        "SHA-256 of the decoded pixels": _pixel_hash(cloudy),
        "recompute the masks": _recompute(cloudy[:recompute_count], list(params.masks.kinds)),
    }
    files = {name: len(cloudy) for name in candidates}
    files["recompute the masks"] = min(recompute_count, len(cloudy))
    times = interleaved(candidates, repeats)
    per_file = {name: median(values) / files[name] for name, values in times.items()}
    stored = sum(path.stat().st_size for path in cloudy) / len(cloudy)
    recompute = per_file["recompute the masks"]

    lines = [
        f"# Mask stamps: cost per cloudy patch of {size} x {size} px",
        "",
        f"`{command_line(NAME, argv)}`",
        "",
        machine_line(),
        "",
        f"{len(cloudy)} cloudy files of the synthetic sample ({stored / 1e6:.2f} MB each on average, deflate), "
        f"in the page cache; medians of {repeats} round(s), interleaved.",
        "",
        "| stamp or work | ms / file | spread | MB/s | / recompute | SEN12MS-CR, 1 core |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, seconds in per_file.items():
        reads_bytes = "bytes" in name or "pixels" in name
        rate = stored / seconds / 1e6 if reads_bytes else float("nan")
        projected = (f"{SEN12MSCR_CLOUDY_FILES * SEN12MSCR_CLOUDY_BYTES / (rate * 1e6) / 60:.0f} min"
                     if "bytes" in name else
                     f"{SEN12MSCR_CLOUDY_FILES * seconds / 3600:.1f} h" if "recompute" in name else "-")
        lines.append(f"| {name} | {seconds * 1e3:.3f} | {spread(times[name])} | "
                     f"{f'{rate:.0f}' if reads_bytes else '-'} | {seconds / recompute:.5f} | {projected} |")
    stamp = per_file["SHA-256 of the file's bytes (the stamp)"]
    lines += [
        "",
        f"The stamp costs {stamp / recompute:.5f} of recomputing "
        "a patch's masks. SEN12MS-CR column: the byte hashes at this MB/s over its ~122,000 uncompressed cloudy "
        "files (1.70 MB each; the disk may be slower than the page cache), the recompute at this time per "
        "patch.",
    ]
    text = "\n".join(lines) + "\n"
    write_report(text, results_path(NAME, mode, args.out))
    return text


if __name__ == "__main__":
    main()
