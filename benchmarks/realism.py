"""How real is the synthetic sample? Its statistics against real SEN12MS-CR patches, and the champion on them.

    python -m benchmarks.realism                     # 32 synthetic patches vs every fetched real patch
    python -m benchmarks.realism --quick             # 12 synthetic patches
    python -m benchmarks.realism --smoke             # CI: 64 px, synthetic stand-ins for the real files
    python -m benchmarks.realism --before FILE.json  # add the columns of an earlier run (before a change)
    python -m benchmarks.realism --checkpoint results/sscr/model_best.pt   # + the model on the real pairs
    python -m benchmarks.realism --checkpoint results/sscr/model_best.pt --model-only   # realism_model.md only

The real patches are the public ones of :mod:`benchmarks._real_patches` (fetched into the git-ignored
cache; ``--mirror`` copies them from local git mirrors). Both sides go through the same code:

- **clear S2 by land cover**: every clear-sky pixel is classed from its own spectrum (snow: NDSI > 0.4
  and B3 > 0.25; water: NDWI > 0 and B8 < 0.15; dense vegetation: NDVI > 0.6; sparse vegetation:
  NDVI > 0.3; the rest bare soil or built-up), then per class the share of pixels, the mean TOA
  reflectance of B2, B3, B4, B8, B11, B12 and the mean 3 x 3 local standard deviation of B8 (texture);
- **thick-cloud spectrum**: mean TOA reflectance of pixels with s2cloudless probability >= 0.9
  and B2 >= 0.3, all 13 bands;
- **shadow spectrum**: per band, cloudy / clear reflectance inside :func:`sscr.metrics.shadow_region`
  (darker by 30 % or more than the image's usual cloudy/clear ratio, outside the clouds);
- **cloud edges**: the cloud region is ``s2cloudless_map >= 0.5`` (what the metrics and the model
  call cloud); per distance d from its edge (px, negative inside) the median of cloudy - clear in B2,
  as a share of the median 8 px and more inside: how far the haze reaches beyond the mask;
- **SAR**: per class (from the co-located S2: the clear S2, or the cloudy S2 where its cloud
  probability is below 0.1) the median VV and VH in dB; the speckle's equivalent number of looks
  (ENL = 1 / CV^2 of linear power over 7 x 7 windows, the median of the 10 % most homogeneous
  windows) and the correlation of neighbouring pixels of the dB image minus its 7 x 7 mean.

``--checkpoint`` scores a model on every real cloudy/clear pair (PSNR and SAM overall, inside clouds,
in shadows, in the 5 px ring around clouds) against the cloudy input, with the cloud mask the model
was trained with; the public copies of these pairs have no S1, so the model gets none (an all-NaN S1,
normalised to 0 as the data set's loader does).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from scipy import ndimage

from benchmarks._common import command_line, machine_line, mode_of, results_path, write_report

NAME = "realism"
CLASSES = ("water", "dense vegetation", "sparse vegetation", "bare / built-up", "snow")
CLASS_BANDS = ("B2", "B3", "B4", "B8", "B11", "B12")
SHADOW_SHOWN = ("B2", "B3", "B4", "B8", "B11", "B12")
EDGE_DISTANCES = (-4, -2, -1, 1, 2, 3, 5, 8, 12)
SYNTH_PATCHES = {"full": 32, "quick": 12, "smoke": 3}
THICK_PROBABILITY = 0.9
THICK_BLUE = 0.3
CLEAR_PROBABILITY = 0.1


@dataclass
class Pair:
    """A cloudy acquisition and (when known) its clear target and co-located S1, as reflectance / dB."""

    name: str
    cloudy: np.ndarray | None  # (13, H, W) reflectance
    clear: np.ndarray | None  # (13, H, W) reflectance
    s1: np.ndarray | None  # (2, H, W) dB


def band(name: str) -> int:
    """Index of an S2 band name in the 13-band stack."""
    from sscr.bands import S2_BANDS

    return S2_BANDS.index(name)


# ---------------------------------------------------------------- inputs


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def load_real(root: Path) -> list[Pair]:
    """Every patch under ``root`` (SEN12MS-CR layout), grouped by patch: S2 as reflectance, S1 in dB."""
    groups: dict[str, dict[str, Path]] = {}
    for path in sorted(root.glob("*/*/*.tif")):
        for modality in ("s2_cloudy", "s2", "s1"):
            marker = f"_{modality}_"
            if marker in path.name:
                groups.setdefault(path.name.replace(marker, "_"), {})[modality] = path
                break
    pairs = []
    for name, files in sorted(groups.items()):
        pairs.append(Pair(
            name.removesuffix(".tif"),
            _read(files["s2_cloudy"]).astype(np.float64) / 1e4 if "s2_cloudy" in files else None,
            _read(files["s2"]).astype(np.float64) / 1e4 if "s2" in files else None,
            _read(files["s1"]).astype(np.float64) if "s1" in files else None,
        ))
    return pairs


def synthetic_pairs(count: int, patch_size: int, seed: int = 0) -> list[Pair]:
    """``count`` patches of the embedded default sample (spread over its splits), generated in memory."""
    from sscr.config import SynthConfig
    from sscr.data.synth import sample_patch_ids, synth_patch

    ids = sample_patch_ids(SynthConfig(seed=seed, rois={"train": 12, "val": 2, "test": 2}, patches_per_roi=4))
    every = sorted(pid for split in ids.values() for pid in split)
    chosen = [every[int(i)] for i in np.linspace(0, len(every) - 1, count).round()]
    pairs = []
    for pid in chosen:
        arrays = synth_patch(pid, patch_size, seed)
        pairs.append(Pair(pid.name, arrays["s2_cloudy"] / 1e4, arrays["s2"] / 1e4,
                          arrays["s1"].astype(np.float64)))
    return pairs


# ---------------------------------------------------------------- statistics


def land_classes(reflectance: np.ndarray) -> np.ndarray:
    """(H, W) index into :data:`CLASSES` of every pixel, from its own spectrum."""
    blue, green, red, nir, swir = (reflectance[band(b)] for b in ("B2", "B3", "B4", "B8", "B11"))
    del blue

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return (a - b) / np.maximum(a + b, 1e-6)

    ndvi, ndwi, ndsi = ratio(nir, red), ratio(green, nir), ratio(green, swir)
    classes = np.full(red.shape, 3, np.int8)
    classes[ndvi > 0.3] = 2
    classes[ndvi > 0.6] = 1
    classes[(ndwi > 0.0) & (nir < 0.15)] = 0
    classes[(ndsi > 0.4) & (green > 0.25)] = 4
    return classes


def clear_statistics(images: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
    """Per class: share of pixels, mean reflectance of :data:`CLASS_BANDS`, mean 3 x 3 std of B8."""
    values: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}
    textures: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}
    for image in images:
        classes = land_classes(image)
        nir = image[band("B8")]
        local = np.sqrt(np.maximum(ndimage.uniform_filter(nir**2, 3) - ndimage.uniform_filter(nir, 3) ** 2, 0))
        for index, name in enumerate(CLASSES):
            where = classes == index
            values[name].append(image[:, where])
            textures[name].append(local[where])
    total = sum(v.shape[1] for vs in values.values() for v in vs)
    out: dict[str, dict[str, float]] = {}
    for name in CLASSES:
        pixels = np.concatenate(values[name], axis=1)
        entry = {"share": pixels.shape[1] / max(total, 1)}
        if pixels.shape[1] >= 100:
            entry.update({b: float(pixels[band(b)].mean()) for b in CLASS_BANDS})
            entry["B8 texture"] = float(np.concatenate(textures[name]).mean())
        out[name] = entry
    return out


def cloud_maps(pairs: Sequence[Pair]) -> list[dict[str, np.ndarray]]:
    """s2cloudless probability and map of every pair's cloudy image."""
    from sscr.clouds.detect import _map_from_probability, s2cloudless_probability

    maps = []
    for pair in pairs:
        probability = s2cloudless_probability(pair.cloudy * 1e4)
        maps.append({"probability": probability, "map": _map_from_probability(probability)})
    return maps


