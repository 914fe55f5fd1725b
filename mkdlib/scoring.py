"""Detection (paper sec. 3.3, 4.1): an image's anomaly score is the MKD loss between C and S on it,
over pool3-pool5 as in the released code; image AUROC with anomalies positive.

Reported without test-set selection: the final cloner's AUROC and the mean +- std over the cloners
sampled every `eval_every` epochs in the last `sample_last` epochs (config.eval_epochs()).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mkdlib.checkpoints import cloner_path, load_checkpoint
from mkdlib.config import Execution, MKDConfig
from mkdlib.features import FeatureStore, autocast, image_loader, to_input
from mkdlib.localization import (SMOOTHGRAD, SMOOTHGRAD_REFERENCE, attribution_maps, check_methods, finish_maps,
                                 parse_method)
from mkdlib.losses import MKDLoss
from mkdlib.metrics import au_pro, image_auroc, paper_pixel_auroc, pixel_auroc
from mkdlib.models import Cloner, Source, eval_mode


def score_loss(cfg: MKDConfig) -> MKDLoss:
    """The scoring loss: the training loss's weights over the score layers."""
    return MKDLoss.from_config(cfg, cfg.score_layers)


def labels_of(data: Dataset) -> np.ndarray:
    labels = getattr(data, "labels", None)
    if labels is None:
        labels = [int(data[i]["label"]) for i in range(len(data))]
    return np.asarray(labels, dtype=np.int64)


@torch.inference_mode()
def score(
    cloner: Cloner,
    loss: MKDLoss,
    data: Dataset | Tensor,
    *,
    source: Source | None = None,
    features: FeatureStore | None = None,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    amp: bool = False,
    channels_last: bool = True,
) -> np.ndarray:
    """Per-image anomaly scores (N,), higher = more anomalous. Pass the source, or its features
    of `data` computed once (FeatureStore) when several cloners score the same images. amp: bf16 autocast."""
    if (source is None) == (features is None):
        raise ValueError("pass exactly one of source= or features=")
    device = torch.device(device)
    out, offset = [], 0
    with eval_mode(cloner):
        for x in image_loader(data, batch_size):
            x = to_input(x, device, channels_last)
            with autocast(device, amp):
                if features is not None:
                    target = features.get(range(offset, offset + len(x)), device)
                else:
                    target = source(x)
                out.append(loss(cloner(x), target, reduction="none").float().cpu())
            offset += len(x)
    return torch.cat(out).numpy()


def summarize(aurocs: Mapping[int, float]) -> dict:
    """Final-epoch AUROC and mean / std (population) over all sampled epochs."""
    if not aurocs:
        raise ValueError("no AUROC to summarise")
    values = np.array([aurocs[e] for e in sorted(aurocs)])
    return {
        "final": float(values[-1]),
        "final_epoch": int(max(aurocs)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "per_epoch": {int(e): float(aurocs[e]) for e in sorted(aurocs)},
    }


def evaluate_checkpoints(
    cloner: Cloner,
    source: Source,
    test_data: Dataset,
    cfg: MKDConfig,
    checkpoint_dir: str | Path,
    *,
    execution: Execution = Execution(),
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> dict:
    """Image AUROC of every sampled cloner in `checkpoint_dir` (cfg.eval_epochs()), summarised.

    The source's features of the test images are computed once for all cloners."""
    labels = labels_of(test_data)
    loss = score_loss(cfg)
    features = FeatureStore.compute(
        source, test_data, loss.layers, batch_size=cfg.batch_size, device=device, dtype=execution.cache_dtype,
        amp=execution.inference_bf16, channels_last=execution.channels_last,
        memory_budget_mb=execution.memory_budget_mb, progress=progress,
    )
    aurocs, scores = {}, {}
    for epoch in cfg.eval_epochs():
        path = cloner_path(Path(checkpoint_dir), epoch)
        if not path.exists():
            raise FileNotFoundError(f"missing cloner checkpoint {path}: train the run to epoch {cfg.epochs} first")
        cloner.load_state_dict(load_checkpoint(path)["cloner"])
        scores[epoch] = score(cloner, loss, test_data, features=features, batch_size=cfg.batch_size,
                              device=device, amp=execution.inference_bf16, channels_last=execution.channels_last)
        aurocs[epoch] = image_auroc(labels, scores[epoch])
    result = summarize(aurocs)
    result["scores"] = scores[max(scores)]
    return result


def pixel_metrics(source: Source, cloner: Cloner, cfg: MKDConfig, test: Dataset, methods: Iterable[str], *,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Pixel metrics of each localisation variant (localization_variants()) with this cloner on the
    test set (masks needed): the paper's pixel AUROC (anomalous images only), standard pixel AUROC
    and AU-PRO (all images). A method's raw maps are computed once for both its variants."""
    methods = check_methods(methods)
    masks, labels, loss, out = test.masks, np.asarray(test.labels), score_loss(cfg), {}
    variants: dict[str, list[tuple[str, bool]]] = {}  # method -> [(variant name, blur)]
    for name in methods:
        method, blur = parse_method(name)
        variants.setdefault(method, []).append((name, blur))
    for method, wanted in variants.items():
        gen = torch.Generator(torch.device(device)).manual_seed(seed) \
            if method in (SMOOTHGRAD, SMOOTHGRAD_REFERENCE) else None
        maps: dict[str, list[np.ndarray]] = {name: [] for name, _ in wanted}
        for x in tqdm(image_loader(test, 32), desc=f"localize {method}", disable=not progress, leave=False):
            raw = attribution_maps(x.to(device), source, cloner, loss, method=method, generator=gen).numpy()
            for name, blur in wanted:
                maps[name].append(finish_maps(raw, method, blur=blur))  # (B, H, W) in [0, 1]
        for name, _ in wanted:
            m = np.concatenate(maps.pop(name))  # (N, H, W)
            out[name] = {"paper_pixel_auroc": paper_pixel_auroc(masks, m, labels),
                         "pixel_auroc": pixel_auroc(masks, m), "au_pro": au_pro(masks, m)}
    return {name: out[name] for name in methods}
