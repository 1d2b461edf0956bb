"""``unet`` and ``utae``: the published single-date U-Net of UnCRtainTS, module for module.

In the seed's code (github.com/RSIR25/sscr ``model/src/model_utils.py``, ``get_generator``),
``--model unet``, and ``--model utae`` under ``--pretrain`` ("on monotemporal data, just use
a simple U-Net"), build UnCRtainTS' ``utae.UNet`` (github.com/PatrickTUM/UnCRtainTS
``model/src/backbones/utae.py``, after U-TAE of Sainte Fare Garnot and Landrieu, ICCV 2021,
without its L-TAE) with ``str_conv_k=4, str_conv_s=2, str_conv_p=1``, ``norm_skip`` and
``norm_up`` ``batch``. This is that network with the same modules, parameter shapes,
state-dict keys, initialisation and forward, so a published ``state_dict_G`` loads with
``strict=True``; ``tests/models/test_published_parity.py`` checks it against reference
outputs of the published code (``tools/published_reference.py``). The multi-date U-TAE
(``--model utae`` without ``--pretrain``) is not reproduced.

Network, ``encoder_widths`` E (published default [64, 64, 64, 128]) and
``decoder_widths`` D ([32, 32, 64, 128]), highest resolution first, ``E[-1] == D[-1]``:

- input: S1 (VV, VH) first, then the 13 S2 bands, times ``scale_by``; no cloud mask;
- ``in_conv``: 1x1 conv (with bias) to E[0], GroupNorm(4), ReLU;
- ``down_blocks[i]``: ``down`` = 4x4 conv stride 2 (reflect padding 1), GroupNorm, ReLU;
  ``conv1`` = 3x3 conv to E[i+1], GroupNorm, ReLU; ``conv2`` = 3x3 conv, GroupNorm,
  added to ``conv1``'s output (no ReLU);
- ``up_blocks[j]`` (from the lowest resolution up): ``up`` = 4x4 transposed conv stride 2,
  BatchNorm, ReLU; ``skip_conv`` = 1x1 conv, BatchNorm, ReLU on the encoder map of that
  level; concatenated; ``conv1`` = 3x3 conv, BatchNorm, ReLU; ``conv2`` = 3x3 conv,
  BatchNorm, added (every conv with bias, reflect padding);
- ``out_conv``: 1x1 conv (with bias) to 13 mean channels (+ 13 or 1 variance channels);
- mean = ``sigmoid``, variance = ``softplus``, in the scaled units.

Unlike UnCRtainTS' head, the mean is a plain sigmoid, **not** multiplied by ``scale_by``:
with the seed's ``--scale_by 10`` the published U-Net predicts at most 1 in units where the
target reaches 10, i.e. reflectance <= 0.1 once divided back. That is the published
behaviour and is kept (``scale_by 1``, UnCRtainTS' own default, has no such cap).

As published, a sample whose whole input equals the padding value 0 gets zero encoder
features (``TemporallySharedBlock.smart_forward``). The published training script trains
these networks with ``l2`` only (``train_reconstruct.py`` replaces ``--loss``); a variance
(``GNLL``, ``MGNLL``) widens ``out_conv`` as the published class does when ``out_conv`` asks
for it (softplus, no eps): its test script runs such a checkpoint.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sscr.models._base import BackboneConfig, PublishedNetwork
from sscr.models._registry import register_model
from sscr.models.blocks import S2_CHANNELS, ConvBlock, ConvLayer, init_published

DEFAULT_ENCODER_WIDTHS = [64, 64, 64, 128]
DEFAULT_DECODER_WIDTHS = [32, 32, 64, 128]
STRIDED_KERNEL, STRIDE, STRIDED_PADDING = 4, 2, 1
"""``str_conv_k``, ``str_conv_s``, ``str_conv_p`` of the published ``get_generator``."""
PAD_VALUE = 0.0
"""The published ``--pad_value``: an input sample equal to it everywhere is treated as padding."""
VARIANCE_CHANNELS = {None: 0, "diag": S2_CHANNELS, "iso": 1}


class DownConvBlock(nn.Module):
    """Published ``DownConvBlock``: strided 4x4 ``down``, then ``conv1`` and the residual ``conv2`` (group norm)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.down = ConvLayer(in_channels, in_channels, STRIDED_KERNEL, norm="group", stride=STRIDE,
                              padding=STRIDED_PADDING)
        self.conv1 = ConvLayer(in_channels, out_channels, 3, norm="group")
        self.conv2 = ConvLayer(out_channels, out_channels, 3, norm="group", act=None)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H/2, W/2)."""
        features = self.conv1(self.down(features))
        return features + self.conv2(features)


class UpConvBlock(nn.Module):
    """Published ``UpConvBlock``: ``skip_conv`` on the skip, transposed 4x4 ``up``, concatenated, ``conv1`` + ``conv2``."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int) -> None:
        super().__init__()
        # Registration order is the published one (skip_conv first), so the published init draws the same numbers.
        self.skip_conv = nn.Sequential(nn.Conv2d(skip_channels, skip_channels, 1), nn.BatchNorm2d(skip_channels),
                                       nn.ReLU())
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, STRIDED_KERNEL, stride=STRIDE, padding=STRIDED_PADDING),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )
        self.conv1 = ConvLayer(out_channels + skip_channels, out_channels, 3, norm="batch")
        self.conv2 = ConvLayer(out_channels, out_channels, 3, norm="batch", act=None)

    def forward(self, features: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W), skip (B, C_skip, 2H, 2W) -> (B, C_out, 2H, 2W)."""
        features = self.conv1(torch.cat((self.up(features), self.skip_conv(skip)), dim=1))
        return features + self.conv2(features)


def shared_forward(block: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """``block`` on the samples not equal to the padding value everywhere; zeros (the padding value) for those.

    The published encoder blocks' ``smart_forward`` with ``pad_value`` 0 (their batch
    statistics, were the norm a batch norm, would see only the other samples).
    """
    if features.is_meta:  # no values to test (model_cost's shape-only forward): no sample is padding
        return block(features)
    padded = (features == PAD_VALUE).flatten(1).all(dim=1)
    if not bool(padded.any()):
        return block(features)
    kept = block(features[~padded])
    out = kept.new_full((features.shape[0], *kept.shape[1:]), PAD_VALUE)
    out[~padded] = kept
    return out


@register_model("unet")
class UNet(PublishedNetwork):
    """The published single-date U-Net (see the module docstring).

    Defaults: ``encoder_widths [64, 64, 64, 128]``, ``decoder_widths [32, 32, 64, 128]``
    (the published class's); as many decoder as encoder widths, the last ones equal.
    H and W must be multiples of ``2 ** (levels - 1)`` (8 by default). No mask
    (``use_mask: true`` is refused). ``block_type``, ``n_head`` and ``d_model`` are kept
    in ``config`` and unused. Published initialisation (:func:`~sscr.models.blocks.init_published`).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "use_mask": False, "encoder_widths": DEFAULT_ENCODER_WIDTHS, "decoder_widths": DEFAULT_DECODER_WIDTHS,
    }

    @classmethod
    def resolve(cls, config: BackboneConfig) -> BackboneConfig:
        """:attr:`defaults`, then the published class's checks on the widths."""
        config = super().resolve(config)
        encoder, decoder = config.encoder_widths, config.decoder_widths
        if len(encoder) != len(decoder) or encoder[-1] != decoder[-1]:
            raise ValueError(
                f"{cls.model_name} needs one decoder width per encoder width, the last ones equal (published: "
                f"{DEFAULT_ENCODER_WIDTHS} and {DEFAULT_DECODER_WIDTHS}, the defaults when null), got "
                f"model.encoder_widths {encoder} and model.decoder_widths {decoder}")
        return config

    def __init__(self, config: BackboneConfig = BackboneConfig()) -> None:  # noqa: B008 - frozen
        super().__init__(config)
        encoder, decoder = self.settings.encoder_widths, self.settings.decoder_widths
        levels = len(encoder)
        self.size_multiple = STRIDE ** (levels - 1)
        self.n_var = VARIANCE_CHANNELS[self.variance]
        self.in_conv = ConvBlock(self.in_channels, encoder[0], 1, norm="group")
        self.down_blocks = nn.ModuleList(DownConvBlock(encoder[i], encoder[i + 1]) for i in range(levels - 1))
        # up_blocks[0] starts at the lowest resolution, as published
        self.up_blocks = nn.ModuleList(
            UpConvBlock(decoder[i], decoder[i - 1], encoder[i - 1]) for i in range(levels - 1, 0, -1)
        )
        self.out_conv = ConvBlock(decoder[0], S2_CHANNELS + self.n_var, 1, norm="none", act=None)
        init_published(self)

    def forward_scaled(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """The published forward on :meth:`network_input` ((B, C, H, W) or (B, 1, C, H, W)).

        Returns ``mean`` (B, 13, H, W) in [0, 1] (a sigmoid, not times ``scale_by``: see the
        module docstring) and, with a variance, ``var`` (B, 13 or 1, H, W) >= 0, float32.
        """
        stacked = self.single_date(stacked)
        self.check_size(*stacked.shape[-2:])
        features = [shared_forward(self.in_conv, stacked)]
        for block in self.down_blocks:
            features.append(shared_forward(block, features[-1]))
        decoded = features[-1]
        for step, block in enumerate(self.up_blocks):
            decoded = block(decoded, features[-(step + 2)])
        raw = self.out_conv(decoded).float()  # float32 outputs even under mixed precision
        out = {"mean": torch.sigmoid(raw[:, :S2_CHANNELS])}
        if self.n_var:
            out["var"] = F.softplus(raw[:, S2_CHANNELS:], beta=1, threshold=20)
        return out


@register_model("utae")
class UTAE(UNet):
    """``utae`` as the seed trains it (``--pretrain``): the published single-date U-Net, identical to ``unet``.

    Its own name so that a published ``utae`` checkpoint is imported and exported under
    the name it was trained with. The multi-date U-TAE (L-TAE temporal encoder) is not
    reproduced: more than one date is refused.
    """
