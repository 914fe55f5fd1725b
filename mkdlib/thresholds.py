"""The decision threshold in use on a run's raw scores: its default (percentile 99 of the training images'
scores, calibration["image"]), another percentile of those scores, a raw value a user gives, or one of the
versions `mkd calibrate` set on labelled images (best F1, calibration["thresholds"]) when it is the active one.
A user's value is checked before any work: NaN, inf, a negative threshold or a percentile outside (0, 100].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from mkdlib.calibration import THRESHOLD_PERCENTILE
from mkdlib.calibration_file import DEFAULT

F1_RULE = ("the best F1 on labelled images (anomalous: raw score > threshold), the threshold halfway between "
           "two consecutive scores")


@dataclass(frozen=True)
class Threshold:
    """A threshold on the raw score (the MKD loss): its value, its name ("default", "percentile 95", "user" or
    a version such as "f1-2026-05-09-1") and how it was set, in words."""
    value: float
    name: str
    source: str


def check_threshold(value, option: str = "--threshold") -> float:
    """A user's raw threshold, or ValueError naming it: finite and >= 0 (the MKD loss is never negative, so a
    negative threshold would mark every image anomalous)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} {value!r} is not a number: give a raw-score threshold >= 0") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{option} {value!r} is not a usable threshold: give a finite raw-score threshold >= 0 "
                         "(the MKD loss is never negative; a negative one would mark every image anomalous)")
    return number


def check_percentile(value, option: str = "--percentile") -> float:
    """A percentile of the training scores, or ValueError naming it: in (0, 100]."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} {value!r} is not a number: give a percentile in (0, 100]") from None
    if not (0 < number <= 100):  # NaN fails this too
        raise ValueError(f"{option} {value!r} is outside (0, 100]: give the percentile of the training images' "
                         f"scores to put the threshold at (the default is {THRESHOLD_PERCENTILE:g})")
    return number


def default_threshold(cal: dict) -> Threshold:
    image = cal["image"]
    rule = image.get("threshold_rule", f"percentile {THRESHOLD_PERCENTILE:g} of the training images' scores")
    return Threshold(float(image["threshold"]), DEFAULT, f"the run's default: {rule}")


def active_threshold(cal: dict) -> Threshold:
    """The threshold calibration.json makes active: the default, or the version `mkd calibrate --use` chose."""
    name = cal.get("active", DEFAULT)
    if name == DEFAULT:
        return default_threshold(cal)
    entry = cal["thresholds"][name]
    return Threshold(float(entry["threshold"]), name, f"set by `mkd calibrate` on {entry['created']}: {F1_RULE} "
                     f"(F1 {entry['f1']:.3f} on {entry['n_good']} good and {entry['n_anomalous']} anomalous images)")


def percentile_threshold(train_scores: np.ndarray, percentile: float) -> Threshold:
    p = check_percentile(percentile)
    return Threshold(float(np.percentile(np.asarray(train_scores, dtype=np.float64), p)), f"percentile {p:g}",
                     f"percentile {p:g} of the final cloner's scores on the run's {len(train_scores)} training images")


def user_threshold(value) -> Threshold:
    return Threshold(check_threshold(value), "user", "a raw-score threshold given by the user")


def best_f1(raw_scores, anomalous) -> dict:
    """The threshold with the best image F1 on labelled scores (anomalous positive; decision raw > threshold),
    with its precision, recall and counts. Candidates lie halfway between consecutive distinct scores (and
    halfway between 0 and the lowest): a margin on both sides. Ties: the higher precision, then the higher
    threshold (fewer false alarms on good images not seen here)."""
    raw, truth = np.asarray(raw_scores, dtype=np.float64), np.asarray(anomalous, dtype=bool)
    if truth.all() or not truth.any():
        raise ValueError(f"a threshold needs good and anomalous images: got {int((~truth).sum())} good and "
                         f"{int(truth.sum())} anomalous")
    levels = np.unique(np.concatenate([[0.0], raw]))
    candidates = (levels[:-1] + levels[1:]) / 2
    good, bad = np.sort(raw[~truth]), np.sort(raw[truth])
    tp = len(bad) - np.searchsorted(bad, candidates, side="right")
    fp = len(good) - np.searchsorted(good, candidates, side="right")
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    recall = tp / len(bad)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    best = np.lexsort((candidates, precision, f1))[-1]  # the last key sorts first
    t, p_, n = int(tp[best]), int(fp[best]), len(bad)
    return {"threshold": float(candidates[best]), "f1": float(f1[best]), "precision": float(precision[best]),
            "recall": float(recall[best]), "tp": t, "fp": p_, "tn": len(good) - p_, "fn": n - t,
            "n_good": len(good), "n_anomalous": n, "rule": F1_RULE}


def add_version(cal: dict, entry: dict, now: datetime | None = None) -> str:
    """Add a threshold version to `cal` (in place) under a new name, f1-<UTC date>-<n>, and make it active;
    the default under "image" is kept as it is. Returns the name."""
    now = now or datetime.now(timezone.utc)
    day = now.strftime("%Y-%m-%d")
    versions = cal.setdefault("thresholds", {})
    taken = [int(n) for name in versions if name.startswith(f"f1-{day}-") and (n := name[len(day) + 4:]).isdigit()]
    name = f"f1-{day}-{max(taken, default=0) + 1}"
    versions[name] = {**entry, "created": now.isoformat(timespec="seconds")}
    cal["active"] = name
    return name


def use_version(cal: dict, name: str) -> None:
    """Make `name` (DEFAULT or a version) the active threshold of `cal`, in place; ValueError listing the
    names there are."""
    names = [DEFAULT, *cal.get("thresholds", {})]
    if name not in names:
        raise ValueError(f"no threshold named {name!r} in this run's calibration; its thresholds: {', '.join(names)}")
    cal["active"] = name
