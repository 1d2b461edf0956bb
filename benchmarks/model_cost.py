"""Cost of every backbone on 256 x 256 patches: parameters, FLOPs, time, memory.

Configurations (``CONFIGS``): the published networks at the seed's settings (``uncrtaints``
and ``multisarv2``: widths [128] / [128] x 5, SAR, no mask, no variance), this project's
``sscr_lite`` at its default widths and at the CPU-sized widths of ``params.yaml``, and
the U-Net and U-TAE baselines at their default widths.

    python -m benchmarks.model_cost            # batch 1 and 8, 5 timed repeats
    python -m benchmarks.model_cost --quick    # batch 1, 3 timed repeats
    python -m benchmarks.model_cost --smoke    # CI: 64 x 64, batch 1, 1 timed run (model_cost_smoke.md)

Method:

- Parameters and forward FLOPs: :func:`sscr.models.model_cost` (``FlopCounterMode``,
  2 FLOPs per multiply-add, convolutions and matmuls), in eval mode and in train mode
  (``multisarv2`` runs its unused edge branch in train mode only, as published).
- Time: wall clock of a forward (eval mode, no gradients) and of a forward + backward
  (train mode, loss = mean of every output) on random inputs; one untimed warm-up round,
  then the median of ``--repeats`` rounds. Every (model, mode) pass runs once per round,
  round-robin in one process with the order rotated every round
  (:func:`benchmarks._common.interleaved`), so a load change on a shared machine hits
  all of them alike; ratios are to ``uncrtaints`` at the same batch size.
- Peak memory: each (model, batch, mode) runs once in a fresh subprocess; the figure is
  the rise of the process' peak resident set size over its resident size after building
  the model and its inputs, i.e. the activations, gradients and workspace of that one
  pass. On Linux the peak is ``VmHWM`` of ``/proc/self/status``, reset just before the
  pass through ``/proc/self/clear_refs`` (``getrusage`` is no use here: after ``exec`` it
  starts from the parent's size). Elsewhere ``ru_maxrss`` is the fallback, which can
  under-read. On CUDA: ``torch.cuda.max_memory_allocated``.
  A configuration whose memory, extrapolated from batch 1, would not fit in half the
  memory available now is not run, and the table says so.

Writes the markdown table to ``benchmarks/results/model_cost.md``
(``model_cost_quick.md`` with ``--quick``, ``model_cost_smoke.md`` with ``--smoke``) and prints it.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import platform
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil
import torch

from benchmarks._common import command_line, interleaved, mode_of, results_path, write_report
from sscr.models import build_model, example_inputs, model_cost, select_device

CONFIGS: dict[str, tuple[str, dict]] = {
    "uncrtaints": ("uncrtaints", {}),
    "multisarv2": ("multisarv2", {}),
    "sscr_lite": ("sscr_lite", {}),
    "sscr_lite (params.yaml)": ("sscr_lite", {"encoder_widths": [16, 32, 64], "decoder_widths": [16, 32, 64]}),
    "unet": ("unet", {}),  # the published U-Net (also --model utae under --pretrain), its default widths
    "mask_unet": ("mask_unet", {}),
}
"""Row label -> (model name, build parameters); the published networks at the seed's settings."""
MODELS = list(CONFIGS)
REFERENCE = "uncrtaints"
SIZE = 256
NAME = "model_cost"
MODES = ("forward", "train")


@dataclass
class Row:
    """Measurements of one model at one batch size."""

    model: str
    batch: int
    params: int
    flops: int
    train_flops: int
    times: dict[str, list[float]] = field(default_factory=lambda: {mode: [] for mode in MODES})
    memory_mib: dict[str, float | str] = field(default_factory=dict)

    def median_ms(self, mode: str) -> float | None:
        """Median time of ``mode`` in milliseconds (None when not run)."""
        return 1000 * statistics.median(self.times[mode]) if self.times[mode] else None


def build(label: str) -> torch.nn.Module:
    """The model of row ``label`` (see ``CONFIGS``)."""
    name, params = CONFIGS[label]
    return build_model(name, **params)


def random_inputs(
    model: torch.nn.Module, batch: int, device: torch.device, size: int = SIZE
) -> dict[str, torch.Tensor]:
    """Random inputs in [0, 1] of the shapes the model takes (seeded)."""
    gen = torch.Generator().manual_seed(0)
    shapes = {k: v.shape for k, v in example_inputs(model, size, size, batch).items()}
    return {k: torch.rand(shape, generator=gen).to(device) for k, shape in shapes.items()}


