"""Checkpoints of the published code in and out: its ``.pth.tar`` and ``conf.json``, mapped to ours.

The published training script (github.com/RSIR25/sscr, built on PatrickTUM/UnCRtainTS)
saves, with ``save_model``, ``<res_dir>/<experiment_name>/<name>.pth.tar``: a
``torch.save``d dict of plain tensors and numbers with

- ``epoch``;
- ``state_dict``: its wrapper's (``BaseModel``) state dict, the network's keys prefixed ``netG.``;
- ``state_dict_G``: the network's state dict;
- ``optimizer_G``, ``scheduler_G``: the Adam and ExponentialLR state dicts;

and beside it ``conf.json``: its argparse namespace after the script's own changes
(``--pretrain`` sets ``input_t`` and ``n_head`` to 1; GNLL/MGNLL add the variance
channels to ``out_conv``; ``--model unet`` and ``utae`` train with ``l2``). ``uncrtaints``,
``multisarv2``, ``unet`` and ``utae`` (the single-date U-Net ``--pretrain`` builds for both)
here are those networks module for module, with the same state-dict keys, so their
weights load strictly.

:func:`published_settings` maps a ``conf.json`` to this project's params: the keys in
:data:`MAPPED`, the ones in :data:`REQUIRED` checked (a value the single-date networks
here cannot reproduce is refused by name, in one line), the ones in :data:`IGNORED`
listed (no effect on the network or on evaluation). :func:`load_published` gives the
network, ready to predict; :func:`published_conf` and :func:`published_checkpoint` write
the other way.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sscr.bands import S2_CHANNELS
from sscr.config import LossConfig, ModelConfig, read_json_config
from sscr.fsutil import why_not_a_file
from sscr.models._base import BackboneConfig, check_model_size
from sscr.models._registry import model_class, resolve_name

NETWORK_PREFIX = "netG."
"""The published wrapper (``BaseModel``) holds the network as ``netG``."""
PUBLISHED_NETWORKS = ("uncrtaints", "multisarv2", "unet", "utae")
"""The published networks reproduced here module for module (``model`` in ``conf.json``): the seed's four backbones."""
VARIANCE_CHANNELS = {None: 0, "diag": S2_CHANNELS, "iso": 1}
PUBLISHED_LOSSES = ("l1", "l2", "ml", "GNLL", "MGNLL")
"""The losses the published ``losses.get_loss`` builds (``structure`` is this project's)."""

MAPPED: dict[str, str] = {
    "model": "model.name", "use_sar": "model.use_sar", "scale_by": "model.scale_by",
    "block_type": "model.block_type", "n_head": "model.n_head", "d_model": "model.d_model",
    "encoder_widths": "model.encoder_widths", "decoder_widths": "model.decoder_widths",
    "loss": "loss.name", "covmode": "loss.covmode",
    "epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size", "gamma": "train.gamma",
    "rdm_seed": "train.rdm_seed", "val_every": "train.val_every", "val_after": "train.val_after",
}
"""``conf.json`` key -> ``params.yaml`` key."""

REQUIRED: dict[str, tuple[Any, str]] = {
    "pretrain": (True, "the multi-date network (L-TAE temporal encoder) is not reproduced here; only the "
                       "single-date one the seed trains with --pretrain"),
    "input_t": (1, "more than one input date needs the temporal encoder, which is not reproduced here"),
    "separate_out": (False, "separate mean and variance output layers are not reproduced here"),
    "mean_nonLinearity": (True, "the networks here always apply their published sigmoid to the mean"),
    "encoder_norm": ("group", "the encoder here uses GroupNorm, as the published default"),
    "decoder_norm": ("batch", "the decoder here uses BatchNorm, as the published default"),
}
"""``conf.json`` keys whose value must be the one given (when present), and why."""

