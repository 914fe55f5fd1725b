"""Runs: one (dataset, normal class, configuration, seed) trained, evaluated and cached on disk.

`run(spec, root)` writes `root/<spec.key()>/` (the layout is in rundir.py); a finished run is never
recomputed and an interrupted one resumes from its last checkpoint. `run_many` spreads specs over any
concurrent.futures Executor (a local process pool, or a Dask cluster through
`distributed.Client.get_executor()`).

Each run also stores a decision threshold for new images (predict.py): the 99th percentile of the
final cloner's scores on its own training images.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mkdlib.calibration import (CALIBRATION, DECISION, at_threshold, image_calibration, map_calibration, raw_maps,
                                shared_scale)
from mkdlib.config import MKDConfig
from mkdlib.datasets import get_dataset
from mkdlib.features import image_loader
from mkdlib.io_utils import atomic_write_text
from mkdlib.localization import GRADIENTS, SMOOTHGRAD, SMOOTHGRAD_REFERENCE, attribution_maps, finish_maps
from mkdlib.metrics import au_pro, paper_pixel_auroc, pixel_auroc
from mkdlib.models import Cloner, Source, weights_sha256
from mkdlib.rundir import (  # noqa: F401  (re-exported: mkdlib.experiment is the public entry point)
    ENV, ERROR, FORMAT_VERSION, HISTORY, LOCK, METRICS, NOBLUR_SUFFIX, SCORES, SPEC, CorruptMetrics, RunError,
    RunLock, RunResult, RunSpec, canonical_json, check_methods, environment, load_run, localization_variants,
    parse_method, read_metrics, read_spec, upgrade_root, write_json, write_spec)
from mkdlib.scoring import evaluate_checkpoints, score, score_loss
from mkdlib.train import (LAST, CheckpointError, build, cloner_path, fit, load_checkpoint, measure_speed,
                          missing_cloners, plan_text, restore_cloners, trained_epochs, write_history)

LONG_RUN_PASSES = 20_000  # runs with more image passes than this print their estimated time first
THRESHOLD_PERCENTILE = 99.0  # decision threshold: this percentile of the training images' scores
_BUILD_LOCK = threading.Lock()  # seeding + init use torch's global RNG: one run at a time per process


# ----------------------------------------------------------------------------------------- data

class Subset(Dataset):
    """Items `indices` of an mkdlib dataset, keeping labels / masks / deterministic; items of a
    deterministic dataset are kept in memory (the base is then built without its own cache)."""

    def __init__(self, base: Dataset, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(base.labels)[self.indices]
        self.has_masks = base.has_masks
        self.paths = [base.paths[i] for i in self.indices]
        self._items = [base[int(i)] for i in self.indices] if self.deterministic else None

    @property
    def deterministic(self) -> bool:
        return getattr(self.base, "deterministic", True)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = dict(self._items[i]) if self._items is not None else self.base[int(self.indices[i])]
        item["index"] = i
        return item

    @property
    def masks(self) -> np.ndarray | None:
        if not self.has_masks:
            return None
        return np.stack([self[i]["mask"][0].numpy() for i in range(len(self))]).astype(np.float32)


def _spread(idx: np.ndarray, k: int) -> np.ndarray:
    """k indices spread evenly over idx (deterministic, distinct for k <= len(idx))."""
    return idx[(np.arange(k) * len(idx)) // k] if k > 0 else idx[:0]


def subset_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """n indices spread over the data, normal and anomalous images in proportion, >= 1 of each."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
    if len(normal) == 0 or len(anomalous) == 0:
        return _spread(np.arange(len(labels)), n)
    n_anom = int(np.clip(round(n * len(anomalous) / len(labels)), 1, min(n - 1, len(anomalous))))
    n_norm = min(n - n_anom, len(normal))
    return np.sort(np.concatenate([_spread(normal, n_norm), _spread(anomalous, n - n_norm)]))


