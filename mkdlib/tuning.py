"""`mkd calibrate`: a run's image threshold set at the best F1 on labelled images a user gives (never its test
images: they would grade the threshold they chose), kept as a new version beside the run's default in
calibration.json and made active; earlier versions and the default stay, `--use NAME` switches between them.
With masks, the pixel F1 of the maps on the run's fixed scale (> 0.5) is reported beside the image F1.
"""
from __future__ import annotations

import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from mkdlib.calibration import DECISION, at_threshold
from mkdlib.datasets import DatasetNotFoundError
from mkdlib.datasets.base import resize_to_uint8
from mkdlib.datasets.errors import MissingMaskError
from mkdlib.datasets.io import match_masks, open_image, open_mask
from mkdlib.decisions import DEFAULT, read_calibration, write_calibration
from mkdlib.detector import F1_RULE, Detector, active_threshold, default_threshold, image_files
from mkdlib.io_utils import file_sha256
from mkdlib.localization import GRADIENTS
from mkdlib.runs.evaluation import portable_path
from mkdlib.runs.loading import load_data
from mkdlib.runs.spec import RunResult
from mkdlib.runs.store import SCORES, RunError, load_run, run_lock

SHOWN = 3  # refused files named in a message; the rest are counted


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
    threshold = float(candidates[np.lexsort((candidates, precision, f1))[-1]])  # the last key sorts first
    return {"threshold": threshold, **at_threshold(raw > threshold, truth), "n_good": len(good),
            "n_anomalous": len(bad), "rule": F1_RULE}


def add_version(cal: dict, entry: dict) -> str:
    """Add a threshold version to `cal` (in place) under a new name, f1-<UTC date>-<n>, and make it active;
    the default under "image" is kept as it is. Returns the name."""
    now = datetime.now(timezone.utc)
    day = now.strftime("%Y-%m-%d")
    versions = cal.setdefault("thresholds", {})
    taken = [int(n) for name in versions if name.startswith(f"f1-{day}-") and (n := name[len(day) + 4:]).isdigit()]
    name = f"f1-{day}-{max(taken, default=0) + 1}"
    versions[name] = {**entry, "created": now.isoformat(timespec="seconds")}
    cal["active"] = name
    return name


def calibrate(run_dir: str | Path, good: list[str | Path], anomalous: list[str | Path], *,
              masks: str | Path | None = None, weights: str | Path | None = None, device: str | None = None,
              method: str = GRADIENTS) -> dict:
    """Score the labelled images with the run, put a new threshold version at their best image F1 and make it
    active; returns its entry (with "name"). Refused, naming them: files that are among the run's test images,
    and unreadable files. masks: a folder of the anomalous images' masks (masks_for's rule): pixel F1."""
    good_files = image_files(good)
    bad_files, mask_files = _anomalous_with_masks(anomalous, masks)
    files = good_files + bad_files
    run = load_run(run_dir)
    if run.metrics is None:
        raise RunError(run.error)
    _refuse_test_images(run, files)  # before the models are loaded or a calibration computed
    detector = Detector.from_run(run_dir, weights=weights, device=device, method=method)
    result = detector.predict(files, maps=masks is not None)
    unread = [f"{f} ({e})" for f, e in zip(files, result.error) if e]
    if unread:
        raise ValueError(f"cannot calibrate on unreadable images: {_some(unread, '; ')}")
    truth = np.r_[np.zeros(len(good_files), bool), np.ones(len(bad_files), bool)]
    entry = best_f1(result.raw_score, truth)
    default = default_threshold(detector.calibration)
    entry["default_on_these"] = {"threshold": default.value, **at_threshold(result.raw_score > default.value, truth)}
    entry["folders"] = {"good": [str(Path(p).expanduser().resolve()) for p in good],
                        "anomalous": [str(Path(p).expanduser().resolve()) for p in anomalous],
                        "masks": None if masks is None else str(Path(masks).expanduser().resolve())}
    if masks is not None:
        truth_px = np.concatenate([np.zeros((len(good_files), *result.anomaly_map.shape[1:]), bool),
                                   _read_masks(bad_files, mask_files, detector.image_size)])
        entry["pixel"] = {"method": method, "threshold": DECISION, **at_threshold(result.pred_mask, truth_px)}
    with run_lock(detector.result.run_dir, quiet=True):
        cal = read_calibration(detector.result.run_dir)  # as stored now: another process may have added one
        name = add_version(cal, entry)
        write_calibration(detector.result.run_dir, cal)
    return {"name": name, "run_dir": str(detector.result.run_dir), **cal["thresholds"][name]}


def _some(items: list[str], sep: str) -> str:
    """The first SHOWN items, the rest counted."""
    return sep.join(items[:SHOWN]) + (f" and {len(items) - SHOWN} more" if len(items) > SHOWN else "")


def _anomalous_with_masks(anomalous: list[str | Path], masks: str | Path | None) -> tuple[list[Path], list[Path]]:
    """The anomalous files and, with `masks`, each one's mask: <stem>_mask.* or <stem>.*, looked for in
    masks/<subfolder>, masks/<folder name>/<subfolder> and masks/, where <subfolder> is the image's folder below
    the --anomalous folder given (MVTec: --anomalous test/crack test/cut --masks ground_truth, or --anomalous
    test/crack --masks ground_truth/crack). MissingMaskError names the first image without one."""
    files, found = [], []
    for given in (Path(p).expanduser() for p in anomalous):
        for f in image_files([given]):
            files.append(f)
            if masks is None:
                continue
            root = Path(masks).expanduser()
            rel = f.parent.relative_to(given) if given.is_dir() else Path()
            name = given.name if given.is_dir() else f.parent.name
            folders = list(dict.fromkeys([root / rel, root / name / rel, root]))
            for i, folder in enumerate(folders):
                try:
                    found.append(match_masks([f], folder)[0])
                    break
                except MissingMaskError:
                    if i == len(folders) - 1:
                        raise
    return files, found


