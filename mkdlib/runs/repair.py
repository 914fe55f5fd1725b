"""Damaged runs are mended, not deleted: a lost sampled cloner is recomputed alone (`restore_cloners`), a
corrupt metrics.json is kept aside and the run re-evaluated from its checkpoints
(`set_aside_corrupt_metrics`)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mkdlib.checkpoints import LAST, cloner_path, load_checkpoint, missing_cloners, save_checkpoint, trained_epochs
from mkdlib.config import Execution, MKDConfig
from mkdlib.losses import MKDLoss
from mkdlib.models import Cloner, Source
from mkdlib.runs.store import METRICS, CorruptMetrics, read_metrics
from mkdlib.train import fit


def restore_cloners(new_cloner: Callable[[], Cloner], source: Source, data: Dataset | Tensor, cfg: MKDConfig,
                    execution: Execution, loss: MKDLoss, checkpoint_dir: str | Path, *,
                    device: str | torch.device = "cpu", progress: bool = True) -> list[int]:
    """Recompute the sampled cloners missing from a checkpoint folder (deleted or lost), touching nothing
    else; returns their epochs. The one at last.pt's epoch is last.pt's own cloner; earlier ones are
    retrained from the nearest earlier full checkpoint, which is the seeded start (only last.pt keeps
    optimizer state), in checkpoint_dir/recover/ (itself resumable). The data order depends only on
    (seed, epoch), so this retraces the run: bit-identical in deterministic mode.

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
        fit(new_cloner(), source, data, replace(cfg, epochs=max(earlier)), loss, execution=execution, device=device,
            checkpoint_dir=ckpt / "recover", progress=progress, on_epoch_end=keep)
        shutil.rmtree(ckpt / "recover", ignore_errors=True)
    return missing


def set_aside_corrupt_metrics(run_dir: Path) -> None:
    """A corrupt metrics.json is renamed (kept for inspection), so that the run is re-evaluated."""
    try:
        if (run_dir / METRICS).is_file():
            read_metrics(run_dir)
    except CorruptMetrics as err:
        aside = run_dir / f"{METRICS}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(run_dir / METRICS, aside)
        print(f"mkdlib: {err}; kept as {aside.name}, re-evaluating from the checkpoints", file=sys.stderr)
