"""Retrain one paper-profile Table 6 run in bf16 (`amp`) into a separate run cache and print its AUROC.

`amp` is not part of the run key, so the bf16 run must not share the main cache with the fp32 record it is
compared to. Used for the README's BrainMRI note (split 0: fp32 96.77 final, bf16 95.68).

    python scripts/precision_check.py [dataset] [seed] [runs_dir]   # defaults: brainmri 0 ~/mkd-runs-bf16check
"""
import sys
from pathlib import Path

from mkdlib.paper import items
from mkdlib.runs.runner import run

dataset, seed = (sys.argv[1:2] or ["brainmri"])[0], int((sys.argv[2:3] or ["0"])[0])
runs = Path(sys.argv[3]) if len(sys.argv) > 3 else Path.home() / "mkd-runs-bf16check"
spec = next(s for s in items.specs_for("table6", "paper", config={"amp": True}, classes={"table6": [dataset]})
            if s.seed == seed)
auroc = run(spec, runs, device="cpu").metrics["image_auroc"]
print(f"{dataset} seed {seed}, bf16: final {100 * auroc['final']:.2f}, mean {100 * auroc['mean']:.2f} "
      f"± {100 * auroc['std']:.2f} over the sampled cloners")
