"""Retrain one paper-profile Table 6 run in bf16 (`amp`) into a separate run cache and print its AUROC.

`amp` is not part of the run key, so the bf16 run must not share the main cache with the fp32 record it is
compared to: a cache holding that record would return it, and the script refuses to print it as bf16. Used
for the BrainMRI note in docs/fidelity.md (split 0: fp32 96.77 final, bf16 95.68).

    python scripts/precision_check.py [dataset] [seed] [--runs-dir DIR]   # brainmri 0 ~/mkd-runs-bf16check
"""
import argparse
from pathlib import Path

from mkdlib.paper import items
from mkdlib.paper.tabulation import precision_of
from mkdlib.runs.runner import run

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("dataset", nargs="?", default="brainmri", choices=["brainmri", "headct"])
parser.add_argument("seed", nargs="?", type=int, default=0)
parser.add_argument("--runs-dir", type=Path, default=Path.home() / "mkd-runs-bf16check")
args = parser.parse_args()

spec, = items.specs_for("table6", "paper", config={"amp": True}, classes={"table6": [args.dataset]},
                        seeds=[args.seed])
result = run(spec, args.runs_dir, device="cpu")
if precision_of(result) != "bf16 training and scoring":
    raise SystemExit(f"{result.run_dir} holds a run trained without bf16 (amp is not part of the run key): "
                     "give --runs-dir a folder of its own")
auroc = result.metrics["image_auroc"]
print(f"{args.dataset} seed {args.seed}, bf16: final {100 * auroc['final']:.2f}, mean {100 * auroc['mean']:.2f} "
      f"± {100 * auroc['std']:.2f} over the sampled cloners")
