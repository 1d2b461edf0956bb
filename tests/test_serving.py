"""The logged model: loaded back from a checkpoint or an MLflow URI, and served by `mlflow models serve`."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from sscr import integrity, registry, serving, tracking
from sscr.checkpoint import save_atomic
from sscr.config import run_dir
from sscr.models import build_model
from sscr.serving import load_model
from sscr.train import MLFLOW_RUN_FILE

from servers import free_port, log_and_register, registered_server_env, stop_group, wait_until_up


@pytest.mark.slow
def test_served_champion_returns_cloud_free_patch(in_workspace, tmp_path):
    workspace, params = in_workspace
    run = json.loads((run_dir(params) / MLFLOW_RUN_FILE).read_text())
    version = registry.register(run["run_id"], {"PSNR": 30.0}, "serve-test", run["model_uri"])
    assert registry.promote("serve-test", version).promoted
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # `sscr serve` checks the version's files against the registry's sha256 record, then runs `mlflow models serve`
    server = subprocess.Popen(
        [sys.executable, "-m", "sscr.cli", "serve", "--model", "models:/serve-test@champion", "--port", str(port)],
        cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        rng = np.random.default_rng(1)
        cloudy = rng.uniform(0.0, 0.4, (1, 13, 64, 64)).astype(np.float32)
        cloudy[:, :, 16:48, 16:48] = 0.6  # a bright, thick cloud in the middle
        sar = rng.uniform(0.2, 0.8, (1, 2, 64, 64)).astype(np.float32)
        response = requests.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"inputs": {"cloudy": cloudy.tolist(), "sar": sar.tolist()}}, timeout=120,
        )
        assert response.status_code == 200, response.text[:2000]
        mean = np.asarray(response.json()["predictions"]["mean"], dtype=np.float32)
        assert mean.shape == (1, 13, 64, 64)
        assert np.isfinite(mean).all() and mean.min() >= 0.0 and mean.max() <= 1.0
        # Under the cloud the answer is not the cloud: the model replaced those pixels.
        assert np.abs(mean[:, :, 20:44, 20:44] - cloudy[:, :, 20:44, 20:44]).mean() > 0.05
    finally:
        stop_group(server)


def test_load_model_from_checkpoint(tmp_path):
    model = build_model("mask_unet", encoder_widths=[8, 16], use_mask=True)
    checkpoint = save_atomic({
        "model": model.state_dict(), "model_name": "mask_unet", "model_config": dict(model.config),
        "config": {"masks": {"use": "cloud_cloudshadow_mask"}},
    }, tmp_path / "model_best.pt")
    loaded = load_model(str(checkpoint), device="cpu")
    assert loaded.mask_kind == "cloud_cloudshadow_mask" and loaded.files == [checkpoint]
    assert loaded.version == f"sha256:{hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:16]}"
    assert not loaded.model.training and loaded.model.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)


def test_load_model_from_mlflow_run(tmp_path, monkeypatch):
    """``runs:/<id>/model`` resolves through the tracking store to the logged SSCR pyfunc."""
    import mlflow

    from sscr import predict, serving

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = build_model("mask_unet", encoder_widths=[8, 16], use_sar=False, use_mask=True)
    checkpoint = save_atomic({
        "model": model.state_dict(), "model_name": "mask_unet", "model_config": dict(model.config),
        "config": {"masks": {"use": "s2cloudless_mask"}},
    }, tmp_path / "model_best.pt")
    tracking.configure()
    mlflow.set_experiment(experiment_id=tracking.experiment_id("infer-test"))
    monkeypatch.setattr(predict, "cloud_probability", lambda cloudy, kind: np.zeros((len(cloudy), *cloudy.shape[2:]),
                                                                                    np.float32))
    with mlflow.start_run() as run:
        serving.log_model(checkpoint, use_sar=False)
    loaded = load_model(f"runs:/{run.info.run_id}/model", device="cpu")
    assert loaded.mask_kind == "s2cloudless_mask" and not loaded.model.training
    assert loaded.version == run.info.run_id
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="cannot load MLflow model"):
        load_model("models:/no-such-model@champion")


# ---------------------------------------------------------------- one served model, every bad request


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A real `mlflow models serve` process serving a registered tiny SAR model: (base URL, model directory)."""
    root = tmp_path_factory.mktemp("served")
    env = registered_server_env(root, "contract")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/contract/1", "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port)],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/ping", server)
        yield f"http://127.0.0.1:{port}", next(root.glob("mlartifacts/**/MLmodel")).parent
    finally:
        stop_group(server)


