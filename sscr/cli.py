"""``sscr`` command line: parses arguments, loads params, calls the library. No logic of its own."""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sscr.config import (
    MASK_KINDS,
    PUBLISHED_PROTOCOL,
    ConfigError,
    Params,
    load_params,
    published_model_protocol,
    record_dir,
)

Handler = Callable[[argparse.Namespace, Params], int | None]


def _list_arg(text: str) -> list[int]:
    """Parse ``[128,64]``, ``128,64`` or ``128`` into a list of ints (the seed passes JSON lists)."""
    text = text.strip()
    try:
        value = json.loads(text) if text.startswith("[") else [int(v) for v in text.split(",") if v]
    except (ValueError, json.JSONDecodeError):
        raise argparse.ArgumentTypeError(f"expected a list of integers like [128,64], got {text!r}") from None
    if not isinstance(value, list) or not all(isinstance(v, int) for v in value):
        raise argparse.ArgumentTypeError(f"expected a list of integers like [128,64], got {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"),
                        help="params file (default: params.yaml; missing = built-in defaults)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="GROUP.KEY=VALUE",
                        help="override one parameter, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--root3", dest="root", type=Path, default=None,
                        help="data-set root (overrides data.root; the seed's name for it)")


# Seed flag -> params key. `sscr train` accepts the seed's flags one to one.
SEED_FLAGS: dict[str, tuple[str, Any]] = {
    "experiment_name": ("train.experiment_name", str),
    "model": ("model.name", str),
    "epochs": ("train.epochs", int),
    "lr": ("train.lr", float),
    "batch_size": ("train.batch_size", int),
    "gamma": ("train.gamma", float),
    "scale_by": ("model.scale_by", float),
    "loss": ("loss.name", str),
    "block_type": ("model.block_type", str),
    "n_head": ("model.n_head", int),
    "encoder_widths": ("model.encoder_widths", _list_arg),
    "decoder_widths": ("model.decoder_widths", _list_arg),
    "device": ("train.device", str),
    "res_dir": ("train.res_dir", str),
    "rdm_seed": ("train.rdm_seed", int),
    "num_workers": ("train.num_workers", int),
    "val_every": ("train.val_every", int),
    "val_after": ("train.val_after", int),
}


def _seed_overrides(args: argparse.Namespace) -> list[str]:
    overrides = []
    for flag, (key, _) in SEED_FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value) if isinstance(value, list) else value}")
    if getattr(args, "use_sar", None) is not None:
        overrides.append(f"model.use_sar={str(args.use_sar).lower()}")
    return overrides


def _protocol_overrides(args: argparse.Namespace) -> list[str]:
    """``--pretrain``: the published training protocol (:data:`sscr.config.PUBLISHED_PROTOCOL`)."""
    if not getattr(args, "pretrain", False):
        return []
    return [f"{key}={json.dumps(value)}" for key, value in PUBLISHED_PROTOCOL.items()]


def load(args: argparse.Namespace) -> Params:
    """Params from ``--params``, then ``--pretrain``'s protocol, ``--set`` and the seed's flags, in that order.

    With ``--pretrain``, last, what the published script forces for the model
    (:data:`sscr.config.PUBLISHED_MODEL_PROTOCOL`) over the seed's flags, except keys given with ``--set``.
    """
    overrides = _protocol_overrides(args) + list(args.overrides) + _seed_overrides(args)
    if getattr(args, "root", None) is not None:
        overrides.append(f"data.root={args.root}")
    params = load_params(args.params, overrides)
    if not getattr(args, "pretrain", False):
        return params
    given = {override.split("=", 1)[0].strip(): override for override in args.overrides}
    forced = published_model_protocol(params.model.name, set(given))
    kept = [given[key] for key in published_model_protocol(params.model.name, set()) if key in given]
    if forced:
        print(f"sscr: --pretrain: the published script trains {params.model.name} with "
              f"{', '.join(f'{key}={value}' for key, value in forced.items())} whatever its flags say, and so does "
              "this run (--set changes it)", file=sys.stderr)
    if forced or kept:  # the forced values over the seed's flags, and a --set of the same key over both
        params = load_params(args.params, overrides + [f"{key}={json.dumps(value)}" for key, value in forced.items()]
                             + kept)
    return params


