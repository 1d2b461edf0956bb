"""Bad input is refused with an error that names the file or key and what was expected; nothing is damaged."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml

from sscr import cli
from sscr.data.io import write_raster
from sscr.layout import PatchId

from sandbox import can_mount, in_namespace, subprocess_env
from tiny import TINY, deep_update


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_sample):
    """A project folder with data, masks, params.yaml and a finished 1-epoch run (the things to protect)."""
    from sscr import tracking

    root, masks = tiny_sample
    folder = tmp_path_factory.mktemp("project")
    shutil.copytree(root, folder / "data")
    shutil.copytree(masks, folder / "masks")
    params = deep_update(TINY, {"data": {"root": "data"}, "masks": {"dir": "masks"}, "train": {"epochs": 1}})
    (folder / "params.yaml").write_text(yaml.safe_dump(params))
    previous = Path.cwd()
    os.chdir(folder)
    try:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        tracking.configure()
        assert cli.main(["train", "--set", "train.experiment_name=good"]) == 0
    finally:
        os.chdir(previous)
    return folder


def _digest(folder: Path, skip: set[Path]) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p not in skip
            and p.name != "mlflow.db" and "mlartifacts" not in p.parts and p.suffix != ".partial"}


def _first_train(folder: Path) -> PatchId:
    from sscr.data.index import index_dataset

    return index_dataset(folder / "data", splits=["train"], patch_size=64).triplets[0].pid


def _rewrite(path: Path, transform: Callable[[np.ndarray], np.ndarray], crs: str | None = None,
             size: int | None = None) -> None:
    with rasterio.open(path) as src:
        data, src_crs, affine = src.read(), src.crs, src.transform
    data = transform(data)
    if size is not None:
        data = np.resize(data, (data.shape[0], size, size))
    write_raster(path, data, crs or src_crs, affine)


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a GeoTIFF" * 50)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _unpair(folder: Path, pid: PatchId) -> Path:
    (folder / "data" / pid.relpath("s2_cloudy")).unlink()
    return pid.relpath("s1")  # the first of the two files left without their partner


def _directory_named_like_a_patch(folder: Path, pid: PatchId) -> Path:
    lookalike = PatchId(pid.season, pid.roi, 999).relpath("s2")  # an archive extracted into a folder of that name
    (folder / "data" / lookalike).mkdir()
    return lookalike


def _symlink_loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.name)


def _tampered_checkpoint(folder: Path) -> str:
    state = torch.load(folder / "results" / "good" / "model_best.pt", weights_only=True)
    state["model_config"]["width_mult"] = 2  # a key this version of SSCR does not know
    torch.save(state, folder / "tampered.pt")
    return "tampered.pt"


def _foreign_checkpoint(folder: Path) -> Path:
    from sscr.models import build_model

    unet = build_model("mask_unet", encoder_widths=[8, 16])
    path = folder / "unet.pt"
    torch.save({"model": unet.state_dict(), "model_name": "mask_unet", "model_config": unet.config, "config": {}}, path)
    return path


# id, mutation (folder, patch) -> the file to blame (or None for a key), command, expected message parts
CASES = [
    ("corrupt GeoTIFF", lambda f, p: (_garbage(f / "data" / p.relpath("s2_cloudy")), p.relpath("s2_cloudy"))[1],
     ["train"], ["corrupt or truncated"]),
    ("truncated GeoTIFF", lambda f, p: (_truncate(f / "data" / p.relpath("s2")), p.relpath("s2"))[1],
     ["train"], ["corrupt or truncated"]),
    ("12-band S2", lambda f, p: (_rewrite(f / "data" / p.relpath("s2"), lambda a: a[:12]), p.relpath("s2"))[1],
     ["train"], ["has 12 bands, expected 13"]),
    ("3-band S1", lambda f, p: (_rewrite(f / "data" / p.relpath("s1"), lambda a: np.concatenate([a, a[:1]])),
                               p.relpath("s1"))[1],
     ["train"], ["has 3 bands, expected 2"]),
    ("S1/S2 size mismatch", lambda f, p: (_rewrite(f / "data" / p.relpath("s2"), lambda a: a, size=48),
                                          p.relpath("s2"))[1],
     ["train"], ["48 x 48 px, expected 64 x 64"]),
    ("S1/S2 CRS mismatch", lambda f, p: (_rewrite(f / "data" / p.relpath("s2_cloudy"), lambda a: a,
                                                  crs="EPSG:32601"), p.relpath("s2_cloudy"))[1],
     ["train"], ["does not match its S1 partner", "CRS"]),
    ("all-NaN S1", lambda f, p: (_rewrite(f / "data" / p.relpath("s1"), lambda a: np.full_like(a, np.nan)),
                                 p.relpath("s1"))[1],
     ["train"], ["all NaN"]),
    ("blank S2", lambda f, p: (_rewrite(f / "data" / p.relpath("s2"), np.zeros_like), p.relpath("s2"))[1],
     ["train"], ["blank (all zero DN)"]),
    ("unknown params key", lambda f, p: (f / "params.yaml").write_text(
        (f / "params.yaml").read_text() + "\nflow:\n  epochs: 3\n") and None,
     ["train"], ["flow: unknown key"]),
    ("wrong params type", lambda f, p: (f / "params.yaml").write_text(
        (f / "params.yaml").read_text().replace("epochs: 1", "epochs: one")) and None,
     ["train"], ["train.epochs", "'one'"]),
    ("unknown model", lambda f, p: None, ["train", "--model", "resnet9000"],
     ["resnet9000", "multisarv2", "sscr_lite", "uncrtaints", "unet", "utae"]),
    ("unknown loss", lambda f, p: None, ["train", "--loss", "huber"], ["loss.name", "'huber'"]),
    ("checkpoint of another architecture", lambda f, p: _foreign_checkpoint(f).name,
     ["train", "--pretrained", "unet.pt"], ["another architecture", "SSCR"]),
    ("checkpoint that is not a tensor file", lambda f, p: (f / "notes.pt").write_text("weights?") and "notes.pt",
     ["train", "--pretrained", "notes.pt"], ["not a readable SSCR checkpoint"]),
    ("float32 S2 of reflectance in [0, 1]",
     lambda f, p: (_rewrite(f / "data" / p.relpath("s2"), lambda a: (a / 10000).astype(np.float32)),
                   p.relpath("s2"))[1],
     ["train"], ["S2 is float32, expected uint16 DN", "-scale 0 1 0 10000"]),
    ("S1 as integers", lambda f, p: (_rewrite(f / "data" / p.relpath("s1"), lambda a: a.astype(np.int16)),
                                     p.relpath("s1"))[1],
     ["train"], ["S1 is int16, expected float32 backscatter in dB"]),
    ("S1 in linear power", lambda f, p: (_rewrite(f / "data" / p.relpath("s1"), lambda a: 10 ** (a / 10)),
                                         p.relpath("s1"))[1],
     ["train"], ["not backscatter in dB", "10 * log10"]),
    ("unpaired triplet", _unpair, ["train"], ["unpaired", "S2 cloudy partner", "data.on_error: skip"]),
    ("directory named like a .tif", _directory_named_like_a_patch, ["train"], ["is a directory"]),
    ("patch file that is a symlink loop",
     lambda f, p: (_symlink_loop(f / "data" / p.relpath("s2")), p.relpath("s2"))[1],
     ["train"], ["symlink loop"]),
    ("params.yaml that is a symlink loop", lambda f, p: (_symlink_loop(f / "params.yaml"), "params.yaml")[1],
     ["train"], ["symbolic link", "ELOOP"]),
    ("train.device: cuda without CUDA", lambda f, p: None, ["train", "--device", "cuda"],
     ["train.device", "CUDA is not available", "auto"]),
    ("unknown key in a checkpoint's model config", lambda f, p: _tampered_checkpoint(f),
     ["evaluate", "--checkpoint", "tampered.pt"], ["width_mult", "model_config"]),
]


@pytest.mark.parametrize(("case", "mutate", "command", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly_and_damages_nothing(case, mutate, command, expected, project, tmp_path,
                                                          monkeypatch, capsys):
    from sscr import tracking

    folder = tmp_path / "project"
    shutil.copytree(project, folder)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    blamed = mutate(folder, _first_train(folder))
    before = _digest(folder, skip=set())
    code = cli.main([*command, "--set", "train.experiment_name=good"])
    _check_refusal(case, code, capsys.readouterr().err, expected, blamed)
    assert _digest(folder, skip=set()) == before, f"{case}: files changed"
    assert (folder / "results" / "good" / "model_best.pt").exists()


def _check_refusal(case: str, code: int, stderr: str, expected: list[str], blamed: str | Path | None) -> None:
    """A non-zero exit and no traceback; the last ``sscr:`` message says what is wrong, names the file, and the fix."""
    assert code != 0, f"{case}: accepted"
    assert "Traceback" not in stderr, f"{case}: a traceback\n{stderr[-3000:]}"
    lines = stderr.splitlines()
    starts = [index for index, line in enumerate(lines) if line.startswith("sscr:")]
    assert starts, f"{case}: no sscr: line in {stderr[-2000:]!r}"
    message = "\n".join(lines[starts[-1]:])  # the error (a params error lists its keys on the lines below)
    for part in expected:
        assert part in message, f"{case}: {part!r} not in {message!r}"
    if blamed is not None:
        assert str(Path(blamed)) in message, f"{case}: the message does not name {blamed}"


# ---------------------------------------------------------------- file-system failures, for real

def _limit_file_size(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # a bigger write fails with EFBIG
    return apply


# id, shell set-up run in a private mount namespace (None: none needed), file-size limit in bytes (or None),
# command, expected message parts, the path the message must name
FS_CASES = [
    ("disk full (ENOSPC)", "mkdir -p full && mount -t tmpfs -o size=8k tmpfs full", None,
     ["masks", "--masks-dir", "full/masks"], ["No space left on device (ENOSPC)", "free space"], "full/masks/"),
    ("read-only results (EROFS)", "mount --bind results results && mount -o remount,bind,ro results", None,
     ["evaluate"], ["Read-only file system (EROFS)", "remount it read-write"], "results/eval"),
    ("file-size limit (EFBIG)", None, 4096, ["masks", "--masks-dir", "masks_new"],
     ["File too large (EFBIG)", "ulimit -f"], "masks_new/"),
]


@pytest.mark.parametrize(("case", "setup", "file_size", "command", "expected", "blamed"), FS_CASES,
                         ids=[c[0] for c in FS_CASES])
def test_file_system_failures_are_one_line_naming_the_path(case, setup, file_size, command, expected, blamed, project,
                                                           tmp_path):
    if setup is not None and not can_mount(tmp_path):
        pytest.skip("needs root and mount namespaces (unshare -m) for a real full or read-only file system")
    folder = tmp_path / "project"
    shutil.copytree(project, folder)
    before = _digest(folder, skip=set())
    sscr = [sys.executable, "-m", "sscr.cli", *command, "--set", "train.experiment_name=good"]
    done = subprocess.run(in_namespace(setup, sscr) if setup else sscr, cwd=folder, env=subprocess_env(),
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=_limit_file_size(file_size) if file_size else None)
    _check_refusal(case, done.returncode, done.stderr, expected, blamed)
    assert _digest(folder, skip=set()) == before, f"{case}: files changed"


# ---------------------------------------------------------------- what skip mode leaves out is said and logged

def test_skip_mode_prints_and_logs_every_file_it_leaves_out(project, tmp_path, monkeypatch, capsys):
    import mlflow

    from sscr import tracking
    from sscr.config import load_params, record_dir
    from sscr.data.index import index_dataset
    from sscr.train import train

    folder = tmp_path / "project"
    shutil.copytree(project, folder)
    monkeypatch.chdir(folder)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    test = index_dataset(folder / "data", splits=["test"], patch_size=64).triplets
    unpaired = _unpair(folder, test[0].pid)  # its S1 and S2 are left without their S2 cloudy partner
    lookalike = _directory_named_like_a_patch(folder, test[-1].pid)
    skip = ["--set", "train.experiment_name=good", "--set", "data.on_error=skip"]
    assert cli.main(["evaluate", *skip]) == 0
    err = capsys.readouterr().err
    assert f"sscr: test split: {len(test) - 1} samples used, 3 left out (2 unpaired, 1 not a patch file):" in err
    assert str(Path("data") / unpaired) in err and str(Path("data") / lookalike) in err
    records = record_dir(load_params(folder / "params.yaml", ["train.experiment_name=good"]))
    metrics = json.loads((folder / records / "metrics.json").read_text())
    assert (metrics["n_images"], metrics["n_dropped"]) == (len(test) - 1, 3)
    run_id = json.loads((folder / "results" / "good" / "mlflow_run.json").read_text())["run_id"]
    run = mlflow.get_run(run_id)
    assert run.data.metrics["data.test.dropped"] == 3 and run.data.metrics["data.test.dropped.unpaired"] == 2
    assert str(Path("data") / unpaired) in run.data.tags["data.test.dropped"]
    # train says the same about its splits, and logs "none" for a split that lost nothing
    train_set = index_dataset(folder / "data", splits=["train"], patch_size=64).triplets
    unpaired = _unpair(folder, train_set[0].pid)
    params = load_params(folder / "params.yaml", ["data.on_error=skip", "train.experiment_name=again"])
    again = train(params, log_model=False, progress=False).run_id  # as `sscr train`, without the model upload
    err = capsys.readouterr().err
    assert f"sscr: train split: {len(train_set) - 1} samples used, 2 left out (2 unpaired):" in err
    assert str(Path("data") / unpaired) in err and "val split" not in err
    logged = mlflow.get_run(again).data
    assert logged.metrics["data.train.dropped"] == 2 and logged.metrics["data.val.dropped"] == 0
    assert str(Path("data") / unpaired) in logged.tags["data.train.dropped"] and logged.tags["data.val.dropped"] == "none"
