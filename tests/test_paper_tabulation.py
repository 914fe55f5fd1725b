"""Finished runs read back into the paper's tables: rows, settings and seeds; not-run and failed notes;
config overrides; the files and the index written."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from mkdlib.localization import GRADIENTS, GUIDED_BACKPROP, SMOOTHGRAD_REFERENCE
from mkdlib.paper import items, tabulation
from mkdlib.paper.markdown import COLUMNS, NOT_ASKED
from mkdlib.paper.numbers import MVTEC_CATEGORIES, paper_value
from mkdlib.runs.spec import RunResult, RunSpec


def _metrics(final: float, mean: float | None = None, std: float = 0.01, pixel: dict | None = None) -> dict:
    """A metrics.json as runner.run writes it (AUROCs as fractions)."""
    return {"image_auroc": {"final": final, "final_epoch": 2, "mean": final if mean is None else mean,
                            "std": std, "per_epoch": {1: final, 2: final}},
            "pixel": pixel or {}, "threshold": 1.0, "weights": "test-weights"}


def _ok(spec: RunSpec, final: float = 0.9, **kw) -> RunResult:
    return RunResult(spec, Path("/nowhere") / spec.key(), _metrics(final, **kw))


def _missing(spec: RunSpec, where: str = "/data/mvtec/bottle/train") -> RunResult:
    return RunResult(spec, None, None, f"mvtec data not found: expected {where}. To obtain it: download ...",
                     "DatasetNotFoundError")


def test_config_overrides_reach_every_run_and_the_tables():
    specs = items.specs_for("table6", "paper", classes=["headct"], config={"lr": 0.002, "channels_last": True})
    assert len(specs) == 5 and all(s.config == {"lr": 0.002} and s.execution == {"channels_last": True} for s in specs)
    df = tabulation.tables("table6", [_ok(s) for s in specs], profile="paper")["table6"]
    # what a run trains is named; how it was computed (layout) is not an override
    assert df.at["headct", "overrides"] == "lr=0.002" and "5 seeds" in df.at["headct", "note"]
    assert any("lr=0.002" in n for n in df.attrs["notes"])
    aug = items.specs_for("table6", "paper", classes=["headct_aug"], seeds=[0], config={"lr": 0.002})
    assert aug[0].config == {"lr": 0.002, "augment": True}  # the row's own key is not an override
    assert tabulation.tables("table6", [_ok(aug[0])], profile="paper")["table6"].at["headct_aug", "overrides"] == "lr=0.002"
    plain = tabulation.tables("table6", [_ok(items.specs_for("table6", "paper", classes=["headct"])[0])], profile="paper")
    assert plain["table6"].at["headct", "overrides"] == "" and not any("overrides" in n for n in plain["table6"].attrs["notes"])
    smoke = tabulation.tables("table6", [_ok(s) for s in items.specs_for("table6", "smoke")], profile="smoke")["table6"]
    assert (smoke["overrides"].dropna() == "").all()  # the profile's own settings are not overrides
    with pytest.raises(ValueError, match="augment"):
        items.specs_for("table6", "paper", config={"augment": True})  # what Table 6 compares


@pytest.mark.parametrize("recorded, shown", [({"amp": True}, "bf16 training and scoring"),
                                             ({"amp": False, "bf16_inference": True}, "bf16 scoring"),
                                             ({"amp": False, "bf16_inference": False}, ""), ({}, "")])
def test_the_tables_say_where_a_run_computed_in_bf16(tmp_path, recorded, shown):
    """From the configuration the run recorded (spec.json), whatever the spec asked for."""
    spec = items.specs_for("table6", "paper", classes=["headct"], seeds=[0])[0]
    run_dir = tmp_path / spec.key()
    run_dir.mkdir()
    (run_dir / "spec.json").write_text(json.dumps({"config": {**spec.mkd_config().to_dict(), **recorded}}))
    df = tabulation.tables("table6", [RunResult(spec, run_dir, _metrics(0.9))], profile="paper")["table6"]
    assert df.at["headct", "overrides"] == shown
    with pytest.raises(ValueError, match="unknown config field.*'ampp'"):
        items.specs_for("table6", "paper", config={"ampp": True})


def test_a_row_whose_runs_differ_in_precision_says_how_many_used_each(tmp_path):
    """BrainMRI's committed row: split 0 in fp32, splits 1-4 in bf16."""
    results = []
    for spec in items.specs_for("table6", "paper", classes=["brainmri"]):
        run_dir = tmp_path / spec.key()
        run_dir.mkdir()
        recorded = {"amp": spec.seed > 0}
        (run_dir / "spec.json").write_text(json.dumps({"config": {**spec.mkd_config().to_dict(), **recorded}}))
        results.append(RunResult(spec, run_dir, _metrics(0.9)))
    df = tabulation.tables("table6", results, profile="paper")["table6"]
    assert df.at["brainmri", "overrides"] == "bf16 training and scoring (4 of 5 runs); none (1 of 5 runs)"
    assert "; ;" not in df.attrs["notes"][-1] and not df.attrs["notes"][-1].startswith("; ")


