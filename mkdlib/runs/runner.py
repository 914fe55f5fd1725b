"""Runs: one (dataset, normal class, configuration, seed) trained, evaluated and cached on disk.

`run(spec, root)` writes `root/<spec.key()>/` (the layout is in store.py); a finished run is never
recomputed and an interrupted one resumes from its last checkpoint (`executors.run_many` runs many).
Damaged runs are mended, not deleted: a lost sampled cloner is recomputed alone (`restore_cloners`), a
corrupt metrics.json is kept aside and the run re-evaluated from its checkpoints (`set_aside_corrupt_metrics`).
What only new images need (the decision threshold, the maps' scale: calibration.py) is computed when
`predict` or `evaluate` first asks for it (decisions.py), not here.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from mkdlib.checkpoints import (LAST, CheckpointError, cloner_path, load_checkpoint, missing_cloners, read_last,
                                save_checkpoint, trained_epochs, write_history)
from mkdlib.config import Execution, MKDConfig
from mkdlib.io_utils import atomic_write_text
from mkdlib.localization import check_methods
from mkdlib.losses import MKDLoss
from mkdlib.models import Cloner, Source
from mkdlib.runs.evaluation import add_localization, missing_maps, write_scores
from mkdlib.runs.loading import build_models, check_device, keep_final_cloner, load_data, load_final_cloner
from mkdlib.runs.planning import speed_line
from mkdlib.runs.spec import RunResult, RunSpec
from mkdlib.runs.store import (ERROR, HISTORY, METRICS, SCORES, SPEC, CorruptMetrics, RunError, check_folder, complete,
                               load_run, read_metrics, read_spec, run_lock, upgrade_once, write_environment, write_json,
                               write_spec)
from mkdlib.scoring import evaluate_checkpoints, pixel_metrics
from mkdlib.train import fit
from mkdlib.weights import weights_sha256

LONG_RUN_PASSES = 20_000  # runs with more image passes than this print their estimated time first


def run(spec: RunSpec, results_root: str | Path, *, device: str = "cpu", progress: bool = True,
        weights: str | Path | None = None, on_epoch_end=None) -> RunResult:
    """Train (or resume), evaluate and cache one run in results_root/<spec.key()>/.

    A finished run is returned as it is, with the maps spec.localization asks for added; a lost
    sampled cloner is recomputed and a corrupt metrics.json re-evaluated, nothing else. weights: where
    the source weights are on this machine (default spec.weights), checked against the run's record.
    on_epoch_end(epoch, cloner): called after each training epoch (train.fit), e.g. to keep more cloners.

    metrics.json is written last, atomically: its presence marks a finished run. A run that fails
    leaves error.txt (removed when it finishes). Raises the datasets' errors (e.g. DatasetNotFoundError)
    and RunError."""
    if isinstance(spec, dict):
        spec = RunSpec.from_dict(spec)
    upgrade_once(check_folder(results_root).resolve())
    run_dir = Path(results_root).expanduser() / spec.key()
    cfg = spec.mkd_config()
    if complete(run_dir, cfg):  # read as it is, whatever precision computed it
        return _cached(run_dir, spec, device, progress, weights)
    execution = spec.execution_config().check(device)  # spec.json records what a run started with
    check_device(device)
    t0 = time.perf_counter()
    train, test = load_data(spec, cfg, split="train"), load_data(spec, cfg, split="test")  # fail before any write
    if spec.localization and not test.has_masks:
        raise ValueError(f"{spec.label()}: localization {list(spec.localization)} needs ground-truth masks, "
                         f"and {spec.dataset} has none; drop the localization methods")
    t_data = time.perf_counter() - t0
    models = build_models(spec, cfg, device, weights=weights)  # unusable weights fail here, before any write
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir, quiet=not progress), _failures_recorded(run_dir):
        if not complete(run_dir, cfg):  # else another process finished it while we waited
            write_spec(run_dir, spec, cfg, execution)
            set_aside_corrupt_metrics(run_dir)
            new_cloner = lambda: build_models(spec, cfg, device, weights=weights)[1]  # noqa: E731
            restore_cloners(new_cloner, models[0], train, cfg, execution, models[2], run_dir / "checkpoints",
                            device=device, progress=progress)
        if not (run_dir / METRICS).is_file():
            write_environment(run_dir, device)
            metrics = _train_and_evaluate(spec, cfg, execution, models, train, test, run_dir, device, progress,
                                          on_epoch_end)
            metrics["timing_s"]["data"] = round(t_data, 3)
            write_json(run_dir / METRICS, metrics)
            (run_dir / ERROR).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints" / "features", ignore_errors=True)  # spilled feature cache
    return _cached(run_dir, spec, device, progress, weights)


@contextmanager
def _failures_recorded(run_dir: Path):
    """An exception in an unfinished run leaves run_dir/error.txt (the error on its first line, then its
    traceback: `mkd runs` lists the run as failed, with its first line); a checkpoint's error becomes a RunError.
    A finished run is not failed: a problem mending it (e.g. an unreadable last.pt) is raised, no error.txt."""
    try:
        yield
    except BaseException as err:
        if not isinstance(err, KeyboardInterrupt) and not (run_dir / METRICS).is_file():
            try:
                atomic_write_text(run_dir / ERROR, f"{type(err).__name__}: {' '.join(str(err).split())}\n\n"
                                                   f"{traceback.format_exc()}")
            except OSError:
                pass
        if isinstance(err, CheckpointError):
            raise RunError(str(err)) from None
        raise


def _cached(run_dir: Path, spec: RunSpec, device: str, progress: bool, weights=None) -> RunResult:
    """The finished run, with the localisation maps spec asks for added if it lacks them."""
    result = load_run(run_dir)
    if result.spec.key() != spec.key():  # execution settings may differ: the same experiment
        raise RunError(f"{run_dir} holds a different run ({result.spec.label()}); use another results folder")
    if spec.localization and missing_maps(result, spec.localization):
        result = add_localization(run_dir, spec.localization, device=device, progress=progress, weights=weights)
    return result


def evaluate(run_dir: str | Path, methods=(), *, device: str = "cpu", progress: bool = True,
             weights: str | Path | None = None) -> RunResult:
    """A trained run's metrics, mended where needed: a corrupt metrics.json re-evaluated, a lost sampled
    cloner recomputed, the localisation `methods` it lacks added. An unfinished run is an error."""
    run_dir = Path(run_dir).expanduser()
    spec, _ = read_spec(run_dir) if (run_dir / SPEC).is_file() else (load_run(run_dir).spec, None)
    cfg = spec.mkd_config()
    if run_dir.name != spec.key():
        raise RunError(f"{run_dir} is not named by its key {spec.key()}: move it back to <results>/{spec.key()}")
    if not (run_dir / METRICS).is_file() and trained_epochs(run_dir / "checkpoints") < cfg.epochs:
        raise RunError(f"run not finished ({run_dir}); finish it with `mkd train` (same arguments)")
    return run(replace(spec, localization=check_methods(methods)), run_dir.parent, device=device,
               progress=progress, weights=weights)


def _train_and_evaluate(spec: RunSpec, cfg: MKDConfig, execution: Execution, models: tuple, train: Dataset,
                        test: Dataset, run_dir: Path, device: str, progress: bool, on_epoch_end=None) -> dict:
    ckpt = run_dir / "checkpoints"
    source, cloner, loss = models
    state = read_last(ckpt, cloner, cfg)  # checked before any time is spent; run() makes its errors RunErrors
    resumed_from = int(state["epoch"]) if state is not None else 0
    left = cfg.epochs - resumed_from
    if progress and left * len(train) >= LONG_RUN_PASSES:  # say how long before hours are spent
        print(f"mkdlib: {spec.label()}: {speed_line(cloner, source, cfg, execution, loss, left, train, device)}",
              file=sys.stderr)
    t0 = time.perf_counter()
    history = fit(cloner, source, train, cfg, loss, execution=execution, device=device, checkpoint_dir=ckpt,
                  progress=progress, on_epoch_end=on_epoch_end)
    t_train = time.perf_counter() - t0
    write_history(history, run_dir / HISTORY)

    t0 = time.perf_counter()
    image = evaluate_checkpoints(cloner, source, test, cfg, ckpt, execution=execution, device=device,
                                 progress=progress)
    write_scores(run_dir / SCORES, spec, test, image.pop("scores"))
    t_eval = time.perf_counter() - t0

    t0 = time.perf_counter()
    pixel = {}
    if spec.localization and test.has_masks:
        load_final_cloner(cloner, run_dir, cfg)
        pixel = pixel_metrics(source, cloner, cfg, test, spec.localization, seed=spec.seed, device=device,
                              progress=progress)
    t_loc = time.perf_counter() - t0
    return keep_final_cloner(run_dir, cfg, {
        "image_auroc": image,
        "pixel": pixel,
        "n_train": len(train), "n_test": len(test), "n_test_anomalous": int(np.asarray(test.labels).sum()),
        "epochs": cfg.epochs, "resumed_from_epoch": resumed_from,
        "timing_s": {"train": round(t_train, 3), "evaluate": round(t_eval, 3), "localize": round(t_loc, 3),
                     "train_epochs_total": round(sum(h["seconds"] for h in history), 3)},  # all sessions
        "config": cfg.to_dict(),
        "execution": execution.to_dict(),
        "weights": source.weights,
        "weights_sha256": weights_sha256(source.weights),
        "device": str(device),
    })


def restore_cloners(new_cloner: Callable[[], Cloner], source: Source, data: Dataset, cfg: MKDConfig,
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
