"""The training view of a data set: random crops, flips and S1 dropout, reproducible from (seed, epoch, index)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

CACHE_BYTES = 2 * 1024**3
"""Patches kept in memory by a :class:`TrainingView` that repeats them (the embedded default's 48: 365 MB)."""


class TrainingView(Dataset):
    """Random crops (``crop_size``) and flips (``flip``) of a data set, reproducible from (seed, epoch, index).

    Deriving each sample's randomness from its index rather than from a stream
    makes a resumed run see exactly the batches an uninterrupted run would.
    With neither crops nor flips nor repeats (the published protocol) the items are the data set's own.

    ``sar_dropout`` is the share of samples whose S1 is replaced by the missing-S1 value (0, as the
    data set's normalisation writes NaN backscatter), decided per sample like the crops, so that
    two DDP processes train on exactly the samples one process would.

    ``repeats`` > 1 takes that many random crops of every patch per epoch (index ``i`` is
    patch ``i % len(dataset)``): a small data set then gives more optimiser steps per
    epoch without reading a file more often, because a repeated patch is read once and
    kept in memory (up to :data:`CACHE_BYTES` in all; with ``num_workers`` > 0 each
    worker keeps its own copy for one epoch).
    """

    def __init__(self, dataset: Dataset, crop_size: int | None, seed: int, flip: bool = True,
                 repeats: int = 1, sar_dropout: float = 0.0) -> None:
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        if not 0.0 <= sar_dropout < 1.0:
            raise ValueError(f"sar_dropout must be in [0, 1), got {sar_dropout}")
        self.dataset = dataset
        self.crop_size = crop_size
        self.seed = seed
        self.flip = flip
        self.repeats = repeats
        self.sar_dropout = sar_dropout
        self.epoch = 0
        self._cache: dict[int, dict[str, Any]] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.dataset) * self.repeats  # type: ignore[arg-type]

    def _patch(self, index: int) -> dict[str, Any]:
        """Patch ``index`` of the data set, from memory when it was kept there."""
        if index in self._cache:
            return self._cache[index]
        item = self.dataset[index]
        if self.repeats > 1:
            size = sum(v.numel() * v.element_size() for v in item.values() if isinstance(v, torch.Tensor))
            if self._cached_bytes + size <= CACHE_BYTES:
                self._cache[index] = item
                self._cached_bytes += size
        return item

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self._patch(index % len(self.dataset)))  # type: ignore[arg-type]
        if not self.flip and not self.crop_size and not self.sar_dropout:
            return item
        rng = np.random.default_rng([self.seed, self.epoch, index])
        height, width = item["cloudy"].shape[-2:]
        keys = ("sar", "cloudy", "target", "mask")
        if self.crop_size and self.crop_size < min(height, width):
            top = int(rng.integers(0, height - self.crop_size + 1))
            left = int(rng.integers(0, width - self.crop_size + 1))
            for key in keys:
                item[key] = item[key][..., top:top + self.crop_size, left:left + self.crop_size]
        flips = rng.integers(0, 2, size=2) if self.flip else (0, 0)
        for key in keys:
            if flips[0]:
                item[key] = item[key].flip(-1)
            if flips[1]:
                item[key] = item[key].flip(-2)
            item[key] = item[key].contiguous()
        # drawn after the crop and the flips, so that those stay what they were without dropout
        if self.sar_dropout and "sar" in item and rng.random() < self.sar_dropout:
            item["sar"] = torch.zeros_like(item["sar"])
        return item
