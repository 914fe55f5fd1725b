"""Figure 6-style heatmap rows: drawn without a display and written as PNG."""
import numpy as np
import pytest
import torch

from mkdlib.figures import heat_overlay, heatmap_rows, save_figure


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
