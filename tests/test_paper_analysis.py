"""paper/analysis.py: what a notebook shows after its tables, read from run records only."""

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from mkdlib.paper import analysis, markdown
from mkdlib.runs.runner import run
from mkdlib.runs.spec import RunResult, RunSpec

CONFIG = dict(image_size=32, epochs=3, eval_every=1, sample_last=2, batch_size=4)
DATA = dict(size=32, n_train=8, n_test_good=3, n_test_defect=3)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    specs = [RunSpec("synthetic", config=CONFIG, seed=s, data_root=str(tmp / "data"), weights=None,
                     dataset_options=DATA) for s in (0, 1)]
    return [run(s, tmp / "runs", progress=False) for s in specs]


def test_paper_vs_ours_and_reading_say_where_ours_differs():
    ours = pd.DataFrame({"final": {"bottle": 99.0, "transistor": 80.0}, "mean": {"bottle": 98.9, "transistor": 79.5},
                         "std": {"bottle": 0.1, "transistor": 0.4}})
    table = markdown.comparison_table("table3", ours)
    assert isinstance(analysis.paper_vs_ours(table), Figure)
    text = analysis.reading(table)
    assert "2 of 15 classes ran" in text and "transistor (-5.55)" in text and "Within 1 point of the paper: bottle" in text
    assert "Paddle port" in text  # Table 3 carries the independent reproduction's numbers
    pixel = markdown.comparison_table("table4", ours)
    pixel[["paper", "paper_pm", "paddle", "diff"]] = np.nan  # a metric the paper does not report
    assert "the paper reports no such number" in analysis.reading(pixel)


def test_curves_scores_and_groups_come_from_the_records(finished):
    assert isinstance(analysis.training_curves(finished), Figure)
    assert isinstance(analysis.score_distributions(finished), Figure)
    groups = analysis.per_group_auroc(finished[0])
    assert set(groups.index) >= {"all"} and (groups["AUROC (%)"].between(0, 100)).all()
    assert groups.at["all", "images"] == 3  # the anomalous test images
    table = analysis.scores(finished[0])
    assert set(table["group"]) <= {"good", "scratch", "spot", "crack"} and len(table) == 6


def test_nothing_finished_is_said_not_drawn():
    missing = [RunResult(RunSpec("mvtec", "bottle"), None, None, "not here", "DatasetNotFoundError")]
    for shown in (analysis.training_curves(missing), analysis.score_distributions(missing),
                  *analysis.per_group_aurocs(missing), *analysis.comparisons({})):
        assert not isinstance(shown, Figure) and "No" in shown.data


def test_schedule_choice_draws_the_curve_its_band_and_each_candidate(tmp_path):
    curve = tmp_path / "curve.csv"
    pd.DataFrame({"epoch": [100, 300, 601], "image_auroc": [74.0, 82.5, 84.75],
                  "paper_pixel_auroc": [75.0, 75.2, 75.1]}).to_csv(curve, index=False)
    selection = tmp_path / "selection.csv"
    pd.DataFrame({"candidate": ["cosine 3e-3", "cosine 1e-2, 2/5", "cosine 3e-3"], "dataset": ["mvtec", "mvtec", "mnist"],
                  "class": ["transistor", "transistor", "0"], "final": [78.0, 84.33, 99.8], "epochs": [120, 240, 10],
                  "localisation": [74.47, 74.57, None]}).to_csv(selection, index=False)
    fig = analysis.schedule_choice(selection, curve)
    detection, localisation = fig.axes
    assert [len(line.get_xdata()) for line in detection.lines] == [3, 1, 1]  # the curve, then two candidates
    assert {tuple(line.get_xdata()) for line in detection.lines[1:]} == {(120,), (240,)}
    assert "transistor" in detection.get_title() and len(localisation.lines) == 3
    assert "not found" in analysis.schedule_choice(tmp_path / "absent.csv", curve).data
