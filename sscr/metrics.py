"""Image metrics exactly as the SEN12MS-CR cloud-removal literature computes them.

Written by hand (no metrics library) because the numbers must match the
benchmark's definitions (REFERENCE.md section 3, UnCRtainTS ``img_metrics``):
each image ``(C, H, W)`` on [0, 1] reflectance, all 13 bands, then the mean
over the images of a split.

- ``RMSE`` = sqrt(mean((t - p)^2)) over bands and pixels; ``PSNR`` =
  20 log10(1 / RMSE) (data range 1; identical images give ``+inf``).
- ``MAE`` = mean |t - p|.
- ``SAM`` = mean over pixels of arccos(clamp(<t, p> / (|t| |p|), -1, 1)) in
  degrees, the vectors running across the bands. Zero-norm pixels (undefined
  in the benchmark code, where they make the image's SAM NaN): both vectors
  zero -> 0 degrees (identical), exactly one zero -> 90 degrees.
- ``SSIM``: Gaussian window 11 x 11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2,
  per band by convolution with zero padding of 5 px ("same" size, borders
  included), then the mean over bands and pixels (see :func:`ssim_map`, which
  the training loss reuses).

Everything is computed in float64. Masks select pixels (1 = cloud): every
metric is then the mean over the selected pixels only; see
:func:`image_metrics` and :func:`cloud_metrics`. :class:`MetricAccumulator`
averages per-image results over a split, overall and per group (season,
coverage bin), and computes the UnCRtainTS calibration errors UCE / AUCE for
models that predict a variance (:func:`uncertainty_calibration`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

METRIC_NAMES: tuple[str, ...] = ("RMSE", "MAE", "PSNR", "SAM", "SSIM")
REGIONS: tuple[str, ...] = ("all", "cloudy", "clear")
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
UCE_BINS = 20  # UnCRtainTS: percent=5 -> 100 // 5 bins
MASK_THRESHOLD = 0.5  # soft masks (e.g. s2cloudless_map) count as cloud where >= this
RING_WIDTH = 5  # px (50 m): the ring around clouds where a soft mask edge can leave a rim
SHADOW_BANDS = (1, 2, 3, 7, 11)  # B2 B3 B4 B8 B11: a cloud shadow darkens visible, NIR and SWIR alike
SHADOW_DARKENING = 0.7  # shadow: cloudy / target below 70 % of the image's usual ratio ...
SHADOW_REFERENCE_QUANTILE = 0.75  # ... taken as this quantile over its clear pixels (robust to the shadows)
SHADOW_MIN_REFLECTANCE = 0.06  # targets darker than this (water) are never shadow: their ratio is noise


# ---------------------------------------------------------------------------
# Per-pixel maps
# ---------------------------------------------------------------------------


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, *,
                    dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
    """The normalised 1-D Gaussian ``exp(-(i - size // 2)^2 / (2 sigma^2))``, ``i = 0..size-1``.

    The SSIM window is its outer product with itself (separable), as in the
    ``pytorch_ssim`` code the benchmark uses.
    """
    offsets = torch.arange(size, dtype=torch.float64, device=device) - size // 2
    window = torch.exp(-(offsets**2) / (2 * sigma**2))
    return (window / window.sum()).to(dtype)


def _band_matrix(size: int, window: Tensor) -> Tensor:
    """(size, size) matrix M with M[i, j] = window[j - i + r] for |j - i| <= r, else 0 (r = radius).

    ``M @ x`` filters the columns of ``x`` with ``window`` under zero padding:
    taps that fall outside the image are simply absent.
    """
    radius = window.numel() // 2
    index = torch.arange(size, device=window.device)
    offset = index[None, :] - index[:, None]
    taps = window[(offset + radius).clamp(0, window.numel() - 1)]
    return torch.where(offset.abs() <= radius, taps, torch.zeros((), dtype=window.dtype, device=window.device))


_MATMUL_MAX_SIDE = 1024  # beyond this the dense band matrix costs more than a convolution


def _gaussian_blur(images: Tensor, window: Tensor) -> Tensor:
    """Per-channel separable Gaussian filter of (B, C, H, W) with zero padding, 'same' output size.

    Equal to a 2-D convolution with the outer-product window and zero padding
    of ``radius`` px (outside the image every row and column is zero, so the
    separable passes see the same zeros). For patch sizes it runs as two
    matrix products with band matrices, several times faster on CPU than a
    depthwise convolution (above all in float64).
    """
    height, width = images.shape[-2:]
    if max(height, width) <= _MATMUL_MAX_SIDE:
        return _band_matrix(height, window) @ images @ _band_matrix(width, window).T
    channels, pad = images.shape[1], window.numel() // 2
    rows = window.view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    cols = window.view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    blurred = F.conv2d(images, rows, padding=(pad, 0), groups=channels)
    return F.conv2d(blurred, cols, padding=(0, pad), groups=channels)


def ssim_map(x: Tensor, y: Tensor, window_size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA,
             c1: float = SSIM_C1, c2: float = SSIM_C2) -> Tensor:
    """Per-band, per-pixel SSIM of ``x`` and ``y`` (B, C, H, W) -> (B, C, H, W); differentiable.

    Local statistics come from a ``window_size`` Gaussian window (``sigma``)
    applied by convolution with zero padding of ``window_size // 2`` pixels,
    so the map has the input's size and border pixels are included (the
    benchmark convention; it differs from scikit-image only within 5 px of
    the border). ``c1``/``c2`` assume a data range of 1. Computed in the
    inputs' dtype; the mean of the map over bands and pixels is the SSIM.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"ssim_map needs two (B, C, H, W) tensors of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    window = gaussian_window(window_size, sigma, dtype=x.dtype, device=x.device)
    channels = x.shape[1]
    # One convolution call for the five local moments.
    moments = _gaussian_blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), window)
    mu_x, mu_y, xx, yy, xy = moments.split(channels, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov_xy = xx - mu_xx, yy - mu_yy, xy - mu_xy
    return ((2 * mu_xy + c1) * (2 * cov_xy + c2)) / ((mu_xx + mu_yy + c1) * (var_x + var_y + c2))


def sam_map(target: Tensor, pred: Tensor) -> Tensor:
    """Spectral angle in degrees between ``target`` and ``pred`` (B, C, H, W) -> (B, H, W).

    Angle = arccos(clamp(<t, p> / (|t| |p|), -1, 1)) across the C bands.
    Zero-norm pixels: both zero -> 0 degrees, exactly one zero -> 90 degrees
    (the benchmark code yields NaN there).
    """
    dot = (target * pred).sum(dim=1)
    norms = target.norm(dim=1) * pred.norm(dim=1)
    both_zero = (target == 0).all(dim=1) & (pred == 0).all(dim=1)
    cosine = torch.where(norms > 0, dot / norms.clamp_min(torch.finfo(norms.dtype).tiny),
                         both_zero.to(dot.dtype))
    return torch.rad2deg(torch.arccos(cosine.clamp(-1.0, 1.0)))


def metric_maps(target: Tensor, pred: Tensor, var: Tensor | None = None) -> dict[str, Tensor]:
    """Per-pixel maps (B, H, W) behind every metric, in float64, without gradients.

    Keys: ``SE`` (squared error, mean over bands), ``AE`` (absolute error,
    mean over bands), ``SAM`` (degrees), ``SSIM`` (mean over bands) and, with
    ``var`` ((B, C, H, W) per band or (B, 1, H, W) isotropic; 3-D for one image), ``VAR`` (predicted
    variance, mean over bands). The mean of a map over a pixel set is the
    metric on that set (RMSE = sqrt of the SE mean); useful for plots too.
    """
    target, pred = _as_batch(target, pred)
    with torch.no_grad():
        target, pred = target.detach().double(), pred.detach().double()
        error = target - pred
        maps = {
            "SE": (error**2).mean(dim=1),
            "AE": error.abs().mean(dim=1),
            "SAM": sam_map(target, pred),
            "SSIM": ssim_map(target, pred).mean(dim=1),
        }
        if var is not None:
            var = torch.as_tensor(var).detach().double().to(target.device)
            var = var.unsqueeze(0) if var.ndim == 3 else var
            if var.ndim != 4 or var.shape[0] != target.shape[0] or var.shape[-2:] != target.shape[-2:] \
                    or var.shape[1] not in (1, target.shape[1]):
                raise ValueError(f"variance of shape {tuple(var.shape)} does not fit images of shape "
                                 f"{tuple(target.shape)}: expected (B, {target.shape[1]}, H, W) or (B, 1, H, W)")
            maps["VAR"] = var.mean(dim=1)
    return maps


# ---------------------------------------------------------------------------
# Image metrics
# ---------------------------------------------------------------------------


def _as_batch(target: Any, pred: Any) -> tuple[Tensor, Tensor]:
    target, pred = torch.as_tensor(target), torch.as_tensor(pred)
    if target.shape != pred.shape:
        raise ValueError(f"target {tuple(target.shape)} and prediction {tuple(pred.shape)} differ in shape")
    if target.ndim == 3:
        target, pred = target.unsqueeze(0), pred.unsqueeze(0)
    if target.ndim != 4:
        raise ValueError(f"images must be (C, H, W) or (B, C, H, W), got shape {tuple(target.shape)}")
    return target, pred.to(target.device)


def _cloud_pixels(mask: Any, batch: int, height: int, width: int, device: torch.device) -> Tensor:
    """Mask (H, W), (B, H, W), (1|B, 1, H, W) -> bool (B, H, W), True = cloud (value >= 0.5)."""
    mask = torch.as_tensor(mask, device=device)
    if mask.ndim == 4:
        if mask.shape[1] != 1:
            raise ValueError(f"a 4-D mask must be (B, 1, H, W), got {tuple(mask.shape)}")
        mask = mask[:, 0]
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.shape[-2:] != (height, width) or mask.shape[0] not in (1, batch):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit {batch} image(s) of "
                         f"{height} x {width}: expected (H, W), (B, H, W) or (B, 1, H, W)")
    return (mask.double() >= MASK_THRESHOLD).expand(batch, height, width)


