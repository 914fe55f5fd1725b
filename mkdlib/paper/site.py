"""The results as a static site (`make site`): an index with the paper beside ours for every table, one page
per table (its Markdown) and one per executed notebook (nbconvert's lab template), in one folder that opens
from disk. Nothing is loaded from a network: notebook images are embedded, the CDN scripts of nbconvert's
template (require.js, MathJax, mermaid, widgets) are left out, and the files pages link to are copied in.
"""

from __future__ import annotations

import argparse
import csv
import html
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote, unquote

import nbformat

from mkdlib.outputs import OutputError, output_folder

SUMMARY = ("paper", "paper_pm", "ours_final", "ours_mean", "ours_std", "diff", "note", "profile")
CSS = """
body { font-family: system-ui, "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; line-height: 1.45;
       color: #1f2328; max-width: 78rem; margin: 1.5rem auto; padding: 0 1.2rem; }
table { border-collapse: collapse; margin: 0.8rem 0 1.2rem; font-size: 0.9rem; }
th, td { border: 1px solid #c8ccd1; padding: 0.25rem 0.55rem; text-align: left; vertical-align: top; }
body.page table { display: block; max-width: 100%; overflow-x: auto; }  /* a wide table scrolls, not the page */
th { background: #eef1f4; }
tbody tr:nth-child(even) { background: #f7f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.note, span.note { color: #57606a; font-size: 0.85rem; }
td.title { min-width: 20rem; }
img { max-width: 100%; }
code { background: #f0f2f4; padding: 0 0.2rem; border-radius: 3px; font-size: 0.9em; }
nav.site { margin: 0 0 1rem; font-size: 0.95rem; }
a.anchor-link { display: none; }
"""
# nbconvert's lab template without its CDN scripts, with the site's navigation above the notebook.
NOTEBOOK_TEMPLATE = """{%- extends 'index.html.j2' -%}
{% block html_head_js %}{% endblock html_head_js %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block extra_css %}<style>nav.site { max-width: 78rem; margin: 1rem auto 0; padding: 0 1.2rem;
  font-family: system-ui, "DejaVu Sans", Arial, sans-serif; } nav.site a { color: #0b57d0; }
  a.anchor-link { display: none; }
  .jp-RenderedHTMLCommon table { margin: 0.5rem 0 1rem; }</style>{% endblock extra_css %}
{% block body_header %}{{ super() }}
<nav class="site"><a href="{{ resources.site_index }}">&larr; results index</a></nav>
{% endblock body_header %}
"""
_LINK = re.compile(r'(\s(?:src|href)=")([^"]*)(")')
_UNDERSCORE = re.compile(r"(?<=[A-Za-z0-9])_(?=[A-Za-z0-9])")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def local_link(link: str) -> tuple[str, str] | None:
    """(path, "#anchor" or "") of a link to a file relative to its page; None for an anchor alone, an
    absolute path or a URL (a scheme: http:, data:, mailto:, ...)."""
    if not link or link.startswith(("#", "/")) or _SCHEME.match(link):
        return None
    path, hash_, fragment = link.partition("#")
    return path, hash_ + fragment


@dataclass(frozen=True)
class Table:
    """One results table: `name` (its stem, with the subfolder for another profile's: `fast/table7_last_1`),
    its Markdown, its CSV (or None) and its title (the first `# ` line)."""

    name: str
    md: Path
    csv: Path | None
    title: str


def _natural(text: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _title(text: str, default: str) -> str:
    return next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), default)


def find_tables(results_dir: Path) -> list[Table]:
    """The tables of `results_dir` (every `*.md` but README.md), then those of its subfolders that have a
    results index of their own (README.md: another profile's results, e.g. `fast/`)."""
    folders = [results_dir] + sorted((d for d in results_dir.iterdir() if d.is_dir() and (d / "README.md").is_file()),
                                     key=lambda d: _natural(d.name))
    tables = []
    for folder in folders:
        prefix = "" if folder == results_dir else f"{folder.name}/"
        for md in sorted(folder.glob("*.md"), key=lambda p: _natural(p.stem)):
            if md.name != "README.md":
                csv_path = md.with_suffix(".csv")
                tables.append(Table(prefix + md.stem, md, csv_path if csv_path.is_file() else None,
                                    _title(md.read_text(encoding="utf-8"), md.stem)))
    return tables


def summary_rows(table: Table) -> list[dict[str, str]] | None:
    """The rows of `table`'s CSV to show on the index: its `mean` row where it has one, else all its rows,
    each with `label` (the first column: class or setting); None for a CSV in another format (or none)."""
    if table.csv is None:
        return None
    with table.csv.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        columns = reader.fieldnames or []
    if not rows or not set(SUMMARY) <= set(columns):
        return None
    rows = [{"label": row[columns[0]], **{k: row[k] or "" for k in SUMMARY}} for row in rows]
    return [row for row in rows if row["label"] == "mean"] or rows


def _number(text: str, pm: str = "") -> str:
    """A CSV value to 2 decimals (`a ± b` with a spread), `—` when empty, as written when not a number."""
    if not text:
        return "—"
    try:
        return f"{float(text):.2f} ± {float(pm):.2f}" if pm else f"{float(text):.2f}"
    except ValueError:
        return html.escape(f"{text} ± {pm}" if pm else text)


