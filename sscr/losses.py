"""Training losses, chosen by name (``params.yaml`` ``loss.name``): l1, l2, ml, GNLL, MGNLL.

Every loss is a :class:`Loss` module called as ``loss(output, target, mask)``
with the model's output dict (``mean`` (B, 13, H, W) in [0, 1]; ``var``
(B, 13, H, W) or (B, 1, H, W) for the probabilistic losses; ``structure``
(B, 1, H, W) from the sscr model's auxiliary head) and returns
``(total, parts)``: the scalar to back-propagate and the unweighted value of
each term as floats for logging (``total = sum of w_term * part``; ``parts``
also holds ``total``).

``mask`` is an optional per-pixel *weight* ((B, H, W) or (B, 1, H, W), >= 0):
every pixel-wise term becomes a weighted mean. ``None`` weighs all pixels
alike, as UnCRtainTS trains; ``1 + cloud_mask`` stresses cloudy pixels; a bare
binary cloud mask would train on cloudy pixels only (clear ones get weight 0). Losses run in float32 with autocast off, so AMP training cannot
make the SSIM statistics or the NLL lose precision.

- ``l1``, ``l2``: mean absolute / squared error.
- ``ml``: the structure-aware mixed loss, ``w_l1 * L1 + w_grad * G +
  w_struct * S + w_ssim * (1 - SSIM)``: G = L1 between the finite-difference
  gradients of prediction and target (both directions, every band); S = L1
  between the aux ``structure`` head and :func:`structure_map` of the target
  (only when the output has ``structure``); SSIM from
  :func:`sscr.metrics.ssim_map`, the benchmark's own SSIM.
- ``GNLL``: per-band Gaussian NLL (``torch.nn.functional.gaussian_nll_loss``,
  constant included as in UnCRtainTS, variance floored at ``var_floor``).
- ``MGNLL``: multivariate Gaussian NLL over the 13 bands with diagonal
  (``diag``) or isotropic (``iso``, sigma^2 I from a (B, 1, H, W) variance)
  covariance, reported per band (the joint NLL of a pixel divided by 13), so
  ``diag`` equals GNLL exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sscr.config import LossConfig
from sscr.metrics import ssim_map

LOSS_NAMES: tuple[str, ...] = ("l1", "l2", "ml", "GNLL", "MGNLL")
STRUCTURE_SCALES: tuple[int, ...] = (1, 2, 4)
STRUCTURE_MIN_PEAK = 1e-3  # reflectance change per pixel below which an image counts as flat
_LOG_2PI = math.log(2 * math.pi)


def variance_mode(cfg: LossConfig) -> str | None:
    """What variance the model must output for this loss: ``"diag"`` (B, 13, H, W), ``"iso"`` (B, 1, H, W) or None."""
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

    Same convention as ``torch.nn.functional.gaussian_nll_loss``, so a variance
    under the floor still receives a gradient (it cannot get stuck there).
    """
    var = var.clone()
    with torch.no_grad():
        var.clamp_(min=floor)
    return var


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
    """Multivariate Gaussian NLL across the C bands of each pixel, divided by C, mean over pixels.

    Per pixel, with residual r and covariance Sigma = diag(v) (``diag``, var
    (B, C, H, W)) or v I (``iso``, var (B, 1, H, W)), v = max(var, var_floor)::

        NLL = 0.5 * (log det Sigma + r^T Sigma^-1 r + C log 2 pi)

    Dividing by C keeps the scale of GNLL (``diag`` gives exactly GNLL).
    """
    bands = mean.shape[1]
    expected = bands if covmode == "diag" else 1
    if covmode not in ("diag", "iso"):
        raise ValueError(f"unknown MGNLL covariance mode {covmode!r}; expected 'diag' or 'iso' (loss.covmode)")
    if var.shape[1] != expected:
        raise ValueError(f"MGNLL with covmode {covmode!r} needs a variance of shape (B, {expected}, H, W), "
                         f"got {tuple(var.shape)}; build the model with variance_mode(cfg) = {covmode!r}")
    var = _floored(var, var_floor)
    residual_sq = (mean - target).pow(2)
    if covmode == "diag":
        log_det = var.log().sum(dim=1, keepdim=True)
        mahalanobis = (residual_sq / var).sum(dim=1, keepdim=True)
    else:
        log_det = bands * var.log()
        mahalanobis = residual_sq.sum(dim=1, keepdim=True) / var
    nll = 0.5 * (log_det + mahalanobis + bands * _LOG_2PI) / bands
    return _weighted_mean(nll, weight)


