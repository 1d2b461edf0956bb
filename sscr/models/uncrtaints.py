"""``uncrtaints``: UnCRtainTS (Ebel et al., CVPRW 2023) as the seed trains it: single-date, module for module.

"UnCRtainTS: Uncertainty Quantification for Cloud Removal in Optical Satellite Time
Series", github.com/PatrickTUM/UnCRtainTS. The seed (github.com/RSIR25/sscr) trains it
with ``--pretrain``, which builds the mono-temporal network (no L-TAE) for SEN12MS-CR.
This is that network with the same modules, parameter shapes, state-dict keys,
initialisation and forward, so a published ``state_dict_G`` loads with ``strict=True``;
``tests/models/test_published_parity.py`` checks it against reference outputs of the
published code (``tools/published_reference.py``).

Network, width C (published: 128), everything at full resolution (any H, W >= 2):

- input: S1 (VV, VH) first, then the 13 S2 bands, times ``scale_by``; no cloud mask;
- ``in_conv``: 1x1 conv (with bias) to C, GroupNorm(4), ReLU;
- ``in_block``: one block per ``encoder_widths`` entry, ``out_block``: one per
  ``decoder_widths`` entry (group norm in the encoder, batch norm in the decoder);
  ``mbconv`` = MBConv with expansion 2, ``residual`` = three conv-norm-ReLU layers;
- ``out_conv``: 1x1 conv (with bias) to 13 mean channels, + 13 variance channels
  (``variance="diag"``, the published GNLL / MGNLL ``diag``) or + 1 (``iso``); no norm;
- mean = ``scale_by * sigmoid``, variance = ``softplus + eps`` (eps 1e-3, or 1e-9 when
  ``scale_by`` is 1), both in the scaled units; :meth:`UnCRtainTS.forward` returns them
  divided back (mean / scale_by, var / scale_by**2), :meth:`UnCRtainTS.forward_scaled`
  as the published network gives them.

518,541 parameters and 53.8 GFLOPs per 256 x 256 patch with SAR and no variance.
``n_head`` and ``d_model`` only configure the multi-date L-TAE, which the
single-date network does not have: they are kept in ``config`` and unused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from sscr.models._base import BackboneConfig, PublishedNetwork
from sscr.models._registry import register_model
from sscr.models.blocks import S2_CHANNELS, ConvBlock, MBConv, ResidualConvBlock, init_published

DEFAULT_WIDTH = 128
MBCONV_EXPANSION = 2
VARIANCE_CHANNELS = {None: 0, "diag": S2_CHANNELS, "iso": 1}


@register_model("uncrtaints")
class UnCRtainTS(PublishedNetwork):
    """The published single-date UnCRtainTS (see the module docstring).

    Defaults: ``encoder_widths [128]``, ``decoder_widths [128] * 5`` (one block per
    entry; every entry must be the same width, as in the published network),
    ``block_type mbconv``, ``scale_by 10``, no mask (``use_mask: true`` is refused).
    Published initialisation (:func:`~sscr.models.blocks.init_published`).
    """

    defaults: ClassVar[dict[str, Any]] = {
        "use_mask": False, "encoder_widths": [DEFAULT_WIDTH], "decoder_widths": [DEFAULT_WIDTH] * 5,
    }

    def __init__(self, config: BackboneConfig = BackboneConfig()) -> None:  # noqa: B008 - frozen
        super().__init__(config)
        width = self._single_width()
        self.n_var = VARIANCE_CHANNELS[self.variance]
        self.variance_eps = 1e-9 if self.scale_by == 1.0 else 1e-3
        # Registration order is the published one, so the published init draws the same numbers.
        self.in_conv = ConvBlock(self.in_channels, width, 1, norm="group")
        self._add_sar_stem(width)
        self.in_block = nn.ModuleList(self._block(width, "group") for _ in self.settings.encoder_widths)
        self._add_sar_blocks(width)
        self.out_block = nn.ModuleList(self._block(width, "batch") for _ in self.settings.decoder_widths)
        self.out_conv = ConvBlock(width, S2_CHANNELS + self.n_var, 1, norm="none", act=None)
        init_published(self)

    def _single_width(self) -> int:
        widths = [*self.settings.encoder_widths, *self.settings.decoder_widths]
        if len(set(widths)) != 1:
            raise ValueError(
                f"{self.model_name} keeps one width at full resolution: model.encoder_widths and "
                f"model.decoder_widths must repeat one number (published: [128] and [128, 128, 128, 128, 128], "
                f"the defaults when null), got {self.settings.encoder_widths} and {self.settings.decoder_widths}"
            )
        return widths[0]

    def _block(self, width: int, norm: str) -> nn.Module:
        if self.settings.block_type == "mbconv":
            return MBConv(width, norm, expansion=MBCONV_EXPANSION)
        return ResidualConvBlock(width, norm)

    def _add_sar_stem(self, width: int) -> None:
        """Modules registered between ``in_conv`` and ``in_block`` (MultiSARv2's SAR stem); none here."""

    def _add_sar_blocks(self, width: int) -> None:
        """Modules registered between ``in_block`` and ``out_block`` (MultiSARv2's SAR blocks); none here."""

    def encode(self, stacked: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Encoder features of the scaled input, and any extra outputs (none here)."""
        features = self.in_conv(stacked)
        for block in self.in_block:
            features = block(features)
        return features, {}

    def forward_scaled(self, stacked: torch.Tensor) -> dict[str, torch.Tensor]:
        """The published forward on :meth:`network_input` ((B, C, H, W) or (B, 1, C, H, W)).

        Returns ``mean`` (B, 13, H, W) in [0, scale_by] and, with a variance, ``var``
        (B, 13 or 1, H, W) > 0 in scaled units (times scale_by**2), float32.
        """
        features, extra = self.encode(self.single_date(stacked))
        for block in self.out_block:
            features = block(features)
        raw = self.out_conv(features).float()  # float32 outputs even under mixed precision
        out = {"mean": self.scale_by * torch.sigmoid(raw[:, :S2_CHANNELS])}
        if self.n_var:
            out["var"] = F.softplus(raw[:, S2_CHANNELS:], beta=1, threshold=20) + self.variance_eps
        out.update(extra)
        return out
