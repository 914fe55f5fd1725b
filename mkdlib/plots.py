"""Drawing the paper's figures: rows of image / ground truth / heatmap (Figures 1 and 6) and bars of
mean AUROC per setting (Figures 3-5), fed by `mkdlib.paper.figures`; and one image's decision
(`decision_figure`, for `mkd predict` and `mkd evaluate --figures`).

Low scores are left transparent on the heatmap (paper: "pixels with low score are omitted"). Built
on matplotlib's object API (no pyplot, no display), saved with an atomic write.
"""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from mkdlib.io_utils import atomic_write_bytes

COLUMNS = ("image", "ground truth", "localisation")


def _as_hwc(images) -> np.ndarray:
    """(N, 3, H, W), (N, H, W, 3) or (N, H, W) images (numpy or torch) -> (N, H, W, 3) in [0, 1]."""
    images = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images, dtype=np.float64)
    if images.ndim == 4 and images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # channels first -> last
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected (N, 3, H, W), (N, H, W, 3) or (N, H, W) images, got {images.shape}")
    return np.clip(np.broadcast_to(images, (*images.shape[:3], 3)), 0, 1)


def heat_overlay(score: np.ndarray, threshold: float | None = None, cmap: str = "jet") -> np.ndarray:
    """(H, W) map in [0, 1] -> (H, W, 4) RGBA: transparent below `threshold`, else alpha = score."""
    score = np.clip(score, 0, 1)
    rgba = colormaps[cmap](score)
    rgba[..., 3] = 0.7 * score if threshold is None else np.where(score >= threshold, 0.6, 0.0)
    return rgba


def heatmap_rows(images, masks: np.ndarray, maps: np.ndarray, *, titles: Sequence[str] | None = None,
                 threshold: float | None = None, cell_inches: float = 2.0) -> Figure:
    """One row per image: the image, its ground-truth mask, and the map overlaid on the image."""
    images = _as_hwc(images)
    masks, maps = np.asarray(masks, dtype=np.float64), np.asarray(maps, dtype=np.float64)
    if len(images) == 0:
        raise ValueError("no images to draw")
    if masks.shape != maps.shape or masks.shape != images.shape[:3]:
        raise ValueError(f"images {images.shape[:3]}, masks {masks.shape} and maps {maps.shape} must match")
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or inf")
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(titles)} titles for {len(images)} images")
    fig = Figure(figsize=(cell_inches * len(COLUMNS), cell_inches * len(images)))
    axes = fig.subplots(len(images), len(COLUMNS), squeeze=False)
    for row, (image, mask, score) in enumerate(zip(images, masks, maps)):
        axes[row, 0].imshow(image)
        axes[row, 1].imshow(mask, cmap="gray", vmin=0, vmax=1)
        axes[row, 2].imshow(image)
        axes[row, 2].imshow(heat_overlay(score, threshold))
        if titles is not None:
            axes[row, 0].set_ylabel(titles[row])
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    for ax, name in zip(axes[0], COLUMNS):
        ax.set_title(name)
    fig.tight_layout()
    return fig


def decision_figure(image, heat: np.ndarray, *, title: str = "", threshold: float = 0.5,
                    mask: np.ndarray | None = None, cell_inches: float = 2.4) -> Figure:
    """One image's decision: the image, its ground truth (when `mask` is given), the map over it with a
    colour bar, and the predicted mask (map > threshold) outlined in red. `heat` is (H, W) on a fixed
    scale (calibration.py), clipped to [0, 1] for display, so maps of different images compare."""
    image = _as_hwc(np.asarray(image)[None])[0]
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != image.shape[:2] or (mask is not None and np.shape(mask) != heat.shape):
        raise ValueError(f"image {image.shape[:2]}, map {heat.shape} and mask "
                         f"{None if mask is None else np.shape(mask)} must have the same height and width")
    if not np.isfinite(heat).all():
        raise ValueError("the map contains NaN or inf")
    columns = ["image"] + ([] if mask is None else ["ground truth"]) + ["map", f"predicted (> {threshold:g})"]
    fig = Figure(figsize=(cell_inches * len(columns) + 0.8, cell_inches + 0.7))
    axes = fig.subplots(1, len(columns), squeeze=False)[0]
    axes[0].imshow(image)
    if mask is not None:
        axes[1].imshow(mask, cmap="gray", vmin=0, vmax=1)
    axes[-2].imshow(image)
    drawn = axes[-2].imshow(np.clip(heat, 0, 1), cmap="jet", vmin=0, vmax=1, alpha=0.6)
    fig.colorbar(drawn, ax=axes[-2], fraction=0.046, pad=0.04)
    axes[-1].imshow(image)
    predicted = heat > threshold
    if predicted.any():  # contour() warns on a constant field
        axes[-1].contour(predicted.astype(float), levels=[0.5], colors="red", linewidths=1.2)
    for ax, name in zip(axes, columns):
        ax.set(xticks=[], yticks=[], title=name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def means_figure(panels: Mapping[str, Mapping[str, pd.DataFrame]], title: str) -> Figure:
    """Figures 3-5: a panel per dataset, the paper's and our mean AUROC for each setting, as bars.
    panels: panel title -> bar label -> a `markdown.comparison_table` with a "mean" row."""
    fig = Figure(figsize=(4.5 * len(panels), 3.8))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (panel, by_setting) in zip(axes, panels.items()):
        labels, dfs = list(by_setting), list(by_setting.values())
        x = np.arange(len(dfs))
        ax.bar(x - 0.2, [df.at["mean", "paper"] for df in dfs], 0.4, label="paper")
        ax.bar(x + 0.2, [np.nan_to_num(df.at["mean", "ours_final"]) for df in dfs], 0.4, label="ours (final)")
        ax.set_xticks(x, labels, rotation=15)
        ax.set(ylim=(0, 100), title=panel, ylabel="mean AUROC (%)")
    axes[0].legend(loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


NOTEBOOK_DPI = 80  # figures displayed in notebooks: legible, and an executed notebook stays small


def _encoded(fig: Figure, format: str = "png", dpi: int = NOTEBOOK_DPI) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format=format, dpi=dpi)
    return buffer.getvalue()


def show_figures_in_notebooks() -> None:
    """In a Jupyter kernel, let `display(figure)` show these Figures as PNGs (pyplot's inline backend, which
    would, is never loaded: they are built on the object API). Nothing happens outside a kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, _encoded)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Write `fig` to `path` (format from the suffix, e.g. .png or .pdf) atomically."""
    path = Path(path)
    return atomic_write_bytes(path, _encoded(fig, path.suffix.lstrip(".") or "png", dpi))
