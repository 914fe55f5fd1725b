"""What a run's evaluation adds beyond image AUROC: the pixel metrics of localisation variants added to a
finished run (`add_localization`), the per-image scores file, and the decisions at the run's threshold on
the labelled test set (`threshold_metrics`, `pixel_at_threshold`: what `mkd predict` users get)."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from mkdlib.calibration import DECISION, at_threshold, raw_maps, shared_scale
from mkdlib.config import MKDConfig
from mkdlib.io_utils import atomic_write_text
from mkdlib.localization import GRADIENTS, check_methods
from mkdlib.models import Cloner, Source
from mkdlib.runs.loading import build_models, check_weights, load_data, load_final_cloner
from mkdlib.datasets import ENV_VAR as DATA_ENV
from mkdlib.runs.spec import RunResult, RunSpec
from mkdlib.runs.store import METRICS, load_run, run_lock, write_json
from mkdlib.scoring import pixel_metrics, score_loss


def add_localization(run_dir: str | Path, methods: Iterable[str], *, device: str | torch.device = "cpu",
                     progress: bool = True, weights: str | Path | None = None) -> RunResult:
    """Compute the pixel metrics of the localisation variants a finished run lacks and add them to its
    metrics.json (under the variant's name, e.g. "gradients-noblur")."""
    methods = check_methods(methods)
    result = load_run(run_dir)
    if result.metrics is None or not missing_maps(result, methods):
        return result
    spec, cfg = result.spec, result.spec.mkd_config()
    test = load_data(spec, cfg, split="test")
    if not test.has_masks:
        raise ValueError(f"{spec.dataset} has no ground-truth masks: pixel metrics need them")
    with run_lock(result.run_dir, quiet=not progress):
        result = load_run(run_dir)  # a process we waited for may have stored some of them
        metrics, missing = result.metrics, missing_maps(result, methods)
        if not missing:
            return result
        source, cloner, _ = build_models(spec, cfg, device, weights=weights)
        check_weights(result, source)
        load_final_cloner(cloner, result.run_dir, cfg, result.metrics)
        t0 = time.perf_counter()
        metrics.setdefault("pixel", {}).update(
            pixel_metrics(source, cloner, cfg, test, missing, seed=spec.seed, device=device, progress=progress))
        metrics["timing_s"][f"localize_{'+'.join(missing)}"] = round(time.perf_counter() - t0, 3)
        write_json(result.run_dir / METRICS, metrics)
    return load_run(run_dir)


def missing_maps(result: RunResult, methods: Iterable[str]) -> list[str]:
    return [m for m in methods if m not in result.metrics.get("pixel", {})]


def portable_path(path: str | Path, root: str | Path | None) -> str:
    """`path` relative to the data root `root` (a run's data_root, else $MKDLIB_DATA) where it lies
    under it, as a POSIX path ("mvtec/bottle/test/broken_large/000.png"): committed records name no
    machine's folders. Other paths are returned as they are."""
    root = root if root is not None else os.environ.get(DATA_ENV)
    if root is None:
        return str(path)
    try:
        return Path(path).relative_to(Path(root).expanduser()).as_posix()
    except ValueError:
        return str(path)


def write_scores(path: Path, spec: RunSpec, data: Dataset, scores: np.ndarray) -> None:
    """scores.csv: the final cloner's score of every test image, with its label, the dataset and its path
    relative to the data root (portable_path)."""
    table = pd.DataFrame({"index": np.arange(len(scores)), "dataset": spec.dataset,
                          "path": [portable_path(p, spec.data_root) for p in data.paths],
                          "label": np.asarray(data.labels), "score": scores})
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def threshold_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Image-level decisions at the run's threshold on a labelled test set (metrics.json "at_threshold"):
    what a user of `mkd predict` gets, where AUROC only ranks."""
    return {"threshold": float(threshold), "image": at_threshold(np.asarray(scores) > threshold,
                                                                 np.asarray(labels) != 0)}


def pixel_at_threshold(test: Dataset, source: Source, cloner: Cloner, cfg: MKDConfig, map_cal: dict, *,
                       device: str | torch.device = "cpu", seed: int = 0) -> dict:
    """Pixel-level decisions of the gradients maps on the run's fixed scale (pixel > 0.5) against the
    test masks (> 0.5); the paper's pixel metrics, per-image normalised, are left as they are."""
    maps = shared_scale(raw_maps(test, source, cloner, score_loss(cfg), GRADIENTS, device=device, seed=seed),
                        map_cal)
    return {"method": GRADIENTS, "threshold": DECISION, **at_threshold(maps > DECISION, test.masks > 0.5)}
