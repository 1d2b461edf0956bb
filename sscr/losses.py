"""Training losses, chosen by name (``params.yaml`` ``loss.name``): l1, l2, ml, structure, GNLL, MGNLL.

Every loss is a :class:`Loss` module, built by :func:`build_loss` with the model's
``scale_by``, and called as ``loss(output, target, mask)`` with the model's output
dict (``mean`` (B, 13, H, W) in [0, 1]; ``var`` (B, 13, H, W) or (B, 1, H, W) in
[0, 1]^2 units for the probabilistic losses; ``sar_mask`` (B, 1, H, W) from
``multisarv2`` for ``ml``; ``structure`` (B, 1, H, W) from ``sscr_lite`` for
``structure``). It returns ``(total, parts)``: the scalar to back-propagate and
the unweighted value of each term as floats for logging (``total = sum of
w_term * part``; ``parts`` also holds ``total``).

The published losses (``l1``, ``l2``, ``ml``, ``GNLL``, ``MGNLL``) are computed as
the seed computes them, on scaled values: mean and target times ``scale_by``,
variance times ``scale_by**2`` (the published networks predict in those units). So
with ``scale_by`` 10, ``l1`` is 10 times the L1 of [0, 1] reflectance.
``structure`` works on [0, 1] values.

``mask`` is an optional per-pixel *weight* ((B, H, W) or (B, 1, H, W), >= 0):
every pixel-wise term becomes a weighted mean. ``None`` weighs all pixels
alike, as the published code trains; ``1 + cloud_mask`` stresses cloudy pixels; a bare
binary cloud mask would train on cloudy pixels only (clear ones get weight 0). Losses run in float32 with autocast off, so AMP training cannot
make the SSIM statistics or the NLL lose precision.

- ``l1``, ``l2``: mean absolute / squared error.
- ``ml`` (the seed's default, for ``multisarv2``): ``0.9 * L1 + 0.001 * (1 - r)``,
  r = the Pearson correlation, per image, between the flattened ``sar_mask`` and
  the flattened band mean of the target, averaged over the batch
  (:func:`pearson_correlation`, the published eps convention). Only the
  structure-mask generator gets the second term's gradient.
- ``structure`` (this project's mixed loss, for ``sscr_lite``): ``w_l1 * L1 + w_grad * G +
  w_struct * S + w_ssim * (1 - SSIM)`` on [0, 1] values: G = L1 between the
  finite-difference gradients of prediction and target (both directions, every
  band); S = L1 between the aux ``structure`` head and :func:`structure_map` of the
  target (only when the output has ``structure``); SSIM from
  :func:`sscr.metrics.ssim_map`, the benchmark's own SSIM.
- ``GNLL``: per-band Gaussian NLL (``torch.nn.functional.gaussian_nll_loss``,
  constant included, scaled variance clamped at ``loss.var_floor``, published 1e-8),
  13 variance channels (the published ``covmode`` ``uni``).
- ``MGNLL``: multivariate Gaussian NLL of each pixel's 13 bands, covariance diagonal
  (``diag``) or isotropic (``iso``, sigma^2 I from a (B, 1, H, W) variance), mean
  over pixels. The published code sums the log-determinant over the whole batch
  (so at batch B its optimum variance is r^2 / B, a bug); here it is per pixel,
  which equals the published value at batch 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sscr.config import LOSS_NAMES, LossConfig
from sscr.metrics import ssim_map

ML_L1_WEIGHT = 0.9
ML_MASK_WEIGHT = 0.001
"""The published weights of ``ml``: 0.9 L1 + 0.001 (1 - Pearson(sar_mask, band-mean target))."""
PEARSON_EPS = 1e-8
MAHALANOBIS_FLOOR = 1e-9
"""The published MGNLL clamps each pixel's squared Mahalanobis distance here."""
STRUCTURE_SCALES: tuple[int, ...] = (1, 2, 4)
STRUCTURE_MIN_PEAK = 1e-3  # reflectance change per pixel below which an image counts as flat
_LOG_2PI = math.log(2 * math.pi)


