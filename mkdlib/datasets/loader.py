"""A DataLoader suited to these datasets (reference-implementation.md, "Training": batch 64, shuffle,
last partial batch kept). Cached deterministic datasets are a memory copy per item, so workers only
pay off when items are decoded or augmented on the fly.
"""

import os

import torch
from torch.utils.data import DataLoader

from .base import ImageDataset


def make_loader(dataset: ImageDataset, *, batch_size: int = 64, shuffle: bool = False, seed: int = 0,
                num_workers: int | None = None, drop_last: bool = False) -> DataLoader:
    """Seeded order and worker seeds; `num_workers=None` picks 0 for cached, unaugmented data."""
    if num_workers is None:
        cheap = getattr(dataset, "cached", False) and getattr(dataset, "deterministic", True)
        num_workers = 0 if cheap else min(4, os.cpu_count() or 1)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      generator=torch.Generator().manual_seed(seed))
