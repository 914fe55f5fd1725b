"""Decisions at a finished run's threshold: its calibration (the threshold and score scale from its
training images, the maps' scale), computed when `predict` or `evaluate` first needs it and kept beside the
run, and the metrics at the threshold that `mkd evaluate` adds to a run. The rules are in calibration.py.

calibration.json is written with the SHA-256 of its own content and read back only when that digest matches
and its values are in range (min <= threshold, map scales > 0, finite numbers, an active threshold that
exists). A file edited by hand, or damaged into other valid JSON, is refused with one line naming it: it
would silently change every score. Files written before the digest existed are checked by their ranges only.
The format is described in docs/deployment.md, "The calibration file".
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mkdlib.calibration import CALIBRATION, DECISION, image_calibration, map_calibration
from mkdlib.config import MKDConfig
from mkdlib.datasets import DatasetNotFoundError
from mkdlib.io_utils import atomic_write_text
from mkdlib.localization import GRADIENTS
from mkdlib.models import Cloner, Source
from mkdlib.runs.evaluation import pixel_at_threshold, threshold_metrics
from mkdlib.runs.loading import final_cloner_file, load_data, load_model
from mkdlib.runs.spec import RunResult
from mkdlib.runs.store import METRICS, SCORES, RunError, load_run, read_json, run_lock, write_json
from mkdlib.scoring import score, score_loss

DIGEST = "sha256"  # the field holding the digest of the rest of the file
DEFAULT = "default"  # the name of the run's own threshold (calibration["image"]["threshold"])
ADVICE = ("delete it: it is recomputed from the run's training images (thresholds set with `mkd calibrate` "
          "are lost with it; set them again)")


def digest(cal: dict) -> str:
    """SHA-256 of the calibration's canonical JSON (sorted keys, no spaces, no NaN), the digest field left out.
    json writes each float's shortest round-trip repr, so a file read back hashes as it was written."""
    body = {k: v for k, v in cal.items() if k != DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def write_calibration(run_dir: str | Path, cal: dict) -> dict:
    """Store `cal` as run_dir/calibration.json (atomically) with its digest; returns it with the digest.
    The training scores are written on one line: a run has thousands, one per line would bury the rest."""
    check_values(cal, Path(run_dir) / CALIBRATION)  # never store what reading would refuse
    cal = {**{k: v for k, v in cal.items() if k != DIGEST}, DIGEST: digest(cal)}
    scores = cal.get("image", {}).get("train_scores")
    shown = {**cal, "image": {**cal["image"], "train_scores": "@train_scores@"}} if scores is not None else cal
    text = json.dumps(shown, indent=1, allow_nan=False)
    text = text.replace('"@train_scores@"', json.dumps(scores, separators=(",", ":")), 1)  # absent: no change
    atomic_write_text(Path(run_dir) / CALIBRATION, text + "\n")
    return cal


def read_calibration(run_dir: str | Path) -> dict:
    """run_dir/calibration.json checked (its digest, then its values), or {} for a run without one."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        return {}
    cal = read_json(path, ADVICE)
    try:
        changed = cal.get(DIGEST) is not None and cal[DIGEST] != digest(cal)
    except (TypeError, ValueError):  # NaN or values JSON cannot hold: not what mkdlib wrote
        changed = True
    if changed:
        raise RunError(f"{path} was changed after mkdlib wrote it (its content no longer matches the SHA-256 "
                       f"it holds); {ADVICE}")
    check_values(cal, path)
    return cal


def _number(value, what: str, path: Path, *, low: float | None = None, positive: bool = False) -> float:
    """`value` as a finite float (>= low, > 0 if positive), else RunError naming the field and the file."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (low is None or value >= low) and (not positive or value > 0)
    if not ok:
        bound = " > 0" if positive else f" >= {low:g}" if low is not None else ""
        raise RunError(f"{path} holds {what} = {value!r}, not a finite number{bound}; {ADVICE}")
    return float(value)


def check_values(cal: dict, path: Path) -> None:
    """Ranges and order of a calibration's values (RunError naming the first one out of range). Scores are
    MKD losses, >= 0; the map scale is 2 * (pixel_threshold - offset) > 0 (calibration.py)."""
    image = cal.get("image")
    if image is not None:
        if not isinstance(image, dict):
            raise RunError(f"{path} holds an \"image\" that is not an object; {ADVICE}")
        low = _number(image.get("min"), "image.min", path, low=0)
        if _number(image.get("threshold"), "image.threshold", path, low=0) < low:
            raise RunError(f"{path} holds image.threshold {image['threshold']!r} below image.min {low!r}; {ADVICE}")
        scores = image.get("train_scores")
        if scores is not None:
            if not isinstance(scores, list) or not scores:
                raise RunError(f"{path} holds image.train_scores that is not a list of scores; {ADVICE}")
            for s in scores:
                _number(s, "a training score", path, low=0)
    for method, m in (cal.get("maps") or {}).items():
        if not isinstance(m, dict):
            raise RunError(f"{path} holds maps.{method} that is not an object; {ADVICE}")
        offset = _number(m.get("offset"), f"maps.{method}.offset", path)
        scale = _number(m.get("scale"), f"maps.{method}.scale", path, positive=True)
        pixel = _number(m.get("pixel_threshold", offset + DECISION * scale), f"maps.{method}.pixel_threshold", path)
        if not math.isclose(scale, (pixel - offset) / DECISION, rel_tol=1e-6):
            raise RunError(f"{path} holds maps.{method}.scale {scale!r}, not 2 * (pixel_threshold - offset) = "
                           f"{(pixel - offset) / DECISION!r}; {ADVICE}")
    versions = cal.get("thresholds", {})
    if not isinstance(versions, dict):
        raise RunError(f"{path} holds \"thresholds\" that is not an object; {ADVICE}")
    for name, entry in versions.items():
        if name == DEFAULT or not isinstance(entry, dict):
            raise RunError(f"{path} holds a threshold named {name!r} that is not a threshold entry; {ADVICE}")
        _number(entry.get("threshold"), f"thresholds.{name}.threshold", path, low=0)
        for key in ("f1", "precision", "recall"):
            if _number(entry.get(key), f"thresholds.{name}.{key}", path, low=0) > 1:
                raise RunError(f"{path} holds thresholds.{name}.{key} = {entry[key]!r} above 1; {ADVICE}")
        for key in ("n_good", "n_anomalous"):
            _number(entry.get(key), f"thresholds.{name}.{key}", path, low=1)
        if not isinstance(entry.get("created"), str):
            raise RunError(f"{path} holds a threshold {name!r} without its creation time; {ADVICE}")
    active = cal.get("active", DEFAULT)
    if active != DEFAULT and active not in versions:
        raise RunError(f"{path} makes {active!r} the active threshold but holds no such threshold; {ADVICE}")


def run_calibration(result: RunResult, source: Source, cloner: Cloner, cfg: MKDConfig, method: str | None = GRADIENTS,
                    *, device: str | torch.device = "cpu", scores: bool = False) -> dict:
    """The run's calibration with `method`'s map scale (None: the image scores' only) and, with `scores`, the
    final cloner's scores of the training images. What is missing (a new run, another method, the scores of a
    run calibrated before they were kept) is computed from the run's training images and the final cloner,
    and stored atomically under the run's lock."""
    def complete(cal: dict) -> bool:
        return ("image" in cal and (method is None or method in cal.get("maps", {}))
                and (not scores or "train_scores" in cal["image"]))

    cal = read_calibration(result.run_dir)
    if complete(cal):
        return cal
    with run_lock(result.run_dir, quiet=True):
        cal = read_calibration(result.run_dir)  # another process may have stored it meanwhile
        if complete(cal):
            return cal
        train = _training_images(result, cfg)
        if "image" not in cal:
            cal["image"] = _image_calibration(result, train, source, cloner, cfg, device)
        if scores and "train_scores" not in cal["image"]:
            cal["image"]["train_scores"] = compact(score(cloner, score_loss(cfg), train, source=source,
                                                         batch_size=cfg.batch_size, device=device))
        if method is not None and method not in cal.setdefault("maps", {}):
            cal["maps"][method] = map_calibration(train, source, cloner, score_loss(cfg), method, device=device,
                                                  seed=result.spec.seed)
        return write_calibration(result.run_dir, cal)


def training_scores(result: RunResult, source: Source, cloner: Cloner, cfg: MKDConfig, *,
                    device: str | torch.device = "cpu") -> np.ndarray:
    """The final cloner's scores of the run's training images (for a threshold at another percentile), kept in
    calibration.json["image"]["train_scores"]: computed from the images once, read back afterwards."""
    cal = run_calibration(result, source, cloner, cfg, None, device=device, scores=True)
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
    with run_lock(result.run_dir, quiet=True):
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
