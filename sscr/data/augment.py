"""The training view of a data set: random crops and flips, reproducible from (seed, epoch, index)."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset


class TrainingView(Dataset):
    """Random crops (``crop_size``) and flips (``flip``) of a data set, reproducible from (seed, epoch, index).

    Deriving each sample's randomness from its index rather than from a stream
    makes a resumed run see exactly the batches an uninterrupted run would.
    With neither (the published protocol) the items are the data set's own.
    """

    def __init__(self, dataset: Dataset, crop_size: int | None, seed: int, flip: bool = True) -> None:
        self.dataset = dataset
        self.crop_size = crop_size
        self.seed = seed
        self.flip = flip
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        if not self.flip and not self.crop_size:
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
        return item