def thick_cloud_spectrum(pairs: Sequence[Pair], maps: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Mean TOA reflectance of thick-cloud pixels, all 13 bands (+ their pixel count)."""
    from sscr.bands import S2_BANDS

    pixels = [pair.cloudy[:, (m["probability"] >= THICK_PROBABILITY) & (pair.cloudy[band("B2")] >= THICK_BLUE)]
              for pair, m in zip(pairs, maps, strict=True)]
    stack = np.concatenate(pixels, axis=1) if pixels else np.zeros((13, 0))
    if stack.shape[1] < 100:
        return {"pixels": float(stack.shape[1])}
    return {"pixels": float(stack.shape[1]), **{b: float(stack[i].mean()) for i, b in enumerate(S2_BANDS)}}


def shadow_statistics(pairs: Sequence[Pair], maps: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Cloudy / clear per band inside the shadows (:func:`sscr.metrics.shadow_region`), and their share."""
    import torch

    from sscr.metrics import shadow_region

    ratios, shadow_pixels, cloud_pixels = [], 0, 0
    for pair, m in zip(pairs, maps, strict=True):
        if pair.clear is None:
            continue
        shadow = shadow_region(torch.from_numpy(pair.cloudy), torch.from_numpy(pair.clear),
                               torch.from_numpy(m["map"]))[0].numpy()
        shadow_pixels += int(shadow.sum())
        cloud_pixels += int((m["map"] >= 0.5).sum())
        if shadow.any():
            ratios.append(pair.cloudy[:, shadow] / np.maximum(pair.clear[:, shadow], 1e-3))
    out = {"shadow / cloud pixels": shadow_pixels / max(cloud_pixels, 1), "pixels": float(shadow_pixels)}
    if shadow_pixels >= 100:
        stack = np.concatenate(ratios, axis=1)
        out.update({b: float(np.median(stack[band(b)])) for b in SHADOW_SHOWN})
    return out


def edge_profile(pairs: Sequence[Pair], maps: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Median cloudy - clear B2 by distance from the cloud edge, as a share of the cloud interior's."""
    by_distance: dict[int, list[np.ndarray]] = {d: [] for d in EDGE_DISTANCES}
    interior: list[np.ndarray] = []
    map_at: dict[int, list[np.ndarray]] = {d: [] for d in EDGE_DISTANCES}
    for pair, m in zip(pairs, maps, strict=True):
        cloud = m["map"] >= 0.5
        if pair.clear is None or not 0.02 <= cloud.mean() <= 0.9:
            continue
        inside = ndimage.distance_transform_edt(cloud)
        outside = ndimage.distance_transform_edt(~cloud)
        signed = np.where(cloud, -np.ceil(inside - 0.5), np.ceil(outside - 0.5)).astype(int)
        excess = pair.cloudy[band("B2")] - pair.clear[band("B2")]
        interior.append(excess[signed <= -8])
        for d in EDGE_DISTANCES:
            by_distance[d].append(excess[signed == d])
            map_at[d].append(m["map"][signed == d])
    if not interior or np.concatenate(interior).size < 100:
        return {}
    core = float(np.median(np.concatenate(interior)))
    out = {"interior B2 excess": core}
    for d in EDGE_DISTANCES:
        out[f"{d:+d} px"] = float(np.median(np.concatenate(by_distance[d]))) / core
        out[f"map {d:+d} px"] = float(np.median(np.concatenate(map_at[d])))
    return out


def sar_statistics(pairs: Sequence[Pair], maps: Sequence[dict[str, np.ndarray]] | None) -> dict[str, float]:
    """VV and VH median dB per class; ENL of the speckle; neighbour correlation of the dB residual."""
    per_class: dict[str, list[np.ndarray]] = {c: [] for c in CLASSES}
    enl, correlation = [], []
    for index, pair in enumerate(pairs):
        if pair.s1 is None:
            continue
        optical, usable = pair.clear, None
        if optical is None and pair.cloudy is not None and maps is not None:
            optical, usable = pair.cloudy, maps[index]["probability"] < CLEAR_PROBABILITY
        s1 = pair.s1
        finite = np.isfinite(s1).all(axis=0)
        if optical is not None:
            classes = land_classes(optical)
            keep = finite if usable is None else finite & usable
            for c, name in enumerate(CLASSES):
                per_class[name].append(s1[:, keep & (classes == c)])
        for polarisation in range(2):
            db = np.where(finite, s1[polarisation], np.nanmedian(s1[polarisation]))
            power = 10.0 ** (db / 10.0)
            mean = ndimage.uniform_filter(power, 7)
            var = np.maximum(ndimage.uniform_filter(power**2, 7) - mean**2, 1e-12)
            looks = (mean**2 / var)[3:-3, 3:-3].ravel()
            enl.append(float(np.median(np.sort(looks)[-max(1, looks.size // 10):])))
            residual = (db - ndimage.uniform_filter(db, 7))[3:-3, 3:-3]
            correlation.append(float(np.corrcoef(residual[:, 1:].ravel(), residual[:, :-1].ravel())[0, 1]))
    out: dict[str, float] = {}
    for name in CLASSES:
        values = np.concatenate(per_class[name], axis=1) if per_class[name] else np.zeros((2, 0))
        if values.shape[1] >= 100:
            out[f"VV {name}"] = float(np.median(values[0]))
            out[f"VH {name}"] = float(np.median(values[1]))
    if enl:
        out["ENL (homogeneous 10 %)"] = float(np.mean(enl))
        out["neighbour correlation of speckle"] = float(np.mean(correlation))
    return out


def measure(pairs: Sequence[Pair]) -> dict[str, Any]:
    """Every statistic of :data:`__doc__` for one set of pairs."""
    cloudy = [p for p in pairs if p.cloudy is not None]
    maps = cloud_maps(cloudy)
    index = {id(p): i for i, p in enumerate(cloudy)}
    sar_maps = [maps[index[id(p)]] if id(p) in index else {} for p in pairs]
    return {
        "n_clear": sum(p.clear is not None for p in pairs),
        "n_cloudy": len(cloudy),
        "n_s1": sum(p.s1 is not None for p in pairs),
        "clear": clear_statistics([p.clear for p in pairs if p.clear is not None]),
        "cloud": thick_cloud_spectrum(cloudy, maps),
        "shadow": shadow_statistics(cloudy, maps),
        "edge": edge_profile(cloudy, maps),
        "sar": sar_statistics(pairs, sar_maps),
    }


# ---------------------------------------------------------------- the model on real pairs


def score_model(checkpoint: Path, pairs: Sequence[Pair]) -> dict[str, dict[str, float]]:
    """The model and the cloudy input on every pair with a clear target: mean metrics per region."""
    import torch

    from sscr.checkpoint import build_from_checkpoint
    from sscr.data.io import normalize_s1
    from sscr.metrics import MetricAccumulator, cloud_metrics
    from sscr.models import for_inference
    from sscr.predict import cloud_probability, predict_tensors

    model, state = build_from_checkpoint(checkpoint)
    model = for_inference(model, torch.device("cpu"))
    kind = ((state.get("config") or {}).get("masks") or {}).get("use", "s2cloudless_map")
    scored = {"model": MetricAccumulator(), "cloudy input": MetricAccumulator()}
    for pair in pairs:
        if pair.cloudy is None or pair.clear is None:
            continue
        cloudy = np.clip(pair.cloudy, 0, 1).astype(np.float32)[None]
        mask = cloud_probability(cloudy, kind)
        s1 = pair.s1 if pair.s1 is not None else np.full((2, *cloudy.shape[-2:]), np.nan)
        sar = normalize_s1(s1.astype(np.float32))[None]
        pred = predict_tensors(model, torch.from_numpy(cloudy), torch.from_numpy(sar), torch.from_numpy(mask))
        target, cloudy_t = torch.from_numpy(pair.clear.astype(np.float32))[None], torch.from_numpy(cloudy)
        for name, image in (("model", pred["mean"]), ("cloudy input", cloudy_t)):
            scored[name].add_batch(cloud_metrics(target, image, torch.from_numpy(mask), cloudy=cloudy_t))
    return {name: acc.mean() for name, acc in scored.items()} | {"mask": {"kind": kind},
                                                                 "counts": scored["model"].count()}


# ---------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _columns(results: dict[str, Any], before: dict[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    columns = [("real", results["real"]), ("synthetic", results["synthetic"])]
    if before is not None:
        columns.insert(1, ("synthetic before", before["synthetic"]))
    return columns


def _table(rows: list[tuple[str, list[str]]], header: list[str]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += ["| " + " | ".join([label, *cells]) + " |" for label, cells in rows]
    return lines


def report(results: dict[str, Any], before: dict[str, Any] | None, command: str, mode: str) -> str:
    """The markdown report."""
    from benchmarks._real_patches import DATASET_LICENCE, provenance_table

    columns = _columns(results, before)
    names = [name for name, _ in columns]
    real = results["real"]
    lines = [f"# Realism of the synthetic sample against real SEN12MS-CR patches ({mode})", "", f"`{command}`", "",
             machine_line(), "",
             f"Real: {real['n_clear']} clear and {real['n_cloudy']} cloudy S2 patches, {real['n_s1']} S1 patches "
             f"({results['real_source']}); synthetic: {results['synthetic']['n_cloudy']} patches of the embedded "
             "default sample (seed 0, spread over its splits). Imagery: " + DATASET_LICENCE + ".", ""]
    if results.get("real_source", "").startswith("smoke"):
        lines += ["**Smoke run: the 'real' column is a synthetic stand-in (seed 1), not real data.**", ""]
    else:
        lines += [provenance_table(), ""]

    lines += ["## Clear S2 by land cover (TOA reflectance; share of pixels; B8 3 x 3 std)", ""]
    rows = []
    for name in CLASSES:
        for key in ("share", *CLASS_BANDS, "B8 texture"):
            rows.append((f"{name}: {key}", [_fmt(col["clear"][name].get(key)) for _, col in columns]))
    lines += _table(rows, ["class: statistic", *names]) + [""]

    lines += [f"## Thick clouds (s2cloudless >= {THICK_PROBABILITY}, B2 >= {THICK_BLUE}): mean TOA reflectance", ""]
    from sscr.bands import S2_BANDS

    rows = [("pixels", [_fmt(col["cloud"].get("pixels"), 0) for _, col in columns])]
    rows += [(b, [_fmt(col["cloud"].get(b)) for _, col in columns]) for b in S2_BANDS]
    lines += _table(rows, ["band", *names]) + [""]

    lines += ["## Cloud shadows: cloudy / clear reflectance inside them (median); their extent", ""]
    rows = [("shadow pixels / cloud pixels", [_fmt(col["shadow"].get("shadow / cloud pixels")) for _, col in columns])]
    rows += [(b, [_fmt(col["shadow"].get(b)) for _, col in columns]) for b in SHADOW_SHOWN]
    lines += _table(rows, ["band", *names]) + [""]

    lines += ["## Cloud edges: cloudy - clear in B2 by distance from the mask edge (share of the interior's), "
              "and the s2cloudless_map there", ""]
    rows = [("interior B2 excess (reflectance)", [_fmt(col["edge"].get("interior B2 excess")) for _, col in columns])]
    for d in EDGE_DISTANCES:
        rows.append((f"{d:+d} px: excess / interior", [_fmt(col["edge"].get(f"{d:+d} px")) for _, col in columns]))
    for d in EDGE_DISTANCES:
        rows.append((f"{d:+d} px: s2cloudless_map", [_fmt(col["edge"].get(f"map {d:+d} px")) for _, col in columns]))
    lines += _table(rows, ["distance (px, < 0 inside)", *names]) + [""]

    lines += ["## SAR: median backscatter (dB) by land cover of the co-located S2; speckle", ""]
    keys = [f"{pol} {name}" for name in CLASSES for pol in ("VV", "VH")]
    keys += ["ENL (homogeneous 10 %)", "neighbour correlation of speckle"]
    rows = [(key, [_fmt(col["sar"].get(key), 2) for _, col in columns]) for key in keys]
    lines += _table(rows, ["statistic", *names]) + [""]

    if "model" in results:
        lines += _model_table(results["model"], results["checkpoint"], real["n_clear"])
    return "\n".join(lines) + "\n"


def _model_table(scored: dict[str, Any], checkpoint: str | Path, pairs: int) -> list[str]:
    lines = [f"## The model on the real pairs ({checkpoint})", "",
             f"{pairs} real pairs with a clear target (every cloudy/clear pair fetched); mask "
             f"`{scored['mask']['kind']}` computed from the cloudy image; no S1 in the public copies of these pairs (the model gets none: NaN, "
             "normalised to 0 as the data set's loader does). Mean over images of each image's metric on the region "
             "(an image without pixels in a region is left out of that region's mean; images per region in the last "
             "column).", ""]
    rows = []
    for key, label in (("PSNR", "PSNR overall (dB)"), ("SAM", "SAM overall (deg)"),
                       ("cloudy/PSNR", "PSNR inside clouds (dB)"), ("cloudy/SAM", "SAM inside clouds (deg)"),
                       ("shadow/PSNR", "PSNR in cloud shadows (dB)"),
                       ("ring/PSNR", "PSNR in the 5 px ring around clouds (dB)"),
                       ("clear/PSNR", "PSNR on clear pixels (dB)")):
        region = key.split("/")[0] if "/" in key else None
        count = scored.get("counts", {}).get(f"{region}/PSNR" if region else "PSNR")
        rows.append((label, [_fmt(scored["model"].get(key), 2), _fmt(scored["cloudy input"].get(key), 2),
                             "-" if count is None else str(count)]))
    return lines + _table(rows, ["metric", "model", "cloudy input", "images"]) + [""]


def model_report(scored: dict[str, Any], checkpoint: Path, pairs: Sequence[Pair], source: str, command: str,
                 mode: str) -> str:
    """The report of ``--model-only``: where the pairs come from and the model against the cloudy input."""
    from benchmarks._real_patches import DATASET_LICENCE, provenance_table

    n_pairs = sum(p.cloudy is not None and p.clear is not None for p in pairs)
    lines = [f"# The model on real SEN12MS-CR pairs ({mode})", "", f"`{command}`", "", machine_line(), "",
             f"Real pairs: {source}. Imagery: {DATASET_LICENCE}.", ""]
    if not source.startswith("smoke"):
        lines += [provenance_table(), ""]
    lines += _model_table(scored, checkpoint, n_pairs)
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Measure, print and write the report (and its JSON beside it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--mirror", type=Path, default=None, help="git mirrors to fetch the real patches from")
    parser.add_argument("--before", type=Path, default=None, help="JSON of an earlier run: its synthetic column")
    parser.add_argument("--checkpoint", type=Path, default=None, help="score this model on the real pairs")
    parser.add_argument("--model-only", action="store_true",
                        help="with --checkpoint: only score the model (report realism_model.md), no statistics")
    args = parser.parse_args(argv)
    mode = mode_of(args.quick, args.smoke)
    size = 64 if mode == "smoke" else 256
    if mode == "smoke":
        real_pairs, source = synthetic_pairs(2, size, seed=1), "smoke: synthetic stand-ins, seed 1"
    else:
        from benchmarks._real_patches import fetch

        real_pairs, source = load_real(fetch(mirror=args.mirror)), "public copies, see the table below"
    if args.model_only:
        if args.checkpoint is None:
            parser.error("--model-only needs --checkpoint")
        scored = score_model(args.checkpoint, real_pairs)
        path = results_path(f"{NAME}_model", mode, args.out)
        write_report(model_report(scored, args.checkpoint, real_pairs, source, command_line(NAME, argv), mode), path)
        path.with_suffix(".json").write_text(json.dumps(scored, indent=1, default=float))
        return
    results: dict[str, Any] = {"real": measure(real_pairs), "real_source": source,
                               "synthetic": measure(synthetic_pairs(SYNTH_PATCHES[mode], size))}
    if args.checkpoint is not None:
        results["model"] = score_model(args.checkpoint, real_pairs)
        results["checkpoint"] = str(args.checkpoint)
    before = json.loads(args.before.read_text()) if args.before else None
    path = results_path(NAME, mode, args.out)
    write_report(report(results, before, command_line(NAME, argv), mode), path)
    path.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
