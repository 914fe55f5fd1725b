"""notebooks/01_method.ipynb, the method step by step: the data, the two networks, training, what the
loss sees at each critical layer, the per-image scores, one gradient map through every stage of its
post-processing, and the three pixel metrics. Each function returns a Figure or a DataFrame to display.

`setup` loads the shipped cloner of MVTec AD bottle (results/runs/<key>/cloner.pt) when the bottle data and
the source weights are here, else trains a small cloner on the generated synthetic set: minutes either way.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from scipy import ndimage
from sklearn.metrics import roc_curve
from torch.utils.data import Dataset

from mkdlib import postprocess
from mkdlib.config import MKDConfig, paper_config
from mkdlib.datasets import DatasetNotFoundError, get_dataset
from mkdlib.datasets.base import for_display
from mkdlib.localization import input_gradients, localize
from mkdlib.losses import MKDLoss
from mkdlib.metrics import CROSS, au_pro, image_auroc, paper_pixel_auroc, paper_pixel_curve, pixel_auroc, pro_curve
from mkdlib.models import Cloner, Source, eval_mode, n_parameters
from mkdlib.paper.notebook import notebook_paths
from mkdlib.plots import heat_overlay, show_figures_in_notebooks
from mkdlib.runs.loading import load_model
from mkdlib.runs.spec import RunSpec
from mkdlib.scoring import score
from mkdlib.train import build, fit

show_figures_in_notebooks()


@dataclass
class Walkthrough:
    """A trained source/cloner pair with its data: what every step below draws from."""

    source: Source
    cloner: Cloner
    cfg: MKDConfig
    train: Dataset
    test: Dataset
    history: pd.DataFrame  # epoch, loss
    origin: str  # where the cloner comes from, for the reader

    @property
    def loss(self) -> MKDLoss:
        """The scoring loss: pool3-pool5 (training distils pool2 too)."""
        return MKDLoss.from_config(self.cfg, self.cfg.score_layers)


def setup(runs_dir: str | Path | None = None, *, data_root: str | None = None, epochs: int = 30, image_size: int = 64,
          device: str = "cpu") -> Walkthrough:
    """The shipped bottle record's cloner where its data and weights are here; else a small cloner trained
    now on the synthetic set (ImageNet source where its weights are found, else a random one)."""
    spec = RunSpec("mvtec", "bottle", data_root=data_root)
    runs_dir = notebook_paths("paper", None, runs_dir)[1]  # None: the checkout's results/runs
    record = runs_dir / spec.key()
    try:
        _, cfg, source, cloner = load_model(record, device=device)
        train, test = (get_dataset("mvtec", data_root, split=s, normal_class="bottle") for s in ("train", "test"))
        history = pd.read_csv(record / "history.csv")
        origin = (f"the shipped cloner of MVTec AD bottle (record {spec.key()}: the paper profile, "
                  f"{cfg.epochs} epochs), loaded without training")
        return Walkthrough(source, cloner, cfg, train, test, history, origin)
    except (DatasetNotFoundError, OSError, RuntimeError, ValueError) as err:
        why = " ".join(str(err).split())[:160]
        print(f"the bottle record cannot be used here ({why}): training a small cloner on the synthetic set",
              file=sys.stderr)
    cfg = paper_config("synthetic", epochs=epochs, image_size=image_size, batch_size=16)
    train = get_dataset("synthetic", split="train", image_size=image_size)
    test = get_dataset("synthetic", split="test", image_size=image_size)
    try:
        source, cloner, loss = build(cfg, device=device)
        weights = "ImageNet VGG-16"
    except RuntimeError:  # no weights here: a random source still shows every step
        source, cloner, loss = build(cfg, weights=None, device=device)
        weights = "a random VGG-16 (no ImageNet weights found)"
    history = pd.DataFrame(fit(cloner, source, train, cfg, loss, device=device, progress=False))
    origin = f"a small cloner trained here on the synthetic set ({epochs} epochs at {image_size} px; source: {weights})"
    return Walkthrough(source, cloner, cfg, train, test, history, origin)


def _images(data: Dataset, indices) -> torch.Tensor:
    return torch.stack([data[int(i)]["image"] for i in indices])


def _defects(w: Walkthrough) -> list[int]:
    """The first test image of each defect type."""
    groups = list(w.test.groups)
    return [groups.index(g) for g in dict.fromkeys(g for g in groups if g != "good")]


def _pair(w: Walkthrough) -> list[int]:
    """The first good test image and the first defective one."""
    return [list(w.test.groups).index("good"), _defects(w)[0]]


def data_figure(w: Walkthrough, n_train: int = 4) -> Figure:
    """Top: training images (all normal); bottom: one test image per defect type with its mask."""
    defects = _defects(w)
    fig = Figure(figsize=(2.0 * max(n_train, len(defects)), 6.2))
    axes = fig.subplots(3, max(n_train, len(defects)), squeeze=False)
    train = for_display(w.train, _images(w.train, range(n_train)))
    test = for_display(w.test, _images(w.test, defects))
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, image in zip(axes[0], train):
        ax.imshow(image.permute(1, 2, 0))
        ax.set_title("train (normal)", fontsize=8)
    for ax_img, ax_mask, image, i in zip(axes[1], axes[2], test, defects):
        ax_img.imshow(image.permute(1, 2, 0))
        ax_img.set_title(f"test: {w.test.groups[i]}", fontsize=8)
        ax_mask.imshow(w.test.masks[i], cmap="gray", vmin=0, vmax=1)
        ax_mask.set_title("its mask", fontsize=8)
    fig.tight_layout()
    return fig


def networks_table(w: Walkthrough) -> pd.DataFrame:
    """The critical layers (taps) of both networks: their output shapes on one image, and each network's
    parameters; the cloner's taps have the source's shapes, so no adapter is needed."""
    x = _images(w.test, [0])
    with torch.no_grad(), eval_mode(w.cloner):
        s, c = w.source(x), w.cloner(x)
    rows = {name: {"source (C, H, W)": tuple(s[name].shape[1:]), "cloner (C, H, W)": tuple(c[name].shape[1:]),
                   "trained on": "yes" if name in w.cfg.train_layers else "no",
                   "scored on": "yes" if name in w.cfg.score_layers else "no"} for name in s}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = (f"tap (source {n_parameters(w.source):,} parameters, frozen; cloner "
                        f"{n_parameters(w.cloner):,}, trained)")
    return table


def loss_figure(w: Walkthrough) -> Figure:
    """Training (paper sec. 3.2): the mean loss per epoch over the training images."""
    fig = Figure(figsize=(5.5, 3))
    ax = fig.subplots()
    ax.plot(w.history["epoch"], w.history["loss"])
    ax.set(yscale="log", xlabel="epoch", ylabel="loss (value + direction terms)", title="training loss")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def activations_figure(w: Walkthrough) -> Figure:
    """For a good and a defective test image, at each score layer: the source's and the cloner's activation
    (the norm over channels at each position) and their squared difference, the value term's map."""
    picks = _pair(w)
    x = _images(w.test, picks)
    with torch.no_grad(), eval_mode(w.cloner):
        s, c = w.source(x), w.cloner(x)
    layers = list(w.cfg.score_layers)
    fig = Figure(figsize=(2.1 * 3 * len(picks), 2.1 * len(layers) + 0.4))
    axes = fig.subplots(len(layers), 3 * len(picks), squeeze=False)
    for col, i in enumerate(picks):
        for row, name in enumerate(layers):
            src, clo = s[name][col], c[name][col]  # (C, h, w)
            panels = (src.norm(dim=0), clo.norm(dim=0), (clo - src).pow(2).mean(dim=0))
            titles = ("source", "cloner", "(cloner − source)²")
            for k, (panel, title) in enumerate(zip(panels, titles)):
                ax = axes[row, 3 * col + k]
                ax.imshow(panel.numpy(), cmap="magma")
                ax.set(xticks=[], yticks=[])
                if row == 0:
                    ax.set_title(f"{w.test.groups[i]}: {title}", fontsize=7)
                if k == 0:
                    ax.set_ylabel(name)
    fig.tight_layout()
    return fig


