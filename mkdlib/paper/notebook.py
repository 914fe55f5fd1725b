"""What a notebook asks for: its parameters turned into folders (`notebook_paths`: relative to the
notebooks folder, which `notebooks_folder` finds in the working tree, whoever starts papermill), run options
(`notebook_options`: dicts given as JSON strings decoded) and its runs (`notebook_specs`, by the item that
needs them); which notebooks an `--only` selects; and the data / weights locations given on the command line
(`use_locations`).

`mkd regenerate` executes the notebooks (regenerate.py) and `--train-only` runs the same specs without
papermill (train_only.py): both ask for the same run keys through `notebook_specs`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mkdlib.config import profile_of
from mkdlib.datasets import ENV_VAR as DATA_ENV
from mkdlib.paper.fast import comparison_specs
from mkdlib.paper.items import FIGURE1_ROWS, FIGURES, ITEMS, output_name, specs_for
from mkdlib.paper.markdown import written_profile
from mkdlib.runs.spec import RunSpec
from mkdlib.weights import WEIGHTS_ENV

NOTEBOOKS_ENV = "MKDLIB_NOTEBOOKS"  # the notebooks folder, for kernels started elsewhere (mkd regenerate sets it)


# Notebook (notebooks/<name>.ipynb) -> the items and figures it writes. Tables 9-10 are split between the
# cloner (Figure 4) and loss (Figure 5) notebooks by setting; both write the shared SmallerNet = Total Loss runs.
NOTEBOOKS: dict[str, tuple[str, ...]] = {
    "00_quickstart": ("quickstart",),
    "01_method": ("method",),
    "table2_one_class_detection": ("table2_mnist", "table2_fashionmnist", "table2_cifar10"),
    "table3_mvtec_detection": ("table3",),
    "table4_figure6_mvtec_localization": ("table4", "figure6"),
    "table5_retinal_oct": ("table5",),
    "table6_medical": ("table6",),
    "figure3_tables7_8_layer_ablation": ("table7", "table8", "figure3"),
    "figure4_tables9_10_cloner_size": ("table9", "table10", "figure4"),
    "figure5_tables9_10_loss_ablation": ("table9", "table10", "figure5"),
    "table1_table11_interpretability": ("table11", "table1"),
    "figure1_heatmaps": ("figure1",),
    "fast_vs_paper": ("fast_vs_paper",),
}


WALKTHROUGHS = ("00_quickstart", "01_method")  # notebooks that show the method, not a paper item (no reproduce)


def notebooks_for(key: str) -> list[str]:
    """The notebooks that write an item or figure ("table9"), or the notebook itself by name."""
    if key in NOTEBOOKS:
        return [key]
    found = [nb for nb, keys in NOTEBOOKS.items() if key in keys]
    if not found:
        known = sorted({k for keys in NOTEBOOKS.values() for k in keys})
        raise KeyError(f"unknown item or notebook {key!r}; items: {known}, notebooks: {list(NOTEBOOKS)}")
    return found


def outputs(notebook: str) -> dict[str, tuple[str, str | None]]:
    """The tables a notebook writes: output name -> (item, setting; None for the item's summary table,
    e.g. Table 1 of Table 11). An item written by several notebooks (Tables 9-10) is split between them:
    each writes the settings its figure draws (FIGURES), as the notebooks of Figures 4 and 5 do."""
    keys, out = NOTEBOOKS[notebook], {}
    for item in (k for k in keys if k in ITEMS):
        settings = tuple(ITEMS[item].settings)
        if len(notebooks_for(item)) > 1:
            settings = next(FIGURES[f][1][item] for f in keys if f in FIGURES and item in FIGURES[f][1])
        out |= {output_name(item, s): (item, s) for s in settings}
        if ITEMS[item].summary:
            out[ITEMS[item].summary] = (item, None)
    return out


def overwrites(results_dir: str | Path, names: Sequence[str], profile: str) -> list[tuple[Path, str]]:
    """(file, its profile) for each table (csv, md) or index these notebooks would write in results_dir
    that another profile wrote (markdown.written_profile). `reproduce` (every notebook, however executed)
    and `mkd regenerate` check it before any run."""
    results_dir = Path(results_dir)
    files = [results_dir / f"{out}.{ext}" for name in names for out in outputs(name) for ext in ("csv", "md")]
    # every notebook of a paper table or figure rewrites the index; the quickstart writes only its demo
    if any(outputs(name) or any(key in FIGURES for key in NOTEBOOKS[name]) for name in names):
        files.append(results_dir / "README.md")
    found = [(path, written_profile(path)) for path in dict.fromkeys(files)]
    return [(path, written) for path, written in found if written not in (None, profile)]


def refuse_overwrites(results_dir: str | Path, names: Sequence[str], profile: str) -> None:
    """Raise FileExistsError, before anything runs, if the notebooks would overwrite another profile's files."""
    clash = overwrites(results_dir, names, profile)
    if clash:
        path, written = clash[0]
        others = "".join(f"\n  {p} (profile {w!r})" for p, w in clash[1:])
        raise FileExistsError(f"{path} was written by profile {written!r}, not {profile!r}"
                              f"{f' (and {len(clash) - 1} more files below)' if others else ''}: pass --force "
                              f"to overwrite, or choose another folder with --results{others}")


