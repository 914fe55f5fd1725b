"""The executed copies in results/executed/ (`make notebooks`), as a reader opens them: one per notebook,
each under 2 MB, no error, no machine path, and every table they show the same as the results file it
wrote (an executed copy left behind a regenerated table fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXECUTED = ROOT / "results" / "executed"
NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks").glob("*.ipynb"))


def _results_tables() -> dict[str, str]:
    """Title -> body of every table file the notebooks write (the paper profile's and fast-v1's)."""
    out = {}
    for md in [*ROOT.glob("results/*.md"), *ROOT.glob("results/fast-v1/*.md")]:
        text = md.read_text(encoding="utf-8")
        if text.startswith("# ") and md.name != "README.md":
            title, _, body = text.partition("\n")
            out[title[2:].strip()] = body.strip()
    return out


def test_every_notebook_has_an_executed_copy():
    assert sorted(p.stem for p in EXECUTED.glob("*.ipynb")) == NOTEBOOKS


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_an_executed_copy_is_small_clean_and_in_step_with_its_tables(name):
    path = EXECUTED / f"{name}.ipynb"
    assert path.stat().st_size < 2 * 1024 * 1024, f"{path} is {path.stat().st_size / 2**20:.1f} MB"
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"(/home/|/root/|/work/|/tmp/|[A-Z]:\\\\Users)", text), "a machine path in " + name
    nb = nbformat.read(path, as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert outputs and not [o for o in outputs if o.output_type == "error"]
    tables = _results_tables()
    shown = [o.data["text/markdown"] for o in outputs if "text/markdown" in o.get("data", {})
             and o.data["text/markdown"].startswith("### ")]
    for table in shown:
        title, _, body = table.partition("\n")
        title = title[4:].strip()
        assert title in tables, f"{name} shows a table no results file holds: {title}"
        assert body.strip() == tables[title], f"{name}: {title} differs from its results file (make notebooks)"
