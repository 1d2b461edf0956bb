"""``sscr_lite``: this project's own design, a cloud-gated SAR-optical U-Net (not the published SSCR).

The published SSCR network is ``multisarv2`` (alias ``sscr``): UnCRtainTS at full
resolution with a SAR structure-mask generator whose gate is off. This design fuses SAR
into the optical features at every scale, gated by the cloud probability, and works at
1, 1/2, 1/4 resolution. Two encoders run side by side over ``levels = len(encoder_widths)`` scales:

- a SAR structure branch (S1 only) whose features, at every scale, feed an auxiliary
  head predicting the structure map of the clear scene (``"structure"``; the loss
  compares it with the multi-scale gradient magnitude of the target), so the branch
  learns the edges and shapes that clouds hide;
- an optical branch (S2 and the cloud mask) built from the same MBConv / residual
  blocks as UnCRtainTS.

At every scale a cloud-gated fusion mixes them: per pixel and channel, a gate computed
from the (downsampled) cloud probability and both feature maps decides how much
projected SAR structure replaces optical evidence; the fused map is the skip
connection and the input of the next optical level. Global context comes from
multi-head attention at the lowest scale only, with keys on a fixed small grid, so
cost stays linear in pixels. A light decoder predicts the mean (and variance). The
output is a residual on the cloudy input gated by the cloud probability:
``mean = mask * decoded + (1 - mask) * cloudy``, so clear pixels pass through and the
capacity goes under clouds; without a mask (``use_mask=False``) the blend gate is
learned from the decoder features instead.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sscr.models._base import BackboneConfig, CloudRemovalModel
from sscr.models._registry import register_model
from sscr.models.blocks import (
    S1_CHANNELS,
    S2_CHANNELS,
    ConvNormAct,
    LowResAttention,
    OutputHeads,
    init_output_conv,
    init_weights,
    make_block,
)

DEFAULT_ENCODER_WIDTHS = [32, 64, 128]
DEFAULT_N_HEAD = 4
SAR_WIDTH_RATIO = 0.5
"""The SAR branch is half as wide as the optical one (two input bands, structure only; at least 8)."""
GATE_MASK_WEIGHT = 4.0
"""Initial gate logit = 4 * cloud - 2: about 12 % SAR on clear pixels, 88 % under clouds (then learned)."""


class CloudGatedFusion(nn.Module):
    """fused = optical + gate * (proj(sar) - optical), gate = sigmoid(1x1 conv of [optical, sar, cloud])."""

    def __init__(self, channels: int, sar_channels: int, use_mask: bool) -> None:
        super().__init__()
        self.use_mask = use_mask
        self.sar_proj = nn.Conv2d(sar_channels, channels, 1)
        self.gate = nn.Conv2d(channels + sar_channels + int(use_mask), channels, 1)

    def custom_init(self) -> None:
        """Start from a gate driven by the cloud probability alone (learned from there on)."""
        nn.init.normal_(self.gate.weight, std=0.01)
        nn.init.zeros_(self.gate.bias)
        if self.use_mask:
            with torch.no_grad():
                self.gate.weight[:, -1] = GATE_MASK_WEIGHT
                self.gate.bias.fill_(-GATE_MASK_WEIGHT / 2)

    def forward(
        self, optical: torch.Tensor, sar: torch.Tensor, cloud: torch.Tensor | None
    ) -> torch.Tensor:
        """optical, sar (B, C, h, w); cloud (B, 1, h, w) probability or None -> (B, C, h, w)."""
        parts = [optical, sar] if cloud is None else [optical, sar, cloud]
        gate = torch.sigmoid(self.gate(torch.cat(parts, dim=1)))
        return optical + gate * (self.sar_proj(sar) - optical)


class Branch(nn.Module):
    """A multi-scale encoder: stem (3x3) then per level a strided 3x3 (except level 0) and one block."""

    def __init__(self, in_channels: int, widths: list[int], block_type: str) -> None:
        super().__init__()
        self.stem = ConvNormAct(in_channels, widths[0], 3, norm="group", act=nn.GELU)
        self.down = nn.ModuleList(
            ConvNormAct(widths[i - 1], widths[i], 3, stride=2, norm="group", act=nn.GELU)
            for i in range(1, len(widths))
        )
        self.blocks = nn.ModuleList(make_block(block_type, width, "group") for width in widths)

    def level(self, index: int, features: torch.Tensor) -> torch.Tensor:
        """Run level ``index`` on the previous level's output (the raw input for level 0)."""
        features = self.stem(features) if index == 0 else self.down[index - 1](features)
        return self.blocks[index](features)


