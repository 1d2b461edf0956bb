"""Prove that the published test script loads an exported run strictly, and compare its test metrics with ours.

    python tools/published_check.py --published /path/to/sscr --run results/demo --root3 data/sen12mscr \\
        --work /tmp/published-check [--masks-dir data/masks]

Not run by CI (it needs a checkout of github.com/RSIR25/sscr; ``tests/test_published.py``
checks the exported file's structure against a checkpoint the published code wrote).
Steps:

1. ``sscr export-published <run> --out <work>/weights/<run name>``;
2. the published ``model/test_reconstruct.py``, run as its command line would run it
   (``--weight_folder <work>/weights --experiment_name <run name> --root3 <root3>
   --res_dir <work>/inference --device cpu --export_every -1``), in this process with
   the stand-ins of ``tools/published_env.py`` for the modules it imports but the
   checkout lacks. Every ``load_state_dict`` call is recorded: the published
   ``load_checkpoint`` first tries ``strict=True`` and silently falls back to a
   renaming, non-strict load when that fails, so the check is that the only call is
   the strict one, and that it succeeded;
3. our ``sscr evaluate`` of the same run on the same data, to put the two test metrics
   side by side (the published loader picks the test split by substring match and
   computes s2cloudless masks on the fly; the metrics are per image, averaged).
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import published_env
import torch

ROOT = Path(__file__).resolve().parents[1]


def export(run: Path, weights: Path) -> Path:
    """``sscr export-published <run> --out weights/<run name>`` (the CLI, in this process); returns that folder."""
    sys.path.insert(0, str(ROOT))
    from sscr import cli

    target = weights / run.name
    code = cli.main(["export-published", str(run), "--out", str(target)])
    if code != 0:
        raise SystemExit(f"sscr export-published {run} failed (exit {code})")
    return target


def run_published_test(checkout: Path, weights: Path, name: str, root3: Path, work: Path) -> dict[str, Any]:
    """Run the published test script on ``weights/<name>``; returns its metrics and the recorded loads."""
    published_env.prepare(checkout)
    calls: list[dict[str, Any]] = []
    original = torch.nn.Module.load_state_dict

    def recording(module: torch.nn.Module, state_dict: Any, strict: bool = True, *args: Any, **kwargs: Any) -> Any:
        record = {"module": type(module).__name__, "strict": strict, "keys": len(state_dict)}
        calls.append(record)
        try:
            result = original(module, state_dict, strict, *args, **kwargs)
        except Exception as err:
            record["result"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            raise
        record["result"] = f"ok (missing {len(result.missing_keys)}, unexpected {len(result.unexpected_keys)})"
        return result

    argv = ["--weight_folder", str(weights), "--experiment_name", name, "--root3", str(root3),
            "--res_dir", str(work / "inference"), "--device", "cpu", "--export_every", "-1", "--plot_every", "-1"]
    script = checkout / "model" / "test_reconstruct.py"
    saved_argv, torch.nn.Module.load_state_dict = sys.argv, recording
    sys.argv = [str(script), *argv]
    work.mkdir(parents=True, exist_ok=True)
    try:
        with published_env._working_directory(work):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit:  # the script ends with exit()
        pass
    finally:
        sys.argv, torch.nn.Module.load_state_dict = saved_argv, original
    metrics = json.loads((work / "inference" / name / "test_metrics.json").read_text())
    from data.dataLoader import SEN12MSCR  # the published loader: how many test images it found

    n_images = len(SEN12MSCR(str(root3), split="test", cloud_masks=None))
    return {"command": f"python {script} {' '.join(argv)}", "load_state_dict": calls, "metrics": metrics,
            "n_images": n_images}


def our_metrics(run: Path, root3: Path, masks_dir: Path | None, out: Path) -> dict[str, Any]:
    """Our ``sscr evaluate`` of ``run`` on ``root3``'s test split (no MLflow logging)."""
    from sscr.config import load_params
    from sscr.evaluate import evaluate

    overrides = [f"data.root={root3}", f"evaluate.out_dir={out}", "evaluate.n_panels=0"]
    if masks_dir is not None:
        overrides.append(f"masks.dir={masks_dir}")
    params = load_params(ROOT / "params.yaml", overrides)
    return evaluate(params, load_config=run / "conf.json", log_to_mlflow=False, progress=False)


def main(argv: list[str] | None = None) -> int:
    """Export, run the published test script, check the strict load, print both metrics."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--published", type=Path, required=True, help="checkout of github.com/RSIR25/sscr")
    parser.add_argument("--run", type=Path, required=True, help="our run directory (uncrtaints, multisarv2, unet or utae)")
    parser.add_argument("--root3", type=Path, required=True, help="SEN12MS-CR root (the synthetic sample works)")
    parser.add_argument("--work", type=Path, required=True, help="scratch directory")
    parser.add_argument("--masks-dir", type=Path, default=None, help="precomputed masks for our evaluation")
    args = parser.parse_args(argv)
    work = args.work.resolve()
    target = export(args.run.resolve(), work / "weights")
    print(f"exported {args.run} -> {target}/model.pth.tar, conf.json")
    published = run_published_test(args.published.resolve(), work / "weights", target.name, args.root3.resolve(), work)
    print(f"published test script: {published['command']}")
    for call in published["load_state_dict"]:
        print(f"  load_state_dict on {call['module']} (strict={call['strict']}, {call['keys']} keys): {call['result']}")
    strict_only = [c["strict"] for c in published["load_state_dict"]] == [True] and \
        published["load_state_dict"][0]["result"].startswith("ok (missing 0, unexpected 0)")
    print(f"strict load by the published code: {'yes' if strict_only else 'NO'}")
    ours = our_metrics(args.run.resolve(), args.root3.resolve(), args.masks_dir, work / "ours")
    print(f"{'metric':<6} {'published script':>17} {'sscr evaluate':>14}")
    for key in ("PSNR", "SSIM", "SAM", "MAE", "RMSE"):
        print(f"{key:<6} {published['metrics'][key]:>17.6f} {ours['test'][key]:>14.6f}")
    print(f"test images: published script {published['n_images']}, sscr evaluate {ours['n_images']}")
    return 0 if strict_only else 1


if __name__ == "__main__":
    raise SystemExit(main())
