"""A run's calibration: one fixed scale for its maps and a normalised image score, both with the
decision threshold at 0.5, and the counts of decisions at that threshold.

Image scores (anomalib's min-max normalisation, anchored on the training images): normalised =
clip(0.5 + 0.5 * (score - threshold) / (threshold - min), 0, 1), where min is the smallest training score
and threshold the run's (99th percentile of the training scores, or a user's). The training minimum
maps to 0, the threshold to 0.5; monotone, so decisions and rankings below the clip are kept.

Maps: the raw (un-normalised) attribution maps of up to CALIBRATION_IMAGES training images, blurred
as finish_maps blurs them; their median is the floor (a typical normal pixel) and their
PIXEL_PERCENTILE percentile the pixel threshold. Every map gets the same affine rescaling, the floor
to 0 and the pixel threshold to 0.5: shared = 0.5 * (map - floor) / (pixel_threshold - floor), i.e.
(map - offset) / scale with the run's own two numbers. Without this each map is scaled to its own
99th percentile and a good image looks as hot as a broken one.
The paper's pixel metrics keep the per-image normalisation; this scale is for pictures, masks and
the decisions at the threshold only.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data import Subset as TorchSubset

from mkdlib import postprocess
from mkdlib.features import image_loader
from mkdlib.localization import attribution_maps

CALIBRATION = "calibration.json"
THRESHOLD_PERCENTILE = 99.0  # decision threshold: this percentile of the training images' scores
THRESHOLD_RULE = f"percentile {THRESHOLD_PERCENTILE:g} of the final cloner's scores on the training images"
DECISION = 0.5  # the threshold on normalised scores and on shared-scale maps
PIXEL_PERCENTILE = 99.9  # pixel threshold: this percentile of the training images' blurred raw maps
CALIBRATION_IMAGES = 256  # training images the map scale is computed on (spread evenly; bounds memory)
IMAGE_RULE = ("normalised = clip(0.5 + 0.5 * (score - threshold) / (threshold - min), 0, 1), min = the "
              "smallest training score: the training minimum maps to 0 and the threshold to 0.5")
MAP_RULE = (f"shared = (blurred map - offset) / scale; offset = the median and pixel_threshold = percentile "
            f"{PIXEL_PERCENTILE:g} of the training images' blurred raw maps, scale = 2 * (pixel_threshold - "
            "offset): the median maps to 0 and the pixel threshold to 0.5")


def image_calibration(train_scores, threshold: float | None = None) -> dict:
    """The image-score normalisation of a run from its final cloner's scores on its training images: their
    minimum, and the decision threshold (default: their THRESHOLD_PERCENTILE percentile)."""
    train_scores = np.asarray(train_scores, dtype=np.float64)
    if threshold is None:
        threshold = np.percentile(train_scores, THRESHOLD_PERCENTILE)
    return {"min": float(train_scores.min()), "threshold": float(threshold), "rule": IMAGE_RULE,
            "threshold_rule": THRESHOLD_RULE}


def normalize_scores(scores, image_cal: dict, threshold: float | None = None) -> np.ndarray:
    """Raw scores -> [0, 1], `threshold` (default the run's) at 0.5; the span (threshold - min) is the
    run's, so a user's threshold moves the decision without rescaling."""
    threshold = image_cal["threshold"] if threshold is None else float(threshold)
    return np.clip(DECISION + DECISION * (np.asarray(scores, dtype=np.float64) - threshold) / span(image_cal), 0, 1)


def span(image_cal: dict) -> float:
    """The run's threshold - min (where all training scores are equal, the threshold's own size)."""
    width = image_cal["threshold"] - image_cal["min"]
    return width if width > 0 else max(abs(image_cal["threshold"]), 1e-12)


def blurred(raw: np.ndarray) -> np.ndarray:
    """Raw (B, H, W) maps blurred as finish_maps blurs them, before any per-image normalisation."""
    return postprocess.gaussian_blur(np.asarray(raw, dtype=np.float64))


def shared_scale(raw: np.ndarray, map_cal: dict) -> np.ndarray:
    """Raw (B, H, W) maps on the run's fixed scale (not clipped): > 0.5 is a predicted anomalous pixel."""
    return (blurred(raw) - map_cal["offset"]) / map_cal["scale"]


def raw_maps(data: Dataset, source: nn.Module, cloner: nn.Module, loss: nn.Module, method: str, *,
             device: str | torch.device = "cpu", seed: int = 0) -> np.ndarray:
    """(N, H, W) raw attribution maps of a dataset's images, 32 at a time (SmoothGrad seeded)."""
    gen = torch.Generator(torch.device(device)).manual_seed(seed)
    return np.concatenate([attribution_maps(x.to(device), source, cloner, loss, method=method,
                                            generator=gen).numpy() for x in image_loader(data, 32)])


class ConstantMapsError(ValueError):
    """Maps without a scale to calibrate (every training pixel alike): the run stands, its pictures cannot."""


def map_calibration(train: Dataset, source: nn.Module, cloner: nn.Module, loss: nn.Module, method: str, *,
                    device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """The fixed map scale of `method` from (up to CALIBRATION_IMAGES of) the training images."""
    n = min(len(train), CALIBRATION_IMAGES)
    picked = TorchSubset(train, ((np.arange(n) * len(train)) // n).tolist())
    pixels = blurred(raw_maps(picked, source, cloner, loss, method, device=device, seed=seed))
    offset, pixel_threshold = (float(v) for v in np.percentile(pixels, [50, PIXEL_PERCENTILE]))
    if not pixel_threshold > offset:
        raise ConstantMapsError(f"the {method} maps of the training images are constant ({offset:g}): they have no "
                       "scale to calibrate; retrain the run with more epochs or use another --method")
    return {"offset": offset, "pixel_threshold": pixel_threshold, "scale": (pixel_threshold - offset) / DECISION,
            "percentile": PIXEL_PERCENTILE, "n_images": n, "rule": MAP_RULE}


def at_threshold(predicted, truth) -> dict:
    """Confusion counts and precision, recall, F1 of boolean decisions against boolean truth
    (0 where undefined: no positive decision or no positive truth)."""
    predicted, truth = np.asarray(predicted, dtype=bool).ravel(), np.asarray(truth, dtype=bool).ravel()
    tp, fp = int(np.sum(predicted & truth)), int(np.sum(predicted & ~truth))
    fn, tn = int(np.sum(~predicted & truth)), int(np.sum(~predicted & ~truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "tn": tn, "fn": fn}