def _reduce_maps(maps: Mapping[str, Tensor], pixels: Tensor | None) -> list[dict[str, float]]:
    """Per-image metrics from per-pixel maps over ``pixels`` (bool (B, H, W); None = all)."""
    if pixels is None:
        means = {key: value.mean(dim=(1, 2)) for key, value in maps.items()}
    else:
        weight = pixels.double()
        count = weight.sum(dim=(1, 2))  # 0 -> 0/0 = NaN: an empty region has no metric
        means = {key: (value * weight).sum(dim=(1, 2)) / count for key, value in maps.items()}
    rmse = means["SE"].sqrt()
    columns = {
        "RMSE": rmse,
        "MAE": means["AE"],
        "PSNR": 20 * torch.log10(1 / rmse),  # RMSE 0 -> +inf, NaN stays NaN
        "SAM": means["SAM"],
        "SSIM": means["SSIM"],
    }
    if "VAR" in means:
        columns["VAR"] = means["VAR"]
    table = {key: value.cpu().tolist() for key, value in columns.items()}
    return [{key: table[key][i] for key in table} for i in range(rmse.shape[0])]


def _package(rows: list[dict[str, float]], single: bool, reduce: bool) -> dict[str, Any]:
    if single:
        return rows[0]
    if reduce:
        accumulator = MetricAccumulator()
        for row in rows:
            accumulator.add(row)
        return accumulator.mean()
    return {key: [row[key] for row in rows] for key in rows[0]}


