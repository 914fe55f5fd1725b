"""Scoring new images with a finished run: per-image anomaly scores, decisions and heatmaps.

An image is anomalous when its score (the MKD loss over the score layers, paper sec. 3.3) exceeds
the run's threshold: a high percentile of the training images' scores (see experiment.py), or a
user's value. Heatmaps are the run's localisation maps (gradients by default) over the image.
"""

from __future__ import annotations

import io
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
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


def readable_images(files: Sequence[Path], dataset: str, image_size: int, imagenet_norm: bool | None):
    """(positions of the files that load, their (inputs, display) tensors, {position: error} of the others):
    one bad file does not stop the rest."""
    good, inputs, display, bad = [], [], [], {}
    for i, f in enumerate(files):
        try:
            x, d = load_images([f], dataset, image_size, imagenet_norm=imagenet_norm)
        except Exception as err:  # any decoding failure: listed, the other images still scored
            bad[i] = " ".join(str(err).split()) or type(err).__name__
            continue
        good.append(i)
        inputs.append(x)
        display.append(d)
    if not good:
        return good, None, None, bad
    return good, torch.cat(inputs), torch.cat(display), bad


@contextmanager
def fresh_folder(out: Path):
    """A temporary sibling folder that replaces `out` whole when the block succeeds (an older output is
    never mixed with a new one, nor lost when this one fails)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def predict(run_dir: str | Path, paths: Sequence[str | Path], out_dir: str | Path, *,
            threshold: float | None = None, method: str = GRADIENTS, device: str = "cpu",
            heatmaps: bool = True, progress: bool = True, weights: str | Path | None = None) -> pd.DataFrame:
    """Score new images with a finished run and write out_dir/predictions.csv and heatmap PNGs.

    Columns: path, score, threshold, anomalous (score > threshold), heatmap (PNG path, relative to
    out_dir), error (why an image could not be read; its score is empty). threshold None = the run's
    own (metrics.json "threshold"). weights: the source weights file here (checked against the run's
    SHA-256). The folder is replaced whole, atomically. ValueError when no image could be read."""
    if method not in METHODS:
        raise ValueError(f"unknown localization method {method!r}; valid: {list(METHODS)}")
    files = image_files(paths)
    result, cfg, source, cloner = load_model(run_dir, device=device, weights=weights)
    threshold = float(result.metrics["threshold"] if threshold is None else threshold)
    imagenet_norm = result.spec.dataset_options.get("imagenet_norm")  # None: the dataset's own choice
    loss = score_loss(cfg)
    gen = torch.Generator(torch.device(device)).manual_seed(result.spec.seed)
    rows = [{"path": str(f), "score": np.nan, "heatmap": "", "error": ""} for f in files]
    with fresh_folder(Path(out_dir).expanduser()) as out:
        for start in tqdm(range(0, len(files), CHUNK), desc="predict", unit="chunk", disable=not progress):
            chunk, inputs, display, bad = readable_images(files[start:start + CHUNK], result.spec.dataset,
                                                          cfg.image_size, imagenet_norm)
            for i, error in bad.items():
                rows[start + i]["error"] = error
                print(f"mkd predict: skipped unreadable image {files[start + i]}: {error}", file=sys.stderr)
            if not chunk:
                continue
            scores = score(cloner, loss, inputs, source=source, batch_size=cfg.batch_size, device=device)
            maps = localize(inputs.to(device), source, cloner, loss, method=method, generator=gen) \
                if heatmaps else [None] * len(chunk)  # (B, H, W)
            for i, s, image, heat in zip(chunk, scores, display.numpy(), maps):
                rows[start + i]["score"] = float(s)
                if heat is not None:
                    name = f"{HEATMAP_DIR}/{start + i:04d}_{files[start + i].stem}.png"  # index: equal names apart
                    atomic_write_bytes(out / name, overlay_png(image, heat))
                    rows[start + i]["heatmap"] = name
        table = pd.DataFrame(rows)
        if table["score"].isna().all():
            raise ValueError(f"none of the {len(files)} images could be read (first: {files[0]}: "
                             f"{table['error'].iloc[0]})")
        table.insert(2, "threshold", threshold)
        table.insert(3, "anomalous", table["score"] > threshold)
        if not heatmaps:
            table = table.drop(columns="heatmap")
        buf = io.StringIO()
        table.to_csv(buf, index=False)
        atomic_write_text(out / CSV_NAME, buf.getvalue())
    return table