def load_data(spec: RunSpec, cfg: MKDConfig | None = None, *, split: str, augment: bool | None = None):
    """The (subset of the) train or test split a run uses."""
    cfg = cfg or spec.mkd_config()
    options = {**cfg.extra, **spec.dataset_options}
    options.pop("image_size", None)
    options.pop("augment", None)
    limit = spec.max_train if split == "train" else spec.max_test
    if limit is not None:
        options.setdefault("cache", False)  # the Subset keeps its own items
    augment = cfg.augment if augment is None else augment
    data = get_dataset(spec.dataset, spec.data_root, split=split, normal_class=spec.normal_class,
                       seed=spec.seed, image_size=cfg.image_size, augment=augment and split == "train",
                       **options)
    return data if limit is None else Subset(data, subset_indices(data.labels, limit))


# -------------------------------------------------------------------------------------- models

def build_models(spec: RunSpec, cfg: MKDConfig, device: str | torch.device, *, weights: str | Path | None = None):
    """Source, seeded cloner and loss (`train.build` seeds before the source too, so that a random
    source is the same in every process that resumes the run). weights: instead of spec.weights."""
    with _BUILD_LOCK:
        return build(cfg, weights=spec.weights if weights is None else str(weights), device=device)


def check_device(device: str | torch.device) -> torch.device:
    """The device, or a ValueError saying it is not available here (before any run is started)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} is not available here (no CUDA GPU visible to torch); "
                         "use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' is not available here; use --device cpu")
    return device


def _check_resume(ckpt_dir: Path, cloner: Cloner, cfg: MKDConfig) -> int:
    """Epochs already done; one-line errors for a corrupt or incompatible last checkpoint."""
    path = ckpt_dir / LAST
    if not path.is_file():
        return 0
    try:
        state = load_checkpoint(path)
    except RuntimeError as err:
        raise RunError(str(err)) from None
    if not isinstance(state, dict) or not {"cloner", "optimizer", "epoch", "history"} <= set(state):
        raise RunError(f"checkpoint {path} lacks fields this mkdlib needs (incompatible version); delete it")
    if state.get("config") is not None and not cfg.matches(canonical_json(state["config"])):
        raise RunError(f"checkpoint {path} was trained with another configuration; delete it or use another "
                       "results folder")
    try:
        cloner.load_state_dict(state["cloner"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise RunError(f"checkpoint {path} does not fit this cloner ({str(err).splitlines()[0]}); delete it") \
            from None
    return int(state["epoch"])


def load_final_cloner(cloner: Cloner, run_dir: Path, cfg: MKDConfig) -> Cloner:
    path = cloner_path(Path(run_dir) / "checkpoints", cfg.epochs)
    if not path.is_file():
        raise RunError(f"missing final cloner {path}: `mkd evaluate {run_dir}` recomputes a lost checkpoint "
                       "(the run's record alone, without checkpoints/, cannot be used on new images)")
    try:
        cloner.load_state_dict(load_checkpoint(path)["cloner"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise RunError(f"final cloner {path} is unusable ({str(err).splitlines()[0]}); delete that file and "
                       f"run `mkd evaluate {run_dir}`: only it is recomputed") from None
    return cloner.eval()


def check_weights(result: RunResult, source: Source) -> None:
    """Refuse a source whose weights differ from the ones the run was trained with: its scores would
    not match the run's threshold. Compared by SHA-256 where the run recorded one, else by path."""
    recorded, digest = result.metrics.get("weights"), result.metrics.get("weights_sha256")
    now = weights_sha256(source.weights)
    if digest and now and digest != now:
        raise RunError(f"{result.run_dir} was trained with source weights of sha256 {digest[:12]} "
                       f"({recorded}), but {source.weights} has sha256 {now[:12]}: pass --weights with the "
                       "file it was trained with")
    if not (digest and now) and recorded != source.weights:
        warnings.warn(f"the run was trained with source weights {recorded!r} but they now resolve to "
                      f"{source.weights!r} (no digest to compare): scores may not match its threshold",
                      stacklevel=3)


def load_model(run_dir: str | Path, *, device: str | torch.device = "cpu", weights: str | Path | None = None):
    """(RunResult, resolved config, source, final cloner) of a finished run, for new images.

    weights: the source weights file on this machine (default: as the run recorded them); refused
    when its SHA-256 differs from the run's."""
    result = load_run(run_dir)
    if result.metrics is None:
        raise RunError(result.error)
    cfg = result.spec.mkd_config()
    source, cloner, _ = build_models(result.spec, cfg, device, weights=weights)
    check_weights(result, source)
    return result, cfg, source, load_final_cloner(cloner, result.run_dir, cfg)


