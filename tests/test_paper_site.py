"""The static results site (`make site`, `mkdlib.paper.site`) built from a tiny results folder made here: two
tables in the real CSV/Markdown format (one with a mean row, one without), the fast comparison in its own
columns, a figure a table links to and two executed notebooks (a Markdown table and a PNG in their outputs).
The files are checked, then every page is opened in headless Chromium (skipped without one) through its
DevTools protocol: tables and images render, relative links resolve, and nothing is requested from a network.
MKDLIB_SITE_SCREENSHOTS=<dir> keeps a screenshot of each page there.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from mkdlib.outputs import OutputError
from mkdlib.paper.site import build_site, find_tables, main, summary_rows

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
HEADER = "class,paper,paper_pm,ours_final,ours_mean,ours_std,diff,note,profile,weights,overrides\n"
WEIGHTS = "vgg16_features.pth (sha256 ec8092bca32d): the original VGG-16 release"
TABLE3_MD = f"""# Table 3, p. 8: Anomaly detection on MVTec AD

Metric: image-level AUROC (%). diff = ours (final) − paper. Paper ± as printed (the paper calls it variance).

| class | paper | ours (final) | ours (mean ± std) | diff | note |
|---|---|---|---|---|---|
| bottle | 99.39 ± 0.03 | 99.29 | 99.27 ± 0.07 | -0.10 |  |
| cable | 89.19 ± 0.38 | — | — | — | not run: mvtec data not found: expected /data/mvtec/cable/train. |
| mean | 94.29 | 99.29 | 99.27 ± 0.07 | — | ours over 1 of 2 classes; no diff |

Profile: `paper`; source weights: `{WEIGHTS}`.

Figure 1 of this run: ![bottle heat maps](figures/figure1_mvtec_bottle.png)
"""
TABLE3_CSV = HEADER + f"""bottle,99.39,0.032,99.28571429,99.27128427,0.0661266334,-0.1042857143,,paper,"{WEIGHTS}",
cable,89.19,0.378,,,,,not run: mvtec data not found: expected /data/mvtec/cable/train.,paper,imagenet (requested),
mean,94.29,,99.28571429,99.27128427,0.0661266334,,ours over 1 of 2 classes; no diff,paper,,
"""
TABLE6_MD = f"""# Table 6, p. 8: Anomaly detection on medical datasets

Metric: image-level AUROC (%). diff = ours (final) − paper. Paper ± as printed (the paper calls it variance).

| class | paper | ours (final) | ours (mean ± std) | diff | note |
|---|---|---|---|---|---|
| brainmri | 95.01 ± 0.23 | 86.67 | 86.67 ± 5.66 | -8.34 | mean ± std over 5 seeds |
| headct | 78.04 ± 0.23 | 92.06 | 92.06 ± 2.86 | 14.02 | mean ± std over 5 seeds |

Profile: `paper`; source weights: `{WEIGHTS}`.
"""
TABLE6_CSV = HEADER + f"""brainmri,95.01,0.229,86.67096774,86.67096774,5.660326175,-8.339032258,mean ± std over 5 seeds,paper,"{WEIGHTS}",
headct,78.04,0.225,92.06,92.06,2.856991425,14.02,mean ± std over 5 seeds,paper,"{WEIGHTS}",bf16 training and scoring
"""
FAST_MD = """# The fast profile beside the paper's

| item | metric | class | paper_final | fast_final | diff |
|---|---|---|---|---|---|
| table3 | image_auroc | bottle | 99.29 | 98.25 | -1.03 |
"""
FAST_CSV = "item,metric,class,paper_final,fast_final,diff\ntable3,image_auroc,bottle,99.29,98.25,-1.03\n"
README = """# Results