def _patch(batch: int = 1, size: int = 32, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.0, 0.4, (batch, 13, size, size)).astype(np.float32),
            rng.uniform(0.2, 0.8, (batch, 2, size, size)).astype(np.float32))


def _post(base: str, inputs: dict) -> requests.Response:
    body = json.dumps({"inputs": {key: np.asarray(value).tolist() for key, value in inputs.items()}})
    return requests.post(f"{base}/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=120)


def test_served_model_answers_a_good_request_as_documented(served):
    base, _ = served
    cloudy, sar = _patch(batch=2, size=40)
    sar[:, :, :10] = np.nan  # NaN SAR: no S1 there (outside its swath), as sscr infer feeds it
    response = _post(base, {"cloudy": cloudy, "sar": sar})
    assert response.status_code == 200, response.text[:500]
    mean = np.asarray(response.json()["predictions"]["mean"], np.float32)
    assert mean.shape == (2, 13, 40, 40) and np.isfinite(mean).all() and 0 <= mean.min() and mean.max() <= 1


def _bad_requests() -> dict[str, tuple[dict, int, str]]:
    cloudy, sar = _patch()
    big_cloudy = np.zeros((5, 13, 240, 240), np.float32)  # 288,000 px > 262,144
    return {
        "S2 as DN": ({"cloudy": np.rint(cloudy * 10000), "sar": sar}, 400, "looks like L1C DN: divide by 10000"),
        "SAR in dB": ({"cloudy": cloudy, "sar": sar * 25 - 25}, 400, "looks like dB: send (dB + 25) / 25"),
        "all-NaN SAR": ({"cloudy": cloudy, "sar": np.full_like(sar, np.nan)}, 400, "sar is NaN everywhere"),
        "12 bands": ({"cloudy": cloudy[:, :12], "sar": sar}, 400, "cloudy has shape (1, 12, 32, 32), expected (B, 13"),
        "3-D S2": ({"cloudy": cloudy[0], "sar": sar}, 400, "cloudy has shape (13, 32, 32)"),
        "S1/S2 size mismatch": ({"cloudy": cloudy, "sar": sar[:, :, :16]}, 400,
                                "sar has shape (1, 2, 16, 32) but cloudy (1, 13, 32, 32)"),
        "no SAR for a SAR model": ({"cloudy": cloudy}, 400, "this model fuses SAR: missing input sar"),
        "infinite values": ({"cloudy": np.where(cloudy > 0.3, np.inf, cloudy), "sar": sar}, 400, "infinite values"),
        "unknown input": ({"cloudy": cloudy, "sar": sar, "mask": sar[:, :1]}, 400, "unknown input(s) mask"),
        "too large": ({"cloudy": big_cloudy, "sar": np.zeros((5, 2, 240, 240), np.float32)}, 413,
                      "exceeds the limit of 262,144 px"),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_served_model_refuses_bad_requests_in_one_line(served, case):
    base, _ = served
    inputs, status, reason = _bad_requests()[case]
    response = _post(base, inputs)
    assert response.status_code == status, response.text[:500]
    body = response.json()
    message = body["message"]
    assert reason in message
    assert "\n" not in message and "Traceback" not in response.text and "stack_trace" not in body
    assert len(response.content) < 500, "the answer must not echo the request's data"
    if status == 413:
        assert "sscr infer" in message


def test_logged_requirements_pin_torch_and_carry_the_package_and_resolve(served, tmp_path):
    """requirements.txt: torch pinned, the libraries the model imports, and the sscr wheel logged beside it; pip
    resolves it: each pin and the wheel from the index and the model alone (--ignore-installed --no-deps), and all of
    it together with their dependencies against this environment."""
    _, model_dir = served
    lines = (model_dir / "requirements.txt").read_text().split()
    assert f"torch=={importlib.metadata.version('torch').split('+')[0]}" in lines
    assert {line.split("==")[0] for line in lines if "==" in line} >= set(serving.SERVING_DISTRIBUTIONS)
    wheel = [line for line in lines if line.endswith(".whl")]
    assert len(wheel) == 1 and wheel[0].startswith("artifacts/sscr-") and (model_dir / wheel[0]).is_file()
    for extra in (["--ignore-installed", "--no-deps"], []):
        report = tmp_path / "report.json"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report), *extra,
             "-r", "requirements.txt"], cwd=model_dir, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        chosen = {item["metadata"]["name"].lower(): item["metadata"]["version"]
                  for item in json.loads(report.read_text())["install"]}
        assert chosen["sscr"].startswith("0.1.0+g")
        if extra:
            assert chosen["torch"].split("+")[0] == importlib.metadata.version("torch").split("+")[0]