def render_markdown(text: str) -> str:
    """Markdown to HTML with nbconvert's own renderer (mistune; tables included), as in the notebook pages."""
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    # a line may break after the underscore of a long name (`table11_smoothgrad_standard.md`) in a narrow column
    return re.sub(r">([^<]+)<", lambda m: ">" + _UNDERSCORE.sub("_<wbr>", m[1]) + "<", markdown2html_mistune(text))


def render_notebook(path: Path) -> str:
    """An executed notebook as one self-contained HTML page (lab template, images embedded, no CDN script)
    with a link to the site's index."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", template_file="mkdlib_site.html.j2", embed_images=True,
                            extra_loaders=[DictLoader({"mkdlib_site.html.j2": NOTEBOOK_TEMPLATE})])
    resources = {"metadata": {"name": path.stem, "path": str(path.parent)}, "site_index": "index.html"}
    body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4), resources=resources)
    return body


def _page(title: str, body: str, index: str | None) -> str:
    nav = f'<nav class="site"><a href="{index}">&larr; results index</a></nav>\n' if index else ""
    head = (f'<meta charset="utf-8">\n<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>")
    kind = "page" if index else "index"
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n{head}\n</head>\n<body class="{kind}">\n{nav}{body}\n'
            "</body>\n</html>\n")


class _Site:
    """The pages being written into `out` (a temporary folder swapped in at the end), and the files they link."""

    def __init__(self, results_dir: Path, out: Path, pages: dict[Path, Path]):
        self.results, self.out, self.pages, self.written = results_dir.resolve(), out, pages, []
        self.root = self.results.parent  # the checkout: the docs the notebooks link to are rendered too
        self.pending = list(pages)  # the Markdown files to render: the results', then those a page links to

    def write_markdown(self) -> None:
        """Render every pending Markdown file (and those they link to), a table's with a link to its CSV."""
        while self.pending:
            md = self.pending.pop()
            rel = self.pages[md]
            index = quote(Path(os.path.relpath("index.html", rel.parent)).as_posix())
            text = md.read_text(encoding="utf-8")
            body = render_markdown(text)
            if rel.parts[0] == "tables" and md.with_suffix(".csv").is_file():
                body += f'\n<p>Data: <a href="{quote(md.stem)}.csv">{html.escape(md.stem)}.csv</a></p>'
            self.write(rel, _page(_title(text, md.stem), body, index), md.parent)

    def write(self, rel: Path, text: str, source_dir: Path) -> None:
        """Write page `rel`, its relative links pointed at the pages and copied files of the site."""
        page = self.out / rel
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(_LINK.sub(lambda m: m[1] + self._link(m[2], source_dir, page) + m[3], text), encoding="utf-8")
        self.written.append(rel)

    def _link(self, url: str, source_dir: Path, page: Path) -> str:
        """A relative link of a page whose source is in `source_dir`: to the page of a Markdown file rendered
        here (the results' tables, and the checkout's Markdown docs the pages link to, under repo/), or to a
        copy of a file of the results folder (under files/, at its path there) or of the checkout (under
        files/repo/); else unchanged (external, anchor, data:, or a file outside the checkout)."""
        local = local_link(html.unescape(url))
        if local is None:
            return url
        path, anchor = local
        target = (source_dir / unquote(path.split("?")[0])).resolve()
        if target in self.pages:
            rel = self.pages[target]
        elif target.is_file() and target.suffix == ".md" and self.root in target.parents:
            rel = self.pages[target] = Path("repo", target.relative_to(self.root)).with_suffix(".html")
            self.pending.append(target)
        elif target.is_file() and self.root in target.parents:
            base = self.results if self.results in target.parents else self.root
            rel = Path("files", *(() if base == self.results else ("repo",)), target.relative_to(base))
            if not (self.out / rel).exists():
                (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(target, self.out / rel)
                self.written.append(rel)
        else:
            return url
        return html.escape(quote(Path(os.path.relpath(self.out / rel, page.parent)).as_posix()) + anchor)


def _summary_table(tables: list[Table]) -> str:
    head = ("<tr><th>table</th><th>profile</th><th>row</th><th>paper</th><th>ours (final)</th>"
            "<th>ours (mean ± std)</th><th>diff</th><th>note</th></tr>")
    body = []
    for table in tables:
        rows = summary_rows(table)
        name, bracket, rest = table.title.partition(" [profile ")  # another profile's tables say so: smaller
        title = f'<a href="{quote(f"tables/{table.name}.html")}">{html.escape(name)}</a>'
        title += f' <span class="note">[profile {html.escape(rest)}</span>' if bracket else ""
        if rows is None:
            what = "no CSV" if table.csv is None else "its own columns, not the paper's beside ours"
            body.append(f'<tr><td class="title">{title}</td><td colspan="7" class="note">{what}: see the table</td>'
                        "</tr>")
            continue
        for i, row in enumerate(rows):
            first = f'<td class="title" rowspan="{len(rows)}">{title}</td>' if i == 0 else ""
            ours = _number(row["ours_mean"], row["ours_std"])
            cells = [html.escape(row["profile"]) or "—", html.escape(row["label"])]
            numbers = [_number(row["paper"], row["paper_pm"]), _number(row["ours_final"]), ours, _number(row["diff"])]
            body.append(f"<tr>{first}" + "".join(f"<td>{c}</td>" for c in cells)
                        + "".join(f'<td class="num">{n}</td>' for n in numbers)
                        + f'<td class="note">{html.escape(row["note"])}</td></tr>')
    return f"<table>\n<thead>{head}</thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"


def _notebook_item(path: Path) -> str:
    """An index entry: the notebook's page, its title (first `# ` heading), profile and whether it failed."""
    nb = nbformat.read(path, as_version=4)
    heading = next((_title(c.source, "") for c in nb.cells if c.cell_type == "markdown" and _title(c.source, "")), "")
    papermill = nb.metadata.get("papermill", {})
    facts = [f"profile {papermill['parameters']['profile']}"] if "profile" in papermill.get("parameters", {}) else []
    if papermill.get("exception"):
        facts.append("<strong>failed</strong>: see its last error")
    extra = f" ({'; '.join(facts)})" if facts else ""
    title = f": {html.escape(heading)}" if heading else ""
    return f'<li><a href="{quote(path.stem)}.html">{html.escape(path.stem)}</a>{title}{extra}</li>'


def build_site(results_dir: Path, out_dir: Path) -> list[Path]:
    """Write the site of `results_dir` into `out_dir` (replaced whole if mkdlib wrote it, refused if it holds
    anything else, see `mkdlib.outputs`); returns the files written: the pages and the copies they link to."""
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"no results folder at {results_dir}")
    tables = find_tables(results_dir)
    notebooks = sorted((results_dir / "executed").glob("*.ipynb"), key=lambda p: _natural(p.stem))
    readmes = [results_dir / "README.md"] + [t.md.parent / "README.md" for t in tables]
    pages = {md.resolve(): Path("tables", md.relative_to(results_dir)).with_suffix(".html")
             for md in [*(t.md for t in tables), *readmes] if md.is_file()}
    with output_folder(out_dir, writer="python -m mkdlib.paper.site", protect=[results_dir]) as out:
        site = _Site(results_dir, out, pages)
        for nb in notebooks:
            site.write(Path(f"{nb.stem}.html"), render_notebook(nb), nb.parent)
        site.write(Path("index.html"), _index(results_dir, tables, notebooks), results_dir)
        site.write_markdown()
    return [out_dir / rel for rel in site.written]


