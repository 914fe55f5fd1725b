"""calibration: normalised image scores (threshold at 0.5), the fixed map scale, decisions at the threshold;
calibration.json written with its digest and read back checked (tests/test_detector.py: on a real run)."""
import json

import numpy as np
import pytest

from mkdlib.calibration import CALIBRATION, at_threshold, image_calibration, normalize_scores, shared_scale
from mkdlib.decisions import compact, digest, read_calibration, write_calibration
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


CAL = {"image": {"min": 0.1, "threshold": 0.2},
       "maps": {"gradients": {"offset": 0.0, "pixel_threshold": 0.5, "scale": 1.0}}}


def test_a_calibration_is_written_with_its_digest_and_reads_back_as_written(tmp_path):
    scores = np.float32([0.1, 0.125, 0.2, 1 / 3])
    stored = write_calibration(tmp_path, {**CAL, "image": {**CAL["image"], "train_scores": compact(scores)}})
    assert stored["sha256"] == digest(stored) and read_calibration(tmp_path) == stored
    text = (tmp_path / CALIBRATION).read_text()
    assert '"train_scores": [0.1,0.125,0.2,0.33333334]' in text  # one line, float32's shortest decimals
    assert np.array_equal(np.float32(read_calibration(tmp_path)["image"]["train_scores"]), scores)


@pytest.mark.parametrize("change, words", [
    (lambda c: c["image"].update(min=1.0, threshold=0.5), "below image.min"),
    (lambda c: c["image"].update(min=-0.1), "image.min = -0.1"),
    (lambda c: c["maps"]["gradients"].update(scale=-1.0), "scale = -1.0"),
    (lambda c: c["maps"]["gradients"].update(scale=3.0), "not 2 \\* \\(pixel_threshold - offset\\)"),
    (lambda c: c["image"].update(threshold=float("inf")), "image.threshold = inf"),
    (lambda c: c.update(active="f1-2026-01-01-1"), "no such threshold"),
    (lambda c: c.update(thresholds={"f1-x": {"threshold": 0.3, "f1": 1.5, "precision": 1, "recall": 1}}), "above 1"),
    (lambda c: c.update(thresholds={"f1-x": {"threshold": 0.3, "f1": 1, "precision": 1, "recall": 1, "n_good": 0,
                                             "n_anomalous": 2, "created": "2026"}}), "n_good = 0"),
])
def test_calibration_values_out_of_range_are_refused(tmp_path, change, words):
    """A calibration.json without a digest (written before it existed) is checked by its ranges."""
    cal = json.loads(json.dumps(CAL))
    change(cal)
    (tmp_path / CALIBRATION).write_text(json.dumps(cal))
    with pytest.raises(RunError, match=f"calibration.json .*{words}.*delete it"):
        read_calibration(tmp_path)
    with pytest.raises(RunError, match=words):
        write_calibration(tmp_path / "new", cal)  # never stored either
