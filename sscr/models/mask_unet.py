"""``mask_unet``: this project's small U-Net with a cloud-mask input (Ronneberger et al., MICCAI 2015).

Not a published network (the published ``unet`` is :mod:`sscr.models.unet`): a plain,
purely convolutional U-Net that also takes the cloud probability as an input channel,
with max-pool down-sampling and this project's heads and initialisation. Its receptive
field is local and small, so it is the baseline the tests and benchmarks use where a
cheap model with a mask input (and, if asked, a variance) is needed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
from torch import nn

from sscr.models._base import BackboneConfig, CloudRemovalModel
from sscr.models._registry import register_model
from sscr.models.blocks import ConvNormAct, OutputHeads, double_conv, init_weights

DEFAULT_ENCODER_WIDTHS = [32, 64, 128, 256]


@register_model("mask_unet")
class MaskUNet(CloudRemovalModel):
    """Plain U-Net on the stacked input (13 S2 + 2 S1 + 1 mask channels, as configured).

    Each level: two 3x3 conv, batch norm, ReLU (reflect padding); 2x2 max pooling down,
    2x2 transposed convolution up, skip concatenation. ``encoder_widths`` default
    ``[32, 64, 128, 256]``; ``decoder_widths`` (one per level, highest resolution first)
    default to the encoder widths. H and W must be multiples of ``2 ** (levels - 1)``
    (8 by default). ``block_type``, ``n_head`` and ``d_model`` are accepted and ignored.
    """

    defaults: ClassVar[dict[str, Any]] = {"use_mask": True, "encoder_widths": DEFAULT_ENCODER_WIDTHS}

    @classmethod
    def resolve(cls, config: BackboneConfig) -> BackboneConfig:
        """:attr:`defaults`, then decoder widths = encoder widths."""
        config = super().resolve(config)
        return replace(config, decoder_widths=list(config.decoder_widths or config.encoder_widths))

    def __init__(self, config: BackboneConfig = BackboneConfig()) -> None:  # noqa: B008 - frozen
        super().__init__(config)
        encoder_widths, decoder_widths = self.settings.encoder_widths, self.settings.decoder_widths
        if len(decoder_widths) != len(encoder_widths):
            raise ValueError(
                f"mask_unet: model.decoder_widths {decoder_widths} needs one width per encoder level "
                f"({len(encoder_widths)})"
            )
        levels = len(encoder_widths)
        self.size_multiple = 2 ** (levels - 1)
        self.stem = double_conv(self.in_channels, encoder_widths[0], "batch")
        self.down = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), double_conv(encoder_widths[i - 1], encoder_widths[i], "batch"))
            for i in range(1, levels)
        )
        self.bottom = (
            ConvNormAct(encoder_widths[-1], decoder_widths[-1], 1, norm="batch")
            if decoder_widths[-1] != encoder_widths[-1] else nn.Identity()
        )
        # up[i] goes from level i + 1 to level i
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(decoder_widths[i + 1], decoder_widths[i], 2, stride=2) for i in range(levels - 1)
        )
        self.merge = nn.ModuleList(
            double_conv(decoder_widths[i] + encoder_widths[i], decoder_widths[i], "batch")
            for i in range(levels - 1)
        )
        self.heads = OutputHeads(decoder_widths[0], self.variance, self.scale_by)
        init_weights(self)

    def forward(
        self, cloudy: torch.Tensor, sar: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """cloudy (B, 13, H, W), sar (B, 2, H, W), mask (B, [1,] H, W) -> {"mean", ["var"]}."""
        features = self.stem(self.prepare(cloudy, sar, mask).stacked(self.scale_by)[:, 0])
        skips = [features]
        for down in self.down:
            skips.append(down(skips[-1]))
        features = self.bottom(skips.pop())
        for level in reversed(range(len(self.up))):
            features = self.up[level](features)
            features = self.merge[level](torch.cat((features, skips[level]), dim=1))
        return self.heads(features)