REQUIRED_BY_MODEL: dict[str, dict[str, tuple[Any, str]]] = {
    name: {
        "padding_mode": ("reflect", "the U-Net's convolutions here pad by reflection, as the published default"),
        "pad_value": (0, "the U-Net's encoder here treats an all-zero sample as padding, as the published default"),
    } for name in ("unet", "utae")
}
"""Further ``conf.json`` keys whose value one network needs (the U-Net passes them to its blocks)."""

IGNORED: tuple[str, ...] = (
    # no effect on a single-date network: the temporal encoder's settings (pad_value: but see REQUIRED_BY_MODEL)
    "use_v", "agg_mode", "positional_encoding", "d_k", "pad_value", "low_res_size", "ref_date", "vary_samples",
    # passed to UnCRtainTS but not to its blocks, which always pad by reflection (the U-Net's: REQUIRED_BY_MODEL)
    "padding_mode",
    # where and how the published script ran, logged, resumed and tested
    "experiment_name", "res_dir", "weight_folder", "load_config", "root1", "root2", "root3", "precomputed",
    "region", "sample_type", "device", "num_workers", "pid", "display_step", "plot_every", "export_every",
    "resume_at", "resume_from", "trained_checkp", "unfreeze_after", "chunk_size", "profile", "use_custom",
    "optical_path", "sar_path", "max_samples_count", "max_samples_frac", "min_cov", "max_cov", "N_params",
    # checked against the loss and the weights instead
    "out_conv", "var_nonLinearity",
)
"""``conf.json`` keys without an effect on the network here or on its evaluation: listed, not used."""


class PublishedFormatError(ValueError):
    """A published checkpoint or ``conf.json`` that cannot be read or honoured; the message names the key."""


@dataclass
class PublishedSettings:
    """A published ``conf.json`` read: params overrides, the backbone, and what was left out."""

    model_name: str
    overrides: dict[str, Any]
    """Dotted ``params.yaml`` keys and their values: the whole ``model`` group, the loss, the optimiser."""
    backbone: BackboneConfig
    ignored: list[str] = field(default_factory=list)
    """Keys of :data:`IGNORED` present in the ``conf.json``."""
    unknown: list[str] = field(default_factory=list)
    """Keys neither mapped, checked nor known: ignored too, and reported."""


def _widths(value: Any, key: str, source: str) -> list[int]:
    """``"[128]"`` (the published argparse string), ``"128,64"`` or ``[128]`` -> a list of ints."""
    if isinstance(value, str):
        try:
            value = [int(part) for part in value.strip().strip("[]").split(",") if part.strip()]
        except ValueError:
            raise PublishedFormatError(f"{source}: {key} = {value!r} is not a list of integers") from None
    if not isinstance(value, list) or not value or not all(isinstance(v, int) for v in value):
        raise PublishedFormatError(f"{source}: {key} = {value!r} is not a list of integers")
    return value