def run_once(model: torch.nn.Module, inputs: dict[str, torch.Tensor], mode: str) -> None:
    """One forward (``forward``) or forward + backward (``train``) pass."""
    if mode == "forward":
        model.eval()
        with torch.no_grad():
            model(**inputs)
    else:
        model.train()
        out = model(**inputs)
        sum(v.mean() for v in out.values()).backward()
        model.zero_grad(set_to_none=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(model: torch.nn.Module, inputs: dict[str, torch.Tensor], mode: str, device: torch.device) -> float:
    """Seconds of one pass."""
    _sync(device)
    start = time.perf_counter()
    run_once(model, inputs, mode)
    _sync(device)
    return time.perf_counter() - start


def _proc_status_mib(field: str) -> float | None:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB; None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return None


def _reset_peak_rss() -> bool:
    """Reset this process' peak RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _proc_status_mib("VmHWM") is not None


def _ru_maxrss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _memory_child(
    name: str, batch: int, mode: str, device: str, threads: int, size: int, queue: mp.Queue
) -> None:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dev = torch.device(device)
    model = build(name).to(dev)
    inputs = random_inputs(model, batch, dev, size)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        run_once(model, inputs, mode)
        queue.put((torch.cuda.max_memory_allocated(dev) - base) / 2**20)
    elif _reset_peak_rss():
        base = _proc_status_mib("VmRSS")
        run_once(model, inputs, mode)
        queue.put(_proc_status_mib("VmHWM") - base)
    else:
        base = _ru_maxrss_mib()
        run_once(model, inputs, mode)
        queue.put(_ru_maxrss_mib() - base)


def peak_memory_mib(
    name: str, batch: int, mode: str, device: torch.device, threads: int, size: int = SIZE
) -> float | str:
    """Peak memory of one pass, measured in a fresh process (see the module docstring)."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_memory_child, args=(name, batch, mode, str(device), threads, size, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        return f"failed (exit {child.exitcode})"
    return queue.get()


def measure(
    batches: list[int], repeats: int, device: torch.device, threads: int, size: int = SIZE
) -> list[Row]:
    """All measurements; models timed round-robin in this process."""
    torch.set_num_threads(threads)
    rows: list[Row] = []
    for batch in batches:
        models = {}
        for name in MODELS:
            torch.manual_seed(0)
            models[name] = build(name).to(device)
            cost = model_cost(models[name], size, size, batch)
            train_flops = model_cost(models[name], size, size, batch, training=True)["flops"]
            rows.append(Row(name, batch, cost["params"], cost["flops"], train_flops))
        batch_rows = {row.model: row for row in rows if row.batch == batch}

        runnable: dict[str, list[str]] = {mode: [] for mode in MODES}
        budget = 0.5 * psutil.virtual_memory().available / 2**20
        for name in MODELS:
            for mode in MODES:
                single = next(
                    (r.memory_mib.get(mode) for r in rows if r.model == name and r.batch == 1), None
                )
                estimate = single * batch if isinstance(single, float) and batch > 1 else None
                if estimate is not None and estimate > budget:
                    batch_rows[name].memory_mib[mode] = f"not run (~{estimate / 1024:.0f} GiB)"
                    continue
                print(f"memory: {name} batch {batch} {mode} ...", flush=True)
                batch_rows[name].memory_mib[mode] = peak_memory_mib(name, batch, mode, device, threads, size)
                if isinstance(batch_rows[name].memory_mib[mode], float):
                    runnable[mode].append(name)

        # Every (model, mode) in one round-robin whose order rotates each round: a load change on the shared
        # machine hits every model alike, so the ratios hold even when the absolute times do not.
        candidates = {}
        for mode in MODES:
            for name in runnable[mode]:
                inputs = random_inputs(models[name], batch, device, size)
                candidates[(name, mode)] = functools.partial(timed, models[name], inputs, mode, device)
        print(f"time: batch {batch}, {len(candidates)} passes per round, 1 + {repeats} rounds ...", flush=True)
        for (name, mode), seconds in interleaved(candidates, repeats=repeats, warmup=1).items():
            batch_rows[name].times[mode] = seconds
        del models, candidates
    return rows


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in psutil.getloadavg())


