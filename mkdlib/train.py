"""Training the cloner (paper sec. 3.2; the released code's loop): Adam on C only, S frozen.

`fit` is a plain loop: seeded, resumable from its last checkpoint with bit-identical results in
deterministic mode, with the source's features computed once when the data is deterministic.
"""

from __future__ import annotations

import copy
import functools
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mkdlib.checkpoints import (LAST, cloner_path, load_checkpoint, missing_cloners, read_last, save_checkpoint,
                                trained_epochs, write_history)
from mkdlib.config import MKDConfig, learning_rate
from mkdlib.features import FeatureStore, autocast, image_loader, to_input
from mkdlib.losses import MKDLoss
from mkdlib.models import Cloner, Source


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def build(cfg: MKDConfig, *, weights: str | Path | None = "imagenet", device: str | torch.device = "cpu"):
    """Source, cloner and training loss for a configuration; random inits are seeded by cfg.seed."""
    layers = sorted(set(cfg.train_layers) | set(cfg.score_layers), key=lambda n: int(n[-1]))
    seed_everything(cfg.seed, cfg.deterministic)
    source = Source(layers, weights=weights if cfg.pretrained else None).to(device)
    cloner = Cloner(cfg.cloner, layers).to(device)
    loss = MKDLoss(cfg.train_layers, value_weight=cfg.value_weight, direction_weight=cfg.direction_weight)
    return source, cloner, loss


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


def restore_cloners(new_cloner: Callable[[], Cloner], source: Source, data: Dataset | Tensor, cfg: MKDConfig,
                    loss: MKDLoss, checkpoint_dir: str | Path, *, device: str | torch.device = "cpu",
                    progress: bool = True) -> list[int]:
    """Recompute the sampled cloners missing from a checkpoint directory (deleted or lost), touching
    nothing else; returns their epochs. The one at last.pt's epoch is last.pt's own cloner; earlier ones
    are retrained from the nearest earlier full checkpoint, which is the seeded start (only last.pt
    keeps optimizer state), in checkpoint_dir/recover/ (itself resumable). The data order depends only
    on (seed, epoch), so this retraces the run: bit-identical in deterministic mode.

    new_cloner: builds the run's freshly seeded cloner (its initial weights)."""
    ckpt = Path(checkpoint_dir)
    missing = missing_cloners(ckpt, cfg)
    done = trained_epochs(ckpt)
    if done in missing:
        save_checkpoint({"cloner": load_checkpoint(ckpt / LAST)["cloner"], "epoch": done}, cloner_path(ckpt, done))
    earlier = [e for e in missing if e < done]
    if earlier:
        print(f"mkdlib: recomputing the missing sampled cloner(s) of epochs {earlier} in {ckpt}: retraining "
              f"from the start to epoch {max(earlier)}", file=sys.stderr)

        def keep(epoch: int, cloner: Cloner) -> None:
            if epoch in earlier:
                save_checkpoint({"cloner": cloner.state_dict(), "epoch": epoch}, cloner_path(ckpt, epoch))

        if trained_epochs(ckpt / "recover") > min(earlier):  # an older recovery went past one of them
            shutil.rmtree(ckpt / "recover")
        fit(new_cloner(), source, data, replace(cfg, epochs=max(earlier)), loss, device=device,
            checkpoint_dir=ckpt / "recover", progress=progress, on_epoch_end=keep)
        shutil.rmtree(ckpt / "recover", ignore_errors=True)
    return missing


def source_target(source: Source, x: Tensor, cfg: MKDConfig, device: torch.device) -> dict[str, Tensor]:
    """The frozen source's features of a batch, as the feature cache computes them (no gradients, in bf16
    where cfg.inference_bf16 says): cached and uncached training see the same targets."""
    with torch.no_grad(), autocast(device, cfg.inference_bf16):
        return source(x)


