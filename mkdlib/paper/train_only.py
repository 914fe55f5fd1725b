"""`mkd regenerate --train-only`: the runs the selected notebooks would execute (`notebook_specs`), trained
and evaluated without papermill, Jupyter or any table (a GPU machine); one log line per item, and the
finished records packed into an archive to render the tables elsewhere (the notebooks then find them by key).
"""

from __future__ import annotations

import argparse
import os
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from mkdlib.datasets.archive import safe_extract
from mkdlib.paper.items import ITEMS
from mkdlib.paper.notebook import SPEC_OPTIONS, notebooks_for, notebook_options, notebook_paths, notebook_specs
from mkdlib.paper.tabulation import add_maps, failure_note
from mkdlib.runs.executors import run_many
from mkdlib.runs.loading import check_device
from mkdlib.runs.spec import RunResult
from mkdlib.runs.store import CLONER, HISTORY, LOCK

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
    out: list[RunResult] = []
    with open(log, "a") if log else nullcontext() as sink:
        def say(line: str) -> None:
            print(f"mkd regenerate --train-only: {line}", flush=True)
            if sink:
                sink.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")
                sink.flush()

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
    return out


def pack_records(results: Sequence[RunResult], archive: str | Path) -> list[str]:
    """Write the records of the finished runs among `results` into a tar.gz of `<key>/...`: every file but
    checkpoints/ and the lock, their final cloner (cloner.pt) included while they total at most
    FINAL_CLONERS_BUDGET bytes (Figures 1 and 6 and predict use it; nothing else needs a checkpoint once
    metrics.json exists). Returns the keys whose final cloner was left out."""
    left_out, budget = [], FINAL_CLONERS_BUDGET
    partial = Path(f"{archive}.partial")
    with tarfile.open(partial, "w:gz") as tar:
        for res in (r for r in _unique(results) if r.ok):
            key = res.run_dir.name
            for path in sorted(res.run_dir.iterdir()):
                if path.name in ("checkpoints", LOCK):
                    continue
                if path.name == CLONER:
                    if path.stat().st_size > budget:
                        left_out.append(key)
                        continue
                    budget -= path.stat().st_size
                tar.add(path, arcname=f"{key}/{path.name}")
    os.replace(partial, archive)  # a half-written archive never has the final name
    return left_out


def unpack_records(archive: str | Path, runs_dir: str | Path) -> dict[str, list[str]]:
    """Add the run records of an archive (pack_records) to a run cache, never overwriting a file there: a
    run absent here is moved in; for one present, the archive's files it lacks are added (e.g. its final
    cloner) and identical ones skipped, but where the archive's copy differs from a file here (a finished
    record: another training of the same key), the archive's run is kept whole beside the cache in
    `<runs_dir>/.unpacked-<archive>-<time>/<key>`, for the user to compare. Members are checked as for a
    dataset archive (no absolute paths, '..', links out or special files).
    Returns {"added": keys, "completed": keys, "same": keys, "aside": folders}."""
    import filecmp

    archive, runs_dir = Path(archive), Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[str]] = {"added": [], "completed": [], "same": [], "aside": []}
    with tempfile.TemporaryDirectory(prefix=".unpack-", dir=runs_dir) as tmp:
        aside = runs_dir / f".unpacked-{archive.name.split('.')[0]}-{time.strftime('%Y%m%dT%H%M%S')}"
        for entry in safe_extract(archive, Path(tmp)):
            target = runs_dir / entry.name
            if not target.exists():
                os.replace(entry, target)
                out["added"].append(entry.name)
                continue
            files = [f for f in sorted(entry.rglob("*")) if f.is_file()]
            theirs = {f: target / f.relative_to(entry) for f in files}
            if any(t.exists() and not filecmp.cmp(f, t, shallow=False) for f, t in theirs.items()):
                aside.mkdir(exist_ok=True)
                os.replace(entry, aside / entry.name)
                out["aside"].append(str(aside / entry.name))
                continue
            new = [(f, t) for f, t in theirs.items() if not t.exists()]
            for f, t in new:
                t.parent.mkdir(parents=True, exist_ok=True)
                os.replace(f, t)
            out["completed" if new else "same"].append(entry.name)
    return out


def main(args: argparse.Namespace, names: Sequence[str], runs_dir: Path) -> int:
    """`mkd regenerate --train-only`: train the notebooks' runs, pack their records, report failures. Of the
    -p parameters it takes the run options only; others are refused by name."""
    options = dict(args.parameter)
    unused = sorted(set(options) - set(SPEC_OPTIONS))
    if unused:
        raise ValueError(f"parameters {unused} are not used by --train-only; it takes {list(SPEC_OPTIONS)} "
                         "(and --device, --runs-dir)")
    results = train_only(names, profile=args.profile, runs_dir=runs_dir, device=args.device or "cpu",
                         options=options, log=args.log, progress=args.log_output)
    failed = [r for r in _unique(results) if not r.ok and not _no_data(r)]
    if args.archive:
        left_out = pack_records(results, args.archive)
        print(f"mkd regenerate --train-only: records of {sum(r.ok for r in _unique(results))} runs in "
              f"{args.archive}" + (f"; final cloners of {len(left_out)} runs left out (over "
                                   f"{FINAL_CLONERS_BUDGET >> 20} MiB)" if left_out else ""))
    for res in failed:
        print(f"  FAILED {res.spec.label()} ({res.spec.key()}): {res.error_type}: {res.error}", file=sys.stderr)
    return 1 if failed else 0
