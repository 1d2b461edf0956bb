"""Hostile small inputs stay small (issue 21): each test builds the input (never ships it), replays it through the
command a user would run, and checks the exit, the one-line message, the bound on time or memory where that is the
point, and the files left behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from affine import Affine

from sscr import cli

from tiny import TINY, deep_update

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = Path(__file__).resolve().parent / "fixtures" / "published" / "published_run"
CRS = "EPSG:32632"
TRANSFORM = Affine(10.0, 0.0, 600000.0, 0.0, -10.0, 5200000.0)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_line(stderr: str, *parts: str) -> str:
    """The last line of ``stderr``, which starts with ``sscr:`` and holds ``parts``; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("sscr:"), stderr[-2000:]
    for part in parts:
        assert part in last, f"{part!r} not in {last!r}"
    return last


def _sscr_run(args: list[str], cwd: Path, timeout: float = 300,
              address_space: int | None = None) -> tuple[int, str, float]:
    """``sscr ARGS`` in a process of its own: (exit code, stderr, seconds).

    ``address_space``: the process's memory limit in bytes (``RLIMIT_AS``): beyond it an allocation fails,
    so an exit with the expected message proves the input was refused within that memory.
    """
    import resource

    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "sscr.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, preexec_fn=limit if address_space else None)
    return done.returncode, done.stderr, time.monotonic() - start


# ---------------------------------------------------------------- 1. a YAML anchor bomb in params.yaml


def _anchor_bomb(levels: int, fan: int = 9) -> str:
    """``[&a0 [x]*9, &a1 [*a0]*9, ...]``: a few hundred bytes that expand to fan**levels values."""
    anchors = ["&a0 [" + ",".join(["x"] * fan) + "]"]
    anchors += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]" for i in range(1, levels)]
    return "[" + ", ".join(anchors) + "]"


def test_params_anchor_bomb_is_refused_before_expansion(tmp_path):
    params = (REPO / "params.yaml").read_text()
    assert "  epochs: 40\n" in params
    bomb = tmp_path / "params.yaml"
    bomb.write_text(params.replace("  epochs: 40\n", f"  epochs: {_anchor_bomb(8)}\n"))  # 9**8 = 43 M values
    assert bomb.stat().st_size < len(params) + 500
    for command in (["check-params"], ["data", "download"], ["train"]):
        # within 1 GiB of address space (the probe saw over 1.4 GB and 90 s before it was killed)
        code, stderr, seconds = _sscr_run(command, tmp_path, timeout=120, address_space=1 << 30)
        print(f"sscr {' '.join(command)} on the anchor bomb: exit {code} after {seconds:.2f} s")
        assert code == 2
        _one_line(stderr, "params.yaml refused", "expands its aliases", "10,000 values")
        assert len(stderr) < 500  # the value is never printed
        assert seconds < 30
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()


def test_params_bomb_in_an_override_and_a_small_bomb_quote_nothing_large(tmp_path, capsys):
    code = cli.main(["check-params", "--params", str(tmp_path / "absent.yaml"),
                     "--set", f"train.epochs={_anchor_bomb(6)}"])
    assert code == 2
    _one_line(capsys.readouterr().err, "override train.epochs refused", "10,000 values")
    # 9**4 = 6561 values: within the expansion limit, so the schema refuses it, quoting 80 characters at most
    small = tmp_path / "small.yaml"
    small.write_text(f"train:\n  epochs: {_anchor_bomb(4)}\n")
    assert cli.main(["check-params", "--params", str(small)]) == 2
    err = capsys.readouterr().err
    assert "train.epochs" in err and len(err) < 400, err[:1000]
    # nesting and size have limits too
    deep = tmp_path / "deep.yaml"
    deep.write_text("train:\n  epochs: " + "[" * 5000 + "]" * 5000 + "\n")
    assert cli.main(["check-params", "--params", str(deep)]) == 2
    _one_line(capsys.readouterr().err, "deep.yaml refused", "nests deeper than 32 levels")
    large = tmp_path / "large.yaml"
    large.write_text("# padding\n" * 30000)
    assert cli.main(["check-params", "--params", str(large)]) == 2
    _one_line(capsys.readouterr().err, "large.yaml is larger than 256 KiB")


# ---------------------------------------------------------------- 2 and 10. hostile L1C products