def published_settings(conf: Mapping[str, Any], source: str = "conf.json") -> PublishedSettings:
    """Map a published ``conf.json`` to params overrides and a backbone; refuse what cannot be honoured.

    Raises :class:`PublishedFormatError` naming the key (and ``source``) for a network
    other than :data:`PUBLISHED_NETWORKS`, a value of :data:`REQUIRED` other than the one
    given there, a loss the network cannot feed, or ``out_conv`` channels that do not
    match the loss's variance.
    """
    name = conf.get("model", "uncrtaints")  # the published parser's default
    if name not in PUBLISHED_NETWORKS:
        raise PublishedFormatError(f"{source}: model = {name!r} cannot be imported: only {list(PUBLISHED_NETWORKS)} "
                                   "are reproduced module for module")
    for key, (expected, why) in {**REQUIRED, **REQUIRED_BY_MODEL.get(name, {})}.items():
        if key in conf and conf[key] != expected:
            raise PublishedFormatError(f"{source}: {key} = {conf[key]!r} cannot be honoured ({why}); "
                                       f"expected {expected!r}")
    overrides: dict[str, Any] = {}
    for key, target in MAPPED.items():
        if key in conf and conf[key] is not None:
            value = conf[key]
            overrides[target] = _widths(value, key, source) if key.endswith("_widths") else value
    loss = str(conf.get("loss", "MGNLL"))
    covmode = str(conf.get("covmode", "diag"))
    if loss == "GNLL":  # the published script sets covmode "uni": 13 variance channels, our GNLL's "diag"
        covmode = "diag" if covmode == "uni" else covmode
    if loss == "MGNLL" and covmode not in ("diag", "iso"):
        raise PublishedFormatError(f"{source}: covmode = {covmode!r} with loss MGNLL cannot be honoured; "
                                   "expected 'diag' or 'iso'")
    try:
        loss_cfg = LossConfig(name=loss, covmode=covmode if covmode in ("diag", "iso") else "diag")
    except ValueError:
        raise PublishedFormatError(f"{source}: loss = {loss!r} is not one of l1, l2, ml, GNLL, MGNLL") from None
    overrides["loss.name"], overrides["loss.covmode"] = loss_cfg.name, loss_cfg.covmode
    variance = _variance(loss_cfg)
    _check_outputs(conf, variance, loss, source)
    if variance is not None and conf.get("var_nonLinearity", "softplus") != "softplus":
        raise PublishedFormatError(f"{source}: var_nonLinearity = {conf['var_nonLinearity']!r} cannot be honoured "
                                   "(the networks here use softplus for the variance, as the published GNLL and "
                                   "MGNLL set it)")
    if loss == "ml" and name != "multisarv2":
        raise PublishedFormatError(f"{source}: loss = 'ml' needs model multisarv2 (its structure mask)")
    model = ModelConfig(**{key.removeprefix("model."): value for key, value in overrides.items()
                           if key.startswith("model.")})
    try:
        backbone = model_class(model.name).resolve(BackboneConfig.from_model_config(model, variance))
    except ValueError as err:
        raise PublishedFormatError(f"{source}: {err}") from None
    # the whole model group, resolved (a key absent from conf.json takes the published default)
    overrides.update({f"model.{key}": value for key, value in backbone.as_dict().items() if key != "variance"})
    known = set(MAPPED) | set(REQUIRED) | set(IGNORED)
    return PublishedSettings(
        model_name=resolve_name(model.name), overrides=overrides, backbone=backbone,
        ignored=sorted(key for key in conf if key in IGNORED),
        unknown=sorted(key for key in conf if key not in known),
    )


def _variance(loss: LossConfig) -> str | None:
    if loss.name == "GNLL":
        return "diag"
    return loss.covmode if loss.name == "MGNLL" else None


def _check_outputs(conf: Mapping[str, Any], variance: str | None, loss: str, source: str) -> None:
    """``out_conv`` (already widened by the published script for a variance) must fit the loss."""
    if "out_conv" not in conf:
        return
    out_conv = _widths(conf["out_conv"], "out_conv", source)
    expected = S2_CHANNELS + VARIANCE_CHANNELS[variance]
    if len(out_conv) != 1 or out_conv[0] != expected:
        raise PublishedFormatError(f"{source}: out_conv = {conf['out_conv']!r} does not fit loss {loss!r} "
                                   f"(expected [{expected}]: 13 mean channels + {expected - S2_CHANNELS} variance)")


# ---------------------------------------------------------------- the checkpoint file


def read_published_checkpoint(path: str | Path) -> dict[str, Any]:
    """A published ``.pth.tar`` as a dict, read with ``weights_only=True``; PublishedFormatError otherwise."""
    path = Path(path)
    problem = why_not_a_file(path)
    if problem:
        raise PublishedFormatError(f"published checkpoint {path} {problem}: pass its model.pth.tar")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError) as err:
        raise PublishedFormatError(f"{path} is not a readable PyTorch checkpoint: {str(err).splitlines()[0]}") from None
    if not isinstance(state, dict) or not ({"state_dict_G", "state_dict"} & set(state)):
        raise PublishedFormatError(f"{path} is not a checkpoint of the published code (expected the keys of its "
                                   "save_model: epoch, state_dict, state_dict_G, optimizer_G, scheduler_G)")
    return state


