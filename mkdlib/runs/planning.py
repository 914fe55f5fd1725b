"""The plan of a list of runs before they start (`plan`): how many are finished (cached), how many image
passes are left to train, and about how long that takes at the speed measured here, one line that every
notebook prints before its runs cell."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from mkdlib.checkpoints import CheckpointError, trained_epochs
from mkdlib.config import MKDConfig
from mkdlib.runs.loading import check_device, load_data
from mkdlib.runs.runner import finished_runs
from mkdlib.runs.spec import RunSpec
from mkdlib.train import build, duration_text, measure_speed


SPEED_FIELDS = ("image_size", "cloner", "batch_size", "train_layers", "amp", "channels_last")  # what measure_speed runs


def _epochs_left(run_dir: Path, epochs: int) -> int:
    """Epochs still to train: a run interrupted at epoch e resumes there; an unreadable last.pt counts
    as none trained (run() reports it)."""
    try:
        return max(0, epochs - trained_epochs(run_dir / "checkpoints"))
    except CheckpointError:
        return epochs


def _train_size(spec: RunSpec) -> int | None:
    """The number of training images of a run, from the file listing (images not decoded); None when its
    data is not found or not readable here (the runs cell then reports where it looked)."""
    cfg = spec.mkd_config()
    try:
        return len(load_data(spec, replace(cfg, extra={**cfg.extra, "cache": False}), split="train"))
    except (OSError, ValueError):
        return None


def _speed_group(cfg: MKDConfig) -> tuple:
    """What the measured speed depends on: the fields measure_speed runs, and whether features are cached."""
    return (*(getattr(cfg, f) for f in SPEED_FIELDS), cfg.cache_features and not cfg.augment)


def _speed(spec: RunSpec, device: str) -> float:
    """Training images/s of the run's configuration here: train.measure_speed (two timed steps on random
    images) with a random source, whose weights change nothing in the time a step takes."""
    cfg = spec.mkd_config()
    source, cloner, loss = build(cfg, weights=None, device=check_device(device))
    return measure_speed(cloner, source, cfg, loss, cached=_speed_group(cfg)[-1], device=device)


def _runs(n: int) -> str:
    return f"{n} run" + "s" * (n != 1)


def _time(groups: dict[tuple, RunSpec], passes: dict[tuple, int], device: str) -> str:
    """'about 41 h on this CPU (measured 21 img/s; one run at a time)', one measurement per group."""
    speeds = {g: _speed(spec, device) for g, spec in groups.items()}
    seconds = sum(passes[g] / speeds[g] for g in groups)
    measured = " / ".join(f"{s:.3g} img/s" + (f" at {g[0]} px, {g[1]} cloner" if len(speeds) > 1 else "")
                          for g, s in speeds.items())
    where = "on this CPU" if str(device) == "cpu" else f"on {device}"
    return f"{duration_text(seconds)} {where} (measured {measured}; one run at a time)"


def plan(specs: Iterable[RunSpec], root: str | Path, device: str = "cpu") -> str:
    """One line saying what running `specs` in the run cache `root` will cost, printed before a notebook
    starts its runs so that "Run All" never silently starts hours of training: how many distinct runs
    (by key), how many are finished (cached, `runner.finished_runs`), how many image passes are left
    to train (epochs left x training images, where the data is found) and about how long that takes one
    run at a time at the speed measured here, once per configuration that affects it (a few seconds;
    nothing is measured when nothing is left to train)."""
    root = Path(root).expanduser()
    unique = list({s.key(): s for s in specs}.values())
    todo = [r.spec for r in finished_runs(unique, root) if not r.ok]
    if not todo:
        return f"{_runs(len(unique))}, all finished (cached): nothing to train"
    groups, passes, unknown = {}, {}, []  # a spec and the image passes left per speed group; runs without data
    for spec in todo:
        cfg, n = spec.mkd_config(), _train_size(spec)
        if n is None:
            unknown.append(spec.label())
            continue
        group = _speed_group(cfg)
        groups.setdefault(group, spec)
        passes[group] = passes.get(group, 0) + _epochs_left(root / spec.key(), cfg.epochs) * n
    parts = [f"~{sum(passes.values()):,} image passes, {_time(groups, passes, device)}"] if groups else []
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        parts.append(f"size unknown for {len(unknown)} whose data was not found ({shown})")
    head = f"{_runs(len(unique))}: {len(unique) - len(todo)} finished (cached), {len(todo)} to train"
    return f"{head}: " + "; ".join(parts)