def measure_speed(cloner: Cloner, source: Source, cfg: MKDConfig, loss: MKDLoss, *, cached: bool,
                  device: str | torch.device = "cpu", steps: int = 2) -> float:
    """Training images/second on this machine for this configuration: `steps` timed cloner steps on one
    batch of random images (source features computed once when `cached`, as fit does), on a copy of the
    cloner, so that the run's own weights and RNG-driven data order are untouched."""
    device = torch.device(device)
    cfg = cfg.resolve(device)
    probe = copy.deepcopy(cloner).to(device).train()
    if cfg.channels_last:
        probe.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    images = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    x = to_input(images, device, cfg.channels_last)

    def step():
        target = fixed if cached else source_target(source, x, cfg, device)
        with autocast(device, cfg.amp):
            value = loss(probe(x), target)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    fixed = source_target(source, x, cfg, device) if cached else None
    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def duration_text(seconds: float) -> str:
    """'about 1 h 40 min', 'about 5 min', or 'under a minute' (seconds are not rounded up to a minute)."""
    if seconds < 60:
        return "under a minute"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"about {hours} h {minutes} min" if hours else f"about {minutes} min"


def plan_text(epochs_left: int, n_images: int, img_s: float) -> str:
    """'601 epochs x 209 images = 125,609 image passes: about 1 h 40 min at 21 img/s measured here'."""
    passes = epochs_left * n_images
    return (f"{epochs_left} epochs x {n_images} images = {passes:,} image passes: {duration_text(passes / img_s)} "
            f"at {img_s:.3g} img/s measured here")


def fit(
    cloner: Cloner,
    source: Source,
    data: Dataset | Tensor,
    cfg: MKDConfig,
    loss: MKDLoss | None = None,
    *,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | Path | None = None,
    progress: bool = True,
    num_workers: int = 0,
    on_epoch_end: Callable[[int, Cloner], None] | None = None,
) -> list[dict]:
    """Train `cloner` to mimic `source` on `data` for cfg.epochs passes; returns the loss history.

    With `checkpoint_dir`, writes `last.pt` (cloner, optimizer, epoch, RNG states, history) every
    cfg.checkpoint_every epochs and at the end, the cloner alone at each of cfg.eval_epochs(), and
    `history.csv`; a later call with the same directory resumes from `last.pt`.
    """
    device = torch.device(device)
    cfg = cfg.resolve(device)
    loss = loss or MKDLoss(cfg.train_layers, value_weight=cfg.value_weight, direction_weight=cfg.direction_weight)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    cloner.to(device)
    if cfg.channels_last:
        cloner.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(cloner.parameters(), lr=cfg.lr)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    start, history = _resume(ckpt_dir, cloner, optimizer)
    if start >= cfg.epochs:
        return history

    if len(data) == 0:
        raise ValueError("the training set is empty")
    targets = _source_targets(source, data, loss, cfg, device, ckpt_dir, progress)
    sampler = EpochBatches(len(data), cfg.batch_size, cfg.seed)
    loader = image_loader(data, cfg.batch_size, batch_sampler=sampler, num_workers=num_workers)
    on_nan = functools.partial(_stop_on_nan, history=history, ckpt_dir=ckpt_dir)
    eval_epochs = set(cfg.eval_epochs())
    cloner.train()
    bar = tqdm(range(start, cfg.epochs), desc="train", disable=not progress, initial=start, total=cfg.epochs)
    for epoch in bar:  # 0-based index; after it, epoch + 1 passes are done
        t0 = time.perf_counter()
        mean_loss = _train_epoch(epoch, cloner, optimizer, loss, targets, sampler, loader, cfg, device, on_nan)
        done = epoch + 1
        history.append({"epoch": done, "loss": mean_loss, "seconds": round(time.perf_counter() - t0, 4)})
        bar.set_postfix(loss=f"{mean_loss:.4g}")
        if ckpt_dir is not None:
            _checkpoint(ckpt_dir, cloner, optimizer, cfg, done, history, sampled=done in eval_epochs)
        if on_epoch_end is not None:
            on_epoch_end(done, cloner)
    return history