# ---------------------------------------------------------------- handlers


def cmd_check_params(args: argparse.Namespace, params: Params) -> None:
    from sscr.config import PARAMS_MAX_BYTES, YAML_MAX_DEPTH, YAML_MAX_NODES, flatten

    print(f"{args.params}: valid, {len(flatten(params))} parameters (limits: {PARAMS_MAX_BYTES // 1024} KiB, "
          f"{YAML_MAX_NODES:,} YAML values with aliases expanded, {YAML_MAX_DEPTH} levels)")


def cmd_data_synth(args: argparse.Namespace, params: Params) -> None:
    from sscr.data.synth import write_synthetic_sample

    synth = params.data.synth
    if args.seed is not None:
        synth = synth.model_copy(update={"seed": args.seed})
    if args.patches_per_roi is not None:
        synth = synth.model_copy(update={"patches_per_roi": args.patches_per_roi})
    pids = write_synthetic_sample(
        params.data.root, synth, patch_size=args.patch_size or params.data.patch_size,
        seasons=params.data.seasons,
    )
    print(f"synthetic SEN12MS-CR sample: {len(pids)} triplets under {params.data.root}")


def cmd_data_demo_scene(args: argparse.Namespace, params: Params) -> None:
    from sscr.data.demo_scene import write_demo_scene

    scene = write_demo_scene(args.out_dir, seed=args.seed, overwrite=args.overwrite)
    print(f"demo scene (synthetic): L1C product {scene.s2}, S1 {scene.s1}; try:\n"
          f"  sscr infer --model models:/sscr@champion --s2 {scene.s2} --s1 {scene.s1} --out {args.out_dir / 'clear.tif'}")


def cmd_data_download(args: argparse.Namespace, params: Params) -> None:
    from sscr.data.prepare import prepare_dataset

    root = prepare_dataset(params.data)
    print(f"data set ready under {root} (source: {params.data.source})")


def cmd_masks(args: argparse.Namespace, params: Params) -> None:
    from sscr.cloudmasks import precompute_masks
    from sscr.data.index import dropped_lines

    masks = params.masks
    report = precompute_masks(
        params.data.root, args.masks_dir or masks.dir, masks.kinds, seasons=params.data.seasons,
        patch_size=params.data.patch_size, workers=args.workers or masks.workers,
        on_error=params.data.on_error,
    )
    print(f"cloud masks: {report.computed} computed, {report.skipped} already done, "
          f"{len(report.invalid)} invalid; coverage table {report.table}")
    for line in dropped_lines(report.dropped(), "cloud masks", report.computed + report.skipped):
        print(line, file=sys.stderr)
    if report.invalid:
        print(f"  every invalid sample and why: {report.invalid_table}", file=sys.stderr)


