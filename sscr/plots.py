"""Figures a person looks at: cloudy RGB, SAR, cloud probability, prediction, target, error, uncertainty."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage  # noqa: E402

from sscr.bands import RGB_BANDS  # noqa: E402
from sscr.fsutil import atomic_path  # noqa: E402

RGB_GAIN = 3.5  # TOA reflectance of land is ~0.03-0.3: brighten for display only
SAR_DISPLAY_MEAN = 5
"""Prediction panels show SAR as a 5 x 5 px mean: single-look speckle hides the boundaries the model reads."""


def _array(image: Any) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    return np.asarray(image, dtype=np.float32)


def rgb(s2: Any) -> np.ndarray:
    """(13, H, W) reflectance in [0, 1] -> (H, W, 3) display RGB (B4, B3, B2), brightened and clipped."""
    data = _array(s2)
    return np.clip(np.stack([data[b] for b in RGB_BANDS], axis=-1) * RGB_GAIN, 0, 1)


def sar_composite(sar: Any, smooth: int = 1) -> np.ndarray:
    """(2, H, W) normalised S1 -> (H, W, 3) false colour (VV, VH, VV - VH), each stretched to 2-98 %.

    ``smooth`` > 1 shows the mean of ``smooth`` x ``smooth`` pixels (display only). NaN
    (no SAR) is left out of the stretch and shown black.
    """
    data = _array(sar)
    if smooth > 1:
        data = ndimage.uniform_filter(data, size=(1, smooth, smooth), mode="nearest")
    channels = [data[0], data[1], np.clip(data[0] - data[1] + 0.5, 0, 1)]
    out = []
    for channel in channels:
        finite = channel[np.isfinite(channel)]
        lo, hi = np.percentile(finite, [2, 98]) if finite.size else (0.0, 1.0)
        out.append(np.nan_to_num(np.clip((channel - lo) / max(hi - lo, 1e-6), 0, 1), nan=0.0))
    return np.stack(out, axis=-1)


def sample_panel(cloudy: Any, sar: Any, target: Any, mask: Any, title: str = "") -> plt.Figure:
    """One sample of the data set: cloudy RGB, SAR, target RGB and cloud mask."""
    fig, axes = plt.subplots(1, 4, figsize=(12, 3.4))
    for ax, image, name in zip(
        axes, [rgb(cloudy), sar_composite(sar), rgb(target), _array(mask)],
        ["cloudy S2 (RGB)", "S1 (VV, VH, ratio)", "clear S2 target (RGB)", "cloud mask"], strict=True,
    ):
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def prediction_panel(sample: dict[str, Any], prediction: Any, variance: Any | None = None) -> plt.Figure:
    """Cloudy RGB, SAR, cloud probability, prediction, target, absolute error and (when predicted) uncertainty."""
    pred, target = _array(prediction), _array(sample["target"])
    error = np.abs(pred - target).mean(axis=0)
    panels = [
        (rgb(sample["cloudy"]), "cloudy S2 (RGB)", None),
        (sar_composite(sample["sar"], SAR_DISPLAY_MEAN), f"S1 SAR (VV, VH, ratio; {SAR_DISPLAY_MEAN}x{SAR_DISPLAY_MEAN} mean)",
         None),
        (_array(sample["mask"]), "cloud probability (model input)", "gray"),
        (rgb(pred), "prediction (RGB)", None),
        (rgb(target), "target (RGB)", None),
        (error, f"|error| mean over bands (MAE {error.mean():.4f})", "magma"),
    ]
    if variance is not None:
        panels.append((np.sqrt(_array(variance).mean(axis=0)), "predicted std (mean over bands)", "viridis"))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.5))
    for ax, (image, name, cmap) in zip(axes, panels, strict=True):
        shown = ax.imshow(image, cmap=cmap, **({"vmin": 0, "vmax": 1} if cmap == "gray" else {}))
        if cmap not in (None, "gray"):
            fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    meta = sample.get("meta", {})
    coverage = sample.get("coverage")
    fig.suptitle(f"{meta.get('sample_id', '')}  cloud coverage {coverage:.0%}" if coverage is not None
                 else str(meta.get("sample_id", "")), fontsize=10)
    fig.tight_layout()
    return fig


def metric_by_bin_figure(rows: list[dict[str, Any]], metric: str = "PSNR") -> plt.Figure:
    """Bar chart of a metric inside clouds by coverage bin, model vs the cloudy-input baseline."""
    labels = [row["bin"] for row in rows]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(x - 0.2, [row[f"model_{metric}"] for row in rows], 0.4, label="SSCR")
    ax.bar(x + 0.2, [row[f"baseline_{metric}"] for row in rows], 0.4, label="cloudy input")
    ax.set_xticks(x, labels)
    ax.set_xlabel("cloud coverage bin")
    ax.set_ylabel(f"{metric} inside clouds")
    ax.legend()
    fig.tight_layout()
    return fig


def panel_indices(coverages: list[float], count: int) -> set[int]:
    """``count`` sample indices spread evenly over the range of cloud coverage (clear to overcast).

    The first patches of a split usually come from one ROI with similar clouds; spread over
    coverage, the panels show every case the model meets. Ties keep the sample order.
    """
    if count <= 0 or not coverages:
        return set()
    order = sorted(range(len(coverages)), key=lambda i: (coverages[i], i))
    if count >= len(order):
        return set(order)
    picks = np.linspace(0, len(order) - 1, count).round().astype(int)
    return {order[i] for i in picks}


def quicklook_figure(cloudy: Any, sar: Any | None, prediction: Any, mask: Any | None, title: str = "") -> plt.Figure:
    """A scene at a glance: cloudy RGB | S1 SAR | output RGB | cloud mask, side by side.

    ``cloudy`` and ``prediction``: (3, H, W) top-of-atmosphere reflectance of B4, B3, B2
    (NaN = no data, shown black), drawn with one and the same stretch (x ``RGB_GAIN``,
    clipped to [0, 1]), so a colour that changed is a change of the output, not of the
    display. ``sar``: (2, H, W) VV, VH normalised as the model sees them (NaN = no SAR), or
    None for an optical model; ``mask``: (H, W) cloud probability fed to the model, or None
    when none was fed. The figure's size does not depend on the scene's.
    """
    def reflectance_rgb(image: Any) -> np.ndarray:
        data = np.moveaxis(_array(image), 0, -1)
        return np.nan_to_num(np.clip(data * RGB_GAIN, 0, 1), nan=0.0)

    panels: list[tuple[np.ndarray, str, str | None]] = [
        (reflectance_rgb(cloudy), f"cloudy S2 (B4 B3 B2 reflectance x {RGB_GAIN:g})", None)]
    panels.append((sar_composite(sar), "S1 SAR (VV, VH, VV-VH)", None) if sar is not None else
                  (np.zeros((*_array(cloudy).shape[1:], 3), np.float32), "no SAR (optical model)", None))
    panels.append((reflectance_rgb(prediction), f"cloud-free output (same stretch, x {RGB_GAIN:g})", None))
    if mask is not None:
        probability = np.ma.masked_invalid(_array(mask))
        panels.append((probability, "cloud probability fed to the model", "gray"))
    else:
        panels.append((np.zeros(_array(cloudy).shape[1:], np.float32), "no cloud mask fed to the model", "gray"))
    height, width = _array(cloudy).shape[1:]
    panel_w = 4.0
    panel_h = min(max(panel_w * height / max(width, 1), 1.5), 8.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(panel_w * len(panels), panel_h + 0.6))
    for ax, (image, name, cmap) in zip(axes, panels, strict=True):
        ax.imshow(image, cmap=cmap, vmin=0, vmax=1, interpolation="antialiased")
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def save_png(figure: plt.Figure, path: str | Path, dpi: int = 100, palette: bool = False) -> Path:
    """Write ``figure`` to ``path`` as PNG, atomically, without a timestamp or software tag (same figure, same
    bytes), and close it. ``palette``: 256 colours (about 2.5x smaller for photographic panels)."""
    path = Path(path)
    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    finally:
        plt.close(figure)
    with atomic_path(path) as tmp:
        if palette:
            from PIL import Image

            buffer.seek(0)
            Image.open(buffer).convert("RGB").quantize(256).save(tmp, format="PNG", optimize=True)
        else:
            tmp.write_bytes(buffer.getvalue())
    return path
