"""The notebooks: thin, committed without outputs, and every one run end to end with the smoke profile.

The smoke runs write into a temporary results folder (never the repository's results/) and check the
files written: columns, the paper's numbers, AUROC ranges, not-run notes naming the path looked at, the
figures and the index. Datasets under $MKDLIB_DATA are used where present (the MVTec AD leather sample
at $MKDLIB_DATA/mvtec_leather_sample too); absent ones must appear as not-run rows, and an item whose data
is present must have run (what `mkd regenerate --strict` checks).
"""

from __future__ import annotations

import ast
import json
import math
import os
import time
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from mkdlib.paper import items, notebook, regenerate
from mkdlib.paper.markdown import COLUMNS
from mkdlib.paper.numbers import paper_value

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
COMMON = {"profile", "results_dir", "runs_dir", "data_root", "data_roots", "classes", "seeds", "weights", "config",
          "device", "executor", "workers", "threads", "progress", "force", "train"}
METHOD = {"runs_dir", "data_root", "epochs", "image_size", "device", "threads"}
QUICKSTART = {"profile", "results_dir", "data_root", "data_roots", "weights", "epochs", "image_size", "device",
              "threads", "progress"}
DATA = Path(os.environ["MKDLIB_DATA"]) if os.environ.get("MKDLIB_DATA") else None
LEATHER = DATA / "mvtec_leather_sample" if DATA and (DATA / "mvtec_leather_sample" / "leather").is_dir() else None
# Datasets whose smoke rows must have run when their files are present.
PRESENT = {"mnist": bool(DATA and (DATA / "MNIST" / "raw").is_dir()),
           "fashionmnist": bool(DATA and (DATA / "FashionMNIST" / "raw").is_dir()),
           "headct": bool(DATA and (DATA / "head_ct" / "labels.csv").is_file()),
           "mvtec": LEATHER is not None}


