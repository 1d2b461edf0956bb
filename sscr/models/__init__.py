"""Backbones for cloud removal, built by name from a registry.

Example::

    model = build_model("multisarv2", variance="diag")
    out = model(cloudy, sar)                # {"mean", "var", "sar_mask"}
    model = load_published("results/demo/model.pth.tar")   # a checkpoint of the published code, conf.json beside

The backbones:

- ``uncrtaints``: the published single-date UnCRtainTS, module for module;
- ``multisarv2`` (alias ``sscr``): the published SSCR network, UnCRtainTS plus a SAR
  edge branch and a structure-mask generator (output ``sar_mask``);
- ``unet``, ``utae``: the published single-date U-Net that the seed's ``--model unet``
  and ``--model utae --pretrain`` build, module for module (one network, two names);
- ``sscr_lite``: this project's own cloud-gated SAR-optical U-Net (output ``structure``);
- ``mask_unet``: this project's small plain U-Net with a cloud-mask input (tests, benchmarks).

Every backbone is built from one :class:`BackboneConfig` (the ``params.yaml``
``model:`` keys minus ``name``, plus ``variance``: None, "diag" or "iso"),
exposes ``use_sar``, ``use_mask``, ``variance``, ``output_keys`` and ``config``
(its resolved build parameters as plain data, so ``build_model(name,
**model.config)`` rebuilds it exactly), and maps ``forward(cloudy, sar=None,
mask=None)`` to a dict with ``"mean"`` in [0, 1] (plus ``"var"`` > 0 in [0, 1]^2
units with a variance, plus the backbone's extra outputs). A new backbone is one
new module in this package with a ``@register_model`` class: every public module
here is imported below, so nothing else needs editing.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sscr.models._base import BackboneConfig, CloudRemovalModel, ModelTooLarge, check_model_size
from sscr.models._registry import ALIASES, list_models, model_class, register_model, resolve_name
from sscr.models.blocks import S1_CHANNELS, S2_CHANNELS

__all__ = [
    "ALIASES",
    "BackboneConfig",
    "CloudRemovalModel",
    "ModelTooLarge",
    "available_models",
    "build_model",
    "example_inputs",
    "load_published",
    "model_cost",
    "register_model",
    "resolve_name",
    "select_device",
]

SHARED_MODULES = {"blocks", "published"}
"""Modules of this package that hold no backbone."""

# Importing a backbone module runs its @register_model: import them all.
for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name not in SHARED_MODULES:
        importlib.import_module(f"{__name__}.{_module.name}")

from sscr.models.published import load_published  # noqa: E402 - after the backbones it builds


def available_models() -> list[str]:
    """Names accepted by :func:`build_model` (aliases such as ``sscr`` also work)."""
    return list_models()


def build_model(name: str, config: BackboneConfig | None = None, **params: Any) -> nn.Module:
    """Build backbone ``name`` from ``config``, or from ``params`` (``model:`` keys minus ``name``, + ``variance``).

    ``build_model(name, **checkpoint["model_config"])`` rebuilds a trained model.
    Unknown name -> ValueError listing the available names; unknown keyword -> TypeError naming it; a
    config beyond the size limits (``sscr.models._base.MODEL_MAX_*``) -> :class:`ModelTooLarge` (a ValueError),
    before any weight is allocated.
    """
    cls = model_class(name)
    if config is None:
        try:
            config = BackboneConfig.from_params(params)
        except TypeError as err:
            raise TypeError(f"{resolve_name(name)}: {err}") from None
    elif params:
        raise TypeError(f"build_model({name!r}) takes a BackboneConfig or keyword parameters, not both")
    check_model_size(cls, config)
    return cls(config)


def example_inputs(
    model: nn.Module, height: int = 256, width: int = 256, batch: int = 1
) -> dict[str, torch.Tensor]:
    """Zero inputs of the right shapes for ``model`` (SAR and mask only when it uses them)."""
    device = next(model.parameters()).device
    inputs = {"cloudy": torch.zeros(batch, S2_CHANNELS, height, width, device=device)}
    if getattr(model, "use_sar", False):
        inputs["sar"] = torch.zeros(batch, S1_CHANNELS, height, width, device=device)
    if getattr(model, "use_mask", False):
        inputs["mask"] = torch.zeros(batch, 1, height, width, device=device)
    return inputs


def model_cost(
    model: nn.Module, height: int = 256, width: int = 256, batch: int = 1, training: bool = False
) -> dict[str, int]:
    """Parameters and forward FLOPs of ``model`` for a (batch, 13, height, width) input.

    FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (2 per multiply-add;
    convolutions, matmuls and attention, not element-wise ops) over one forward in eval
    mode (``training=True``: train mode, where ``multisarv2`` also runs its unused edge
    branch) on zero inputs of the right shapes (SAR and mask as ``use_sar`` / ``use_mask``
    say). The forward runs on a copy of the model on the ``meta`` device: the counts are
    those of a real forward, which no backbone's control flow depends on the values of,
    but it takes no time nor memory. ``model`` itself is left untouched.
    """
    params = sum(p.numel() for p in model.parameters())
    shadow = copy.deepcopy(model).to("meta").train(training)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        shadow(**example_inputs(shadow, height, width, batch))
    return {"params": int(params), "flops": int(counter.get_total_flops())}


def for_inference(model: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """``model`` in eval mode on ``device`` (default: where it is), ready for prediction.

    On CPU its 4-D weights go to the channels-last (NHWC) layout, which oneDNN's
    convolutions run faster for every backbone here (``sscr_lite`` 1.2-1.3x per 256 px tile,
    ``benchmarks/results/inference_speedup.md``); outputs equal the contiguous layout's to
    float rounding (tested). Inputs may stay contiguous: a convolution follows its
    weight's layout.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    return model


def select_device(preference: str = "auto", key: str = "--device") -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cpu``; ``cuda[:N]`` (ValueError naming ``key`` when absent).

    A ValueError, so that the CLI reports e.g. the seed's ``--device cuda`` on a machine
    without a GPU in one line instead of a traceback.
    """
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{key}: {preference!r} asks for a GPU, but CUDA is not available on this machine "
                             "(no NVIDIA driver or a CPU-only torch build); set it to auto (CUDA when present) or cpu")
        index = torch.device(preference).index
        if index is not None and index >= torch.cuda.device_count():
            raise ValueError(f"{key}: {preference!r} but this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "use cuda:0 ... or auto")
        return torch.device(preference)
    raise ValueError(f"{key}: unknown device {preference!r}; expected auto, cpu or cuda")