@pytest.fixture(scope="module")
def product_inputs(tmp_path_factory):
    """A zipped and an unzipped L1C product of a 60 px scene, its S1 GeoTIFF and a tiny SAR U-Net checkpoint."""
    from sscr.checkpoint import save_atomic
    from sscr.data.io import write_raster
    from sscr.data.synth import synth_patch
    from sscr.data.synth_products import write_l1c_product
    from sscr.layout import PatchId
    from sscr.models import build_model

    root = tmp_path_factory.mktemp("products")
    patch = synth_patch(PatchId("ROIs1158_spring", 1, 1), patch_size=60, seed=3)
    zipped = write_l1c_product(root / "zip", patch["s2_cloudy"], CRS, TRANSFORM, zipped=True)
    safe = write_l1c_product(root / "safe", patch["s2_cloudy"], CRS, TRANSFORM)
    s1 = write_raster(root / "s1.tif", patch["s1"], CRS, TRANSFORM)
    torch.manual_seed(0)
    model = build_model("mask_unet", encoder_widths=[8, 16], use_sar=True, use_mask=False)
    checkpoint = save_atomic({"model": model.state_dict(), "model_name": "mask_unet", "model_config": dict(model.config),
                              "config": {}}, root / "model_best.pt")
    return {"zip": zipped, "safe": safe, "s1": s1, "checkpoint": checkpoint}


