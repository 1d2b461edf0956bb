"""s2cloudless at 60 m against 10 m: agreement of the masks and the speed ratio (``--mask s2cloudless-60m``).

    python -m benchmarks.mask_resolution            # the 40 cloudy patches of the embedded default + 3 scenes of 1024 px
    python -m benchmarks.mask_resolution --quick    # 12 patches, 1 scene of 768 px, 1 timed round
    python -m benchmarks.mask_resolution --smoke    # CI: 3 patches of 64 px, 1 scene of 192 px

At 10 m, s2cloudless's classifier runs on every pixel, as the benchmark's masks were
made (``sscr.clouds.detect.compute_masks``). At 60 m
(``sscr.data.scene_masks.compute_masks_at(..., 60)``) it runs on 6 x 6 block means of the
DN, its probability is upsampled bilinearly to 10 m and the benchmark's post-processing
(disk average r=4 + threshold 0.4 + dilation r=2 for ``s2cloudless_mask``; floor 0.5 + Gaussian
sigma 2 for ``s2cloudless_map``) runs at 10 m. Inputs: the cloudy S2 of the embedded default
sample (``sscr.data.synth.synth_patch`` of its 40 patch ids, the same arrays ``sscr data synth``
writes) and whole synthetic scenes generated the same way at a larger size; the generator's
true cloud mask is scored too. One LightGBM thread (the mask stage's setting).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks._common import (
    command_line,
    default_params,
    interleaved,
    machine_line,
    median,
    mode_of,
    results_path,
    spread,
    write_report,
)

NAME = "mask_resolution"
KINDS = ["s2cloudless_mask", "s2cloudless_map"]
PARTLY_CLOUDY = (0.05, 0.95)


@dataclass
class Agreement:
    """Pixel counts pooled over images: 60 m against 10 m, and each against the generator's truth."""

    images: int = 0
    pixels: int = 0
    cloudy_10: int = 0
    cloudy_60: int = 0
    both: int = 0
    either: int = 0
    same: int = 0
    probability_abs: float = 0.0
    map_abs: float = 0.0
    truth: dict[str, list[int]] = field(default_factory=lambda: {"10 m": [0, 0, 0], "60 m": [0, 0, 0]})
    """Per resolution: intersection, union and agreeing pixels with the true cloud mask."""

    def add(self, fine: dict[str, np.ndarray], coarse: dict[str, np.ndarray], cloud: np.ndarray) -> None:
        a, b = fine["s2cloudless_mask"] > 0, coarse["s2cloudless_mask"] > 0
        self.images += 1
        self.pixels += a.size
        self.cloudy_10 += int(a.sum())
        self.cloudy_60 += int(b.sum())
        self.both += int((a & b).sum())
        self.either += int((a | b).sum())
        self.same += int((a == b).sum())
        self.probability_abs += float(np.abs(fine["probability"] - coarse["probability"]).sum())
        self.map_abs += float(np.abs(fine["s2cloudless_map"] - coarse["s2cloudless_map"]).sum())
        truth = cloud > 0
        for key, mask in (("10 m", a), ("60 m", b)):
            counts = self.truth[key]
            counts[0] += int((mask & truth).sum())
            counts[1] += int((mask | truth).sum())
            counts[2] += int((mask == truth).sum())

    def row(self, name: str) -> str:
        iou = self.both / self.either if self.either else 1.0
        return (f"| {name} | {self.images} | {self.pixels / 1e6:.2f} | {100 * self.cloudy_10 / self.pixels:.1f}% | "
                f"{100 * self.cloudy_60 / self.pixels:.1f}% | {iou:.3f} | {100 * self.same / self.pixels:.1f}% | "
                f"{self.probability_abs / self.pixels:.4f} | {self.map_abs / self.pixels:.4f} |")

    def truth_row(self, name: str) -> str:
        cells = []
        for key in ("10 m", "60 m"):
            both, either, same = self.truth[key]
            cells += [f"{both / either if either else 1.0:.3f}", f"{100 * same / self.pixels:.1f}%"]
        return f"| {name} | {' | '.join(cells)} |"


