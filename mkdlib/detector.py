"""A finished run as a detector for new images, loaded once: `Detector.from_run(run).predict(images)` gives
anomalib's fields, the normalised `pred_score` (the threshold in use at 0.5), the `raw_score` (the MKD loss
over the score layers), `pred_label`, and with maps=True the `anomaly_map` on the run's fixed scale and its
`pred_mask` (> 0.5). `mkd predict` and `mkd calibrate` are built on it.

What it scores, as one flat list: image files (a folder gives the images in it and its subfolders), PIL
images, numpy arrays ((H, W) grey, (H, W, 3) RGB, (N, H, W, 3) batches; uint8, or float in [0, 1]), torch
tensors ((3, H, W) or (N, 3, H, W) in [0, 1]), or a list of any of these. Images in memory become 8-bit PIL
images and take the files' own path from there (mode, resize, grey, normalisation as the run's training
images): an array scores as the lossless PNG it would be saved to.

The decision threshold in use on a run's raw scores: its default (percentile 99 of the training images'
scores, calibration["image"]), another percentile of those scores, a raw value a user gives, or one of the
versions `mkd calibrate` set on labelled images (best F1, calibration["thresholds"]) when it is the active one.
A user's value is checked before any work: NaN, inf, a negative threshold or a percentile outside (0, 100].
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mkdlib.calibration import DECISION, THRESHOLD_PERCENTILE, normalize_scores, shared_scale
from mkdlib.config import MKDConfig
from mkdlib.datasets import IMAGE_EXTENSIONS, EmptyFolderError, load_images
from mkdlib.datasets.base import AspectNote
from mkdlib.datasets.io import find_images
from mkdlib.decisions import DEFAULT, run_calibration, training_scores
from mkdlib.localization import GRADIENTS, METHODS, attribution_maps
from mkdlib.models import Cloner, Source
from mkdlib.outputs import MARKER
from mkdlib.runs.loading import check_device, load_model
from mkdlib.runs.spec import RunResult
from mkdlib.scoring import score, score_loss

CHUNK = 32  # images read, scored and localised at a time
SHAPES = ("numpy (H, W) grey, (H, W, 3) RGB or (N, H, W, 3) uint8 or float in [0, 1]; torch (3, H, W) or "
          "(N, 3, H, W) in [0, 1]")
F1_RULE = ("the best F1 on labelled images (anomalous: raw score > threshold), the threshold halfway between "
           "two consecutive scores")


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown localization method {method!r}; valid: {list(METHODS)}")


@dataclass(frozen=True)
class Threshold:
    """A threshold on the raw score (the MKD loss): its value, its name ("default", "percentile 95", "user" or
    a version such as "f1-2026-05-09-1") and how it was set, in words."""
    value: float
    name: str
    source: str


def _number(value, option: str, wanted: str) -> float:
    """A user's value as a float, or ValueError naming the option and what to give instead."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} {value!r} is not a number: give {wanted}") from None


def check_threshold(value) -> float | None:
    """A user's raw threshold (None stays None), or ValueError naming it: finite and >= 0 (the MKD loss is never
    negative, so a negative threshold would mark every image anomalous)."""
    if value is None:
        return None
    number = _number(value, "--threshold", "a raw-score threshold >= 0")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"--threshold {value!r} is not a usable threshold: give a finite raw-score threshold >= 0 "
                         "(the MKD loss is never negative; a negative one would mark every image anomalous)")
    return number


