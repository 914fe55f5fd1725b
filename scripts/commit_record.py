"""Copy a finished run's record from a run cache into the committed one (results/runs/), as the repository
keeps them: every file but checkpoints/ and the lock, the final cloner as cloner.pt with its SHA-256 in
metrics.json (runs made before records kept it get it from their checkpoints), and scores.csv's paths
relative to the data root. A record already there is replaced only with --replace (a retrain of the same
key: the tables it feeds must then be regenerated, and their notes say so).

    python scripts/commit_record.py ~/mkd-runs/<key> [--to results/runs] [--replace] [--no-cloner]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

import pandas as pd

from mkdlib.io_utils import atomic_write_text
from mkdlib.runs.evaluation import portable_path
from mkdlib.runs.loading import keep_final_cloner
from mkdlib.runs.store import CLONER, LOCK, METRICS, SCORES, load_run, write_json

KEEP_OUT = {"checkpoints", LOCK, "figures", "export"}  # caches and outputs, not the record


def portable_scores(path: Path, dataset: str, data_root: str | None, machine_root: str | None) -> None:
    """scores.csv with a dataset column and paths relative to the data root (the scores' text unchanged)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "dataset" not in table.columns:
        table.insert(1, "dataset", dataset)
    table["path"] = [portable_path(p, data_root or machine_root) for p in table["path"]]
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--to", type=Path, default=Path("results/runs"))
    p.add_argument("--replace", action="store_true", help="replace a record of the same key (a retrain)")
    p.add_argument("--no-cloner", action="store_true", help="keep the record without its final cloner")
    p.add_argument("--data-root", help="the data root the run read ($MKDLIB_DATA where it ran)")
    a = p.parse_args(argv)
    result = load_run(a.run)
    if result.metrics is None:
        raise SystemExit(f"{a.run}: {result.error}")
    target = a.to / a.run.name
    if target.exists() and not a.replace:
        raise SystemExit(f"{target} exists: pass --replace to put this training of the same key in its place")
    cfg = result.spec.mkd_config()
    if not a.no_cloner and CLONER not in {f.name for f in a.run.iterdir()}:
        write_json(a.run / METRICS, keep_final_cloner(a.run, cfg, result.metrics))
    staging = a.to / f".{a.run.name}.commit"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(a.run, staging, ignore=lambda d, names: [n for n in names if n in KEEP_OUT or
                                                             (a.no_cloner and n == CLONER)])
    portable_scores(staging / SCORES, result.spec.dataset, result.spec.data_root, a.data_root)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    print(f"{target}: {result.spec.label()}, image AUROC {100 * result.metrics['image_auroc']['final']:.2f}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
