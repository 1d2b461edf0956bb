"""``utae``: U-Net with temporal attention encoder (Sainte Fare Garnot and Landrieu, ICCV 2021).

"Panoptic Segmentation of Satellite Image Time Series with Convolutional Temporal
Attention Networks", github.com/VSainteuf/utae-paps. The convolutional encoder is
shared over time; an L-TAE at the lowest resolution yields per-pixel attention masks
that collapse time at every skip level; the decoder is a plain U-Net decoder.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from sscr.models._base import BackboneConfig, CloudRemovalModel
from sscr.models._registry import register_model
from sscr.models.blocks import (
    ConvNormAct,
    LTAE2d,
    OutputHeads,
    double_conv,
    init_weights,
    temporal_aggregate,
)

DEFAULT_ENCODER_WIDTHS = [64, 64, 64, 128]
DEFAULT_DECODER_WIDTHS = [32, 32, 64, 128]
DEFAULT_N_HEAD = 16
DEFAULT_D_MODEL = 256


class DownBlock(nn.Module):
    """Strided 4x4 convolution (/2), then conv and a residual conv (group norm, as U-TAE's encoder)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.down = ConvNormAct(in_channels, in_channels, 4, stride=2, padding=1)
        self.conv1 = ConvNormAct(in_channels, out_channels, 3)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H/2, W/2)."""
        features = self.conv1(self.down(features))
        return features + self.conv2(features)


class UpBlock(nn.Module):
    """Transposed 4x4 convolution (x2), skip concatenation, conv and a residual conv (batch norm)."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int) -> None:
        super().__init__()
        self.skip = ConvNormAct(skip_channels, skip_channels, 1, norm="batch")
        self.up = nn.Sequential(
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )
        self.conv1 = ConvNormAct(out_channels + skip_channels, out_channels, 3, norm="batch")
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm="batch")

    def forward(self, features: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W), skip (B, C_skip, 2H, 2W) -> (B, C_out, 2H, 2W)."""
        features = self.conv1(torch.cat((self.up(features), self.skip(skip)), dim=1))
        return features + self.conv2(features)


@register_model("utae")
class UTAE(CloudRemovalModel):
    """U-TAE for cloud removal: takes (B, 13, H, W) or a time series (B, T, 13, H, W).

    Defaults: ``encoder_widths [64, 64, 64, 128]``, ``decoder_widths [32, 32, 64, 128]``
    (highest resolution first), ``n_head 16``, ``d_model 256``, L-TAE key size 4.
    Every encoder width must be divisible by ``n_head`` (grouped temporal aggregation).
    H and W must be multiples of ``2 ** (levels - 1)`` (8 by default). With T = 1 the
    attention is trivially 1 and the model is a U-Net with an L-TAE bottleneck.
    ``forward`` also takes ``positions`` (B, T) acquisition days; default 0 .. T-1.
    ``block_type`` is accepted and ignored (U-TAE's own conv blocks are used).
    """

    temporal = True

    defaults: ClassVar[dict[str, Any]] = {
        "use_mask": True, "encoder_widths": DEFAULT_ENCODER_WIDTHS, "n_head": DEFAULT_N_HEAD, "d_model": DEFAULT_D_MODEL,
    }

    @classmethod
    def resolve(cls, config: BackboneConfig) -> BackboneConfig:
        """:attr:`defaults`; decoder widths [32, 32, 64, 128] for the default encoder, else the encoder's."""
        config = super().resolve(config)
        if config.decoder_widths is None:  # custom encoder without decoder: mirror the encoder
            default = config.encoder_widths == DEFAULT_ENCODER_WIDTHS
            config = replace(config, decoder_widths=list(DEFAULT_DECODER_WIDTHS if default else config.encoder_widths))
        return config

    def __init__(self, config: BackboneConfig = BackboneConfig()) -> None:  # noqa: B008 - frozen
        super().__init__(config)
        encoder_widths, decoder_widths = self.settings.encoder_widths, self.settings.decoder_widths
        n_head, d_model = self.settings.n_head, self.settings.d_model
        if len(decoder_widths) != len(encoder_widths):
            raise ValueError(
                f"utae: model.decoder_widths {decoder_widths} needs one width per encoder level ({len(encoder_widths)})"
            )
        if any(width % n_head for width in encoder_widths):
            raise ValueError(f"utae: every encoder width {encoder_widths} must be divisible by model.n_head={n_head}")
        levels = len(encoder_widths)
        self.size_multiple = 2 ** (levels - 1)
        self.stem = double_conv(self.in_channels, encoder_widths[0], "group")
        self.down = nn.ModuleList(DownBlock(encoder_widths[i - 1], encoder_widths[i]) for i in range(1, levels))
        self.temporal_encoder = LTAE2d(
            encoder_widths[-1], n_head=n_head, d_k=4, d_model=d_model, out_channels=decoder_widths[-1]
        )
        # up[i] goes from level i + 1 to level i
        self.up = nn.ModuleList(
            UpBlock(decoder_widths[i + 1], decoder_widths[i], encoder_widths[i]) for i in range(levels - 1)
        )
        self.out_conv = ConvNormAct(decoder_widths[0], decoder_widths[0], 3, norm="batch")
        self.heads = OutputHeads(decoder_widths[0], self.variance, self.scale_by)
        init_weights(self)

    def forward(
        self,
        cloudy: torch.Tensor,
        sar: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """cloudy (B, [T,] 13, H, W), sar and mask likewise (or one frame for all T) -> {"mean", ["var"]}."""
        stacked = self.prepare(cloudy, sar, mask).stacked(self.scale_by)
        batch, steps = stacked.shape[:2]
        features = [self.stem(stacked.flatten(0, 1))]  # the encoder is shared over time
        for down in self.down:
            features.append(down(features[-1]))
        features = [f.view(batch, steps, *f.shape[1:]) for f in features]
        decoded, attention = self.temporal_encoder(features[-1], positions)
        for level in reversed(range(len(self.up))):
            decoded = self.up[level](decoded, temporal_aggregate(features[level], attention))
        return self.heads(self.out_conv(decoded))