| item | title | file | csv |
|---|---|---|---|
| table3 | Table 3, p. 8: Anomaly detection on MVTec AD | [table3.md](table3.md) | [table3.csv](table3.csv) |
| table6 | Table 6, p. 8: Anomaly detection on medical datasets | [table6.md](table6.md) | [table6.csv](table6.csv) |
"""
NOTEBOOKS = {"table3_mvtec_detection": "Table 3: anomaly detection on MVTec AD", "00_quickstart": "Quickstart"}


def _png(width: int = 48, height: int = 32) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (width, height))
    image.putdata([(5 * x, 7 * y, 120) for y in range(height) for x in range(width)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _notebook(title: str, failed: bool = False) -> nbformat.NotebookNode:
    """An executed notebook as papermill leaves it: a heading, a plan printed, a Markdown table and a PNG."""
    table = TABLE3_MD.split("\n\n")[2]
    outputs = [new_output("stream", name="stdout", text="plan: 1 run, finished (cached)\n"),
               new_output("display_data", data={"text/markdown": f"### {title}\n\n{table}", "text/plain": "<table>"}),
               new_output("display_data", data={"image/png": base64.b64encode(_png()).decode(),
                                                "text/plain": "<Figure size 48x32>"})]
    figure = "![bottle](../figures/figure1_mvtec_bottle.png)"  # outside the notebook's folder: linked, not embedded
    nb = new_notebook(cells=[new_markdown_cell(f"# {title}\n\nThe heat maps: {figure}"),
                             new_code_cell("display(reproduction)", execution_count=1, outputs=outputs)])
    nb.metadata["papermill"] = {"parameters": {"profile": "smoke"}, "exception": failed}
    return nb


def _results(root: Path, notebooks: bool = True) -> Path:
    results = root / "results"
    (results / "figures").mkdir(parents=True)
    for name, text in {"table3.md": TABLE3_MD, "table3.csv": TABLE3_CSV, "table6.md": TABLE6_MD,
                       "table6.csv": TABLE6_CSV, "fast_vs_paper.md": FAST_MD, "fast_vs_paper.csv": FAST_CSV,
                       "README.md": README}.items():
        (results / name).write_text(text, encoding="utf-8")
    (results / "figures" / "figure1_mvtec_bottle.png").write_bytes(_png(64, 40))
    (results / "figures" / "unlinked.png").write_bytes(_png(8, 8))
    if notebooks:
        (results / "executed").mkdir()
        for i, (name, title) in enumerate(NOTEBOOKS.items()):
            nbformat.write(_notebook(title, failed=i == 1), results / "executed" / f"{name}.ipynb")
    return results


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    out = root / "site"
    written = build_site(_results(root), out)
    assert set(written) == {p for p in out.rglob("*") if p.is_file() and p.name != ".mkdlib-output"}
    return out


def _pages(site: Path) -> list[Path]:
    return sorted(site.rglob("*.html"))


def test_the_site_has_an_index_a_page_per_table_and_per_notebook_and_the_files_they_link(site):
    names = {p.relative_to(site).as_posix() for p in site.rglob("*") if p.is_file()}
    assert names == {"index.html", "table3_mvtec_detection.html", "00_quickstart.html", "tables/table3.html",
                     "tables/table6.html", "tables/fast_vs_paper.html", "tables/README.html", ".mkdlib-output",
                     "files/table3.csv", "files/table6.csv", "files/fast_vs_paper.csv",
                     "files/figures/figure1_mvtec_bottle.png"}  # not unlinked.png: no page links it
    for page in _pages(site):
        if page.name != "index.html":
            assert re.search(r'<a href="(\.\./)?index\.html">', page.read_text(encoding="utf-8")), page


def test_the_index_summarises_paper_and_ours_for_every_table(site):
    index = (site / "index.html").read_text(encoding="utf-8")
    rows = re.findall(r"<tr>(.*?)</tr>", index, flags=re.S)
    cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", "".join(rows[1:]), flags=re.S)]
    # table3: its mean row only; table6: no mean row, so each row; the fast comparison: a link and a word.
    assert "Table 3, p. 8: Anomaly detection on MVTec AD" in cells
    assert ["paper", "mean", "94.29", "99.29", "99.27 ± 0.07", "—", "ours over 1 of 2 classes; no diff"] == \
        cells[cells.index("Table 3, p. 8: Anomaly detection on MVTec AD") + 1:][:7]
    assert "brainmri" in cells and "headct" in cells and "95.01 ± 0.23" in cells and "14.02" in cells
    assert "bottle" not in cells and "cable" not in cells
    assert 'class="title" rowspan="2"><a href="tables/table6.html">' in index
    assert '<a href="tables/fast_vs_paper.html">The fast profile beside the paper' in index
    assert '<a href="table3_mvtec_detection.html">' in index and '<a href="00_quickstart.html">' in index
    assert "<strong>failed</strong>" in index and "profile smoke" in index


def test_table_pages_render_the_markdown_and_link_the_csv_and_figure(site):
    page = (site / "tables" / "table3.html").read_text(encoding="utf-8")
    assert "<table>" in page and "<td>99.27 ± 0.07</td>" in page
    assert '<img src="../files/figures/figure1_mvtec_bottle.png"' in page
    assert '<a href="../files/table3.csv">table3.csv</a>' in page
    readme = (site / "tables" / "README.html").read_text(encoding="utf-8")
    assert '<a href="table3.html">table3.md</a>' in readme and '<a href="../files/table3.csv">' in readme


def test_notebook_pages_embed_their_images_and_load_nothing_from_a_network(site):
    for name in NOTEBOOKS:
        page = (site / f"{name}.html").read_text(encoding="utf-8")
        assert page.count('src="data:image/png;base64,') == 1  # the output's PNG, embedded
        # the Markdown cell's figure, outside the notebook's folder (nbconvert embeds none there): copied in
        assert 'src="files/figures/figure1_mvtec_bottle.png"' in page
        assert "<table>" in page and "jp-Notebook" in page
    for page in _pages(site):
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"<script[^>]*\ssrc=", text), page  # no require.js, MathJax, mermaid, widgets
        assert not re.search(r"""<(link|img|iframe|source)[^>]*\s(src|href)=["']?(https?:)?//""", text), page
        assert not re.search(r"@import|url\(['\"]?(https?:)?//", text), page


