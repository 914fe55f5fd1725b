"""Heatmap rows (Figures 1, 6) and mean-AUROC bars (Figures 3-5): drawn without a display, written as PNG."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mkdlib.paper import figures, items, tabulation
from mkdlib.paper.markdown import comparison_table
from mkdlib.paper.numbers import MVTEC_CATEGORIES
from mkdlib.plots import decision_figure, heat_overlay, heatmap_rows, means_figure, save_figure
from mkdlib.runs import RunSpec, run
from mkdlib.runs.spec import RunResult


def _case(n=2, size=16):
    rng = np.random.default_rng(0)
    masks = np.zeros((n, size, size))
    masks[:, 4:9, 5:10] = 1
    return rng.random((n, 3, size, size)), masks, np.clip(masks * 0.8 + 0.2 * rng.random(masks.shape), 0, 1)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_heatmap_rows_writes_png(tmp_path, threshold):
    images, masks, maps = _case()
    fig = heatmap_rows(images, masks, maps, titles=["bottle/broken", "grid/bent"], threshold=threshold)
    assert len(fig.axes) == 6
    path = save_figure(fig, tmp_path / "fig6" / "rows.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heatmap_rows_accepts_tensors_and_channels_last(tmp_path):
    images, masks, maps = _case(n=1)
    heatmap_rows(torch.from_numpy(images), masks, maps)
    heatmap_rows(images.transpose(0, 2, 3, 1), masks, maps)
    heatmap_rows(images[:, 0], masks, maps)  # grey


def test_overlay_leaves_low_scores_transparent():
    score = np.array([[0.0, 0.3], [0.7, 1.0]])
    assert heat_overlay(score)[0, 0, 3] == 0 and heat_overlay(score)[1, 1, 3] > 0
    alpha = heat_overlay(score, threshold=0.5)[..., 3]
    np.testing.assert_array_equal(alpha > 0, score >= 0.5)


def test_heatmap_rows_bad_input():
    images, masks, maps = _case()
    with pytest.raises(ValueError, match="must match"):
        heatmap_rows(images, masks, maps[:, :-1])
    with pytest.raises(ValueError, match="titles"):
        heatmap_rows(images, masks, maps, titles=["one"])
    with pytest.raises(ValueError, match="NaN"):
        heatmap_rows(images, masks, maps * np.nan)


@pytest.mark.parametrize("with_mask", [False, True])
def test_decision_figure_panels_colour_bar_title_and_outline(tmp_path, with_mask):
    images, masks, maps = _case(n=1)
    fig = decision_figure(images[0], maps[0] * 1.5, title="good/000.png: score 0.800, anomalous",
                          mask=masks[0] if with_mask else None)
    assert len(fig.axes) == 3 + with_mask + 1  # the panels and the map's colour bar
    assert fig._suptitle.get_text() == "good/000.png: score 0.800, anomalous"
    assert fig.axes[-2].collections  # the predicted mask's outline
    assert save_figure(fig, tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    cool = decision_figure(images[0], maps[0] * 0.1)  # nothing above the threshold: no outline
    assert not cool.axes[-2].collections


def test_decision_figure_bad_input():
    images, _, maps = _case(n=1)
    with pytest.raises(ValueError, match="same height and width"):
        decision_figure(images[0], maps[0][:-1])
    with pytest.raises(ValueError, match="NaN"):
        decision_figure(images[0], maps[0] * np.nan)


def test_means_figure_draws_a_panel_per_dataset(tmp_path):
    tabs = {s: comparison_table("table9", pd.DataFrame({"final": dict.fromkeys(MVTEC_CATEGORIES, 80.0)}), column=s)
            for s in ("equal_net", "smaller_net")}
    fig = means_figure({"MVTec AD": tabs, "again": tabs}, "Figure 4")
    assert len(fig.axes) == 2 and fig._suptitle.get_text() == "Figure 4"
    assert [p.get_height() for p in fig.axes[0].patches][2:] == pytest.approx([80.0, 80.0])  # ours
    assert save_figure(fig, tmp_path / "f4.png").read_bytes()[:4] == b"\x89PNG"


def test_means_figure_for_labels_smoke_tables():
    specs = items.specs_for("table7", "smoke") + items.specs_for("table8", "smoke")
    metrics = {"image_auroc": {"final": 0.75, "mean": 0.75, "std": 0.0}, "pixel": {}, "weights": "w"}
    results = [RunResult(s, Path("/nowhere") / s.key(), metrics) for s in specs]
    tabs = {**tabulation.tables("table7", results, profile="smoke"), **tabulation.tables("table8", results, profile="smoke")}
    fig = figures.means_figure_for("figure3", tabs)
    assert len(fig.axes) == 2 and "NOT paper numbers" in fig._suptitle.get_text()


def test_save_heatmaps_lists_runs_that_did_not_finish(tmp_path, capsys):
    spec = items.specs_for("table3", "smoke")[0]
    failed = RunResult(spec, None, None, "mvtec data not found: expected /x. To obtain it: ...",
                       "DatasetNotFoundError")
    assert figures.save_heatmaps("figure6", [failed], tmp_path) == []
    assert "figure6_mvtec_leather: not run: mvtec data not found: expected /x." in capsys.readouterr().out


def test_save_heatmaps_lists_a_record_without_its_final_cloner(tmp_path, capsys):
    """Committed run records keep no checkpoints: the figure says what is missing; the notebook goes on."""
    spec = RunSpec("synthetic", config=dict(image_size=32, epochs=2, eval_every=1, sample_last=1, batch_size=4,
                                           cloner="small"),
                   data_root=str(tmp_path / "data"), weights=None,
                   dataset_options=dict(size=32, n_train=4, n_test_good=2, n_test_defect=2))
    result = run(spec, tmp_path / "runs", progress=False)
    shutil.rmtree(result.run_dir / "checkpoints")
    (result.run_dir / "cloner.pt").unlink()  # records keep it now: without it too, the final cloner is missing
    assert figures.save_heatmaps("figure6", [result], tmp_path) == []
    assert "figure6_synthetic: not drawn: missing final cloner" in capsys.readouterr().out