def cmd_train(args: argparse.Namespace, params: Params) -> None:
    from sscr.train import train

    if args.pretrained is not None:
        params.train.pretrained = args.pretrained
    if args.freeze:
        params.train.freeze = args.freeze
    result = train(params, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    print(f"trained {params.model.name}: {result.epochs_done} epochs, best by "
          f"{params.train.select_best.replace('_', ' ')} at epoch {result.best_epoch} (validation loss "
          f"{result.best_val_loss:.5g}, PSNR {result.best_val_psnr:.3f} dB); MLflow run {result.run_id}; "
          f"checkpoint {result.best_checkpoint} (sha256 {result.checkpoint_sha256[:12]}); "
          f"record {record_dir(params) / 'run.json'}")


def cmd_evaluate(args: argparse.Namespace, params: Params) -> None:
    from sscr.evaluate import evaluate, resolve_inputs

    if args.export_every is not None:
        params.evaluate.export_every = args.export_every
    if args.plot_every is not None:
        params.evaluate.plot_every = args.plot_every
    metrics = evaluate(params, checkpoint=args.checkpoint, load_config=args.load_config)
    written = record_dir(resolve_inputs(params, args.checkpoint, args.load_config).params) / "metrics.json"
    print(f"{metrics['n_images']} test images: PSNR {metrics['test']['PSNR']:.2f} dB overall, "
          f"{metrics['test_cloudy']['PSNR']:.2f} dB inside clouds (cloudy input: "
          f"{metrics['baseline_cloudy']['PSNR']:.2f} dB, gain {metrics['gain_cloudy_PSNR']:+.2f} dB); "
          f"SSIM {metrics['test']['SSIM']:.4f}, SAM {metrics['test']['SAM']:.2f} deg -> {written}")
    # where the user sees it; a failed check marks the table (and an MLflow tag), not the stage
    print((written.parent / "quality.md").read_text(), end="")


def cmd_register(args: argparse.Namespace, params: Params) -> None:
    from sscr.registry import register_evaluated

    registry = params.registry
    records = record_dir(params)
    decision = register_evaluated(
        args.run_json or records / "run.json", args.metrics or records / "metrics.json",
        registry.model_name, registry.alias, registry.metric, out=args.out, registry=registry,
        params_file=args.params,
    )
    print(f"registered {decision.line()}")


def cmd_promote(args: argparse.Namespace, params: Params) -> None:
    from sscr import tracking
    from sscr.registry import default_candidate, promote

    registry = params.registry
    if args.force and args.reason is None:
        raise ValueError("--force needs --reason TEXT: why the rule is overridden (recorded with the decision)")
    if args.reason is not None and not args.force:
        raise ValueError("--reason goes with --force; without --force rule 1 decides and records its evidence")
    tracking.configure()
    version = args.version or default_candidate(registry.model_name, registry.challenger)
    decision = promote(registry.model_name, version, registry.alias, registry.metric,
                       challenger_alias=registry.challenger, min_gain=registry.min_gain,
                       confidence=registry.confidence,
                       action="sscr promote --force" if args.force else "sscr promote",
                       force=args.reason if args.force else None)
    print(decision.line())


def cmd_tune(args: argparse.Namespace, params: Params) -> int:
    from sscr.tracking import redact
    from sscr.tune import run_study

    result = run_study(params, n_trials=args.n_trials, timeout=args.timeout, storage=args.storage,
                       progress=not args.no_progress)
    states = ", ".join(f"{count} {state.lower()}" for state, count in sorted(result.states.items()))
    print(f"study {result.study_name} ({redact(args.storage or params.tune.storage)}): {states} of "
          f"{result.n_trials} trials; MLflow parent run {result.parent_run_id}")
    if result.best_trial is None:
        print(f"sscr: no trial of study {result.study_name} completed, so there are no best params; see the "
              "failed trials' optuna.reason tags in MLflow", file=sys.stderr)
        return 1
    print(f"best: trial {result.best_trial}, validation PSNR {result.best_value:.3f} dB -> "
          f"{result.best_params_path}")
    return 0


def cmd_sync_metrics(args: argparse.Namespace, params: Params) -> None:
    from sscr import tracking

    tracking.configure()
    print(f"uploaded {tracking.replay_fallback(args.fallback)} metric values from {args.fallback}")


def _bbox_arg(text: str) -> tuple[float, float, float, float]:
    """``W,S,E,N`` -> four floats."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected W,S,E,N (four numbers, e.g. 11.30,48.05,11.42,48.12), got {text!r}")
    return values  # type: ignore[return-value]


def _window_arg(text: str) -> tuple[int, int, int, int]:
    """``COL,ROW,WIDTH,HEIGHT`` -> four ints."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected COL,ROW,WIDTH,HEIGHT in 10 m pixels (e.g. 0,0,2048,2048), got {text!r}")
    return values  # type: ignore[return-value]


def _png_arg(text: str) -> Path:
    """A ``.png`` file name (so it can be neither an input nor a GeoTIFF output)."""
    path = Path(text)
    if path.suffix.lower() != ".png" or path.is_dir():
        raise argparse.ArgumentTypeError(f"expected a file name ending in .png, e.g. quicklook.png, got {text!r}")
    return path