def image_metrics(target: Tensor, pred: Tensor, mask: Tensor | None = None, reduce: bool = False,
                  var: Tensor | None = None) -> dict[str, Any]:
    """RMSE, MAE, PSNR, SAM and SSIM of ``pred`` against ``target`` on [0, 1] reflectance.

    ``target``/``pred``: one image (C, H, W) -> a dict of floats; a batch
    (B, C, H, W) -> a dict of per-image lists (``reduce=False``) or of means
    over the images (``reduce=True``, with :meth:`MetricAccumulator.mean`'s
    rules: NaN skipped, +inf PSNR left out of the mean).

    ``mask`` ((H, W), (B, H, W) or (B, 1, H, W), value >= 0.5 = selected)
    restricts every metric to the selected pixels: RMSE/MAE/PSNR over those
    pixels and all bands, SAM over those pixels, SSIM = mean of the full
    image's SSIM map over those pixels. An image with no selected pixel gets
    NaN for every metric (so an accumulator skips it).

    With ``var`` (predicted variance, (B, C, H, W) or (B, 1, H, W)) the key
    ``VAR`` (mean predicted variance over the same pixels and bands) is added;
    with ``RMSE**2`` it is the per-image input of :func:`uncertainty_calibration`.
    """
    single = torch.as_tensor(target).ndim == 3
    target, pred = _as_batch(target, pred)
    maps = metric_maps(target, pred, var)
    batch, _, height, width = target.shape
    pixels = None if mask is None else _cloud_pixels(mask, batch, height, width, target.device)
    return _package(_reduce_maps(maps, pixels), single, reduce)