# ---------------------------------------------------------------------------------- evaluation

def pixel_metrics(source: Source, cloner: Cloner, cfg: MKDConfig, test: Dataset, methods: Iterable[str], *,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Pixel metrics of each localisation variant (localization_variants()) with this cloner on the
    test set (masks needed): the paper's pixel AUROC (anomalous images only), standard pixel AUROC
    and AU-PRO (all images). A method's raw maps are computed once for both its variants."""
    methods = check_methods(methods)
    masks, labels, loss, out = test.masks, np.asarray(test.labels), score_loss(cfg), {}
    variants: dict[str, list[tuple[str, bool]]] = {}  # method -> [(variant name, blur)]
    for name in methods:
        method, blur = parse_method(name)
        variants.setdefault(method, []).append((name, blur))
    for method, wanted in variants.items():
        gen = torch.Generator(torch.device(device)).manual_seed(seed) \
            if method in (SMOOTHGRAD, SMOOTHGRAD_REFERENCE) else None
        maps: dict[str, list[np.ndarray]] = {name: [] for name, _ in wanted}
        for x in tqdm(image_loader(test, 32), desc=f"localize {method}", disable=not progress, leave=False):
            raw = attribution_maps(x.to(device), source, cloner, loss, method=method, generator=gen).numpy()
            for name, blur in wanted:
                maps[name].append(finish_maps(raw, method, blur=blur))  # (B, H, W) in [0, 1]
        for name, _ in wanted:
            m = np.concatenate(maps.pop(name))  # (N, H, W)
            out[name] = {"paper_pixel_auroc": paper_pixel_auroc(masks, m, labels),
                         "pixel_auroc": pixel_auroc(masks, m), "au_pro": au_pro(masks, m)}
    return {name: out[name] for name in methods}


def add_localization(run_dir: str | Path, methods: Iterable[str], *, device: str | torch.device = "cpu",
                     progress: bool = True, weights: str | Path | None = None) -> RunResult:
    """Compute the pixel metrics of the localisation variants a finished run lacks and add them to its
    metrics.json (under the variant's name, e.g. "gradients-noblur")."""
    methods = check_methods(methods)
    result = load_run(run_dir)
    if result.metrics is None or not _missing_maps(result, methods):
        return result
    spec, cfg = result.spec, result.spec.mkd_config()
    test = load_data(spec, cfg, split="test")
    if not test.has_masks:
        raise ValueError(f"{spec.dataset} has no ground-truth masks: pixel metrics need them")
    with RunLock(result.run_dir, quiet=not progress):
        result = load_run(run_dir)  # a process we waited for may have stored some of them
        metrics, missing = result.metrics, _missing_maps(result, methods)
        if not missing:
            return result
        source, cloner, _ = build_models(spec, cfg, device, weights=weights)
        check_weights(result, source)
        load_final_cloner(cloner, result.run_dir, cfg)
        t0 = time.perf_counter()
        metrics.setdefault("pixel", {}).update(
            pixel_metrics(source, cloner, cfg, test, missing, seed=spec.seed, device=device, progress=progress))
        metrics["timing_s"][f"localize_{'+'.join(missing)}"] = round(time.perf_counter() - t0, 3)
        write_json(result.run_dir / METRICS, metrics)
    return load_run(run_dir)


def _missing_maps(result: RunResult, methods: Iterable[str]) -> list[str]:
    return [m for m in methods if m not in result.metrics.get("pixel", {})]


def _write_scores(path: Path, data: Dataset, scores: np.ndarray) -> None:
    table = pd.DataFrame({"index": np.arange(len(scores)), "path": list(data.paths),
                          "label": np.asarray(data.labels), "score": scores})
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ run

def run(spec: RunSpec, results_root: str | Path, *, device: str = "cpu", progress: bool = True,
        weights: str | Path | None = None) -> RunResult:
    """Train (or resume), evaluate and cache one run in results_root/<spec.key()>/.

    A finished run is returned as it is, with the maps spec.localization asks for added; a lost
    sampled cloner is recomputed and a corrupt metrics.json re-evaluated, nothing else. weights: where
    the source weights are on this machine (default spec.weights), checked against the run's record.

    metrics.json is written last, atomically: its presence marks a finished run, which is returned
    as it is. Raises the datasets' errors (e.g. DatasetNotFoundError) and RunError."""
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
            metrics = _train_and_evaluate(spec, cfg, models, train, test, run_dir, device, progress)
            metrics["timing_s"]["data"] = round(t_data, 3)
            write_json(run_dir / METRICS, metrics)
            (run_dir / ERROR).unlink(missing_ok=True)
            shutil.rmtree(run_dir / "checkpoints" / "features", ignore_errors=True)  # spilled feature cache
    return _cached(run_dir, spec, device, progress, weights)


@functools.lru_cache(maxsize=None)
def _upgrade_once(root: Path) -> None:
    """Rename a results folder's format-1 run directories to their keys (rundir.upgrade_root), once per
    folder and process."""
    upgrade_root(root)


@contextmanager
def _checkpoint_errors_as_run_errors():
    try:
        yield
    except CheckpointError as err:
        raise RunError(str(err)) from None


def _finished(spec: RunSpec, root: str) -> bool:
    """Whether spec's run is finished in root (its record usable as it is); False if it cannot tell."""
    try:
        return _complete(Path(root) / spec.key(), spec.mkd_config())
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
    if spec.localization and _missing_maps(result, spec.localization):
        result = add_localization(run_dir, spec.localization, device=device, progress=progress, weights=weights)
    return result


def finished_runs(specs: Iterable[RunSpec], results_root: str | Path) -> list[RunResult]:
    """The specs' finished runs in results_root, read as they are and never trained; the others as
    results with error_type "NotRun" (a table says "not run: ..."). For reading another profile's runs
    without starting hours of training."""
    root = Path(results_root).expanduser()
    _upgrade_once(root.resolve())
    out = []
    for spec in specs:
        run_dir = root / spec.key()
        if _complete(run_dir, spec.mkd_config()):
            out.append(load_run(run_dir))
        else:
            out.append(RunResult(spec, None, None, f"no finished run {spec.key()} in {root}", "NotRun"))
    return out


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
                        run_dir: Path, device: str, progress: bool) -> dict:
    ckpt = run_dir / "checkpoints"
    source, cloner, loss = models
    resumed_from = _check_resume(ckpt, cloner, cfg)
    left = cfg.epochs - resumed_from
    if progress and left * len(train) >= LONG_RUN_PASSES:  # say how long before hours are spent
        cached = cfg.cache_features and getattr(train, "deterministic", True)
        img_s = measure_speed(cloner, source, cfg, loss, cached=cached, device=device)
        print(f"mkdlib: {spec.label()}: {plan_text(left, len(train), img_s)}", file=sys.stderr)
    t0 = time.perf_counter()
    history = fit(cloner, source, train, cfg, loss, device=device, checkpoint_dir=ckpt, progress=progress)
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
    _write_scores(run_dir / SCORES, test, test_scores)
    calibration = {"image": image_calibration(train_scores.min(), threshold), "maps": {}}
    try:
        calibration["maps"][GRADIENTS] = map_calibration(fit_data, source, cloner, score_loss(cfg), GRADIENTS,
                                                         device=device, seed=spec.seed)
    except RunError as err:  # constant maps: no scale, but the trained run and its metrics still count
        print(f"mkdlib: {spec.label()}: no map calibration ({err})", file=sys.stderr)
    write_json(run_dir / CALIBRATION, calibration)
    decisions = threshold_metrics(np.asarray(test.labels), test_scores, threshold)
    if test.has_masks and GRADIENTS in calibration["maps"]:
        decisions["pixel"] = pixel_at_threshold(test, source, cloner, cfg, calibration["maps"][GRADIENTS],
                                                device=device, seed=spec.seed)
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


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Image-level decisions at the run's threshold on a labelled test set (metrics.json "at_threshold"):
    what a user of `mkd predict` gets, where AUROC only ranks."""
    return {"threshold": float(threshold), "image": at_threshold(np.asarray(scores) > threshold,
                                                                 np.asarray(labels) != 0)}


def pixel_at_threshold(test: Dataset, source: Source, cloner: Cloner, cfg: MKDConfig, map_cal: dict, *,
                       device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Pixel-level decisions of the gradients maps on the run's fixed scale (pixel > 0.5) against the
    test masks (> 0.5); the paper's pixel metrics, per-image normalised, are left as they are."""
    maps = shared_scale(raw_maps(test, source, cloner, score_loss(cfg), GRADIENTS, device=device, seed=seed),
                        map_cal)
    return {"method": GRADIENTS, "threshold": DECISION, **at_threshold(maps > DECISION, test.masks > 0.5)}


