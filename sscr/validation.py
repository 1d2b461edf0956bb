"""Per-image scores of a model on the validation split: the evidence promotion compares.

The ``evaluate`` stage calls :func:`score_split` with the model it has loaded and
writes the result (:data:`sscr.evidence.SCORES_FILE`) beside ``metrics.json``; the
registry compares two versions' files image by image (:func:`sscr.evidence.compare`).
Each image is scored as ``metrics.json`` scores it (PSNR over all pixels and bands,
:func:`sscr.metrics.image_metrics`), and fingerprinted by its sample id and target
pixels, so two files are compared only when they scored the same images.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from sscr.config import Params
from sscr.data.dataset import build_dataset, model_inputs
from sscr.evidence import SplitScores, image_digest, split_digest
from sscr.metrics import image_metrics

#: The split promotion decides on (the test split is for reporting).
SPLIT = "val"
#: The metric scored per image.
METRIC = "PSNR"
#: The few numbers of a run that ``dvc metrics show`` and ``dvc exp show`` list (a terminal's width).
SUMMARY_FILE = "summary.json"


def score_split(model: torch.nn.Module, params: Params, checkpoint_sha256: str, split: str = SPLIT,
                device: torch.device | None = None) -> SplitScores:
    """``model``'s PSNR on every image of ``split`` (in eval mode, no gradients), with the split's fingerprint."""
    device = device or torch.device("cpu")
    dataset = build_dataset(params, split)
    if len(dataset) == 0:
        raise ValueError(f"no {split} samples under {params.data.root}: promotion compares models on the {split} "
                         "split, so it needs some (data.synth.rois.val, or the official split's validation ROIs)")
    loader = DataLoader(dataset, batch_size=params.evaluate.batch_size, num_workers=params.train.num_workers)
    model.eval()
    scores: dict[str, float] = {}
    digests: dict[str, str] = {}
    for batch in loader:
        with torch.no_grad():
            prediction = model(**model_inputs(batch, device))["mean"].float().cpu()
        values = image_metrics(batch["target"], prediction)[METRIC]
        for index, sample_id in enumerate(batch["meta"]["sample_id"]):
            scores[sample_id] = float(values[index])
            digests[sample_id] = image_digest(sample_id, batch["target"][index].contiguous().numpy().tobytes())
    return SplitScores(split, METRIC, checkpoint_sha256, split_digest(digests), scores)


def headline_metrics(metrics: dict[str, Any], validation: SplitScores) -> dict[str, Any]:
    """The run in six numbers: validation PSNR (what promotion compares), test PSNR, SSIM and SAM, test PSNR inside
    clouds and its gain over the cloudy input. Everything else is in ``metrics.json`` and ``quality.md``."""
    test = metrics["test"]
    return {
        "val_PSNR": round(validation.mean, 4),
        "PSNR": round(test["PSNR"], 4),
        "SSIM": round(test["SSIM"], 4),
        "SAM": round(test["SAM"], 3),
        "cloudy_PSNR": round(metrics["test_cloudy"]["PSNR"], 4),
        "gain_dB": round(metrics["gain_cloudy_PSNR"], 3),
    }
