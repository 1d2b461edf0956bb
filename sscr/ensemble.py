"""Deep ensembles: several models' predictions of one grid -> mean prediction and epistemic variance.

Each member is a prediction GeoTIFF as ``sscr evaluate`` exports it (13 bands,
uint16 DN, possibly followed by ``<band>_std`` bands of the model's own,
aleatoric, uncertainty, which the ensemble ignores) or as ``sscr infer``
writes it. The mean over members is written as uint16 DN; the variance over
members (population variance, of reflectance in [0, 1]) as float32: the
disagreement between independently trained models, i.e. epistemic
uncertainty. Files are processed block by block through windows, so memory
does not depend on the scene size, and written under a temporary name then
renamed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from sscr.bands import S2_BANDS, S2_DN_MAX
from sscr.data.cog import GDAL_CACHE_BYTES
from sscr.data.io import PatchError, denormalize_s2
from sscr.fsutil import atomic_path

BLOCK = 256
"""Side of the windows processed at a time and of the output GeoTIFF blocks."""


@dataclass
class EnsembleResult:
    """The files one :func:`ensemble` call wrote and what went into them."""

    mean_path: Path
    var_path: Path
    members: list[Path]
    size: tuple[int, int]
    """(width, height) in px."""
    seconds: float


def _check_members(datasets: list[Any]) -> None:
    """Every member: >= 13 bands of uint16 DN on the first member's grid; PatchError naming the odd one."""
    first = datasets[0]
    for dataset in datasets:
        if dataset.count < len(S2_BANDS):
            raise PatchError(dataset.name, f"prediction has {dataset.count} bands, expected at least "
                                           f"{len(S2_BANDS)} ({' '.join(S2_BANDS)} as uint16 DN)")
        if dataset.dtypes[0] != "uint16":
            raise PatchError(dataset.name, f"prediction is {dataset.dtypes[0]}, expected uint16 DN "
                                           "(as written by `sscr evaluate` or `sscr infer`)")
        names = dataset.descriptions[: len(S2_BANDS)]
        if all(names) and tuple(names) != S2_BANDS:
            raise PatchError(dataset.name, f"the first {len(S2_BANDS)} bands are {', '.join(names)}, expected {', '.join(S2_BANDS)}")
        if dataset is first:
            continue
        if (dataset.width, dataset.height) != (first.width, first.height):
            raise PatchError(dataset.name, f"prediction is {dataset.width} x {dataset.height} px, but {first.name} "
                                           f"is {first.width} x {first.height} px: ensemble members must share a grid")
        if dataset.crs != first.crs:
            raise PatchError(dataset.name, f"prediction has CRS {dataset.crs}, but {first.name} has {first.crs}: "
                                           "ensemble members must share a grid")
        if not dataset.transform.almost_equals(first.transform, precision=1e-6 * max(abs(first.transform.a), 1.0)):
            raise PatchError(dataset.name, f"prediction transform {tuple(dataset.transform)[:6]} differs from "
                                           f"{first.name} {tuple(first.transform)[:6]}: ensemble members must "
                                           "share a grid")


def _windows(width: int, height: int, block: int) -> list[Window]:
    return [Window(col, row, min(block, width - col), min(block, height - row))
            for row in range(0, height, block) for col in range(0, width, block)]


def ensemble(prediction_paths: Sequence[str | Path], out_mean: str | Path, out_var: str | Path,
             block: int = BLOCK) -> EnsembleResult:
    """Mean (uint16 DN) and variance across members (float32, reflectance units) of >= 2 prediction GeoTIFFs.

    Only the first 13 bands of each member are used (extra ``*_std`` bands are
    ignored). Members must share size, CRS and transform; outputs keep them.
    """
    members = [Path(path) for path in prediction_paths]
    out_mean, out_var = Path(out_mean), Path(out_var)
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 prediction files, got {len(members)}")
    if block < 16 or block % 16:
        raise ValueError(f"block must be a positive multiple of 16, got {block}")
    for path in members:
        if not path.is_file():
            raise FileNotFoundError(f"prediction {path} does not exist")
    if {out_mean.resolve(), out_var.resolve()} & {path.resolve() for path in members} or out_mean == out_var:
        raise ValueError(f"outputs {out_mean}, {out_var} must differ from each other and from the members")

    started = time.perf_counter()
    bands = list(range(1, len(S2_BANDS) + 1))
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), contextlib.ExitStack() as inputs:
        datasets = [inputs.enter_context(rasterio.open(path)) for path in members]
        _check_members(datasets)
        first = datasets[0]
        profile = {
            "driver": "GTiff", "width": first.width, "height": first.height, "crs": first.crs,
            "transform": first.transform, "tiled": True, "blockxsize": block, "blockysize": block,
            "compress": "deflate", "BIGTIFF": "IF_SAFER", "count": len(S2_BANDS),
        }
        nodata = {dataset.nodata for dataset in datasets}
        # The variance is put in place first, so a mean file that exists has its variance beside it.
        with atomic_path(out_mean) as mean_tmp, atomic_path(out_var) as var_tmp, \
                rasterio.open(mean_tmp, "w", dtype="uint16", predictor=2,
                              nodata=nodata.pop() if len(nodata) == 1 else None, **profile) as mean_out, \
                rasterio.open(var_tmp, "w", dtype="float32", predictor=3, **profile) as var_out:
            for index, name in enumerate(S2_BANDS, start=1):
                mean_out.set_band_description(index, name)
                var_out.set_band_description(index, f"{name}_var")
            for window in _windows(first.width, first.height, block):
                stack = np.stack([dataset.read(bands, window=window) for dataset in datasets])
                reflectance = stack.astype(np.float64) / S2_DN_MAX
                mean_out.write(denormalize_s2(reflectance.mean(axis=0)), window=window)
                var_out.write(reflectance.var(axis=0).astype(np.float32), window=window)
    return EnsembleResult(out_mean, out_var, members, (first.width, first.height), time.perf_counter() - started)


def ensemble_dirs(dirs: Sequence[str | Path], out_dir: str | Path, pattern: str = "*.tif",
                  allow_missing: bool = False) -> list[EnsembleResult]:
    """Ensemble the files of the same name across several models' ``export/`` directories.

    Writes ``out_dir/mean/<name>`` and ``out_dir/var/<name>``. A name missing from some
    directory is an error naming it, unless ``allow_missing`` (then only names present
    in every directory are ensembled).
    """
    dirs = [Path(directory) for directory in dirs]
    out_dir = Path(out_dir)
    if len(dirs) < 2:
        raise ValueError(f"an ensemble needs at least 2 prediction directories, got {len(dirs)}")
    names: dict[Path, set[str]] = {}
    for directory in dirs:
        if not directory.is_dir():
            raise FileNotFoundError(f"prediction directory {directory} does not exist")
        names[directory] = {path.name for path in directory.glob(pattern) if path.is_file()}
    common = set.intersection(*names.values())
    every = set.union(*names.values())
    if not common:
        raise ValueError(f"no file matching {pattern!r} is present in all of {', '.join(map(str, dirs))}")
    if every != common and not allow_missing:
        gaps = [f"{directory} lacks {len(every - found)} (e.g. {sorted(every - found)[0]})"
                for directory, found in names.items() if every - found]
        raise ValueError(f"the directories hold different predictions: {'; '.join(gaps)}; export the same samples "
                         "from every model, or pass allow_missing to ensemble only the shared ones")
    return [
        ensemble([directory / name for directory in dirs], out_dir / "mean" / name, out_dir / "var" / name)
        for name in sorted(common)
    ]
