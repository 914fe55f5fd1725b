"""`mkd regenerate` / `python -m mkdlib.regenerate`: execute the paper notebooks with papermill.

Each notebook of `items.NOTEBOOKS` runs with the chosen profile and writes its tables and figures into
the results folder; the executed copy goes to `<results>/executed/`. Each profile has its own folder
(results/ for the paper's, results/<profile>/ for the others), and tables or an index that another profile
wrote are not overwritten without --force. A failing notebook is reported and the others still run; the
exit code is 1 if any failed (with --strict, also a notebook with an item that ran nothing).

The notebooks call `notebook_paths` and `notebook_options` on their parameters, so that they write the
same place from any working directory and take dicts given as JSON strings (papermill's `-p`), and
`notebook_specs` for their runs. --train-only runs those same specs without papermill (a GPU machine without
Jupyter): the records it leaves are then found, by key, when the notebooks render the tables elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tarfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mkdlib.cli import key_value
from mkdlib.datasets import ENV_VAR as DATA_ENV
from mkdlib.experiment import HISTORY, LOCK, RunResult, RunSpec, check_device, run_many
from mkdlib.items import (FIGURE1_ROWS, FIGURES, ITEMS, NOTEBOOKS, PROFILES, fast_comparison_specs, notebooks_for,
                          outputs, profile_of, specs_for)
from mkdlib.models import WEIGHTS_ENV
from mkdlib.report import written_profile
from mkdlib.tabulation import add_maps, failure_note
from mkdlib.train import cloner_path

REPO = Path(__file__).resolve().parent.parent  # a source checkout (pip install -e .)
NOTEBOOK_DIR, RESULTS_DIR = REPO / "notebooks", REPO / "results"
KERNEL = "python3"
OWN_KERNEL = "mkdlib"  # installed into this interpreter's prefix when "python3" is another Python's


def kernel_name() -> str:
    """A Jupyter kernel that runs this interpreter: "python3" when its argv[0] is `python` (jupyter_client
    then starts sys.executable) or sys.executable itself; else a kernelspec for sys.executable installed
    into sys.prefix (a virtual environment's own share/jupyter/kernels)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    for name in (KERNEL, OWN_KERNEL):
        try:
            argv0 = manager.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        if argv0 in ("python", "python3") or Path(argv0).resolve() == Path(sys.executable).resolve():
            return name
    from ipykernel.kernelspec import install

    install(kernel_name=OWN_KERNEL, display_name=f"Python ({sys.prefix})", prefix=sys.prefix)
    return OWN_KERNEL


def select(only: Sequence[str] | None = None) -> list[str]:
    """Notebook names, in suite order, for item ids ("table9"), figure ids or notebook names."""
    if not only:
        return list(NOTEBOOKS)
    wanted = {nb for key in only for nb in notebooks_for(key)}
    return [nb for nb in NOTEBOOKS if nb in wanted]


def default_results(profile: str) -> Path:
    """results/ for the paper profile (the committed tables), results/<profile>/ for any other, so that a
    pipeline check never replaces the paper's numbers."""
    name = profile_of(profile).name
    return RESULTS_DIR if name == "paper" else RESULTS_DIR / name


def _from_notebooks(path: str | Path) -> Path:
    """A notebook parameter's path, relative ones taken from the notebooks folder (as "../results" was
    always meant), not from the working directory of whoever started papermill."""
    return (NOTEBOOK_DIR / Path(path).expanduser()).resolve()


def notebook_paths(profile: str, results_dir: str | Path | None,
                   runs_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(results folder, run cache) of a notebook: results_dir, else the profile's default_results; the run
    cache runs_dir, else <results folder>/runs. Relative paths are relative to the notebooks folder."""
    results = default_results(profile) if results_dir is None else _from_notebooks(results_dir)
    return results, _from_notebooks(runs_dir) if runs_dir else results / "runs"


def _decoded(name: str, value: Any) -> Any:
    """A dict or list parameter that arrived as a JSON string (papermill -p passes them as text)."""
    if not (isinstance(value, str) and value.strip()[:1] in ("{", "[")):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"notebook parameter {name}={value!r} is not valid JSON ({err.msg}); give dicts and "
                         "lists as JSON (-p classes '{\"mvtec\": [\"bottle\"]}') or as YAML (papermill -y)") from None


def notebook_options(**parameters: Any) -> dict[str, Any]:
    """The notebook's run options (items.specs_for keywords), JSON strings decoded."""
    return {name: _decoded(name, value) for name, value in parameters.items()}


# A notebook's run options (its parameters cell) with the notebooks' defaults: what notebook_specs and
# --train-only's -p take.
SPEC_OPTIONS: dict[str, Any] = {"classes": {}, "seeds": None, "data_root": None, "data_roots": {},
                                "weights": "profile", "config": {}}


def notebook_specs(name: str, profile: str = "paper", **options: Any) -> dict[str, list[RunSpec]]:
    """The runs notebook `name` executes, by the item (or figure) that needs them, from its run options
    (notebook_options; absent ones take SPEC_OPTIONS). The notebooks and --train-only both call it, so both
    ask for the same run keys. An item split between two notebooks (Tables 9-10) gets the settings this
    notebook's figure draws (items.outputs); Figure 1 runs its own rows of three items."""
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
        by_key["fast_vs_paper"] = fast_comparison_specs(profile, **options)["fast"]
    return by_key


def _writes_index(name: str) -> bool:
    """Every notebook of a paper table or figure rewrites the index; the quickstart writes only its demo."""
    return bool(outputs(name)) or any(key in FIGURES for key in NOTEBOOKS[name])


def overwrites(results_dir: str | Path, names: Sequence[str], profile: str) -> list[tuple[Path, str]]:
    """(file, its profile) for each table (csv, md) or index these notebooks would write in results_dir
    that another profile wrote (report.written_profile)."""
    results_dir = Path(results_dir)
    files = [results_dir / f"{out}.{ext}" for name in names for out in outputs(name) for ext in ("csv", "md")]
    if any(_writes_index(name) for name in names):
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


def _has_value(csv: Path) -> bool:
    """Whether a written table has any number of ours (a run that finished)."""
    try:
        return bool(pd.read_csv(csv)["ours_final"].notna().any())
    except (OSError, ValueError, KeyError):
        return False


def ran_nothing(results_dir: str | Path, name: str, since: float) -> list[str]:
    """The items of a notebook without a single finished run (every row not run or failed), read from the
    tables it wrote; for a notebook writing no tables, its heatmap figures not drawn after `since` (a
    time.time()). A pipeline check (--strict) that ran nothing has checked nothing."""
    results_dir, by_item = Path(results_dir), {}
    for out, (item, _) in outputs(name).items():
        by_item.setdefault(item, []).append(results_dir / f"{out}.csv")
    if by_item:
        return [item for item, tables in by_item.items() if not any(_has_value(t) for t in tables)]
    return [key for key in NOTEBOOKS[name] if key in FIGURES and not _drawn(results_dir, key, since)]


def _drawn(results_dir: Path, figure: str, since: float) -> bool:
    """Whether `<results_dir>/figures/<figure>_*.png` has a file written after `since`."""
    return any(p.stat().st_mtime >= since for p in (results_dir / "figures").glob(f"{figure}_*.png"))


def execute(names: Sequence[str], *, profile: str = "paper", results_dir: str | Path | None = None,
            notebook_dir: str | Path = NOTEBOOK_DIR, parameters: Mapping[str, Any] | None = None,
            kernel: str | None = None, log_output: bool = False, force: bool = False,
            strict: bool = False) -> dict[str, str | None]:
    """Execute each notebook into `<results_dir>/executed/<name>.ipynb`; name -> None or its error.

    results_dir: default_results(profile) when None. Files of another profile are not overwritten unless
    `force` (FileExistsError before anything runs). strict: a notebook with an item that ran nothing fails.
    """
    import papermill as pm

    fixed = sorted({"profile", "results_dir"} & set(parameters or {}))
    if fixed:
        raise ValueError(f"parameters {fixed} are set by --profile and --results; drop them from -p")
    results_dir = default_results(profile) if results_dir is None else Path(results_dir).resolve()
    notebook_dir = Path(notebook_dir).resolve()
    if not force:
        refuse_overwrites(results_dir, names, profile)
    executed = results_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    kernel = kernel or kernel_name()
    params = {"profile": profile, "results_dir": str(results_dir), **(parameters or {})}
    status: dict[str, str | None] = {}
    for name in names:
        start, since = time.perf_counter(), time.time()
        print(f"mkd regenerate: {name} (profile {profile}) ...", flush=True)
        try:
            pm.execute_notebook(notebook_dir / f"{name}.ipynb", executed / f"{name}.ipynb", parameters=params,
                                kernel_name=kernel, cwd=str(notebook_dir), progress_bar=False,
                                log_output=log_output)
            empty = ran_nothing(results_dir, name, since) if strict else []
            status[name] = f"ran no runs for {', '.join(empty)} (--strict; see {results_dir})" if empty else None
        except Exception as err:  # a failing notebook is reported; the others still run
            if hasattr(err, "ename"):  # papermill's PapermillExecutionError: the cell's exception
                status[name] = f"{err.ename}: {err.evalue} (cell {err.exec_count}; see {executed / name}.ipynb)"
            else:
                status[name] = f"{type(err).__name__}: {err}"
        took = time.perf_counter() - start
        print(f"mkd regenerate: {name} {'ok' if status[name] is None else 'FAILED'} in {took:.0f} s", flush=True)
    return status


# ---------------------------------------------------------------------------- --train-only (no papermill)

FINAL_CLONERS_BUDGET = 8 * 2**20  # bytes of final cloners an archive keeps (heatmap figures load them)


def _no_data(result: RunResult) -> bool:
    return result.error_type == "DatasetNotFoundError"


def _unique(results: Sequence[RunResult]) -> list[RunResult]:
    return list({r.spec.key(): r for r in results}.values())


def item_line(item: str, results: Sequence[RunResult], new: int, seconds: float) -> str:
    """The log line of one item: its runs, how many this command trained (new) or found finished (cached),
    failures, and the runs skipped because their data is not on this machine (not failures)."""
    runs = _unique(results)
    absent = [r for r in runs if _no_data(r)]
    failed = sum(not r.ok for r in runs) - len(absent)
    where = (f"no data here: {', '.join(dict.fromkeys(r.spec.dataset for r in absent))} "
             f"({failure_note(absent[0])})") if absent else ""
    if runs and len(absent) == len(runs):
        return f"{item}: skipped: {where}"
    done = len(runs) - failed - len(absent)
    text = f"{item}: {len(runs)} runs ({new} new, {done - new} cached), {failed} failed"
    return f"{text}{f', {len(absent)} skipped: {where}' if absent else ''}, {seconds:.0f} s"


def _trained_since(result: RunResult, start: float) -> bool:
    """Whether this finished run was trained after `start` (its history is written once, after training)."""
    history = result.run_dir / HISTORY if result.ok else None
    return history is not None and history.is_file() and history.stat().st_mtime >= start


def train_only(names: Sequence[str], *, profile: str = "paper", runs_dir: str | Path | None = None,
               device: str = "cpu", options: Mapping[str, Any] | None = None, log: str | Path | None = None,
               progress: bool = False) -> list[RunResult]:
    """Run the specs the notebooks `names` would run (notebook_specs) and the maps they add (add_maps), into
    runs_dir (default: the profile's run cache), without papermill or any table; print, and append to `log`,
    one item_line per item. Returns every run's result (absent data as DatasetNotFoundError results)."""
    device = str(check_device(device))
    runs_dir = Path(runs_dir).resolve() if runs_dir else notebook_paths(profile, None)[1]
    options = notebook_options(**(options or {}))
    sink = open(log, "a") if log else None  # noqa: SIM115  (closed below, after every item)

    def say(line: str) -> None:
        print(f"mkd regenerate --train-only: {line}", flush=True)
        if sink:
            sink.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
            sink.flush()

    out: list[RunResult] = []
    try:
        say(f"profile {profile}, device {device}, runs in {runs_dir}")
        for name in names:
            by_item = notebook_specs(name, profile, **options)
            if not by_item:
                say(f"{name}: no cached runs to train (it runs when rendered)")
            for item, specs in by_item.items():
                start = time.time()
                results = run_many(specs, runs_dir, device=device, progress=progress)
                if item in ITEMS:
                    results = add_maps(item, results, device=device, progress=progress)
                new = sum(_trained_since(r, start) for r in _unique(results))
                label = item if len(notebooks_for(item)) == 1 else f"{item} ({name})"
                say(item_line(label, results, new, time.time() - start))
                out += results
    finally:
        if sink:
            sink.close()
    return out


def pack_records(results: Sequence[RunResult], archive: str | Path, *,
                 cloner_budget: int = FINAL_CLONERS_BUDGET) -> list[str]:
    """Write the records of the finished runs among `results` into a tar.gz of `<key>/...`: every file but
    checkpoints/ and the lock, plus each run's final cloner while they total at most cloner_budget bytes
    (Figures 1 and 6 draw maps with it; nothing else needs a checkpoint once metrics.json exists).
    Returns the keys whose final cloner was left out."""
    left_out, budget = [], cloner_budget
    archive = Path(archive)
    partial = archive.with_name(archive.name + ".partial")
    with tarfile.open(partial, "w:gz") as tar:
        for res in (r for r in _unique(results) if r.ok):
            key = res.run_dir.name
            for path in sorted(res.run_dir.iterdir()):
                if path.name not in ("checkpoints", LOCK):
                    tar.add(path, arcname=f"{key}/{path.name}")
            final = cloner_path(res.run_dir / "checkpoints", res.spec.mkd_config().epochs)
            if final.is_file() and final.stat().st_size <= budget:
                tar.add(final, arcname=f"{key}/checkpoints/{final.name}")
                budget -= final.stat().st_size
            elif final.is_file():
                left_out.append(key)
    os.replace(partial, archive)  # a half-written archive never has the final name
    return left_out


def use_locations(data_root: str | None, weights: str | None) -> None:
    """Point $MKDLIB_DATA and $MKDLIB_VGG16_WEIGHTS (inherited by the notebooks' kernels) at these, so that
    the runs' specs keep data_root None and weights "imagenet": the same keys on every machine."""
    for value, env, kind, exists in ((data_root, DATA_ENV, "folder", Path.is_dir),
                                     (weights, WEIGHTS_ENV, "file", Path.is_file)):
        if value is None:
            continue
        path = Path(value).expanduser().resolve()
        if not exists(path):
            raise ValueError(f"{path} is not a {kind}: pass an existing {kind} as "
                             f"--{'data-root' if env == DATA_ENV else 'weights'}")
        os.environ[env] = str(path)


def _train_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The -p parameters --train-only uses (the run options); others are refused by name."""
    unused = sorted(set(parameters) - set(SPEC_OPTIONS))
    if unused:
        raise ValueError(f"parameters {unused} are not used by --train-only; it takes {list(SPEC_OPTIONS)} "
                         "(and --device, --runs-dir)")
    return dict(parameters)


def _train_main(args: argparse.Namespace, names: Sequence[str], runs_dir: Path) -> int:
    results = train_only(names, profile=args.profile, runs_dir=runs_dir, device=args.device or "cpu",
                         options=_train_parameters(dict(args.parameter)), log=args.log,
                         progress=args.log_output)
    failed = [r for r in _unique(results) if not r.ok and not _no_data(r)]
    if args.archive:
        left_out = pack_records(results, args.archive)
        print(f"mkd regenerate --train-only: records of {sum(r.ok for r in _unique(results))} runs in "
              f"{args.archive}" + (f"; final cloners of {len(left_out)} runs left out (over "
                                   f"{FINAL_CLONERS_BUDGET >> 20} MiB)" if left_out else ""))
    for res in failed:
        print(f"  FAILED {res.spec.label()} ({res.spec.key()}): {res.error_type}: {res.error}", file=sys.stderr)
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mkd regenerate", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=list(PROFILES), default="paper",
                   help="paper: the full protocol; smoke: tiny subsets and 2 epochs (a pipeline check)")
    p.add_argument("--only", nargs="+", metavar="ITEM",
                   help=f"items (table3, figure6, ...) or notebooks: {', '.join(NOTEBOOKS)}")
    p.add_argument("--results", help=f"results folder (default: {RESULTS_DIR} for the paper profile, "
                                     f"{RESULTS_DIR}/<profile> for the others)")
    p.add_argument("--notebooks", default=str(NOTEBOOK_DIR), help="notebook folder (default: %(default)s)")
    p.add_argument("-p", "--parameter", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help='a notebook parameter, e.g. -p device=cuda -p executor=processes -p workers=4 '
                        '-p \'data_roots={"mvtec": "/data/mvtec"}\' (repeatable)')
    p.add_argument("--force", action="store_true",
                   help="overwrite tables and the index even where another profile wrote them")
    p.add_argument("--strict", action="store_true",
                   help="fail a notebook with an item that ran no run (all not run or failed), as CI should")
    p.add_argument("--kernel", help="Jupyter kernel name (default: one running this Python)")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    p.add_argument("--list", action="store_true", help="list the notebooks and what they write, then exit")
    p.add_argument("--device", help="where runs train: cpu, cuda, cuda:1 (default: cpu; for notebooks, as -p device)")
    p.add_argument("--data-root", help="the datasets' folder, as $MKDLIB_DATA (keeps the run keys portable)")
    p.add_argument("--weights", help="the VGG-16 source weights file, as $MKDLIB_VGG16_WEIGHTS")
    p.add_argument("--runs-dir", help="the run cache (default: <results>/runs; for notebooks, as -p runs_dir)")
    g = p.add_argument_group("--train-only: the notebooks' runs without papermill or tables (a GPU machine)")
    g.add_argument("--train-only", action="store_true",
                   help="train and evaluate the runs the selected notebooks would, one log line per item")
    g.add_argument("--log", help="also append the per-item lines to this file")
    g.add_argument("--archive", help="then pack the finished runs' records (no checkpoints but the final "
                                     "cloners) into this .tar.gz")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        for name, keys in NOTEBOOKS.items():
            print(f"{name}: {', '.join(keys)}")
        return 0
    try:
        names = select(args.only)
    except KeyError as err:
        print(f"mkd regenerate: {err.args[0]}", file=sys.stderr)
        return 2
    results = default_results(args.profile) if args.results is None else Path(args.results).resolve()
    runs = Path(args.runs_dir).resolve() if args.runs_dir else None
    parameters = {**dict(args.parameter), **{k: str(v) for k, v in (("device", args.device), ("runs_dir", runs))
                                             if v is not None}}
    try:
        use_locations(args.data_root, args.weights)
        if args.train_only:
            return _train_main(args, names, runs or results / "runs")
        status = execute(names, profile=args.profile, results_dir=results, notebook_dir=args.notebooks,
                         parameters=parameters, kernel=args.kernel, log_output=args.log_output,
                         force=args.force, strict=args.strict)
    except (FileExistsError, ValueError) as err:
        print(f"mkd regenerate: {err}", file=sys.stderr)
        return 2
    failed = {k: v for k, v in status.items() if v is not None}
    print(f"mkd regenerate: {len(status) - len(failed)} of {len(status)} notebooks ok; executed copies in "
          f"{results / 'executed'}")
    for name, error in failed.items():
        print(f"  FAILED {name}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
