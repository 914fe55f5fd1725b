"""`mkd regenerate`: notebook selection, parameters, the kernel, failures that do not stop the suite, each
profile's own results folder (never overwriting another profile's tables) and --strict."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from mkdlib.cli_parser import key_value
from mkdlib.paper import notebook, regenerate, tabulation
from mkdlib.paper.notebook import NOTEBOOKS


def test_select_by_item_figure_or_notebook():
    assert notebook.select(None) == list(NOTEBOOKS)
    assert notebook.select(["table9"]) == ["figure4_tables9_10_cloner_size", "figure5_tables9_10_loss_ablation"]
    assert notebook.select(["figure6", "00_quickstart", "table1"]) == [
        "00_quickstart", "table4_figure6_mvtec_localization", "table1_table11_interpretability"]
    with pytest.raises(KeyError):
        notebook.select(["table12"])
    assert regenerate.main(["--only", "table12"]) == 2


def test_parameters_parse_as_json_or_text():
    assert key_value("workers=4") == ("workers", 4)
    assert key_value("data_root=null") == ("data_root", None)
    assert key_value('data_roots={"mvtec": "/d"}') == ("data_roots", {"mvtec": "/d"})
    assert key_value("device=cuda:1") == ("device", "cuda:1")
    with pytest.raises(Exception):
        key_value("no-equals")


def test_kernel_runs_this_python():
    from jupyter_client.kernelspec import KernelSpecManager

    argv0 = KernelSpecManager().get_kernel_spec(regenerate.kernel_name()).argv[0]
    assert argv0 in ("python", "python3") or Path(argv0).resolve() == Path(sys.executable).resolve()


def test_list_from_the_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "mkdlib.paper.regenerate", "--list"], capture_output=True, text=True,
                         check=True, timeout=120).stdout
    assert all(name in out for name in NOTEBOOKS)


def _notebook(path: Path, body: str) -> None:
    params = new_code_cell('profile = "paper"\nresults_dir = "."')
    params.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[params, new_code_cell(body)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.mark.slow
def test_a_failing_notebook_is_reported_and_the_others_run(tmp_path, capsys):
    notebooks, results = tmp_path / "notebooks", tmp_path / "results"
    notebooks.mkdir()
    _notebook(notebooks / "00_quickstart.ipynb", "raise RuntimeError('broken on purpose')")
    _notebook(notebooks / "table5_retinal_oct.ipynb",
              "import json, pathlib, sys\n"
              "seen = {'profile': profile, 'cwd': str(pathlib.Path.cwd()), 'python': sys.executable}\n"
              "pathlib.Path(results_dir, 'seen.json').write_text(json.dumps(seen))")
    code = regenerate.main(["--profile", "smoke", "--only", "00_quickstart", "table5", "--notebooks", str(notebooks),
                            "--results", str(results)])
    assert code == 1
    err = capsys.readouterr().err
    assert "FAILED 00_quickstart" in err and "broken on purpose" in err
    seen = json.loads((results / "seen.json").read_text())
    assert seen["profile"] == "smoke" and seen["cwd"] == str(notebooks.resolve())  # run from the notebooks folder
    assert Path(seen["python"]).resolve() == Path(sys.executable).resolve()  # the kernel is this environment
    assert {p.name for p in (results / "executed").iterdir()} == {"00_quickstart.ipynb", "table5_retinal_oct.ipynb"}


@pytest.fixture
def papermill(monkeypatch) -> list[dict]:
    """A stand-in for papermill that records each notebook it is asked to execute, and runs nothing."""
    calls: list[dict] = []
    monkeypatch.setitem(sys.modules, "papermill",
                        _stand_in(lambda source, target, **kw: calls.append({"source": source, **kw})))
    return calls


def _stand_in(execute) -> types.ModuleType:
    """A papermill module whose execute_notebook calls `execute` and writes an empty executed copy, and whose
    notebooks declare every parameter."""
    fake = types.ModuleType("papermill")

    def execute_notebook(source, target, **kw):
        execute(source, target, **kw)
        nbformat.write(nbformat.v4.new_notebook(), target)

    fake.execute_notebook = execute_notebook
    fake.inspect_notebook = lambda path: {k: None for k in regenerate.AUTOMATIC}
    return fake


def _paper_tables(results: Path) -> dict[str, str]:
    """Paper-profile Table 2 files and index in results, as the committed results/ holds; name -> text."""
    tabs = {k: v for item in ("table2_mnist", "table2_fashionmnist", "table2_cifar10")
            for k, v in tabulation.tables(item, [], profile="paper").items()}
    tabulation.save_tables(tabs, results)
    tabulation.update_index(results, profile="paper")
    return {p.name: p.read_text() for p in results.iterdir()}


def test_each_profile_has_its_own_default_results_folder(monkeypatch, tmp_path, papermill):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "table3_mvtec_detection.ipynb").write_text("{}")
    monkeypatch.chdir(tmp_path)  # a checkout: its notebooks folder is found from the working tree
    assert notebook.notebooks_folder() == tmp_path / "notebooks"
    assert notebook.default_results("paper") == tmp_path / "results"
    assert notebook.default_results("smoke") == tmp_path / "results" / "smoke"
    assert regenerate.main(["--profile", "smoke", "--only", "table3", "--kernel", "python3"]) == 0
    assert papermill[0]["parameters"]["results_dir"] == "../results/smoke"  # relative to the notebooks: portable


def test_smoke_never_overwrites_paper_tables_without_force(tmp_path, papermill, capsys):
    results = tmp_path / "results"
    before = _paper_tables(results)
    argv = ["--profile", "smoke", "--only", "table2_mnist", "--results", str(results), "--kernel", "python3"]
    assert regenerate.main(argv) == 2
    err = capsys.readouterr().err
    assert "table2_" in err and "profile 'paper'" in err and "--force" in err, err
    assert papermill == [], "refused before any notebook ran"
    assert {p.name: p.read_text() for p in results.iterdir()} == before
    assert regenerate.main([*argv[:-2], "--profile", "paper", "--kernel", "python3"]) == 0  # its own profile
    assert regenerate.main([*argv, "--force"]) == 0 and len(papermill) == 2
    assert regenerate.main([*argv, "-p", "profile=paper"]) == 2  # the guard is not sidestepped with -p
    assert "--profile" in capsys.readouterr().err


def test_the_committed_results_are_guarded():
    clash = notebook.overwrites(notebook.default_results("paper"), notebook.select(["table2_mnist"]), "smoke")
    assert {p.name for p, profile in clash if profile == "paper"} >= {"table2_mnist.csv", "table2_mnist.md",
                                                                      "README.md"}
    assert notebook.overwrites(notebook.default_results("paper"), notebook.select(None), "paper") == []


def test_notebook_paths_are_taken_from_the_notebooks_folder(monkeypatch, tmp_path):
    """Relative paths are the notebooks folder's, found in the working tree (the folder itself, or a checkout
    above it), or named by $MKDLIB_NOTEBOOKS; elsewhere, a clear error, never a guess."""
    results = notebook.default_results("paper")
    monkeypatch.chdir(results.parent / "notebooks")
    assert notebook.default_results("paper") == results
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="no notebooks folder"):
        notebook.notebook_paths("paper", None)
    monkeypatch.setenv(notebook.NOTEBOOKS_ENV, str(results.parent / "notebooks"))
    assert notebook.notebook_paths("paper", "../results") == (results, results / "runs")
    assert notebook.notebook_paths("smoke", None) == (results / "smoke", results / "smoke" / "runs")
    assert notebook.notebook_paths("smoke", tmp_path / "r", "../cache") == (tmp_path / "r", results.parent / "cache")


def test_notebook_options_decode_json_text():
    options = notebook.notebook_options(classes='{"mvtec": ["bottle"]}', seeds=" [0, 1]", config={"amp": True},
                                        data_root="/data", weights="imagenet", data_roots=None)
    assert options == {"classes": {"mvtec": ["bottle"]}, "seeds": [0, 1], "config": {"amp": True},
                       "data_root": "/data", "weights": "imagenet", "data_roots": None}
    with pytest.raises(ValueError, match="classes=.*not valid JSON.*-y"):
        notebook.notebook_options(classes="{mvtec: [bottle]}")


def test_ran_nothing_reads_the_tables_and_figures_written(tmp_path):
    tabulation.save_tables(tabulation.tables("table3", [], profile="smoke"), tmp_path)
    since = time.time()
    assert regenerate.ran_nothing(tmp_path, "table3_mvtec_detection", since) == ["table3"]
    assert regenerate.ran_nothing(tmp_path, "table5_retinal_oct", since) == ["table5"]  # no table at all
    assert regenerate.ran_nothing(tmp_path, "figure1_heatmaps", since) == ["figure1"]
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "figure1_mvtec_leather.png").write_bytes(b"png")
    assert regenerate.ran_nothing(tmp_path, "figure1_heatmaps", since) == []
    assert regenerate.ran_nothing(tmp_path, "figure1_heatmaps", time.time() + 60) == ["figure1"]  # an old one
    assert regenerate.ran_nothing(tmp_path, "00_quickstart", since) == []
    table = pd.read_csv(tmp_path / "table3.csv", index_col=0)
    table.loc["leather", "ours_final"] = 51.0  # one run finished
    table.to_csv(tmp_path / "table3.csv")
    assert regenerate.ran_nothing(tmp_path, "table3_mvtec_detection", since) == []


@pytest.mark.slow
def test_strict_fails_a_smoke_run_that_ran_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MKDLIB_DATA", str(tmp_path / "empty"))  # the kernel inherits it: no MVTec AD
    (tmp_path / "empty").mkdir()
    argv = ["--profile", "smoke", "--only", "table3", "--results", str(tmp_path / "results"),
            "-p", "threads=1", "-p", "progress=false"]
    assert regenerate.main([*argv, "--strict"]) == 1
    assert "FAILED table3_mvtec_detection: ran no runs for table3" in capsys.readouterr().err
    assert regenerate.main(argv) == 0  # without --strict, absent data is a not-run row


LEATHER = Path(os.environ.get("MKDLIB_DATA", "/nonexistent")) / "mvtec_leather_sample"


@pytest.mark.slow
@pytest.mark.skipif(not (LEATHER / "leather").is_dir(), reason="needs $MKDLIB_DATA/mvtec_leather_sample")
def test_strict_passes_a_smoke_run_with_its_data(tmp_path):
    argv = ["--profile", "smoke", "--only", "table3", "--results", str(tmp_path / "results"), "--strict",
            "-p", f'data_roots={{"mvtec": "{LEATHER}"}}', "-p", "threads=1", "-p", "progress=false"]
    assert regenerate.main(argv) == 0


# --- issue 29: --strict judges what was asked for; --weights none; a read-only or file results folder -----

def _tables_papermill(monkeypatch, finished: set[str]) -> list[str]:
    """A stand-in for papermill that writes each notebook's tables as it would without data, with one number
    in the tables of the items in `finished` (a run that finished); returns the notebooks executed."""
    executed: list[str] = []

    def execute_notebook(source, target, *, parameters, **kw):
        name, results = Path(source).stem, Path(parameters["results_dir"])
        executed.append(name)
        for out, (item, _) in notebook.outputs(name).items():
            tabulation.save_tables({k: v for k, v in tabulation.tables(item, [], profile=parameters["profile"])
                                    .items() if k == out}, results)
            if item in finished:
                table = pd.read_csv(results / f"{out}.csv", index_col=0)
                table.iloc[0, table.columns.get_loc("ours_final")] = 51.0
                table.to_csv(results / f"{out}.csv")

    monkeypatch.setitem(sys.modules, "papermill", _stand_in(execute_notebook))
    return executed


def test_strict_judges_the_items_asked_for_not_their_notebooks_others(tmp_path, monkeypatch, capsys):
    """Table 2 on a machine with MNIST only: --only table2_mnist --strict passes, whatever CIFAR-10's rows say;
    an item asked for that ran nothing still fails, and so does a notebook asked for by name."""
    executed = _tables_papermill(monkeypatch, finished={"table2_mnist"})
    argv = ["--profile", "smoke", "--results", str(tmp_path / "results"), "--kernel", "python3", "--strict"]
    assert regenerate.main([*argv, "--only", "table2_mnist"]) == 0, capsys.readouterr().err
    assert executed == ["table2_one_class_detection"]
    assert regenerate.main([*argv, "--only", "table2_mnist", "table2_cifar10"]) == 1
    assert "FAILED table2_one_class_detection: ran no runs for table2_cifar10 (--strict" in capsys.readouterr().err
    assert regenerate.main([*argv, "--only", "table2_one_class_detection"]) == 1
    assert "ran no runs for table2_fashionmnist, table2_cifar10 (--strict" in capsys.readouterr().err


def test_strict_judges_the_tables_a_figure_asked_for_draws(tmp_path, monkeypatch, capsys):
    _tables_papermill(monkeypatch, finished=set())
    argv = ["--profile", "smoke", "--results", str(tmp_path / "results"), "--kernel", "python3", "--strict"]
    assert regenerate.main([*argv, "--only", "figure6"]) == 1
    assert "ran no runs for table4" in capsys.readouterr().err
    assert regenerate.main([*argv, "--only", "table1"]) == 1  # Table 1 is Table 11's summary
    assert "ran no runs for table11" in capsys.readouterr().err


def test_weights_none_is_a_random_source_as_for_train(tmp_path, papermill, monkeypatch):
    from mkdlib.weights import WEIGHTS_ENV

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    argv = ["--profile", "smoke", "--only", "table3", "--results", str(tmp_path / "results"), "--kernel", "python3"]
    assert regenerate.main([*argv, "--weights", "none"]) == 0
    assert papermill[0]["parameters"]["weights"] is None and WEIGHTS_ENV not in os.environ
    seen = []
    monkeypatch.setattr(regenerate.train_only, "main", lambda args, names, runs: seen.append(args.parameter) or 0)
    assert regenerate.main([*argv, "--weights", "None", "--train-only"]) == 0
    assert ("weights", None) in seen[0] and WEIGHTS_ENV not in os.environ


def test_a_results_folder_that_is_a_file_is_one_line(tmp_path, papermill, capsys):
    (tmp_path / "file").write_text("not a folder")
    for option in ("--results", "--runs-dir"):
        assert regenerate.main(["--only", "table3", option, str(tmp_path / "file"), "--kernel", "python3"]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'file'} is a file: pass {option} DIR" in err and "Errno" not in err, err
        assert len(err.strip().splitlines()) == 1 and papermill == []


def test_a_read_only_results_folder_is_one_line(tmp_path, papermill, monkeypatch, capsys):
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if tmp_path in self.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert regenerate.main(["--only", "table3", "--results", str(tmp_path / "results"), "--kernel", "python3"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert str(tmp_path / "results") in err and "Read-only file system" in err and "writable" in err, err


def test_a_results_folder_chmod_read_only_is_refused_before_any_notebook(tmp_path, papermill, capsys):
    results = tmp_path / "results"
    results.mkdir(mode=0o555)
    try:
        if os.access(results, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        code = regenerate.main(["--only", "table3", "--results", str(results), "--kernel", "python3"])
    finally:
        results.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and str(results) in err and "writable" in err and papermill == [], err


def test_executed_copies_carry_no_machine_path(tmp_path, monkeypatch):
    """Folders inside the checkout go to the notebooks, and into the executed copy's papermill record,
    relative to the notebooks folder; parameters a notebook does not declare are not passed to it."""
    root = tmp_path / "checkout"
    (root / "notebooks").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "See [fidelity](../docs/fidelity.md#headct), [the paper](https://arxiv.org/abs/2011.11108), [up](#top).")])
    nb.metadata["papermill"] = {"input_path": str(root / "notebooks" / "table3_mvtec_detection.ipynb"),
                                "parameters": {"results_dir": str(root / "results"), "profile": "paper"}}
    executed = tmp_path / "out.ipynb"
    nbformat.write(nb, executed)
    regenerate._portable_copy(executed, root / "notebooks")
    copy = nbformat.read(executed, as_version=4)
    record = copy.metadata["papermill"]
    assert copy.cells[0].source == ("See [fidelity](checkout/docs/fidelity.md#headct), "  # from tmp_path, where the copy is
                                    "[the paper](https://arxiv.org/abs/2011.11108), [up](#top).")
    assert record["input_path"] == "table3_mvtec_detection.ipynb" and record["parameters"]["results_dir"] == "../results"
    assert regenerate._portable("/elsewhere/runs", root / "notebooks") == "/elsewhere/runs"
    quickstart = Path(regenerate.notebooks_folder()) / "00_quickstart.ipynb"
    passed = regenerate._declared(quickstart, {"profile": "paper", "runs_dir": "../results/runs", "train": False,
                                               "data_root": "x"})
    assert "runs_dir" not in passed and "train" not in passed and passed["data_root"] == "x"  # a user's -p stays
    nested = root / "a" / "b"  # a relative parameter is the notebooks', wherever the command ran from
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    regenerate._portable_copy(executed, root / "notebooks")
    assert nbformat.read(executed, as_version=4).metadata["papermill"]["parameters"]["results_dir"] == "../results"
