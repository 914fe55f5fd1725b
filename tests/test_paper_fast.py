"""paper.fast: the fast profile's comparison runs, the runs trained beside finished paper runs, the table."""

from __future__ import annotations

import math

import pytest

from mkdlib.paper import fast
from mkdlib.runs.spec import RunResult
from tests.test_paper_tabulation import _ok


def test_fast_partners_trains_only_beside_finished_paper_runs():
    specs = fast.comparison_specs("paper", classes={"table2_mnist": ["0", "5"], "table2_fashionmnist": [],
                                                    "table6": [], "table3": [], "table4": []})
    paper = [RunResult(s, None, {"image_auroc": {}}, None) if s.normal_class == 0 else
             RunResult(s, None, None, "no finished run", "NotRun") for s in specs["paper"]]
    assert [(s.normal_class, s.config["schedule"]) for s in fast.partners(specs, paper)] == [(0, "cosine")]
    smoke = fast.comparison_specs("smoke", classes={"table2_mnist": ["0"], "table2_fashionmnist": [],
                                                    "table6": [], "table3": [], "table4": []})
    none_done = [RunResult(s, None, None, "no finished run", "NotRun") for s in smoke["paper"]]
    assert fast.partners(smoke, none_done) == smoke["fast"]  # a profile beside itself: all are trained
    with pytest.raises(ValueError, match="not aligned"):
        fast.partners({"fast": specs["fast"][::-1], "paper": specs["paper"]}, paper)


def test_fast_beside_paper_rows_ratios_means_and_dev():
    specs = fast.comparison_specs("paper", classes={"table2_mnist": ["0", "5"], "table2_fashionmnist": [],
                                                    "table6": [], "table3": [], "table4": []})
    assert {s.dataset for s in specs["fast"]} == {"mnist"} and all(s.config["schedule"] == "cosine" for s in specs["fast"])

    def done(spec, final, epochs, seconds):
        res = _ok(spec, final)
        res.metrics.update(epochs=epochs, n_train=100, timing_s={"train": seconds})
        return res

    paper = [done(s, 0.99, 51, 500.0) for s in specs["paper"]]
    quick = [done(s, 0.98, 10, 90.0) for s in specs["fast"][:1]]  # class 5's fast run is missing
    df = fast.comparison(paper, quick).set_index("class")
    assert list(df.index) == ["0", "5", "mean"] and bool(df.at["0", "dev"]) and not df.at["5", "dev"]
    assert df.at["0", "diff"] == pytest.approx(-1.0) and df.at["0", "passes_ratio"] == pytest.approx(10 / 51)
    assert df.at["0", "time_ratio"] == pytest.approx(0.18) and math.isnan(df.at["5", "fast_final"])
    assert math.isnan(df.at["mean", "fast_final"]) and df.at["mean", "paper_final"] == pytest.approx(99.0)
    text = fast.comparison_markdown(df.reset_index())
    assert "| table2_mnist | image_auroc | 0 | dev | 99.00 |" in text and "0.196" in text and "—" in text


def test_no_mean_over_different_datasets():
    specs = fast.comparison_specs("paper", classes={"table2_mnist": [], "table2_fashionmnist": [], "table3": [],
                                                    "table4": []}, seeds=[0])
    assert {s.dataset for s in specs["paper"]} == {"headct", "brainmri"}
    def done(spec, final):
        res = _ok(spec, final)
        res.metrics.update(epochs=spec.mkd_config().epochs, n_train=90, timing_s={"train": 10.0})
        return res

    df = fast.comparison([done(s, 0.9) for s in specs["paper"]], [done(s, 0.8) for s in specs["fast"]])
    assert "mean" not in set(df["class"]) and set(df["class"]) >= {"headct", "brainmri"}


def test_a_row_of_seeds_is_compared_on_the_seeds_both_profiles_finished():
    specs = fast.comparison_specs("paper", classes={"table2_mnist": [], "table2_fashionmnist": [], "table3": [],
                                                    "table4": []}, seeds=[0, 1, 2])

    def done(spec, final):
        res = _ok(spec, final)
        res.metrics.update(epochs=spec.mkd_config().epochs, n_train=90, timing_s={"train": 10.0})
        return res

    paper = [done(s, 0.80 + 0.05 * s.seed) for s in specs["paper"]]  # seeds 0, 1, 2: 80, 85, 90
    quick = [done(s, 0.80) for s in specs["fast"] if s.seed == 0 and s.dataset == "brainmri"]
    df = fast.comparison(paper, quick).set_index("class")
    assert df.at["brainmri", "paper_runs"] == 1 and df.at["brainmri", "fast_runs"] == 1
    assert df.at["brainmri", "paper_final"] == pytest.approx(80.0) and df.at["brainmri", "diff"] == pytest.approx(0)
    assert df.at["headct", "paper_runs"] == 3 and df.at["headct", "fast_runs"] == 0  # no fast run: all paper seeds
    assert df.at["headct", "paper_final"] == pytest.approx(85.0)
    assert "| brainmri | " in fast.comparison_markdown(df.reset_index())
