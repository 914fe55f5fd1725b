"""Comparison tables, their CSV/Markdown files and the results index, on a temporary directory."""

from __future__ import annotations

import math
import os
import shutil
import subprocess

import pandas as pd
import pytest

from mkdlib.paper.markdown import (COLUMNS, NOT_ASKED, PROVENANCE, UNKNOWN, commit_text, comparison_table, not_run,
                                   to_markdown, write_index, write_table, written_profile)
from mkdlib.paper.numbers import MVTEC_CATEGORIES, PAPER, paper_value


def _ours(item: str, offset: float = -1.0, skip: tuple[str, ...] = ()) -> pd.DataFrame:
    t = PAPER[item]
    return pd.DataFrame.from_dict({c: {"final": r[t.default_column] + offset, "mean": r[t.default_column], "std": 0.5}
                                   for c, r in t.rows.items() if c not in skip}, orient="index")


def _final(values: dict[str, float]) -> pd.DataFrame:
    """Final-epoch AUROC only, in %."""
    return pd.DataFrame({"final": values}, columns=["final"], dtype=float)


def test_columns_mean_row_and_paper_column():
    df = comparison_table("table3", _ours("table3"))
    assert list(df.columns) == [*COLUMNS[:2], "paddle", *COLUMNS[2:]]  # MVTec: the Paddle port beside the paper
    assert list(df.index) == [*MVTEC_CATEGORIES, "mean"]
    assert df.at["transistor", "paddle"] == 85.75 and df.at["mean", "paddle"] == 88.30
    assert "paddle" not in comparison_table("table2_mnist", _ours("table2_mnist")).columns
    for c in MVTEC_CATEGORIES:
        assert df.at[c, "paper"] == paper_value("table3", c)
        assert df.at[c, "paper_pm"] == PAPER["table3"].spread[c]["ours"]
        assert df.at[c, "diff"] == pytest.approx(-1.0)
    assert df.at["mean", "paper"] == 87.74  # printed, not recomputed (87.742)
    assert df.at["mean", "ours_mean"] == pytest.approx(87.742)
    assert df.at["mean", "ours_final"] == pytest.approx(86.742)
    assert df.at["mean", "diff"] == pytest.approx(86.742 - 87.74)
    assert df.at["mean", "ours_std"] == pytest.approx(0.5)
    assert (df["note"] == "").all()


def test_other_column_and_float_only_input():
    df = comparison_table("table9", _final({c: 80.0 for c in MVTEC_CATEGORIES}), column="dir_loss")
    assert df.at["grid", "paper"] == 50.1 and df.at["mean", "paper"] == 83.74
    assert df["ours_mean"].isna().all() and df.at["grid", "diff"] == pytest.approx(29.9)
    with pytest.raises(KeyError):
        comparison_table("table9", _final({}), column="nope")


def test_not_run_classes_get_nan_and_a_note(tmp_path):
    looked = tmp_path / "mvtec" / "screw"
    df = comparison_table("table3", _ours("table3", skip=("screw", "zipper")),
                          notes={"screw": not_run(looked)})
    assert df.loc["screw", ["ours_final", "ours_mean", "ours_std", "diff"]].isna().all()
    assert df.at["screw", "note"] == f"not run: {looked}"
    assert df.at["zipper", "note"] == NOT_ASKED
    assert "13 of 15" in df.at["mean", "note"] and math.isnan(df.at["mean", "diff"])
    empty = comparison_table("table3", _final({}), notes={c: not_run(tmp_path) for c in MVTEC_CATEGORIES})
    assert empty["ours_final"].isna().all() and empty.at["mean", "paper"] == 87.74


def test_ours_is_validated():
    df = comparison_table("table3", _ours("table3"))
    assert df.at["bottle", "ours_final"] == pytest.approx(98.39) and df.at["bottle", "ours_std"] == 0.5
    with pytest.raises(ValueError, match=r"outside \[0, 100\]"):
        comparison_table("table3", _final({"bottle": 101.0}))
    with pytest.raises(ValueError, match="not in table3"):
        comparison_table("table3", _final({"toaster": 90.0}))
    with pytest.raises(ValueError, match="needs column 'final'"):
        comparison_table("table3", pd.DataFrame({"auroc": {"bottle": 90.0}}))


