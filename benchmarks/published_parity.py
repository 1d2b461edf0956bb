"""One training epoch of the published network, ours against the published script's loop, in samples/s.

    python -m benchmarks.published_parity --published /path/to/sscr            # widths [16] / [16, 16], 2 rounds
    python -m benchmarks.published_parity --published /path/to/sscr --width 32 --repeats 3
    python -m benchmarks.published_parity --published /path/to/sscr --loop-only --repeats 3   # *_loop_only.md

``--published`` is a checkout of github.com/RSIR25/sscr (not run by CI). Both sides train
``multisarv2`` at the same small width with the seed's flags (``--pretrain``, ``ml`` loss,
``scale_by`` 10, Adam lr 1e-3, ExponentialLR gamma 1.0, batch 8, mbconv, float32, CPU, no
DataLoader workers) on the train split of the same synthetic sample (``sample_on_disk``).

Candidates, run round-robin in one process (``interleaved``: the order rotates every round,
so a load change on the shared machine hits each alike), each timed over one whole epoch:

- ``published``: the published ``train_reconstruct.iterate(mode="train")`` on the published
  ``SEN12MSCR`` loader, as its ``main`` builds them (shuffled, s2cloudless masks computed on
  the fly for every sample: the script has no other way to get them), the network built by
  its ``get_model`` and initialised by its ``weight_init``; imported from the checkout with
  the stand-ins of ``tools/published_env.py``;
- ``ours, masks on the fly``: our ``train._train_epoch`` without precomputed masks (our
  loader then runs the same s2cloudless detector per sample): the same work as published;
- ``ours``: the same with the masks of the ``cloudmasks`` stage (our pipeline's route);
- ``published, loop only`` and ``ours, loop only``: the same loops over batches loaded into
  memory beforehand, so the figure is the training step and the loop's own overhead.

The published loader matches ROIs by substring, ours exactly, so the train splits can differ
in size; samples/s divides each epoch's own sample count by its time.
Writes ``benchmarks/results/published_parity.md``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import (
    PROJECT,
    command_line,
    interleaved,
    machine_line,
    median,
    results_path,
    sample_on_disk,
    spread,
    write_report,
)
from sscr import train as training
from sscr.config import PUBLISHED_PROTOCOL

NAME = "published_parity"
BATCH = 8


def widths_of(width: int) -> tuple[list[int], list[int]]:
    """(encoder, decoder) widths of this benchmark at ``width``: [w] / [w, w]."""
    return [width], [width, width]


SEED_WIDTHS = ([128], [128] * 5)
"""The seed's (encoder, decoder) widths (README "The seed's command lines, one to one")."""


def seed_argv(root: Path, widths: tuple[list[int], list[int]], res_dir: Path, device: str = "cpu",
              batch: int = BATCH) -> list[str]:
    """The seed's command line (README "The seed's command lines, one to one") at ``widths``, on ``device``."""
    encoder, decoder = (",".join(str(w) for w in ws) for ws in widths)
    return ["--experiment_name", "parity", "--root3", str(root), "--model", "multisarv2", "--epochs", "20",
            "--lr", "0.001", "--batch_size", str(batch), "--gamma", "1.0", "--scale_by", "10.0", "--loss", "ml",
            "--use_sar", "--block_type", "mbconv", "--n_head", "16", "--device", device, "--res_dir", str(res_dir),
            "--rdm_seed", "1", "--pretrain", "--num_workers", "0",
            "--encoder_widths", f"[{encoder}]", "--decoder_widths", f"[{decoder}]"]


