"""Scoring new images with a finished run: per-image anomaly scores, decisions and heatmaps.

An image is anomalous when its score (the MKD loss over the score layers, paper sec. 3.3) exceeds
the run's threshold: a high percentile of the training images' scores (see experiment.py), or a
user's value. Heatmaps are the run's localisation maps (gradients by default) over the image.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from mkdlib.datasets import IMAGE_EXTENSIONS, list_images, load_images
from mkdlib.experiment import load_model
from mkdlib.figures import heat_overlay
from mkdlib.io_utils import atomic_write_bytes, atomic_write_text
from mkdlib.localization import GRADIENTS, METHODS, localize
from mkdlib.scoring import score, score_loss

CSV_NAME, HEATMAP_DIR = "predictions.csv", "heatmaps"
CHUNK = 32  # images read, scored and localised at a time
MIN_PNG_SIDE = 256  # small inputs (e.g. 32 px) are enlarged, nearest neighbour, to at least this


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to their images (sorted); errors name the missing path."""
    files: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir():
            files += list_images(p)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files:
        raise ValueError(f"no images given (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return files


def overlay_png(image: np.ndarray, heat: np.ndarray) -> bytes:
    """PNG of [image | heatmap over the image] for an (3, H, W) image and an (H, W) map in [0, 1]."""
    rgb = image.transpose(1, 2, 0)  # (H, W, 3)
    rgba = heat_overlay(heat)  # (H, W, 4), alpha grows with the map
    alpha = rgba[..., 3:]
    blended = rgb * (1 - alpha) + rgba[..., :3] * alpha
    side = np.concatenate([rgb, np.ones((rgb.shape[0], 2, 3)), blended], axis=1)
    im = Image.fromarray(np.rint(np.clip(side, 0, 1) * 255).astype(np.uint8))
    scale = -(-MIN_PNG_SIDE // rgb.shape[0])
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def predict(run_dir: str | Path, paths: Sequence[str | Path], out_dir: str | Path, *,
            threshold: float | None = None, method: str = GRADIENTS, device: str = "cpu",
            heatmaps: bool = True, progress: bool = True) -> pd.DataFrame:
    """Score new images with a finished run and write out_dir/predictions.csv and heatmap PNGs.

    Columns: path, score, threshold, anomalous (score > threshold), heatmap (PNG path, relative to
    out_dir). threshold None = the run's own (metrics.json "threshold")."""
    if method not in METHODS:
        raise ValueError(f"unknown localization method {method!r}; valid: {list(METHODS)}")
    files = image_files(paths)
    result, cfg, source, cloner = load_model(run_dir, device=device)
    if source.weights != result.metrics.get("weights"):
        warnings.warn(f"the run was trained with source weights {result.metrics.get('weights')!r} but they now "
                      f"resolve to {source.weights!r}: scores may not match its threshold", stacklevel=2)
    threshold = float(result.metrics["threshold"] if threshold is None else threshold)
    imagenet_norm = result.spec.dataset_options.get("imagenet_norm")  # None: the dataset's own choice
    loss, out = score_loss(cfg), Path(out_dir).expanduser()
    gen = torch.Generator(torch.device(device)).manual_seed(result.spec.seed)
    scores, names = [], []
    for start in tqdm(range(0, len(files), CHUNK), desc="predict", unit="chunk", disable=not progress):
        chunk = files[start:start + CHUNK]
        inputs, display = load_images(chunk, result.spec.dataset, cfg.image_size, imagenet_norm=imagenet_norm)
        scores.append(score(cloner, loss, inputs, source=source, batch_size=cfg.batch_size, device=device))
        if not heatmaps:
            continue
        maps = localize(inputs.to(device), source, cloner, loss, method=method, generator=gen)  # (B, H, W)
        for i, (f, image, heat) in enumerate(zip(chunk, display.numpy(), maps), start=start):
            name = f"{HEATMAP_DIR}/{i:04d}_{f.stem}.png"  # the index keeps equal names apart
            atomic_write_bytes(out / name, overlay_png(image, heat))
            names.append(name)
    scores = np.concatenate(scores)
    table = pd.DataFrame({"path": [str(f) for f in files], "score": scores, "threshold": threshold,
                          "anomalous": scores > threshold})
    if heatmaps:
        table["heatmap"] = names
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(out / CSV_NAME, buf.getvalue())
    return table
