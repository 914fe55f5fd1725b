"""Scoring new images with a finished run: per-image anomaly scores, decisions and figures.

The raw score is the MKD loss over the score layers (paper sec. 3.3); the score is its normalisation
with the run's threshold at 0.5 (calibration.py): an image is anomalous when its score exceeds 0.5,
i.e. when its raw score exceeds the threshold (the 99th percentile of the training images' scores, or
a user's value). Maps are the run's localisation maps on the run's fixed scale (calibrated on its
training images), so a good image's map looks cooler than a broken one's; pixels above 0.5 are the
predicted mask. `evaluation_figures` draws the same figures for a run's own labelled test set.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from mkdlib.calibration import DECISION, normalize_scores, shared_scale
from mkdlib.datasets import IMAGE_EXTENSIONS, EmptyFolderError, load_images
from mkdlib.datasets.base import AspectNote, for_display
from mkdlib.datasets.io import find_images
from mkdlib.decisions import run_calibration
from mkdlib.features import image_loader
from mkdlib.io_utils import atomic_write_bytes, atomic_write_text
from mkdlib.localization import GRADIENTS, METHODS, attribution_maps
from mkdlib.outputs import MARKER, check_output, output_folder
from mkdlib.plots import decision_figure, save_figure
from mkdlib.runs.loading import load_data, load_model
from mkdlib.scoring import score, score_loss

CSV_NAME, HEATMAP_DIR, MAP_DIR, FIGURE_DIR = "predictions.csv", "heatmaps", "maps", "figures"
CHUNK = 32  # images read, scored and localised at a time


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the images in them and in their subfolders (sorted; hidden files
    and folders, and folders mkdlib wrote, marked MARKER, are skipped); errors name the missing path. A link
    that cannot be followed is kept: predict lists it with the error reading it gives."""
    files: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir():
            found = find_images(p, skip_marked=MARKER)
            if not found:
                raise EmptyFolderError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {p} or its subfolders "
                                       f"(hidden ones and mkdlib's outputs, marked {MARKER}, are skipped)")
            files += found
        elif p.is_file() or p.is_symlink():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files:
        raise ValueError(f"no images given (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return files


def readable_images(files: Sequence[Path], dataset: str, image_size: int, imagenet_norm: bool | None,
                    grey: bool = False, aspect: AspectNote | None = None):
    """(positions of the files that load, their (inputs, display) tensors, {position: error} of the others):
    one bad file does not stop the rest. `aspect`: says once that non-square images are squashed (one per
    predict call, shared by its chunks)."""
    good, inputs, display, bad = [], [], [], {}
    aspect = aspect or AspectNote(image_size, f"{dataset} images")
    for i, f in enumerate(files):
        try:
            x, d = load_images([f], dataset, image_size, imagenet_norm=imagenet_norm, grey=grey, aspect=aspect)
        except Exception as err:  # any decoding failure: listed, the other images still scored
            bad[i] = " ".join(str(err).split()) or type(err).__name__
            continue
        good.append(i)
        inputs.append(x)
        display.append(d)
    if not good:
        return good, None, None, bad
    return good, torch.cat(inputs), torch.cat(display), bad


class _Scorer:
    """A finished run's final cloner with its calibration: normalised scores and fixed-scale maps of
    image batches (predict and evaluation_figures share it)."""

    def __init__(self, run_dir, method: str | None, device: str, weights, threshold: float | None = None):
        self.result, self.cfg, self.source, self.cloner = load_model(run_dir, device=device, weights=weights)
        self.calibration = run_calibration(self.result, self.source, self.cloner, self.cfg, method, device=device)
        self.threshold = float(self.calibration["image"]["threshold"] if threshold is None else threshold)
        self.method, self.device, self.loss = method, device, score_loss(self.cfg)
        self.generator = torch.Generator(torch.device(device)).manual_seed(self.result.spec.seed)

    def scores(self, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(normalised scores, raw scores) of (B, 3, H, W) inputs."""
        raw = score(self.cloner, self.loss, inputs, source=self.source, batch_size=self.cfg.batch_size,
                    device=self.device)
        return normalize_scores(raw, self.calibration["image"], self.threshold), raw

    def maps(self, inputs: torch.Tensor) -> np.ndarray:
        """(B, H, W) maps on the run's fixed scale, not clipped (> 0.5: predicted anomalous pixel)."""
        raw = attribution_maps(inputs.to(self.device), self.source, self.cloner, self.loss, method=self.method,
                               generator=self.generator).numpy()
        return shared_scale(raw, self.calibration["maps"][self.method])


def _title(path: str | Path, normalised: float, label: int | None = None) -> str:
    """'folder/name.png: score 0.731, anomalous', with the truth where it is known."""
    name = "/".join(Path(str(path)).parts[-2:])  # the defect folder says what the image is
    decision = "anomalous" if normalised > DECISION else "normal"
    truth = "" if label is None else f" (truth: {'anomalous' if label else 'normal'})"
    return f"{name}: score {normalised:.3f}, {decision}{truth}"


def _figure(path: Path, image: np.ndarray, heat: np.ndarray, title: str, mask: np.ndarray | None = None) -> None:
    save_figure(decision_figure(image, heat, title=title, threshold=DECISION, mask=mask), path)


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array.astype(np.float32))
    return buf.getvalue()


def predict(run_dir: str | Path, paths: Sequence[str | Path], out_dir: str | Path, *,
            threshold: float | None = None, method: str = GRADIENTS, device: str = "cpu",
            heatmaps: bool = True, save_maps: bool = False, progress: bool = True,
            weights: str | Path | None = None) -> pd.DataFrame:
    """Score new images with a finished run and write out_dir/predictions.csv, a figure per image
    (heatmaps/: image | map with colour bar | predicted mask outline, titled with the file name, score
    and decision) and with save_maps the maps as float32 .npy (maps/, the fixed scale, not clipped).

    Columns: path, score (normalised, in [0, 1]), raw_score (the MKD loss), threshold (0.5),
    anomalous (score > 0.5, i.e. raw_score > the raw threshold), heatmap (PNG path relative to
    out_dir), map (.npy path, with save_maps), error (why an image could not be read; its scores are
    empty). threshold: a raw threshold instead of the run's own (metrics.json "threshold"). weights:
    the source weights file here (checked against the run's SHA-256). A run without a calibration
    gets one first (calibration.json). The folder is replaced whole, atomically, and only if mkdlib wrote
    it (outputs.py: never the input images, the run, or a user's folder). ValueError when no image could be
    read."""
    if method not in METHODS:
        raise ValueError(f"unknown localization method {method!r}; valid: {list(METHODS)}")
    protect = [*paths, run_dir]
    check_output(out_dir, protect=protect)  # before the run is loaded or any image read
    files = image_files(paths)
    with_maps = heatmaps or save_maps
    run = _Scorer(run_dir, method if with_maps else None, device, weights, threshold)
    spec, cfg = run.result.spec, run.cfg
    imagenet_norm = spec.dataset_options.get("imagenet_norm")  # None: the dataset's own choice
    grey = spec.dataset_options.get("grey", False)  # images prepared as the run's training images were
    rows = [{"path": str(f), "score": np.nan, "raw_score": np.nan, "heatmap": "", "map": "", "error": ""}
            for f in files]
    aspect = AspectNote(cfg.image_size, "mkd predict")  # non-square images: said once, not once per chunk
    with output_folder(out_dir, writer="mkd predict", protect=protect) as out:
        for start in tqdm(range(0, len(files), CHUNK), desc="predict", unit="chunk", disable=not progress):
            chunk, inputs, display, bad = readable_images(files[start:start + CHUNK], spec.dataset,
                                                          cfg.image_size, imagenet_norm, grey, aspect)
            for i, error in bad.items():
                rows[start + i]["error"] = error
                print(f"mkd predict: skipped unreadable image {files[start + i]}: {error}", file=sys.stderr)
            if not chunk:
                continue
            normalised, raw = run.scores(inputs)
            maps = run.maps(inputs) if with_maps else [None] * len(chunk)
            for i, s, r, image, heat in zip(chunk, normalised, raw, display.numpy(), maps):
                row, stem = rows[start + i], f"{start + i:04d}_{files[start + i].stem}"  # index: equal names apart
                row["score"], row["raw_score"] = float(s), float(r)
                if heatmaps:
                    row["heatmap"] = f"{HEATMAP_DIR}/{stem}.png"
                    _figure(out / row["heatmap"], image, heat, _title(files[start + i], s))
                if save_maps:
                    row["map"] = f"{MAP_DIR}/{stem}.npy"
                    atomic_write_bytes(out / row["map"], _npy(heat))
        table = pd.DataFrame(rows)
        if table["score"].isna().all():
            raise ValueError(f"none of the {len(files)} images could be read (first: {files[0]}: "
                             f"{table['error'].iloc[0]})")
        table.insert(3, "threshold", DECISION)
        table.insert(4, "anomalous", table["score"] > DECISION)
        table = table.drop(columns=[c for c, keep in (("heatmap", heatmaps), ("map", save_maps)) if not keep])
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        atomic_write_text(out / CSV_NAME, buf.getvalue())
    return table


def evaluation_figures(run_dir: str | Path, out_dir: str | Path | None = None, *, method: str = GRADIENTS,
                       device: str = "cpu", progress: bool = True, weights: str | Path | None = None) -> Path:
    """One figure per test image of a finished run: image | ground truth (where the dataset has
    masks) | map on the run's fixed scale | predicted mask, titled with the score, the decision and
    the truth. Written to out_dir (default <run>/figures/), replaced whole if mkdlib wrote it (outputs.py);
    returns the folder."""
    if method not in METHODS:
        raise ValueError(f"unknown localization method {method!r}; valid: {list(METHODS)}")
    default = out_dir is None
    if not default:
        check_output(out_dir, protect=[run_dir])
    run = _Scorer(run_dir, method, device, weights)
    test = load_data(run.result.spec, run.cfg, split="test")
    masks, labels = test.masks, np.asarray(test.labels)
    out_dir = run.result.run_dir / FIGURE_DIR if default else Path(out_dir).expanduser()
    with output_folder(out_dir, writer="mkd evaluate --figures", protect=[] if default else [run_dir],
                       ours=default) as out:
        done = 0
        for x in tqdm(image_loader(test, CHUNK), desc="figures", unit="chunk", disable=not progress):
            normalised, _ = run.scores(x)
            for image, heat, s in zip(for_display(test, x).numpy(), run.maps(x), normalised):
                path = Path(str(test.paths[done]))
                _figure(out / f"{done:04d}_{path.stem}.png", image, heat, _title(path, s, labels[done]),
                        None if masks is None else masks[done])
                done += 1
    return out_dir
