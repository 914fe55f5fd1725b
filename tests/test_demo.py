import json

from mkdlib.demo import quick_demo


def test_quick_demo_writes_metrics_and_figure(tmp_path):
    metrics = quick_demo(tmp_path / "out", epochs=2, image_size=32, weights=None, data_root=tmp_path / "data",
                         progress=False)
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written == metrics
    assert 0 <= metrics["image_auroc"] <= 1 and 0 <= metrics["paper_pixel_auroc"] <= 1
    assert metrics["weights"].startswith("random")
    assert (tmp_path / "out" / "heatmaps.png").stat().st_size > 1000
