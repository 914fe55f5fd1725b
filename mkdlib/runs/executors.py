"""Where runs execute: `run_many` runs independent specs in this process, in a local pool of processes
(one thread each, only for the runs left to train) or on any concurrent.futures Executor (a Dask cluster
through `distributed.Client.get_executor()`); `executor` turns a notebook's `executor` parameter into
`run_many`'s keywords.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mkdlib.runs.runner import run
from mkdlib.runs.spec import RunResult, RunSpec
from mkdlib.runs.store import is_finished


def check_executor(kind: Any) -> str:
    """`kind` if it names an executor (see `executor`), else a ValueError saying what it must be."""
    if not isinstance(kind, str) or (kind not in ("auto", "sequential", "processes") and ":" not in kind):
        raise ValueError(f"executor must be 'auto', 'sequential', 'processes' or a Dask scheduler address "
                         f"(tcp://host:8786), got {kind!r}")
    return kind


@contextmanager
def executor(kind: str = "auto", workers: int | None = None, device: str = "cpu") -> Iterator[dict[str, Any]]:
    """run_many's keywords for a notebook's `executor` parameter: "sequential" (in this process),
    "processes" (a local pool of `workers`, default one per core), a Dask scheduler address, or "auto":
    on a CPU with several cores, "processes" of one thread each (two one-thread runs side by side train
    1.04-1.14x the images of one two-thread run: docs/speed.md); on a GPU, "sequential"."""
    if check_executor(kind) == "auto":
        kind = "processes" if str(device).startswith("cpu") and (workers or os.cpu_count() or 1) > 1 else "sequential"
    if kind == "sequential":
        yield {}
    elif kind == "processes":
        yield {"workers": workers or os.cpu_count() or 1}
    else:
        from distributed import Client  # optional dependency: pip install mkdlib[dask]
        with Client(kind) as client:
            yield {"executor": client.get_executor()}


def _run_one(spec: RunSpec, results_root: str, device: str, progress: bool) -> RunResult:
    """run() that never raises: the error becomes part of the result (run() leaves run_dir/error.txt)."""
    try:
        return run(spec, results_root, device=device, progress=progress)
    except Exception as err:  # one failing run must not stop the others
        run_dir = Path(results_root).expanduser() / spec.key()
        return RunResult(spec, run_dir if run_dir.is_dir() else None, None, str(err) or repr(err),
                         type(err).__name__)


def run_many(specs: Iterable[RunSpec], results_root: str | Path, *, executor: Executor | None = None,
             workers: int | None = None, device: str = "cpu", progress: bool = True) -> list[RunResult]:
    """Run independent specs; results in the order of `specs`, failures as RunResult(error=...).

    executor: any concurrent.futures.Executor, e.g. `distributed.Client(...).get_executor()` for a
    Dask cluster (results_root must then be on a file system every worker sees). Without one:
    in-process and sequential, or a local pool of `workers` processes. Identical specs run once.
    """
    specs = [RunSpec.from_dict(s) if isinstance(s, dict) else s for s in specs]
    if executor is not None and workers is not None:
        raise ValueError("pass either executor= or workers=, not both")
    root = str(Path(results_root).expanduser())
    unique = list({s.key(): s for s in specs}.values())
    done: dict[str, RunResult] = {}
    bar = tqdm(total=len(unique), desc="runs", unit="run", disable=not progress)

    def record(spec: RunSpec, result: RunResult) -> None:
        done[spec.key()] = result
        if not result.ok:
            tqdm.write(f"mkdlib: run {spec.key()} ({spec.label()}) failed: {result.error_type}: {result.error}",
                       file=sys.stderr)
        bar.update(1)
        bar.set_postfix(failed=sum(not r.ok for r in done.values()))

    own_pool, local, remote = None, unique, []  # runs in this process / on the executor
    if executor is not None:
        local, remote = [], unique
    elif (workers or 1) > 1:
        # A pool only for the runs left to train (finished ones are read here), no larger than their number:
        # one run left trains in this process on every thread (docs/speed.md: machine throughput).
        remote = [s for s in unique if not is_finished(s, root)]
        if len(remote) > 1:
            local = [s for s in unique if s not in remote]
            workers = min(workers, len(remote))
            threads = max(1, (os.cpu_count() or 1) // workers)
            executor = own_pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                                      initializer=torch.set_num_threads, initargs=(threads,))
        else:
            remote = []
    try:
        for spec in local:
            record(spec, _run_one(spec, root, device, progress))
        if remote:
            futures = {executor.submit(_run_one, spec, root, device, False): spec for spec in remote}
            for future in as_completed(futures):
                spec = futures[future]
                try:
                    result = future.result()
                except Exception as err:  # the worker itself died (BrokenProcessPool, KilledWorker, ...)
                    result = RunResult(spec, None, None, str(err) or repr(err), type(err).__name__)
                record(spec, result)
    finally:
        bar.close()
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
    return [done[s.key()] for s in specs]
