"""Physical bounds of this machine, and how far the project's own figures are from them.

    python -m benchmarks.physical_bounds            # the embedded default sample, 256 px, 5 rounds
    python -m benchmarks.physical_bounds --quick    # 3 rounds, smaller matmul
    python -m benchmarks.physical_bounds --smoke    # CI: 64 px sample, tiny sizes, 1 round

Bounds, each measured here:

- **page-cache read rate**: a sequential read (``readinto`` 8 MiB chunks) of every GeoTIFF of the
  embedded default sample and its masks, after one untimed pass that puts them in the page cache.
  Caches cannot be dropped on this machine (no root over the host), so this is the rate of reading
  cached files, the bound for a data set that fits in RAM, not the disk's own rate.
- **memory bandwidth**: ``numpy.copyto`` of a 256 MiB float32 array into another (bytes copied per
  second; the bus carries twice that, a read and a write).
- **FLOP rate**: ``torch.mm`` of two 2048 x 2048 float32 matrices (2 n^3 FLOPs), with 1 and with 2
  torch threads.

Figures compared with them, in the same run and interleaved round-robin with the bounds (so
load changes hit all alike; medians of the rounds):

- the forward pass of each backbone at its default widths, 256 x 256, batch 1 (the batch of
  ``sscr infer`` on CPU; ``sscr_lite`` also at batch 4, its GPU default): GFLOP/s = forward FLOPs
  (``sscr.models.model_cost``) / median time, against the 2-thread matmul rate;
- the data set with precomputed masks (``SEN12MSCR[i]``): MB/s of file bytes read against the
  page-cache read rate, and MB/s of float32 tensors produced against the memory copy rate.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

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

NAME = "physical_bounds"
CHUNK = 8 * 2**20
MODELS = ["sscr_lite", "uncrtaints", "unet", "mask_unet"]


# ---------------------------------------------------------------- the bounds, importable by other benchmarks


def sample_files(params: object) -> list[Path]:
    """Every GeoTIFF of a sample on disk and of its masks (sorted)."""
    roots = [Path(params.data.root), Path(params.masks.dir)]  # type: ignore[attr-defined]
    return sorted(path for root in roots for path in root.rglob("*.tif"))


def page_cache_reader(files: Sequence[Path]) -> tuple[Callable[[], int], int]:
    """(a function reading ``files`` sequentially, returning the bytes read; their total size)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)

    def read_all() -> int:
        total = 0
        for path in files:
            with open(path, "rb", buffering=0) as handle:
                while count := handle.readinto(view):
                    total += count
        return total

    size = read_all()  # the untimed pass that fills the page cache
    return read_all, size


def memory_copier(mib: int) -> tuple[Callable[[], None], int]:
    """(a function copying a ``mib`` MiB float32 array into another, the bytes it copies)."""
    source = np.random.default_rng(0).random(mib * 2**20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)  # touch both: no page faults inside the timed copies
    return (lambda: np.copyto(target, source)), source.nbytes