class Published:
    """The published training loop, model and loader, built as ``train_reconstruct.main`` builds them.

    With ``batches`` (batches in the published loader's format, already in memory) no loader is
    built: the published loader needs s2cloudless, which a GPU machine may not have.
    """

    def __init__(self, checkout: Path, root: Path, widths: tuple[list[int], list[int]], work: Path,
                 device: str = "cpu", batches: list[Any] | None = None, batch: int = BATCH) -> None:
        sys.path.insert(0, str(PROJECT / "tools"))
        import published_env

        argv = seed_argv(root, widths, work / "pub", device, batch)
        self.script = published_env.import_script(checkout, "train_reconstruct", argv, cwd=work)
        from src import losses
        from src.learning.weight_init import weight_init
        from src.model_utils import get_model

        config = self.script.config
        self.config, self.device = config, torch.device(device)
        self.batches: list[Any] | None = batches
        if batches is None:
            from data.dataLoader import SEN12MSCR

            self.train_set = SEN12MSCR(str(root), split="train", region=config.region,
                                       sample_type=config.sample_type)
            self.loader = torch.utils.data.DataLoader(self.train_set, batch_size=config.batch_size, shuffle=True,
                                                      worker_init_fn=self.script.seed_worker,
                                                      generator=self.script.f, num_workers=config.num_workers)
        self.model = get_model(config).to(self.device)
        self.model.len_epoch = len(self.loader) if batches is None else len(batches)
        self.samples = len(self.train_set) if batches is None else sum(len(b["target"]["S2"]) for b in batches)
        """Samples per epoch."""
        self.model.netG.apply(weight_init)
        self.model.criterion = losses.get_loss(config)
        self.epoch = 0

    def preload(self) -> None:
        """Load one epoch's batches into memory (for the loop-only timing)."""
        self.batches = list(self.loader)

    def run_epoch(self, preloaded: bool = False) -> int:
        """One training epoch as ``main`` runs it; returns the number of samples."""
        self.epoch += 1
        self.model.train()
        self.model.netG.train()
        loader = self.batches if preloaded else self.loader
        # The published script's torch.use_deterministic_algorithms(True) keeps torch's default of filling
        # new tensors with NaN; ours turns that off, process-wide, so it is put back for the published epoch.
        ours = torch.utils.deterministic.fill_uninitialized_memory
        torch.utils.deterministic.fill_uninitialized_memory = True
        try:
            self.script.iterate(self.model, data_loader=loader, config=self.config, writer=self.script.writer,
                                mode="train", epoch=self.epoch, device=self.device)
        finally:
            torch.utils.deterministic.fill_uninitialized_memory = ours
        return self.samples


class Ours:
    """Our training session (``sscr train --pretrain`` with the same flags), one ``_train_epoch`` at a time.

    ``overrides`` (dotted keys) change the seed's flags, e.g. ``train.amp`` or another ``model.name``.
    """

    def __init__(self, params_root: Any, widths: tuple[list[int], list[int]], work: Path, precomputed_masks: bool,
                 device: str = "cpu", overrides: dict[str, Any] | None = None, name: str = "") -> None:
        params = params_root.model_copy(deep=True)
        folder = name or ("ours" if precomputed_masks else "ours_fly")
        overrides = {**PUBLISHED_PROTOCOL, **{
            "model.name": "multisarv2", "model.encoder_widths": widths[0], "model.decoder_widths": widths[1],
            "model.block_type": "mbconv", "model.n_head": 16, "model.scale_by": 10.0, "model.use_sar": True,
            "loss.name": "ml", "train.lr": 1e-3, "train.gamma": 1.0, "train.batch_size": BATCH, "train.rdm_seed": 1,
            "train.device": device, "train.num_workers": 0, "train.experiment_name": "parity",
            "train.res_dir": str(work / folder),
        }, **(overrides or {})}
        if not precomputed_masks:
            overrides["masks.dir"] = str(work / "no-masks")  # no coverage table: masks computed per sample
        raw = params.model_dump(mode="json")
        for key, value in overrides.items():
            group, name = key.split(".")
            raw[group][name] = value
        from sscr.config import parse_params

        self.session = training._start(parse_params(raw, "benchmark"), resume=False)
        self.epoch = 0
        self.original_set, self.original_sampler = self.session.train_set, self.session.sampler
        self.preloaded: tuple[_InMemory, Any] | None = None

    def preload(self, items: list[Any] | None = None) -> None:
        """Keep one epoch's items in memory (for the loop-only timing): the view's crops/flips are off here.

        ``items``: these instead of the train split's (e.g. the same items repeated, for a longer epoch).
        """
        if items is None:
            items = [self.original_set[i] for i in range(len(self.original_set))]
        memory, sampler = _InMemory(items), self.original_sampler
        if len(items) != len(self.original_set):  # the epoch's permutation must cover these items
            sampler = torch.utils.data.distributed.DistributedSampler(
                memory, num_replicas=self.session.world, rank=self.session.rank, shuffle=True,
                seed=self.session.params.train.rdm_seed)
        self.preloaded = (memory, sampler)

    def run_epoch(self, preloaded: bool = False) -> int:
        """One ``_train_epoch`` of our training (on the preloaded items with ``preloaded``); returns its samples."""
        self.epoch += 1
        self.session.train_set, self.session.sampler = (
            self.preloaded if preloaded else (self.original_set, self.original_sampler))
        training._train_epoch(self.session, self.epoch, progress=False)
        return len(self.session.train_set)


