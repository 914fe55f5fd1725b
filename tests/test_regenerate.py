"""`mkd regenerate`: notebook selection, parameters, the kernel, and failures that do not stop the suite."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from mkdlib import regenerate
from mkdlib.items import NOTEBOOKS


def test_select_by_item_figure_or_notebook():
    assert regenerate.select(None) == list(NOTEBOOKS)
    assert regenerate.select(["table9"]) == ["figure4_tables9_10_cloner_size", "figure5_tables9_10_loss_ablation"]
    assert regenerate.select(["figure6", "00_quickstart", "table1"]) == [
        "00_quickstart", "table4_figure6_mvtec_localization", "table1_table11_interpretability"]
    with pytest.raises(KeyError):
        regenerate.select(["table12"])
    assert regenerate.main(["--only", "table12"]) == 2


def test_parameters_parse_as_json_or_text():
    assert regenerate._parameter("workers=4") == ("workers", 4)
    assert regenerate._parameter("data_root=null") == ("data_root", None)
    assert regenerate._parameter('data_roots={"mvtec": "/d"}') == ("data_roots", {"mvtec": "/d"})
    assert regenerate._parameter("device=cuda:1") == ("device", "cuda:1")
    with pytest.raises(Exception):
        regenerate._parameter("no-equals")


def test_kernel_runs_this_python():
    from jupyter_client.kernelspec import KernelSpecManager

    argv0 = KernelSpecManager().get_kernel_spec(regenerate.kernel_name()).argv[0]
    assert argv0 in ("python", "python3") or Path(argv0).resolve() == Path(sys.executable).resolve()


def test_list_from_the_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "mkdlib.regenerate", "--list"], capture_output=True, text=True,
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
