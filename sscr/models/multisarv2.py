"""``multisarv2`` (alias ``sscr``): the published SSCR network, MultiSARv2 of github.com/RSIR25/sscr.

Cheng et al., "SSCR: Efficient Multimodal Cloud Removal Framework via Exploiting
Structural Semantics in SAR". The network is :class:`~sscr.models.uncrtaints.UnCRtainTS`
(the same modules and names on the prediction path) plus a SAR branch a quarter as
wide (C/4, published 32 channels), module for module as published so a published
``state_dict_G`` loads with ``strict=True``:

- ``sar_in_conv``: 1x1 conv S1 -> C/4, GroupNorm, ReLU;
- the structure-mask generator: ``mask_block`` (MBConv on the ``sar_in_conv``
  features) -> ``mask_conv`` (1x1 to one channel) -> sigmoid = ``sar_mask``
  (B, 1, H, W), an output; the ``ml`` loss correlates it with the target's band mean;
- the gate after the encoder: ``out = (1 - mask_beta) * out + mask_beta * out * sar_mask``.
  ``mask_beta`` (``model.mask_beta``) is 0 in the published code, so the gate is the
  identity and the prediction equals UnCRtainTS' with the same weights, bit for bit;
- the edge branch: ``sar_edge_conv`` (depthwise 3x3 convolutions built from Scharr x
  and y kernels, summed, BatchNorm, GELU, added to its input, then a 1x1 / 3x3 / 1x1
  bottleneck with BatchNorms), ``sar_in_conv2`` and ``sar_in_block``. The published
  forward computes its output and never uses it; the published initialisation
  overwrites the Scharr kernels, and the branch never gets a gradient. Its parameters
  exist here so published weights load. In training mode it runs as published (its
  batch-norm running statistics move, and they are part of the state dict); in
  evaluation mode it is skipped, which changes nothing but the time.

536,158 parameters per published width; 55.7 GFLOPs per 256 x 256 patch in training
mode, 54.4 in evaluation mode (without the edge branch).

The SAR branch needs SAR: ``use_sar: false`` is refused (the published network would
feed the first two S2 bands, B1 and B2, to its "SAR" branch); for an optical-only
network use ``uncrtaints``. The branch exists only with MBConv blocks
(``block_type: residual`` is refused, as the published code cannot run it either).
"""

from __future__ import annotations

import torch
from torch import nn

from sscr.models._base import BackboneConfig
from sscr.models._registry import register_model
from sscr.models.blocks import S1_CHANNELS, ConvBlock, MBConv
from sscr.models.uncrtaints import MBCONV_EXPANSION, UnCRtainTS

SAR_WIDTH_DIVISOR = 4
"""The SAR branch is C / 4 channels wide."""
SCHARR_X = ((-3.0, 0.0, 3.0), (-10.0, 0.0, 10.0), (-3.0, 0.0, 3.0))
"""Scharr kernel of the x derivative; the y kernel is its transpose."""


class EdgeBottleneck(nn.Module):
    """1x1 (C -> C/2), BN, GELU, 3x3 (zero padded, no bias), BN, GELU, 1x1 (C/2 -> C), BN (published ``Conv_Extra``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.block = nn.Sequential(
            nn.Conv2d(channels, half, 1),
            nn.BatchNorm2d(half),
            nn.GELU(),
            nn.Conv2d(half, half, 3, padding=1, bias=False),
            nn.BatchNorm2d(half),
            nn.GELU(),
            nn.Conv2d(half, channels, 1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.block(features)


class ScharrEdge(nn.Module):
    """Edge enhancement (published ``Scharr``): ``bottleneck(x + GELU(BN(scharr_x * x + scharr_y * x)))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_x = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.conv_y = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        kernel = torch.tensor(SCHARR_X)
        with torch.no_grad():  # the starting kernels (a later published init replaces them)
            self.conv_x.weight.copy_(kernel.expand(channels, 1, 3, 3))
            self.conv_y.weight.copy_(kernel.t().expand(channels, 1, 3, 3))
        self.norm = nn.BatchNorm2d(channels)
        self.act = nn.GELU()
        self.conv_extra = EdgeBottleneck(channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        edges = self.act(self.norm(self.conv_x(features) + self.conv_y(features)))
        return self.conv_extra(features + edges)


@register_model("multisarv2")
class MultiSARv2(UnCRtainTS):
    """The published MultiSARv2 (see the module docstring): UnCRtainTS + SAR edge branch + structure mask.

    Same defaults as ``uncrtaints``; ``mask_beta`` 0. Outputs ``mean``, ``sar_mask``
    (B, 1, H, W) in (0, 1) and, with a variance, ``var``.
    """

    extra_outputs = frozenset({"sar_mask"})

    @classmethod
    def resolve(cls, config: BackboneConfig) -> BackboneConfig:
        """UnCRtainTS' defaults, and a refusal of what the published SAR branch cannot do."""
        config = super().resolve(config)
        if not config.use_sar:
            raise ValueError(
                "multisarv2 generates its structure mask from S1 and needs SAR: set model.use_sar to true, "
                "or use model.name: uncrtaints for an optical-only network"
            )
        if config.block_type != "mbconv":
            raise ValueError("multisarv2 exists with MBConv blocks only (its SAR branch has no residual variant): "
                             "set model.block_type to mbconv")
        if config.encoder_widths[0] < 2 * SAR_WIDTH_DIVISOR:
            raise ValueError(f"multisarv2 needs a width of at least {2 * SAR_WIDTH_DIVISOR} (its SAR branch is a "
                             f"quarter as wide, its edge bottleneck half of that): got model.encoder_widths "
                             f"{config.encoder_widths}")
        return config

    def _add_sar_stem(self, width: int) -> None:
        sar_width = width // SAR_WIDTH_DIVISOR
        self.sar_in_conv = ConvBlock(S1_CHANNELS, sar_width, 1, norm="group")
        self.sar_in_conv2 = ConvBlock(sar_width, sar_width, 1, norm="group")
        self.sar_edge_conv = ScharrEdge(sar_width)

    def _add_sar_blocks(self, width: int) -> None:
        sar_width = width // SAR_WIDTH_DIVISOR
        self.sar_in_block = nn.ModuleList(
            MBConv(sar_width, "group", expansion=MBCONV_EXPANSION) for _ in self.settings.encoder_widths
        )
        self.mask_block = MBConv(sar_width, "group", expansion=MBCONV_EXPANSION)
        self.mask_conv = nn.Conv2d(sar_width, 1, 1)

    def edge_features(self, sar_features: torch.Tensor) -> torch.Tensor:
        """The edge branch on the ``sar_in_conv`` features (computed in training mode, never used)."""
        features = self.sar_in_conv2(self.sar_edge_conv(sar_features))
        for block in self.sar_in_block:
            features = block(features)
        return features

    def encode(self, stacked: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Encoder features gated by the structure mask, and ``{"sar_mask": (B, 1, H, W)}``."""
        sar_features = self.sar_in_conv(stacked[:, :S1_CHANNELS])
        if self.training:
            # Published: computed and discarded; only its batch-norm running statistics change.
            self.edge_features(sar_features)
        sar_mask = torch.sigmoid(self.mask_conv(self.mask_block(sar_features)))
        features, _ = super().encode(stacked)
        beta = self.settings.mask_beta
        features = (1 - beta) * features + beta * (features * sar_mask)
        return features, {"sar_mask": sar_mask.float()}
