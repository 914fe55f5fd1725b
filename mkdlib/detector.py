"""A finished run as a detector for new images, loaded once: `Detector.from_run(run).predict(images)` gives
anomalib's fields, the normalised `pred_score` (the threshold in use at 0.5), the `raw_score` (the MKD loss
over the score layers), `pred_label`, and with maps=True the `anomaly_map` on the run's fixed scale and its
`pred_mask` (> 0.5). Images are prepared as the run's training images were (inputs.py); `mkd predict` and
`mkd calibrate` are built on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mkdlib.calibration import DECISION, normalize_scores, shared_scale
from mkdlib.config import MKDConfig
from mkdlib.datasets.base import AspectNote
from mkdlib.decisions import run_calibration, training_scores
from mkdlib.inputs import Item, as_items, prepare
from mkdlib.localization import GRADIENTS, METHODS, attribution_maps
from mkdlib.models import Cloner, Source
from mkdlib.runs.loading import check_device, load_model
from mkdlib.runs.spec import RunResult
from mkdlib.scoring import score, score_loss
from mkdlib.thresholds import Threshold, active_threshold, percentile_threshold, user_threshold

CHUNK = 32  # images read, scored and localised at a time


@dataclass
class Predictions:
    """Per-image results, in the order the images were given; an image that could not be read has its
    `error` (else ""), NaN scores, pred_label False and a NaN map."""
    pred_score: np.ndarray  # (N,) in [0, 1]: the raw score normalised, the threshold in use at 0.5
    raw_score: np.ndarray  # (N,) the MKD loss
    pred_label: np.ndarray  # (N,) bool: anomalous, pred_score > 0.5 (raw_score > threshold.value)
    threshold: Threshold  # the raw threshold in use, its name and how it was set
    paths: list[str | None]  # the file each image came from; None for images given in memory
    error: list[str]
    anomaly_map: np.ndarray | None = None  # (N, S, S) float32 on the run's fixed scale, not clipped (maps=True)
    pred_mask: np.ndarray | None = None  # (N, S, S) bool: anomaly_map > 0.5
    display: torch.Tensor | None = field(default=None, repr=False)  # (n_read, 3, S, S) in [0, 1], for figures

    def __len__(self) -> int:
        return len(self.pred_score)


class Detector:
    """A finished run's source and final cloner (weights checked against the run's record) with its
    calibration: the threshold in use and the maps' fixed scale."""

    def __init__(self, result: RunResult, cfg: MKDConfig, source: Source, cloner: Cloner, *,
                 method: str = GRADIENTS, device: str | torch.device = "cpu") -> None:
        if method not in METHODS:
            raise ValueError(f"unknown localization method {method!r}; valid: {list(METHODS)}")
        self.result, self.cfg, self.source, self.cloner = result, cfg, source, cloner
        self.method, self.device, self.loss = method, device, score_loss(cfg)
        self.calibration = run_calibration(result, source, cloner, cfg, None, device=device)
        self.threshold = active_threshold(self.calibration)
        options = result.spec.dataset_options  # images prepared as the run's training images were
        self.imagenet_norm, self.grey = options.get("imagenet_norm"), options.get("grey", False)

    @classmethod
    def from_run(cls, run_dir: str | Path, weights: str | Path | None = None, device: str | None = None,
                 method: str = GRADIENTS) -> Detector:
        """Load a finished run once. weights: the source weights file here (refused unless its SHA-256 is the
        one the run recorded); device: default cuda where available; method: the maps' localisation method."""
        if method not in METHODS:  # before the run is loaded
            raise ValueError(f"unknown localization method {method!r}; valid: {list(METHODS)}")
        device = str(check_device(device or ("cuda" if torch.cuda.is_available() else "cpu")))
        result, cfg, source, cloner = load_model(run_dir, device=device, weights=weights)
        return cls(result, cfg, source, cloner, method=method, device=device)

    @property
    def image_size(self) -> int:
        return self.cfg.image_size

    @property
    def run_key(self) -> str:
        return self.result.run_dir.name

    def threshold_for(self, threshold: float | None = None, percentile: float | None = None) -> Threshold:
        """The threshold a call uses: a raw value, a percentile of the training scores (computed from the
        training images once, then stored), else the run's active one."""
        if threshold is not None and percentile is not None:
            raise ValueError("give a threshold or a percentile, not both")
        if threshold is not None:
            return threshold if isinstance(threshold, Threshold) else user_threshold(threshold)
        if percentile is not None:
            scores = training_scores(self.result, self.source, self.cloner, self.cfg, device=self.device)
            return percentile_threshold(scores, percentile)
        return self.threshold

    def predict(self, images, maps: bool = False, threshold: float | None = None, *,
                percentile: float | None = None) -> Predictions:
        """Score `images` (a path, a folder, a PIL image, a numpy array or batch, a tensor, or a list of these:
        inputs.py). maps: also the anomaly maps and masks. threshold: a raw-score threshold instead of the
        run's active one; percentile: the threshold at that percentile of the training images' scores."""
        chosen = self.threshold_for(threshold, percentile)
        items = as_items(images)
        aspect, generator = AspectNote(self.image_size, "Detector.predict"), self.generator()
        parts = [self.predict_items(items[i:i + CHUNK], maps=maps, threshold=chosen, aspect=aspect,
                                    generator=generator) for i in range(0, len(items), CHUNK)]
        return _concat(parts, chosen)

    def generator(self) -> torch.Generator:
        """The seeded generator of SmoothGrad's noise (the run's seed): one per predict call."""
        return torch.Generator(torch.device(self.device)).manual_seed(self.result.spec.seed)

    def predict_items(self, items: list[Item], *, maps: bool, threshold: Threshold, aspect: AspectNote,
                      generator: torch.Generator | None = None, display: bool = False) -> Predictions:
        """One chunk of items (predict's loop; `mkd predict` keeps the display images for its figures)."""
        read, inputs, shown, bad = prepare(items, self.result.spec.dataset, self.image_size, self.imagenet_norm,
                                           self.grey, aspect)
        n, size = len(items), (len(items), self.image_size, self.image_size)
        raw, heat = np.full(n, np.nan), np.full(size, np.nan, dtype=np.float32) if maps else None
        if read:
            raw[read] = self.raw_scores(inputs)
            if maps:
                heat[read] = self.maps(inputs, generator)
        normalised = self.normalised(raw, threshold)  # NaN stays NaN
        return Predictions(pred_score=normalised, raw_score=raw, pred_label=normalised > DECISION,
                           threshold=threshold, paths=[item.path for item in items],
                           error=[bad.get(i, "") for i in range(n)], anomaly_map=heat,
                           pred_mask=None if heat is None else heat > DECISION, display=shown if display else None)

    def normalised(self, raw: np.ndarray, threshold: Threshold | None = None) -> np.ndarray:
        """Raw scores -> pred_score in [0, 1]: `threshold` (default the run's active one) at 0.5, the training
        minimum at 0, the run's span between them (calibration.normalize_scores)."""
        return normalize_scores(raw, self.calibration["image"], (threshold or self.threshold).value)

    def raw_scores(self, inputs: torch.Tensor) -> np.ndarray:
        """Raw scores (the MKD loss) of (B, 3, S, S) network inputs."""
        return score(self.cloner, self.loss, inputs, source=self.source, batch_size=self.cfg.batch_size,
                     device=self.device).astype(np.float64)

    def maps(self, inputs: torch.Tensor, generator: torch.Generator | None = None) -> np.ndarray:
        """(B, S, S) float32 maps of network inputs on the run's fixed scale, not clipped (> 0.5: predicted
        anomalous pixel); the scale is computed from the training images the first time a method needs it."""
        if self.method not in self.calibration.get("maps", {}):
            self.calibration = run_calibration(self.result, self.source, self.cloner, self.cfg, self.method,
                                               device=self.device)
        raw = attribution_maps(inputs.to(self.device), self.source, self.cloner, self.loss, method=self.method,
                               generator=generator if generator is not None else self.generator()).numpy()
        return shared_scale(raw, self.calibration["maps"][self.method]).astype(np.float32)


def _concat(parts: list[Predictions], threshold: Threshold) -> Predictions:
    maps = parts[0].anomaly_map is not None
    return Predictions(
        pred_score=np.concatenate([p.pred_score for p in parts]),
        raw_score=np.concatenate([p.raw_score for p in parts]),
        pred_label=np.concatenate([p.pred_label for p in parts]), threshold=threshold,
        paths=[x for p in parts for x in p.paths], error=[x for p in parts for x in p.error],
        anomaly_map=np.concatenate([p.anomaly_map for p in parts]) if maps else None,
        pred_mask=np.concatenate([p.pred_mask for p in parts]) if maps else None)