class _InMemory(torch.utils.data.Dataset):
    """Items already loaded; ``epoch`` is accepted and ignored (no crops, no flips under ``--pretrain``)."""

    def __init__(self, items: list[Any]) -> None:
        self.items, self.epoch = items, 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Any:
        return self.items[index]


def measure(checkout: Path, width: int, repeats: int, loop_only: bool,
            end_to_end: bool = True) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Seconds per epoch of each candidate and its samples per epoch."""
    params = sample_on_disk("default")
    root = Path(params.data.root)
    work = Path(tempfile.mkdtemp(prefix="published_parity-"))
    published = Published(checkout, root, widths_of(width), work)
    ours = Ours(params, widths_of(width), work, precomputed_masks=True)
    ours_fly = Ours(params, widths_of(width), work, precomputed_masks=False) if end_to_end else None
    samples: dict[str, int] = {}

    def timed(name: str, runner: Any, preloaded: bool = False) -> Any:
        def run() -> None:
            samples[name] = runner.run_epoch(preloaded)
        return run

    times: dict[str, list[float]] = {}
    if end_to_end:
        candidates = {"published": timed("published", published), "ours, masks on the fly": timed(
            "ours, masks on the fly", ours_fly), "ours": timed("ours", ours)}
        times.update(interleaved(candidates, repeats=repeats, warmup=0))
    if loop_only:
        published.preload()
        ours.preload()
        more = {"published, loop only": timed("published, loop only", published, True),
                "ours, loop only": timed("ours, loop only", ours, True)}
        times.update(interleaved(more, repeats=repeats, warmup=0))
    return times, samples


def report(times: dict[str, list[float]], samples: dict[str, int], args: argparse.Namespace, command: str,
           elapsed: float) -> str:
    """The markdown report: seconds and samples/s per candidate, ratios to the published loop."""
    rate = {name: samples[name] / median(values) for name, values in times.items()}
    reference = {name: "published, loop only" if "loop only" in name else "published" for name in times}
    lines = [
        "# One training epoch, ours against the published script's loop",
        "",
        f"Command: `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {elapsed / 60:.0f} min).",
        f"Machine: {machine_line()}.",
        f"Published code: `{args.published}`. Network: `multisarv2`, widths [{args.width}] / "
        f"[{args.width}, {args.width}], the seed's flags (`--pretrain`, `ml`, `scale_by` 10, Adam lr 1e-3, "
        f"gamma 1.0, batch {BATCH}), float32 on CPU, no loader workers; the synthetic sample's train split. "
        f"Each time is one whole epoch; median of {args.repeats} round-robin rounds.",
        "",
        "| loop | samples / epoch | s / epoch (median) | spread | samples/s | ours / published |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, values in times.items():
        ratio = rate[name] / rate[reference[name]]
        lines.append(f"| {name} | {samples[name]} | {median(values):.1f} | {spread(values)} | {rate[name]:.2f} | "
                     f"{ratio:.2f}x |")
    lines += [
        "",
        "`ours / published`: samples/s over the published loop's samples/s of the same kind (end to end, or "
        "loop only). `published` and `ours, masks on the fly` both compute s2cloudless masks for every sample "
        "(the published script has no other way); `ours` reads the masks of the `cloudmasks` stage. Loop only: "
        "batches loaded into memory beforehand (ours still collates its items per batch). Both loops run with "
        "`torch.use_deterministic_algorithms(True)`; ours turns off its NaN fill of new tensors "
        "(`torch.utils.deterministic.fill_uninitialized_memory`, ~20% of a step's CPU time in `aten::fill_`), the "
        "published loop keeps torch's default, as its script runs. The machine is shared by several jobs (2 cores): the ratios "
        "come from one round-robin run; absolute times do not carry over.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Time the epochs, print the table, write the results file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--published", type=Path, required=True, help="checkout of github.com/RSIR25/sscr")
    parser.add_argument("--width", type=int, default=16, help="encoder/decoder width (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per candidate (default 2)")
    parser.add_argument("--no-loop-only", action="store_true", help="skip the preloaded-batches timing")
    parser.add_argument("--loop-only", action="store_true", help="only the preloaded-batches timing")
    parser.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    times, samples = measure(args.published.resolve(), args.width, args.repeats, not args.no_loop_only,
                             end_to_end=not args.loop_only)
    text = report(times, samples, args, command_line(NAME, argv), time.perf_counter() - start)
    write_report(text, results_path(NAME, "loop_only" if args.loop_only else "full", args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