def select(only: Sequence[str] | None = None) -> list[str]:
    """Notebook names, in suite order, for item ids ("table9"), figure ids or notebook names."""
    if not only:
        return list(NOTEBOOKS)
    wanted = {nb for key in only for nb in notebooks_for(key)}
    return [nb for nb in NOTEBOOKS if nb in wanted]


def notebooks_folder(explicit: str | Path | None = None) -> Path:
    """The suite's notebooks folder: `explicit`, else $MKDLIB_NOTEBOOKS, else the working tree's: the current
    folder where it holds the suite's notebooks (Jupyter and `mkd regenerate` run them there), else the
    nearest folder above it with a notebooks/ that holds them (a checkout's root). ValueError saying how
    to name it where none is found."""
    given = explicit or os.environ.get(NOTEBOOKS_ENV)
    if given:
        return Path(given).expanduser().resolve()
    here = Path.cwd().resolve()
    for folder in (here, *(p / "notebooks" for p in (here, *here.parents))):
        if any((folder / f"{name}.ipynb").is_file() for name in NOTEBOOKS):
            return folder
    raise ValueError(f"no notebooks folder (holding the suite's notebooks, e.g. {next(iter(NOTEBOOKS))}.ipynb) in "
                     f"or above {here}: run from the checkout, pass its notebooks folder, or set ${NOTEBOOKS_ENV}")


def default_results(profile: str, notebooks: str | Path | None = None) -> Path:
    """<checkout>/results for the paper profile (the committed tables), results/<profile>/ for any other,
    so that a pipeline check never replaces the paper's numbers; the checkout is the notebooks folder's."""
    results = notebooks_folder(notebooks).parent / "results"
    name = profile_of(profile).name
    return results if name == "paper" else results / name


def notebook_paths(profile: str, results_dir: str | Path | None, runs_dir: str | Path | None = None,
                   notebooks: str | Path | None = None) -> tuple[Path, Path]:
    """(results folder, run cache) of a notebook: results_dir, else the profile's default_results; the run
    cache runs_dir, else <results folder>/runs. Relative paths are taken from the notebooks folder (as
    "../results" always meant), not from the working directory of whoever started papermill."""
    def located(path: str | Path) -> Path:
        path = Path(path).expanduser()
        return path.resolve() if path.is_absolute() else (notebooks_folder(notebooks) / path).resolve()

    results = default_results(profile, notebooks) if results_dir is None else located(results_dir)
    return results, located(runs_dir) if runs_dir else results / "runs"


def _decoded(name: str, value: Any) -> Any:
    """A dict or list parameter that arrived as a JSON string (papermill -p passes them as text)."""
    if not (isinstance(value, str) and value.strip()[:1] in ("{", "[")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"notebook parameter {name}={value!r} is not valid JSON ({err.msg}); give dicts and "
                         "lists as JSON (-p classes '{\"mvtec\": [\"bottle\"]}') or as YAML (papermill -y)") from None


