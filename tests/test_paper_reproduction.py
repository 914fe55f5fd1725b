"""reproduce: one notebook's work as one call (the plan printed first, then runs, tables, index, figures);
Reproduction shows what it wrote under section headings. The full notebooks run in test_notebooks."""

from __future__ import annotations

import pytest

from mkdlib.paper import reproduce, tabulation
from mkdlib.paper.reproduction import Reproduction


def test_an_unknown_notebook_names_the_ones_there_are(tmp_path):
    with pytest.raises(KeyError, match="table3_mvtec_detection"):
        reproduce("table3_mvtec", results_dir=tmp_path)
    with pytest.raises(KeyError, match="unknown notebook '00_quickstart'"):  # the demo is not a paper item
        reproduce("00_quickstart", results_dir=tmp_path)


def test_a_notebook_without_its_data_writes_not_run_tables_after_the_plan(tmp_path, capsys):
    """Retinal OCT is absent: nothing trains, and the table, its Markdown and the index are still written."""
    out = reproduce("table5_retinal_oct", profile="smoke", results_dir=tmp_path, executor="sequential",
                    data_roots='{"retina": "%s"}' % (tmp_path / "no_oct"), progress=False)
    printed = capsys.readouterr().out
    assert printed.startswith("## Runs\n") and "1 run" in printed.splitlines()[1]  # the plan, before any run
    assert {"table5.csv", "table5.md", "README.md"} <= {p.name for p in tmp_path.iterdir()}
    assert list(out.tables) == ["table5"] and not out.results[0].ok and out.figures == []
    assert str(tmp_path / "no_oct") in out.tables["table5"].at["retinal_oct", "note"]
    text = str(out)
    assert text.startswith("## Tables\n\n### Table 5") and "## Figures" not in text


def test_the_display_is_tables_then_figures_each_under_its_heading(tmp_path):
    tables = tabulation.tables("table9", [], profile="paper", settings=["equal_net"])  # every row not run
    shown = Reproduction("figure4_tables9_10_cloner_size", tmp_path, tables=tables,
                         figures=[tmp_path / "a.png", tmp_path / "b.png"], shown_figures=[tmp_path / "a.png"])
    kinds = [(kind, str(value).splitlines()[0]) for kind, value in shown.blocks()]
    assert kinds == [("markdown", "## Tables"), ("markdown", "### " + tables["table9_equal_net"].attrs["title"]),
                     ("markdown", "## Figures"), ("image", str(tmp_path / "a.png"))]


def test_reproduce_refuses_another_profiles_tables_before_any_run(tmp_path):
    """The guard lives in reproduce, the one place the notebooks and `mkd regenerate` both go through."""
    from mkdlib.paper import notebook as nb

    for name in ("table3.md", "table3.csv", "README.md"):
        (tmp_path / name).write_bytes((nb.default_results("paper") / name).read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="table3"):
        reproduce("table3_mvtec_detection", profile="smoke", results_dir=tmp_path, progress=False,
                  data_roots={"mvtec": str(tmp_path / "none")})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("bad, match", [
    ({"seeds": "abc"}, "notebook parameter seeds='abc': expected null or a list of integers"),
    ({"data_roots": "notadict"}, "notebook parameter data_roots='notadict': expected a dict"),
    ({"weights": "/no/such/weights.pth"}, "notebook parameter weights='/no/such/weights.pth'"),
    ({"workers": -2}, "notebook parameter workers=-2: expected null or an integer >= 1"),
    ({"config": "[1, 2]"}, "notebook parameter config=\\[1, 2\\]: expected a dict"),
    ({"device": "cuda:7"}, "not available here|only .* CUDA device"),
    ({"executor": "threads"}, "executor must be"),
    ({"profile": "quick"}, "unknown profile 'quick'"),
])
def test_every_notebook_parameter_is_checked_first_naming_it(tmp_path, bad, match):
    """Issue 29 point 10: a wrong parameter is one error naming it, before any run or file, even where no run
    would be due (Table 5's OCT data is absent)."""
    with pytest.raises(ValueError, match=match):
        reproduce("table5_retinal_oct", results_dir=tmp_path / "r", progress=False,
                  data_roots={"retina": str(tmp_path / "none")} if "data_roots" not in bad else bad["data_roots"],
                  **{k: v for k, v in bad.items() if k != "data_roots"})
    assert not (tmp_path / "r").exists()


def test_records_only_trains_nothing_and_says_why_a_row_did_not_run(tmp_path, monkeypatch):
    """train=False (make notebooks): finished records are read, an absent dataset keeps its usual note, and
    a run whose data is here but whose record is not is noted, never trained."""
    from mkdlib.runs import executors

    monkeypatch.setattr(executors, "run_many", lambda *a, **k: pytest.fail("records only must not run anything"))
    synthetic = tmp_path / "data"
    (synthetic / "mvtec").mkdir(parents=True)
    from mkdlib.datasets import make_synthetic
    import shutil

    shutil.copytree(make_synthetic(tmp_path / "gen", size=32, n_train=4, n_test_good=2, n_test_defect=2),
                    synthetic / "mvtec" / "leather")
    out = reproduce("table3_mvtec_detection", profile="smoke", results_dir=tmp_path / "r", train=False,
                    progress=False, data_roots={"mvtec": str(synthetic / "mvtec")})
    note = out.tables["table3"].at["leather", "note"]
    assert note.startswith("not run: no finished record of") and "train=True" in note
