"""Running a model on arrays: any size in, padded to the model's size multiple, cropped back out.

Shared by scene inference (:mod:`sscr.infer`, tile by tile) and the logged
MLflow model (:mod:`sscr.serving`, one request at a time). Inputs are
normalised as the data set normalises them; the cloud mask a model was trained
with is computed from the cloudy image when none is given.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sscr.bands import S1_CHANNELS, S2_CHANNELS, S2_DN_MAX
from sscr.clouds.detect import compute_masks
from sscr.config import DEFAULT_MASK_KIND


def cloud_probability(cloudy: np.ndarray, kind: str | None) -> np.ndarray | None:
    """The mask a model was trained with, computed from normalised cloudy S2 (B, 13, H, W) -> (B, H, W)."""
    if kind is None:
        return None
    return np.stack([compute_masks(image * S2_DN_MAX, [kind])[kind] for image in cloudy]).astype(np.float32)


def _pad_to(tensor: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad (reflect) H and W up to a multiple of ``multiple`` and at least twice it (the models' minimum)."""
    height, width = tensor.shape[-2:]
    pad_h = max((-height) % multiple, 2 * multiple - height, 0)
    pad_w = max((-width) % multiple, 2 * multiple - width, 0)
    if pad_h or pad_w:
        # reflect needs a pad smaller than the side; only tiny inputs fall back to replicate
        mode = "reflect" if pad_h < height and pad_w < width else "replicate"
        tensor = F.pad(tensor, (0, pad_w, 0, pad_h), mode=mode)
    return tensor, height, width


@torch.no_grad()
def passes_through(model: nn.Module, cloudy: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """True when ``model``'s ``mean`` for this batch is its input exactly, so the forward pass can be skipped.

    Asks the model which pixels it passes through unchanged given the mask alone
    (``model.passes_through``, e.g. ``sscr_lite``'s clear pixels), on the mask padded as
    :func:`predict_tensors` pads it; a model with a variance head always runs (its variance
    is needed). The output is then :func:`passed_through`, equal to the forward's bit for bit.
    """
    rule = getattr(model, "passes_through", None)
    if rule is None or mask is None or getattr(model, "variance", None) or not getattr(model, "use_mask", False):
        return False
    multiple = int(getattr(model, "size_multiple", 1))
    padded = _pad_to(mask.reshape(mask.shape[0], 1, *mask.shape[-2:]), multiple)[0]
    through = rule(padded)
    return through is not None and bool(through.all())


def passed_through(cloudy: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of a batch that :func:`passes_through`: ``mean`` = the cloudy input clipped to [0, 1]."""
    return {"mean": cloudy.clamp(0.0, 1.0).float()}


@torch.no_grad()
def predict_tensors(model: nn.Module, cloudy: torch.Tensor, sar: torch.Tensor | None,
                    mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Run ``model`` on one batch of any size: padded (reflect) to the model's size multiple, then cropped."""
    multiple = int(getattr(model, "size_multiple", 1))
    device = next(model.parameters()).device
    cloudy_p, height, width = _pad_to(cloudy.to(device), multiple)
    sar_p = _pad_to(sar.to(device), multiple)[0] if sar is not None and model.use_sar else None
    mask_p = None
    if mask is not None and model.use_mask:
        mask_p = _pad_to(mask.to(device).reshape(mask.shape[0], 1, *mask.shape[-2:]), multiple)[0]
    out = model(cloudy_p, sar_p, mask_p)
    return {key: value[..., :height, :width].float() for key, value in out.items() if key in ("mean", "var")}


def predict_arrays(model: nn.Module, cloudy: np.ndarray, sar: np.ndarray | None,
                   mask_kind: str | None = None, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Numpy in, numpy out: cloud-free ``mean`` (and ``var``) for normalised (B, 13, H, W) cloudy S2.

    The cloud mask is computed with ``mask_kind`` when the model uses one and none is given.
    """
    cloudy = np.asarray(cloudy, dtype=np.float32)
    if cloudy.ndim != 4 or cloudy.shape[1] != S2_CHANNELS:
        raise ValueError(f"cloudy must be (B, {S2_CHANNELS}, H, W) S2 reflectance in [0, 1], got shape {cloudy.shape}")
    if model.use_sar:
        if sar is None:
            raise ValueError(f"this model fuses SAR: pass sar (B, {S1_CHANNELS}, H, W), normalised S1")
        sar = np.asarray(sar, dtype=np.float32)
        if sar.shape[0] != cloudy.shape[0] or sar.shape[1] != S1_CHANNELS or sar.shape[2:] != cloudy.shape[2:]:
            raise ValueError(f"sar must be (B, {S1_CHANNELS}, H, W) matching cloudy {cloudy.shape}, got {sar.shape}")
    if mask is None and model.use_mask:
        mask = cloud_probability(cloudy, mask_kind or DEFAULT_MASK_KIND)
    out = predict_tensors(
        model, torch.from_numpy(np.clip(np.nan_to_num(cloudy), 0, 1)),
        torch.from_numpy(np.clip(np.nan_to_num(sar), 0, 1)) if sar is not None and model.use_sar else None,
        torch.from_numpy(mask) if mask is not None else None,
    )
    return {key: value.cpu().numpy() for key, value in out.items()}
