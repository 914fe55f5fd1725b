"""A subset of a dataset that keeps what mkdlib reads of it (labels, masks, paths, normalisation), and
`subset_indices`: n images spread over the data with normal and anomalous ones in proportion (the
smoke profile's max_train / max_test)."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Dataset


class Subset(Dataset):
    """Items `indices` of an mkdlib dataset, keeping labels / masks / deterministic; items of a
    deterministic dataset are kept in memory (the base is then built without its own cache)."""

    def __init__(self, base: Dataset, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(base.labels)[self.indices]
        self.has_masks = base.has_masks
        self.paths = [base.paths[i] for i in self.indices]
        self.mean, self.std = getattr(base, "mean", None), getattr(base, "std", None)  # None: not normalised
        self.deterministic = getattr(base, "deterministic", True)
        self._items = [base[int(i)] for i in self.indices] if self.deterministic else None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = dict(self._items[i]) if self._items is not None else self.base[int(self.indices[i])]
        item["index"] = i
        return item

    @property
    def masks(self) -> np.ndarray | None:
        if not self.has_masks:
            return None
        return np.stack([self[i]["mask"][0].numpy() for i in range(len(self))]).astype(np.float32)


def _spread(idx: np.ndarray, k: int) -> np.ndarray:
    """k indices spread evenly over idx (deterministic, distinct for k <= len(idx))."""
    return idx[(np.arange(k) * len(idx)) // k] if k > 0 else idx[:0]


def subset_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """n indices spread over the data, normal and anomalous images in proportion, >= 1 of each."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
    if len(normal) == 0 or len(anomalous) == 0:
        return _spread(np.arange(len(labels)), n)
    n_anom = int(np.clip(round(n * len(anomalous) / len(labels)), 1, min(n - 1, len(anomalous))))
    n_norm = min(n - n_anom, len(normal))
    return np.sort(np.concatenate([_spread(normal, n_norm), _spread(anomalous, n - n_norm)]))
