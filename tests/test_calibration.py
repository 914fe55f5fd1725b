"""calibration: normalised image scores (threshold at 0.5), the fixed map scale, decisions at the threshold."""
import numpy as np
import pytest

from mkdlib.calibration import CALIBRATION, at_threshold, image_calibration, normalize_scores, shared_scale
from mkdlib.decisions import read_calibration
from mkdlib.runs.store import RunError


def test_scores_training_minimum_to_0_threshold_to_0_5_monotone_and_clipped():
    cal = image_calibration([2.0, 2.5], threshold=3.0)
    out = normalize_scores([1.0, 2.0, 2.5, 3.0, 3.25, 4.0, 9.0], cal)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.25, 0.5, 0.625, 1.0, 1.0])
    assert np.all(np.diff(out) >= 0)


def test_a_user_threshold_is_0_5_and_keeps_the_runs_span():
    cal = image_calibration([2.0, 2.5], threshold=3.0)
    np.testing.assert_allclose(normalize_scores([5.0, 5.5], cal, threshold=5.0), [0.5, 0.75])


def test_equal_training_scores_still_decide_at_the_threshold():
    out = normalize_scores([0.9, 1.0, 1.1], image_calibration([1.0, 1.0]))
    assert out[0] < 0.5 == out[1] < out[2]


def test_the_default_threshold_is_the_99th_percentile_of_the_training_scores():
    scores = np.arange(101.0)  # 0 .. 100
    cal = image_calibration(scores)
    assert (cal["min"], cal["threshold"]) == (0.0, 99.0) and "percentile 99" in cal["threshold_rule"]


def test_maps_share_one_affine_scale_median_to_0_pixel_threshold_to_0_5():
    cal = {"offset": 1.0, "pixel_threshold": 3.0, "scale": 4.0}
    maps = np.stack([np.full((8, 8), v) for v in (1.0, 3.0, 5.0)])  # constant: the blur keeps them
    np.testing.assert_allclose(shared_scale(maps, cal)[:, 4, 4], [0.0, 0.5, 1.0], atol=1e-12)


def test_confusion_counts_precision_recall_f1():
    d = at_threshold([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert (d["tp"], d["fp"], d["tn"], d["fn"]) == (2, 1, 1, 1)
    assert d["precision"] == pytest.approx(2 / 3) and d["recall"] == pytest.approx(2 / 3)
    assert d["f1"] == pytest.approx(2 / 3)
    none = at_threshold([0, 0], [0, 0])
    assert none["precision"] == none["recall"] == none["f1"] == 0.0 and none["tn"] == 2


def test_a_corrupt_calibration_says_delete_it(tmp_path):
    assert read_calibration(tmp_path) == {}
    (tmp_path / CALIBRATION).write_text("{")
    with pytest.raises(RunError, match="calibration.json.*delete"):
        read_calibration(tmp_path)
