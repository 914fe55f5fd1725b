"""`mkd regenerate` / `python -m mkdlib.paper.regenerate`: execute the paper notebooks with papermill.

Each notebook of `notebook.NOTEBOOKS` runs with the chosen profile and writes its tables and figures into
the results folder; the executed copy goes to `<results>/executed/`. Each profile has its own folder
(results/ for the paper's, results/<profile>/ for the others), and tables or an index that another profile
wrote are not overwritten without --force. A failing notebook is reported and the others still run; the
exit code is 1 if any failed (with --strict, also a notebook with an item asked for that ran nothing).

The notebooks call `notebook_paths` and `notebook_options` on their parameters, so that they write the
same place from any working directory and take dicts given as JSON strings (papermill's `-p`), and
`notebook_specs` for their runs. --train-only runs those same specs without papermill (a GPU machine without
Jupyter): the records it leaves are then found, by key, when the notebooks render the tables elsewhere.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from mkdlib.cli_parser import key_value
from mkdlib.io_utils import atomic_write_text
from mkdlib.config import PROFILES
from mkdlib.paper import train_only
from mkdlib.paper.items import FIGURES, ITEMS
from mkdlib.paper.notebook import (NOTEBOOKS, NOTEBOOKS_ENV, default_results, notebooks_folder, outputs,
                                   refuse_overwrites, select, use_locations)
from mkdlib.runs.store import check_folder

OWN_KERNEL = "mkdlib"  # installed into this interpreter's prefix when "python3" is another Python's


def kernel_name() -> str:
    """A Jupyter kernel that runs this interpreter: "python3" when its argv[0] is `python` (jupyter_client
    then starts sys.executable) or sys.executable itself; else a kernelspec for sys.executable installed
    into sys.prefix (a virtual environment's own share/jupyter/kernels)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    for name in ("python3", OWN_KERNEL):
        try:
            argv0 = manager.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        if argv0 in ("python", "python3") or Path(argv0).resolve() == Path(sys.executable).resolve():
            return name
    from ipykernel.kernelspec import install

    install(kernel_name=OWN_KERNEL, display_name=f"Python ({sys.prefix})", prefix=sys.prefix)
    return OWN_KERNEL


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
    return [key for key in NOTEBOOKS[name] if key in FIGURES
            and not any(p.stat().st_mtime >= since for p in (results_dir / "figures").glob(f"{key}_*.png"))]


def judged(name: str, only: Sequence[str] | None) -> set[str]:
    """The keys of notebook `name` that --strict judges: those `only` asks for (every key where it names
    the notebook, or asks for nothing), with the tables a figure asked for draws and the item whose summary
    a table asked for is (Table 1: Table 11). A notebook writes all its items; those not asked for (CIFAR-10
    for --only table2_mnist) may run nothing on a machine without their data."""
    keys = NOTEBOOKS[name]
    if not only or name in only:
        return set(keys)
    asked = {k for k in keys if k in only}
    return asked | {item for k in asked if k in FIGURES for item in FIGURES[k][1]} | \
        {item for item in keys if item in ITEMS and ITEMS[item].summary in asked}


# Parameters `execute` passes to every notebook (the ones a notebook does not declare are left out, rather
# than injected with papermill's "unknown parameter" warning), and those holding a folder.
AUTOMATIC = ("profile", "results_dir", "force", "runs_dir", "device", "train")
PATH_PARAMETERS = ("results_dir", "runs_dir")


def _declared(notebook: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` without the automatic ones `notebook` does not declare (the quickstart has no runs_dir)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    return {k: v for k, v in params.items() if k in declared or k not in AUTOMATIC}


def _portable(folder: Any, notebook_dir: Path) -> Any:
    """A folder inside the checkout as a path relative to the notebooks (as the notebooks resolve it), so
    that executed copies, which keep their parameters, carry no machine path; any other as it is."""
    path = Path(str(folder)).resolve()
    root = notebook_dir.resolve().parent
    return os.path.relpath(path, notebook_dir.resolve()) if path.is_relative_to(root) else str(folder)


def _portable_copy(executed: Path, notebook_dir: Path) -> None:
    """The executed copy's papermill record (input and output paths, parameters) with the folders inside the
    checkout written relative to the notebooks, as the injected parameters are: no machine path in it."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    record = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if key in record:
            record[key] = _portable(record[key], notebook_dir)
    # execute() passed the folders already relative to the notebooks: only an absolute one is left to convert
    # (a relative one resolved here would be read against the current folder, not the notebooks').
    record["parameters"] = {k: _portable(v, notebook_dir) if k in PATH_PARAMETERS and Path(str(v)).is_absolute()
                            else v for k, v in record.get("parameters", {}).items()}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _MD_LINK.sub(lambda m: f"]({_moved(m[1], notebook_dir, executed.parent)})", cell.source)
    atomic_write_text(executed, nbformat.writes(nb) + "\n")


_MD_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _moved(link: str, notebook_dir: Path, executed_dir: Path) -> str:
    """A relative link of a notebook in `notebook_dir` (e.g. ../docs/fidelity.md#headct) as the executed copy
    in `executed_dir` must write it to reach the same file; anchors, URLs and absolute paths unchanged."""
    from mkdlib.paper.site import local_link

    if (local := local_link(link)) is None:
        return link
    return Path(os.path.relpath((notebook_dir / local[0]).resolve(), executed_dir.resolve())).as_posix() + local[1]


def execute(names: Sequence[str], *, profile: str = "paper", results_dir: str | Path | None = None,
            notebook_dir: str | Path | None = None, parameters: Mapping[str, Any] | None = None,
            kernel: str | None = None, log_output: bool = False, force: bool = False,
            strict: bool = False, only: Sequence[str] | None = None,
            executed_dir: str | Path | None = None) -> dict[str, str | None]:
    """Execute each notebook into `<results_dir>/executed/<name>.ipynb`; name -> None or its error.

    notebook_dir: the suite's notebooks (default: notebook.notebooks_folder()); results_dir:
    default_results(profile) when None. Files of another profile are not overwritten unless
    `force` (FileExistsError before anything runs). strict: a notebook with an item that ran nothing fails,
    among the items `only` (--only) asks for (`judged`; all without it).
    """
    import papermill as pm

    fixed = sorted({"profile", "results_dir", "force"} & set(parameters or {}))
    if fixed:
        raise ValueError(f"parameters {fixed} are set by --profile, --results and --force; drop them from -p")
    notebook_dir = notebooks_folder(notebook_dir)  # also the kernels' working folder, where reproduce() finds it
    results_dir = default_results(profile, notebook_dir) if results_dir is None else Path(results_dir).resolve()
    if not force:  # every notebook checked before the first runs (each checks itself again: reproduce)
        refuse_overwrites(results_dir, names, profile)
    executed = results_dir / "executed" if executed_dir is None else Path(executed_dir).resolve()
    executed.mkdir(parents=True, exist_ok=True)
    kernel = kernel or kernel_name()
    params = {"profile": profile, "results_dir": str(results_dir), "force": force, **(parameters or {})}
    params = {k: _portable(v, notebook_dir) if k in PATH_PARAMETERS else v for k, v in params.items()}
    status: dict[str, str | None] = {}
    for name in names:
        start, since = time.perf_counter(), time.time()
        print(f"mkd regenerate: {name} (profile {profile}) ...", flush=True)
        try:
            pm.execute_notebook(notebook_dir / f"{name}.ipynb", executed / f"{name}.ipynb",
                                parameters=_declared(notebook_dir / f"{name}.ipynb", params),
                                kernel_name=kernel, cwd=str(notebook_dir), progress_bar=False,
                                log_output=log_output)
            _portable_copy(executed / f"{name}.ipynb", notebook_dir)
            empty = [k for k in ran_nothing(results_dir, name, since) if k in judged(name, only)] if strict else []
            status[name] = f"ran no runs for {', '.join(empty)} (--strict; see {results_dir})" if empty else None
        except Exception as err:  # a failing notebook is reported; the others still run
            if hasattr(err, "ename"):  # papermill's PapermillExecutionError: the cell's exception
                status[name] = f"{err.ename}: {err.evalue} (cell {err.exec_count}; see {executed / name}.ipynb)"
            else:
                status[name] = f"{type(err).__name__}: {err}"
        took = time.perf_counter() - start
        print(f"mkd regenerate: {name} {'ok' if status[name] is None else 'FAILED'} in {took:.0f} s", flush=True)
    return status


def _check_writable(folder: Path, what: str, option: str, *, exists_only: bool = False) -> None:
    """ValueError naming `folder` when it, or a folder above it, is a file, or (unless exists_only) when the
    nearest existing one is not writable here (read-only): before any notebook runs."""
    check_folder(folder, what, option)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not exists_only and not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {folder}: {existing} is not writable here (read-only); make it writable, or pass "
                         f"{option} DIR (a writable folder)")


def _unpack(archive: str, runs: Path) -> None:
    if not Path(archive).is_file():
        raise ValueError(f"--unpack {archive}: no such file; pass the runs.tar.gz a --train-only run wrote")
    done = train_only.unpack_records(archive, runs)
    print(f"mkd regenerate: {archive} into {runs}: {len(done['added'])} runs added, {len(done['completed'])} "
          f"completed with files they lacked, {len(done['same'])} already here")
    for folder in done["aside"]:
        print(f"mkd regenerate: {Path(folder).name} differs from the finished record here, which is kept; the "
              f"archive's copy is in {folder}", file=sys.stderr)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mkd regenerate", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=list(PROFILES), default="paper",
                   help="paper: the full protocol; smoke: tiny subsets and 2 epochs (a pipeline check)")
    p.add_argument("--only", nargs="+", metavar="ITEM",
                   help=f"items (table3, figure6, ...) or notebooks: {', '.join(NOTEBOOKS)}")
    p.add_argument("--results", help="results folder (default: the checkout's results/ for the paper profile, "
                                     "results/<profile> for the others)")
    p.add_argument("--notebooks", help="notebook folder (default: the working tree's notebooks/, or "
                                       f"${NOTEBOOKS_ENV})")
    p.add_argument("-p", "--parameter", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                   help='a notebook parameter, e.g. -p device=cuda -p executor=processes -p workers=4 '
                        '-p \'data_roots={"mvtec": "/data/mvtec"}\' (repeatable)')
    p.add_argument("--force", action="store_true",
                   help="overwrite tables and the index even where another profile wrote them")
    p.add_argument("--strict", action="store_true",
                   help="fail a notebook with an item that ran no run (all not run or failed), as CI should; "
                        "with --only, only the items asked for are judged")
    p.add_argument("--records-only", action="store_true",
                   help="read the run records only, train nothing (the notebooks' train=False): `make notebooks`")
    p.add_argument("--executed", metavar="DIR", help="where the executed copies go (default: <results>/executed)")
    p.add_argument("--kernel", help="Jupyter kernel name (default: one running this Python)")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    p.add_argument("--list", action="store_true", help="list the notebooks and what they write, then exit")
    p.add_argument("--device", help="where runs train: cpu, cuda, cuda:1 (default: cpu; for notebooks, as -p device)")
    p.add_argument("--data-root", help="the datasets' folder, as $MKDLIB_DATA (keeps the run keys portable)")
    p.add_argument("--weights", help="the VGG-16 source weights file, as $MKDLIB_VGG16_WEIGHTS; none: a random "
                                     "source for every run, as `mkd train --weights none` (-p weights=null)")
    p.add_argument("--runs-dir", help="the run cache (default: <results>/runs; for notebooks, as -p runs_dir)")
    g = p.add_argument_group("--train-only: the notebooks' runs without papermill or tables (a GPU machine)")
    g.add_argument("--train-only", action="store_true",
                   help="train and evaluate the runs the selected notebooks would, one log line per item")
    g.add_argument("--log", help="also append the per-item lines to this file")
    g.add_argument("--archive", help="then pack the finished runs' records (no checkpoints but the final "
                                     "cloners) into this .tar.gz")
    p.add_argument("--unpack", metavar="ARCHIVE",
                   help="first add the run records of an archive --train-only --archive wrote to the run cache "
                        "(never overwriting a record there: a differing one is kept aside, and said)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.list:
        for name, keys in NOTEBOOKS.items():
            print(f"{name}: {', '.join(keys)}")
        return 0
    try:
        names, notebooks = select(args.only), notebooks_folder(args.notebooks)
    except (KeyError, ValueError) as err:
        print(f"mkd regenerate: {err.args[0]}", file=sys.stderr)
        return 2
    if args.weights is not None and args.weights.lower() == "none":  # a random source, as `mkd train --weights none`
        args.weights, args.parameter = None, [*args.parameter, ("weights", None)]
    results = default_results(args.profile, notebooks) if args.results is None else Path(args.results).resolve()
    runs = Path(args.runs_dir).resolve() if args.runs_dir else None
    parameters = {**dict(args.parameter), **{k: str(v) for k, v in (("device", args.device), ("runs_dir", runs))
                                             if v is not None}, **({"train": False} if args.records_only else {})}
    try:
        _check_writable(results, "results folder", "--results", exists_only=args.train_only)
        _check_writable(runs or results / "runs", "run cache", "--runs-dir" if runs else "--results")
        use_locations(args.data_root, args.weights)
        if args.unpack:
            _unpack(args.unpack, runs or results / "runs")
        if args.train_only:
            return train_only.main(args, names, runs or results / "runs")
        status = execute(names, profile=args.profile, results_dir=results, notebook_dir=notebooks,
                         parameters=parameters, kernel=args.kernel, log_output=args.log_output,
                         force=args.force, strict=args.strict, only=args.only, executed_dir=args.executed)
    except (FileExistsError, ValueError) as err:
        print(f"mkd regenerate: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a read-only file system: its error names a file, without what to do
        print(f"mkd regenerate: cannot write {err.filename or ''} ({err.strerror or err}): make that folder writable, "
              "or pass --results DIR (a writable folder)", file=sys.stderr)
        return 2
    failed = {k: v for k, v in status.items() if v is not None}
    print(f"mkd regenerate: {len(status) - len(failed)} of {len(status)} notebooks ok; executed copies in "
          f"{Path(args.executed).resolve() if args.executed else results / 'executed'}")
    for name, error in failed.items():
        print(f"  FAILED {name}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
