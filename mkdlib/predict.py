"""`mkd predict`: a Detector's results for image files, written as files: predictions.csv and
predictions.json (anomalib's names: path, pred_score, raw_score, threshold, pred_label, anomaly_map, map,
error), a figure per image, and with save_maps the maps as .npy.

pred_score is the raw score (the MKD loss over the score layers, paper sec. 3.3) normalised with the threshold
in use at 0.5 (calibration.py): an image is anomalous when pred_score exceeds 0.5, i.e. when its raw score
exceeds the threshold (the run's active one, by default the 99th percentile of the training images' scores;
a percentile, or a user's value: detector.py). Maps are the run's localisation maps on its fixed scale
(calibrated on its training images), so a good image's map looks cooler than a broken one's; pixels above 0.5
are the predicted mask. `evaluation_figures` draws the same figures for a run's own labelled test set.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from mkdlib import __version__
from mkdlib.calibration import DECISION
from mkdlib.datasets.base import AspectNote, for_display
from mkdlib.detector import (CHUNK, Detector, Item, Predictions, Threshold, check_method, check_percentile,
                             check_threshold, image_files)
from mkdlib.features import image_loader
from mkdlib.io_utils import atomic_write_bytes, atomic_write_text
from mkdlib.localization import GRADIENTS
from mkdlib.outputs import check_output, output_folder
from mkdlib.plots import decision_figure, save_figure
from mkdlib.runs.loading import load_data

CSV_NAME, JSON_NAME, HEATMAP_DIR, MAP_DIR, FIGURE_DIR = ("predictions.csv", "predictions.json", "heatmaps", "maps",
                                                         "figures")
COLUMNS = ("path", "pred_score", "raw_score", "threshold", "pred_label", "anomaly_map", "map", "error")
__all__ = ["predict", "evaluation_figures", "image_files", "CSV_NAME", "JSON_NAME"]


def _title(path: str | Path, normalised: float, label: int | None = None) -> str:
    """'folder/name.png: score 0.731, anomalous', with the truth where it is known."""
    name = "/".join(Path(str(path)).parts[-2:])  # the defect folder says what the image is
    decision = "anomalous" if normalised > DECISION else "normal"
    truth = "" if label is None else f" (truth: {'anomalous' if label else 'normal'})"
    return f"{name}: score {normalised:.3f}, {decision}{truth}"


def _figure(path: Path, image: np.ndarray, heat: np.ndarray, title: str, mask: np.ndarray | None = None) -> None:
    save_figure(decision_figure(image, heat, title=title, threshold=DECISION, mask=mask), path)


def predict(run_dir: str | Path, paths: Sequence[str | Path], out_dir: str | Path, *,
            threshold: float | None = None, percentile: float | None = None, method: str = GRADIENTS,
            device: str = "cpu", heatmaps: bool = True, save_maps: bool = False, progress: bool = True,
            weights: str | Path | None = None) -> pd.DataFrame:
    """Score image files and folders with a finished run and write out_dir: predictions.csv, predictions.json
    (the same rows, with the run, the threshold in use and what is known of it), a figure per image (heatmaps/:
    image | map with colour bar | predicted mask outline, titled with the file name, score and decision) and with
    save_maps the maps as float32 .npy (maps/, the fixed scale, not clipped). Returns the table.

    Columns: path, pred_score (normalised, in [0, 1]), raw_score (the MKD loss), threshold (0.5), pred_label
    (pred_score > 0.5, i.e. raw_score > the raw threshold in use), anomaly_map (the figure's path relative to
    out_dir), map (.npy path, with save_maps), error (why an image could not be read; its scores are empty).
    threshold, percentile: instead of the run's active threshold (Detector.threshold_for); weights: checked
    against the run's SHA-256. The folder is replaced whole, atomically, and only if mkdlib wrote it
    (outputs.py: never the input images, the run, or a user's folder). ValueError when no image could be read."""
    check_method(method)
    if threshold is not None and percentile is not None:
        raise ValueError("give --threshold or --percentile, not both")
    threshold, percentile = check_threshold(threshold), check_percentile(percentile)  # before any work
    protect = [*paths, run_dir]
    check_output(out_dir, protect=protect)  # before the run is loaded or any image read
    files = image_files(paths)
    with_maps = heatmaps or save_maps
    detector = Detector.from_run(run_dir, weights=weights, device=device, method=method)
    chosen = detector.threshold_for(threshold, percentile)
    rows = []
    aspect, generator = AspectNote(detector.image_size, "mkd predict"), detector.generator()  # said once
    with output_folder(out_dir, writer="mkd predict", protect=protect) as out:
        for start in tqdm(range(0, len(files), CHUNK), desc="predict", unit="chunk", disable=not progress):
            chunk = files[start:start + CHUNK]
            result = detector.predict_items([Item(f, str(f)) for f in chunk], maps=with_maps, threshold=chosen,
                                            aspect=aspect, generator=generator, display=heatmaps)
            rows += _rows(start, chunk, result, out, heatmaps, save_maps)
        kept = {"anomaly_map": heatmaps, "map": save_maps}
        table = pd.DataFrame(rows, columns=[c for c in COLUMNS if kept.get(c, True)])
        if table["pred_score"].isna().all():
            raise ValueError(f"none of the {len(files)} images could be read (first: {files[0]}: "
                             f"{table['error'].iloc[0]})")
        atomic_write_text(out / CSV_NAME, table.to_csv(index=False))
        summary = _json(detector, chosen, table, method, with_maps)
        atomic_write_text(out / JSON_NAME, json.dumps(summary, indent=1, allow_nan=False) + "\n")
    return table


def _rows(start: int, files: list[Path], result: Predictions, out: Path, heatmaps: bool,
          save_maps: bool) -> list[dict]:
    """One chunk's rows; writes its figures and maps."""
    shown = iter(result.display.numpy()) if result.display is not None else None
    rows = []
    for i, f in enumerate(files):
        stem = f"{start + i:04d}_{f.stem}"  # the index keeps equal names apart
        row = {"path": str(f), "pred_score": float(result.pred_score[i]), "raw_score": float(result.raw_score[i]),
               "threshold": DECISION, "pred_label": bool(result.pred_label[i]), "anomaly_map": "", "map": "",
               "error": result.error[i]}
        rows.append(row)
        if result.error[i]:
            print(f"mkd predict: skipped unreadable image {f}: {result.error[i]}", file=sys.stderr)
            continue
        if heatmaps:
            row["anomaly_map"] = f"{HEATMAP_DIR}/{stem}.png"
            _figure(out / row["anomaly_map"], next(shown), result.anomaly_map[i], _title(f, result.pred_score[i]))
        if save_maps:
            row["map"] = f"{MAP_DIR}/{stem}.npy"
            buf = io.BytesIO()
            np.save(buf, result.anomaly_map[i])  # float32
            atomic_write_bytes(out / row["map"], buf.getvalue())
    return rows


def _json(detector: Detector, chosen: Threshold, table: pd.DataFrame, method: str, maps: bool) -> dict:
    """predictions.json: the rows (NaN as null), the run, the threshold in use and what is known of it."""
    rows = [{k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
            for row in table.to_dict(orient="records")]
    return {"run": detector.run_key, "run_dir": str(detector.result.run_dir), "mkdlib_version": __version__,
            "threshold": {"name": chosen.name, "raw": chosen.value, "normalised": DECISION, "source": chosen.source},
            "known_at_threshold": _known(detector, chosen), "method": method if maps else None,
            "n_images": len(table), "n_anomalous": int(table["pred_label"].sum()),
            "n_unreadable": int((table["error"] != "").sum()), "predictions": rows}


def _known(detector: Detector, chosen: Threshold) -> dict | None:
    """Measured decisions at the threshold in use, where labelled images have measured it: a version's F1 on the
    labelled images `mkd calibrate` set it on, or the default's on the run's test set (metrics.json, added by
    `mkd evaluate`). The images scored here are unlabelled: nothing is claimed of them."""
    if chosen.name in detector.calibration.get("thresholds", {}):
        entry = detector.calibration["thresholds"][chosen.name]
        known = {"on": "the labelled images `mkd calibrate` set it on", "folders": entry.get("folders"),
                 "image": {k: entry[k] for k in ("f1", "precision", "recall", "n_good", "n_anomalous")}}
        return {**known, "pixel": entry["pixel"]} if entry.get("pixel") else known
    at = detector.result.metrics.get("at_threshold")
    if chosen.name == "default" and at and np.isclose(at.get("threshold", np.nan), chosen.value, rtol=1e-9):
        return {"on": "the run's test set (metrics.json at_threshold)",
                **{level: at[level] for level in ("image", "pixel") if level in at}}
    return None


def evaluation_figures(run_dir: str | Path, out_dir: str | Path | None = None, *, method: str = GRADIENTS,
                       device: str = "cpu", progress: bool = True, weights: str | Path | None = None) -> Path:
    """One figure per test image of a finished run: image | ground truth (where the dataset has
    masks) | map on the run's fixed scale | predicted mask, titled with the score, the decision and
    the truth. Written to out_dir (default <run>/figures/), replaced whole if mkdlib wrote it (outputs.py);
    returns the folder."""
    check_method(method)
    ours = out_dir is None  # the run's own figures/ only mkdlib writes
    out_dir = Path(run_dir).expanduser() / FIGURE_DIR if ours else Path(out_dir).expanduser()
    check_output(out_dir, protect=[run_dir], ours=ours)
    detector = Detector.from_run(run_dir, weights=weights, device=device, method=method)
    test = load_data(detector.result.spec, detector.cfg, split="test")
    masks, labels, generator = test.masks, np.asarray(test.labels), detector.generator()
    with output_folder(out_dir, writer="mkd evaluate --figures", protect=[run_dir], ours=ours) as out:
        done = 0
        for x in tqdm(image_loader(test, CHUNK), desc="figures", unit="chunk", disable=not progress):
            normalised = detector.normalised(detector.raw_scores(x))
            for image, heat, s in zip(for_display(test, x).numpy(), detector.maps(x, generator), normalised):
                path = Path(str(test.paths[done]))
                _figure(out / f"{done:04d}_{path.stem}.png", image, heat, _title(path, s, labels[done]),
                        None if masks is None else masks[done])
                done += 1
    return out_dir
