"""Bad input is refused with an error that names the file or key and what was expected; nothing is damaged."""

from __future__ import annotations

import hashlib
import os
import shutil
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


def _foreign_checkpoint(folder: Path) -> Path:
    from sscr.models import build_model

    unet = build_model("unet", encoder_widths=[8, 16])
    path = folder / "unet.pt"
    torch.save({"model": unet.state_dict(), "model_name": "unet", "model_config": unet.config, "config": {}}, path)
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
    message = capsys.readouterr().err
    assert code != 0, f"{case}: accepted"
    for part in expected:
        assert part in message, f"{case}: {part!r} not in {message!r}"
    if blamed is not None:
        assert str(Path(blamed)) in message, f"{case}: the message does not name {blamed}"
    assert _digest(folder, skip=set()) == before, f"{case}: files changed"
    assert (folder / "results" / "good" / "model_best.pt").exists()