def _ratio(value: float | None, reference: float | None) -> str:
    return f"{value / reference:.2f}" if value is not None and reference else "-"


def _ms(value: float | None) -> str:
    return f"{value:,.0f}" if value is not None else "not run"


def _mib(value: float | str | None) -> str:
    return f"{value:,.0f}" if isinstance(value, float) else (value or "-")


def table(rows: list[Row]) -> str:
    """Markdown table, one line per (batch, model), ratios to uncrtaints at the same batch."""
    lines = [
        "| model | batch | params | GFLOPs (fwd) | FLOPs / uncrtaints | GFLOPs (train-mode fwd) "
        "| forward ms | forward / uncrtaints "
        "| fwd+bwd ms | fwd+bwd / uncrtaints | peak MiB fwd | peak MiB fwd+bwd |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        ref = next(r for r in rows if r.model == REFERENCE and r.batch == row.batch)
        fwd, train = row.median_ms("forward"), row.median_ms("train")
        lines.append(
            f"| {row.model} | {row.batch} | {row.params:,} | {row.flops / 1e9:.1f} | {row.flops / ref.flops:.2f} "
            f"| {row.train_flops / 1e9:.1f} | {_ms(fwd)} | {_ratio(fwd, ref.median_ms('forward'))} "
            f"| {_ms(train)} | {_ratio(train, ref.median_ms('train'))} "
            f"| {_mib(row.memory_mib.get('forward'))} | {_mib(row.memory_mib.get('train'))} |"
        )
    return "\n".join(lines)


def report(
    rows: list[Row], args: argparse.Namespace, command: str, device: torch.device, threads: int, seconds: float
) -> str:
    """The results file: context, table, method."""
    return "\n".join(
        [
            f"# Model cost at {args.size} x {args.size}",
            "",
            f"Command: `{command}` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {seconds / 60:.0f} min).",
            f"Machine: {platform.processor() or platform.machine()}, {psutil.cpu_count()} logical CPUs, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB RAM; torch {torch.__version__}, device {device}, "
            f"{threads} torch thread(s); load average (1, 5, 15 min) at the start {args.load_start}, at the end "
            f"{_load()}.",
            f"Inputs: 13-band S2 + 2-band S1 (+ the cloud mask for the models that take one), batch "
            f"{', '.join(str(b) for b in args.batches)}; deterministic heads (variance None). Models: "
            + "; ".join(f"{label} = `{name}` {params or 'default widths'}" for label, (name, params) in CONFIGS.items())
            + f". Times: median of {args.repeats} round-robin rounds (order rotated every round) after one warm-up round.",
            "",
            table(rows),
            "",
            "FLOPs: `sscr.models.model_cost` (torch `FlopCounterMode`, 2 per multiply-add, convolutions and matmuls), "
            "exact counts; train-mode fwd differs for multisarv2 only (its unused edge branch runs in train mode). "
            "Forward: eval mode, no gradients. fwd+bwd: train mode, backward of the mean of every output. "
            "Peak MiB: rise of the peak resident set size (Linux `VmHWM`, reset before the pass) of a fresh "
            "process during one pass over its size before it (CPU), or `max_memory_allocated` (CUDA); "
            '"not run" = batch-1 memory x batch would exceed half the free RAM. '
            "Timings come from a shared machine: compare ratios within this table, not absolute times across runs.",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 1 only, 3 repeats")
    parser.add_argument("--smoke", action="store_true", help="CI: 64 x 64 px, batch 1, 1 repeat")
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed runs per measurement (default 5; quick 3)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default benchmarks/results/...)"
    )
    args = parser.parse_args(argv)
    args.batches = [1] if args.quick or args.smoke else [1, 8]
    args.repeats = args.repeats or (1 if args.smoke else 3 if args.quick else 5)
    args.size = 64 if args.smoke else SIZE
    device = select_device(args.device)
    threads = args.threads or torch.get_num_threads()

    args.load_start = _load()
    start = time.perf_counter()
    rows = measure(args.batches, args.repeats, device, threads, args.size)
    text = report(rows, args, command_line(NAME, argv), device, threads, time.perf_counter() - start)
    write_report(text, results_path(NAME, mode_of(args.quick, args.smoke), args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