def _resume(ckpt_dir: Path | None, cloner: Cloner, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """(epochs done, loss history) from ckpt_dir/last.pt (checkpoints.read_last: one-line errors for an
    unusable one), with the cloner, optimizer and torch RNG restored; (0, []) for a new run (ckpt_dir is
    created) or without a checkpoint folder."""
    if ckpt_dir is None:
        return 0, []
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    state = read_last(ckpt_dir, cloner)
    if state is None:
        return 0, []
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    return state["epoch"], list(state["history"])


def _source_targets(source: Source, data: Dataset | Tensor, loss: MKDLoss, cfg: MKDConfig, device: torch.device,
                    ckpt_dir: Path | None, progress: bool) -> Callable[[list[int], Tensor], dict[str, Tensor]]:
    """(batch indices, input batch) -> the source's features of that batch: computed once for the whole
    training set (FeatureStore, spilled to ckpt_dir/features beyond cfg.memory_budget_mb) when
    cfg.cache_features and the data is deterministic (not augmented), else by the source at each step."""
    if not (cfg.cache_features and getattr(data, "deterministic", True)):
        return lambda index, x: source_target(source, x, cfg, device)
    store = FeatureStore.compute(
        source, data, loss.layers, batch_size=cfg.batch_size, device=device, dtype=cfg.cache_dtype,
        amp=cfg.inference_bf16, channels_last=cfg.channels_last, memory_budget_mb=cfg.memory_budget_mb,
        spill_dir=ckpt_dir / "features" if ckpt_dir is not None else None, progress=progress,
    )
    return lambda index, x: store.get(index, device)


def _train_epoch(epoch: int, cloner: Cloner, optimizer: torch.optim.Optimizer, loss: MKDLoss,
                 targets: Callable[[list[int], Tensor], dict[str, Tensor]], sampler: EpochBatches,
                 loader: Iterable, cfg: MKDConfig, device: torch.device,
                 on_nan: Callable[[Tensor, int], None]) -> float:
    """One pass over the data in the order of (cfg.seed, epoch), epoch counted from 0; returns the mean
    loss per image. on_nan(loss, epoch + 1) is called on a non-finite loss, before its step (it raises)."""
    sampler.set_epoch(epoch)
    total, seen = 0.0, 0
    for batch, (index, x) in enumerate(zip(sampler, loader)):
        x = to_input(x, device, cfg.channels_last)
        target = targets(index, x)
        if cfg.schedule != "constant":
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg, epoch * len(sampler) + batch, len(sampler))
        with autocast(device, cfg.amp):
            value = loss(cloner(x), target)
        if not torch.isfinite(value):
            on_nan(value, epoch + 1)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        total += value.item() * len(x)
        seen += len(x)
    return total / seen


def _checkpoint(ckpt_dir: Path, cloner: Cloner, optimizer: torch.optim.Optimizer, cfg: MKDConfig, done: int,
                history: list[dict], *, sampled: bool) -> None:
    """After epoch `done`: the cloner alone if it is a sampled epoch; last.pt (everything a resume needs)
    and history.csv every cfg.checkpoint_every epochs and at the end."""
    if sampled:
        save_checkpoint({"cloner": cloner.state_dict(), "epoch": done}, cloner_path(ckpt_dir, done))
    if done % cfg.checkpoint_every == 0 or done == cfg.epochs:
        state = {"cloner": cloner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": done,
                 "history": history, "rng": {"torch": torch.get_rng_state()}, "config": cfg.to_dict()}
        save_checkpoint(state, ckpt_dir / LAST)
        write_history(history, ckpt_dir / "history.csv")


def _stop_on_nan(value: Tensor, epoch: int, history: list[dict], ckpt_dir: Path | None) -> None:
    """Raise on a non-finite loss, keeping the history of the epochs computed so far."""
    if ckpt_dir is not None:
        write_history(history, ckpt_dir / "history.csv")
    raise FloatingPointError(
        f"non-finite training loss ({value.item()}) at epoch {epoch}; "
        f"checkpoints up to the last good epoch are kept in {ckpt_dir}. "
        "Check the input scaling and the source weights, or lower lr / value_weight."
    )
