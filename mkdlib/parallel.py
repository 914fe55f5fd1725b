"""Where a notebook's runs execute: its `executor` parameter turned into `run_many`'s keywords.

In this process, a local process pool, or a Dask cluster (`distributed.Client.get_executor()`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def executor(kind: str = "sequential", workers: int | None = None) -> Iterator[dict[str, Any]]:
    """run_many's keywords for a notebook's `executor` parameter: "sequential" (in this process),
    "processes" (a local pool of `workers`, default one per core) or a Dask scheduler address."""
    if kind == "sequential":
        yield {}
    elif kind == "processes":
        yield {"workers": workers or os.cpu_count() or 1}
    elif ":" not in kind:
        raise ValueError(f"executor must be 'sequential', 'processes' or a Dask scheduler address, got {kind!r}")
    else:
        from distributed import Client  # optional dependency: pip install mkdlib[dask]
        with Client(kind) as client:
            yield {"executor": client.get_executor()}
