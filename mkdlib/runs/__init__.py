"""Runs: what defines a run (`spec`: `RunSpec`), its directory (`store`), training and evaluating it once and
reading it back (`runner`: `run`, `run_many`, `finished_runs`), where runs execute (`executors`), and the
runs of a folder as a table, with the plan of the runs still to train (`catalog`).

The method (mkdlib.train, scoring, localization) knows nothing of runs; the paper's tables (mkdlib.paper)
are read from them.
"""

import importlib

_FACE = {"RunError": "store", "RunResult": "spec", "RunSpec": "spec", "evaluate": "runner",
         "finished_runs": "store", "load_model": "loading", "run": "runner", "run_many": "executors"}
__all__ = sorted(_FACE)


def __getattr__(name: str):
    """`from mkdlib.runs import run, RunSpec`: imported on first use, so that a module the runner itself
    imports (e.g. calibration, which reads run files through `store`) can import `mkdlib.runs.store`."""
    if name in _FACE:
        return getattr(importlib.import_module(f"mkdlib.runs.{_FACE[name]}"), name)
    raise AttributeError(f"module 'mkdlib.runs' has no attribute {name!r}")