def check_percentile(value) -> float | None:
    """A percentile of the training scores (None stays None), or ValueError naming it: in (0, 100]."""
    if value is None:
        return None
    number = _number(value, "--percentile", "a percentile in (0, 100]")
    if not (0 < number <= 100):  # NaN fails this too
        raise ValueError(f"--percentile {value!r} is outside (0, 100]: give the percentile of the training images' "
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


@dataclass(frozen=True)
class Item:
    """One image to score: a file, or pixels in memory (`path` None)."""
    image: Path | Image.Image
    path: str | None


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


def as_items(images) -> list[Item]:
    """`images` (anything the module docstring lists) as a flat list of items, in order."""
    if isinstance(images, (str, Path)):
        return [Item(f, str(f)) for f in image_files([images])]
    if isinstance(images, Image.Image):
        return [Item(images, getattr(images, "filename", "") or None)]
    if isinstance(images, torch.Tensor):
        return [Item(_pil(a), None) for a in _tensor_images(images)]
    if isinstance(images, np.ndarray):
        return [Item(_pil(a), None) for a in _array_images(images)]
    if isinstance(images, (list, tuple)):
        items = [item for x in images for item in as_items(x)]
        if not items:
            raise ValueError("no images given: the list is empty")
        return items
    raise TypeError(f"cannot score a {type(images).__name__}: give a path, a folder, a PIL image, or {SHAPES}")


def _array_images(a: np.ndarray) -> list[np.ndarray]:
    """A numpy image or batch as (H, W) or (H, W, C) arrays, C in 1, 3, 4 (RGBA: composited as files are)."""
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        return [a]
    if a.ndim == 4 and a.shape[-1] in (1, 3, 4):
        return list(a)
    raise ValueError(f"cannot read a numpy array of shape {a.shape} as images: expected {SHAPES} "
                     "(channels last; move a (3, H, W) array's channels with a.transpose(1, 2, 0))")


def _tensor_images(t: torch.Tensor) -> list[np.ndarray]:
    """A (C, H, W) or (N, C, H, W) tensor, C in 1 or 3, as channel-last numpy images."""
    if t.ndim in (3, 4) and t.shape[-3] in (1, 3):
        a = t.detach().cpu().numpy()
        return list(np.moveaxis(a if t.ndim == 4 else a[None], 1, -1))
    raise ValueError(f"cannot read a tensor of shape {tuple(t.shape)} as images: expected {SHAPES}")


def _pil(a: np.ndarray) -> Image.Image:
    """An (H, W[, C]) array as an 8-bit PIL image: uint8 as it is, float in [0, 1] rounded to 0-255 (the
    values a uint8 image divided by 255 gives back exactly)."""
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError("a float image must hold finite values in [0, 1]; this one holds NaN or inf")
        if a.min() < 0 or a.max() > 1:
            raise ValueError(f"a float image must hold values in [0, 1], got [{a.min():g}, {a.max():g}]: divide "
                             "0-255 values by 255, or pass uint8")
        a = np.rint(a * 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"cannot read {a.dtype} pixels: give uint8 (0-255) or float in [0, 1]")
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    return Image.fromarray(np.ascontiguousarray(a))  # uint8 (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA


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
        check_method(method)
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
        check_method(method)  # before the run is loaded
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
        if isinstance(threshold, Threshold):
            return threshold
        if threshold is not None:
            return Threshold(check_threshold(threshold), "user", "a raw-score threshold given by the user")
        if percentile is not None:
            p = check_percentile(percentile)
            scores = training_scores(self.result, self.source, self.cloner, self.cfg, device=self.device)
            return Threshold(float(np.percentile(scores, p)), f"percentile {p:g}", f"percentile {p:g} of the "
                             f"final cloner's scores on the run's {len(scores)} training images")
        return self.threshold

    def predict(self, images, maps: bool = False, threshold: float | None = None, *,
                percentile: float | None = None) -> Predictions:
        """Score `images` (a path, a folder, a PIL image, a numpy array or batch, a tensor, or a list of these:
        the module docstring). maps: also the anomaly maps and masks. threshold: a raw-score threshold instead of the
        run's active one; percentile: the threshold at that percentile of the training images' scores."""
        chosen = self.threshold_for(threshold, percentile)
        items = as_items(images)
        aspect, generator = AspectNote(self.image_size, "Detector.predict"), self.generator()
        parts = [self.predict_items(items[i:i + CHUNK], maps=maps, threshold=chosen, aspect=aspect,
                                    generator=generator) for i in range(0, len(items), CHUNK)]
        joined = {name: None if getattr(parts[0], name) is None else np.concatenate([getattr(p, name) for p in parts])
                  for name in ("pred_score", "raw_score", "pred_label", "anomaly_map", "pred_mask")}
        return Predictions(**joined, threshold=chosen, paths=[x for p in parts for x in p.paths],
                           error=[x for p in parts for x in p.error])

    def generator(self) -> torch.Generator:
        """The seeded generator of SmoothGrad's noise (the run's seed): one per predict call."""
        return torch.Generator(torch.device(self.device)).manual_seed(self.result.spec.seed)

    def predict_items(self, items: list[Item], *, maps: bool, threshold: Threshold, aspect: AspectNote,
                      generator: torch.Generator | None = None, display: bool = False) -> Predictions:
        """One chunk of items (predict's loop; `mkd predict` keeps the display images for its figures), each
        prepared as the run's dataset prepares its own (load_images): one bad file does not stop the rest.
        `aspect` says once that non-square images are squashed (one per predict call, shared by its chunks)."""
        read, inputs, shown, bad = [], [], [], {}
        for i, item in enumerate(items):
            try:
                x, d = load_images([item.image], self.result.spec.dataset, self.image_size,
                                   imagenet_norm=self.imagenet_norm, grey=self.grey, aspect=aspect)
            except Exception as err:  # any decoding failure: listed, the other images still scored
                bad[i] = " ".join(str(err).split()) or type(err).__name__
                continue
            read.append(i)
            inputs.append(x)
            shown.append(d)
        n, size = len(items), (len(items), self.image_size, self.image_size)
        raw, heat = np.full(n, np.nan), np.full(size, np.nan, dtype=np.float32) if maps else None
        if read:
            x = torch.cat(inputs)
            raw[read] = self.raw_scores(x)
            if maps:
                heat[read] = self.maps(x, generator)
        normalised = self.normalised(raw, threshold)  # NaN stays NaN
        return Predictions(pred_score=normalised, raw_score=raw, pred_label=normalised > DECISION,
                           threshold=threshold, paths=[item.path for item in items],
                           error=[bad.get(i, "") for i in range(n)], anomaly_map=heat,
                           pred_mask=None if heat is None else heat > DECISION,
                           display=torch.cat(shown) if display and read else None)

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