def _index(results_dir: Path, tables: list[Table], notebooks: list[Path]) -> str:
    folders: dict[str, list[Table]] = {}
    for table in tables:
        folders.setdefault(table.name.rpartition("/")[0], []).append(table)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = ["<h1>Multiresolution Knowledge Distillation: our reproduction</h1>",
             "<p>The results of <em>Multiresolution Knowledge Distillation for Anomaly Detection</em> (Salehi et al., "
             "CVPR 2021) as reproduced by mkdlib: every table of the results folder with the paper's number beside "
             "ours (the mean row where a table has one, else each row; AUROC in %, diff = ours (final) − paper), "
             "a page per table, and the executed notebooks that wrote them. "
             f"Built {now} from <code>{html.escape(results_dir.name)}/</code>"
             + (' (how: <a href="tables/README.html">its index</a>).' if (results_dir / "README.md").is_file() else ".")
             + "</p>"]
    for folder, group in folders.items():
        if folder:
            readme = f'tables/{quote(folder)}/README.html'
            parts.append(f'<h2>Tables in <code>{html.escape(folder)}/</code> (<a href="{readme}">its index</a>)</h2>')
        else:
            parts.append("<h2>Tables</h2>")
        parts.append(_summary_table(group))
    if not tables:
        parts.append("<h2>Tables</h2>\n<p>No tables (<code>*.md</code>) found in the results folder.</p>")
    parts.append("<h2>Notebooks</h2>")
    if notebooks:
        parts.append("<ul>\n" + "\n".join(_notebook_item(nb) for nb in notebooks) + "\n</ul>")
    else:
        parts.append(f"<p>No executed notebooks found (<code>{html.escape(results_dir.name)}/executed/*.ipynb</code>): "
                     "run them with <code>mkd regenerate</code>.</p>")
    return _page("MKD reproduction: results", "\n".join(parts), index=None)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m mkdlib.paper.site [--results results] [--out site]`."""
    parser = argparse.ArgumentParser(prog="python -m mkdlib.paper.site", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=Path("results"), help="the results folder (default: results)")
    parser.add_argument("--out", type=Path, default=Path("site"), help="the site's folder (default: site)")
    args = parser.parse_args(argv)
    try:
        written = build_site(args.results, args.out)
    except (OutputError, FileNotFoundError) as err:
        print(f"mkdlib.paper.site: {err}", file=sys.stderr)
        return 2
    print(f"mkdlib.paper.site: {len(written)} files in {args.out}/; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
