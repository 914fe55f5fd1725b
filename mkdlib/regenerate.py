"""`mkd regenerate` / `python -m mkdlib.regenerate`: execute the paper notebooks with papermill.

Each notebook of `items.NOTEBOOKS` runs with the chosen profile and writes its tables and figures into
the results folder; the executed copy goes to `<results>/executed/`. A failing notebook is reported and
the others still run; the exit code is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mkdlib.items import NOTEBOOKS, PROFILES, notebooks_for

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


def execute(names: Sequence[str], *, profile: str = "paper", results_dir: str | Path = RESULTS_DIR,
            notebook_dir: str | Path = NOTEBOOK_DIR, parameters: Mapping[str, Any] | None = None,
            kernel: str | None = None, log_output: bool = False) -> dict[str, str | None]:
    """Execute each notebook into `<results_dir>/executed/<name>.ipynb`; name -> None or its error."""
    import papermill as pm

    results_dir, notebook_dir = Path(results_dir).resolve(), Path(notebook_dir).resolve()
    executed = results_dir / "executed"
    executed.mkdir(parents=True, exist_ok=True)
    kernel = kernel or kernel_name()
    params = {"profile": profile, "results_dir": str(results_dir), **(parameters or {})}
    status: dict[str, str | None] = {}
    for name in names:
        start = time.perf_counter()
        print(f"mkd regenerate: {name} (profile {profile}) ...", flush=True)
        try:
            pm.execute_notebook(notebook_dir / f"{name}.ipynb", executed / f"{name}.ipynb", parameters=params,
                                kernel_name=kernel, cwd=str(notebook_dir), progress_bar=False,
                                log_output=log_output)
            status[name] = None
        except Exception as err:  # a failing notebook is reported; the others still run
            if hasattr(err, "ename"):  # papermill's PapermillExecutionError: the cell's exception
                status[name] = f"{err.ename}: {err.evalue} (cell {err.exec_count}; see {executed / name}.ipynb)"
            else:
                status[name] = f"{type(err).__name__}: {err}"
        took = time.perf_counter() - start
        print(f"mkd regenerate: {name} {'ok' if status[name] is None else 'FAILED'} in {took:.0f} s", flush=True)
    return status


def _parameter(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE as JSON when it parses (numbers, lists, dicts, null), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mkd regenerate", description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", choices=list(PROFILES), default="paper",
                   help="paper: the full protocol; smoke: tiny subsets and 2 epochs (a pipeline check)")
    p.add_argument("--only", nargs="+", metavar="ITEM",
                   help=f"items (table3, figure6, ...) or notebooks: {', '.join(NOTEBOOKS)}")
    p.add_argument("--results", default=str(RESULTS_DIR), help="results folder (default: %(default)s)")
    p.add_argument("--notebooks", default=str(NOTEBOOK_DIR), help="notebook folder (default: %(default)s)")
    p.add_argument("-p", "--parameter", action="append", type=_parameter, default=[], metavar="KEY=VALUE",
                   help='a notebook parameter, e.g. -p device=cuda -p executor=processes -p workers=4 '
                        '-p \'data_roots={"mvtec": "/data/mvtec"}\' (repeatable)')
    p.add_argument("--kernel", help="Jupyter kernel name (default: one running this Python)")
    p.add_argument("--log-output", action="store_true", help="stream the notebooks' output")
    p.add_argument("--list", action="store_true", help="list the notebooks and what they write, then exit")
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
    status = execute(names, profile=args.profile, results_dir=args.results, notebook_dir=args.notebooks,
                     parameters=dict(args.parameter), kernel=args.kernel, log_output=args.log_output)
    failed = {k: v for k, v in status.items() if v is not None}
    print(f"mkd regenerate: {len(status) - len(failed)} of {len(status)} notebooks ok; executed copies in "
          f"{Path(args.results) / 'executed'}")
    for name, error in failed.items():
        print(f"  FAILED {name}: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