def matmul_runner(n: int, threads: int) -> tuple[Callable[[], None], float]:
    """(a function multiplying two n x n float32 matrices with ``threads`` torch threads, its FLOPs)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    left, right = torch.rand(n, n, generator=gen), torch.rand(n, n, generator=gen)

    def run() -> None:
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        torch.mm(left, right)
        torch.set_num_threads(previous)

    return run, 2.0 * n**3


def forward_runner(name: str, size: int, batch: int) -> tuple[Callable[[], None], float]:
    """(a function running one eval forward of backbone ``name`` at its default widths, its FLOPs)."""
    import torch

    from sscr.models import build_model, example_inputs, for_inference, model_cost

    torch.manual_seed(0)
    model = for_inference(build_model(name), "cpu")  # as every inference path of sscr
    gen = torch.Generator().manual_seed(0)
    inputs = {
        key: torch.rand(value.shape, generator=gen)
        for key, value in example_inputs(model, size, size, batch).items()
    }

    def run() -> None:
        with torch.no_grad():
            model(**inputs)

    return run, float(model_cost(model, size, size, batch)["flops"])


# ---------------------------------------------------------------- the report


def main(argv: list[str] | None = None) -> int:
    """Measure bounds and figures interleaved, print and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, 1024 px matmul")
    parser.add_argument("--smoke", action="store_true", help="CI size: 64 px sample, 1 round")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed rounds (default 5; quick 3; smoke 1)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default benchmarks/results/...)"
    )
    args = parser.parse_args(argv)
    mode = mode_of(args.quick, args.smoke)
    repeats = args.repeats or {"full": 5, "quick": 3, "smoke": 1}[mode]
    n = {"full": 2048, "quick": 1024, "smoke": 256}[mode]
    copy_mib = {"full": 256, "quick": 128, "smoke": 8}[mode]
    size = 64 if mode == "smoke" else 256
    started = time.perf_counter()

    import torch

    from sscr.data.dataset import SEN12MSCR

    params = sample_on_disk(
        "smoke" if mode == "smoke" else "default", tiny_overrides() if mode == "smoke" else None
    )
    files = sample_files(params)
    read_files, read_bytes = page_cache_reader(files)
    copy, copy_bytes = memory_copier(copy_mib)
    dataset = SEN12MSCR(
        params.data.root,
        split=None,
        cloud_mask=params.masks.use,
        masks_dir=params.masks.dir,
        patch_size=params.data.patch_size,
    )
    triplet_files = [t.path(m) for t in dataset.triplets for m in ("s1", "s2", "s2_cloudy")]
    from sscr.data.masks import mask_path

    loaded_bytes = sum(p.stat().st_size for p in triplet_files) + sum(
        mask_path(params.masks.dir, t.pid).stat().st_size for t in dataset.triplets
    )
    produced_bytes = sum(
        v.numel() * v.element_size()
        for k, v in dataset[0].items()
        if k in ("sar", "cloudy", "target", "mask")
    ) * len(dataset)

    def load_all() -> None:
        for index in range(len(dataset)):
            dataset[index]

    threads = torch.get_num_threads()
    candidates: dict[str, Callable[[], object]] = {
        "read": read_files,
        "copy": copy,
        "load": load_all,
        "mm1": matmul_runner(n, 1)[0],
        f"mm{threads}": matmul_runner(n, threads)[0],
    }
    flops = {"mm1": 2.0 * n**3, f"mm{threads}": 2.0 * n**3}
    forwards = [(name, 1) for name in MODELS] + [("sscr_lite", 4)]
    for name, batch in forwards:
        candidates[f"{name}/{batch}"], flops[f"{name}/{batch}"] = forward_runner(name, size, batch)
    print(f"timing {len(candidates)} candidates, {repeats} rounds after a warm-up ...", flush=True)
    times = interleaved(candidates, repeats)
    rate = {key: median(values) for key, values in times.items()}

    read_mb_s = read_bytes / rate["read"] / 1e6
    copy_gb_s = copy_bytes / rate["copy"] / 1e9
    mm = {key: flops[key] / rate[key] / 1e9 for key in ("mm1", f"mm{threads}")}
    lines = [
        "# Physical bounds of this machine, and the project's figures against them",
        "",
        f"Command: `{command_line(NAME, argv)}` ({time.strftime('%Y-%m-%d %H:%M')}, "
        f"{(time.perf_counter() - started) / 60:.0f} min). Machine: {machine_line(threads)}.",
        f"Medians of {repeats} round(s) after a warm-up, all candidates interleaved round-robin; "
        "± = largest distance of a round from the median.",
        "",
        "| bound | measured | spread | how |",
        "| --- | ---: | ---: | --- |",
        f"| page-cache read | {read_mb_s:,.0f} MB/s | {spread(times['read'])} | sequential `readinto` of the "
        f"{len(files)} GeoTIFFs of the sample and its masks ({read_bytes / 1e6:.0f} MB), already cached "
        "(caches cannot be dropped here: not the disk's own rate) |",
        f"| memory bandwidth | {copy_gb_s:,.1f} GB/s | {spread(times['copy'])} | `numpy.copyto` of "
        f"{copy_bytes / 2**20:.0f} MiB float32 (bytes copied; the bus moves 2x) |",
        f"| FLOP rate, 1 thread | {mm['mm1']:,.1f} GFLOP/s | {spread(times['mm1'])} | `torch.mm`, {n} x {n} "
        "float32, 2 n^3 FLOPs |",
        f"| FLOP rate, {threads} threads | {mm[f'mm{threads}']:,.1f} GFLOP/s | {spread(times[f'mm{threads}'])} "
        f"| the same with {threads} torch threads |",
        "",
        "| figure | achieved | bound | fraction of bound |",
        "| --- | ---: | ---: | ---: |",
    ]
    bound = mm[f"mm{threads}"]
    for name, batch in forwards:
        key = f"{name}/{batch}"
        achieved = flops[key] / rate[key] / 1e9
        lines.append(
            f"| `{name}` forward, {size} px, batch {batch} ({flops[key] / 1e9:.1f} GFLOP, "
            f"{rate[key] * 1e3:,.0f} ms) | {achieved:,.1f} GFLOP/s | {bound:,.1f} GFLOP/s (matmul, {threads} "
            f"threads) | {achieved / bound:.0%} |"
        )
    per_sample = rate["load"] / len(dataset)
    lines += [
        f"| `SEN12MSCR[i]`, precomputed masks ({1 / per_sample:,.0f} samples/s): file bytes read | "
        f"{loaded_bytes / rate['load'] / 1e6:,.0f} MB/s | {read_mb_s:,.0f} MB/s (page-cache read) | "
        f"{loaded_bytes / rate['load'] / 1e6 / read_mb_s:.1%} |",
        f"| `SEN12MSCR[i]`, precomputed masks: float32 tensors produced | "
        f"{produced_bytes / rate['load'] / 1e9:,.2f} GB/s | {copy_gb_s:,.1f} GB/s (memory copy) | "
        f"{produced_bytes / rate['load'] / 1e9 / copy_gb_s:.1%} |",
        "",
        "Reading: a convolution network on CPU reaching a few tens of percent of the matmul rate is "
        "typical (depthwise and 1x1 convolutions, normalisation and activations are memory-bound); the "
        "data set is far from both I/O bounds because its cost is decoding (deflate) and per-file "
        "overhead, not bytes (see `data_loading.md` for where the time goes).",
        "",
    ]
    write_report("\n".join(lines), results_path(NAME, mode, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