def test_tables_put_the_paper_beside_ours_with_not_run_notes():
    specs = items.specs_for("table3", "paper", classes=["bottle", "screw"])
    results = [_ok(specs[0], 0.95, mean=0.94, std=0.005), _missing(specs[1], "/data/mvtec/screw/train")]
    tabs = tabulation.tables("table3", results, profile="paper")
    assert list(tabs) == ["table3"]
    df = tabs["table3"]
    assert list(df.columns) == [*COLUMNS[:2], "paddle", *COLUMNS[2:], "profile", "weights", "overrides"]
    assert list(df.index) == [*MVTEC_CATEGORIES, "mean"]
    assert df.at["bottle", "weights"] == "test-weights" and df.at["screw", "weights"] == "imagenet (requested)"
    assert df.at["bottle", "ours_final"] == pytest.approx(95.0) and df.at["bottle", "ours_std"] == pytest.approx(0.5)
    assert df.at["bottle", "paper"] == paper_value("table3", "bottle")
    assert df.at["screw", "note"] == "not run: mvtec data not found: expected /data/mvtec/screw/train."
    assert math.isnan(df.at["screw", "ours_final"]) and df.at["zipper", "note"] == NOT_ASKED
    assert df.at["mean", "paper"] == 87.74 and "1 of 15" in df.at["mean", "note"]
    assert "[profile" not in df.attrs["title"] and (df["profile"] == "paper").all()


def test_failed_runs_are_told_apart_from_absent_data():
    spec = items.specs_for("table2_mnist", "smoke")[0]
    df = tabulation.tables("table2_mnist", [RunResult(spec, None, None, "boom", "RuntimeError")], profile="smoke")
    note = df["table2_mnist"].at["0", "note"]
    assert note.startswith("failed: RuntimeError: boom")
    assert "NOT paper numbers" in df["table2_mnist"].attrs["title"]


def test_seeds_give_mean_and_std_over_splits():
    specs = items.specs_for("table6", "smoke", classes=["headct", "headct_aug"])
    assert len(specs) == 4
    finals = {(s.seed, bool(s.config.get("augment"))): v for s, v in zip(specs, (0.7, 0.8, 0.5, 0.6))}
    results = [_ok(s, finals[(s.seed, bool(s.config.get("augment")))]) for s in specs]
    long = tabulation.collect("table6", results)
    by = long.set_index("class")
    assert by.at["headct", "final"] == pytest.approx(75.0) and by.at["headct", "std"] == pytest.approx(5.0)
    assert by.at["headct_aug", "mean"] == pytest.approx(55.0) and by.at["headct_aug", "n"] == 2
    assert by.at["headct", "note"] == "mean ± std over 2 seeds"
    assert "brainmri" not in by.index  # not requested: left to the table's default NOT_ASKED


def test_settings_read_their_runs_and_the_shared_ones():
    specs = items.specs_for("table9", "smoke")
    final = {"equal": 0.6, 1.0: 0.7, 0.0: 0.8, None: 0.8}  # by cloner / value_weight override
    results = [_ok(s, final[s.config.get("cloner", s.config.get("value_weight"))]) for s in specs]
    tabs = tabulation.tables("table9", results, profile="smoke")
    got = {name: df.at["leather", "ours_final"] for name, df in tabs.items()}
    assert got == pytest.approx({"table9_equal_net": 60.0, "table9_smaller_net": 80.0, "table9_dir_loss": 80.0,
                                 "table9_mse_loss": 70.0, "table9_total_loss": 80.0})
    assert tabs["table9_dir_loss"].at["leather", "paper"] == paper_value("table9", "leather", "dir_loss")


def test_pixel_tables_and_table1_from_table11():
    spec = items.specs_for("table11", "paper", classes=["bottle"])[0]
    pixel = {m: {"paper_pixel_auroc": 0.9, "pixel_auroc": 0.95, "au_pro": 0.8}
             for m in (GRADIENTS, SMOOTHGRAD_REFERENCE, GUIDED_BACKPROP)}
    tabs = tabulation.tables("table11", [_ok(spec, pixel=pixel)], profile="paper")
    assert tabs["table11_gradients_gaussian"].at["bottle", "ours_final"] == pytest.approx(90.0)
    assert "not implemented" in tabs["table11_gradients"].at["bottle", "note"] or \
        "no 'gradients-noblur' maps" in tabs["table11_gradients"].at["bottle", "note"]
    t1 = tabs["table1"]
    assert t1.index.name == "setting" and t1.at["Gradients + Gaussian", "paper"] == 90.51
    assert t1.at["Gradients + Gaussian", "ours_final"] == pytest.approx(90.0)
    assert math.isnan(t1.at["Gradients + Gaussian", "diff"])  # one category of 15: no difference claimed

    t4 = tabulation.tables("table4", [_ok(items.specs_for("table4", "paper", classes=["bottle"])[0], pixel=pixel)],
                      profile="paper")
    assert t4["table4"].at["bottle", "ours_final"] == pytest.approx(90.0)
    assert t4["table4_pixel_auroc"].at["bottle", "ours_final"] == pytest.approx(95.0)
    assert t4["table4_au_pro"]["paper"].isna().all()  # the paper reports no AU-PRO: no number beside ours
    assert "AU-PRO" in t4["table4_au_pro"].attrs["title"]