# ------------------------------------------------------------------------------------ many runs

def _run_one(spec: RunSpec, results_root: str, device: str, progress: bool) -> RunResult:
    """run() that never raises: the error becomes part of the result (and run_dir/error.txt)."""
    try:
        return run(spec, results_root, device=device, progress=progress)
    except Exception as err:  # one failing run must not stop the others
        run_dir = Path(results_root).expanduser() / spec.key()
        if run_dir.is_dir():
            try:
                atomic_write_text(run_dir / ERROR, traceback.format_exc())
            except OSError:
                pass
        return RunResult(spec, run_dir if run_dir.is_dir() else None, None, str(err) or repr(err),
                         type(err).__name__)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_many(specs: Iterable[RunSpec], results_root: str | Path, *, executor: Executor | None = None,
             workers: int | None = None, device: str = "cpu", progress: bool = True) -> list[RunResult]:
    """Run independent specs; results in the order of `specs`, failures as RunResult(error=...).

    executor: any concurrent.futures.Executor, e.g. `distributed.Client(...).get_executor()` for a
    Dask cluster (results_root must then be on a file system every worker sees). Without one:
    in-process and sequential, or a local pool of `workers` processes. Identical specs run once.
    """
    specs = [RunSpec.from_dict(s) if isinstance(s, dict) else s for s in specs]
    if executor is not None and workers is not None:
        raise ValueError("pass either executor= or workers=, not both")
    root = str(Path(results_root).expanduser())
    unique = list({s.key(): s for s in specs}.values())
    done: dict[str, RunResult] = {}
    bar = tqdm(total=len(unique), desc="runs", unit="run", disable=not progress)

    def record(spec: RunSpec, result: RunResult) -> None:
        done[spec.key()] = result
        if not result.ok:
            tqdm.write(f"mkdlib: run {spec.key()} ({spec.label()}) failed: {result.error_type}: {result.error}",
                       file=sys.stderr)
        bar.update(1)
        bar.set_postfix(failed=sum(not r.ok for r in done.values()))

    own_pool, local, remote = None, unique, []  # runs in this process / on the executor
    if executor is not None:
        local, remote = [], unique
    elif (workers or 1) > 1:
        # A pool only for the runs left to train (finished ones are read here), no larger than their number:
        # one run left trains in this process on every thread (README, "Speed": machine throughput).
        remote = [s for s in unique if not _finished(s, root)]
        if len(remote) > 1:
            local = [s for s in unique if s not in remote]
            workers = min(workers, len(remote))
            threads = max(1, (os.cpu_count() or 1) // workers)
            executor = own_pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                                      initializer=_init_worker, initargs=(threads,))
        else:
            remote = []
    try:
        for spec in local:
            record(spec, _run_one(spec, root, device, progress))
        if remote:
            futures = {executor.submit(_run_one, spec, root, device, False): spec for spec in remote}
            for future in as_completed(futures):
                spec = futures[future]
                try:
                    result = future.result()
                except Exception as err:  # the worker itself died (BrokenProcessPool, KilledWorker, ...)
                    result = RunResult(spec, None, None, str(err) or repr(err), type(err).__name__)
                record(spec, result)
    finally:
        bar.close()
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
    return [done[s.key()] for s in specs]
