"""`reproduce(notebook, ...)`: everything a paper notebook does, as one call. It prints the plan, runs
what is not in the run cache, adds the maps its tables read, writes the tables, the figures and the
index into the results folder, and returns a `Reproduction` whose display shows the tables and figures.

A notebook is its introduction, its parameters cell, this call and `display(reproduction)`. Section
headings ("## Runs", "## Tables", "## Figures") mark the steps in the notebook's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mkdlib.config import profile_of
from mkdlib.io_utils import shown
from mkdlib.paper import fast, figures, markdown, tabulation
from mkdlib.paper.items import FIGURES, ITEMS
from mkdlib.paper.notebook import (NOTEBOOKS, WALKTHROUGHS, notebook_options, notebook_paths, notebook_specs, outputs,
                                   refuse_overwrites)
from mkdlib.plots import save_figure
from mkdlib.runs import executors, planning
from mkdlib.runs.loading import check_device
from mkdlib.runs.store import finished_runs
from mkdlib.runs.spec import RunResult, RunSpec

HEATMAPS = {"figure1": (2, None), "figure6": (3, 2)}  # heatmap figure -> (test images a row, figures shown)


def _as_text(kind: str, value: str | Path) -> str:
    return str(value) if kind == "markdown" else f"[figure] {value}"


def _show(kind: str, value: str | Path) -> None:
    """Markdown text or an image file: displayed in a notebook, printed (text, path) elsewhere."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        shell = None
    if shell is None:
        print(_as_text(kind, value), flush=True)
        return
    from IPython.display import Image, Markdown, display

    display(Markdown(str(value)) if kind == "markdown" else Image(filename=str(value)))


@dataclass
class Reproduction:
    """What a notebook wrote: its tables (output name -> DataFrame, `tabulation.tables`), Markdown blocks
    without a DataFrame (the fast comparison), the figures' files and every run's result."""

    notebook: str
    results_dir: Path
    tables: dict[str, Any] = field(default_factory=dict)
    texts: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    shown_figures: list[Path] = field(default_factory=list)
    results: list[RunResult] = field(default_factory=list)
    comparison: Any = None  # fast_vs_paper's table (fast.comparison), a DataFrame

    def blocks(self) -> list[tuple[str, str | Path]]:
        """(kind, value) in display order: each table under "## Tables", then "## Figures"."""
        out: list[tuple[str, str | Path]] = []
        if self.tables or self.texts:
            out.append(("markdown", "## Tables"))
            out += [("markdown", markdown.to_markdown(df, df.attrs["title"], level=3)) for df in self.tables.values()]
            out += [("markdown", text) for text in self.texts]
        if self.shown_figures:
            out += [("markdown", "## Figures"), *(("image", p) for p in self.shown_figures)]
        return out

    def _ipython_display_(self) -> None:
        for kind, value in self.blocks():
            _show(kind, value)

    def __str__(self) -> str:
        return "\n\n".join(_as_text(kind, value) for kind, value in self.blocks())


def _train(specs: list[RunSpec], runs: Path, device: str, executor: str, workers: int | None,
           progress: bool, train: bool = True) -> list[RunResult]:
    """The plan printed, then the runs (finished ones read from the cache); train=False: the records only."""
    if not train or not specs:
        results = planning.recorded(specs, runs)
        print(f"records only: {sum(r.ok for r in results)} of {len(results)} runs finished in {shown(runs)}; nothing "
              "is trained", flush=True)
        return results
    print(planning.plan(specs, runs, device), flush=True)
    with executors.executor(executor, workers, device) as pool:
        return executors.run_many(specs, runs, device=device, progress=progress, **pool)


