"""What every backbone shares: the one typed config it is built from, input checks and shaping.

A backbone is built from one :class:`BackboneConfig`: the ``params.yaml`` ``model:``
group minus ``name``, plus the ``variance`` the loss needs. Keys a backbone does not
use are kept unchanged, so one ``model:`` group fits every backbone. ``None`` means
"the backbone's default": each backbone resolves them (:meth:`CloudRemovalModel.resolve`)
and exposes the resolved values as ``config``, a plain dict, so
``build_model(name, **model.config)`` rebuilds a checkpoint's model exactly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import nn

from sscr.config import ModelConfig
from sscr.models.blocks import BLOCK_TYPES, S1_CHANNELS, S2_CHANNELS, VARIANCES

MODEL_MAX_WIDTH = 2048
"""Widest layer (``encoder_widths``, ``decoder_widths``, ``d_model``) and most attention heads accepted from
params, a checkpoint or a published ``conf.json``; the published networks use 128, ours at most 256."""
MODEL_MAX_LEVELS = 8
"""Most entries of ``encoder_widths`` / ``decoder_widths`` (the published decoder has 5; 8 halvings of a 256 px
patch leave 1 px)."""
MODEL_MAX_PARAMS = 100_000_000
"""Most parameters a model may have (400 MB of float32 weights, 1.6 GB with Adam's state; ours have 0.5-2 M).
Counted before any weight is allocated: on the ``meta`` device for configs wider than :data:`MODEL_SMALL_WIDTH`."""
MODEL_SMALL_WIDTH = 256
"""Configs whose widths, ``d_model`` and ``n_head`` are all at most this (and :data:`MODEL_MAX_LEVELS` deep)
hold at most 40 M parameters whatever the backbone (tests/test_hostile_inputs.py builds the largest of each
on the meta device), so they are built without counting first."""


class ModelTooLarge(ValueError):
    """A model config beyond :data:`MODEL_MAX_WIDTH`, :data:`MODEL_MAX_LEVELS` or :data:`MODEL_MAX_PARAMS`."""


@dataclass(frozen=True)
class BackboneConfig:
    """Everything a backbone is built from: ``params.yaml`` ``model:`` minus ``name``, plus ``variance``.

    ``variance`` is not a ``model:`` key: it follows from the loss
    (:func:`sscr.losses.variance_mode`): None, ``"diag"`` (13 channels) or ``"iso"`` (1).
    ``None`` in any other field means the backbone's default.
    """

    use_sar: bool = True
    use_mask: bool | None = None
    scale_by: float = 10.0
    block_type: str = "mbconv"
    n_head: int | None = None
    d_model: int | None = None
    encoder_widths: list[int] | None = None
    decoder_widths: list[int] | None = None
    mask_beta: float = 0.0
    variance: str | None = field(default=None)

    def __post_init__(self) -> None:
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {list(VARIANCES)} (set by loss.name and loss.covmode), "
                             f"got {self.variance!r}")
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"model.block_type must be one of {list(BLOCK_TYPES)}, got {self.block_type!r}")
        if not self.scale_by > 0:
            raise ValueError(f"model.scale_by must be > 0, got {self.scale_by!r}")
        if not 0.0 <= self.mask_beta <= 1.0:
            raise ValueError(f"model.mask_beta must be in [0, 1], got {self.mask_beta!r}")
        for key in ("n_head", "d_model"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"model.{key} must be a positive integer, got {value!r}")
            if value is not None and value > MODEL_MAX_WIDTH:
                raise ModelTooLarge(f"model.{key} {value} exceeds the limit of {MODEL_MAX_WIDTH}: refused before "
                                    "building (the published networks use 128)")
        for key in ("encoder_widths", "decoder_widths"):
            widths = getattr(self, key)
            if widths is None:
                continue
            if not widths or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths):
                raise ValueError(f"model.{key} must be a non-empty list of positive integers, got {widths!r}")
            if len(widths) > MODEL_MAX_LEVELS or max(widths) > MODEL_MAX_WIDTH:
                shown = widths if len(widths) <= MODEL_MAX_LEVELS else f"{widths[:3]}... ({len(widths)} levels)"
                raise ModelTooLarge(f"model.{key} {shown} exceeds the limits of {MODEL_MAX_WIDTH} per layer and "
                                    f"{MODEL_MAX_LEVELS} levels: refused before building (the published networks "
                                    "use 128)")
            object.__setattr__(self, key, list(widths))  # a private copy, as JSON gives it back

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> BackboneConfig:
        """From keyword values (a checkpoint's ``model_config``); an unknown key is a TypeError naming it."""
        accepted = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(params) - set(accepted))
        if unknown:
            raise TypeError(f"unknown model parameter(s) {', '.join(unknown)}; accepted: {', '.join(accepted)}")
        return cls(**params)

    @classmethod
    def from_model_config(cls, model: ModelConfig, variance: str | None) -> BackboneConfig:
        """From the typed ``params.yaml`` ``model:`` group and the variance the loss needs."""
        return cls.from_params({**model.model_dump(exclude={"name"}), "variance": variance})

    def as_dict(self) -> dict[str, Any]:
        """Plain data (lists, numbers, strings, None): what a checkpoint stores as ``model_config``."""
        return dataclasses.asdict(self)

    def is_small(self) -> bool:
        """Whether every width, ``d_model`` and ``n_head`` is at most :data:`MODEL_SMALL_WIDTH`."""
        sizes = [*(self.encoder_widths or []), *(self.decoder_widths or []), self.d_model or 0, self.n_head or 0]
        return max(sizes) <= MODEL_SMALL_WIDTH


def count_parameters(cls: type[nn.Module], config: BackboneConfig) -> int:
    """Parameters of ``cls(config)``, counted on the ``meta`` device: no weight is allocated nor initialised."""
    with torch.device("meta"):
        shadow = cls(config)
    return sum(parameter.numel() for parameter in shadow.parameters())


def check_model_size(cls: type[nn.Module], config: BackboneConfig) -> None:
    """:class:`ModelTooLarge` if ``cls(config)`` would hold more than :data:`MODEL_MAX_PARAMS` parameters.

    Widths and levels were checked when ``config`` was made; a config within
    :data:`MODEL_SMALL_WIDTH` is known to be small, any other is counted on the ``meta`` device first.
    """
    if config.is_small():
        return
    count = count_parameters(cls, config)
    if count > MODEL_MAX_PARAMS:
        raise ModelTooLarge(f"{getattr(cls, 'model_name', cls.__name__)} with encoder_widths {config.encoder_widths}, "
                            f"decoder_widths {config.decoder_widths}, d_model {config.d_model} would hold "
                            f"{count:,} parameters, above the limit of {MODEL_MAX_PARAMS:,}: refused before "
                            "allocating it")


@dataclass
class Inputs:
    """Model inputs as 5-d tensors (B, T, C, H, W), values in [0, 1], not yet scaled."""

    cloudy: torch.Tensor
    sar: torch.Tensor | None
    mask: torch.Tensor | None

    @property
    def steps(self) -> int:
        """Number of time steps T."""
        return self.cloudy.shape[1]

    def stacked(self, scale_by: float) -> torch.Tensor:
        """Optical (and SAR) times ``scale_by``, then the mask, along channels: (B, T, C, H, W)."""
        parts = [self.cloudy * scale_by]
        if self.sar is not None:
            parts.append(self.sar * scale_by)
        if self.mask is not None:
            parts.append(self.mask)
        return torch.cat(parts, dim=2)


class CloudRemovalModel(nn.Module):
    """Base of every backbone: built from one :class:`BackboneConfig`, validated input handling.

    Inputs of ``forward(cloudy, sar=None, mask=None)``:

    - ``cloudy`` (B, 13, H, W), S2 in [0, 1]; temporal backbones also take (B, T, 13, H, W).
    - ``sar`` (B, 2, H, W) or (B, T, 2, H, W), S1 in [0, 1]; required when ``use_sar``,
      ignored otherwise. A single SAR frame is repeated over T.
    - ``mask`` (B, H, W), (B, 1, H, W) or (B, T, 1, H, W), cloud probability in [0, 1];
      used when ``use_mask``. ``None`` while ``use_mask`` means "no mask known" and is
      treated as all cloudy (ones): the model then reconstructs every pixel and passes
      nothing through. Backbones with ``takes_mask = False`` ignore it.

    H and W must be multiples of :attr:`size_multiple` and at least twice it.
    Outputs: ``{"mean": (B, 13, H, W) in [0, 1]}``, plus ``"var"`` (B, 13 or 1, H, W) > 0
    in [0, 1]^2 units when ``variance`` is set, plus the keys of :attr:`extra_outputs`.

    Subclasses set :attr:`defaults` (values for ``None`` fields) or override
    :meth:`resolve` when a default depends on other fields.
    """

    model_name: ClassVar[str] = ""
    temporal: ClassVar[bool] = False
    """True when the backbone takes T > 1 time steps."""
    takes_mask: ClassVar[bool] = True
    """False for networks without a mask input: ``use_mask: true`` is refused."""
    defaults: ClassVar[Mapping[str, Any]] = {"use_mask": True}
    """The backbone's values for the fields left ``None``."""
    extra_outputs: ClassVar[frozenset[str]] = frozenset()
    """Output keys besides ``mean`` and ``var``."""
    train_sar_dropout: ClassVar[float] = 0.0
    """Share of training samples whose S1 the training view blanks (the published networks: none)."""

    def __init__(self, config: BackboneConfig = BackboneConfig()) -> None:  # noqa: B008 - frozen, never mutated
        super().__init__()
        name = self.model_name or type(self).__name__
        config = type(self).resolve(config)
        if config.use_mask and not self.takes_mask:
            raise ValueError(f"{name} takes no cloud mask (the published network has no mask input): "
                             "set model.use_mask to null or false")
        self.settings = config
        self.use_sar = bool(config.use_sar)
        self.use_mask = bool(config.use_mask)
        self.scale_by = float(config.scale_by)
        self.variance = config.variance
        self.size_multiple = 1

    @classmethod
    def resolve(cls, config: BackboneConfig) -> BackboneConfig:
        """``config`` with the backbone's :attr:`defaults` in place of its ``None`` fields."""
        filled = {key: (list(value) if isinstance(value, list) else value)
                  for key, value in cls.defaults.items() if getattr(config, key) is None}
        return replace(config, **filled)

    @property
    def config(self) -> dict[str, Any]:
        """The resolved build parameters as plain data: ``build_model(name, **config)`` rebuilds this model."""
        return self.settings.as_dict()

    @property
    def output_keys(self) -> frozenset[str]:
        """Keys of the dict ``forward`` returns."""
        return frozenset({"mean"} | ({"var"} if self.variance else set())) | self.extra_outputs

    @property
    def in_channels(self) -> int:
        """Channels per time step fed to the network: 13 optical, + 2 SAR, + 1 mask."""
        return S2_CHANNELS + S1_CHANNELS * self.use_sar + self.use_mask

    def prepare(
        self, cloudy: torch.Tensor, sar: torch.Tensor | None, mask: torch.Tensor | None
    ) -> Inputs:
        """Check shapes and bring every input to (B, T, C, H, W); ValueError naming the problem."""
        name = self.model_name
        if cloudy.dim() == 4:
            cloudy = cloudy.unsqueeze(1)
        if cloudy.dim() != 5 or cloudy.shape[2] != S2_CHANNELS:
            raise ValueError(
                f"{name}: cloudy must be (B, {S2_CHANNELS}, H, W) or (B, T, {S2_CHANNELS}, H, W), got {tuple(cloudy.shape)}"
            )
        batch, steps, _, height, width = cloudy.shape
        if steps > 1 and not self.temporal:
            raise ValueError(f"{name} is mono-temporal: cloudy has T={steps} time steps, expected 1")
        self.check_size(height, width)

        if self.use_sar:
            if sar is None:
                raise ValueError(f"{name} was built with use_sar=True: pass sar (B, {S1_CHANNELS}, H, W)")
            sar = self._as_steps(sar, S1_CHANNELS, "sar", batch, steps, height, width)
        else:
            sar = None

        if self.use_mask:
            if mask is None:
                mask = cloudy.new_ones(batch, steps, 1, height, width)
            else:
                if mask.dim() == 3:
                    mask = mask.unsqueeze(1)
                mask = self._as_steps(mask, 1, "mask", batch, steps, height, width).clamp(0.0, 1.0)
        else:
            mask = None
        return Inputs(cloudy=cloudy, sar=sar, mask=mask)

    def _as_steps(
        self, tensor: torch.Tensor, channels: int, what: str, batch: int, steps: int, height: int, width: int
    ) -> torch.Tensor:
        if tensor.dim() == 4:
            tensor = tensor.unsqueeze(1)
        expected = (batch, channels, height, width)
        if tensor.dim() != 5 or (tensor.shape[0], *tensor.shape[2:]) != expected or tensor.shape[1] not in (1, steps):
            raise ValueError(
                f"{self.model_name}: {what} must be (B, {channels}, H, W) matching cloudy "
                f"(B={batch}, T={steps}, H={height}, W={width}), got {tuple(tensor.shape)}"
            )
        return tensor.expand(batch, steps, channels, height, width).to(dtype=self._dtype(tensor))

    @staticmethod
    def _dtype(tensor: torch.Tensor) -> torch.dtype:
        return tensor.dtype if tensor.is_floating_point() else torch.float32

    def check_size(self, height: int, width: int) -> None:
        """ValueError unless H and W are multiples of :attr:`size_multiple` and at least twice it."""
        multiple = self.size_multiple
        if height % multiple or width % multiple or min(height, width) < 2 * multiple:
            raise ValueError(
                f"{self.model_name} needs height and width that are multiples of {multiple} "
                f"and at least {2 * multiple} (its total downsampling); got {height} x {width}: "
                "crop or pad the patch"
            )


class PublishedNetwork(CloudRemovalModel):
    """Base of the published networks (``uncrtaints``, ``multisarv2``, ``unet``, ``utae``): their input and units.

    The published code feeds one tensor, S1 (VV, VH) first, then the 13 S2 bands, all
    times ``scale_by``, and no cloud mask (``use_mask: true`` is refused). A subclass
    implements :meth:`forward_scaled`, the published forward on that tensor, whose
    outputs are in the scaled units the published losses see; :meth:`forward` takes
    [0, 1] inputs and returns them divided back (mean / scale_by, var / scale_by**2).
    """

    takes_mask = False
    defaults: ClassVar[Mapping[str, Any]] = {"use_mask": False}

    def network_input(self, cloudy: torch.Tensor, sar: torch.Tensor | None = None) -> torch.Tensor:
        """The published network's input: S1 then S2 (S2 only without SAR), times ``scale_by``: (B, C, H, W)."""
        inputs = self.prepare(cloudy, sar, None)
        parts = [inputs.cloudy[:, 0]] if inputs.sar is None else [inputs.sar[:, 0], inputs.cloudy[:, 0]]
        return torch.cat(parts, dim=1) * self.scale_by

    def single_date(self, stacked: torch.Tensor) -> torch.Tensor:
        """A scaled input as (B, C, H, W): the published (B, 1, C, H, W) loses its time axis; ValueError otherwise."""
        if stacked.dim() == 5:
            if stacked.shape[1] != 1:
                raise ValueError(f"{self.model_name} is mono-temporal: got T={stacked.shape[1]} time steps")
            stacked = stacked[:, 0]
        if stacked.dim() != 4 or stacked.shape[1] != self.in_channels:
            raise ValueError(f"{self.model_name}: the scaled input must be (B, {self.in_channels}, H, W) "
                             f"(S1 then S2), got {tuple(stacked.shape)}")
        return stacked

    def forward_scaled(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """The published forward on :meth:`network_input`: outputs in scaled units (subclasses implement it)."""
        raise NotImplementedError

    def unscale(self, scaled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs of :meth:`forward_scaled` in [0, 1] units: mean / scale_by, var / scale_by**2."""
        out = dict(scaled)
        out["mean"] = scaled["mean"] / self.scale_by
        if "var" in scaled:
            out["var"] = scaled["var"] / self.scale_by**2
        return out

    def forward(
        self, cloudy: torch.Tensor, sar: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """cloudy (B, 13, H, W), sar (B, 2, H, W) -> {"mean", ["var"], ...} in [0, 1] units; ``mask`` is ignored."""
        return self.unscale(self.forward_scaled(self.network_input(cloudy, sar)))