def cloud_metrics(target: Tensor, pred: Tensor, mask: Tensor, reduce: bool = False,
                  var: Tensor | None = None, cloudy: Tensor | None = None) -> dict[str, dict[str, Any]]:
    """Metrics overall, inside clouds and on clear pixels, from one pass over the images.

    Returns ``{"all": ..., "cloudy": ..., "clear": ...}``, each shaped like
    :func:`image_metrics`'s result (floats for one image, lists or means for
    a batch): ``all`` ignores the mask, ``cloudy`` is mask >= 0.5 (1 = cloud),
    ``clear`` the rest. A region an image does not have is NaN for that
    image. :func:`flatten_metrics` turns the result into flat names
    (``PSNR``, ``cloudy/PSNR``, ``clear/PSNR``) for logging.

    With ``cloudy`` (the cloudy input, shaped like ``target``) two more regions, where clouds
    leave traces outside the mask: ``shadow`` (:func:`shadow_region`) and ``ring`` (the
    :data:`RING_WIDTH` px around the clouds, :func:`cloud_ring`). They depend on the cloudy
    input, the target and the mask only, so the cloudy input scored as a prediction has the
    same regions as the model.
    """
    single = torch.as_tensor(target).ndim == 3
    target, pred = _as_batch(target, pred)
    maps = metric_maps(target, pred, var)  # the SSIM map is computed once for the three regions
    batch, _, height, width = target.shape
    clouds = _cloud_pixels(mask, batch, height, width, target.device)
    regions = {"all": None, "cloudy": clouds, "clear": ~clouds}
    if cloudy is not None:
        cloudy = torch.as_tensor(cloudy).to(target.device).reshape(target.shape)  # one image: (C, H, W) -> (1, ...)
        regions["shadow"] = shadow_region(cloudy, target, clouds)
        regions["ring"] = cloud_ring(clouds)
    return {name: _package(_reduce_maps(maps, pixels), single, reduce) for name, pixels in regions.items()}


# ---------------------------------------------------------------------------
# Where clouds leave their traces outside the cloud mask: shadows and edges
# ---------------------------------------------------------------------------


def cloud_ring(mask: Any, width: int = RING_WIDTH) -> Tensor:
    """The ring around the clouds: bool (B, H, W), not cloud but within ``width`` px of a cloud pixel.

    ``mask`` as in :func:`cloud_metrics` (cloud where >= 0.5). Distance is the chessboard
    distance (a square dilation), pixels outside the image count as clear.
    """
    mask = torch.as_tensor(mask)
    if mask.ndim == 4:
        mask = mask[:, 0]
    cloudy = (mask.double() >= MASK_THRESHOLD).reshape(-1, *mask.shape[-2:])
    near = F.max_pool2d(cloudy[:, None].double(), 2 * width + 1, stride=1, padding=width)[:, 0] > 0
    return near & ~cloudy


