"""The device a run used, in MLflow; the training and inference code importable without MLflow (a GPU node)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from sscr import tracking
from sscr.evaluate import evaluate
from sscr.train import train

from absent import GPU_IMAGE_LACKS, without


def test_training_and_evaluation_tag_their_device_in_mlflow(tiny_params):
    tiny_params.train.epochs = 1
    result = train(tiny_params, progress=False, log_model=False)
    tags = MlflowClient().get_run(result.run_id).data.tags
    assert tags[tracking.DEVICE_TAG] == "cpu"
    assert "sscr.gpu_metrics" not in tags  # only a CUDA run says whether GPU metrics are recorded
    assert tracking.EVALUATE_DEVICE_TAG not in tags
    evaluate(tiny_params, progress=False)
    tags = MlflowClient().get_run(result.run_id).data.tags
    assert tags[tracking.EVALUATE_DEVICE_TAG] == "cpu" and tags[tracking.DEVICE_TAG] == "cpu"


@pytest.mark.skipif(importlib.util.find_spec("pynvml") is not None, reason="nvidia-ml-py is installed here")
def test_without_nvml_a_cuda_run_would_say_how_to_get_gpu_metrics():
    assert tracking.nvml_status() == "off: nvidia-ml-py is not installed; pip install 'sscr[gpu]' (nvidia-ml-py)"
    assert tracking.device_tags(torch.device("cpu")) == {"sscr.device": "cpu"}


def test_training_and_scene_inference_import_without_mlflow_and_the_other_absent_packages(tmp_path):
    code = ("import sys, sscr.train, sscr.evaluate, sscr.infer, benchmarks.gpu_check\n"
            f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {set(GPU_IMAGE_LACKS)!r}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=without(GPU_IMAGE_LACKS, tmp_path / 'absent'),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
    # and the blocker works: MLflow really is refused in that interpreter
    refused = subprocess.run([sys.executable, "-c", "import mlflow"], cwd=tmp_path,
                             env=without(GPU_IMAGE_LACKS, tmp_path / 'absent'), capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "absent in this test" in refused.stderr
