"""Building blocks shared by every backbone: convolutions, norms, MBConv, residual blocks,
low-resolution multi-head attention, the mean / variance heads and the two weight
initialisations (this project's and the published one).

Each block exists once, here; backbones import them and never redefine a variant.
The MBConv and squeeze-excitation follow UnCRtainTS (Ebel et al., CVPRW 2023,
github.com/PatrickTUM/UnCRtainTS); the conv layers U-TAE (Sainte Fare Garnot and
Landrieu, ICCV 2021, github.com/VSainteuf/utae-paps) as UnCRtainTS ships it.
:class:`ConvBlock`, :class:`ConvLayer`, :class:`MBConv` and :class:`ResidualConvBlock`
nest their layers as the published code does, so the published networks built from
them have the published state-dict keys (``in_conv.conv.conv.0.weight``,
``in_block.0.conv.fn.3.weight``, ...).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sscr.bands import S1_CHANNELS, S2_CHANNELS  # noqa: F401 - re-exported to the backbones

NormKind = Literal["group", "batch", "none"]
BlockType = Literal["mbconv", "residual"]
Variance = Literal["diag", "iso"] | None

VAR_FLOOR = 1e-6
"""Added to every predicted variance so a Gaussian NLL never divides by zero."""

BLOCK_TYPES: tuple[str, ...] = ("mbconv", "residual")
VARIANCES: tuple[str | None, ...] = (None, "diag", "iso")


def norm_layer(kind: NormKind, channels: int, groups: int = 4) -> nn.Module:
    """A 2-d normalisation: ``group`` (``groups`` groups, fewer if they do not divide), ``batch`` or none."""
    if kind == "group":
        groups = math.gcd(groups, channels)
        return nn.GroupNorm(groups, channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'group', 'batch' or 'none'")


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int = 3,
    stride: int = 1,
    groups: int = 1,
    bias: bool = True,
    padding: int | None = None,
) -> nn.Conv2d:
    """A convolution with reflect padding (no dark frame at tile borders); 'same' size by default."""
    padding = kernel_size // 2 if padding is None else padding
    return nn.Conv2d(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding,
        groups=groups, bias=bias, padding_mode="reflect" if padding else "zeros",
    )


class ConvNormAct(nn.Sequential):
    """Convolution (reflect padded), normalisation, activation.

    ``bias``: None = a bias only without a norm (a norm's shift makes it redundant);
    the published UnCRtainTS layers keep it anyway (``bias=True``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        norm: NormKind = "group",
        act: type[nn.Module] | None = nn.ReLU,
        padding: int | None = None,
        bias: bool | None = None,
    ) -> None:
        bias = norm == "none" if bias is None else bias
        layers: list[nn.Module] = [
            conv2d(in_channels, out_channels, kernel_size, stride, bias=bias, padding=padding),
            norm_layer(norm, out_channels),
        ]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class ConvLayer(nn.Module):
    """Conv (with bias, reflect padded), norm, activation stored as ``conv``: U-TAE's ``ConvLayer`` (keys ``conv.0.weight``).

    ``stride`` and ``padding`` as U-TAE's strided down-sampling convolution takes them
    (``padding`` None: 'same' size).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        norm: NormKind = "group",
        act: type[nn.Module] | None = nn.ReLU,
        stride: int = 1,
        padding: int | None = None,
    ) -> None:
        super().__init__()
        self.conv = ConvNormAct(in_channels, out_channels, kernel_size, stride=stride, norm=norm, act=act,
                                padding=padding, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        return self.conv(features)


class ConvBlock(nn.Module):
    """A :class:`ConvLayer` stored as ``conv``: U-TAE's ``ConvBlock`` (keys ``conv.conv.0.weight``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        norm: NormKind = "group",
        act: type[nn.Module] | None = nn.ReLU,
    ) -> None:
        super().__init__()
        self.conv = ConvLayer(in_channels, out_channels, kernel_size, norm=norm, act=act)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H, W)."""
        return self.conv(features)


def double_conv(in_channels: int, out_channels: int, norm: NormKind) -> nn.Sequential:
    """Two 3x3 conv-norm-ReLU layers: the U-Net stage (and U-TAE's input stage)."""
    return nn.Sequential(
        ConvNormAct(in_channels, out_channels, 3, norm=norm),
        ConvNormAct(out_channels, out_channels, 3, norm=norm),
    )


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: channel gates from globally pooled features (as in UnCRtainTS' MBConv)."""

    def __init__(self, in_channels: int, channels: int, ratio: float = 0.25) -> None:
        super().__init__()
        hidden = max(1, int(in_channels * ratio))
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.GELU(),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Scale each channel of ``features`` (B, C, H, W) by its learned gate."""
        gates = self.fc(features.mean(dim=(2, 3)))
        return features * gates[:, :, None, None]


class PreNorm(nn.Module):
    """``fn(norm(x))``: the pre-normalisation wrapper of UnCRtainTS' MBConv (keys ``norm.*``, ``fn.*``)."""

    def __init__(self, norm: nn.Module, fn: nn.Module) -> None:
        super().__init__()
        self.norm = norm
        self.fn = fn

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Normalise, then apply ``fn``."""
        return self.fn(self.norm(features))


class MBConv(nn.Module):
    """Inverted residual with squeeze-excitation (MBConv), pre-normalised, channel preserving.

    norm -> 1x1 expand (x ``expansion``) -> norm -> GELU -> 3x3 depthwise (reflect)
    -> norm -> GELU -> SE -> 1x1 project -> norm, added to the input. Stored as
    UnCRtainTS stores it: ``conv.norm`` and ``conv.fn.0`` ... ``conv.fn.8``. The published
    UnCRtainTS uses ``expansion=2``; ``sscr_lite`` the default 4.
    """

    def __init__(self, channels: int, norm: NormKind = "group", expansion: int = 4) -> None:
        super().__init__()
        hidden = channels * expansion
        self.conv = PreNorm(norm_layer(norm, channels), nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            norm_layer(norm, hidden),
            nn.GELU(),
            conv2d(hidden, hidden, 3, groups=hidden, bias=False),
            norm_layer(norm, hidden),
            nn.GELU(),
            SqueezeExcite(channels, hidden),
            nn.Conv2d(hidden, channels, 1, bias=False),
            norm_layer(norm, channels),
        ))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return features + self.conv(features)


class ResidualBlock(nn.Module):
    """Basic residual block: 3x3 conv, norm, ReLU, 3x3 conv, norm, added to the input, ReLU."""

    def __init__(self, channels: int, norm: NormKind = "group") -> None:
        super().__init__()
        self.branch = nn.Sequential(
            ConvNormAct(channels, channels, 3, norm=norm),
            ConvNormAct(channels, channels, 3, norm=norm, act=None),
        )
        self.act = nn.ReLU()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return self.act(features + self.branch(features))


class ResidualConvBlock(nn.Module):
    """UnCRtainTS' residual block: three 3x3 conv (with bias), norm, ReLU layers, added to the input.

    ``out = x + conv3(conv2(conv1(x)))``, each ``convN`` a :class:`ConvLayer` (reflect padding).
    """

    def __init__(self, channels: int, norm: NormKind = "group") -> None:
        super().__init__()
        self.conv1 = ConvLayer(channels, channels, 3, norm=norm)
        self.conv2 = ConvLayer(channels, channels, 3, norm=norm)
        self.conv3 = ConvLayer(channels, channels, 3, norm=norm)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return features + self.conv3(self.conv2(self.conv1(features)))


def make_block(block_type: BlockType, channels: int, norm: NormKind) -> nn.Module:
    """One channel-preserving block of the requested type (``mbconv`` or ``residual``)."""
    if block_type == "mbconv":
        return MBConv(channels, norm)
    if block_type == "residual":
        return ResidualBlock(channels, norm)
    raise ValueError(f"unknown block_type {block_type!r}; expected one of {list(BLOCK_TYPES)}")


class LowResAttention(nn.Module):
    """Global context by multi-head attention whose keys and values live on a small fixed grid.

    Queries are the pixels of the (already low-resolution) feature map; keys and
    values are its average-pooled version on at most ``grid`` x ``grid`` cells, so
    the cost grows linearly with the number of pixels. Followed by a pointwise
    feed-forward layer; both are pre-normalised residual updates.
    """

    def __init__(self, channels: int, n_head: int, d_model: int, grid: int = 16) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_head ({n_head})")
        self.n_head, self.d_model, self.grid = n_head, d_model, grid
        self.norm = nn.GroupNorm(1, channels)
        self.query = nn.Conv2d(channels, d_model, 1)
        self.key_value = nn.Conv2d(channels, 2 * d_model, 1)
        self.proj = nn.Conv2d(d_model, channels, 1)
        self.ffn = nn.Sequential(
            nn.GroupNorm(1, channels),
            nn.Conv2d(channels, 2 * channels, 1),
            nn.GELU(),
            nn.Conv2d(2 * channels, channels, 1),
        )

    def custom_init(self) -> None:
        """Zero output projections: the block starts as the identity and learns how much context to add."""
        for conv in (self.proj, self.ffn[-1]):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        batch, _, height, width = features.shape
        normed = self.norm(features)
        head_dim = self.d_model // self.n_head
        query = self.query(normed).view(batch, self.n_head, head_dim, height * width)
        pooled = F.adaptive_avg_pool2d(normed, (min(self.grid, height), min(self.grid, width)))
        key, value = self.key_value(pooled).flatten(2).chunk(2, dim=1)
        key = key.reshape(batch, self.n_head, head_dim, -1)
        value = value.reshape(batch, self.n_head, head_dim, -1)
        # explicit matmuls (not SDPA) so FlopCounterMode counts them on every device
        scores = torch.matmul(query.transpose(2, 3), key) / math.sqrt(head_dim)  # B, h, HW, cells
        context = torch.matmul(value, scores.softmax(dim=-1).transpose(2, 3))  # B, h, hd, HW
        features = features + self.proj(context.reshape(batch, self.d_model, height, width))
        return features + self.ffn(features)


class OutputHeads(nn.Module):
    """1x1 convolution to the mean (13 bands, sigmoid) and, if asked, the variance (softplus).

    The heads of ``sscr_lite`` and ``mask_unet`` (the published networks have their
    own, in :mod:`sscr.models.uncrtaints` and :mod:`sscr.models.unet`). ``variance``: None (mean only), ``"diag"``
    (one variance per band, 13 channels) or ``"iso"`` (one variance shared by all
    bands). The network works on data multiplied by ``scale_by`` (as UnCRtainTS), so
    the softplus output is a variance in those units; it is divided by ``scale_by**2``
    to be a variance of [0, 1] reflectance, then floored by :data:`VAR_FLOOR`. Outputs
    are float32 even under autocast, so losses and metrics keep their precision.
    """

    def __init__(self, in_channels: int, variance: Variance, scale_by: float) -> None:
        super().__init__()
        self.variance = variance
        self.scale_by = scale_by
        self.n_var = {None: 0, "diag": S2_CHANNELS, "iso": 1}[variance]
        self.conv = nn.Conv2d(in_channels, S2_CHANNELS + self.n_var, 1)

    def custom_init(self) -> None:
        """Start at mean 0.5 and variance softplus(0) / scale_by**2."""
        init_output_conv(self.conv)

    def logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Raw mean logits (B, 13, H, W) and raw variance (B, 13 or 1, H, W) or None, in float32."""
        raw = self.conv(features).float()  # float32 outputs even under mixed precision
        return raw[:, :S2_CHANNELS], (raw[:, S2_CHANNELS:] if self.n_var else None)

    def variance_from_raw(self, raw: torch.Tensor) -> torch.Tensor:
        """Softplus, back to [0, 1] units, floored: always > 0."""
        return F.softplus(raw) / self.scale_by**2 + VAR_FLOOR

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"mean": sigmoid in [0, 1], "var": > 0 (only with a variance)}."""
        mean_logits, raw_var = self.logits(features)
        out = {"mean": torch.sigmoid(mean_logits)}
        if raw_var is not None:
            out["var"] = self.variance_from_raw(raw_var)
        return out


def init_output_conv(conv: nn.Conv2d, std: float = 0.01) -> None:
    """Near-zero weights, zero bias: an output starts at sigmoid(0) / softplus(0), not saturated."""
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def init_published(module: nn.Module) -> None:
    """The published UnCRtainTS / SSCR initialisation (``weight_init`` applied to the whole network).

    Convolutions and linear layers: Xavier-normal weights, N(0, 1) biases; batch norms:
    N(0, 1) weights, zero biases; group norms keep PyTorch's ones and zeros. Layers are
    visited in registration order, the order the published ``model.apply`` visits them
    in, so the same seed draws the same weights.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.normal_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.normal_(layer.weight)
            nn.init.zeros_(layer.bias)


def init_weights(module: nn.Module) -> None:
    """He-normal convolutions, unit / zero norms, then each submodule's own ``custom_init()``.

    Linear layers keep PyTorch's default (the L-TAE sets its own); heads and gates
    define ``custom_init`` so they start unsaturated.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, (nn.BatchNorm2d, nn.GroupNorm, nn.BatchNorm1d)) and layer.affine:
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)
    for layer in module.modules():
        if layer is not module and hasattr(layer, "custom_init"):
            layer.custom_init()
