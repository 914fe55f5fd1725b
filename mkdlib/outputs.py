"""Output folders mkdlib writes whole (`mkd predict --out`, `mkd evaluate --figures --out`).

Each such folder holds a marker file, and an existing folder is replaced only when it holds that marker
(or is empty): a file, a user's folder, the input images, a run or a results folder is refused, naming
it, before any work is done. The new folder is written beside the old one and swapped in at the end,
so a failure leaves the old one as it was; temporary folders of killed processes are removed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mkdlib.io_utils import atomic_write_text

MARKER = ".mkdlib-output"  # written into every folder this module creates
RUN_FILES = ("spec.json", "metrics.json")  # a folder holding one of these is a run (runs/store.py)


class OutputError(ValueError):
    """An output path that would replace something mkdlib did not write; the message names it."""


def _is_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in RUN_FILES)


def _holds_runs(folder: Path) -> bool:
    """A results folder: it has runs/, or run folders directly inside."""
    if (folder / "runs").is_dir():
        return True
    try:
        return any(child.is_dir() and _is_run(child) for child in folder.iterdir())
    except OSError:
        return False


def check_output(out: str | Path, *, protect: Iterable[str | Path] = (), ours: bool = False) -> Path:
    """`out` if mkdlib may (re)place a folder there, else OutputError naming why: a file; a folder that is or
    holds one of `protect` (the input images, the run); a run or a results folder; a non-empty folder without
    the marker (unless `ours`: a location only mkdlib writes, such as a run's figures/)."""
    out = Path(out).expanduser()
    here = out.resolve()
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file: give a folder (mkdlib creates it, or replaces one it wrote)")
    if out.is_dir() and (_is_run(out) or _holds_runs(out)):
        kind = "a run directory" if _is_run(out) else "a results folder holding runs"
        raise OutputError(f"--out {out} is {kind}: choose a new folder for the output")
    for path in protect:
        theirs = Path(path).expanduser().resolve()
        if here == theirs or here in theirs.parents:
            raise OutputError(f"--out {out} would replace {path}, which mkdlib reads here: choose a folder "
                              "of its own (e.g. a new one)")
    if not out.is_dir() or (out / MARKER).is_file() or ours:
        return out
    entries = sorted(e.name for e in out.iterdir() if not _stale(e, out.name))
    if entries:
        raise OutputError(f"--out {out} holds files mkdlib did not write (e.g. {entries[0]}): choose a new or "
                          f"empty folder, or move them away first (mkdlib replaces only folders marked {MARKER})")
    return out


def _stale(entry: Path, name: str) -> bool:
    """A temporary sibling of `name` left by a process that no longer runs (.<name>.tmp-<pid>-*)."""
    prefix = f".{name}.tmp-"
    pid = entry.name[len(prefix):].split("-")[0]
    if not entry.name.startswith(prefix) or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        pass
    return False


@contextmanager
def output_folder(out: str | Path, *, writer: str, protect: Iterable[str | Path] = (),
                  ours: bool = False) -> Iterator[Path]:
    """A temporary marked folder beside `out` that replaces it whole when the block succeeds (checked by
    check_output first; an older output is never mixed with a new one, nor lost when this one fails)."""
    protect = list(protect)
    out = check_output(out, protect=protect, ours=ours)
    out.parent.mkdir(parents=True, exist_ok=True)
    for entry in out.parent.glob(f".{out.name}.tmp-*"):  # left by killed processes
        if _stale(entry, out.name):
            shutil.rmtree(entry, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    try:
        atomic_write_text(tmp / MARKER, f"written by {writer}; replaced whole by the next {writer}\n")
        yield tmp
        check_output(out, protect=protect, ours=ours)  # nothing else appeared there meanwhile
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o755)
    old = out.parent / f".{out.name}.tmp-{os.getpid()}-old"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