def test_tables_without_printed_mean_or_rows():
    df = comparison_table("table6", _final({"brainmri": 94.0, "headct": 77.0}))
    assert list(df.index) == ["brainmri", "headct", "headct_aug"]  # no printed mean: no mean row
    assert df.at["headct_aug", "note"] == NOT_ASKED and df.at["headct_aug", "paper"] == 80.42
    df = comparison_table("table1", _final({c: 90.0 for c in MVTEC_CATEGORIES}))  # the paper prints means only
    assert df["paper"].iloc[:-1].isna().all() and df.at["mean", "paper"] == 90.51


def test_write_table_and_index(tmp_path):
    res = tmp_path / "results"
    df = comparison_table("table3", _ours("table3", skip=("screw",)), notes={"screw": not_run("/data/x")})
    csv, md = write_table(df, res, "table3")
    assert (csv, md) == (res / "table3.csv", res / "table3.md")
    back = pd.read_csv(csv, index_col="class", keep_default_na=False, na_values=[""])
    assert list(back.columns) == [*COLUMNS[:2], "paddle", *COLUMNS[2:]] and back.at["mean", "paper"] == 87.74
    text = md.read_text()
    assert text.startswith("# Table 3, p. 8: Anomaly detection on MVTec AD\n")
    assert "| class | paper | Paddle port | ours (final) |" in text
    assert "| bottle | 99.39 ± 0.03 | 99.29 | 98.39 | 99.39 ± 0.50 | -1.00 |" in text
    assert "not run: /data/x" in text and "| mean | 87.74 | 88.30 |" in text
    assert "Paddle port: an independent reproduction" in text and "best epoch on the test set" in text
    write_table(comparison_table("table9", _ours("table9"), column="equal_net"), res, "table9_equal_net")
    assert [p.name for p in res.iterdir() if p.name.startswith(".")] == []  # no temp files left

    idx = write_index(res, profile="smoke", weights={"vgg16": "IMAGENET1K_V1"},
                      hardware={"platform": "test"}, commit="abc123")
    assert idx == res / "README.md"
    body = idx.read_text()
    for needle in ("| table3 | Table 3, p. 8: Anomaly detection on MVTec AD | — | — | [table3.md](table3.md) "
                   "| [table3.csv](table3.csv) |", "| table9_equal_net |", "`abc123`", "`smoke`",
                   "vgg16: `IMAGENET1K_V1`", "platform: `test`", PROVENANCE):
        assert needle in body
    write_index(res, profile="smoke", weights="none")  # regenerated; itself not listed
    body = idx.read_text()
    assert "| README |" not in body and "torch_device" in body and "- commit: `" in body
    assert sorted(os.listdir(res)) == ["README.md", "table3.csv", "table3.md",
                                       "table9_equal_net.csv", "table9_equal_net.md"]