def shadow_region(cloudy: Tensor, target: Tensor, mask: Any) -> Tensor:
    """Cloud shadows, from the cloudy image and its clear target: bool (B, H, W).

    A pixel is shadow when the cloudy image is markedly darker there than the target: the ratio
    of their means over B2, B3, B4, B8 and B11 (visible, NIR, SWIR: a shadow darkens them all) is
    below :data:`SHADOW_DARKENING` times the same ratio's :data:`SHADOW_REFERENCE_QUANTILE`
    quantile over the image's clear pixels (mask < 0.5; the two dates differ in illumination and
    phenology everywhere, a shadow differs from that). A cloud brightens, so cloud pixels are
    never shadow, and a shadow the mask covers (``s2cloudless_shadow_map``) is still one: the
    region does not depend on what the mask detected. Dark targets (mean below
    :data:`SHADOW_MIN_REFLECTANCE`: water, where the ratio is noise) are left out, and a 3 x 3
    opening removes single pixels. Computable on any pair (real or synthetic); the generator's
    own shadow truth is not needed.
    """
    target, cloudy = _as_batch(target, cloudy)
    target, cloudy = target.double(), cloudy.double()
    batch, _, height, width = target.shape
    clouds = _cloud_pixels(mask, batch, height, width, target.device)
    bands = list(SHADOW_BANDS)
    target_mean = target[:, bands].mean(dim=1)
    ratio = cloudy[:, bands].mean(dim=1) / target_mean.clamp_min(1e-3)
    valid = target_mean >= SHADOW_MIN_REFLECTANCE
    clear = valid & ~clouds
    shadow = torch.zeros_like(valid)
    for i in range(batch):
        if clear[i].sum() < 16:
            continue
        reference = torch.quantile(ratio[i][clear[i]], SHADOW_REFERENCE_QUANTILE)
        shadow[i] = valid[i] & (ratio[i] < SHADOW_DARKENING * reference)
    # opening: erode then dilate with a 3 x 3 square (max-pooling pads with -inf: the border erodes nothing)
    eroded = -F.max_pool2d(-shadow[:, None].double(), 3, stride=1, padding=1)
    return (F.max_pool2d(eroded, 3, stride=1, padding=1)[:, 0] > 0) & shadow


