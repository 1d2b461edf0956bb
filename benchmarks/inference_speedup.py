"""Before/after of the inference fixes the profile pointed at: channels-last weights, one tile per pass on CPU.

    python -m benchmarks.inference_speedup           # sscr_lite, 256 px tiles + a 1024 px scene, 5 rounds
    python -m benchmarks.inference_speedup --smoke   # CI: tiny U-Net, 64 px tiles, 256 px scene, 1 round

The profile (``torch.profiler`` over one ``sscr_lite`` forward on a 256 x 256 tile, table
below) puts half of the time in ``aten::mkldnn_convolution``. oneDNN runs those
convolutions faster on NHWC (channels-last) tensors than on the NCHW layout PyTorch
uses by default, and a convolution follows its weight's layout, so the fix is one call,
:func:`sscr.models.for_inference`, which every inference path uses (``sscr infer``,
``sscr evaluate``, the logged MLflow model). "before" is the model as built
(``model.eval()``); "after" is ``for_inference(model, "cpu")``. The same run showed a batch of
4 tiles costing more per tile than 1 (the working set of one 256 px tile fits the CPU's caches,
four do not), hence the second fix: ``infer_scene`` runs one tile per pass on CPU. Same weights, same inputs,
in the same process, interleaved round-robin; medians of the rounds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks._common import (
    command_line,
    interleaved,
    machine_line,
    median,
    mode_of,
    results_path,
    spread,
    write_report,
)

NAME = "inference_speedup"


def profile_table(model: object, inputs: dict, rows: int) -> str:
    """The top operators of one forward by own CPU time (``torch.profiler``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(**inputs)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{NAME}", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 512 px scene")
    parser.add_argument("--smoke", action="store_true", help="CI: tiny U-Net, 64 px tiles, 256 px scene, 1 round")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 3; smoke 1)")
    parser.add_argument("--out", type=Path, default=None, help="results file")
    args = parser.parse_args(argv)
    mode = mode_of(args.quick, args.smoke)
    repeats = args.repeats or {"full": 5, "quick": 3, "smoke": 1}[mode]

    import torch

    from benchmarks.scene_inference import CACHE, OVERLAP, scene_paths
    from sscr.infer import infer_scene
    from sscr.models import build_model, example_inputs, for_inference

    smoke = mode == "smoke"
    name, kwargs = ("mask_unet", {"encoder_widths": [8, 16]}) if smoke else ("sscr_lite", {})
    tile = 64 if smoke else 256
    scene = {"full": 1024, "quick": 512, "smoke": 256}[mode]
    started = time.perf_counter()
    torch.manual_seed(0)
    before = build_model(name, **kwargs).eval()
    after = for_inference(build_model(name, **kwargs), "cpu")
    after.load_state_dict(before.state_dict())

    candidates = {}
    batches = (1, 4)
    inputs = {}
    for batch in batches:
        inputs[batch] = {key: value.uniform_() for key, value in example_inputs(before, tile, tile, batch).items()}
        for label, model in (("before", before), ("after", after)):
            candidates[f"{label} b{batch}"] = (
                lambda model=model, batch=batch: torch.inference_mode()(model.forward)(**inputs[batch])
            )
    with torch.inference_mode():
        reference, got = before(**inputs[1]), after(**inputs[1])
    max_diff = max((reference[k] - got[k]).abs().max().item() for k in reference if reference[k] is not None)

    s2_path, s1_path = scene_paths(scene, smoke)
    # before: NCHW, 4 tiles per pass (the old default); after: NHWC, then also 1 tile per pass (the new CPU default).
    for label, model, batch in (("before", before, 4), ("after", after, 4), ("after1", after, 1)):
        out = CACHE / f"speedup_{label}_{scene}.tif"
        candidates[f"{label} scene"] = lambda model=model, out=out, batch=batch: infer_scene(
            model, s2_path, s1_path, out, tile=tile, overlap=OVERLAP if not smoke else 16, batch_size=batch,
            mask_kind=None, progress=False)
    print(f"timing {len(candidates)} candidates, {repeats} rounds after a warm-up ...", flush=True)
    times = interleaved(candidates, repeats)
    for label in ("before", "after", "after1"):
        (CACHE / f"speedup_{label}_{scene}.tif").unlink(missing_ok=True)

    rows = []
    measurements = [
        *((f"forward, {tile} px tile, batch {b}", "ms / tile", f"before b{b}", f"after b{b}", 1000.0 / b)
          for b in batches),
        (f"`infer_scene`, {scene} x {scene} px scene, batch 4, mask off", "s / scene", "before scene", "after scene",
         1.0),
        (f"`infer_scene`, {scene} x {scene} px scene, before: batch 4, after: batch 1 (the new CPU default)",
         "s / scene", "before scene", "after1 scene", 1.0),
    ]
    for what, unit, key_before, key_after, scale in measurements:
        t_before, t_after = median(times[key_before]), median(times[key_after])
        rows.append(
            f"| {what} | {unit} | {t_before * scale:,.2f} ({spread(times[key_before])}) | "
            f"{t_after * scale:,.2f} ({spread(times[key_after])}) | {t_before / t_after:.2f}x |"
        )
    text = "\n".join([
        f"# Inference before/after: channels-last weights on CPU (`{name}`)",
        "",
        f"Command: `{command_line(NAME, argv)}` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.perf_counter() - started) / 60:.0f} min). Machine: {machine_line()}.",
        f"Before: `model.eval()` (NCHW), 4 tiles per pass. After: `sscr.models.for_inference(model, 'cpu')` "
        f"(NHWC weights), and in the last row also 1 tile per pass, the CPU default of `sscr infer` since. Same "
        f"weights and inputs, interleaved round-robin, medians of {repeats} round(s) after a warm-up (spread in "
        f"brackets). Largest output difference after vs before: {max_diff:.1e} (float rounding).",
        "",
        "| measurement | unit | before | after | speed-up |",
        "| --- | --- | ---: | ---: | ---: |",
        *rows,
        "",
        f"The profile that pointed at it (before, one forward, {tile} px tile, batch 1):",
        "",
        "```",
        profile_table(before, inputs[1], 10).strip(),
        "```",
        "",
        "And after:",
        "",
        "```",
        profile_table(after, inputs[1], 10).strip(),
        "```",
        "",
    ])
    write_report(text, results_path(NAME, mode, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
