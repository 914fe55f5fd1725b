"""A run's checkpoint folder: last.pt (cloner, optimizer, epoch, RNG state, history: what an exact resume
needs), the cloner alone at each sampled epoch (cloner_eNNNN.pt), history.csv; every file written
atomically and read tensors-only, with one-line errors for a corrupt or foreign file."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from mkdlib.config import MKDConfig
from mkdlib.io_utils import atomic_write_bytes, atomic_write_text


LAST = "last.pt"


def save_checkpoint(obj: dict, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_history(history: list[dict], path: Path) -> None:
    if not history:
        return
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, out.getvalue())


class CheckpointError(RuntimeError):
    """An unreadable checkpoint file; the message says what deleting it recomputes."""


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        what = ("the run restarts from scratch" if Path(path).name == LAST else
                "only it is recomputed, from the nearest earlier checkpoint")
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({type(err).__name__}); delete it and run the same command "
            f"again: {what}"
        ) from None


def cloner_path(checkpoint_dir: Path, epoch: int) -> Path:
    return Path(checkpoint_dir) / f"cloner_e{epoch:04d}.pt"


def trained_epochs(checkpoint_dir: str | Path) -> int:
    """Passes recorded in checkpoint_dir/last.pt (0 without one)."""
    path = Path(checkpoint_dir) / LAST
    return int(load_checkpoint(path)["epoch"]) if path.is_file() else 0


def missing_cloners(checkpoint_dir: str | Path, cfg: MKDConfig) -> list[int]:
    """Sampled epochs (cfg.eval_epochs()) that training has passed but whose cloner file is absent."""
    done = trained_epochs(checkpoint_dir)
    return [e for e in cfg.eval_epochs() if e <= done and not cloner_path(checkpoint_dir, e).is_file()]
