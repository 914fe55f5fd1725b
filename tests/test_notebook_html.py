"""An executed notebook as a reader sees it (issue 16): rendered to HTML by nbconvert, it has its section
headings and its table, and no stray value such as `PosixPath(...)`; where a headless Chromium is found,
a screenshot of the page is taken and checked not to be blank (skipped without one: CI does not need it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

from mkdlib.paper import regenerate
from tests.test_notebooks import NOTEBOOK_DIR, _smoke_parameters

NAME = "table3_mvtec_detection"  # a table from the smoke profile; its run where the leather sample is present
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    """table3 executed at the smoke profile (as test_notebooks' smoke run does), converted to HTML."""
    import papermill as pm
    from nbconvert import HTMLExporter

    tmp = tmp_path_factory.mktemp("notebook_html")
    executed = tmp / f"{NAME}.ipynb"
    pm.execute_notebook(NOTEBOOK_DIR / f"{NAME}.ipynb", executed, parameters=_smoke_parameters(NAME, tmp / "results"),
                        kernel_name=regenerate.kernel_name(), cwd=str(NOTEBOOK_DIR), progress_bar=False)
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(executed, as_version=4))
    page = tmp / f"{NAME}.html"
    page.write_text(body, encoding="utf-8")
    return page


@pytest.mark.slow
def test_the_html_has_the_sections_the_table_and_no_stray_value(html):
    text = html.read_text(encoding="utf-8")
    sections = re.findall(r"<h2[^>]*>([^<]+)", text)  # reproduce's section headings, then the analysis'
    analysis = [line[3:].strip() for cell in nbformat.read(NOTEBOOK_DIR / f"{NAME}.ipynb", as_version=4).cells
                if cell.cell_type == "markdown" for line in cell.source.splitlines() if line.startswith("## ")]
    assert analysis and sections == ["Runs", "Tables", *analysis], sections
    assert "<table" in text and "<h3" in text  # the table under its section-sized title
    assert "<h1" in text and text.count("<h1") == 1  # one page title: the tables' are not H1s
    assert "PosixPath(" not in text
    assert "finished (cached)" in text  # the plan, printed before the runs


@pytest.mark.slow
def test_a_screenshot_of_the_page_is_not_blank(html, tmp_path):
    from PIL import Image

    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        pytest.skip("no headless Chromium here (chromium, chromium-browser or google-chrome)")
    png = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={png}", "--window-size=1200,2000", html.as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(png) as image:
        darkest, _ = image.convert("L").getextrema()
        assert image.size == (1200, 2000) and darkest < 128, (image.size, darkest)  # text drawn, not blank