def test_without_executed_notebooks_the_index_says_so_and_a_rebuild_replaces_the_site(tmp_path):
    results = _results(tmp_path, notebooks=False)
    out = tmp_path / "site"
    assert main(["--results", str(results), "--out", str(out)]) == 0
    assert "No executed notebooks found" in (out / "index.html").read_text(encoding="utf-8")
    (results / "table6.md").unlink()
    build_site(results, out)  # replaces the folder it wrote, stale pages included
    assert not (out / "tables" / "table6.html").exists() and (out / "tables" / "table3.html").is_file()
    tables = find_tables(results)
    assert [t.name for t in tables] == ["fast_vs_paper", "table3"]
    assert summary_rows(tables[0]) is None and [r["label"] for r in summary_rows(tables[1])] == ["mean"]


def test_a_folder_mkdlib_did_not_write_is_refused(tmp_path):
    results = _results(tmp_path, notebooks=False)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(OutputError):
        build_site(results, theirs)
    assert main(["--results", str(results), "--out", str(results)]) == 2  # the results folder itself
    assert (theirs / "notes.txt").read_text(encoding="utf-8") == "mine"


class Chromium:
    """Headless Chromium driven through the DevTools protocol (one page target, over websocket-client)."""

    def __init__(self, exe: str, profile: Path):
        import websocket

        self.proc = subprocess.Popen(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--hide-scrollbars", f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        active = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.is_file() and active.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"{exe} wrote no DevToolsActivePort (exit code {self.proc.poll()})")
            time.sleep(0.1)
        port = active.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            target = next(t for t in json.load(reply) if t["type"] == "page")
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self.next_id, self.events = 0, []
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(event)
            self.events.append(json.loads(self.ws.recv()))

    def open(self, url: str) -> list[dict]:
        """Navigate to `url` and wait for its load event; returns the network events of the load."""
        self.events = []
        self.send("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")
        return [e for e in self.events if e.get("method", "").startswith("Network.")]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def screenshot(self, png: Path, width: int = 1280) -> None:
        metrics = {"width": width, "deviceScaleFactor": 1, "mobile": False}
        self.send("Emulation.setDeviceMetricsOverride", height=800, **metrics)  # the width first: then the height
        height = min(int(self.evaluate("document.documentElement.scrollHeight")), 6000)
        self.send("Emulation.setDeviceMetricsOverride", height=height, **metrics)
        png.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        self.send("Emulation.clearDeviceMetricsOverride")

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: the browser and its helpers
                self.proc.wait(10)


CHECKS = """(() => ({
  tables: document.querySelectorAll("table").length,
  images: [...document.images].map(i => ({src: i.getAttribute("src").slice(0, 60),
                                         ok: i.complete && i.naturalWidth > 0})),
  links: [...document.querySelectorAll("a[href]")].map(a => a.getAttribute("href")),
  text: document.body.innerText.length,
}))()"""


def test_every_page_renders_in_chromium_with_its_tables_images_and_links(site, tmp_path):
    _render_every_page(site, tmp_path, must_have_images=lambda rel, stem: stem in NOTEBOOKS or rel == "tables/table3.html")


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "results" / "executed").is_dir(), reason="no committed executed notebooks")
def test_the_site_of_the_committed_results_renders_in_chromium(tmp_path):
    """The real site (`make site` from results/): every page with its tables and images, no broken link; every
    executed notebook's page has its plots (Table 5's has none: no data, nothing ran)."""
    site = tmp_path / "site"
    build_site(ROOT / "results", site)
    _render_every_page(site, tmp_path, must_have_images=lambda rel, stem: "/" not in rel
                       and stem not in ("index", "table5_retinal_oct"))


