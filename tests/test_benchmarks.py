"""Every benchmark script runs at its smoke size and writes the table it promises.

Each runs as ``python -m benchmarks.<name> --smoke --out <tmp>`` in a fresh interpreter, with
generated inputs under a temporary cache (``SSCR_BENCHMARK_CACHE``), so the committed results in
``benchmarks/results/`` and the developer's ``benchmarks/.cache/`` are never touched.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from absent import GPU_IMAGE_LACKS, without

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = [
    "model_cost",
    "scene_inference",
    "data_loading",
    "quality_per_compute",
    "pipeline_overhead",
    "physical_bounds",
    "inference_speedup",
    "mask_resolution",
    "mask_stamp",
    "realism",
    "seed_spread",
]
NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+( ?(s|ms|MiB|MB/s|GB/s|GFLOP/s|%))?$")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module: the tiny sample is written once and shared by the benchmarks using it."""
    return tmp_path_factory.mktemp("benchmark-cache")


def run_benchmark(name: str, out: Path, cache: Path, args: tuple[str, ...] = ("--smoke",),
                  environ: dict[str, str] | None = None) -> str:
    env = {
        **(environ or os.environ),
        "SSCR_BENCHMARK_CACHE": str(cache),
        "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args, "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"benchmarks.{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert out.exists(), f"benchmarks.{name} wrote no results file"
    return out.read_text()


def tables(text: str) -> list[list[dict[str, str]]]:
    """Every markdown table of a report, as rows keyed by the header's cells."""
    found: list[list[dict[str, str]]] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("|") and index + 1 < len(lines) and lines[index + 1].startswith("| ---"):
            header = [cell.strip() for cell in lines[index].strip("|").split("|")]
            rows = []
            index += 2
            while index < len(lines) and lines[index].startswith("|"):
                cells = [cell.strip() for cell in lines[index].strip("|").split("|")]
                assert len(cells) == len(header), f"row {lines[index]!r} does not match header {header}"
                rows.append(dict(zip(header, cells, strict=True)))
                index += 1
            found.append(rows)
        else:
            index += 1
    return found


def is_number(cell: str) -> bool:
    return bool(NUMBER.match(cell.replace("*", "").strip()))


def test_model_cost_smoke(tmp_path, cache):
    text = run_benchmark("model_cost", tmp_path / "model_cost.md", cache)
    assert text.startswith("# Model cost at 64 x 64")
    (rows,) = tables(text)
    assert [row["model"] for row in rows] == [
        "uncrtaints", "multisarv2", "sscr_lite", "sscr_lite (params.yaml)", "unet", "mask_unet"]
    for row in rows:
        assert row["batch"] == "1"
        for column in (
            "params",
            "GFLOPs (fwd)",
            "FLOPs / uncrtaints",
            "GFLOPs (train-mode fwd)",
            "forward ms",
            "fwd+bwd ms",
            "peak MiB fwd",
            "peak MiB fwd+bwd",
        ):
            assert is_number(row[column]), (column, row)
    assert next(r for r in rows if r["model"] == "uncrtaints")["FLOPs / uncrtaints"] == "1.00"


def test_scene_inference_smoke(tmp_path, cache):
    text = run_benchmark("scene_inference", tmp_path / "scene_inference.md", cache)
    (rows,) = tables(text)
    assert [row["scene"] for row in rows] == ["256 x 256", "512 x 512"]
    assert [row["tiles"] for row in rows] == ["1", "9"]
    for row in rows:
        assert row["peak RSS"].endswith("MiB") and is_number(row["peak RSS"]), row
        assert is_number(row["Mpx / s"]), row
        assert row["batch"] == "1"  # infer_scene's CPU default
        # the first quarter's RSS is a sample of the same process, so it can never exceed the peak
        assert float(row["RSS, first quarter"].split()[0]) <= float(row["peak RSS"].split()[0]), row
    assert "peak RSS 512 x 512 / 256 x 256" in text
    assert f"`python -m benchmarks.scene_inference --smoke --out {tmp_path / 'scene_inference.md'}`" in text


def test_data_loading_smoke(tmp_path, cache):
    text = run_benchmark("data_loading", tmp_path / "data_loading.md", cache)
    assert text.startswith("# Data loading: samples/s of 64 x 64 triplets")
    variants, steps = tables(text)
    assert [row["variant"] for row in variants] == [
        "raw read (3 files)",
        "raw read + mask file (4 files)",
        "SEN12MSCR, precomputed masks",
        "SEN12MSCR, s2cloudless on the fly",
        "page-cache read of the same files (bound)",
    ]
    for row in variants[:4]:
        assert (
            is_number(row["samples/s"]) and is_number(row["ms / sample"]) and is_number(row["vs raw read"])
        ), row
    assert variants[0]["vs raw read"] == "1.00"
    assert "precomputed / on the fly:" in text and "precomputed / raw read:" in text
    assert len(steps) == 9 and steps[-1]["step"].startswith("**sum of the steps**")
    assert all(is_number(row["ms / sample"]) for row in steps)
    assert "cProfile" in text and "read_raster" in text


def test_quality_per_compute_smoke(tmp_path, cache):
    text = run_benchmark("quality_per_compute", tmp_path / "quality_per_compute.md", cache)
    (rows,) = tables(text)
    assert [(row["model"], row["SAR"]) for row in rows] == [
        ("cloudy input (baseline)", "-"),
        ("`sscr_lite`", "yes"),
        ("`sscr_lite`", "no"),
    ]
    for row in rows:
        for column in ("PSNR in clouds", "SSIM in clouds", "SAM in clouds", "PSNR all"):
            assert is_number(row[column]), (column, row)
    for row in rows[1:]:
        epochs, planned = row["epochs (planned)"].split(" ")
        assert 1 <= int(epochs) <= int(planned.strip("()")) and is_number(row["CPU min"]), row
        assert row["widths (encoder / decoder)"] == "[8, 16] / [8, 16]"
        assert row["loss"] == "`l1`", row  # the tiny sample's loss (tests/tiny.py), sscr_lite being no published network


def test_pipeline_overhead_smoke(tmp_path, cache):
    text = run_benchmark("pipeline_overhead", tmp_path / "pipeline_overhead.md", cache)
    stages, noop = tables(text)
    assert [row["stage"].split(" ")[0] for row in stages] == ["`download`", "`cloudmasks`", "DVC", "**total"]
    assert all(is_number(row["wall s"]) for row in stages)
    assert [row["command, everything up to date"].split(" ")[0] for row in noop] == ["no-op", "`dvc", "`sscr"]
    assert all(is_number(row["median s"]) for row in noop)
    assert "cProfile" in text


def test_physical_bounds_smoke(tmp_path, cache):
    text = run_benchmark("physical_bounds", tmp_path / "physical_bounds.md", cache)
    bounds, figures = tables(text)
    names = [row["bound"] for row in bounds]
    assert names[:3] == ["page-cache read", "memory bandwidth", "FLOP rate, 1 thread"]
    assert len(names) == 4 and re.fullmatch(r"FLOP rate, \d+ threads", names[3])
    assert all(is_number(row["measured"].split(" ")[0]) for row in bounds)
    assert len(figures) == 7
    assert [row["figure"].split(" ")[0] for row in figures[:5]] == [
        "`sscr_lite`",
        "`uncrtaints`",
        "`unet`",
        "`mask_unet`",
        "`sscr_lite`",
    ]
    assert all(row["fraction of bound"].endswith("%") for row in figures)


def test_inference_speedup_smoke(tmp_path, cache):
    text = run_benchmark("inference_speedup", tmp_path / "inference_speedup.md", cache)
    (rows,) = tables(text)
    assert [row["unit"] for row in rows] == ["ms / tile", "ms / tile", "s / scene", "s / scene"]
    for row in rows:
        assert is_number(row["before"].split(" ")[0]) and is_number(row["after"].split(" ")[0]), row
        assert row["speed-up"].endswith("x") and float(row["speed-up"][:-1]) > 0, row
    difference = float(re.search(r"Largest output difference after vs before: ([0-9.e+-]+)", text).group(1))
    assert difference < 1e-4  # the same prediction
    assert text.count("aten::") >= 4  # both profiles are in the report


def test_mask_resolution_smoke(tmp_path, cache):
    text = run_benchmark("mask_resolution", tmp_path / "mask_resolution.md", cache)
    agreement, truth, timing = tables(text)
    assert [row["images"] for row in agreement] == [
        "sample patches, all", "sample patches, partly cloudy", "scenes of 192 px"]
    for row in agreement:
        assert 0.0 <= float(row["IoU 60 m vs 10 m"]) <= 1.0 and row["pixels that agree"].endswith("%"), row
        assert 0.0 <= float(row["probability MAE"]) <= 1.0, row
    for row in truth:
        assert all(0.0 <= float(row[key]) <= 1.0 for key in ("IoU at 10 m", "IoU at 60 m")), row
    for row in timing:
        assert is_number(row["10 m"]) and is_number(row["60 m"]) and float(row["speed-up"][:-1]) > 0, row


def test_mask_stamp_smoke(tmp_path, cache):
    text = run_benchmark("mask_stamp", tmp_path / "mask_stamp.md", cache)
    (rows,) = tables(text)
    assert [row["stamp or work"] for row in rows] == [
        "size + mtime (the old stamp)", "SHA-256 of the file's bytes (the stamp)", "MD5 of the file's bytes (DVC's hash)",
        "SHA-256 of the decoded pixels", "recompute the masks"]
    assert all(is_number(row["ms / file"]) and is_number(row["/ recompute"]) for row in rows), rows
    assert rows[-1]["/ recompute"] == "1.00000"
    assert rows[1]["SEN12MS-CR, 1 core"].endswith(" min")


def test_gpu_check_dry_run(tmp_path, cache):
    """The GPU check's every section on the CPU at tiny sizes, with the packages the GPU image lacks absent
    except MLflow (whose section is skipped there)."""
    environ = without([name for name in GPU_IMAGE_LACKS if name != "mlflow"], tmp_path / "absent")
    text = run_benchmark("gpu_check", tmp_path / "gpu_check.md", cache, ("--dry-run",), environ)
    assert text.startswith("# GPU check: dry run on CPU")
    assert "Device: CPU only" in text
    (rows,) = tables(text)
    assert not [row for row in rows if row["status"].startswith("FAIL")]
    sections = {row["section"] for row in rows}
    assert {"CUDA paths of training", "--device cpu end to end", "sscr_lite vs the published networks",
            "whole tile (dry run: 256 px)"} <= sections
    checks = [row for row in rows if row["section"] == "CUDA paths of training"]
    assert [row["status"] for row in checks] == ["ok", "ok", "ok"]
    assert "DDP step (gloo)" in checks[2]["what"] and "differ by 0.0e+00" in checks[2]["result"]
    end_to_end = [row for row in rows if row["section"] == "--device cpu end to end"]
    assert "sscr.device = cpu; sscr.evaluate.device = cpu" in end_to_end[0]["result"]
    published = next(row for row in rows if row["section"].startswith("published loop vs ours"))
    if not (REPO / ".published" / "sscr").is_dir():
        assert published["status"] == "skipped: no published checkout (--published, or .published/sscr)"
    cost = [row for row in rows if row["section"] == "sscr_lite vs the published networks"]
    assert len(cost) == 3 and re.search(r"sscr_lite \*\*\d+\.\d+x\*\*", cost[0]["result"])
    assert all(f"{name} " in cost[1]["result"] for name in ("uncrtaints", "multisarv2", "sscr_lite"))
    tiles = [row for row in rows if row["section"].startswith("whole tile")]
    assert [row["what"].split(",")[0] for row in tiles] == ["sscr_lite", "multisarv2"]
    assert all(row["status"] == "ok" and "1 tile(s)" in row["result"] for row in tiles)
    assert not (REPO / "benchmarks" / "results" / "gpu_check_dry_run.md").exists()


def test_seed_spread_smoke(tmp_path, cache):
    text = run_benchmark("seed_spread", tmp_path / "seed_spread.md", cache)
    seeds, spread, pairs = tables(text)
    assert [row["seed"] for row in seeds] == ["1", "2"]
    for row in seeds:
        assert all(is_number(row[column]) for column in ("validation PSNR", "test PSNR", "test PSNR inside clouds"))
    assert [row["over the seeds"] for row in spread] == ["validation PSNR", "test PSNR", "test PSNR inside clouds"]
    assert [(row["candidate"], row["champion"]) for row in pairs] == [("seed 1", "seed 2"), ("seed 2", "seed 1")]
    assert all(row["rule 1"] in ("promote", "challenger") for row in pairs)
    assert all(row["the interval alone (margin 0)"] in ("promote", "challenger") for row in pairs)


#: Benchmarks that need a checkout of the published code (github.com/RSIR25/sscr), which CI does not have.
NEEDS_PUBLISHED_CODE = ["published_parity"]
#: Benchmarks whose CI size is ``--dry-run`` (a GPU check run on the CPU).
DRY_RUN = ["gpu_check"]


def test_every_benchmark_script_has_a_smoke_test():
    scripts = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py") if not p.stem.startswith("_"))
    assert scripts == sorted(BENCHMARKS + NEEDS_PUBLISHED_CODE + DRY_RUN)


def test_realism_smoke(tmp_path, cache):
    text = run_benchmark("realism", tmp_path / "realism.md", cache)
    assert "**Smoke run: the 'real' column is a synthetic stand-in (seed 1), not real data.**" in text
    clear, cloud, shadow, edges, sar = tables(text)
    assert [row["class: statistic"] for row in clear][:2] == ["water: share", "water: B2"]
    shares = [float(row["synthetic"]) for row in clear if row["class: statistic"].endswith(": share")]
    assert len(shares) == 5 and abs(sum(shares) - 1.0) < 0.01  # every clear pixel is in one class
    assert [row["band"] for row in cloud][:3] == ["pixels", "B1", "B2"] and len(cloud) == 14
    assert all(is_number(row["real"]) and is_number(row["synthetic"]) for row in edges[:1])
    looks = next(row for row in sar if row["statistic"].startswith("ENL"))
    assert 1.0 < float(looks["synthetic"]) < 100.0  # speckle: a finite number of looks
    # the JSON beside the report is what --before reads: a second column, before and after
    before = tmp_path / "realism.json"
    assert before.is_file()


def test_real_patches_are_fetched_into_the_layout_only_when_their_sha256_matches(tmp_path, monkeypatch):
    import hashlib
    import importlib
    import subprocess

    monkeypatch.syspath_prepend(str(REPO))
    real = importlib.import_module("benchmarks._real_patches")

    # a git mirror as `fetch` (the search tool) lays them out: <owner>+<name>/repo
    work = tmp_path / "work"
    work.mkdir()
    (work / "s2.tif").write_bytes(b"not really a GeoTIFF")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(work)]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    subprocess.run([*git, "add", "s2.tif"], check=True)
    subprocess.run([*git, "commit", "-qm", "a patch"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    mirror = tmp_path / "mirror"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(mirror / "someone+patches" / "repo")], check=True)
    monkeypatch.setitem(real.REPOSITORIES, "someone/patches", (commit, "CC-BY-4.0"))
    digest = hashlib.sha256(b"not really a GeoTIFF").hexdigest()
    good = real.RealPatch("someone/patches", "s2.tif", "s2", "ROIs1868_summer", 7, 12, digest)
    root = real.fetch(tmp_path / "out", mirror, [good])
    assert (root / "ROIs1868_summer_s2" / "s2_7" / "ROIs1868_summer_s2_7_p12.tif").read_bytes() == b"not really a GeoTIFF"
    assert good.url == f"https://raw.githubusercontent.com/someone/patches/{commit}/s2.tif"
    bad = real.RealPatch("someone/patches", "s2.tif", "s2_cloudy", "ROIs1868_summer", 7, 12, "0" * 64)
    with pytest.raises(ValueError, match="not the file this benchmark measured"):
        real.fetch(tmp_path / "out", mirror, [bad])
    assert not (root / "ROIs1868_summer_s2_cloudy").exists()
    assert "someone/patches" in real.provenance_table([good]) and "CC-BY-4.0" in real.provenance_table([good])
