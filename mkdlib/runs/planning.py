"""The plan of runs before they start: `plan` (how many are finished (cached), how many image passes are
left to train, and about how long that takes at the speed measured here: one line every notebook prints
before its runs) and `speed_line` (what a long run prints before it trains), from `measure_speed`."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Dataset

from mkdlib.checkpoints import CheckpointError, trained_epochs
from mkdlib.config import Execution, MKDConfig
from mkdlib.features import autocast, to_input, training_targets
from mkdlib.io_utils import shown
from mkdlib.losses import MKDLoss
from mkdlib.models import Cloner, Source
from mkdlib.runs.loading import check_device, load_data
from mkdlib.datasets import DatasetNotFoundError
from mkdlib.runs.spec import RunResult, RunSpec
from mkdlib.runs.store import finished_runs
from mkdlib.train import build

SPEED_FIELDS = ("image_size", "cloner", "batch_size", "train_layers")  # what measure_speed runs, with the execution


def measure_speed(cloner: Cloner, source: Source, cfg: MKDConfig, execution: Execution, loss: MKDLoss, *,
                  cached: bool, device: str | torch.device = "cpu", steps: int = 2) -> float:
    """Training images/second on this machine for this configuration: `steps` timed cloner steps on one
    batch of random images (source features computed once when `cached`, as fit does), on a copy of the
    cloner, so that the run's own weights and RNG-driven data order are untouched."""
    device = torch.device(device)
    probe = copy.deepcopy(cloner).to(device, memory_format=torch.channels_last if execution.channels_last
                                      else torch.contiguous_format).train()
    optimizer = torch.optim.Adam(probe.parameters(), lr=cfg.lr)
    images = torch.rand(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(0))
    x = to_input(images, device, execution.channels_last)
    targets = training_targets(source, images, loss.layers, replace(execution, cache_features=cached),
                               batch_size=cfg.batch_size, device=device)
    index = list(range(len(images)))

    def step():
        with autocast(device, execution.amp):
            value = loss(probe(x), targets(index, x))
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

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


def speed_line(cloner: Cloner, source: Source, cfg: MKDConfig, execution: Execution, loss: MKDLoss,
               epochs_left: int, train: Dataset, device: str) -> str:
    """plan_text of a run about to train `epochs_left` epochs on `train`, at the speed measured here."""
    cached = execution.cache_features and getattr(train, "deterministic", True)
    img_s = measure_speed(cloner, source, cfg, execution, loss, cached=cached, device=device)
    return plan_text(epochs_left, len(train), img_s)


def _train_listing(spec: RunSpec) -> Dataset:
    """A run's training split from the file listing (images not decoded, no cache built)."""
    cfg = spec.mkd_config()
    return load_data(spec, replace(cfg, extra={**cfg.extra, "cache": False}), split="train")


def recorded(specs: Iterable[RunSpec], root: str | Path) -> list[RunResult]:
    """The specs' runs as the records in `root` hold them, never training one: finished runs read back; the
    others as failed results saying why, as a run would: the data is absent (DatasetNotFoundError, its
    message), or there is no finished record of it ("NotRun"). For reading committed records only."""
    out = []
    for result in finished_runs(specs, root):
        if not result.ok:
            spec = result.spec
            try:
                _train_listing(spec)
            except DatasetNotFoundError as err:
                result = RunResult(spec, None, None, str(err), type(err).__name__)
            else:
                result = RunResult(spec, None, None, f"no finished record of {spec.key()} in {shown(root)} (records "
                                   "only: `mkd regenerate` with train=True trains it)", "NotRun")
        out.append(result)
    return out


def _speed_group(spec: RunSpec) -> tuple:
    """What the measured speed depends on: the fields measure_speed runs, the execution, and whether
    features are cached."""
    cfg, execution = spec.mkd_config(), spec.execution_config()
    return (*(getattr(cfg, f) for f in SPEED_FIELDS), execution, execution.cache_features and not cfg.augment)


def _runs(n: int) -> str:
    return f"{n} run" + "s" * (n != 1)


def _time(groups: dict[tuple, RunSpec], passes: dict[tuple, int], device: str) -> str:
    """'about 41 h on this CPU (measured 21 img/s; one run at a time)', one measurement per group: measure_speed
    with a random source, whose weights change nothing in the time a step takes."""
    speeds = {}
    for g, spec in groups.items():
        cfg = spec.mkd_config()
        source, cloner, loss = build(cfg, weights=None, device=check_device(device))
        speeds[g] = measure_speed(cloner, source, cfg, spec.execution_config(), loss, cached=g[-1], device=device)
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
        try:
            n = len(_train_listing(spec))
        except (OSError, ValueError):  # data not found or not readable here: the runs cell reports where it looked
            unknown.append(spec.label())
            continue
        try:  # a run interrupted at epoch e resumes there
            done = trained_epochs(root / spec.key() / "checkpoints")
        except CheckpointError:  # an unreadable last.pt counts as none trained (run() reports it)
            done = 0
        group = _speed_group(spec)
        groups.setdefault(group, spec)
        passes[group] = passes.get(group, 0) + max(0, spec.mkd_config().epochs - done) * n
    parts = [f"~{sum(passes.values()):,} image passes, {_time(groups, passes, device)}"] if groups else []
    if unknown:
        named = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        parts.append(f"size unknown for {len(unknown)} whose data was not found ({named})")
    head = f"{_runs(len(unique))}: {len(unique) - len(todo)} finished (cached), {len(todo)} to train"
    return f"{head}: " + "; ".join(parts)
