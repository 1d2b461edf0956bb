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
cost stays linear in pixels. A light decoder predicts the mean (and variance), starting
from the mean clear-land spectrum (:data:`sscr.bands.CLEAR_LAND_TOA`) rather than a flat
0.5 in every band. The output is a blend of the decoded image and the cloudy input,
``mean = gate * decoded + (1 - gate) * cloudy``, so clear pixels pass through and the
capacity goes under clouds. The gate is learned, ``sigmoid(1x1 conv of [decoded, cloud])``,
and starts as ``sigmoid(12 (cloud - 0.3) + 6 (near - 0.6))``, ``near`` the highest probability
within 4 px: 0.1 % far from clouds, 86-99 % at probability 0.5, all but 1 inside. It saturates where the
blurred probability map still covers cloud, so cloud edges are replaced, not kept in part (no white
halo), it sees how close a pixel is to a cloud, so it can open over the haze beyond the map's edge
(no pale rim), and it can learn to correct what the mask misses. Detections away from every cloud body (narrower than
:data:`ISOLATED_OPENING` px and more than :data:`ISOLATED_MARGIN` px from any wider
detection: mostly bright roofs, soil or snow that the cloud detector flags) keep the input
exactly, and so do pixels whose probability is exactly 0 (a binary mask's clear pixels: what
a user's mask file says is clear stays as it was). Without a mask (``use_mask=False``) the
gate reads the decoder features alone. In training, a quarter of the samples get no S1
(:data:`SAR_DROPOUT`), so the model still paints from the optical context where S1 is missing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sscr.bands import CLEAR_LAND_TOA, S2_BANDS
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
OUTPUT_GATE_SLOPE = 12.0
OUTPUT_GATE_CENTRE = 0.3
"""Initial output gate = sigmoid(12 (cloud - 0.3) + 6 (near - 0.6)): 0.001 far from clouds, 0.86-0.99 at
probability 0.5 (near 0.5-1), 0.99998 inside. Centred below the 0.5 that makes a pixel count as cloud, because the
probability map is blurred: a cloud's edge pixels have 0.3-0.9 and are still cloud."""
NEAR_CLOUD_RADIUS = 4
"""The gate also sees ``near``, the highest probability within this many px (a 9 x 9 max-pool): a cloud's haze
reaches past the blurred map's 0.5 contour (benchmarks/results/realism.md, cloud edges), and a gate that only
sees the probability there blends that haze into the output as a pale rim."""
NEAR_GATE_WEIGHT = 6.0
NEAR_GATE_CENTRE = 0.6
"""Initial weight of ``near`` in the gate logit, and its centre: at probability 0, 4 px from a cloud body (near 1)
the gate starts at sigmoid(12 * -0.3 + 6 * 0.4) = 0.23, at probability 0.1 with near 0.9 at 0.35 (learned from
there)."""
SAR_DROPOUT = 0.25
"""Share of training samples whose S1 is replaced by the missing-S1 value (0 after normalisation; the training
view draws it per sample, :class:`sscr.data.augment.TrainingView`, from :attr:`SSCRLite.train_sar_dropout`). Without it the
default leaned on S1: on 50 real SEN12MS-CR pairs without S1 it reached 18.71 dB PSNR and 17.88 deg SAM inside
clouds, with it 23.79 dB and 14.58 deg (cloudy input 12.06 dB, 14.72 deg), for 1.1 dB less PSNR inside clouds on
the synthetic test split, where S1 is always there (benchmarks/results/sar_dropout.md)."""
CLOUD_THRESHOLD = 0.5
"""Probability from which a pixel is a detection (as the metrics' cloud mask, ``sscr.metrics.MASK_THRESHOLD``)."""
ISOLATED_OPENING = 3
"""Detections that vanish under a morphological opening with this square (narrower than it, in px) ..."""
ISOLATED_MARGIN = 4
"""... and lie more than this many px from every detection that survives it keep the cloudy input."""


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
    ``use_mask=False``: the mask is not an input; the output gate (1x1 conv + sigmoid)
    reads the decoder features alone. With ``use_mask`` and no mask passed, every pixel
    counts as cloudy (nothing passes through).
    """

    extra_outputs = frozenset({"structure"})
    train_sar_dropout = SAR_DROPOUT
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
        # the output gate: decoded vs cloudy input, from the decoder features (and the cloud probability and the
        # highest probability nearby)
        self.blend = nn.Conv2d(decoder_widths[0] + 2 * int(self.use_mask), 1, 1)

        init_weights(self)
        self._init_outputs()

    def _init_outputs(self) -> None:
        """The mean head starts at the clear-land spectrum; the gate at ``sigmoid(12 (cloud - 0.3) + 6 (near - 0.6))``."""
        init_output_conv(self.blend)
        land = torch.tensor([CLEAR_LAND_TOA[band] for band in S2_BANDS])
        with torch.no_grad():
            self.heads.conv.bias[:S2_CHANNELS] = torch.logit(land)
            if self.use_mask:
                self.blend.weight[:, -2] = OUTPUT_GATE_SLOPE
                self.blend.weight[:, -1] = NEAR_GATE_WEIGHT
                self.blend.bias.fill_(-OUTPUT_GATE_SLOPE * OUTPUT_GATE_CENTRE - NEAR_GATE_WEIGHT * NEAR_GATE_CENTRE)

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
        # clear pixels pass through, capacity goes under clouds
        if cloud is None:
            gate_in = decoded
        else:
            size = 2 * NEAR_CLOUD_RADIUS + 1
            near = F.max_pool2d(cloud, size, stride=1, padding=NEAR_CLOUD_RADIUS)
            gate_in = torch.cat((decoded, cloud.to(decoded.dtype), near.to(decoded.dtype)), 1)
        gate = torch.sigmoid(self.blend(gate_in).float())
        if cloud is not None:
            # a probability of exactly 0 (a clear pixel of a binary mask, a user's "no cloud here") and an
            # isolated detection keep the input bit for bit
            gate = gate.masked_fill((cloud <= 0) | isolated_detections(cloud), 0.0)
        out["mean"] = gate * out["mean"] + (1.0 - gate) * cloudy.clamp(0.0, 1.0)
        out["structure"] = self.structure_head(structure_features)
        return out

    def passes_through(self, mask: torch.Tensor) -> torch.Tensor | None:
        """(B, 1, H, W) bool: where ``mean`` is the cloudy input exactly, given the mask (B, [1,] H, W) alone.

        The pixels whose output gate :meth:`forward` sets to 0 (probability 0, isolated
        detections); None without a mask input. Lets a caller skip the forward pass of a
        tile that is clear throughout: its output would be its input, bit for bit.
        """
        if not self.use_mask:
            return None
        cloud = mask.reshape(mask.shape[0], 1, *mask.shape[-2:]).clamp(0.0, 1.0)
        return (cloud <= 0) | isolated_detections(cloud)


def isolated_detections(cloud: torch.Tensor) -> torch.Tensor:
    """Where a (B, 1, H, W) cloud probability detects something away from every cloud body: bool (B, 1, H, W).

    Cloud bodies are the detections (probability >= 0.5) that survive a morphological opening with an
    :data:`ISOLATED_OPENING` square; every pixel with a non-zero probability farther than
    :data:`ISOLATED_MARGIN` px from all of them is isolated (the detection and its blurred skirt).
    s2cloudless flags bright roofs, bare soil and snow as cloud now and then, a few pixels at a time;
    real clouds come in bodies wider than that. Pixels outside the image count as neither.
    """
    detected = (cloud >= CLOUD_THRESHOLD).float()
    size, margin = ISOLATED_OPENING, 2 * ISOLATED_MARGIN + 1
    # max-pooling pads with -inf, so the image border neither erodes nor dilates anything
    eroded = -F.max_pool2d(-detected, size, stride=1, padding=size // 2)
    bodies = F.max_pool2d(eroded, size, stride=1, padding=size // 2)
    near_body = F.max_pool2d(bodies, margin, stride=1, padding=margin // 2) > 0
    return (cloud > 0) & ~near_body
