"""Issue 15's HeadCT question: why is our HeadCT ~14 points above the paper's 78.04? Retrains the paper
profile's HeadCT split with one thing changed at a time and prints image AUROC beside the unchanged run.
`--dataset brainmri` asks the same of BrainMRI (ours below the paper's 95.01), as a cross-check.

Variants (each its own run key, so each its own record; bf16 `amp` by default, as the Table 6 runs):
  unchanged the paper profile's own run, for the per-split spread (e.g. --seeds 5 6 ... 19)
  epochs    the unchanged protocol, every 10th cloner scored from epoch 1 (sample_last=600): the
            effect of the number of epochs, read off one run
  lambda    lambda (value_weight, on the value term) 0.5, the MVTec value, instead of HeadCT's 0.01
  size256   256 px instead of 128 (about 4x the compute)
  grey      every image its luma in all three channels (65 of HeadCT's files carry a colour cast)
  imagenet  ImageNet mean / std normalisation of the inputs (the reference gave HeadCT [0, 1] inputs)

    python scripts/headct_investigation.py [--variants epochs lambda] [--seeds 0 1] [--profile paper]
                                           [--dataset headct] [--runs-dir ~/mkd-runs] [--table results/checks/headct_splits.md]

--table reads (never trains) the unchanged runs of --seeds in both profiles and writes one row per split
with a summary over the splits: `--variants --seeds $(seq 0 19) --table results/checks/headct_splits.md`.
"""
import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from mkdlib.paper import items
from mkdlib.runs.runner import run
from mkdlib.runs.store import finished_runs

VARIANTS = {"unchanged": {}, "epochs": {"sample_last": 600}, "lambda": {"value_weight": 0.5}, "size256": {"image_size": 256},
            "grey": {}, "imagenet": {}}  # config overrides
OPTIONS = {"grey": {"grey": True}, "imagenet": {"imagenet_norm": True}}  # dataset options
DATASETS = {"headct": ("HeadCT", "the 100 hemorrhages", "78.04 ± 0.23"),  # name, test anomalies, paper
            "brainmri": ("BrainMRI", "the 155 tumours", "95.01 ± 0.23")}
CURVE = (1, 11, 31, 51, 101, 201, 301, 401, 501, 601)  # epochs printed from the epoch curve

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=["epochs", "lambda"])
parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="the splits (Table 6's are seeds 0-4)")
parser.add_argument("--profile", choices=("paper", "fast-v1"), default="paper",
                    help="fast-v1: ours, a fifth of the epochs (docs/fast-profile.md), the cheap spread these checks used")
parser.add_argument("--dataset", choices=list(DATASETS), default="headct")
parser.add_argument("--runs-dir", type=Path, default=Path.home() / "mkd-runs")
parser.add_argument("--table", type=Path, help="write the per-split table of the finished unchanged runs here")
parser.add_argument("--fp32", action="store_true", help="train in fp32 (default: bf16 amp, as Table 6's runs)")
args = parser.parse_args()


def medical(seed: int, config: dict, options: dict | None = None, profile: str | None = None):
    spec, = items.specs_for("table6", profile or args.profile, config={**config, "amp": not args.fp32},
                            classes={"table6": [args.dataset]}, seeds=[seed])
    return replace(spec, dataset_options={**spec.dataset_options, **options}) if options else spec


def pct(x: float) -> str:
    return f"{100 * x:.2f}"


def report(label: str, result, sampled: str) -> None:
    a = result.metrics["image_auroc"]
    print(f"{label} (record {result.run_dir.name}): final {pct(a['final'])}, "
          f"mean {pct(a['mean'])} ± {pct(a['std'])} over {sampled}", flush=True)


for seed in args.seeds:
    base, = finished_runs([medical(seed, {})], args.runs_dir)
    if base.ok:
        report(f"split {seed} unchanged ({args.profile})", base, "the sampled cloners")
    for name in (v for v in args.variants if v != "unchanged" or not base.ok):
        result = run(medical(seed, VARIANTS[name], OPTIONS.get(name)), args.runs_dir, device="cpu", progress=False)
        changed = VARIANTS[name] or OPTIONS.get(name, "")
        report(f"split {seed} {name} {changed} ({args.profile})".replace("  ", " "), result, "the sampled cloners")
        if name == "epochs":
            curve = {int(e): v for e, v in result.metrics["image_auroc"]["per_epoch"].items()}  # str keys on disk
            print("  AUROC by epoch: " + ", ".join(f"{e}: {pct(curve[e])}" for e in CURVE if e in curve))


