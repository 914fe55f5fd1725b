"""Runs: one (dataset, normal class, configuration, seed) trained, evaluated and cached on disk.

`run(spec, root)` writes `root/<spec.key()>/` (the layout is in store.py); a finished run is never
recomputed and an interrupted one resumes from its last checkpoint (`executors.run_many` runs many).
`finished_runs` reads runs without ever training them.

Each run also stores a decision threshold for new images (predict.py): the 99th percentile of the
final cloner's scores on its own training images.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mkdlib.calibration import CALIBRATION, ConstantMapsError, image_calibration, map_calibration
from mkdlib.checkpoints import CheckpointError, missing_cloners, read_last, trained_epochs, write_history
from mkdlib.config import MKDConfig
from mkdlib.localization import GRADIENTS, check_methods
from mkdlib.runs.evaluation import add_localization, missing_maps, pixel_at_threshold, threshold_metrics, write_scores
from mkdlib.runs.loading import build_models, check_device, load_data, load_final_cloner
from mkdlib.runs.spec import RunResult, RunSpec
from mkdlib.runs.store import (ENV, ERROR, HISTORY, METRICS, SCORES, SPEC, CorruptMetrics, RunError, RunLock,
                               environment, load_run, read_metrics, read_spec, upgrade_root, write_json, write_spec)
from mkdlib.scoring import evaluate_checkpoints, pixel_metrics, score, score_loss
from mkdlib.train import fit, measure_speed, plan_text, restore_cloners
from mkdlib.weights import weights_sha256

LONG_RUN_PASSES = 20_000  # runs with more image passes than this print their estimated time first
THRESHOLD_PERCENTILE = 99.0  # decision threshold: this percentile of the training images' scores


# ------------------------------------------------------------------------------------------ run

def run(spec: RunSpec, results_root: str | Path, *, device: str = "cpu", progress: bool = True,
        weights: str | Path | None = None, on_epoch_end=None) -> RunResult:
    """Train (or resume), evaluate and cache one run in results_root/<spec.key()>/.

    A finished run is returned as it is, with the maps spec.localization asks for added; a lost
    sampled cloner is recomputed and a corrupt metrics.json re-evaluated, nothing else. weights: where
    the source weights are on this machine (default spec.weights), checked against the run's record.

    metrics.json is written last, atomically: its presence marks a finished run, which is returned
    as it is. on_epoch_end(epoch, cloner): called after each training epoch (train.fit), e.g. to keep
    more cloners for a curve over epochs. Raises the datasets' errors (e.g. DatasetNotFoundError) and RunError."""
    if isinstance(spec, dict):
        spec = RunSpec.from_dict(spec)
    _upgrade_once(Path(results_root).expanduser().resolve())
    run_dir = Path(results_root).expanduser() / spec.key()
    cfg = spec.mkd_config()
    if _complete(run_dir, cfg):  # read as it is, whatever precision computed it
        return _cached(run_dir, spec, device, progress, weights)
    cfg = cfg.resolve(device)  # spec.json records the precision and layout a run started with
    check_device(device)
    t0 = time.perf_counter()
    train, test = load_data(spec, cfg, split="train"), load_data(spec, cfg, split="test")  # fail before any write
    if spec.localization and not test.has_masks:
        raise ValueError(f"{spec.label()}: localization {list(spec.localization)} needs ground-truth masks, "
                         f"and {spec.dataset} has none; drop the localization methods")
    t_data = time.perf_counter() - t0
    models = build_models(spec, cfg, device, weights=weights)  # unusable weights fail here, before any write
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, quiet=not progress), _checkpoint_errors_as_run_errors():
        if not _complete(run_dir, cfg):  # else another process finished it while we waited
            write_spec(run_dir, spec, cfg)
            _set_aside_corrupt_metrics(run_dir)
            new_cloner = lambda: build_models(spec, cfg, device, weights=weights)[1]  # noqa: E731
            restore_cloners(new_cloner, models[0], train, cfg, models[2], run_dir / "checkpoints", device=device,
                            progress=progress)
        if not (run_dir / METRICS).is_file():
            write_json(run_dir / ENV, environment(device))
            metrics = _train_and_evaluate(spec, cfg, models, train, test, run_dir, device, progress, on_epoch_end)
            metrics["timing_s"]["data"] = round(t_data, 3)
            write_json(run_dir / METRICS, metrics)
            (run_dir / ERROR).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints" / "features", ignore_errors=True)  # spilled feature cache
    return _cached(run_dir, spec, device, progress, weights)


