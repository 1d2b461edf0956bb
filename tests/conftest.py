"""Shared fixtures: tiny SEN12MS-CR trees written by code (no binary blobs in the repo)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from affine import Affine

from sscr.bands import S1_BANDS, S2_BANDS
from sscr.data.io import write_raster
from sscr.layout import PatchId

from tiny import TINY, deep_update

os.environ.setdefault("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n 2` on 2 cores: one compute thread per worker (and per process it starts), so two workers do
    # not oversubscribe the cores with 2 x 2 spinning torch/OpenMP threads.
    import torch

    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_leftover_tracking_uri(monkeypatch):
    """Each test starts with no MLFLOW_TRACKING_URI: ``mlflow.set_tracking_uri`` exports it to the environment,
    so an earlier test's store would otherwise leak into the next test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    # ``mlflow.set_experiment`` keeps the active experiment in a module global; it names an id that
    # does not exist in the next test's fresh store.
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)


def write_triplet(
    root: Path,
    pid: PatchId,
    size: int = 32,
    s1_bands: int = 2,
    s2_bands: int = 13,
    cloudy_bands: int = 13,
    s2_size: int | None = None,
    crs: str = "EPSG:32632",
    s2_crs: str | None = None,
    seed: int = 0,
    modalities: tuple[str, ...] = ("s1", "s2", "s2_cloudy"),
) -> dict[str, Path]:
    """Write one triplet of random but well-typed GeoTIFFs; knobs make it wrong on purpose."""
    rng = np.random.default_rng(seed)
    transform = Affine(10.0, 0.0, 500000.0 + 10 * size * pid.patch, 0.0, -10.0, 5000000.0)
    s2_size = s2_size or size
    arrays = {
        "s1": rng.uniform(-25, 0, (s1_bands, size, size)).astype(np.float32),
        "s2": rng.integers(0, 4000, (s2_bands, s2_size, s2_size)).astype(np.uint16),
        "s2_cloudy": rng.integers(0, 10000, (cloudy_bands, s2_size, s2_size)).astype(np.uint16),
    }
    paths = {}
    for modality in modalities:
        data = arrays[modality]
        names = S1_BANDS if modality == "s1" else S2_BANDS
        names = names if len(names) == data.shape[0] else None
        paths[modality] = write_raster(
            root / pid.relpath(modality),
            data,
            s2_crs if (s2_crs and modality != "s1") else crs,
            transform,
            band_names=names,
        )
    return paths


@pytest.fixture
def triplet_writer():
    """The :func:`write_triplet` helper, for tests that build their own trees."""
    return write_triplet


# ---------------------------------------------------------------- a tiny pipeline, shared by end-to-end tests


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny synthetic SEN12MS-CR tree and its precomputed masks, written once per session: (root, masks)."""
    from sscr.cloudmasks import precompute_masks
    from sscr.config import parse_params
    from sscr.data.synth import write_synthetic_sample

    base = tmp_path_factory.mktemp("tiny")
    params = parse_params(TINY)
    root, masks = base / "data", base / "masks"
    write_synthetic_sample(root, params.data.synth, patch_size=params.data.patch_size, progress=False)
    precompute_masks(
        root, masks, params.masks.kinds, patch_size=params.data.patch_size, workers=1, progress=False
    )
    return root, masks


@pytest.fixture
def tiny_params(tmp_path, tiny_sample, monkeypatch):
    """Params for a seconds-long training run on the tiny sample, results and MLflow store in ``tmp_path``."""
    from sscr.config import parse_params

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    from sscr import tracking

    tracking.configure()  # this test's own store: mlflow.db in tmp_path
    root, masks = tiny_sample
    raw = deep_update(
        TINY,
        {
            "data": {"root": str(root)},
            "masks": {"dir": str(masks)},
            "train": {"res_dir": str(tmp_path / "results")},
            "evaluate": {"out_dir": str(tmp_path / "results" / "eval")},
        },
    )
    return parse_params(raw)


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory, tiny_sample):
    """One tiny model trained and evaluated once per session: (workspace dir, params).

    The workspace holds its own MLflow store (mlflow.db, mlartifacts/) and results/.
    Tests using it chdir there and call ``sscr.tracking.configure()``; they use their
    own registered-model names so that they do not depend on each other's order.
    """
    from sscr import tracking
    from sscr.config import parse_params
    from sscr.evaluate import evaluate
    from sscr.train import train

    workspace = tmp_path_factory.mktemp("workspace")
    root, masks = tiny_sample
    params = parse_params(
        deep_update(
            TINY,
            {
                "data": {"root": str(root)},
                "masks": {"dir": str(masks)},
                "train": {"res_dir": str(workspace / "results")},
                "evaluate": {"out_dir": str(workspace / "results" / "eval")},
            },
        )
    )
    previous = Path.cwd()
    os.chdir(workspace)
    try:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        tracking.configure()
        train(params, progress=False)
        evaluate(params, progress=False)
    finally:
        os.chdir(previous)
    return workspace, params


@pytest.fixture
def in_workspace(trained_workspace, monkeypatch):
    """chdir into the trained workspace and point MLflow at its store; returns (workspace, params)."""
    from sscr import tracking

    workspace, params = trained_workspace
    monkeypatch.chdir(workspace)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure()
    return workspace, params


def _postgres_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> str:
    """A real PostgreSQL server on 127.0.0.1 for this session; yields ``postgresql://sscr@127.0.0.1:<port>``.

    Uses the Debian package's binaries (``.ci/run`` installs them); as root the
    server runs as the ``postgres`` user, as PostgreSQL refuses to run as root.
    """
    initdb, pg_ctl = _postgres_bin("initdb"), _postgres_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: `apt-get install postgresql`")
    # Not under pytest's tmp dir: that is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="sscr-postgres-"))
    base.chmod(0o755)
    data, socket_dir = base / "data", base / "socket"
    socket_dir.mkdir()
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres")
        shutil.chown(socket_dir, "postgres")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run(
        prefix + [initdb, "-D", str(data), "-A", "trust", "-U", "sscr", "--no-sync"],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        prefix
        + [
            pg_ctl,
            "-D",
            str(data),
            "-l",
            str(base / "server.log"),
            "-w",
            "-o",
            f"-h 127.0.0.1 -p {port} -k {socket_dir} -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    url = f"postgresql://sscr@127.0.0.1:{port}"
    try:
        import psycopg

        with psycopg.connect(f"{url}/postgres", autocommit=True) as conn:
            for name in ("mlflow", "optuna"):
                conn.execute(f"CREATE DATABASE {name}")
        yield url
    finally:
        subprocess.run(prefix + [pg_ctl, "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