def trained_in(result) -> str:
    """bf16 or fp32: how the record's cloner was trained (`amp` is not part of the run key)."""
    if not result.ok:
        return "-"
    return "bf16" if json.loads((result.run_dir / "spec.json").read_text())["config"]["amp"] else "fp32"


def split_table(seeds: list[int]) -> str:
    """Markdown: each split's final AUROC and mean ± std over its sampled cloners, per profile, and the
    spread over the splits (std with ddof 0, as Table 6's)."""
    runs = {p: finished_runs([medical(seed, {}, profile=p) for seed in seeds], args.runs_dir) for p in ("paper", "fast-v1")}
    name, anomalies, paper = DATASETS[args.dataset]
    lines = [f"# {name}: image AUROC (%) per seeded split (10 random normals + {anomalies} as the test set)", "",
             f"Written by `python scripts/headct_investigation.py --dataset {args.dataset} --variants --seeds ... "
             "--table ...` from the finished runs (records in `results/runs/`). paper: 601 epochs; fast-v1: ours, 120 "
             f"epochs with warm-up + cosine (docs/fast-profile.md). Paper (Table 6): {paper}.", "",
             "| split | paper final | paper mean ± std (sampled cloners) | fast-v1 final | fast-v1 mean ± std | training | records |",
             "|---|---|---|---|---|---|---|"]
    for i, seed in enumerate(seeds):
        cells, names, precision = [], [], []
        for p in ("paper", "fast-v1"):
            r = runs[p][i]
            a = r.metrics["image_auroc"] if r.ok else None
            cells += [pct(a["final"]), f"{pct(a['mean'])} ± {pct(a['std'])}"] if a else ["not run", ""]
            names.append(r.run_dir.name if r.ok else "-")
            precision.append(trained_in(r))
        lines.append(f"| {seed} | " + " | ".join(cells) + f" | {' / '.join(precision)} | {' / '.join(names)} |")
    lines.append("")
    for p in ("paper", "fast-v1"):
        done = [(seed, r.metrics["image_auroc"]["final"]) for seed, r in zip(seeds, runs[p]) if r.ok]
        if done:
            v = np.array([x for _, x in done])
            lines.append(f"- {p}: {len(v)} splits, final AUROC {pct(v.mean())} ± {pct(v.std())} over the splits, "
                         f"range {pct(v.min())}-{pct(v.max())}; below 80 on "
                         f"{', '.join(str(s) for s, x in done if x < 0.8) or 'none'}.")
    return "\n".join(lines + variant_rows(seeds, runs)) + "\n"


def variant_rows(seeds: list[int], unchanged: dict) -> list[str]:
    """One row per finished variant run (one thing changed) beside the same split's unchanged run
    (`unchanged`: split_table's finished runs per profile, in the order of `seeds`)."""
    rows = []
    for p in ("paper", "fast-v1"):
        for name in (v for v in VARIANTS if v not in ("unchanged", "epochs")):
            variants = finished_runs([medical(seed, VARIANTS[name], OPTIONS.get(name), profile=p) for seed in seeds],
                                     args.runs_dir)
            for seed, base, r in zip(seeds, unchanged[p], variants):
                if r.ok:
                    a, b = r.metrics["image_auroc"], base.metrics["image_auroc"] if base.ok else None
                    rows.append(f"| {p} | {name} | {seed} | {pct(a['final'])} | {pct(a['mean'])} ± {pct(a['std'])} | "
                                f"{pct(b['final']) if b else 'not run'} | {trained_in(r)} | {r.run_dir.name} |")
    head = ["", "One thing changed (variants: see the script's docstring), beside the same split's unchanged run:", "",
            "| profile | variant | split | final | mean ± std | unchanged final | training | record |",
            "|---|---|---|---|---|---|---|---|"]
    return head + rows if rows else []


if args.table:
    args.table.write_text(split_table(args.seeds))
    print(f"wrote {args.table}")