def both_resolutions(dn: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The probability, binary mask and map at 10 m and at 60 m of one (13, H, W) DN image."""
    from sscr.clouds.detect import masks_from_probability, s2cloudless_probability
    from sscr.data.scene_masks import s2cloudless_probability_coarse

    out = []
    for probability in (s2cloudless_probability(dn), s2cloudless_probability_coarse(dn)):
        masks = masks_from_probability(probability, KINDS)
        masks["probability"] = probability
        out.append(masks)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="12 patches, 1 scene of 768 px, 1 timed round")
    parser.add_argument("--smoke", action="store_true", help="CI: 3 patches of 64 px, 1 scene of 192 px")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds over the patches (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    mode = mode_of(args.quick, args.smoke)
    repeats = args.repeats or {"full": 3, "quick": 1, "smoke": 1}[mode]

    from sscr.data.scene_masks import compute_masks_at
    from sscr.data.synth import sample_patch_ids, synth_patch
    from sscr.layout import PatchId

    started = time.perf_counter()
    params = default_params()
    patch_size = {"full": params.data.patch_size, "quick": params.data.patch_size, "smoke": 64}[mode]
    pids = sorted(pid for split in sample_patch_ids(params.data.synth).values() for pid in split)
    pids = pids[: {"full": len(pids), "quick": 12, "smoke": 3}[mode]]
    scene_size = {"full": 1024, "quick": 768, "smoke": 192}[mode]
    scene_ids = [PatchId("ROIs1158_spring", 900, 1), PatchId("ROIs1868_summer", 901, 1),
                 PatchId("ROIs1970_fall", 902, 1)][: {"full": 3, "quick": 1, "smoke": 1}[mode]]

    print(f"generating {len(pids)} patches of {patch_size} px and {len(scene_ids)} scene(s) of {scene_size} px ...",
          flush=True)
    patches = [synth_patch(pid, patch_size, params.data.synth.seed) for pid in pids]
    scenes = [synth_patch(pid, scene_size, seed=11) for pid in scene_ids]

    print("scoring agreement ...", flush=True)
    every, partly, whole = Agreement(), Agreement(), Agreement()
    for patch in patches:
        fine, coarse = both_resolutions(patch["s2_cloudy"])
        every.add(fine, coarse, patch["cloud"])
        if PARTLY_CLOUDY[0] < (fine["s2cloudless_mask"] > 0).mean() < PARTLY_CLOUDY[1]:
            partly.add(fine, coarse, patch["cloud"])
    scene_seconds: dict[str, list[float]] = {"10 m": [], "60 m": []}
    for scene in scenes:
        for key, resolution in (("10 m", 10), ("60 m", 60)):
            tic = time.perf_counter()
            compute_masks_at(scene["s2_cloudy"], KINDS, resolution, threads=1)
            scene_seconds[key].append(time.perf_counter() - tic)
        fine, coarse = both_resolutions(scene["s2_cloudy"])
        whole.add(fine, coarse, scene["cloud"])

    print(f"timing both resolutions over the {len(patches)} patches, {repeats} round(s) ...", flush=True)
    candidates = {
        f"{resolution} m": (lambda resolution=resolution: [
            compute_masks_at(patch["s2_cloudy"], KINDS, resolution, threads=1) for patch in patches])
        for resolution in (10, 60)
    }
    times = interleaved(candidates, repeats, warmup=0)
    per_patch = {key: median(values) / len(patches) for key, values in times.items()}
    per_scene = {key: median(values) for key, values in scene_seconds.items()}

    header = ("| images | n | Mpx | cloudy at 10 m | cloudy at 60 m | IoU 60 m vs 10 m | pixels that agree | "
              "probability MAE | map MAE |")
    text = "\n".join([
        "# s2cloudless at 60 m against 10 m",
        "",
        f"Command: `{command_line(NAME, argv)}` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.perf_counter() - started) / 60:.0f} min). Machine: {machine_line()}.",
        f"Inputs: the cloudy S2 of {len(patches)} patches of {patch_size} px of the embedded default sample (seed "
        f"{params.data.synth.seed}) and {len(scenes)} synthetic scene(s) of {scene_size} px generated the same way "
        f"(seed 11). Binary masks: `s2cloudless_mask`; IoU and agreement pooled over all pixels of the set; "
        f"MAE of the raw probability and of `s2cloudless_map` (both in [0, 1]). \"Partly cloudy\": "
        f"{PARTLY_CLOUDY[0]:.0%} to {PARTLY_CLOUDY[1]:.0%} of the patch cloudy at 10 m, where the masks' edges matter.",
        "",
        "## Agreement of the 60 m mask with the 10 m mask",
        "",
        header,
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        every.row("sample patches, all"),
        partly.row("sample patches, partly cloudy"),
        whole.row(f"scenes of {scene_size} px"),
        "",
        "## Against the generator's true cloud mask (opacity >= 0.15)",
        "",
        "| images | IoU at 10 m | agree at 10 m | IoU at 60 m | agree at 60 m |",
        "| --- | ---: | ---: | ---: | ---: |",
        every.truth_row("sample patches, all"),
        partly.truth_row("sample patches, partly cloudy"),
        whole.truth_row(f"scenes of {scene_size} px"),
        "",
        "## Time (one LightGBM thread; probability + binary mask + map)",
        "",
        "| input | 10 m | 60 m | speed-up |",
        "| --- | ---: | ---: | ---: |",
        f"| {patch_size} px patch, ms (median of {repeats} round(s) over {len(patches)} patches, interleaved, "
        f"spread {spread(times['10 m'])} / {spread(times['60 m'])}) | {1000 * per_patch['10 m']:,.1f} | "
        f"{1000 * per_patch['60 m']:,.1f} | {per_patch['10 m'] / per_patch['60 m']:.1f}x |",
        f"| {scene_size} px scene, s (median of {len(scenes)} scene(s), one run each) | {per_scene['10 m']:,.2f} | "
        f"{per_scene['60 m']:,.2f} | {per_scene['10 m'] / per_scene['60 m']:.1f}x |",
        "",
    ])
    write_report(text, results_path(NAME, mode, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