def flatten_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten ``{"all": {...}, "cloudy": {...}}`` to ``{"PSNR": ..., "cloudy/PSNR": ...}``.

    Region ``all`` keeps the bare metric names (the headline numbers); other
    regions are prefixed ``<region>/``. Flat input is returned as a copy.
    """
    flat: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            prefix = "" if key == "all" else f"{key}/"
            flat.update({f"{prefix}{name}": inner for name, inner in flatten_metrics(value).items()})
        else:
            flat[key] = value
    return flat


# ---------------------------------------------------------------------------
# Calibration of predicted variance (UnCRtainTS)
# ---------------------------------------------------------------------------


def calibration_bins(variance: Sequence[float] | np.ndarray, squared_error: Sequence[float] | np.ndarray,
                     n_bins: int = UCE_BINS) -> dict[str, np.ndarray]:
    """Bin samples by predicted variance as UnCRtainTS does; per bin RMV, RMSE and count.

    Bin edges: ``linspace(min(var), max(var), n_bins)[1:]`` with
    ``np.digitize`` semantics (UnCRtainTS ``binarize``): bin 0 is
    [min, min + w), then equal-width bins of width w = (max - min) / (n_bins - 1),
    and the last bin holds only the samples at the maximum. Per bin b:
    ``RMV_b = sqrt(mean(var))`` (root mean variance) and
    ``RMSE_b = sqrt(mean(squared_error))``. Empty bins are NaN with count 0.
    Non-finite pairs are dropped.
    """
    variance = np.asarray(variance, dtype=np.float64).ravel()
    squared_error = np.asarray(squared_error, dtype=np.float64).ravel()
    if variance.shape != squared_error.shape:
        raise ValueError(f"{variance.size} variances but {squared_error.size} squared errors")
    if n_bins < 2:
        raise ValueError(f"n_bins must be at least 2, got {n_bins}")
    keep = np.isfinite(variance) & np.isfinite(squared_error)
    variance, squared_error = variance[keep], squared_error[keep]
    rmv = np.full(n_bins, np.nan)
    rmse = np.full(n_bins, np.nan)
    count = np.zeros(n_bins, dtype=np.int64)
    if variance.size == 0:
        return {"rmv": rmv, "rmse": rmse, "count": count}
    edges = np.linspace(variance.min(), variance.max(), num=n_bins)[1:]
    index = np.digitize(variance, bins=edges)
    for b in range(n_bins):
        members = index == b
        count[b] = members.sum()
        if count[b]:
            rmv[b] = math.sqrt(variance[members].mean())
            rmse[b] = math.sqrt(squared_error[members].mean())
    return {"rmv": rmv, "rmse": rmse, "count": count}


def uncertainty_calibration(variance: Sequence[float] | np.ndarray, squared_error: Sequence[float] | np.ndarray,
                            n_bins: int = UCE_BINS) -> dict[str, float]:
    """UCE and AUCE of predicted variance against squared error (Ebel et al., UnCRtainTS, CVPRW 2023).

    One sample per image, as UnCRtainTS evaluates: ``variance`` = the image's
    mean predicted variance (``VAR``), ``squared_error`` = its mean squared
    error (``RMSE**2``). With the bins of :func:`calibration_bins`
    (``n_bins`` = 20, their ``percent=5``), ``N`` finite samples and ``n_b`` in bin b::

        UCE  = sum_b (n_b / N) |RMSE_b - RMV_b|
        AUCE = mean over non-empty bins of |RMSE_b - RMV_b|   (unweighted)

    Both are in reflectance units; 0 = perfectly calibrated. NaN without samples.
    Binning and formulas follow UnCRtainTS ``compute_uce_auce(..., l2=True)``.
    Two deliberate differences from that script: its error input is each
    image's mean *signed* error (which cancels), we use the mean squared error
    so ``RMSE_b`` is a real RMSE; and ``N`` counts the finite samples rather
    than the data set length.
    """
    bins = calibration_bins(variance, squared_error, n_bins)
    total = bins["count"].sum()
    if total == 0:
        return {"UCE": math.nan, "AUCE": math.nan}
    gap = np.abs(bins["rmse"] - bins["rmv"])
    filled = bins["count"] > 0
    return {"UCE": float((bins["count"][filled] / total * gap[filled]).sum()),
            "AUCE": float(gap[filled].mean())}


# ---------------------------------------------------------------------------
# Accumulation over a split
# ---------------------------------------------------------------------------


class MetricAccumulator:
    """Per-image metric dicts of a split; means overall and per group.

    ``add(metrics, groups)`` takes one image's metrics, flat (``{"PSNR": ...}``)
    or by region (:func:`cloud_metrics`, flattened by :func:`flatten_metrics`),
    and optional group labels (e.g. ``["season=spring", "coverage=0.1-0.3"]``;
    an image may sit in several groups).

    Mean conventions (per metric, per group):

    - NaN values are skipped (an image without cloud has no ``cloudy/...``).
    - Infinite values (PSNR of a perfect reconstruction) are left out of the
      mean and counted in ``<metric>_n_inf`` by :meth:`summary`: the mean is
      over finite values, so one perfect image cannot make it ``inf``. If
      every value is infinite the mean is that infinity; with no value, NaN.
    """

    def __init__(self) -> None:
        self._rows: list[dict[str, float]] = []
        self._groups: list[tuple[str, ...]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, metrics: Mapping[str, Any], groups: str | Iterable[str] | None = None) -> None:
        """Add one image's metrics (flat or by region) with optional group labels."""
        row = {key: float(value) for key, value in flatten_metrics(metrics).items()}
        labels = (groups,) if isinstance(groups, str) else tuple(groups or ())
        self._rows.append(row)
        self._groups.append(tuple(str(label) for label in labels))

    def add_batch(self, metrics: Mapping[str, Any],
                  groups: Sequence[str | Iterable[str] | None] | None = None) -> None:
        """Add the per-image lists of a batch result of :func:`image_metrics` / :func:`cloud_metrics`."""
        flat = flatten_metrics(metrics)
        sizes = {len(values) for values in flat.values()}
        if len(sizes) != 1:
            raise ValueError(f"batch metrics have lists of different lengths {sorted(sizes)}")
        size = sizes.pop()
        if groups is not None and len(groups) != size:
            raise ValueError(f"{len(groups)} group labels for a batch of {size} images")
        for i in range(size):
            self.add({key: values[i] for key, values in flat.items()}, None if groups is None else groups[i])

    @property
    def groups(self) -> list[str]:
        """Group labels seen so far, in order of first appearance."""
        return list(dict.fromkeys(label for labels in self._groups for label in labels))

    def _select(self, group: str | None) -> list[dict[str, float]]:
        if group is None or group == "all":
            return self._rows
        return [row for row, labels in zip(self._rows, self._groups, strict=True) if group in labels]

    def _values(self, rows: list[dict[str, float]]) -> dict[str, np.ndarray]:
        keys = list(dict.fromkeys(key for row in rows for key in row))
        return {key: np.array([row.get(key, math.nan) for row in rows], dtype=np.float64) for key in keys}

    @staticmethod
    def _mean(values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        if finite.size:
            return float(finite.mean())
        infinite = values[np.isinf(values)]
        if infinite.size:
            return float(infinite.mean()) if np.all(infinite == infinite[0]) else math.nan
        return math.nan

    def mean(self, group: str | None = None) -> dict[str, float]:
        """Mean of every metric over the images (of ``group``), per the class's conventions."""
        return {key: self._mean(values) for key, values in self._values(self._select(group)).items()}

    def count(self, group: str | None = None) -> dict[str, int]:
        """Number of images with a non-NaN value, per metric (of ``group``)."""
        return {key: int((~np.isnan(values)).sum()) for key, values in self._values(self._select(group)).items()}

    def calibration(self, group: str | None = None, n_bins: int = UCE_BINS) -> dict[str, float]:
        """UCE/AUCE per region from the images' ``VAR`` and ``RMSE**2`` (empty if no ``VAR``)."""
        values = self._values(self._select(group))
        result: dict[str, float] = {}
        for key in values:
            if key == "VAR" or key.endswith("/VAR"):
                prefix = key[: -len("VAR")]
                calib = uncertainty_calibration(values[key], values[f"{prefix}RMSE"] ** 2, n_bins)
                result.update({f"{prefix}{name}": value for name, value in calib.items()})
        return result

    def summary(self) -> dict[str, dict[str, float]]:
        """Per group (``all`` first): ``n`` images, metric means, ``<region>/n`` valid images,
        ``*PSNR_n_inf`` perfect images, and UCE/AUCE when variances were added."""
        table: dict[str, dict[str, float]] = {}
        for group in ["all", *[g for g in self.groups if g != "all"]]:
            rows = self._select(group)
            values = self._values(rows)
            entry: dict[str, float] = {"n": len(rows)}
            entry.update(self.mean(group))
            for key, column in values.items():
                if "/" in key:
                    region = key.split("/")[0]
                    entry[f"{region}/n"] = max(entry.get(f"{region}/n", 0), int((~np.isnan(column)).sum()))
                if key == "PSNR" or key.endswith("/PSNR"):
                    entry[f"{key}_n_inf"] = int(np.isinf(column).sum())
            entry.update(self.calibration(group))
            table[group] = entry
        return table


def flat_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Finite scalar metrics of an evaluation's ``metrics.json`` as ``{"PSNR": .., "cloudy_PSNR": ..}``.

    Groups ``test``, ``test_cloudy``, ``baseline_cloudy`` ... become name prefixes (``test`` none),
    ``by_*`` tables are left out. Evaluation logs these to MLflow; the registry tags versions with them.
    """
    flat: dict[str, float] = {}
    for group, values in metrics.items():
        if group.startswith("by_"):
            continue
        if not isinstance(values, dict):
            if isinstance(values, int | float) and not isinstance(values, bool) and np.isfinite(values):
                flat[f"{prefix}{group}"] = float(values)
            continue
        base = group.removeprefix("test").strip("_")
        for key, value in values.items():
            if isinstance(value, int | float) and np.isfinite(value):
                name = f"{base}_{key}" if base else key
                flat[f"{prefix}{name}"] = float(value)
    return flat