def test_index_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    monkeypatch.setenv("PATH", "")  # no git at all
    idx = write_index(tmp_path, profile="p", weights="w", hardware="h")
    assert "unknown (git rev-parse failed)" in idx.read_text()


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_commit_is_detected(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                              check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    assert commit_text(tmp_path) is None  # no commit yet
    (tmp_path / "f.txt").write_text("a")
    git("add", "f.txt")
    git("commit", "-q", "-m", "x")
    sha = git("rev-parse", "HEAD")
    assert commit_text(tmp_path) == sha
    (tmp_path / "f.txt").write_text("b")
    assert commit_text(tmp_path) == sha + " (dirty)"
    res = tmp_path / "results"
    assert f"`{sha} (dirty)`" in write_index(res, profile="p", weights="w", hardware="h").read_text()


def test_markdown_heads_the_index_name_and_prints_notes_profile_and_weights():
    df = comparison_table("table6", _final({"brainmri": 94.0, "headct": 77.0}))
    assert df.index.name == "class"
    text = to_markdown(df, "T6")
    assert "| class | paper |" in text and "Notes:" not in text and "Profile" not in text
    df.attrs["notes"] = ["5 splits; the paper does not say how many.", "second | note"]
    df["profile"], df["weights"] = "paper", ["imagenet", "imagenet", None]
    text = to_markdown(df, "T6")
    tail = text.split("| headct_aug |")[1]  # under the table
    assert "Profile: `paper`; source weights: `imagenet`." in tail
    df["overrides"] = ["", "amp=True", None]  # "" = the paper's config: not listed
    assert "source weights: `imagenet`; config overrides: `amp=True`." in to_markdown(df, "T6")
    df = df.drop(columns="overrides")
    assert "\nNotes:\n\n- 5 splits; the paper does not say how many.\n- second | note\n" in tail
    df.attrs["notes"] = "one note"
    assert "- one note" in to_markdown(df, "T6")
    t1 = df.rename_axis("setting")  # Table 1's rows are settings
    assert "| setting | paper |" in to_markdown(t1, "T1")


def test_markdown_title_level_is_a_section_for_notebooks_and_h1_for_the_files(tmp_path):
    """A notebook shows each table under a section heading (### title), not a second page title;
    the .md files in results/ keep their H1, which write_index reads back as the title."""
    df = comparison_table("table6", _final({"brainmri": 94.0, "headct": 77.0}))
    assert to_markdown(df, "T6").startswith("# T6\n\n")
    section = to_markdown(df, "T6", level=3)
    assert section.startswith("### T6\n\n")
    assert section.split("\n", 1)[1] == to_markdown(df, "T6").split("\n", 1)[1]  # only the title differs
    _, md = write_table(df, tmp_path, "table6", title="T6")
    assert md.read_text().startswith("# T6\n")
    for bad in (0, 7, 2.0, True, "3"):
        with pytest.raises(ValueError, match="level must be a Markdown heading level 1-6"):
            to_markdown(df, "T6", level=bad)


def test_index_lists_each_tables_profile_and_weights(tmp_path):
    for name, profile, weights in (("table5", "paper", "imagenet"), ("table6", "smoke", None)):
        df = comparison_table(name, _final({}))
        df["profile"], df["weights"], df["overrides"] = profile, weights, "amp=True" if name == "table5" else ""
        write_table(df, tmp_path, name)
    (tmp_path / "broken.md").write_text("# broken\n")
    (tmp_path / "broken.csv").write_text("")  # unreadable: no provenance, no failure
    body = write_index(tmp_path, profile="paper", weights="w", hardware="h", commit="c").read_text()
    assert "| table5 | Table 5, p. 8: " in body and "| paper (overrides: amp=True) | imagenet | [table5.md](table5.md) |" in body
    assert "| smoke | — | [table6.md](table6.md) |" in body
    assert "| broken | broken | — | — | [broken.md](broken.md) |" in body
    assert "not paper numbers" in body and "mkd regenerate" in body


def test_written_profile_of_tables_and_index(tmp_path):
    df = comparison_table("table5", _final({}))
    df["profile"] = "smoke"
    csv, md = write_table(df, tmp_path, "table5")
    assert written_profile(csv) == written_profile(md) == "smoke"
    csv.unlink()
    assert written_profile(md) == "smoke"  # from its own 'Profile:' line, without the CSV
    (tmp_path / "old.md").write_text("# an old table\n")
    (tmp_path / "old.csv").write_text("class,paper,profile\nx,1.0,paper\n")
    assert written_profile(tmp_path / "old.md") == "paper"  # no line of its own: its CSV twin's column
    (tmp_path / "bare.md").write_text("# no profile anywhere\n")
    (tmp_path / "empty.csv").write_text("")
    assert written_profile(tmp_path / "bare.md") == written_profile(tmp_path / "empty.csv") == UNKNOWN
    assert written_profile(tmp_path / "absent.csv") is None
    index = write_index(tmp_path, profile="smoke: tiny subsets", weights="w", hardware="h", commit="c")
    assert written_profile(index) == "smoke"  # the profile's name, not its label