def _render_every_page(site: Path, tmp_path: Path, must_have_images) -> None:
    pytest.importorskip("websocket", reason="websocket-client is needed to drive Chromium")
    exe = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if exe is None:
        pytest.skip("no headless Chromium here (chromium, chromium-browser or google-chrome): "
                    "apt-get install chromium to run the browser test")
    shots = tmp_path / "screenshots"
    shots.mkdir()
    keep = Path(os.environ["MKDLIB_SITE_SCREENSHOTS"]) if os.environ.get("MKDLIB_SITE_SCREENSHOTS") else None
    browser = Chromium(exe, tmp_path / "profile")
    try:
        for page in _pages(site):
            rel = page.relative_to(site).as_posix()
            network = browser.open(page.as_uri())
            requested = [e["params"]["request"]["url"] for e in network if e["method"] == "Network.requestWillBeSent"]
            assert all(url.startswith(("file:", "data:")) for url in requested), (rel, requested)
            assert not [e for e in network if e["method"] == "Network.loadingFailed"], (rel, network)
            found = browser.evaluate(CHECKS)
            assert found["text"] > 100, (rel, found)
            if not rel.startswith("repo/"):  # a doc may be prose only; a results page shows tables or plots
                assert found["tables"] > 0 or found["images"], (rel, found)
            assert all(image["ok"] for image in found["images"]), (rel, found["images"])
            if rel.startswith("tables/") or rel == "index.html":
                assert found["tables"] > 0, rel
            if must_have_images(rel, page.stem):
                assert found["images"], rel
            for href in found["links"]:
                if href.startswith("#") or urlparse(href).scheme:
                    continue
                target = (page.parent / unquote(href.split("#")[0])).resolve()
                assert target.is_file() and site.resolve() in target.parents, (rel, href)
            png = shots / (rel.replace("/", "__").removesuffix(".html") + ".png")
            browser.screenshot(png)
            assert png.stat().st_size > 1000
            if keep is not None:
                keep.mkdir(parents=True, exist_ok=True)
                shutil.copy2(png, keep / png.name)
    finally:
        browser.close()


def test_the_docs_a_notebook_links_to_are_rendered_into_the_site(tmp_path):
    results = _results(tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "fidelity.md").write_text("# Fidelity\n\n## HeadCT\n\nSee [usage](usage.md) and [the licence](../LICENSE).\n")
    (tmp_path / "docs" / "usage.md").write_text("# Usage\n\nBack to [fidelity](fidelity.md#headct).\n")
    (tmp_path / "LICENSE").write_text("MIT\n")
    nbformat.write(new_notebook(cells=[new_markdown_cell("# Table 3\n\nWhy: [fidelity](../../docs/fidelity.md#headct).")]),
                   results / "executed" / "table3_mvtec_detection.ipynb")
    site = tmp_path / "site"
    build_site(results, site)
    page = (site / "table3_mvtec_detection.html").read_text(encoding="utf-8")
    assert 'href="repo/docs/fidelity.html#headct"' in page
    fidelity = (site / "repo" / "docs" / "fidelity.html").read_text(encoding="utf-8")
    assert 'href="usage.html"' in fidelity and 'href="../../files/repo/LICENSE"' in fidelity
    assert (site / "repo" / "docs" / "usage.html").is_file() and (site / "files" / "repo" / "LICENSE").is_file()
