"""Training the cloner (paper sec. 3.2; the released code's loop): Adam on C only, S frozen, the MKD loss
between their activations at the critical layers.

`fit` is the loop and nothing else: seeded, with a data order that depends only on (seed, epoch), and
resumable from its last checkpoint with bit-identical results in deterministic mode. The source's
features are computed once when the images do not change between epochs (features.training_targets).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mkdlib.checkpoints import resume, save_epoch, write_history
from mkdlib.config import Execution, MKDConfig
from mkdlib.features import autocast, image_loader, to_input, training_targets
from mkdlib.losses import MKDLoss
from mkdlib.models import Cloner, Source


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def build(cfg: MKDConfig, *, weights: str | Path | None = "imagenet", device: str | torch.device = "cpu",
          deterministic: bool = False) -> tuple[Source, Cloner, MKDLoss]:
    """Source, cloner and training loss for a configuration; random inits are seeded by cfg.seed."""
    layers = sorted(set(cfg.train_layers) | set(cfg.score_layers), key=lambda n: int(n[-1]))
    seed_everything(cfg.seed, deterministic)
    source = Source(layers, weights=weights if cfg.pretrained else None).to(device)
    cloner = Cloner(cfg.cloner, layers).to(device)
    return source, cloner, MKDLoss.from_config(cfg)


class EpochBatches:
    """Shuffled batches whose order depends only on (seed, epoch): resuming needs no sampler state."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for i in range(0, self.n, self.batch_size):  # last partial batch kept, as the reference
            yield order[i : i + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def learning_rate(cfg: MKDConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0-based, over the whole run): cfg.lr throughout
    ("constant", the paper's), or a linear warm-up over cfg.warmup_epochs to cfg.lr then a cosine decay
    to 0 at the last step ("cosine", ours). A function of the step alone, so a resumed run follows it."""
    if cfg.schedule == "constant":
        return cfg.lr
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def fit(
    cloner: Cloner,
    source: Source,
    data: Dataset | Tensor,
    cfg: MKDConfig,
    loss: MKDLoss | None = None,
    *,
    execution: Execution = Execution(),
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    on_epoch_end: Callable[[int, Cloner], None] | None = None,
) -> list[dict]:
    """Train `cloner` to mimic `source` on `data` for cfg.epochs passes; returns the loss history
    ({"epoch", "loss" (mean per image), "seconds"} per epoch).

    With `checkpoint_dir`: last.pt (cloner, optimizer, epoch, RNG state, history) every
    execution.checkpoint_every epochs and at the end, the cloner alone at each of cfg.eval_epochs(), and
    history.csv (checkpoints.save_epoch); a later call with the same folder resumes from last.pt.
    on_epoch_end(epoch, cloner) is called after each epoch (e.g. to keep more cloners).
    """
    device = torch.device(device)
    loss = loss or MKDLoss.from_config(cfg)
    torch.use_deterministic_algorithms(execution.deterministic, warn_only=True)
    memory_format = torch.channels_last if execution.channels_last else torch.contiguous_format
    cloner.to(device, memory_format=memory_format)
    optimizer = torch.optim.Adam(cloner.parameters(), lr=cfg.lr)
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, history = resume(ckpt, cloner, optimizer)
    if start >= cfg.epochs:
        return history
    if len(data) == 0:
        raise ValueError("the training set is empty")
    targets = training_targets(source, data, loss.layers, execution, batch_size=cfg.batch_size, device=device,
                               spill_dir=ckpt / "features" if ckpt else None, progress=progress)
    order = EpochBatches(len(data), cfg.batch_size, cfg.seed)
    loader = image_loader(data, cfg.batch_size, batch_sampler=order)
    cloner.train()
    bar = tqdm(range(start, cfg.epochs), desc="train", disable=not progress, initial=start, total=cfg.epochs)
    for epoch in bar:  # 0-based index; after it, epoch + 1 passes are done
        t0, total, seen = time.perf_counter(), 0.0, 0
        order.set_epoch(epoch)
        for batch, (index, x) in enumerate(zip(order, loader)):
            x = to_input(x, device, execution.channels_last)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch * len(order) + batch, len(order))
            with autocast(device, execution.amp):
                value = loss(cloner(x), targets(index, x))
            if not torch.isfinite(value):  # stop before the step: the checkpoints keep the last good epoch
                if ckpt is not None:
                    write_history(history, ckpt / "history.csv")
                raise FloatingPointError(
                    f"non-finite training loss ({value.item()}) at epoch {epoch + 1}; checkpoints up to the last "
                    f"good epoch are kept in {ckpt}. Check the input scaling and the source weights, or lower "
                    "lr / value_weight.")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()
            total, seen = total + value.item() * len(x), seen + len(x)
        history.append({"epoch": epoch + 1, "loss": total / seen, "seconds": round(time.perf_counter() - t0, 4)})
        bar.set_postfix(loss=f"{total / seen:.4g}")
        if ckpt is not None:
            save_epoch(ckpt, cloner, optimizer, cfg, execution, epoch + 1, history)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, cloner)
    return history