def test_saved_files_index_and_figure(tmp_path):
    specs = items.specs_for("table7", "smoke") + items.specs_for("table8", "smoke")
    results = [_ok(s, 0.75) for s in specs]
    tabs = {**tabulation.tables("table7", results, profile="smoke"), **tabulation.tables("table8", results, profile="smoke")}
    paths = tabulation.save_tables(tabs, tmp_path)
    assert {p.name for p in paths} >= {"table7_last_1.csv", "table8_last_3.md"}
    csv = pd.read_csv(tmp_path / "table8_last_3.csv", index_col=0)
    assert csv.at["0", "ours_final"] == pytest.approx(75.0) and (csv["profile"] == "smoke").all()
    index = tabulation.update_index(tmp_path, profile="smoke", results=results).read_text()
    assert "NOT paper numbers" in index and "test-weights" in index and "table7_last_2" in index
    assert "| table8_last_3 | " in index and "| smoke | test-weights |" in index  # per table


def test_weights_column_names_the_file_by_digest(tmp_path):
    spec = items.specs_for("table5", "paper")[0]
    weights = tmp_path / "vgg16_features.pth"
    weights.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    run = _ok(spec)
    recorded = {**run.metrics, "weights": str(weights), "weights_sha256": digest}
    cell = tabulation.tables("table5", [RunResult(spec, run.run_dir, recorded)], profile="paper")["table5"]
    assert cell.at["retinal_oct", "weights"] == f"vgg16_features.pth (sha256 {digest[:12]})"  # not the machine's path
    older = {**recorded, "weights_sha256": None}  # recorded before digests: the file at the recorded path
    cell = tabulation.tables("table5", [RunResult(spec, run.run_dir, older)], profile="paper")["table5"]
    assert cell.at["retinal_oct", "weights"] == f"vgg16_features.pth (sha256 {digest[:12]})"


def test_weights_reported_when_nothing_ran(tmp_path):
    spec = items.specs_for("table5", "paper")[0]
    assert tabulation.weights_used(tmp_path, [_missing(spec)]) == "imagenet (requested)"
    tabulation.save_tables(tabulation.tables("table5", [_ok(spec)], profile="paper"), tmp_path)
    assert tabulation.weights_used(tmp_path, [_missing(spec)]) == "test-weights"  # from the tables written


def test_item_notes_reach_the_markdown(tmp_path):
    specs = items.specs_for("table7", "smoke") + items.specs_for("table6", "smoke")
    tabs = {**tabulation.tables("table7", [_ok(s) for s in specs], profile="smoke"),
            **tabulation.tables("table6", [_ok(s) for s in specs], profile="smoke")}
    assert tabs["table7_last_1"].attrs["notes"] == list(items.ITEMS["table7"].notes)
    tabulation.save_tables(tabs, tmp_path)
    for name, item in (("table7_last_2", "table7"), ("table6", "table6")):
        text = (tmp_path / f"{name}.md").read_text()
        assert all(f"- {n}" in text.split("Notes:")[1] for n in items.ITEMS[item].notes), name
        assert "Profile: `smoke`; source weights: `test-weights`." in text
    assert "TheLast4" in (tmp_path / "table7_last_4.md").read_text()
    assert "how many splits it used: 5 in the paper profile" in (tmp_path / "table6.md").read_text()


def test_table1_rows_are_settings_in_markdown(tmp_path):
    spec = items.specs_for("table11", "paper", classes=["bottle"])[0]
    pixel = {GRADIENTS: {"paper_pixel_auroc": 0.9, "pixel_auroc": 0.95, "au_pro": 0.8}}
    tabulation.save_tables(tabulation.tables("table11", [_ok(spec, pixel=pixel)], profile="paper"), tmp_path)
    text = (tmp_path / "table1.md").read_text()
    assert "| setting | paper |" in text and "| Gradients + Gaussian | 90.51 |" in text


def test_table1_compares_the_methods_on_the_classes_every_method_ran():
    """bottle with every map, transistor with gradients only: each Table 1 row is bottle's (not a mean of
    two classes for one method beside one class for the others)."""
    specs = items.specs_for("table11", "paper", classes=["bottle", "transistor"])
    maps = ("gradients", "smoothgrad-reference", "guided-backprop")
    full = {m + blur: {"paper_pixel_auroc": 0.9} for m in maps for blur in ("", "-noblur")}
    results = [_ok(s, pixel=full if s.normal_class == "bottle" else {"gradients": {"paper_pixel_auroc": 0.7}})
               for s in specs]
    table1 = tabulation.tables("table11", results, profile="paper")["table1"]
    row = table1.loc["Gradients + Gaussian"]
    assert row["ours_final"] == pytest.approx(90.0) and "bottle: those every method ran" in row["note"]