def _int_at_least(value: Any, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


# The notebooks' parameters with what each must be: a check a value passes, and the words of the error.
_CHECKS: dict[str, tuple[Any, str]] = {
    "classes": (lambda v: v is None or isinstance(v, (dict, list)), "a dict per item or dataset, or a list of classes"),
    "seeds": (lambda v: v is None or (isinstance(v, list) and all(_int_at_least(s, 0) for s in v)),
              "null or a list of integers >= 0, e.g. [0, 1, 2]"),
    "data_root": (lambda v: v is None or isinstance(v, str), "null or a folder"),
    "data_roots": (lambda v: v is None or (isinstance(v, dict) and all(isinstance(x, str) for x in v.values())),
                   'a dict of dataset -> folder, e.g. {"mvtec": "/data/mvtec"}'),
    "weights": (lambda v: v in (None, "profile", "imagenet") or (isinstance(v, str) and Path(v).expanduser().is_file()),
                '"profile", "imagenet", null (a random source) or an existing weights file'),
    "config": (lambda v: v is None or isinstance(v, dict), 'a dict of settings, e.g. {"lr": 0.0005}'),
    **dict.fromkeys(("workers", "threads"), (lambda v: v is None or _int_at_least(v, 1), "null or an integer >= 1")),
    **dict.fromkeys(("progress", "force", "train"), (lambda v: isinstance(v, bool), "true or false")),
}


def notebook_options(**parameters: Any) -> dict[str, Any]:
    """The notebook's parameters with JSON strings decoded, each checked before anything runs: a ValueError
    names the parameter, its value and what it must be (`-p seeds abc` is not a list of seeds)."""
    out = {name: _decoded(name, value) for name, value in parameters.items()}
    for name, value in out.items():
        check, what = _CHECKS.get(name, (lambda v: True, ""))
        if not check(value):
            raise ValueError(f"notebook parameter {name}={value!r}: expected {what}")
    return out


# A notebook's run options (its parameters cell) with the notebooks' defaults: what notebook_specs and
# --train-only's -p take.
SPEC_OPTIONS: dict[str, Any] = {"classes": {}, "seeds": None, "data_root": None, "data_roots": {},
                                "weights": "profile", "config": {}}


def notebook_specs(name: str, profile: str = "paper", **options: Any) -> dict[str, list[RunSpec]]:
    """The runs notebook `name` executes, by the item (or figure) that needs them, from its run options
    (notebook_options; absent ones take SPEC_OPTIONS). The notebooks and --train-only both call it, so both
    ask for the same run keys. An item split between two notebooks (Tables 9-10) gets the settings this
    notebook's figure draws (outputs); Figure 1 runs its own rows of three items."""
    options = {**SPEC_OPTIONS, **options}
    keys, drawn, by_key = NOTEBOOKS[name], outputs(name), {}
    if "figure1" in keys:
        rows = {**FIGURE1_ROWS[profile], **options["classes"]}
        by_key["figure1"] = [spec for item in FIGURES["figure1"][1]
                             for spec in specs_for(item, profile, **{**options, "classes": rows})]
    for item in (k for k in keys if k in ITEMS):
        settings = [s for i, s in drawn.values() if i == item and s is not None]
        by_key[item] = specs_for(item, profile, settings=settings, **options)
    if "fast_vs_paper" in keys:  # trains the fast side only; the paper side is read
        by_key["fast_vs_paper"] = comparison_specs(profile, **options)["fast"]
    return by_key


def use_locations(data_root: str | None, weights: str | None) -> None:
    """Point $MKDLIB_DATA and $MKDLIB_VGG16_WEIGHTS (inherited by the notebooks' kernels) at these, so that
    the runs' specs keep data_root None and weights "imagenet": the same keys on every machine."""
    for value, env, kind, option in ((data_root, DATA_ENV, "folder", "--data-root"),
                                     (weights, WEIGHTS_ENV, "file", "--weights")):
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if not (path.is_dir() if kind == "folder" else path.is_file()):
            raise ValueError(f"{path} is not a {kind}: pass an existing {kind} as {option}")
        os.environ[env] = str(path)
