"""Where a notebook's runs execute: its `executor` parameter turned into `run_many`'s keywords.

In this process, a local process pool, or a Dask cluster (`distributed.Client.get_executor()`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def executor(kind: str = "auto", workers: int | None = None, device: str = "cpu") -> Iterator[dict[str, Any]]:
    """run_many's keywords for a notebook's `executor` parameter: "sequential" (in this process),
    "processes" (a local pool of `workers`, default one per core), a Dask scheduler address, or "auto":
    on a CPU with several cores, "processes" of one thread each (two one-thread runs side by side train
    1.04-1.14x the images of one two-thread run: README, "Speed"); on a GPU, "sequential"."""
    if kind == "auto":
        kind = "processes" if str(device).startswith("cpu") and (workers or os.cpu_count() or 1) > 1 else "sequential"
    if kind == "sequential":
        yield {}
    elif kind == "processes":
        yield {"workers": workers or os.cpu_count() or 1}
    elif ":" not in kind:
        raise ValueError(f"executor must be 'auto', 'sequential', 'processes' or a Dask scheduler address, "
                         f"got {kind!r}")
    else:
        from distributed import Client  # optional dependency: pip install mkdlib[dask]
        with Client(kind) as client:
            yield {"executor": client.get_executor()}