# ---------------------------------------------------------------------------
# Loss modules
# ---------------------------------------------------------------------------


class Loss(nn.Module):
    """Base of every training loss: ``forward(output, target, mask=None) -> (total, parts)``."""

    name = "loss"

    def __init__(self, cfg: LossConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        """The loss's terms as ``{name: (weight, value)}``; subclasses implement this."""
        raise NotImplementedError

    def forward(self, output: Mapping[str, Tensor], target: Tensor,
                mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        """Scalar total and the unweighted terms (plus ``total``) as floats."""
        if "mean" not in output:
            raise KeyError(f"loss {self.name} needs the model output's 'mean' (B, C, H, W); got keys {sorted(output)}")
        if output["mean"].shape != target.shape:
            raise ValueError(f"prediction {tuple(output['mean'].shape)} and target {tuple(target.shape)} differ")
        device_type = target.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            output = {key: value.float() for key, value in output.items() if isinstance(value, Tensor)}
            weight = None if mask is None else _pixel_weight(mask, target)
            terms = self.terms(output, target.float(), weight)
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
    """Mean absolute error."""

    name = "l1"

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        return {"l1": (1.0, _weighted_mean((output["mean"] - target).abs(), weight))}


class L2(Loss):
    """Mean squared error."""

    name = "l2"

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        return {"l2": (1.0, _weighted_mean((output["mean"] - target).pow(2), weight))}


class MixedStructureLoss(Loss):
    """``ml``: L1 + gradient agreement + aux structure supervision + (1 - SSIM), weighted by ``cfg``.

    Terms with weight 0 are skipped; ``struct`` only when the output has ``structure``.
    """

    name = "ml"

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

    def variance(self, output: Mapping[str, Tensor], target: Tensor) -> Tensor:
        if "var" not in output:
            raise KeyError(f"loss {self.name} needs the model output's 'var'; build the model with "
                           f"variance mode {variance_mode(self.cfg)!r} (sscr.losses.variance_mode)")
        var = output["var"]
        if var.ndim != 4 or var.shape[0] != target.shape[0] or var.shape[-2:] != target.shape[-2:] \
                or var.shape[1] not in (1, target.shape[1]):
            raise ValueError(f"variance {tuple(var.shape)} does not fit target {tuple(target.shape)}: "
                             f"expected (B, {target.shape[1]}, H, W) or (B, 1, H, W)")
        return var


class GNLL(_VarianceLoss):
    """Per-band Gaussian negative log-likelihood (see :func:`gaussian_nll`)."""

    name = "GNLL"

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        var = self.variance(output, target)
        return {"gnll": (1.0, gaussian_nll(output["mean"], target, var, self.cfg.var_floor, weight))}


class MGNLL(_VarianceLoss):
    """Multivariate Gaussian NLL over the bands, ``iso`` or ``diag`` (see :func:`multivariate_gaussian_nll`)."""

    name = "MGNLL"

    def terms(self, output: Mapping[str, Tensor], target: Tensor,
              weight: Tensor | None) -> dict[str, tuple[float, Tensor]]:
        var = self.variance(output, target)
        value = multivariate_gaussian_nll(output["mean"], target, var, self.cfg.covmode, self.cfg.var_floor, weight)
        return {"mgnll": (1.0, value)}


_LOSSES: dict[str, type[Loss]] = {"l1": L1, "l2": L2, "ml": MixedStructureLoss, "GNLL": GNLL, "MGNLL": MGNLL}


def build_loss(cfg: LossConfig) -> Loss:
    """The loss named by ``cfg.name``, configured by ``cfg``."""
    if cfg.name not in _LOSSES:
        raise ValueError(f"unknown loss {cfg.name!r}; expected one of {list(LOSS_NAMES)} (params.yaml loss.name)")
    return _LOSSES[cfg.name](cfg)
