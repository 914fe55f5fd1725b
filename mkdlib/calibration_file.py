"""A run's calibration.json on disk: written with the SHA-256 of its own content, read back only when that
digest matches and its values are in range (min <= threshold, map scales > 0, finite numbers, an active
threshold that exists). A file edited by hand, or damaged into other valid JSON, is refused with one line
naming it: it would silently change every score. Files written before the digest existed are checked by
their ranges only. The format is described in docs/deployment.md, "The calibration file".
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

from mkdlib.calibration import CALIBRATION, DECISION
from mkdlib.io_utils import atomic_write_text
from mkdlib.runs.store import RunError, read_json

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
    image = cal.get("image", {})
    scores = image.get("train_scores")
    marker = "\"@train_scores@\""
    shown = {**cal, "image": {**image, "train_scores": "@train_scores@"}} if scores is not None else cal
    text = json.dumps(shown, indent=1, allow_nan=False)
    if scores is not None:
        text = text.replace(marker, json.dumps(scores, separators=(",", ":")), 1)
    atomic_write_text(Path(run_dir) / CALIBRATION, text + "\n")
    return cal


def read_calibration(run_dir: str | Path) -> dict:
    """run_dir/calibration.json checked (its digest, then its values), or {} for a run without one."""
    path = Path(run_dir) / CALIBRATION
    if not path.is_file():
        return {}
    cal = read_json(path, ADVICE)
    recorded = cal.get(DIGEST)
    if recorded is not None and recorded != _digest_or_none(cal):
        raise RunError(f"{path} was changed after mkdlib wrote it (its content no longer matches the SHA-256 "
                       f"it holds); {ADVICE}")
    check_values(cal, path)
    return cal


def _digest_or_none(cal: dict) -> str | None:
    try:
        return digest(cal)
    except (TypeError, ValueError):  # NaN or values JSON cannot hold: not what mkdlib wrote
        return None


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
    _check_thresholds(cal, path)


def _check_thresholds(cal: dict, path: Path) -> None:
    """The versioned thresholds `mkd calibrate` adds, and which one is active."""
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
