"""The quick demo (README, notebooks/00_quickstart): train a cloner on the synthetic MVTec-layout
dataset the package generates itself, score its test images, localise the defects, draw one figure.
Minutes on a 2-core CPU; uses the ImageNet source when its weights are available, else a random one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mkdlib.config import paper_config
from mkdlib.datasets import get_dataset
from mkdlib.io_utils import atomic_write_text
from mkdlib.localization import localize
from mkdlib.metrics import image_auroc, paper_pixel_auroc, pixel_auroc
from mkdlib.plots import heatmap_rows, save_figure
from mkdlib.scoring import score, score_loss
from mkdlib.train import build, fit


def _build_or_random(cfg, weights: str | None, device: str):
    """build(cfg) with the ImageNet source if it can be had offline, else a random one, with a warning."""
    try:
        return build(cfg, weights=weights, device=device)
    except RuntimeError as err:
        if weights != "imagenet":
            raise
        warnings.warn(f"demo falls back to a random source: {err}", stacklevel=3)
        return build(cfg, weights=None, device=device)


def quick_demo(out_dir: str | Path = "demo", *, epochs: int = 30, image_size: int = 64, seed: int = 0,
               weights: str | None = "imagenet", data_root: str | Path | None = None,
               device: str = "cpu", progress: bool = True) -> dict:
    """Train, score, localise on the synthetic set; writes metrics.json and heatmaps.png in out_dir."""
    out = Path(out_dir)
    cfg = paper_config("synthetic", epochs=epochs, image_size=image_size, seed=seed, batch_size=16)
    train = get_dataset("synthetic", data_root, split="train", seed=seed, image_size=image_size)
    test = get_dataset("synthetic", data_root, split="test", seed=seed, image_size=image_size)
    source, cloner, loss = _build_or_random(cfg, weights, device)
    t0 = time.perf_counter()
    history = fit(cloner, source, train, cfg, loss, device=device, progress=progress)
    t1 = time.perf_counter()
    scorer = score_loss(cfg)
    scores = score(cloner, scorer, test, source=source, device=device)
    images = torch.stack([test[i]["image"] for i in range(len(test))]).to(device)
    maps = localize(images, source, cloner, scorer)
    t2 = time.perf_counter()
    masks, labels = test.masks, test.labels
    metrics = {
        "image_auroc": image_auroc(labels, scores),
        "paper_pixel_auroc": paper_pixel_auroc(masks[labels == 1], maps[labels == 1]),
        "pixel_auroc": pixel_auroc(masks, maps),
        # the file's name, not its path on this machine
        "weights": Path(source.weights).name if source.weights else "random (no ImageNet weights found)",
        "epochs": epochs, "image_size": image_size, "n_train": len(train), "n_test": len(test),
        "final_loss": history[-1]["loss"], "train_s": round(t1 - t0, 1), "evaluate_s": round(t2 - t1, 1),
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    show = np.r_[np.flatnonzero(labels == 0)[:1], np.flatnonzero(labels == 1)[:3]]
    fig = heatmap_rows(images[show].cpu(), masks[show], maps[show],
                       titles=[f"score {scores[i]:.3f}" for i in show])
    save_figure(fig, out / "heatmaps.png")
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mkd demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo", help="output folder (default ./demo)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-source", action="store_true", help="use a randomly initialised source")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    metrics = quick_demo(a.out, epochs=a.epochs, image_size=a.image_size, seed=a.seed, device=a.device,
                         weights=None if a.random_source else "imagenet")
    for k, v in metrics.items():
        print(f"{k:>18}: {v}")
    print(f"wrote {Path(a.out) / 'metrics.json'} and {Path(a.out) / 'heatmaps.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