class _Terminated(KeyboardInterrupt):
    """SIGTERM raised as Ctrl-C is, so a run cleans up the same way on both."""

    signum = signal.SIGTERM


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated()


def cmd_infer(args: argparse.Namespace, params: Params) -> int | None:
    from sscr.infer import SceneInputs, check_batch_size, infer_scene
    from sscr.serving import load_model

    check_batch_size(args.tiles_per_pass)
    inputs = SceneInputs.of(args.s2, args.s1, s1_units=args.s1_units, s2_resampling=args.s2_resampling,
                            window=args.window, bbox=args.bbox, bbox_crs=args.bbox_crs)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    mask_out, drawn_mask = args.mask_out, None
    try:
        loaded = load_model(args.model, device=args.infer_device)
        if args.quicklook and mask_out is None and getattr(loaded.model, "use_mask", False) and args.mask != "none":
            mask_out = drawn_mask = args.out.with_name(f".{args.out.name}.quicklook-mask.tif")  # for the mask panel
        report = infer_scene(loaded.model, inputs, None, args.out, var_path=args.var_out, mask_path=mask_out,
                             tile=args.tile, overlap=args.overlap, batch_size=args.tiles_per_pass,
                             mask_kind=args.mask_kind or loaded.mask_kind, mask=args.mask, model_source=loaded.source,
                             model_version=loaded.version, model_files=loaded.files, progress=not args.no_progress)
        if args.quicklook:
            from sscr.data.quicklook import write_quicklook

            write_quicklook(args.quicklook, report.out_path, args.s2, args.s1 or (), args.s1_units, report.mask_path,
                            title=f"{report.out_path.name}: {loaded.source} ({loaded.version})")
    except KeyboardInterrupt as err:
        signum = getattr(err, "signum", signal.SIGINT)
        print(f"sscr: infer interrupted ({signal.Signals(signum).name}): {args.out} and the other outputs are as "
              "they were before, no partial file left", file=sys.stderr)
        return 128 + signum
    finally:
        if drawn_mask is not None:
            drawn_mask.unlink(missing_ok=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    written = report.as_dict()
    if drawn_mask is not None:
        written["mask_path"] = None  # drawn, then removed: not asked for
    print(json.dumps({**written, **({"quicklook": str(args.quicklook)} if args.quicklook else {})}, default=str))
    return None


def cmd_serving_request(args: argparse.Namespace, params: Params) -> None:
    from sscr.serving import write_request

    out = write_request(args.out, args.s2, args.s1, overwrite=args.overwrite)
    print(f"request body for {args.s2}{' + ' + str(args.s1) if args.s1 else ''} -> {out} "
          f"({out.stat().st_size / 1e6:.1f} MB); send it to a served model:\n"
          f"  curl -sS --fail-with-body -X POST http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' "
          f"--data-binary @{out} -o response.json")


def cmd_serve(args: argparse.Namespace, params: Params) -> int:
    from sscr.serving import serve

    return serve(args.model, host=args.host, port=args.port, workers=args.workers)


def cmd_import_published(args: argparse.Namespace, params: Params) -> None:
    from sscr.published import import_published

    result = import_published(args.checkpoint, args.out, params, config=args.config, force=args.force)
    print(f"imported {result.model_name} (epoch {result.epoch}) from {args.checkpoint} into {result.run_dir}: "
          f"MLflow run {result.run_id}, model {result.model_uri or '(not logged)'}")
    if result.ignored or result.unknown:
        print(f"conf.json keys without effect here, ignored: {', '.join(result.ignored + result.unknown)}")


def cmd_export_published(args: argparse.Namespace, params: Params) -> None:
    from sscr.published import export_published

    target = export_published(args.run, args.out, force=args.force)
    print(f"published format: {target} and {target.with_name('conf.json')} (published test script: "
          f"--weight_folder {target.parent.parent} --experiment_name {target.parent.name})")


def cmd_ensemble(args: argparse.Namespace, params: Params) -> None:
    from sscr.ensemble import ensemble, ensemble_dirs

    if all(path.is_dir() for path in args.predictions):
        if args.out_dir is None:
            raise ValueError("ensembling directories needs --out-dir")
        results = ensemble_dirs(args.predictions, args.out_dir, allow_missing=args.allow_missing)
        print(f"ensembled {len(results)} predictions of {len(args.predictions)} models into {args.out_dir}")
    else:
        if args.out_mean is None or args.out_var is None:
            raise ValueError("ensembling files needs --out-mean and --out-var")
        ensemble(args.predictions, args.out_mean, args.out_var)
        print(f"mean -> {args.out_mean}, epistemic variance -> {args.out_var}")


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``sscr`` argument parser with one subcommand per stage."""
    parser = argparse.ArgumentParser(
        prog="sscr", description="SSCR: cloud removal for Sentinel-2 with Sentinel-1 SAR (SEN12MS-CR).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser(
        "check-params", help="check a params file against the schema and the size limits (run it before `dvc`, "
                             "whose own YAML parser has no limits, on a params.yaml from elsewhere)")
    _add_common(check)
    check.set_defaults(handler=cmd_check_params)

    data = commands.add_parser("data", help="data set: synthesise the embedded sample or download SEN12MS-CR")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    synth = data_commands.add_parser("synth", help="write the synthetic SEN12MS-CR-format sample")
    _add_common(synth)
    synth.add_argument("--root", dest="root", type=Path, default=None, help="output root (data.root)")
    synth.add_argument("--seed", type=int, default=None, help="random seed (data.synth.seed)")
    synth.add_argument("--patch-size", type=int, default=None, help="patch size in px (data.patch_size)")
    synth.add_argument("--patches-per-roi", type=int, default=None, help="data.synth.patches_per_roi")
    synth.set_defaults(handler=cmd_data_synth)
    demo = data_commands.add_parser(
        "demo-scene", help="write a small synthetic demo scene as real products: an L1C .zip and an S1 GeoTIFF")
    _add_common(demo)
    demo.add_argument("--out-dir", type=Path, required=True, help="directory to write into (created if missing)")
    demo.add_argument("--seed", type=int, default=0, help="random seed of the synthetic scene (default 0)")
    demo.add_argument("--overwrite", action="store_true", help="replace demo files already in --out-dir")
    demo.set_defaults(handler=cmd_data_demo_scene)
    download = data_commands.add_parser(
        "download", help="stage `download`: synthesise (data.source: synthetic) or fetch SEN12MS-CR")
    _add_common(download)
    download.set_defaults(handler=cmd_data_download)

    masks = commands.add_parser("masks", help="stage `cloudmasks`: precompute cloud masks and coverage table")
    _add_common(masks)
    masks.add_argument("--masks-dir", type=Path, default=None, help="output directory (masks.dir)")
    masks.add_argument("--workers", type=int, default=None, help="processes (masks.workers)")
    masks.set_defaults(handler=cmd_masks)

    train = commands.add_parser(
        "train", help="stage `train`: train a model (the seed's flags are accepted as overrides)")
    _add_common(train)
    for flag, (key, kind) in SEED_FLAGS.items():
        train.add_argument(f"--{flag}", type=kind, default=None, help=f"overrides {key}")
    train.add_argument("--use_sar", action=argparse.BooleanOptionalAction, default=None,
                       help="fuse S1 SAR (model.use_sar); --no-use_sar for the optical-only ablation")
    train.add_argument("--pretrain", action="store_true",
                       help="the seed's switch for single-date SEN12MS-CR training (always single-date here): "
                            "trains with the published protocol (sscr.config.PUBLISHED_PROTOCOL: Adam with an "
                            "exponential schedule, every whole patch once per epoch, no augmentation, validation "
                            "every epoch, best checkpoint by validation loss, float32); see README")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run of this experiment")
    train.add_argument("--pretrained", type=Path, default=None, help="checkpoint to start from (train.pretrained)")
    train.add_argument("--freeze", nargs="+", default=None, metavar="PREFIX",
                       help="freeze parameters whose names start with these prefixes (train.freeze)")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser("evaluate", help="stage `evaluate`: metrics, tables, panels on the test split")
    _add_common(evaluate)
    evaluate.add_argument("--checkpoint", type=Path, default=None, help="checkpoint (default: the run's model_best.pt)")
    evaluate.add_argument("--load_config", type=Path, default=None,
                          help="a run's conf.json (or a checkpoint): evaluate with the config it was trained with")
    evaluate.add_argument("--export_every", type=int, default=None,
                          help="export every N-th prediction as GeoTIFF (evaluate.export_every; -1 = none)")
    evaluate.add_argument("--plot_every", type=int, default=None, help="panel every N-th sample (evaluate.plot_every)")
    evaluate.set_defaults(handler=cmd_evaluate)

    register = commands.add_parser("register", help="stage `register`: register the evaluated model, promote if better")
    _add_common(register)
    register.add_argument("--run-json", type=Path, default=None,
                          help="training run.json (default: the run's, in its record directory)")
    register.add_argument("--metrics", type=Path, default=None,
                          help="evaluation metrics.json (default: beside run.json)")
    register.add_argument("--out", type=Path, default=Path("results/register.json"), help="decision file")
    register.set_defaults(handler=cmd_register)

    promote = commands.add_parser(
        "promote", help="move @champion to a version if it beats the champion beyond noise on validation (rule 1)")
    _add_common(promote)
    promote.add_argument("--version", default=None, help="model version (default: the @challenger, else the newest)")
    promote.add_argument("--force", action="store_true", help="move @champion whatever rule 1 says (needs --reason)")
    promote.add_argument("--reason", default=None, help="why --force overrides the rule (recorded on the version)")
    promote.set_defaults(handler=cmd_promote)

    tune = commands.add_parser(
        "tune", help="stage `tune`: Optuna search over loss and architecture (run it in several shells to add workers)")
    _add_common(tune)
    tune.add_argument("--n-trials", type=int, default=None, help="the study's total trial budget (tune.n_trials)")
    tune.add_argument("--timeout", type=float, default=None, help="seconds for this worker (tune.timeout)")
    tune.add_argument("--storage", default=None,
                      help="study storage: SQLAlchemy URL or journal:<path> (tune.storage)")
    tune.add_argument("--no-progress", action="store_true", help="no progress bars")
    tune.set_defaults(handler=cmd_tune)

    sync = commands.add_parser("sync-metrics", help="upload metrics kept locally while MLflow was unreachable")
    _add_common(sync)
    sync.add_argument("fallback", type=Path, help="the metrics_fallback.jsonl a training run reported")
    sync.set_defaults(handler=cmd_sync_metrics)

    infer = commands.add_parser(
        "infer", help="cloud-free COG for a cloudy S2 scene of any size (L1C product or GeoTIFF, + S1)")
    _add_common(infer)
    infer.add_argument("--model", required=True,
                       help="checkpoint path or MLflow model URI, e.g. models:/sscr@champion")
    infer.add_argument("--s2", type=Path, required=True,
                       help="cloudy S2: an L1C product (.SAFE directory, its .zip, or MTD_MSIL1C.xml) or a 13-band "
                            "GeoTIFF of L1C DN")
    infer.add_argument("--s1", type=Path, nargs="+", default=None, metavar="FILE",
                       help="S1 backscatter, any CRS and pixel size: one 2-band file (VV, VH) or two files VV VH "
                            "(SAR models)")
    infer.add_argument("--s1-units", choices=["db", "linear"], default="db", help="S1 values: dB or linear power")
    infer.add_argument("--bbox", type=_bbox_arg, default=None, metavar="W,S,E,N",
                       help="crop to this area (longitude/latitude unless --bbox-crs)")
    infer.add_argument("--bbox-crs", default="EPSG:4326", help="CRS of --bbox (default EPSG:4326)")
    infer.add_argument("--window", type=_window_arg, default=None, metavar="COL,ROW,W,H",
                       help="crop to this pixel window of the 10 m grid")
    infer.add_argument("--s2-resampling", choices=["nearest", "bilinear", "cubic"], default="nearest",
                       help="20 m and 60 m bands to 10 m (nearest: as the training data)")
    infer.add_argument("--out", type=Path, required=True, help="output cloud-free COG (13 bands uint16 DN)")
    infer.add_argument("--var-out", type=Path, default=None, help="output variance COG (variance models)")
    infer.add_argument("--mask-out", type=Path, default=None,
                       help="output COG of the cloud mask the model was fed (models that take one)")
    infer.add_argument("--quicklook", type=_png_arg, default=None, metavar="PNG",
                       help="also draw cloudy RGB | S1 | output RGB | cloud mask side by side into this PNG")
    infer.add_argument("--mask", default="s2cloudless-10m", metavar="SOURCE",
                       help="cloud mask for models that take one: s2cloudless-10m (default, the benchmark's), "
                            "s2cloudless-60m (faster), none, or a mask GeoTIFF; ignored by models without a mask "
                            "input")
    infer.add_argument("--tile", type=int, default=256, help="tile size in px")
    infer.add_argument("--overlap", type=int, default=32, help="overlap between tiles in px (blended)")
    infer.add_argument("--batch-size", dest="tiles_per_pass", type=int, default=None,
                       help="tiles per forward pass (default: 1 on CPU, 4 on a GPU)")
    infer.add_argument("--mask-kind", choices=list(MASK_KINDS),
                       default=None, help="kind of cloud mask fed to the model (default: the one it was trained with)")
    infer.add_argument("--device", dest="infer_device", default="auto", help="auto, cpu or cuda")
    infer.add_argument("--no-progress", action="store_true", help="no progress bar")
    infer.set_defaults(handler=cmd_infer)

    serve = commands.add_parser(
        "serve", help="serve a registered model over HTTP after checking its files against the registry's record")
    _add_common(serve)
    serve.add_argument("--model", default="models:/sscr@champion",
                       help="registered model URI (default models:/sscr@champion)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=5001, help="port (default 5001)")
    serve.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    serve.set_defaults(handler=cmd_serve)

    request = commands.add_parser(
        "serving-request", help="write a request body for a served model (`sscr serve`) from one patch's GeoTIFFs")
    _add_common(request)
    request.add_argument("--s2", type=Path, required=True, help="cloudy S2 patch: 13-band GeoTIFF of L1C DN")
    request.add_argument("--s1", type=Path, default=None, help="its S1 patch: 2-band GeoTIFF (VV, VH) in dB "
                                                                "(SAR models)")
    request.add_argument("--out", type=Path, required=True, help="the JSON file to write (e.g. request.json)")
    request.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    request.set_defaults(handler=cmd_serving_request)

    importer = commands.add_parser(
        "import-published", help="a checkpoint of the published code (+ conf.json) -> a run directory")
    _add_common(importer)
    importer.add_argument("checkpoint", type=Path, help="the published model.pth.tar")
    importer.add_argument("--config", type=Path, default=None,
                          help="the run's conf.json (default: the one beside the checkpoint)")
    importer.add_argument("--out", type=Path, required=True,
                          help="run directory to write (sets train.res_dir and train.experiment_name); one that "
                               "holds files is refused unless --force")
    importer.add_argument("--force", action="store_true", help="replace the run directory --out if it exists")
    importer.set_defaults(handler=cmd_import_published)

    exporter = commands.add_parser(
        "export-published",
        help="a run of a published network (uncrtaints, multisarv2, unet, utae) -> model.pth.tar + conf.json")
    _add_common(exporter)
    exporter.add_argument("run", type=Path, help="run directory (its model_best.pt) or checkpoint")
    exporter.add_argument("--out", type=Path, required=True, help="output directory")
    exporter.add_argument("--force", action="store_true",
                          help="replace model.pth.tar and conf.json in --out if they exist")
    exporter.set_defaults(handler=cmd_export_published)

    ensemble = commands.add_parser("ensemble", help="mean and epistemic variance of several models' predictions")
    _add_common(ensemble)
    ensemble.add_argument("predictions", type=Path, nargs="+",
                          help="prediction GeoTIFFs of one scene, or several models' export/ directories")
    ensemble.add_argument("--out-mean", type=Path, default=None, help="mean GeoTIFF (for files)")
    ensemble.add_argument("--out-var", type=Path, default=None, help="variance GeoTIFF (for files)")
    ensemble.add_argument("--out-dir", type=Path, default=None, help="output directory (for directories)")
    ensemble.add_argument("--allow-missing", action="store_true",
                          help="skip predictions missing from some directories")
    ensemble.set_defaults(handler=cmd_ensemble)
    return parser


# What to do about the file-system errors a stage can meet, by errno.
_WRITE_ELSEWHERE = "or point the output elsewhere (--set train.res_dir=..., masks.dir, evaluate.out_dir, --out)"
_OS_FIXES: dict[int, str] = {
    errno.ENOSPC: f"the disk is full: free space on it, {_WRITE_ELSEWHERE}",
    errno.EDQUOT: f"the disk quota is used up: free space, {_WRITE_ELSEWHERE}",
    errno.EFBIG: f"the file would exceed the file-size limit (ulimit -f, or the file system's): raise it, "
                 f"{_WRITE_ELSEWHERE}",
    errno.EROFS: f"the file system is mounted read-only: remount it read-write, {_WRITE_ELSEWHERE}",
    errno.EACCES: f"permission denied: give this user access (chmod/chown), {_WRITE_ELSEWHERE}",
    errno.EPERM: f"operation not permitted: give this user access (chmod/chown), {_WRITE_ELSEWHERE}",
    errno.ELOOP: "a symbolic link loop: point the link at a real file or directory, or remove it",
    errno.EISDIR: "it is a directory: pass a file",
    errno.ENOTDIR: "a part of the path is a file, not a directory: fix the path",
    errno.ENAMETOOLONG: "the path is too long for the file system: use a shorter one",
    errno.EIO: "an input/output error of the disk or network file system: check it (dmesg) and retry",
}


def os_error_line(err: OSError) -> str:
    """One line for a file-system error: the path, what happened (errno name) and the fix."""
    where = f"{err.filename}" + (f" -> {err.filename2}" if err.filename2 else "") if err.filename else ""
    what = err.strerror or str(err)
    code = errno.errorcode.get(err.errno or 0, "")
    fix = _OS_FIXES.get(err.errno or 0)
    return f"{where + ': ' if where else ''}{what}{f' ({code})' if code else ''}{'; ' + fix if fix else ''}"


def _store_line(err: BaseException, args: argparse.Namespace, params: Params | None) -> str | None:
    """One line for a locked, read-only or damaged store (Optuna's for `sscr tune`, else MLflow's), else None."""
    from sscr.stores import mlflow_store, one_line, store_name

    if args.command == "tune" and type(err).__module__.startswith(("optuna", "sqlalchemy")):
        storage = getattr(args, "storage", None) or (params.tune.storage if params else "")
        return one_line(err, "the Optuna storage", store_name(storage))
    return one_line(err, "the MLflow tracking store", mlflow_store())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sscr`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if os.environ.get("DVC_STAGE") or os.environ.get("SSCR_DIE_WITH_PARENT") == "1":
        # Started by `dvc repro` (or an orchestrator): end with it rather than go on as an orphan that a
        # second `dvc repro` would race. A shell's `sscr train` under nohup keeps running.
        from sscr.process import die_with_parent

        die_with_parent()
    try:
        params = load(args)
        result = args.handler(args, params)
    except ConfigError as err:
        print(f"sscr: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # Ctrl-C: what was finished is kept (atomic writes), what was not is cleaned up on the way out; one line.
        print(f"sscr: {err or 'interrupted (Ctrl-C)'}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except Exception as err:
        # Our own errors, bad inputs and file-system failures are reported in one line that names the file
        # and the fix; anything else is a bug and keeps its traceback.
        store = _store_line(err, args, locals().get("params"))
        if store:
            print(f"sscr: error: {store}", file=sys.stderr)
            return 1
        if isinstance(err, ValueError) or type(err).__module__.startswith("sscr."):
            print(f"sscr: error: {err}", file=sys.stderr)
            return 1
        if isinstance(err, OSError):
            line = str(err) if err.errno is None else os_error_line(err)  # errno None: raised with a message
            print(f"sscr: error: {line}", file=sys.stderr)
            return 1
        raise
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
