"""A run's checkpoint folder: last.pt (cloner, optimizer, epoch, RNG state, history: what an exact resume
needs), the cloner alone at each sampled epoch (cloner_eNNNN.pt), history.csv; every file written
atomically and read tensors-only, with one-line errors for a corrupt or foreign file (`read_last` is
the one check of last.pt before a resume)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from mkdlib.config import Execution, MKDConfig, canonical_json
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
    """An unreadable or unusable checkpoint file; the message says what deleting it costs (`deletion_cost`)."""


FINISHED = "metrics.json"  # beside a run's checkpoints/, it marks the run finished (mkdlib/runs/store.py)


def deletion_cost(path: str | Path) -> str:
    """The advice for an unusable checkpoint: delete it, and what that costs in the state of the run whose
    checkpoints/ holds it. last.pt: nothing once the run is finished (it is only needed to train further),
    else the run restarts from scratch; a sampled cloner: only it is recomputed (runs/runner.py)."""
    path = Path(path)
    if path.name != LAST:
        return ("delete it and run the same command again: only it is recomputed (from last.pt, or by retracing "
                "the run to its epoch)")
    if path.parent.name == "recover":
        return "delete it and run the same command again: the recovery of the lost sampled cloners restarts"
    if (path.parent.parent / FINISHED).is_file():
        return ("delete it (nothing is recomputed: the run is finished, and last.pt is only needed to train it "
                "further)")
    return "delete it and run the same command again: the run restarts from scratch"


def load_checkpoint(path: Path, *, mmap: bool = False) -> dict:
    """The checkpoint's tensors; CheckpointError if torch cannot open it. mmap=True: cheap (the tensors' bytes
    are not read), for a listing that only checks that it opens."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(err).__name__}); "
                              f"{deletion_cost(path)}") from None


def read_last(checkpoint_dir: str | Path, cloner: torch.nn.Module, cfg: MKDConfig | None = None) -> dict | None:
    """checkpoint_dir/last.pt checked for a resume, with its weights loaded into `cloner`; None without one.

    CheckpointError, in one line, for a last.pt that is unreadable, lacks a field a resume needs, was
    trained with another configuration than `cfg` (MKDConfig.matches; not checked without cfg, as fit
    does, so that a run can be trained for more epochs), or does not fit `cloner`."""
    path = Path(checkpoint_dir) / LAST
    if not path.exists():
        return None
    state = load_checkpoint(path)
    if not isinstance(state, dict) or not {"cloner", "optimizer", "epoch", "history"} <= set(state):
        raise CheckpointError(f"checkpoint {path} lacks fields this mkdlib needs (incompatible version); "
                              f"{deletion_cost(path)}")
    if cfg is not None and state.get("config") is not None and not cfg.matches(canonical_json(state["config"])):
        raise CheckpointError(f"checkpoint {path} was trained with another configuration; use another results "
                              f"folder, or {deletion_cost(path)}")
    try:
        cloner.load_state_dict(state["cloner"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path} does not fit this cloner ({str(err).splitlines()[0]}); "
                              f"{deletion_cost(path)}") from None
    return state


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


def resume(checkpoint_dir: Path | None, cloner: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, list[dict]]:
    """(epochs done, loss history) from checkpoint_dir/last.pt (read_last: one-line errors for an unusable
    one), with the cloner, optimizer and torch RNG restored; (0, []) for a new run (the folder is created)
    or without a checkpoint folder."""
    if checkpoint_dir is None:
        return 0, []
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    state = read_last(checkpoint_dir, cloner)
    if state is None:
        return 0, []
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    return state["epoch"], list(state["history"])


def save_epoch(checkpoint_dir: Path, cloner: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: MKDConfig,
               execution: Execution, done: int, history: list[dict]) -> None:
    """After epoch `done`: the cloner alone if it is a sampled epoch (cfg.eval_epochs()); last.pt (everything
    an exact resume needs) and history.csv every execution.checkpoint_every epochs and at the end."""
    if done in cfg.eval_epochs():
        save_checkpoint({"cloner": cloner.state_dict(), "epoch": done}, cloner_path(checkpoint_dir, done))
    if done % execution.checkpoint_every == 0 or done == cfg.epochs:
        state = {"cloner": cloner.state_dict(), "optimizer": optimizer.state_dict(), "epoch": done,
                 "history": history, "rng": {"torch": torch.get_rng_state()}, "config": cfg.to_dict()}
        save_checkpoint(state, checkpoint_dir / LAST)
        write_history(history, checkpoint_dir / "history.csv")