class StructureHead(nn.Module):
    """Per-level 1x1 projections, upsampled and summed, sigmoid: a (B, 1, H, W) structure map."""

    def __init__(self, widths: list[int]) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(width, 1, 1) for width in widths)

    def custom_init(self) -> None:
        """Start unsaturated (0.5 everywhere)."""
        for conv in self.proj:
            init_output_conv(conv)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Features of every level, highest resolution first -> structure in [0, 1]."""
        size = features[0].shape[-2:]
        logits = self.proj[0](features[0])
        for proj, level in zip(self.proj[1:], features[1:], strict=True):
            logits = logits + F.interpolate(proj(level), size=size, mode="bilinear", align_corners=False)
        return torch.sigmoid(logits.float())


@register_model("sscr_lite")
class SSCRLite(CloudRemovalModel):
    """SSCR-lite: SAR structure branch, optical branch, cloud-gated fusion per scale, light decoder.

    Defaults: ``encoder_widths [32, 64, 128]`` (one scale each, /2 between scales; the
    SAR branch uses half of each), ``decoder_widths`` = encoder widths (highest
    resolution first, the last one is the bottleneck width), ``n_head 4``,
    ``d_model`` = last encoder width, ``block_type mbconv``. H and W must be
    multiples of ``2 ** (levels - 1)`` (4 by default); the attention grid adapts to
    any size. Outputs ``mean`` (B, 13, H, W), ``structure`` (B, 1, H, W) and, with a
    variance, ``var``.

    ``use_sar=False`` (ablation): no SAR branch and no fusion; the structure head then
    reads the optical features, so the output keys and the loss stay the same.
    ``use_mask=False``: the mask is neither an input nor the blend gate; a learned
    gate (1x1 conv + sigmoid on the decoder features) blends decoded and cloudy.
    With ``use_mask`` and no mask passed, every pixel counts as cloudy (nothing passes through).
    """

    extra_outputs = frozenset({"structure"})
    defaults: ClassVar[dict[str, Any]] = {
        "use_mask": True, "encoder_widths": DEFAULT_ENCODER_WIDTHS, "n_head": DEFAULT_N_HEAD,
    }

    @classmethod
    def resolve(cls, config: BackboneConfig) -> BackboneConfig:
        """:attr:`defaults`, then decoder widths = encoder widths and ``d_model`` = last encoder width."""
        config = super().resolve(config)
        return replace(
            config,
            decoder_widths=list(config.encoder_widths if config.decoder_widths is None else config.decoder_widths),
            d_model=config.encoder_widths[-1] if config.d_model is None else config.d_model,
        )

    def __init__(self, config: BackboneConfig = BackboneConfig()) -> None:  # noqa: B008 - frozen
        super().__init__(config)
        block_type, n_head, d_model = self.settings.block_type, self.settings.n_head, self.settings.d_model
        encoder_widths, decoder_widths = self.settings.encoder_widths, self.settings.decoder_widths
        if len(decoder_widths) != len(encoder_widths):
            raise ValueError(
                f"sscr_lite: model.decoder_widths {decoder_widths} needs one width per encoder level "
                f"({len(encoder_widths)})"
            )
        levels = len(encoder_widths)
        self.size_multiple = 2 ** (levels - 1)
        self.optical = Branch(S2_CHANNELS + int(self.use_mask), encoder_widths, block_type)
        if self.use_sar:
            sar_widths = [max(8, round(width * SAR_WIDTH_RATIO)) for width in encoder_widths]
            self.sar = Branch(S1_CHANNELS, sar_widths, block_type)
            self.fusion = nn.ModuleList(
                CloudGatedFusion(width, sar_width, self.use_mask)
                for width, sar_width in zip(encoder_widths, sar_widths, strict=True)
            )
        self.context = LowResAttention(encoder_widths[-1], n_head, d_model)
        self.structure_head = StructureHead(sar_widths if self.use_sar else encoder_widths)

        self.bottom = (
            ConvNormAct(encoder_widths[-1], decoder_widths[-1], 1, norm="group", act=nn.GELU)
            if decoder_widths[-1] != encoder_widths[-1] else nn.Identity()
        )
        # merge[i] / decode[i] go from level i + 1 to level i
        self.merge = nn.ModuleList(
            ConvNormAct(decoder_widths[i + 1] + encoder_widths[i], decoder_widths[i], 1, norm="group", act=nn.GELU)
            for i in range(levels - 1)
        )
        self.decode = nn.ModuleList(make_block(block_type, decoder_widths[i], "group") for i in range(levels - 1))
        self.heads = OutputHeads(decoder_widths[0], self.variance, self.scale_by)
        if not self.use_mask:
            self.blend = nn.Conv2d(decoder_widths[0], 1, 1)

        init_weights(self)
        if not self.use_mask:
            init_output_conv(self.blend)

    def forward(
        self, cloudy: torch.Tensor, sar: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """cloudy (B, 13, H, W), sar (B, 2, H, W), mask (B, [1,] H, W) -> {"mean", "structure", ["var"]}."""
        inputs = self.prepare(cloudy, sar, mask)
        cloudy = inputs.cloudy[:, 0]
        cloud = inputs.mask[:, 0] if inputs.mask is not None else None
        optical_in = cloudy * self.scale_by if cloud is None else torch.cat((cloudy * self.scale_by, cloud), 1)
        sar_features = inputs.sar[:, 0] * self.scale_by if inputs.sar is not None else None

        levels = len(self.optical.blocks)
        # cloud probability per scale: the fraction of cloudy pixels under each cell
        clouds = [cloud] + [None if cloud is None else F.avg_pool2d(cloud, 2**level) for level in range(1, levels)]
        skips: list[torch.Tensor] = []
        structure_features: list[torch.Tensor] = []
        features = optical_in
        for level in range(levels):
            features = self.optical.level(level, features)
            if sar_features is not None:
                sar_features = self.sar.level(level, sar_features)
                features = self.fusion[level](features, sar_features, clouds[level])
                structure_features.append(sar_features)
            else:
                structure_features.append(features)
            skips.append(features)

        decoded = self.bottom(self.context(skips.pop()))
        for level in reversed(range(len(self.merge))):
            decoded = F.interpolate(decoded, scale_factor=2.0, mode="bilinear", align_corners=False)
            decoded = self.decode[level](self.merge[level](torch.cat((decoded, skips[level]), dim=1)))

        out = self.heads(decoded)
        # residual on the cloudy input: clear pixels pass through, capacity goes under clouds
        blend = cloud if cloud is not None else torch.sigmoid(self.blend(decoded))
        out["mean"] = blend * out["mean"] + (1.0 - blend) * cloudy.clamp(0.0, 1.0)
        out["structure"] = self.structure_head(structure_features)
        return out
