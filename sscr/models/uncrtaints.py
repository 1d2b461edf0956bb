"""``uncrtaints``: UnCRtainTS (Ebel et al., CVPRW 2023), github.com/PatrickTUM/UnCRtainTS.

"UnCRtainTS: Uncertainty Quantification for Cloud Removal in Optical Satellite Time
Series". An attention-free-in-space network that keeps full resolution throughout:
1x1 input convolution, one encoder level of MBConv (or residual) blocks with group
norm, L-TAE over time (skipped for a single time step, as the paper's mono-temporal
SEN12MS-CR variant does), five decoder blocks with batch norm, a 1x1 output convolution
(batch-normed), sigmoid on the mean and softplus on the variance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sscr.models._base import CloudRemovalModel
from sscr.models._registry import register_model
from sscr.models.blocks import ConvNormAct, LTAE2d, OutputHeads, block_stack, init_weights, temporal_aggregate

DEFAULT_ENCODER_WIDTHS = [128]
DEFAULT_DECODER_WIDTHS = [128, 128, 128, 128, 128]
DEFAULT_N_HEAD = 16
DEFAULT_D_MODEL = 256
ATTENTION_GRID = 32
"""Features are max-pooled to at most 32 x 32 before the L-TAE (UnCRtainTS' ``att_down``)."""


@register_model("uncrtaints")
class UnCRtainTS(CloudRemovalModel):
    """UnCRtainTS with its paper defaults, at full resolution (any H, W >= 2).

    Defaults: ``encoder_widths [128]`` (one MBConv per entry), ``decoder_widths
    [128] * 5`` (one block per entry), ``block_type mbconv``, ``n_head 16``,
    ``d_model 256``, ``scale_by 10``. Widths may differ between entries: a 1x1
    projection is inserted where they change. The last encoder width must be
    divisible by ``n_head`` (L-TAE groups). Takes (B, 13, H, W) or a time series
    (B, T, 13, H, W); ``forward`` also takes ``positions`` (B, T), default 0 .. T-1.
    """

    temporal = True

    def __init__(
        self,
        *,
        use_sar: bool = True,
        use_mask: bool = True,
        scale_by: float = 10.0,
        block_type: str = "mbconv",
        n_head: int | None = None,
        d_model: int | None = None,
        encoder_widths: list[int] | None = None,
        decoder_widths: list[int] | None = None,
        variance: str | None = None,
    ) -> None:
        encoder_widths = list(DEFAULT_ENCODER_WIDTHS if encoder_widths is None else encoder_widths)
        decoder_widths = list(DEFAULT_DECODER_WIDTHS if decoder_widths is None else decoder_widths)
        n_head = DEFAULT_N_HEAD if n_head is None else n_head
        d_model = DEFAULT_D_MODEL if d_model is None else d_model
        super().__init__(
            use_sar=use_sar, use_mask=use_mask, scale_by=scale_by, block_type=block_type,
            n_head=n_head, d_model=d_model, encoder_widths=encoder_widths,
            decoder_widths=decoder_widths, variance=variance,
        )
        self.in_conv = ConvNormAct(self.in_channels, encoder_widths[0], 1, norm="group")
        self.encoder = block_stack(block_type, encoder_widths, encoder_widths[0], "group")
        self.temporal_encoder = LTAE2d(encoder_widths[-1], n_head=n_head, d_k=4, d_model=d_model)
        self.decoder = block_stack(block_type, decoder_widths, encoder_widths[-1], "batch")
        self.heads = OutputHeads(decoder_widths[-1], variance, self.scale_by, norm="batch")
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
        features = self.encoder(self.in_conv(stacked.flatten(0, 1)))  # shared over time
        if steps > 1:  # with a single date there is nothing to attend over (the paper's mono mode)
            height, width = features.shape[-2:]
            pooled = F.adaptive_max_pool2d(features, (min(ATTENTION_GRID, height), min(ATTENTION_GRID, width)))
            _, attention = self.temporal_encoder(pooled.view(batch, steps, *pooled.shape[1:]), positions)
            features = temporal_aggregate(features.view(batch, steps, *features.shape[1:]), attention)
        return self.heads(self.decoder(features))