def variance_mode(cfg: LossConfig) -> str | None:
    """What variance the model must output for this loss: ``"diag"`` (B, 13, H, W), ``"iso"`` (B, 1, H, W) or None.

    ``GNLL`` takes 13 channels (the published ``covmode`` ``uni``); ``MGNLL`` ``loss.covmode``.
    """
    if cfg.name == "GNLL":
        return "diag"
    if cfg.name == "MGNLL":
        return cfg.covmode
    if cfg.name in LOSS_NAMES:
        return None
    raise ValueError(f"unknown loss {cfg.name!r}; expected one of {list(LOSS_NAMES)} (params.yaml loss.name)")


# ---------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------


def _sobel_magnitude(image: Tensor) -> Tensor:
    """Gradient magnitude of (B, 1, H, W) by Sobel filters (replicate padding: no fake border edges)."""
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]],
                           dtype=image.dtype, device=image.device) / 8
    kernels = torch.stack([sobel_x, sobel_x.t()]).unsqueeze(1)
    gradients = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="replicate"), kernels)
    # eps keeps the sqrt differentiable at 0; subtracting sqrt(eps) keeps flat areas exactly 0.
    eps = 1e-12
    return (gradients.pow(2).sum(dim=1, keepdim=True) + eps).sqrt() - math.sqrt(eps)


def structure_map(image: Tensor, scales: tuple[int, ...] = STRUCTURE_SCALES) -> Tensor:
    """Multi-scale edge strength of an image (B, C, H, W) -> (B, 1, H, W) in [0, 1].

    The band-mean image is average-pooled by each factor in ``scales``
    (1, 2, 4: fine texture to field and road boundaries), its Sobel gradient
    magnitude is taken and brought back to H x W (bilinear), and the scales
    are averaged. Each image is then divided by its maximum, or by
    ``STRUCTURE_MIN_PEAK`` if that is larger (a flat image stays near 0
    instead of having its noise stretched to 1). Scales that would leave
    fewer than 2 pixels are skipped. This is the target of the sscr model's
    auxiliary structure head.
    """
    if image.ndim != 4:
        raise ValueError(f"structure_map needs (B, C, H, W), got shape {tuple(image.shape)}")
    height, width = image.shape[-2:]
    gray = image.mean(dim=1, keepdim=True)
    levels = []
    for scale in scales:
        if min(height, width) // scale < 2:
            continue
        pooled = F.avg_pool2d(gray, scale) if scale > 1 else gray
        magnitude = _sobel_magnitude(pooled)
        if scale > 1:
            magnitude = F.interpolate(magnitude, size=(height, width), mode="bilinear", align_corners=False)
        levels.append(magnitude)
    if not levels:
        return torch.zeros_like(gray)
    edges = torch.stack(levels).mean(dim=0)
    peak = edges.amax(dim=(2, 3), keepdim=True).clamp_min(STRUCTURE_MIN_PEAK)
    return (edges / peak).clamp(0.0, 1.0)