def _read(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _parameters(nb: nbformat.NotebookNode) -> dict:
    """The parameters cell's assignments; each must be a literal."""
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, "exactly one cell tagged 'parameters'"
    out = {}
    for stmt in ast.parse(cells[0].source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, ast.unparse(stmt)
        out[stmt.targets[0].id] = ast.literal_eval(stmt.value)  # raises for anything but a literal
    return out


def test_every_notebook_is_an_item_of_the_suite():
    assert {p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")} == set(notebook.NOTEBOOKS)


@pytest.mark.parametrize("name", list(notebook.NOTEBOOKS))
def test_committed_thin_and_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "commit notebooks without outputs"
            assert "def " not in cell.source and "class " not in cell.source, "functions belong in mkdlib"
            if "parameters" not in cell.metadata.get("tags", []):
                assert len(cell.source.splitlines()) <= 8, "a thin notebook: a few calls per cell"
    params = _parameters(nb)
    assert set(params) == {"00_quickstart": QUICKSTART, "01_method": METHOD}.get(name, COMMON)
    assert params.get("profile", "paper") == "paper" and params["device"] == "cpu"


REPRODUCED = [n for n in notebook.NOTEBOOKS if n not in notebook.WALKTHROUGHS]


@pytest.mark.parametrize("name", REPRODUCED)
def test_a_paper_notebook_is_its_introduction_parameters_one_call_a_display_then_its_analysis(name):
    """Issue 13: the introduction, the parameters, `reproduce(<this notebook>, <every parameter>)` and
    `display(reproduction)`; issue 30: then its analysis, a `## ` section a step, each code cell a few calls
    of mkdlib.paper.analysis, and a reading at the end."""
    nb = _read(name)
    assert [c.cell_type for c in nb.cells[:4]] == ["markdown", "code", "code", "code"], name
    assert "parameters" in nb.cells[1].metadata.get("tags", [])
    tree = ast.parse(nb.cells[2].source)
    assert ast.unparse(tree.body[0]) == "from mkdlib.paper import analysis, reproduce"
    call = tree.body[-1].value
    assert ast.unparse(call.func) == "reproduce" and ast.literal_eval(call.args[0]) == name
    assert {k.arg: ast.unparse(k.value) for k in call.keywords} == {p: p for p in COMMON}, "every parameter, as is"
    assert nb.cells[3].source == "display(reproduction)"
    rest = nb.cells[4:]
    assert rest and rest[-1].cell_type == "markdown" and rest[-1].source.startswith("## Reading"), name
    for cell in rest:
        if cell.cell_type == "markdown":
            assert cell.source.startswith("## "), (name, cell.source[:40])
        else:
            tree = ast.parse(cell.source)
            assert len(tree.body) == 1 and ast.unparse(tree.body[0].value.func) == "display", (name, cell.source)
            called = [ast.unparse(a.value if isinstance(a, ast.Starred) else a) for a in tree.body[0].value.args]
            assert called and all(c.startswith("analysis.") for c in called), (name, called)


def test_the_quickstart_has_a_heading_before_each_step():
    """Setup, Runs, Figures: a `## ` section for each step of the demo, in that order (issue 16)."""
    headings = [c.source.split()[1] for c in _read("00_quickstart").cells
                if c.cell_type == "markdown" and c.source.startswith("## ")]
    assert headings == ["Setup", "Runs", "Figures"]


@pytest.mark.parametrize("name", list(notebook.NOTEBOOKS))
def test_no_cell_leaves_a_value(name):
    """A cell's last statement is never a bare value (Jupyter would print it, e.g. `Out: [PosixPath(...)]`)."""
    for cell in _read(name).cells:
        if cell.cell_type != "code":
            continue
        tree = ast.parse(cell.source)
        last = tree.body[-1] if tree.body else None
        quiet = cell.source.rstrip().endswith(";")  # a trailing ";" tells Jupyter not to show the value
        if isinstance(last, ast.Expr) and not quiet:
            assert isinstance(last.value, ast.Call) and ast.unparse(last.value.func) in ("display", "print"), \
                (name, ast.unparse(last))


@pytest.mark.parametrize("name", REPRODUCED)
def test_the_intro_says_paper_trains_for_hours_and_the_plan_comes_first(name):
    """'Run All' on the default profile starts hours of training: the intro says so in bold, and reproduce
    prints the plan (planning.plan: cached, passes left, time) before it trains (test_paper_reproduction)."""
    intro = _read(name).cells[0].source
    assert '**The default `profile = "paper"` trains' in intro and "hours" in intro and "the plan" in intro


# ------------------------------------------------------------------------------------------- smoke runs

@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> Path:
    """One results folder for the whole suite, so that notebooks share runs as they do for real."""
    return tmp_path_factory.mktemp("smoke_results")


def _smoke_parameters(name: str, results: Path) -> dict:
    roots = {"synthetic": str(results.parent / "synthetic")}
    if LEATHER is not None:
        roots["mvtec"] = str(LEATHER)
    params = {"profile": "smoke", "results_dir": str(results), "data_roots": roots, "threads": 1,
              "progress": False, "executor": "sequential"}  # "auto" would spawn a pool per notebook
    if name == "table2_one_class_detection":  # a local process pool, as `-p executor=processes` would
        params.update(executor="processes", workers=2)
    if name == "table6_medical":  # config overrides, as `-p 'config={"lr": 0.002}'` would
        params.update(config={"lr": 0.002})
    return {k: v for k, v in params.items() if k in _parameters(_read(name))}


def _has_data(key: str) -> bool:
    """Whether the data of some smoke row of an item, or of a figure's items, is present."""
    keys = items.FIGURES[key][1] if key in items.FIGURES else [key]
    return any(PRESENT.get(items.ITEMS[k].rows[r].dataset, False) for k in keys for r in items.ITEMS[k].smoke_rows)


def _check_table(results: Path, output: str, item: str, setting: str | None) -> None:
    df = pd.read_csv(results / f"{output}.csv", index_col=0, dtype={"class": str, "setting": str})
    paddle = ["paddle"] if item in ("table3", "table4") else []  # the MVTec tables carry the Paddle port's numbers
    assert list(df.columns) == [*COLUMNS[:2], *paddle, *COLUMNS[2:], "profile", "weights", "overrides"], output
    assert (df["profile"] == "smoke").all()
    assert "smoke" in (results / f"{output}.md").read_text().splitlines()[0]  # labelled, not passed off
    ours = df[["ours_final", "ours_mean"]].stack().dropna()
    assert ((ours >= 0) & (ours <= 100)).all(), output
    notes = df["note"].fillna("")
    assert not notes.str.startswith("failed").any(), notes.tolist()
    if setting is None:  # Table 1: means only
        return
    it, s = items.ITEMS[item], items.ITEMS[item].settings[setting]
    for row in it.rows:
        want = paper_value(item, row, s.column) if s.compare else None
        assert math.isnan(df.at[row, "paper"]) if want is None else df.at[row, "paper"] == want, (output, row)
    for row in it.smoke_rows:
        if pd.isna(df.at[row, "ours_final"]):
            assert notes[row].startswith("not run: "), (output, row, notes[row])  # with the path or reason
            assert not PRESENT.get(it.rows[row].dataset) or "localisation method" in notes[row], (output, row)


# display(Markdown(...)), display(Image(...)), tqdm's progress bar widget; text/plain: their text version
SHOWN = {"text/markdown", "image/png", "application/vnd.jupyter.widget-view+json", "text/plain",
         "text/html"}  # and the analysis' figures (image/png) and DataFrames (text/html)


def _check_outputs(executed: nbformat.NotebookNode, name: str) -> None:
    """What an executed notebook shows: printed text, progress bars and the Markdown tables and images it
    displays, never a cell's stray value (an execute_result such as `PosixPath(...)`)."""
    for cell in (c for c in executed.cells if c.cell_type == "code"):
        for out in cell.outputs:
            assert out.output_type == "stream" or (out.output_type == "display_data" and set(out.data) <= SHOWN
                                                   and set(out.data) != {"text/plain"}), (name, cell.source, out)
            assert "PosixPath(" not in json.dumps(out), (name, cell.source)
    shown = [out.data["text/markdown"] for c in executed.cells for out in c.get("outputs", [])
             if out.output_type == "display_data" and "text/markdown" in out.data]
    headings = [text for text in shown if text.startswith("## ")]
    if name not in notebook.WALKTHROUGHS:  # reproduce's sections, in order; each table under a ### heading
        want = ["## Runs"] + ["## Tables"] * bool(notebook.outputs(name) or name == "fast_vs_paper")
        assert headings[:len(want)] == want, (name, headings)
        tables = [text for text in shown if text.startswith("### ")]
        assert len(tables) == len(notebook.outputs(name)), (name, len(tables))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(notebook.NOTEBOOKS))
def test_smoke_run(name, smoke):
    import papermill as pm

    (smoke / "executed").mkdir(exist_ok=True)
    since = time.time()
    pm.execute_notebook(NOTEBOOK_DIR / f"{name}.ipynb", smoke / "executed" / f"{name}.ipynb",
                        parameters=_smoke_parameters(name, smoke), kernel_name=regenerate.kernel_name(),
                        cwd=str(NOTEBOOK_DIR), progress_bar=False)
    _check_outputs(nbformat.read(smoke / "executed" / f"{name}.ipynb", as_version=4), name)
    for output, (item, setting) in notebook.outputs(name).items():
        _check_table(smoke, output, item, setting)
    empty = regenerate.ran_nothing(smoke, name, since)  # --strict, where the data is present
    assert not [key for key in empty if _has_data(key)], empty
    figures = {p.name for p in (smoke / "figures").glob("*.png")} if (smoke / "figures").is_dir() else set()
    keys = notebook.NOTEBOOKS[name]
    for fig in ("figure3", "figure4", "figure5"):
        if fig in keys:
            assert f"{fig}.png" in figures
    if "quickstart" in keys:  # the README's demo (mkdlib.demo)
        assert (smoke / "quickstart" / "heatmaps.png").is_file()
        demo = json.loads((smoke / "quickstart" / "metrics.json").read_text())
        assert all(0 <= demo[k] <= 1 for k in ("image_auroc", "paper_pixel_auroc", "pixel_auroc"))
    if "figure6" in keys and PRESENT["mvtec"]:
        assert "figure6_mvtec_leather.png" in figures
    if "figure1" in keys:
        assert ("figure1_mvtec_leather.png" in figures) == PRESENT["mvtec"]
        assert ("figure1_mnist_0.png" in figures) == PRESENT["mnist"]
    if name == "table6_medical":  # every row that has runs names the override, and the Markdown says it
        overrides = pd.read_csv(smoke / "table6.csv", index_col=0)["overrides"].dropna()
        assert len(overrides) and overrides.str.startswith("lr=0.002").all(), overrides  # + ", bf16 scoring"
        assert "config overrides: `lr=0.002" in (smoke / "table6.md").read_text()  # where bf16 is native
    if name == "fast_vs_paper":  # smoke: the smoke profile beside itself, every row with runs
        df = pd.read_csv(smoke / "fast_vs_paper.csv")
        ran = df[df["class"] != "mean"].dropna(subset=["fast_final"])
        assert (ran["fast_final"] == ran["paper_final"]).all() and (ran["passes_ratio"] == 1).all()
        assert len(ran) or not any(PRESENT.values()), "rows ran where their data is present"
        assert "| item | metric | class | dev |" in (smoke / "fast_vs_paper.md").read_text()
    elif name not in notebook.WALKTHROUGHS:
        assert "smoke" in (smoke / "README.md").read_text()
    for metrics in (smoke / "runs").glob("*/metrics.json"):  # every finished run: fractions in [0, 1]
        m = json.loads(metrics.read_text())
        values = [m["image_auroc"]["final"], m["image_auroc"]["mean"],
                  *(v for method in m["pixel"].values() for v in method.values())]
        assert all(0 <= v <= 1 for v in values), metrics


@pytest.mark.slow
def test_relative_results_land_beside_the_notebooks_from_any_working_directory(tmp_path, monkeypatch):
    """papermill run directly, from another folder, with $MKDLIB_NOTEBOOKS naming the notebooks folder: a
    relative results_dir is taken from it, and dict parameters given as JSON text (papermill -p) are decoded."""
    import papermill as pm

    monkeypatch.setenv(notebook.NOTEBOOKS_ENV, str(NOTEBOOK_DIR))  # the kernel inherits it
    elsewhere, out = tmp_path / "elsewhere", tmp_path / "out"
    elsewhere.mkdir()
    parameters = {"profile": "smoke", "results_dir": os.path.relpath(out, NOTEBOOK_DIR), "threads": 1,
                  "progress": False, "data_roots": json.dumps({"retina": str(tmp_path / "no_oct")}),
                  "config": '{"lr": 0.002}'}
    pm.execute_notebook(NOTEBOOK_DIR / "table5_retinal_oct.ipynb", tmp_path / "executed.ipynb",
                        parameters=parameters, kernel_name=regenerate.kernel_name(), cwd=str(elsewhere),
                        progress_bar=False)
    assert list(elsewhere.iterdir()) == []
    assert {"table5.csv", "table5.md", "README.md"} <= {p.name for p in out.iterdir()}
    df = pd.read_csv(out / "table5.csv", index_col=0)
    assert str(tmp_path / "no_oct") in df.at["retinal_oct", "note"], df.at["retinal_oct", "note"]
    assert df.at["retinal_oct", "overrides"] == "lr=0.002"


@pytest.mark.slow
def test_a_notebook_in_another_profile_does_not_overwrite_the_paper_tables(tmp_path):
    """Issue 29 point 2, the exact example: papermill on table3 with results_dir = a folder holding the paper
    tables and profile smoke fails before any run and leaves table3.md / .csv and README.md as they were;
    force=True is the way to overwrite them."""
    import papermill as pm

    results = notebook.default_results("paper")
    for name in ("table3.md", "table3.csv", "README.md"):
        (tmp_path / name).write_bytes((results / name).read_bytes())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(pm.PapermillExecutionError, match="FileExistsError"):
        pm.execute_notebook(NOTEBOOK_DIR / "table3_mvtec_detection.ipynb", tmp_path.parent / "out.ipynb",
                            parameters={"profile": "smoke", "results_dir": str(tmp_path), "progress": False,
                                        "executor": "sequential",
                                        "data_roots": {"mvtec": str(tmp_path / "no_mvtec")}},
                            kernel_name=regenerate.kernel_name(), cwd=str(NOTEBOOK_DIR), progress_bar=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert not (tmp_path / "runs").exists(), "refused before any run"


def test_the_method_walkthrough_has_a_section_per_step_naming_the_paper():
    """Issue 30: 01_method, each step a `## ` section that names the paper's section or equation, a few
    lines of text, then one display of mkdlib.paper.walkthrough's figures or tables."""
    nb = _read("01_method")
    steps = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## ")]
    numbered = [s for s in steps if s[3].isdigit()]
    assert len(numbered) == 7 and all(("sec." in s or "Eq" in s or "metrics" in s) for s in numbered), steps
    calls = [c.source for c in nb.cells if c.cell_type == "code" and "walkthrough." in c.source]
    assert all(len(c.splitlines()) <= 8 for c in calls) and sum(c.startswith("display(walkthrough.") for c in calls) == 7
