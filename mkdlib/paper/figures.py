"""The paper's figures from its items: Figures 3-5 (mean AUROC bars) from the tables of
`mkdlib.paper.tabulation.tables`, Figures 1 and 6 (heatmap rows) from finished runs, drawn by `mkdlib.plots`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from mkdlib.datasets.base import for_display
from mkdlib.localization import GRADIENTS, localize
from mkdlib.paper.items import FIGURES, title
from mkdlib.paper.numbers import PAPER
from mkdlib.paper.tabulation import failure_note, output_name
from mkdlib.plots import heatmap_rows, means_figure, save_figure
from mkdlib.runs.loading import load_data, load_model
from mkdlib.runs.spec import RunResult
from mkdlib.runs.store import RunError
from mkdlib.scoring import score_loss


def _label(df: pd.DataFrame) -> str:
    """A bar's label: the paper's printed name of the table's column."""
    return PAPER[df.attrs["item"]].column_labels.get(df.attrs["column"], df.attrs["column"])


def means_figure_for(figure: str, tabs: Mapping[str, pd.DataFrame]) -> Figure:
    """Figure 3, 4 or 5 from the tables of the items and settings it draws (items.FIGURES)."""
    panels = {PAPER[item].title: {_label(tabs[output_name(item, s)]): tabs[output_name(item, s)] for s in settings}
              for item, settings in FIGURES[figure][1].items()}
    profiles = {df.attrs.get("profile", "paper") for p in panels.values() for df in p.values()} - {"paper"}
    return means_figure(panels, title(figure) + "".join(f" [profile {p}: NOT paper numbers]" for p in sorted(profiles)))


def heatmap_figure(result: RunResult, n: int = 3, *, device: str = "cpu") -> Figure:
    """Figure 6 style rows (image, ground truth, gradient map) for n test images of a finished run: one
    anomalous image per defect type where there are masks (Figs. 1 and 6), else normal images (Fig. 1's
    MNIST and CIFAR-10 rows: 'normal features')."""
    _, cfg, source, cloner = load_model(result.run_dir, device=device)
    test = load_data(result.spec, cfg, split="test")
    labels, kinds = np.asarray(test.labels), [Path(p).parent.name for p in test.paths]
    if test.has_masks:
        first: dict[str, int] = {}
        for i in np.flatnonzero(labels == 1):
            first.setdefault(kinds[i], int(i))
        pick = list(first.values())[:n]
    else:
        pick = [int(i) for i in np.flatnonzero(labels == 0)[:n]]
    items = [test[i] for i in pick]
    x = torch.stack([item["image"] for item in items])  # (n, 3, H, W) network input
    gen = torch.Generator(torch.device(device)).manual_seed(result.spec.seed)
    maps = localize(x.to(device), source, cloner, score_loss(cfg), method=GRADIENTS, generator=gen)
    masks = np.stack([item["mask"][0].numpy() if "mask" in item else np.zeros(x.shape[2:]) for item in items])
    name = result.spec.normal_class if result.spec.normal_class is not None else result.spec.dataset
    titles = [f"{name}: {kinds[i] if test.has_masks else 'normal'}" for i in pick]
    return heatmap_rows(for_display(test, x), masks, maps, titles=titles)


def save_heatmaps(figure: str, results: Iterable[RunResult], results_dir: str | Path, *, n: int = 3,
                  device: str = "cpu") -> list[Path]:
    """`<results_dir>/figures/<figure>_<dataset>_<class>.png` for each finished run; the others, and a run
    whose final cloner is not on this machine (committed records keep none), are listed, not drawn."""
    paths = []
    for res in results:
        name = "_".join(str(x) for x in (figure, res.spec.dataset, res.spec.normal_class) if x is not None)
        if not res.ok:
            print(f"{name}: {failure_note(res)}")
            continue
        try:
            drawn = heatmap_figure(res, n, device=device)
        except RunError as err:  # a record without its checkpoints: the tables stand, this figure waits
            print(f"{name}: not drawn: {err}")
            continue
        paths.append(save_figure(drawn, Path(results_dir) / "figures" / f"{name}.png"))
    return paths