def _zip_bomb(good: Path, bomb: Path, inflated: int) -> str:
    """``good`` with its MTD_MSIL1C.xml padded by a comment to ``inflated`` bytes, deflated; returns the member."""
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(bomb, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if not info.filename.endswith("MTD_MSIL1C.xml"):
                target.writestr(info, data)
                continue
            head, rest = data.split(b"?>", 1)
            inflating = zipfile.ZipInfo(info.filename)
            inflating.compress_type = zipfile.ZIP_DEFLATED
            with target.open(inflating, "w", force_zip64=True) as out:
                out.write(head + b"?><!--")
                chunk = b" " * (1 << 20)
                for _ in range(inflated // len(chunk)):
                    out.write(chunk)
                out.write(b"-->" + rest)
            member = info.filename
    return member


def test_l1c_zip_whose_metadata_inflates_to_128_mb_is_refused_unread(product_inputs, tmp_path, monkeypatch, capsys):
    from sscr.data.io import PatchError
    from sscr.data.sentinel2 import METADATA_MAX_BYTES, read_l1c_product

    bomb = tmp_path / "bomb.zip"
    member = _zip_bomb(product_inputs["zip"], bomb, inflated=128 << 20)
    with zipfile.ZipFile(bomb) as archive:
        info = archive.getinfo(member)
    assert info.file_size > 128 << 20 and info.compress_size < 1 << 20  # 128 MB from under 1 MB
    tracemalloc.start()
    try:
        with pytest.raises(PatchError, match=r"is larger than 4 MiB"):
            read_l1c_product(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * METADATA_MAX_BYTES, f"{peak / 2**20:.1f} MiB held while refusing"
    monkeypatch.chdir(tmp_path)
    code = cli.main(["infer", "--model", str(product_inputs["checkpoint"]), "--s2", str(bomb),
                     "--s1", str(product_inputs["s1"]), "--out", "clear.tif", "--no-progress"])
    assert code == 1
    _one_line(capsys.readouterr().err, f"{bomb}!/{member}", "larger than 4 MiB", "download it again")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.zip"]


def _retarget(safe: Path, band_code: str, new_name: str) -> None:
    metadata = safe / "MTD_MSIL1C.xml"
    text = metadata.read_text()
    old = next(line for line in text.splitlines() if "<IMAGE_FILE>" in line and line.strip().endswith(
        f"_{band_code}</IMAGE_FILE>")).strip()
    metadata.write_text(text.replace(old, f"<IMAGE_FILE>{new_name}</IMAGE_FILE>"))


@pytest.mark.parametrize("how", ["IMAGE_FILE ../../outside", "a symbolic link out of the product"])
def test_safe_product_is_read_only_from_inside(product_inputs, tmp_path, monkeypatch, capsys, how):
    safe = shutil.copytree(product_inputs["safe"], tmp_path / "in" / product_inputs["safe"].name, symlinks=True)
    band = next(safe.rglob("*_B02.jp2"))
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(band, outside / band.name)
    if how.startswith("IMAGE_FILE"):
        _retarget(safe, "B02", f"../../outside/{band.stem}")
        assert (safe / "../../outside" / band.name).resolve() == (outside / band.name).resolve()
    else:
        band.unlink()
        band.symlink_to(outside / band.name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    code = cli.main(["infer", "--model", str(product_inputs["checkpoint"]), "--s2", str(safe),
                     "--s1", str(product_inputs["s1"]), "--out", "clear.tif", "--no-progress"])
    assert code == 1
    _one_line(capsys.readouterr().err, str(safe / "MTD_MSIL1C.xml"), "points outside the product")
    assert list(work.iterdir()) == []


# ---------------------------------------------------------------- 3 and 12. import-published


def test_import_published_onto_an_existing_run_needs_force_and_is_all_or_nothing(tmp_path, monkeypatch, capsys):
    from sscr import rundir, tracking
    from sscr.config import parse_params
    from sscr.published import OutputExists, import_published

    monkeypatch.chdir(tmp_path)
    tracking.configure()
    params = parse_params(TINY)
    out = tmp_path / "results" / "published"
    first = import_published(PUBLISHED / "model.pth.tar", out, params, log_model=False)
    written = sorted(p.name for p in out.iterdir())
    assert written == ["conf.json", "mlflow_run.json", "model_best.pt", "run.json"]
    assert json.loads((out / "run.json").read_text())["checkpoint"] == str(out / rundir.BEST_CHECKPOINT)
    before = _digests(out)

    code = cli.main(["import-published", str(PUBLISHED / "model.pth.tar"), "--out", str(out)])
    assert code == 1
    _one_line(capsys.readouterr().err, f"--out {out} already holds conf.json, mlflow_run.json, model_best.pt, run.json",
              "--force")
    assert _digests(out) == before

    # a failure midway (here: the MLflow record) leaves the existing run as it was, and no staging behind
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "mlflow_run.json"))

    monkeypatch.setattr(rundir, "write_mlflow_run", broken)
    with pytest.raises(OSError, match="No space left"):
        import_published(PUBLISHED / "model.pth.tar", out, params, log_model=False, force=True)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert _digests(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["published"]

    with pytest.raises(OutputExists):
        import_published(PUBLISHED / "model.pth.tar", out, params, log_model=False)
    second = import_published(PUBLISHED / "model.pth.tar", out, params, log_model=False, force=True)
    assert second.run_id != first.run_id
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == second.run_id
    assert sorted(p.name for p in out.iterdir()) == written and sorted(p.name for p in out.parent.iterdir()) == [
        "published"]
    # export-published too: an existing model.pth.tar is replaced only with --force
    target = tmp_path / "exported"
    target.mkdir()
    (target / "model.pth.tar").write_bytes(b"keep me")
    assert cli.main(["export-published", str(out), "--out", str(target)]) == 1
    _one_line(capsys.readouterr().err, "already holds model.pth.tar", "--force")
    assert (target / "model.pth.tar").read_bytes() == b"keep me"


@pytest.mark.parametrize("what", ["checkpoint", "conf.json"])
@pytest.mark.parametrize("kind", ["directory", "symlink loop"])
def test_import_published_names_a_directory_or_a_symlink_loop(tmp_path, monkeypatch, capsys, what, kind):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / ("model.pth.tar" if what == "checkpoint" else "conf.json")
    if kind == "directory":
        bad.mkdir()
    else:
        bad.symlink_to(bad.name)
    checkpoint = bad if what == "checkpoint" else PUBLISHED / "model.pth.tar"
    config = PUBLISHED / "conf.json" if what == "checkpoint" else bad
    code = cli.main(["import-published", str(checkpoint), "--config", str(config), "--out", "run"])
    assert code == 1
    line = _one_line(capsys.readouterr().err, str(bad),
                     "is a directory" if kind == "directory" else "symbolic link loop")
    assert "does not exist" not in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- 4. a model config of 200,000 channels


def _huge_conf(folder: Path) -> Path:
    conf = json.loads((PUBLISHED / "conf.json").read_text())
    conf["encoder_widths"] = [200000]
    path = folder / "conf.json"
    path.write_text(json.dumps(conf))
    return path


def test_huge_widths_from_conf_json_or_a_checkpoint_are_refused_before_allocating(product_inputs, tmp_path,
                                                                                  monkeypatch, capsys):
    conf = _huge_conf(tmp_path)
    assert conf.stat().st_size < 2000
    code, stderr, seconds = _sscr_run(
        ["import-published", str(PUBLISHED / "model.pth.tar"), "--config", str(conf), "--out", "run"], tmp_path)
    assert code == 1  # 320 GB were asked for: refused by the limit, not by a failed allocation
    _one_line(stderr, str(conf), "model.encoder_widths [200000] exceeds the limits of 2048")
    assert seconds < 60
    assert not (tmp_path / "run").exists()
    # an sscr checkpoint whose model config says the same, given to `sscr infer --model`
    state = torch.load(product_inputs["checkpoint"], weights_only=True)
    state["model_config"]["encoder_widths"] = [200000, 200000]
    torch.save(state, tmp_path / "huge.pt")
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    code = cli.main(["infer", "--model", "huge.pt", "--s2", str(product_inputs["zip"]), "--s1",
                     str(product_inputs["s1"]), "--out", "clear.tif"])
    assert code == 1 and time.monotonic() - start < 30
    _one_line(capsys.readouterr().err, "huge.pt", "model.encoder_widths [200000, 200000] exceeds the limits of 2048")
    assert not (tmp_path / "clear.tif").exists()


def test_parameter_count_is_checked_on_the_meta_device_and_small_configs_are_small():
    from sscr.models import ModelTooLarge, available_models, build_model
    from sscr.models._base import (
        MODEL_MAX_LEVELS,
        MODEL_MAX_PARAMS,
        MODEL_SMALL_WIDTH,
        BackboneConfig,
        count_parameters,
    )
    from sscr.models._registry import model_class

    # within the widths limit, but 8 levels of 2048 channels: billions of parameters, refused without allocating
    with pytest.raises(ModelTooLarge, match=r"would hold [\d,]+ parameters, above the limit of 100,000,000"):
        build_model("mask_unet", encoder_widths=[2048] * 8, decoder_widths=[2048] * 8)
    # the shortcut: the largest config of every backbone within MODEL_SMALL_WIDTH is far below the limit
    widest = [MODEL_SMALL_WIDTH] * MODEL_MAX_LEVELS
    for name in available_models():
        for decoder in (widest, [MODEL_SMALL_WIDTH]):
            config = BackboneConfig(variance="diag", encoder_widths=widest, decoder_widths=decoder,
                                    d_model=MODEL_SMALL_WIDTH, n_head=16)
            try:
                count = count_parameters(model_class(name), config)
            except ValueError as err:
                # configs a backbone refuses by shape: mask_unet by its levels, the published unet by its widths
                assert "one width per encoder level" in str(err) or "one decoder width per encoder width" in str(err)
                continue
            assert count < MODEL_MAX_PARAMS / 2, (name, count)


# ---------------------------------------------------------------- 5. a truncated patch, then the download stage


def test_download_stage_resynthesises_a_truncated_patch(tiny_sample, tmp_path, monkeypatch, caplog):
    from sscr.data.index import index_dataset
    from sscr.data.io import why_incomplete

    root, _ = tiny_sample
    data = shutil.copytree(root, tmp_path / "data")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(deep_update(TINY, {"data": {"root": str(data)}})))
    pid = index_dataset(data, splits=["train"], patch_size=64).triplets[0].pid
    patch = data / pid.relpath("s2")
    original = patch.read_bytes()
    patch.write_bytes(original[: len(original) // 3])
    assert why_incomplete(patch) is not None
    before = {name: digest for name, digest in _digests(data).items() if name != str(pid.relpath("s2"))}
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "download", "--params", str(params)]) == 0
    said = caplog.text  # a warning: on a terminal, the one line `sscr: <path> is ...; re-synthesising it`
    assert f"sscr: {patch} is " in said and "re-synthesising it" in said
    assert patch.read_bytes() == original  # deterministic: the same bytes come back
    assert {name: digest for name, digest in _digests(data).items() if name != str(pid.relpath("s2"))} == before
    assert not list(data.rglob("*.partial"))


@pytest.mark.slow
def test_dvc_repro_after_a_truncated_patch_records_the_repaired_file(tmp_path):
    from test_pipeline import dvc, make_clone

    clone = make_clone(tmp_path / "clone", TINY)
    dvc(clone, "repro", "download")
    first = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["download"]["outs"][0]
    patch = next((clone / "data" / "sen12mscr").rglob("*_s2_*_p1.tif"))
    original = patch.read_bytes()
    patch.write_bytes(original[: len(original) // 3])
    again = dvc(clone, "repro", "download")
    assert "Running stage 'download'" in again.stdout
    said = again.stderr
    assert f"sscr: {patch.relative_to(clone)} is " in said and "re-synthesising it" in said
    assert patch.read_bytes() == original
    assert yaml.safe_load((clone / "dvc.lock").read_text())["stages"]["download"]["outs"][0] == first


# ---------------------------------------------------------------- 13. two runs of one experiment, two res_dirs


def test_second_run_with_another_res_dir_does_not_replace_the_first_runs_record(tiny_params, tmp_path, capsys):
    from sscr.config import load_params
    from sscr.train import train

    params = tmp_path / "params.yaml"
    raw = tiny_params.model_dump(mode="json")
    raw["train"].update({"epochs": 1, "max_samples": 2, "metrics_dir": str(tmp_path / "metrics")})
    params.write_text(yaml.safe_dump(raw))
    # the first run, as `sscr train --set train.res_dir=results_a` (without the model upload: seconds)
    train(load_params(params, ["train.res_dir=results_a"]), log_model=False, progress=False)
    records = tmp_path / "metrics" / "sscr"
    before = _digests(records)
    assert json.loads((records / "run.json").read_text())["checkpoint"] == str(Path("results_a/sscr/model_best.pt"))
    capsys.readouterr()
    assert cli.main(["train", "--params", str(params), "--set", "train.res_dir=results_b"]) == 1
    _one_line(capsys.readouterr().err, f"{records / 'run.json'} is the record of the run in results_a/sscr",
              "another train.experiment_name")
    assert _digests(records) == before and not (tmp_path / "results_b").exists()


# ---------------------------------------------------------------- 14. Ctrl-C during an Optuna trial


@pytest.mark.slow
def test_ctrl_c_during_a_trial_marks_it_and_exits_130_in_one_line(tiny_params, tmp_path):
    import signal

    from optuna.trial import TrialState
    from test_tune import load_study, study_params, trial_runs, write_params

    from sandbox import ctrl_c_as_in_a_terminal

    params = study_params(tiny_params, storage="sqlite:///optuna.db")
    params_file = write_params(params, tmp_path / "params.yaml")
    fault_dir = tmp_path / "fault"
    fault_dir.mkdir()
    env = {**os.environ, "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "SSCR_FAULT": "pause:train.batch:1:0",
           "SSCR_FAULT_DIR": str(fault_dir)}
    env.pop("MLFLOW_TRACKING_URI", None)
    worker = subprocess.Popen([sys.executable, "-m", "sscr.cli", "tune", "--params", str(params_file), "--no-progress"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=ctrl_c_as_in_a_terminal)
    try:
        deadline = time.monotonic() + 300
        while not (fault_dir / "paused").exists():  # trial 0 holds in its first batch
            assert worker.poll() is None and time.monotonic() < deadline, worker.communicate()[1][-3000:]
            time.sleep(0.1)
        worker.send_signal(signal.SIGINT)
        _, stderr = worker.communicate(timeout=120)
    finally:
        worker.kill()
    assert worker.returncode == 130
    _one_line(stderr, f"study {params.tune.study_name}: interrupted by Ctrl-C (SIGINT) during trial 0",
              "marked FAILED in the study and on its MLflow run")
    assert [trial.state for trial in load_study(params).trials] == [TrialState.FAIL]
    run = trial_runs(params.tune.study_name)[0]
    assert run.info.status == "KILLED"
    assert run.data.tags["optuna.state"] == "FAILED" and run.data.tags["optuna.reason"] == "interrupted by Ctrl-C (SIGINT)"


# ---------------------------------------------------------------- limits are stated in the README


def test_readme_states_every_limit():
    from sscr import config, serving
    from sscr.data import sentinel2
    from sscr.models import _base

    text = (REPO / "README.md").read_text()
    section = text[text.index("## Reliability"):]
    section = section[: section.index("\n## ", 3)]
    for value in (f"{config.PARAMS_MAX_BYTES // 1024} KiB", f"{config.YAML_MAX_NODES:,}",
                  f"{config.YAML_MAX_DEPTH} levels", f"{sentinel2.METADATA_MAX_BYTES // 2**20} MiB",
                  f"{_base.MODEL_MAX_WIDTH:,}", f"{_base.MODEL_MAX_LEVELS} levels", f"{_base.MODEL_MAX_PARAMS:,}",
                  f"{serving.MAX_REQUEST_BYTES // 2**20} MiB", f"{serving.MAX_JSON_DEPTH} levels"):
        assert value in section, f"the Reliability section does not state {value}"



# ---------------------------------------------------------------- 8 and 9. the served model


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """`sscr serve` of a registered tiny SAR model on 127.0.0.1: (base URL, the uvicorn process, its log file)."""
    import psutil

    from servers import free_port, registered_server_env, stop_group, wait_until_up

    root = tmp_path_factory.mktemp("guarded")
    env = registered_server_env(root, "hostile")
    port = free_port()
    log = root / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "sscr.cli", "serve", "--model", "models:/hostile/1", "--port", str(port)],
            cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        uvicorn = next(p for p in psutil.Process(server.pid).children(recursive=True) if "uvicorn" in p.cmdline())
        yield f"http://127.0.0.1:{port}", uvicorn, log
    finally:
        stop_group(server)


def _raw_post(base: str, head: bytes, body_chunks, timeout: float = 60) -> tuple[int, bytes, float]:
    """POST ``head`` then ``body_chunks`` from a thread; (status, answer, seconds until the answer arrived)."""
    import socket
    import threading
    from urllib.parse import urlsplit

    address = urlsplit(base)
    sock = socket.create_connection((address.hostname, address.port), timeout=timeout)

    def upload() -> None:
        try:
            sock.sendall(head)
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed: the rest is not wanted
            pass

    start = time.monotonic()
    sender = threading.Thread(target=upload, daemon=True)
    sender.start()
    answer, wanted = b"", None
    try:
        while wanted is None or len(answer) < wanted:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
            if wanted is None and b"\r\n\r\n" in answer:
                head_end = answer.index(b"\r\n\r\n") + 4
                length = [line for line in answer[:head_end].lower().split(b"\r\n") if line.startswith(b"content-length:")]
                wanted = head_end + int(length[0].split(b":")[1]) if length else None
    finally:
        seconds = time.monotonic() - start
        sock.close()
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1], seconds


def _request_head(extra: str) -> bytes:
    return (f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{extra}\r\n"
            ).encode()


@pytest.mark.slow
@pytest.mark.parametrize("transfer", ["Content-Length", "chunked"])
def test_a_100_mb_body_is_refused_with_413_before_it_is_read(guarded, transfer):
    base, uvicorn, log = guarded
    megabyte = b"[" + b"0.1234," * 149796 + b"0]"  # 1 MiB of a JSON array of numbers
    total = 100 * 10**6
    if transfer == "Content-Length":
        head = _request_head(f"Content-Length: {total}\r\n")
        chunks = (megabyte for _ in range(total // len(megabyte)))
    else:
        head = _request_head("Transfer-Encoding: chunked\r\n")
        chunks = (f"{len(megabyte):x}\r\n".encode() + megabyte + b"\r\n" for _ in range(total // len(megabyte)))
    before = uvicorn.memory_info().rss
    status, answer, seconds = _raw_post(base, head, chunks)
    grown = (uvicorn.memory_info().rss - before) / 2**20
    print(f"100 MB body ({transfer}): HTTP {status} after {seconds:.1f} s, server memory {grown:+.0f} MiB")
    assert status == 413
    message = json.loads(answer)["message"]
    assert "above the limit of 67,108,864 (64 MiB)" in message and "sscr infer" in message and "\n" not in message
    # measured (load 15): Content-Length 0.0 s and +0 MiB, chunked 0.8 s and +65 MiB; unguarded 9-10 s and +510 MB
    limit_mib = 2 if transfer == "Content-Length" else 160
    assert grown < limit_mib and seconds < 30, (grown, seconds)
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("depth", [1000, 100000])
def test_deeply_nested_json_is_a_400_in_one_line_without_a_traceback(guarded, depth):
    import requests

    base, _, log = guarded
    body = '{"inputs": {"cloudy": ' + "[" * depth + "0" + "]" * depth + "}}"
    response = requests.post(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"},
                             timeout=120)
    assert response.status_code == 400, response.text[:300]
    message = response.json()["message"]
    assert "nests deeper than 16 levels" in message and "\n" not in message and len(response.content) < 500
    assert "Traceback" not in log.read_text()
    # the guard passes a good request through to MLflow's scoring server unchanged
    rng = np.random.default_rng(0)
    good = {"inputs": {"cloudy": rng.uniform(0, 0.3, (1, 13, 32, 32)).round(4).tolist(),
                       "sar": rng.uniform(0.2, 0.8, (1, 2, 32, 32)).round(4).tolist()}}
    answer = requests.post(f"{base}/invocations", json=good, timeout=120)
    assert answer.status_code == 200, answer.text[:300]
    assert np.asarray(answer.json()["predictions"]["mean"]).shape == (1, 13, 32, 32)