def _comparison(out: Reproduction, profile: str, runs: Path, run: dict, options: dict) -> None:
    """The fast profile beside the paper's: only the fast runs beside a finished paper run are trained."""
    specs = fast.comparison_specs(profile, **options)
    paper = finished_runs(specs["paper"], runs)
    to_train = fast.partners(specs, paper)
    print(f"{sum(r.ok for r in paper)} of {len(paper)} {profile} runs finished in {shown(runs)}; "
          f"the fast runs beside them: {len(to_train)} of {len(specs['fast'])}", flush=True)
    out.results = _train(to_train, runs, **run)
    paper = finished_runs(specs["paper"], runs)  # read again: in a smoke check they are the runs just trained
    out.comparison = fast.comparison(paper, out.results)
    fast.save_comparison(out.comparison, out.results_dir)
    out.texts.append(fast.comparison_markdown(out.comparison))


def _tables(out: Reproduction, profile: str, device: str, progress: bool, train: bool) -> None:
    """Each item's tables (the settings this notebook draws), the maps they read and the runs lack added
    first (Table 11's SmoothGrad and guided backprop; as --train-only does; not with train=False)."""
    for item in (k for k in NOTEBOOKS[out.notebook] if k in ITEMS):
        if train:
            out.results = tabulation.add_maps(item, out.results, device=device, progress=progress)
        settings = [s for i, s in outputs(out.notebook).values() if i == item and s is not None]
        out.tables |= tabulation.tables(item, out.results, profile=profile, settings=settings)
    tabulation.save_tables(out.tables, out.results_dir)


def _figures(out: Reproduction, device: str) -> None:
    for key in (k for k in NOTEBOOKS[out.notebook] if k in FIGURES):
        if key in HEATMAPS:
            n, shown = HEATMAPS[key]
            saved = figures.save_heatmaps(key, out.results, out.results_dir, n=n, device=device)
        else:
            figure = figures.means_figure_for(key, out.tables)
            saved, shown = [save_figure(figure, out.results_dir / "figures" / f"{key}.png")], 1
        out.figures += saved
        out.shown_figures += saved[:shown]


def reproduce(notebook: str, *, profile: str = "paper", results_dir: str | Path | None = None,
              runs_dir: str | Path | None = None, device: str = "cpu", executor: str = "auto",
              workers: int | None = None, threads: int | None = None, progress: bool = True,
              force: bool = False, train: bool = True, **options: Any) -> Reproduction:
    """Run notebook `notebook`'s items (notebook.NOTEBOOKS) and write their tables and figures.

    The keywords are the notebooks' parameters. `options` are the run options (classes, seeds, data_root,
    data_roots, weights, config; dicts may come as JSON text). Relative paths are taken from the notebooks
    folder. Tables or an index another profile wrote in the results folder are not overwritten unless
    `force` (FileExistsError before any run). train=False reads the run records only: nothing is trained
    or added to a run (`make notebooks`). Every parameter is checked first, naming a bad one. Returns the
    Reproduction, which `display` shows.
    """
    if notebook not in NOTEBOOKS or notebook in WALKTHROUGHS:
        raise KeyError(f"unknown notebook {notebook!r}; reproduce runs {[n for n in NOTEBOOKS if n not in WALKTHROUGHS]}")
    checked = notebook_options(workers=workers, threads=threads, progress=progress, force=force, train=train,
                               **options)
    options = {k: checked[k] for k in options}
    profile_of(profile)
    check_device(device)
    executors.check_executor(executor)
    if threads:
        torch.set_num_threads(threads)
    results, runs = notebook_paths(profile, results_dir, runs_dir)
    if not force:
        refuse_overwrites(results, [notebook], profile)
    out, run = Reproduction(notebook, results), {"device": device, "executor": executor, "workers": workers,
                                                 "progress": progress, "train": train}
    _show("markdown", "## Runs")
    if notebook == "fast_vs_paper":
        _comparison(out, profile, runs, run, options)
        return out
    specs = [s for specs in notebook_specs(notebook, profile, **options).values() for s in specs]
    out.results = _train(specs, runs, **run)
    _tables(out, profile, device, progress, train)
    tabulation.update_index(out.results_dir, profile=profile, results=out.results)
    _figures(out, device)
    return out