def _read_masks(images: list[Path], masks: list[Path], size: int) -> np.ndarray:
    """(N, S, S) bool ground truth of the anomalous images: each mask at its image's size, resized as the
    datasets resize theirs (bilinear), a defect from 0.5 up (as the pixel metrics binarise)."""
    out = []
    for image, mask_file in zip(images, masks):
        mask, width_height = open_mask(mask_file), open_image(image).size
        if mask.size != width_height:
            raise ValueError(f"mask {mask_file} is {mask.width}x{mask.height} px but its image {image} is "
                             f"{width_height[0]}x{width_height[1]} px; a mask must have its image's size")
        out.append(resize_to_uint8(size)(mask)[0].numpy() > 255 * DECISION)
    return np.stack(out)


def _refuse_test_images(run: RunResult, files: list[Path]) -> None:
    """ValueError naming the given files that are among the run's test images: the same file, the same bytes,
    or (where the test images are not on this machine) a path ending in a test image's recorded path."""
    try:
        test = [Path(p) for p in load_data(run.spec, split="test").paths]
    except DatasetNotFoundError:
        recorded = pd.read_csv(run.run_dir / SCORES)["path"].astype(str).tolist()
        warnings.warn(f"the test images of {run.run_dir} are not here: the labelled images are compared with "
                      "their recorded paths only, not their content", stacklevel=3)
        tails = ["/" + portable_path(p, run.spec.data_root).lstrip("/") for p in recorded]
        hits = [f for f in files if any(f.resolve().as_posix().endswith(t) for t in tails)]
    else:
        on_disk = [p for p in test if p.is_file()]
        resolved, test_sizes = {p.resolve() for p in on_disk}, {p.stat().st_size for p in on_disk}
        same_size = {f for f in files if f.is_file() and f.stat().st_size in test_sizes}  # only these are hashed
        sizes = {f.stat().st_size for f in same_size}
        digests = {file_sha256(p) for p in on_disk if p.stat().st_size in sizes}
        hits = [f for f in files if f.resolve() in resolved or (f in same_size and file_sha256(f) in digests)]
    if hits:
        raise ValueError(f"{_some(list(map(str, hits)), ', ')}: among the test images of {run.run_dir}; calibrate on "
                         "labelled images that are not the test set (the test set measures the threshold chosen here)")


def use_threshold(run_dir: str | Path, name: str) -> str:
    """Make `name` (DEFAULT or a version) the run's active threshold; returns a line saying which it is now."""
    run_dir = Path(run_dir)
    with run_lock(run_dir, quiet=True):
        cal = read_calibration(run_dir)
        if "image" not in cal:
            raise RunError(f"{run_dir} has no calibration yet: `mkd predict` computes its default threshold, "
                           "`mkd calibrate --good ... --anomalous ...` sets one")
        names = [DEFAULT, *cal.get("thresholds", {})]
        if name not in names:
            raise ValueError(f"no threshold named {name!r} in this run's calibration; its thresholds: "
                             f"{', '.join(names)}")
        cal["active"] = name
        write_calibration(run_dir, cal)
    chosen = active_threshold(cal)
    return f"active threshold of {run_dir}: {chosen.name} (raw score {chosen.value:.6g}; {chosen.source})"


def list_thresholds(run_dir: str | Path) -> str:
    """The run's thresholds, one a line, the active one marked '*'."""
    cal = read_calibration(run_dir)
    if "image" not in cal:
        return f"{run_dir} has no calibration yet: `mkd predict` computes its default threshold"
    active = cal.get("active", DEFAULT)
    default = default_threshold(cal)
    lines = [f"{'*' if active == DEFAULT else ' '} {DEFAULT}: raw score {default.value:.6g} ({default.source})"]
    for name, e in cal.get("thresholds", {}).items():
        pixel = f", pixel F1 {e['pixel']['f1']:.3f}" if e.get("pixel") else ""
        lines.append(f"{'*' if active == name else ' '} {name}: raw score {e['threshold']:.6g}, image F1 "
                     f"{e['f1']:.3f}{pixel} on {e['n_good']} good / {e['n_anomalous']} anomalous images "
                     f"({e['created']})")
    return "\n".join(lines)


def describe(entry: dict) -> str:
    """What `mkd calibrate` prints: the new version, its F1 (image, and pixel with masks), the default's."""
    d = entry["default_on_these"]
    lines = [f"{entry['name']} is now the active threshold of {entry['run_dir']}: raw score {entry['threshold']:.6g}",
             f"image F1 {entry['f1']:.3f} (precision {entry['precision']:.3f}, recall {entry['recall']:.3f}; tp "
             f"{entry['tp']}, fp {entry['fp']}, tn {entry['tn']}, fn {entry['fn']}) on {entry['n_good']} good / "
             f"{entry['n_anomalous']} anomalous images",
             f"the default threshold (raw score {d['threshold']:.6g}) gives image F1 {d['f1']:.3f} on them"]
    if entry.get("pixel"):
        p = entry["pixel"]
        lines.insert(2, f"pixel F1 {p['f1']:.3f} (precision {p['precision']:.3f}, recall {p['recall']:.3f}) of "
                        f"the {p['method']} maps > {p['threshold']:g} on the run's fixed scale")
    lines.append(f"`mkd calibrate {entry['run_dir']} --use default` switches back; `mkd calibrate "
                 f"{entry['run_dir']}` lists the thresholds")
    return "\n".join(lines)