@functools.lru_cache(maxsize=None)
def _upgrade_once(root: Path) -> None:
    """Rename a results folder's format-1 run directories to their keys (store.upgrade_root), once per
    folder and process."""
    upgrade_root(root)


@contextmanager
def _checkpoint_errors_as_run_errors():
    try:
        yield
    except CheckpointError as err:
        raise RunError(str(err)) from None


def is_finished(spec: RunSpec, root: str | Path) -> bool:
    """Whether spec's run is finished in root (its record usable as it is); False if it cannot tell."""
    try:
        return _complete(Path(root).expanduser() / spec.key(), spec.mkd_config())
    except ValueError:
        return False


def _complete(run_dir: Path, cfg: MKDConfig) -> bool:
    """A finished run whose record is usable as it is: readable metrics.json, no lost sampled cloner
    (a record without checkpoints/, as committed, has none to lose)."""
    if not (run_dir / METRICS).is_file():
        return False
    try:
        read_metrics(run_dir)
        return not missing_cloners(run_dir / "checkpoints", cfg)
    except (RunError, RuntimeError):
        return False  # corrupt metrics are re-evaluated; an unreadable last.pt is reported by run()


def _set_aside_corrupt_metrics(run_dir: Path) -> None:
    """A corrupt metrics.json is renamed (kept for inspection), so that the run is re-evaluated."""
    try:
        if (run_dir / METRICS).is_file():
            read_metrics(run_dir)
    except CorruptMetrics as err:
        aside = run_dir / f"{METRICS}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}"
        os.replace(run_dir / METRICS, aside)
        print(f"mkdlib: {err}; kept as {aside.name}, re-evaluating from the checkpoints", file=sys.stderr)


def _cached(run_dir: Path, spec: RunSpec, device: str, progress: bool, weights=None) -> RunResult:
    """The finished run, with the localisation maps spec asks for added if it lacks them."""
    result = load_run(run_dir)
    if result.spec.key() != spec.key():  # execution settings may differ: the same experiment
        raise RunError(f"{run_dir} holds a different run ({result.spec.label()}); use another results folder")
    if spec.localization and missing_maps(result, spec.localization):
        result = add_localization(run_dir, spec.localization, device=device, progress=progress, weights=weights)
    return result


def finished_runs(specs: Iterable[RunSpec], results_root: str | Path) -> list[RunResult]:
    """The specs' finished runs in results_root, read as they are and never trained; the others as
    results with error_type "NotRun" (a table says "not run: ..."). For reading another profile's runs
    without starting hours of training."""
    root = Path(results_root).expanduser()
    _upgrade_once(root.resolve())
    return [load_run(root / spec.key()) if is_finished(spec, root) else
            RunResult(spec, None, None, f"no finished run {spec.key()} in {root}", "NotRun") for spec in specs]