def test_requirements_cover_what_the_model_imports():
    """Every third-party package that the served code imports (at load and while predicting with a mask) is a
    listed requirement or a dependency of one."""
    script = """
import ast, json, sys
import numpy as np
import sscr.pyfunc_model
from sscr.predict import cloud_probability
cloudy = np.random.default_rng(0).uniform(0, 0.5, (1, 13, 32, 32)).astype(np.float32)
for kind in ("s2cloudless_map", "cloud_cloudshadow_mask"):
    cloud_probability(cloudy, kind)
tops = set()
for name, module in list(sys.modules.items()):
    if name.split(".")[0] != "sscr" or not getattr(module, "__file__", None):
        continue
    for node in ast.walk(ast.parse(open(module.__file__).read())):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            tops.add(node.module.split(".")[0])
print(json.dumps(sorted(tops)))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=300)
    imported = json.loads(done.stdout.strip().splitlines()[-1])
    packages = importlib.metadata.packages_distributions()
    needed = {dist for top in imported if top != "sscr" for dist in packages.get(top, [])}

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    allowed = {canonical(name) for name in serving.SERVING_DISTRIBUTIONS}
    for name in serving.SERVING_DISTRIBUTIONS:
        allowed |= {canonical(re.split(r"[ ;<>=!~\[(]", requirement)[0])
                    for requirement in importlib.metadata.requires(name) or [] if "extra ==" not in requirement}
    assert {"torch", "numpy", "mlflow"} <= {canonical(n) for n in needed}
    missing = sorted(name for name in needed if canonical(name) not in allowed)
    assert not missing, f"the served code imports {missing}, which the logged requirements do not install"


# ---------------------------------------------------------------- trust: the registry's record of the files


def test_tampered_model_files_are_refused_by_infer_and_serve_naming_them(tmp_path, monkeypatch, capsys):
    """A line prepended to the stored pyfunc_model.py (it would create a marker file), then a changed checkpoint:
    `sscr infer` and `sscr serve` refuse to load, naming the file, and the stored code never runs."""
    from sscr.cli import main

    monkeypatch.chdir(tmp_path)
    uri, _ = log_and_register(tmp_path, "trusted")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = load_model("models:/trusted/1", device="cpu")
    assert loaded.version == "trusted/1"

    stored = next(tmp_path.glob("mlartifacts/**/pyfunc_model.py"))
    marker = tmp_path / "stored-code-ran"
    original = stored.read_text()
    stored.write_text(f"open({str(marker)!r}, 'w').close()\n" + original)
    with pytest.raises(integrity.IntegrityError, match=r"changed: pyfunc_model\.py\b"):
        load_model("models:/trusted/1", device="cpu")
    port = free_port()
    served = subprocess.run(
        [sys.executable, "-m", "sscr.cli", "serve", "--model", "models:/trusted/1", "--port", str(port)],
        cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri}, capture_output=True, text=True, timeout=300)
    assert served.returncode == 1
    last = served.stderr.strip().splitlines()[-1]
    assert last.startswith("sscr: error: models:/trusted/1") and "changed: pyfunc_model.py" in last
    assert "Traceback" not in served.stderr
    assert not marker.exists(), "the tampered stored code ran"

    stored.write_text(original)
    checkpoint = next(tmp_path.glob("mlartifacts/**/artifacts/model_best.pt"))
    checkpoint.write_bytes(checkpoint.read_bytes() + b"\0")
    s2 = tmp_path / "s2.tif"
    assert main(["infer", "--model", "models:/trusted/1", "--s2", str(s2), "--s1", str(s2), "--out", "x.tif"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("sscr: error: models:/trusted/1") and "changed: artifacts/model_best.pt" in error
    assert not (tmp_path / "x.tif").exists()


def test_a_version_without_a_record_is_refused(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri, _ = log_and_register(tmp_path, "unrecorded")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    MlflowClient().delete_model_version_tag("unrecorded", "1", integrity.DIGEST_TAG)
    with pytest.raises(integrity.IntegrityError, match="has no sscr.artifact_sha256 record .*sscr register"):
        load_model("models:/unrecorded/1", device="cpu")


# ---------------------------------------------------------------- a model URI with no tracking store in reach


@pytest.mark.parametrize("store", ["default", "missing sqlite", "server down"])
def test_model_uri_without_a_store_is_one_line_naming_the_variable_and_creates_nothing(store, tmp_path, monkeypatch,
                                                                                       capsys):
    """Issue 22: `sscr infer --model models:/sscr@champion` from another directory created an empty mlflow.db
    there and then did not find the model. Now: one line naming MLFLOW_TRACKING_URI, exit 1, nothing written."""
    from sscr.cli import main

    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    if store == "missing sqlite":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///project/mlflow.db")  # relative: not from here
    elif store == "server down":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    (tmp_path / "s2.tif").write_bytes(b"")
    for command in (["infer", "--model", "models:/sscr@champion", "--s2", str(tmp_path / "s2.tif"), "--out", "x.tif"],
                    ["serve", "--model", "models:/sscr@champion", "--port", str(free_port())]):
        assert main(command) == 1
        error = capsys.readouterr().err.strip()
        assert "\n" not in error and error.startswith("sscr: error: models:/sscr@champion needs an MLflow tracking "
                                                      "store"), error
        assert "MLFLOW_TRACKING_URI" in error
        if store == "server down":
            assert "does not answer" in error
        else:
            assert f"{work / ('project/mlflow.db' if store == 'missing sqlite' else 'mlflow.db')} does not exist" in error
        assert list(work.iterdir()) == []  # no empty mlflow.db, no mlartifacts/


# ---------------------------------------------------------------- a request body from a patch, as the README sends it


def test_request_written_from_a_patch_is_answered_by_the_served_model(served, tmp_path, monkeypatch, capsys):
    """`sscr serving-request` turns a patch's two GeoTIFFs into the contract's body (reflectance, normalised SAR,
    NaN SAR as null); the served model answers it as the README shows, sent as `curl --data-binary @file` sends it."""
    from sscr.cli import main
    from sscr.data.io import write_raster
    from sscr.data.synth import synth_patch
    from sscr.layout import PatchId

    base, _ = served
    arrays = synth_patch(PatchId("ROIs1970_fall", 139, 1), patch_size=48)
    db = arrays["s1"].copy()
    db[:, :6] = np.nan  # rows outside the S1 swath
    crs, transform = "EPSG:32632", __import__("affine").Affine(10, 0, 500000, 0, -10, 5000000)
    s2 = write_raster(tmp_path / "s2_cloudy.tif", arrays["s2_cloudy"], crs, transform)
    s1 = write_raster(tmp_path / "s1.tif", db, crs, transform)
    monkeypatch.chdir(tmp_path)

    assert main(["serving-request", "--s2", str(s2), "--s1", str(s1), "--out", "request.json"]) == 0
    assert "curl -sS --fail-with-body -X POST http://127.0.0.1:5001/invocations" in capsys.readouterr().out
    raw = Path("request.json").read_bytes()
    body = json.loads(raw)
    cloudy = np.asarray(body["inputs"]["cloudy"], np.float64)
    expected = np.clip(arrays["s2_cloudy"], 0, 10000)  # the data set's normalisation: DN clipped to [0, 10000]
    assert (arrays["s2_cloudy"] > 10000).any()  # bright cloud tops above it are in this patch
    np.testing.assert_array_equal(np.rint(cloudy[0] * 10000), expected)  # whole DN survive the 4 decimals
    assert np.abs(cloudy[0] * 10000 - expected).max() < 1e-6
    sar = np.asarray(body["inputs"]["sar"], dtype=object)
    assert sar.shape == (1, 2, 48, 48) and (sar[:, :, :6] == None).all()  # noqa: E711 (null, not NaN: strict JSON)
    expected = (np.clip(db[:, 6:], -25, 0) + 25) / 25
    np.testing.assert_allclose(sar[0, :, 6:].astype(np.float64), expected, atol=1e-6)

    response = requests.post(f"{base}/invocations", data=raw, headers={"Content-Type": "application/json"},
                             timeout=120)
    assert response.status_code == 200, response.text[:500]
    mean = np.asarray(response.json()["predictions"]["mean"], np.float32)
    assert mean.shape == (1, 13, 48, 48) and np.isfinite(mean).all() and 0 <= mean.min() and mean.max() <= 1

    # nothing overwritten without the flag; patches of two sizes refused; each in one line
    assert main(["serving-request", "--s2", str(s2), "--s1", str(s1), "--out", "request.json"]) == 1
    assert capsys.readouterr().err.strip() == ("sscr: error: request.json already exists: remove it, choose another "
                                               "--out, or pass --overwrite")
    small = write_raster(tmp_path / "s1_small.tif", db[:, :32, :32], crs, transform)
    assert main(["serving-request", "--s2", str(s2), "--s1", str(small), "--out", "other.json"]) == 1
    error = capsys.readouterr().err.strip()
    assert "is 32 x 32 px but S2" in error and "\n" not in error and not Path("other.json").exists()
    assert Path("request.json").read_bytes() == raw
