"""The logged model: loaded back from a checkpoint or an MLflow URI, and served by `mlflow models serve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from sscr import registry, tracking
from sscr.checkpoint import save_atomic
from sscr.config import run_dir
from sscr.models import build_model
from sscr.serving import load_model
from sscr.train import MLFLOW_RUN_FILE

from servers import free_port, stop_group


@pytest.mark.slow
def test_served_champion_returns_cloud_free_patch(in_workspace, tmp_path):
    workspace, params = in_workspace
    run = json.loads((run_dir(params) / MLFLOW_RUN_FILE).read_text())
    version = registry.register(run["run_id"], {"PSNR": 30.0}, "serve-test", run["model_uri"])
    assert registry.promote("serve-test", version).promoted
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/serve-test@champion",
         "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
        cwd=workspace, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert server.poll() is None, server.stdout.read()[-3000:]
            time.sleep(1)
        else:
            pytest.fail("the model server did not come up in 240 s")
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
    model = build_model("unet", encoder_widths=[8, 16], use_mask=True)
    checkpoint = save_atomic({
        "model": model.state_dict(), "model_name": "unet", "model_config": dict(model.config),
        "config": {"masks": {"use": "cloud_cloudshadow_mask"}},
    }, tmp_path / "model_best.pt")
    loaded, mask_kind = load_model(str(checkpoint), device="cpu")
    assert mask_kind == "cloud_cloudshadow_mask"
    assert not loaded.training and loaded.config == model.config
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


def test_load_model_from_mlflow_run(tmp_path, monkeypatch):
    """``runs:/<id>/model`` resolves through the tracking store to the logged SSCR pyfunc."""
    import mlflow

    from sscr import predict, serving

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    model = build_model("unet", encoder_widths=[8, 16], use_sar=False, use_mask=True)
    checkpoint = save_atomic({
        "model": model.state_dict(), "model_name": "unet", "model_config": dict(model.config),
        "config": {"masks": {"use": "s2cloudless_mask"}},
    }, tmp_path / "model_best.pt")
    tracking.configure()
    mlflow.set_experiment(experiment_id=tracking.experiment_id("infer-test"))
    monkeypatch.setattr(predict, "cloud_probability", lambda cloudy, kind: np.zeros((len(cloudy), *cloudy.shape[2:]),
                                                                                    np.float32))
    with mlflow.start_run() as run:
        serving.log_model(checkpoint, use_sar=False)
    loaded, mask_kind = load_model(f"runs:/{run.info.run_id}/model", device="cpu")
    assert mask_kind == "s2cloudless_mask" and not loaded.training
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="cannot load MLflow model"):
        load_model("models:/no-such-model@champion")