def evaluate(run_dir: str | Path, methods: Iterable[str] = (), *, device: str = "cpu", progress: bool = True,
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


def _train_and_evaluate(spec: RunSpec, cfg: MKDConfig, models: tuple, train: Dataset, test: Dataset,
                        run_dir: Path, device: str, progress: bool, on_epoch_end=None) -> dict:
    ckpt = run_dir / "checkpoints"
    source, cloner, loss = models
    state = read_last(ckpt, cloner, cfg)  # checked before any time is spent; run() makes its errors RunErrors
    resumed_from = int(state["epoch"]) if state is not None else 0
    left = cfg.epochs - resumed_from
    if progress and left * len(train) >= LONG_RUN_PASSES:  # say how long before hours are spent
        cached = cfg.cache_features and getattr(train, "deterministic", True)
        img_s = measure_speed(cloner, source, cfg, loss, cached=cached, device=device)
        print(f"mkdlib: {spec.label()}: {plan_text(left, len(train), img_s)}", file=sys.stderr)
    t0 = time.perf_counter()
    history = fit(cloner, source, train, cfg, loss, device=device, checkpoint_dir=ckpt, progress=progress,
                  on_epoch_end=on_epoch_end)
    t_train = time.perf_counter() - t0
    write_history(history, run_dir / HISTORY)

    t0 = time.perf_counter()
    try:
        image = evaluate_checkpoints(cloner, source, test, cfg, ckpt, device=device, progress=progress)
    except RuntimeError as err:  # an unreadable sampled cloner: load_checkpoint's one-line message
        raise RunError(str(err)) from None
    test_scores = image.pop("scores")
    load_final_cloner(cloner, run_dir, cfg)
    fit_data = train if getattr(train, "deterministic", True) else \
        load_data(spec, cfg, split="train", augment=False)  # threshold on the images, not augmented copies
    train_scores = score(cloner, score_loss(cfg), fit_data, source=source, batch_size=cfg.batch_size,
                         device=device, amp=cfg.inference_bf16, channels_last=cfg.channels_last)
    threshold = float(np.percentile(train_scores, THRESHOLD_PERCENTILE))
    write_scores(run_dir / SCORES, test, test_scores)
    decisions = _calibrate(spec, cfg, (source, cloner), fit_data, test, test_scores, train_scores.min(), threshold,
                           run_dir, device)
    t_eval = time.perf_counter() - t0

    t0 = time.perf_counter()
    pixel = {}
    if spec.localization and test.has_masks:
        pixel = pixel_metrics(source, cloner, cfg, test, spec.localization, seed=spec.seed, device=device,
                              progress=progress)
    t_loc = time.perf_counter() - t0
    labels = np.asarray(test.labels)
    return {
        "image_auroc": image,
        "pixel": pixel,
        "threshold": threshold,
        "at_threshold": decisions,
        "threshold_rule": f"percentile {THRESHOLD_PERCENTILE:g} of the final cloner's scores on the training "
                          "images",
        "train_scores": {"min": float(train_scores.min()), "median": float(np.median(train_scores)),
                         "max": float(train_scores.max())},
        "n_train": len(train), "n_test": len(test), "n_test_anomalous": int(labels.sum()),
        "epochs": cfg.epochs, "resumed_from_epoch": resumed_from,
        "timing_s": {"train": round(t_train, 3), "evaluate": round(t_eval, 3), "localize": round(t_loc, 3),
                     "train_epochs_total": round(sum(h["seconds"] for h in history), 3)},  # all sessions
        "config": cfg.to_dict(),
        "weights": source.weights,
        "weights_sha256": weights_sha256(source.weights),
        "device": str(device),
    }


def _calibrate(spec: RunSpec, cfg: MKDConfig, models: tuple, fit_data: Dataset, test: Dataset,
               test_scores: np.ndarray, train_min: float, threshold: float, run_dir: Path, device: str) -> dict:
    """Write the run's calibration.json (the image score scale and the gradient maps' fixed scale) and
    return the test set's decisions at the threshold (metrics.json "at_threshold")."""
    source, cloner = models
    calibration = {"image": image_calibration(train_min, threshold), "maps": {}}
    try:
        calibration["maps"][GRADIENTS] = map_calibration(fit_data, source, cloner, score_loss(cfg), GRADIENTS,
                                                         device=device, seed=spec.seed)
    except ConstantMapsError as err:  # no scale, but the trained run and its metrics still count
        print(f"mkdlib: {spec.label()}: no map calibration ({err})", file=sys.stderr)
    write_json(run_dir / CALIBRATION, calibration)
    decisions = threshold_metrics(np.asarray(test.labels), test_scores, threshold)
    if test.has_masks and GRADIENTS in calibration["maps"]:
        decisions["pixel"] = pixel_at_threshold(test, source, cloner, cfg, calibration["maps"][GRADIENTS],
                                                device=device, seed=spec.seed)
    return decisions
