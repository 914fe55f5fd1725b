"""Decisions at a finished run's threshold: its calibration (the threshold and score scale from its
training images, the maps' scale), computed when `predict` or `evaluate` first needs it and kept beside the
run, and the metrics at the threshold that `mkd evaluate` adds to a run. The rules are in calibration.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mkdlib.calibration import CALIBRATION, image_calibration, map_calibration
from mkdlib.calibration_file import read_calibration, write_calibration
from mkdlib.config import MKDConfig
from mkdlib.datasets import DatasetNotFoundError
from mkdlib.localization import GRADIENTS
from mkdlib.models import Cloner, Source
from mkdlib.runs.evaluation import pixel_at_threshold, threshold_metrics
from mkdlib.runs.loading import final_cloner_file, load_data, load_model
from mkdlib.runs.spec import RunResult
from mkdlib.runs.store import METRICS, SCORES, RunError, RunLock, load_run, write_json
from mkdlib.scoring import score, score_loss


def run_calibration(result: RunResult, source: Source, cloner: Cloner, cfg: MKDConfig,
                    method: str | None = GRADIENTS, *, device: str | torch.device = "cpu") -> dict:
    """The run's calibration with `method`'s map scale (None: the image scores' only). What is missing
    (a new run, or another method) is computed from the run's training images and the final cloner, and
    stored atomically under the run's lock."""
    cal = read_calibration(result.run_dir)
    if "image" in cal and (method is None or method in cal.get("maps", {})):
        return cal
    with RunLock(result.run_dir, quiet=True):
        cal = read_calibration(result.run_dir)  # another process may have stored it meanwhile
        train = None
        if "image" not in cal:
            train = _training_images(result, cfg)
            cal["image"] = _image_calibration(result, train, source, cloner, cfg, device)
        if method is not None and method not in cal.setdefault("maps", {}):
            if train is None:
                train = _training_images(result, cfg)
            cal["maps"][method] = map_calibration(train, source, cloner, score_loss(cfg), method, device=device,
                                                  seed=result.spec.seed)
        return write_calibration(result.run_dir, cal)


def training_scores(result: RunResult, source: Source, cloner: Cloner, cfg: MKDConfig, *,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """The final cloner's scores of the run's training images (for a threshold at another percentile), kept in
    calibration.json["image"]["train_scores"]: computed from the images once, read back afterwards."""
    cal = run_calibration(result, source, cloner, cfg, None, device=device)
    if "train_scores" not in cal["image"]:
        with RunLock(result.run_dir, quiet=True):
            cal = read_calibration(result.run_dir)
            if "train_scores" not in cal["image"]:
                scores = score(cloner, score_loss(cfg), _training_images(result, cfg), source=source,
                               batch_size=cfg.batch_size, device=device)
                cal["image"]["train_scores"] = compact(scores)
                cal = write_calibration(result.run_dir, cal)
    # read back through float32: the very scores computed, so percentile 99 gives the default threshold exactly
    return np.asarray(cal["image"]["train_scores"], dtype=np.float32).astype(np.float64)


def compact(scores) -> list[float]:
    """Scores (float32 from the networks) as the shortest decimals that read back through float32 as the same
    scores (numpy's float32 repr: 9 significant digits at most, about half of float64's)."""
    return [float(str(s)) for s in np.asarray(scores, dtype=np.float32)]


def _training_images(result: RunResult, cfg: MKDConfig):
    """The run's training images (not augmented), or a RunError saying why a calibration needs them."""
    try:
        return load_data(result.spec, cfg, split="train", augment=False)
    except DatasetNotFoundError as err:
        raise RunError(f"{result.run_dir / CALIBRATION} lacks the calibration this needs, which is computed "
                       f"from the run's training images, and they are not here ({' '.join(str(err).split())}); "
                       f"run the command once where the data is, or copy {CALIBRATION} from there") from None


def _image_calibration(result: RunResult, train, source: Source, cloner: Cloner, cfg: MKDConfig, device) -> dict:
    """The image scores' threshold and scale: recorded in metrics.json by runs made before 2026-12, else
    from the final cloner's scores on the training images (calibration.image_calibration)."""
    recorded, low = result.metrics.get("threshold"), result.metrics.get("train_scores", {}).get("min")
    if recorded is not None and low is not None:  # their recorded minimum stands for the scores
        return image_calibration([low], threshold=recorded)
    scores = score(cloner, score_loss(cfg), train, source=source, batch_size=cfg.batch_size, device=device)
    return {**image_calibration(scores, threshold=recorded), "train_scores": compact(scores)}


def add_threshold_metrics(run_dir: str | Path, *, device: str | torch.device = "cpu",
                          weights: str | Path | None = None) -> RunResult:
    """Add metrics.json "at_threshold" to a finished run lacking it: image level from scores.csv at the
    run's threshold (its calibration, computed first where the final cloner is here), and pixel level where
    the test set has masks. A record with neither its final cloner nor a threshold is returned as it is."""
    result = load_run(run_dir)
    if result.metrics is None:
        raise RunError(result.error)
    if "at_threshold" in result.metrics:
        return result
    cfg = result.spec.mkd_config()
    pixel, threshold = None, read_calibration(result.run_dir).get("image", {}).get("threshold")
    if final_cloner_file(result.run_dir, cfg) is not None:
        result, cfg, source, cloner = load_model(run_dir, device=device, weights=weights)
        test = load_data(result.spec, cfg, split="test")
        cal = run_calibration(result, source, cloner, cfg, GRADIENTS if test.has_masks else None, device=device)
        threshold = cal["image"]["threshold"]
        if test.has_masks:
            pixel = pixel_at_threshold(test, source, cloner, cfg, cal["maps"][GRADIENTS], device=device,
                                       seed=result.spec.seed)
    threshold = result.metrics.get("threshold", threshold)  # runs made before 2026-12 recorded theirs
    if threshold is None:
        return result
    with RunLock(result.run_dir, quiet=True):
        result = load_run(run_dir)
        if "at_threshold" not in result.metrics:
            scores = _read_scores(result.run_dir / SCORES)
            decisions = threshold_metrics(scores["label"], scores["score"], threshold)
            if pixel is not None:
                decisions["pixel"] = pixel
            result.metrics["at_threshold"] = decisions
            write_json(result.run_dir / METRICS, result.metrics)
    return load_run(run_dir)


def _read_scores(path: Path) -> pd.DataFrame:
    """scores.csv (the final cloner's test scores, with labels); RunError saying how to rebuild it."""
    try:
        table = pd.read_csv(path)
        if not {"label", "score"} <= set(table.columns) or table["score"].isna().any():
            raise ValueError("missing label or score values")
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise RunError(f"{path} is unreadable or incomplete ({type(err).__name__}); delete the run's "
                       f"{METRICS} and run `mkd evaluate {path.parent}` to re-evaluate it") from None
    return table