def _weighted_mean(values: Tensor, weight: Tensor | None) -> Tensor:
    """Mean of ``values`` (B, C, H, W), weighted per pixel by ``weight`` (B, 1, H, W) if given."""
    if weight is None:
        return values.mean()
    weight = weight.expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def _gradient_l1(pred: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """L1 between horizontal and vertical finite differences of prediction and target, per band."""
    terms = []
    for dim in (-1, -2):
        size = pred.shape[dim]
        if size < 2:
            continue
        diff_pred = pred.diff(dim=dim)
        diff_target = target.diff(dim=dim)
        pair_weight = None
        if weight is not None:  # a difference involves two pixels: average their weights
            pair_weight = 0.5 * (weight.narrow(dim, 1, size - 1) + weight.narrow(dim, 0, size - 1))
        terms.append(_weighted_mean((diff_pred - diff_target).abs(), pair_weight))
    return torch.stack(terms).mean() if terms else pred.new_zeros(())


def _floored(var: Tensor, floor: float) -> Tensor:
    """``var`` clamped below at ``floor`` in value, gradient passed through unchanged.

    Same convention as ``torch.nn.functional.gaussian_nll_loss`` and the published
    MGNLL, so a variance under the floor still receives a gradient.
    """
    var = var.clone()
    with torch.no_grad():
        var.clamp_(min=floor)
    return var


def pearson_correlation(a: Tensor, b: Tensor, eps: float = PEARSON_EPS) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (N, D) -> (N,).

    The cosine of the centred rows with ``eps`` added to the product of their norms,
    the published convention (``torch.nn.functional.cosine_similarity`` clamps each
    norm instead, which differs for near-constant rows).
    """
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def gaussian_nll(mean: Tensor, target: Tensor, var: Tensor, var_floor: float,
                 weight: Tensor | None = None) -> Tensor:
    """Per-band Gaussian NLL, mean over bands and pixels (weighted by ``weight`` if given).

    ``0.5 * (log v + (mean - target)^2 / v + log 2 pi)`` with v = max(var, var_floor);
    ``var`` is (B, C, H, W) or (B, 1, H, W) (broadcast over the bands).
    """
    var = var.expand_as(mean) if var.shape[1] == 1 else var
    nll = F.gaussian_nll_loss(mean, target, var, full=True, eps=var_floor, reduction="none")
    return _weighted_mean(nll, weight)


def multivariate_gaussian_nll(mean: Tensor, target: Tensor, var: Tensor, covmode: str, var_floor: float,
                              weight: Tensor | None = None) -> Tensor:
    """Multivariate Gaussian NLL of the C bands of each pixel, mean over pixels.

    Per pixel, with residual r and covariance Sigma = diag(v) (``diag``, var
    (B, C, H, W)) or v I (``iso``, var (B, 1, H, W)), v = max(var, var_floor)::

        NLL = 0.5 * (C log 2 pi + log det Sigma + max(r^T Sigma^-1 r, 1e-9))

    As published (UnCRtainTS' ``multi_diag_gaussian_nll``), except that the published
    code adds the log-determinant of the whole batch to every pixel: at batch 1 the
    two agree. ``diag`` is C times :func:`gaussian_nll` (whose Mahalanobis term has no floor).
    """
    bands = mean.shape[1]
    expected = bands if covmode == "diag" else 1
    if covmode not in ("diag", "iso"):
        raise ValueError(f"unknown MGNLL covariance mode {covmode!r}; expected 'diag' or 'iso' (loss.covmode)")
    if var.shape[1] != expected:
        raise ValueError(f"MGNLL with covmode {covmode!r} needs a variance of shape (B, {expected}, H, W), "
                         f"got {tuple(var.shape)}; build the model with variance_mode(cfg) = {covmode!r}")
    var = _floored(var.expand_as(mean), var_floor)
    log_det = var.log().sum(dim=1, keepdim=True)
    mahalanobis = ((mean - target).pow(2) / var).sum(dim=1, keepdim=True).nan_to_num().clamp(min=MAHALANOBIS_FLOOR)
    nll = 0.5 * (bands * _LOG_2PI + log_det + mahalanobis)
    return _weighted_mean(nll, weight)


# ---------------------------------------------------------------------------
# Loss modules
# ---------------------------------------------------------------------------


class Loss(nn.Module):
    """Base of every training loss: ``forward(output, target, mask=None) -> (total, parts)``.

    ``scale_by`` is the model's: losses with ``scaled = True`` (the published ones)
    see mean and target times ``scale_by`` and variance times ``scale_by**2``.
    """

    name: ClassVar[str] = "loss"
    scaled: ClassVar[bool] = True
    requires: ClassVar[tuple[str, ...]] = ("mean",)
    """Output keys the loss reads."""

    def __init__(self, cfg: LossConfig, scale_by: float) -> None:
        super().__init__()
        if not scale_by > 0:
            raise ValueError(f"loss {cfg.name}: scale_by must be > 0 (model.scale_by), got {scale_by!r}")
        self.cfg = cfg
        self.scale_by = float(scale_by) if self.scaled else 1.0

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        """The loss's terms as ``{name: (weight, value)}`` on (scaled) values; subclasses implement this."""
        raise NotImplementedError

    def check_outputs(self, keys: Iterable[str], model_name: str = "the model") -> None:
        """ValueError naming the fix unless a model with output ``keys`` gives what this loss reads."""
        missing = [key for key in self.requires if key not in set(keys)]
        if missing:
            raise ValueError(self._missing_message(missing[0], model_name))

    def _missing_message(self, key: str, model_name: str) -> str:
        return f"loss {self.name} needs the model output {key!r}, which {model_name} does not give"

    def forward(self, output: Mapping[str, Tensor], target: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Scalar total and the unweighted terms (plus ``total``) as floats."""
        if "mean" not in output:
            raise KeyError(f"loss {self.name} needs the model output's 'mean' (B, C, H, W); got keys {sorted(output)}")
        self.check_outputs(output, f"a model with outputs {sorted(output)}")
        if output["mean"].shape != target.shape:
            raise ValueError(f"prediction {tuple(output['mean'].shape)} and target {tuple(target.shape)} differ")
        device_type = target.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            output = {key: value.float() for key, value in output.items() if isinstance(value, Tensor)}
            scale = self.scale_by
            if scale != 1.0:  # the published convention: losses on values times scale_by
                output["mean"] = output["mean"] * scale
                if "var" in output:
                    output["var"] = output["var"] * scale**2
            weight = None if mask is None else _pixel_weight(mask, target)
            terms = self.terms(output, target.float() * scale, weight)
            total = sum(w * value for w, value in terms.values())
        parts = {key: float(value.detach()) for key, (_, value) in terms.items()}
        parts["total"] = float(total.detach())
        return total, parts


def _pixel_weight(mask: Tensor, target: Tensor) -> Tensor:
    """Mask (B, H, W) or (B, 1, H, W) -> float32 weights (B, 1, H, W)."""
    weight = mask.float()
    if weight.ndim == 3:
        weight = weight.unsqueeze(1)
    batch, _, height, width = target.shape
    if weight.ndim != 4 or weight.shape[1] != 1 or weight.shape[-2:] != (height, width) \
            or weight.shape[0] not in (1, batch):
        raise ValueError(f"loss mask of shape {tuple(mask.shape)} does not fit target {tuple(target.shape)}: "
                         "expected (B, H, W) or (B, 1, H, W)")
    return weight.expand(batch, 1, height, width)


class L1(Loss):
    """Mean absolute error (on scaled values)."""

    name = "l1"

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        return {"l1": (1.0, _weighted_mean((output["mean"] - target).abs(), weight))}


class L2(Loss):
    """Mean squared error (on scaled values)."""

    name = "l2"

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        return {"l2": (1.0, _weighted_mean((output["mean"] - target).pow(2), weight))}


class StructureMaskLoss(Loss):
    """``ml``, the seed's loss: 0.9 L1 + 0.001 (1 - Pearson(sar_mask, band-mean target)), on scaled values.

    ``weight`` (the ``mask`` argument) weighs the L1 term only; the correlation is per image.
    """

    name = "ml"
    requires = ("mean", "sar_mask")

    def _missing_message(self, key: str, model_name: str) -> str:
        return (f"loss ml needs the structure mask {key!r} that only multisarv2 (alias sscr) outputs, and "
                f"{model_name} has none: set model.name to multisarv2, or loss.name to structure (sscr_lite) "
                "or l1")

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        sar_mask = output["sar_mask"]
        batch, _, height, width = target.shape
        if sar_mask.shape != (batch, 1, height, width):
            raise ValueError(f"sar_mask {tuple(sar_mask.shape)} must be (B, 1, H, W) = {(batch, 1, height, width)}")
        correlation = pearson_correlation(sar_mask.mean(dim=1).flatten(1), target.mean(dim=1).flatten(1))
        return {
            "l1": (ML_L1_WEIGHT, _weighted_mean((output["mean"] - target).abs(), weight)),
            "one_minus_pearson": (ML_MASK_WEIGHT, 1 - correlation.mean()),
        }


class MixedStructureLoss(Loss):
    """``structure``: L1 + gradient agreement + aux structure supervision + (1 - SSIM), weighted by ``cfg``.

    On [0, 1] values (not scaled). Terms with weight 0 are skipped; ``struct`` only
    when the output has ``structure`` (``sscr_lite``).
    """

    name = "structure"
    scaled = False

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        cfg, pred = self.cfg, output["mean"]
        terms: dict[str, tuple[float, Tensor]] = {}
        if cfg.w_l1 > 0:
            terms["l1"] = (cfg.w_l1, _weighted_mean((pred - target).abs(), weight))
        if cfg.w_grad > 0:
            terms["grad"] = (cfg.w_grad, _gradient_l1(pred, target, weight))
        if cfg.w_struct > 0 and "structure" in output:
            structure = output["structure"]
            reference = structure_map(target)
            if structure.shape != reference.shape:
                raise ValueError(f"structure head output {tuple(structure.shape)} must be (B, 1, H, W) = "
                                 f"{tuple(reference.shape)}")
            terms["struct"] = (cfg.w_struct, _weighted_mean((structure - reference).abs(), weight))
        if cfg.w_ssim > 0:
            terms["one_minus_ssim"] = (cfg.w_ssim, 1 - _weighted_mean(ssim_map(pred, target), weight))
        if not terms:
            terms["l1"] = (0.0, _weighted_mean((pred - target).abs(), weight))
        return terms


class _VarianceLoss(Loss):
    """Shared access to ``output["var"]`` with a message that says what to fix."""

    requires = ("mean", "var")

    def _missing_message(self, key: str, model_name: str) -> str:
        return (f"loss {self.name} needs the model output 'var', which {model_name} does not give; build the "
                f"model with variance mode {variance_mode(self.cfg)!r} (sscr.losses.variance_mode)")

    def variance(self, output: Mapping[str, Tensor], target: Tensor) -> Tensor:
        var = output["var"]
        if var.ndim != 4 or var.shape[0] != target.shape[0] or var.shape[-2:] != target.shape[-2:] \
                or var.shape[1] not in (1, target.shape[1]):
            raise ValueError(f"variance {tuple(var.shape)} does not fit target {tuple(target.shape)}: "
                             f"expected (B, {target.shape[1]}, H, W) or (B, 1, H, W)")
        return var


class GNLL(_VarianceLoss):
    """Per-band Gaussian negative log-likelihood (see :func:`gaussian_nll`), on scaled values."""

    name = "GNLL"

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        var = self.variance(output, target)
        return {"gnll": (1.0, gaussian_nll(output["mean"], target, var, self.cfg.var_floor, weight))}


class MGNLL(_VarianceLoss):
    """Per-pixel multivariate Gaussian NLL over the bands, ``iso`` or ``diag`` (see :func:`multivariate_gaussian_nll`)."""

    name = "MGNLL"

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        var = self.variance(output, target)
        value = multivariate_gaussian_nll(output["mean"], target, var, self.cfg.covmode, self.cfg.var_floor, weight)
        return {"mgnll": (1.0, value)}


_LOSSES: dict[str, type[Loss]] = {
    "l1": L1, "l2": L2, "ml": StructureMaskLoss, "structure": MixedStructureLoss, "GNLL": GNLL, "MGNLL": MGNLL,
}


def build_loss(cfg: LossConfig, scale_by: float) -> Loss:
    """The loss named by ``cfg.name``, configured by ``cfg``, for a model with ``scale_by`` (``model.scale_by``)."""
    if cfg.name not in _LOSSES:
        raise ValueError(f"unknown loss {cfg.name!r}; expected one of {list(LOSS_NAMES)} (params.yaml loss.name)")
    return _LOSSES[cfg.name](cfg, scale_by)