def terms_table(w: Walkthrough) -> pd.DataFrame:
    """Each score layer's value term (MSE) and direction term (1 − cosine) for the good and the defective
    image, and the weighted total: the anomaly score (paper Eqs. 2-4; λ on the value term, as coded)."""
    picks = _pair(w)
    x = _images(w.test, picks)
    loss = w.loss
    with torch.no_grad(), eval_mode(w.cloner):
        terms = loss.terms(w.cloner(x), w.source(x))
        total = loss(w.cloner(x), w.source(x), reduction="none")
    columns = [f"{w.test.groups[i]} (image {i})" for i in picks]
    score_name = f"score = {loss.direction_weight:g} × Σ direction + {loss.value_weight:g} × Σ value"
    rows = {name: [float(v) for v in values] for name, values in {**terms, score_name: total}.items()}
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).round(4)


def scores_figure(w: Walkthrough) -> Figure:
    """Detection (paper sec. 3.3): the test scores per defect type and the ROC curve with its AUROC."""
    scores = score(w.cloner, w.loss, w.test, source=w.source, batch_size=w.cfg.batch_size)
    labels, groups = np.asarray(w.test.labels), np.asarray(w.test.groups)
    fig = Figure(figsize=(9, 3.2))
    hist, roc = fig.subplots(1, 2)
    bins = np.linspace(scores.min(), scores.max(), 30)
    for group in sorted(set(groups), key=lambda g: (g != "good", g)):
        hist.hist(scores[groups == group], bins=bins, alpha=0.55, label=group)
    hist.set(xlabel="anomaly score (MKD loss, pool3-pool5)", ylabel="test images", title="scores per group")
    hist.legend(fontsize=7)
    fpr, tpr, _ = roc_curve(labels, scores)
    roc.plot(fpr, tpr, label=f"AUROC {100 * image_auroc(labels, scores):.2f}")
    roc.plot([0, 1], [0, 1], ":", color="gray")
    roc.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    roc.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def map_stages_figure(w: Walkthrough, threshold: float = 0.5) -> Figure:
    """One defective image's map through every stage (paper Eqs. 5-6, as coded): the input gradient of its
    score, grey (Σ over channels of |gradient|), percentile-99 normalisation, the Gaussian (σ 4 px at
    128 px), then thresholding and the opening with the 3×3 cross; beside the ground truth."""
    i = _defects(w)[0]
    x = _images(w.test, [i])
    grads = input_gradients(x, w.source, w.cloner, w.loss).detach().numpy()  # (1, 3, H, W)
    grey = postprocess.grey(grads)
    normalised = postprocess.percentile_normalize(grey)
    blurred = postprocess.gaussian_blur(normalised)
    opened = ndimage.binary_opening(blurred[0] >= threshold, structure=CROSS)
    rgb = np.abs(grads[0]).transpose(1, 2, 0)
    stages = [("image", for_display(w.test, x)[0].permute(1, 2, 0).numpy(), None),
              ("input gradient (|∂score/∂x|, RGB)", rgb / rgb.max(), None), ("grey", grey[0], "magma"),
              ("percentile-99 normalised", normalised[0], "magma"), ("Gaussian", blurred[0], "jet"),
              (f"> {threshold:g}, opened", opened, "gray"), ("ground truth", w.test.masks[i], "gray")]
    fig = Figure(figsize=(2.1 * len(stages), 2.5))
    for ax, (title, panel, cmap) in zip(fig.subplots(1, len(stages)), stages):
        ax.imshow(panel, cmap=cmap)
        ax.set_title(title, fontsize=7)
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def heatmaps_figure(w: Walkthrough, n: int = 3) -> Figure:
    """The finished maps of a few defective images over the image, beside their masks."""
    defects = _defects(w)
    x = _images(w.test, defects[:n])
    maps = localize(x, w.source, w.cloner, w.loss)
    fig = Figure(figsize=(2.2 * 2 * len(x), 2.4))
    axes = fig.subplots(1, 2 * len(x))
    for k, (image, heat, i) in enumerate(zip(for_display(w.test, x), maps, defects)):
        axes[2 * k].imshow(image.permute(1, 2, 0))
        axes[2 * k].imshow(heat_overlay(heat))
        axes[2 * k].set_title(w.test.groups[i], fontsize=8)
        axes[2 * k + 1].imshow(w.test.masks[i], cmap="gray", vmin=0, vmax=1)
        axes[2 * k + 1].set_title("mask", fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    return fig


def pixel_metrics_figure(w: Walkthrough) -> Figure:
    """The three pixel metrics on the test set's maps: the paper's protocol (anomalous images only, 1000
    thresholds, opening, soft masks), the standard pixel ROC over all images, and the PRO curve (AU-PRO up
    to a false-positive rate of 0.3)."""
    x = _images(w.test, range(len(w.test)))
    maps = localize(x, w.source, w.cloner, w.loss)
    masks, labels = w.test.masks, np.asarray(w.test.labels)
    fig = Figure(figsize=(11, 3.4))
    paper, standard, pro = fig.subplots(1, 3)
    fpr, tpr = paper_pixel_curve(masks, maps, labels)
    paper.plot(fpr, tpr, label=f"area {100 * paper_pixel_auroc(masks, maps, labels):.2f}")
    paper.set(title="the paper's protocol (anomalous images)", xlabel="FPR", ylabel="TPR")
    fpr, tpr, _ = roc_curve(masks.ravel() >= 0.5, maps.ravel())
    standard.plot(fpr, tpr, label=f"AUROC {100 * pixel_auroc(masks, maps):.2f}")
    standard.set(title="standard pixel ROC (all images)", xlabel="FPR", ylabel="TPR")
    fpr, overlap = pro_curve(masks, maps)
    pro.plot(fpr, overlap, label=f"AU-PRO (FPR ≤ 0.3) {100 * au_pro(masks, maps):.2f}")
    pro.axvline(0.3, color="gray", ls=":")
    pro.set(title="per-region overlap", xlabel="FPR", ylabel="PRO")
    for ax in (paper, standard, pro):
        ax.legend(fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