def network_state_dict(checkpoint: Mapping[str, Any], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The network's weights: ``state_dict_G``, else ``state_dict`` without its ``netG.`` prefix.

    Weights of modules not reproduced here are refused by name (the temporal encoder
    ``temporal_encoder.*`` of the multi-date network, separate output layers).
    """
    if "state_dict_G" in checkpoint:
        weights = dict(checkpoint["state_dict_G"])
    else:
        weights = {key.removeprefix(NETWORK_PREFIX): value for key, value in checkpoint["state_dict"].items()
                   if key.startswith(NETWORK_PREFIX)}
    for prefix, why in (("temporal_encoder.", "the multi-date temporal encoder (L-TAE)"),
                        ("temporal_aggregator.", "the multi-date temporal aggregator"),
                        ("include_v.", "the multi-date value projection"),
                        ("out_conv_mean_1.", "separate mean and variance output layers (separate_out)")):
        found = sorted(key for key in weights if key.startswith(prefix))
        if found:
            raise PublishedFormatError(f"{source} holds weights of {why} ({found[0]}, ...), which is not reproduced "
                                       "here: only the single-date networks (--pretrain) can be imported")
    return weights


def conf_beside(checkpoint: str | Path) -> Path:
    """Where the published script keeps a checkpoint's ``conf.json``: beside it."""
    return Path(checkpoint).with_name("conf.json")


def read_conf(path: str | Path) -> dict[str, Any]:
    """A published ``conf.json`` as a dict; PublishedFormatError naming the file otherwise."""
    path = Path(path)
    problem = why_not_a_file(path)
    if problem == "does not exist":
        raise PublishedFormatError(f"no conf.json at {path}: pass the run's conf.json (--config); the weights do "
                                   "not hold scale_by, the loss nor the widths' meaning")
    if problem:
        raise PublishedFormatError(f"conf.json {path} {problem}: pass the run's conf.json (--config)")
    conf = read_json_config(path)
    if not isinstance(conf, dict):
        raise PublishedFormatError(f"{path} must hold a JSON object (the published argparse namespace)")
    return conf


def build_published(settings: PublishedSettings, weights: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """The network of ``settings`` with ``weights`` loaded strictly; PublishedFormatError naming the keys otherwise."""
    try:
        cls = model_class(settings.model_name)
        check_model_size(cls, settings.backbone)
        model = cls(settings.backbone)
    except ValueError as err:
        raise PublishedFormatError(f"{source}: {err}") from None
    missing, unexpected = _key_difference(model.state_dict(), weights)
    if missing or unexpected:
        raise PublishedFormatError(
            f"{source} does not fit {settings.model_name} as its conf.json describes it: "
            f"{len(missing)} missing keys ({', '.join(missing[:3])}), {len(unexpected)} unexpected "
            f"({', '.join(unexpected[:3])})")
    try:
        model.load_state_dict(dict(weights), strict=True)
    except RuntimeError as err:
        detail = str(err).split("\n\t")[1:2] or [str(err)]
        raise PublishedFormatError(f"{source} does not fit {settings.model_name} as its conf.json describes it: "
                                   f"{detail[0].strip()[:300]}") from None
    return model


def _key_difference(expected: Mapping[str, Any], given: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    return sorted(set(expected) - set(given)), sorted(set(given) - set(expected))


def load_published(checkpoint: str | Path, config: str | Path | Mapping[str, Any] | None = None) -> nn.Module:
    """A published checkpoint's network, in eval mode, called as ``model(cloudy, sar)``.

    ``checkpoint``: a ``.pth.tar`` written by the published ``save_model``;
    ``config``: its ``conf.json`` (a path or the dict), by default the one beside
    the checkpoint. Inputs are in [0, 1] (S2 reflectance / 10000, S1 dB mapped
    from [-25, 0]); the output dict holds ``mean`` (B, 13, H, W) in [0, 1], ``var``
    (with a GNLL or MGNLL checkpoint) and ``sar_mask`` (``multisarv2``): the
    published network's outputs divided by ``scale_by`` (variance by ``scale_by**2``).
    """
    source = str(checkpoint)
    if config is None or isinstance(config, str | Path):
        config_path = Path(config) if config is not None else conf_beside(checkpoint)
        conf, conf_source = read_conf(config_path), str(config_path)
    else:
        conf, conf_source = dict(config), "config"
    settings = published_settings(conf, conf_source)
    weights = network_state_dict(read_published_checkpoint(checkpoint), source)
    return build_published(settings, weights, source).eval()


# ---------------------------------------------------------------- the way out


def published_conf(model: nn.Module, loss: LossConfig, train: Mapping[str, Any], experiment_name: str) -> dict[str, Any]:
    """The ``conf.json`` the published script would have written for ``model`` trained with ``--pretrain``.

    The keys its test script (``test_reconstruct.py``) and network builder read; any
    other key takes the published parser's default there. ``train``: ``lr``,
    ``gamma``, ``epochs``, ``batch_size``, ``rdm_seed``, ``val_every``, ``val_after``.
    """
    name = getattr(model, "model_name", "")
    if name not in PUBLISHED_NETWORKS:
        raise PublishedFormatError(f"model {name!r} has no published counterpart; only {list(PUBLISHED_NETWORKS)} "
                                   "can be exported in the published format")
    cfg = model.config
    if name == "multisarv2" and cfg.get("mask_beta", 0.0):
        raise PublishedFormatError(
            f"{name} with model.mask_beta = {cfg['mask_beta']} has no published counterpart: the published "
            "MultiSARv2 fixes mask_beta at 0 (structure-mask gate off), so the published scripts would load these "
            "weights and predict something else; only runs with mask_beta 0 can be exported")
    if loss.name not in PUBLISHED_LOSSES:
        raise PublishedFormatError(
            f"loss {loss.name!r} has no published counterpart (the published scripts build their loss from "
            f"conf.json and know {', '.join(PUBLISHED_LOSSES)}): retrain with one of them to export")
    variance = cfg["variance"]
    covmode = "uni" if loss.name == "GNLL" else loss.covmode  # the published GNLL runs in covmode "uni"
    return {
        "model": name,
        "experiment_name": experiment_name,
        "encoder_widths": list(cfg["encoder_widths"]),  # lists: the script writes them after str2list
        "decoder_widths": list(cfg["decoder_widths"]),
        "out_conv": [S2_CHANNELS + VARIANCE_CHANNELS[variance]],
        "mean_nonLinearity": True,
        "var_nonLinearity": "softplus",
        "agg_mode": "att_group",
        "encoder_norm": "group",
        "decoder_norm": "batch",
        "block_type": cfg["block_type"],
        "padding_mode": "reflect",
        "pad_value": 0,
        "n_head": 1,  # --pretrain sets it (and input_t) to 1
        "d_model": cfg.get("d_model") or 256,
        "positional_encoding": False,
        "d_k": 4,
        "use_v": False,
        "loss": loss.name,
        "covmode": covmode,
        "scale_by": float(cfg["scale_by"]),
        "separate_out": False,
        "use_sar": bool(cfg["use_sar"]),
        "pretrain": True,
        "input_t": 1,
        "sample_type": "pretrain",
        "region": "all",
        **{key: train[key] for key in ("epochs", "lr", "batch_size", "gamma", "rdm_seed", "val_every", "val_after")
           if key in train},
    }


def published_checkpoint(model: nn.Module, epoch: int, optimizer: Mapping[str, Any],
                         scheduler: Mapping[str, Any]) -> dict[str, Any]:
    """The dict the published ``save_model`` writes: epoch, ``netG.``-prefixed and plain state dicts, optimiser, scheduler."""
    weights = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return {
        "epoch": int(epoch),
        "state_dict": {NETWORK_PREFIX + key: value for key, value in weights.items()},
        "state_dict_G": weights,
        "optimizer_G": dict(optimizer),
        "scheduler_G": dict(scheduler),
    }
