"""Source features computed once: the source is frozen, so when the images do not change between epochs
its activations are fixed, and computing them once turns each training step into a cloner-only
forward/backward (`training_targets`). The same store holds the test images' features when several
cloners are scored. Also the batches of images every pass reads (`image_loader`, `to_input`).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mkdlib.config import Execution
from mkdlib.models import Source

_NP_DTYPE = {"float32": np.float32, "float16": np.float16}


def _image_of(item) -> Tensor:
    """The image of a dataset item: a dict's "image", a tuple's first element, or a tensor."""
    if isinstance(item, dict):
        return item["image"]
    if isinstance(item, (tuple, list)):
        return item[0]
    return item


def collate_images(items: list) -> Tensor:
    return torch.stack([_image_of(item) for item in items])


def image_loader(data: Dataset | Tensor, batch_size: int, *, batch_sampler=None, num_workers: int = 0) -> DataLoader:
    """Batches of images (B,3,H,W) in dataset order, or in the order a batch sampler gives."""
    if batch_sampler is not None:
        return DataLoader(data, batch_sampler=batch_sampler, collate_fn=collate_images, num_workers=num_workers)
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate_images, num_workers=num_workers)


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def to_input(x: Tensor, device: torch.device, channels_last: bool = True) -> Tensor:
    """x on `device`, in the channels_last memory format if asked."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


class FeatureStore:
    """Source activations of every image of a dataset, per layer (N, C, H, W), indexable by image.

    Kept in memory when they fit in `memory_budget_mb`, else in memory-mapped files in `spill_dir`.
    """

    def __init__(self, features: dict[str, np.ndarray | Tensor], spill_dir: Path | None = None,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.features = features
        self.spill_dir = spill_dir
        self.n = len(next(iter(features.values())))
        # get() returns this layout, the cloner's: element-wise ops and reductions over (C, H, W) then pair
        # elements in the same order as with the source's own output (cached == uncached), with no copy.
        self.memory_format = memory_format

    @classmethod
    def compute(
        cls,
        source: Source,
        data: Dataset | Tensor,
        layers: Sequence[str],
        *,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        amp: bool = False,
        channels_last: bool = True,
        memory_budget_mb: float = 4096,
        spill_dir: str | Path | None = None,
        progress: bool = False,
    ) -> FeatureStore:
        device = torch.device(device)
        missing = [name for name in layers if name not in source.layers]
        if missing:
            raise ValueError(f"source does not tap {missing} (it taps {list(source.layers)})")
        n = len(data)
        if n == 0:
            raise ValueError("cannot compute source features of an empty dataset")
        store: dict[str, np.ndarray | Tensor] = {}
        spill: Path | None = None
        offset = 0
        loader = image_loader(data, batch_size)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        with torch.inference_mode(), autocast(device, amp):
            for x in tqdm(loader, desc="source features", disable=not progress, leave=False):
                feats = source(to_input(x, device, channels_last))
                if not store:  # allocate once the shapes are known
                    per_image = sum(feats[k][0].numel() for k in layers) * np.dtype(_NP_DTYPE[dtype]).itemsize
                    if per_image * n > memory_budget_mb * 2**20:
                        spill = Path(spill_dir) if spill_dir else Path(tempfile.mkdtemp(prefix="mkdlib-features-"))
                        spill.mkdir(parents=True, exist_ok=True)
                    for k in layers:
                        shape = (n, *feats[k].shape[1:])
                        if spill is None:
                            store[k] = torch.empty(shape, dtype=getattr(torch, dtype)).contiguous(memory_format=layout)
                        else:
                            store[k] = np.lib.format.open_memmap(spill / f"{k}.npy", "w+", _NP_DTYPE[dtype], shape)
                for k in layers:
                    f = feats[k].float().cpu()
                    if spill is None:
                        store[k][offset : offset + len(x)] = f
                    else:
                        store[k][offset : offset + len(x)] = f.numpy()
                offset += len(x)
        out = cls(store, spill, layout)
        if spill is not None and not spill_dir:  # a temporary spill goes with the store
            weakref.finalize(out, shutil.rmtree, spill, ignore_errors=True)
        return out

    def get(self, index: Tensor | Sequence[int], device: str | torch.device = "cpu") -> dict[str, Tensor]:
        """Float32 features of the given images, on `device`, in the layout they were computed in."""
        out = {}
        for k, v in self.features.items():
            if isinstance(v, np.ndarray):
                rows = torch.from_numpy(np.ascontiguousarray(v[np.asarray(index)]))
            else:
                rows = v[torch.as_tensor(index)]
            out[k] = rows.to(device, torch.float32, non_blocking=True).contiguous(memory_format=self.memory_format)
        return out

    def __len__(self) -> int:
        return self.n


def training_targets(source: Source, data: Dataset | Tensor, layers: Sequence[str], execution: Execution, *,
                     batch_size: int, device: torch.device, spill_dir: Path | None = None,
                     progress: bool = False) -> Callable[[list[int], Tensor], dict[str, Tensor]]:
    """(batch indices, input batch) -> the source's features of that batch (no gradients; bf16 where
    execution.inference_bf16): computed once for the whole training set (a FeatureStore, spilled to
    `spill_dir` beyond execution.memory_budget_mb) when execution.cache_features and the data is
    deterministic (not augmented), else by the source at each step. Both give the same targets."""
    if not (execution.cache_features and getattr(data, "deterministic", True)):
        def uncached(index: list[int], x: Tensor) -> dict[str, Tensor]:
            with torch.no_grad(), autocast(device, execution.inference_bf16):
                return source(x)
        return uncached
    store = FeatureStore.compute(
        source, data, layers, batch_size=batch_size, device=device, dtype=execution.cache_dtype,
        amp=execution.inference_bf16, channels_last=execution.channels_last,
        memory_budget_mb=execution.memory_budget_mb, spill_dir=spill_dir, progress=progress)
    return lambda index, x: store.get(index, device)
