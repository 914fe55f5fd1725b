"""Choose the `fast` profile's schedule on development data only (issues 14 and 31), and write what was tried.

Development data: MNIST classes 0-2 and Fashion-MNIST class 0 (their test sets, which the fast-vs-paper
table then marks "dev"); a validation split carved out of the *training* images of MVTec AD `bottle`: 169
images train, the other 40 are the validation normals, and a CutPaste-style copy of each (a rectangle of
another validation image pasted at a random place) its anomalies (the bottle test set is never read); and,
since issue 31, MVTec AD `transistor`, a category whose AUROC climbs slowly: its test set, detection and
localisation (also marked "dev" wherever it is reported).

    python scripts/select_fast_schedule.py --runs ~/mkd-runs --out results/fast_selection.csv \
        [--only transistor] [--candidates "cosine 3e-3, 2/5"]

Every candidate keeps the paper's source, cloner, loss, layers, image size and scoring, and trains a fraction
of the paper's epochs (`config.fast_overrides` with the candidate's fraction, lr and schedule).
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mkdlib.checkpoints import cloner_path, load_checkpoint
from mkdlib.config import fast_overrides, paper_config
from mkdlib.datasets import get_dataset
from mkdlib.metrics import image_auroc
from mkdlib.runs.runner import run
from mkdlib.runs.spec import RunSpec
from mkdlib.scoring import score, score_loss, summarize
from mkdlib.train import build, fit

# name -> (fast_overrides' schedule: fraction of the paper's epochs, lr, shape; then any override of its output).
# Issue 14 tried the first three at a fifth of the epochs ("cosine 3e-3" became fast-v1); issue 31 the rest.
CANDIDATES: dict[str, tuple[dict, dict]] = {
    "constant 1e-3 (paper lr, 1/5 epochs)": ({"fraction": 1 / 5, "schedule": "constant", "lr": 1e-3},
                                             {"warmup_epochs": 0}),
    "cosine 3e-3": ({"fraction": 1 / 5, "schedule": "cosine", "lr": 3e-3}, {}),
    "cosine 1e-2": ({"fraction": 1 / 5, "schedule": "cosine", "lr": 1e-2}, {}),
    "cosine 3e-3, 2/5": ({"fraction": 2 / 5, "schedule": "cosine", "lr": 3e-3}, {}),
    "cosine 1e-2, 2/5": ({"fraction": 2 / 5, "schedule": "cosine", "lr": 1e-2}, {}),
    "cosine 3e-3, 3/5": ({"fraction": 3 / 5, "schedule": "cosine", "lr": 3e-3}, {}),
    "cosine 3e-2": ({"fraction": 1 / 5, "schedule": "cosine", "lr": 3e-2}, {}),
}
DEV_CLASSES = [("mnist", 0), ("mnist", 1), ("mnist", 2), ("fashionmnist", 0), ("mvtec", "transistor")]
N_VALIDATION = 40  # bottle training images held out as validation normals (209 in all)


def cutpaste(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image with a rectangle (10-25% of the side) of another image pasted at a random place."""
    out = images.clone()
    n, _, h, w = images.shape
    for i in range(n):
        ph, pw = (int(torch.randint(h // 10, h // 4 + 1, (1,), generator=generator)) for _ in range(2))
        donor = int((i + 1 + torch.randint(n - 1, (1,), generator=generator)) % n)
        y0, x0, y1, x1 = (int(torch.randint(0, d - p + 1, (1,), generator=generator))
                          for d, p in ((h, ph), (w, pw), (h, ph), (w, pw)))
        out[i, :, y1:y1 + ph, x1:x1 + pw] = images[donor, :, y0:y0 + ph, x0:x0 + pw]
    return out


def bottle_validation(overrides: dict, data_root: str | None, work: Path) -> dict:
    """Validation AUROC (final cloner; mean +- std over the sampled ones) of a schedule on bottle's train split."""
    train = get_dataset("mvtec", data_root, split="train", normal_class="bottle")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0)).tolist()
    fit_idx, val_idx = order[N_VALIDATION:], order[:N_VALIDATION]
    fit_set = torch.stack([train[i]["image"] for i in fit_idx])
    normals = torch.stack([train[i]["image"] for i in val_idx])
    val = torch.cat([normals, cutpaste(normals, torch.Generator().manual_seed(1))])
    labels = np.r_[np.zeros(len(normals)), np.ones(len(normals))].astype(int)
    cfg = replace(paper_config("mvtec"), **overrides)
    source, cloner, loss = build(cfg)
    history = fit(cloner, source, fit_set, cfg, loss, checkpoint_dir=work, progress=False)
    aurocs = {}
    for epoch in cfg.eval_epochs():
        cloner.load_state_dict(load_checkpoint(cloner_path(work, epoch))["cloner"])
        aurocs[epoch] = image_auroc(labels, score(cloner, score_loss(cfg), val, source=source))
    return {**summarize(aurocs), "train_s": sum(h["seconds"] for h in history)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", default=str(Path.home() / "mkd-runs"), help="the run cache (resumable)")
    p.add_argument("--out", default="results/fast_selection.csv")
    p.add_argument("--data-root", help="as $MKDLIB_DATA")
    p.add_argument("--only", nargs="+", choices=["mnist", "fashionmnist", "bottle", "transistor"])
    p.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    a = p.parse_args(argv)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in a.candidates:
        schedule, extra = CANDIDATES[name]
        for dataset, cls in DEV_CLASSES + [("bottle", None)]:
            if a.only and (cls if dataset == "mvtec" else dataset) not in a.only:
                continue
            overrides = {**fast_overrides("mvtec" if dataset == "bottle" else dataset, **schedule), **extra}
            pixel = {}
            if dataset == "bottle":
                work = Path(a.runs) / "fast-selection" / f"bottle-{name.split()[0]}-{overrides['lr']:g}"
                if schedule["fraction"] != 1 / 5:
                    work = work.with_name(f"{work.name}-{overrides['epochs']}")
                m = bottle_validation(overrides, a.data_root, work)
            else:
                spec = RunSpec(dataset, cls, config=overrides, data_root=a.data_root,
                               localization=("gradients",) if dataset == "mvtec" else ())
                res = run(spec, a.runs, progress=False)
                if not res.ok:
                    print(f"{name} {dataset} {cls}: {res.error}", file=sys.stderr)
                    continue
                m = {**res.metrics["image_auroc"], "train_s": res.metrics["timing_s"]["train"]}
                pixel = res.metrics["pixel"].get("gradients", {})
            row = {"candidate": name, "dataset": dataset, "class": "train split" if cls is None else cls,
                   "final": round(100 * m["final"], 2), "mean": round(100 * m["mean"], 2),
                   "std": round(100 * m["std"], 2), "epochs": overrides["epochs"], "train_s": round(m["train_s"]),
                   "fraction": round(schedule["fraction"], 4),
                   "localisation": round(100 * pixel["paper_pixel_auroc"], 2) if pixel else ""}
            print(row, flush=True)
            _append(out, row)
    return 0


def _append(out: Path, row: dict) -> None:
    """Add a row to the CSV (row by row: an interrupted selection keeps what it measured), widening the
    header of a file written before a column existed."""
    rows = list(csv.DictReader(out.open())) if out.is_file() else []
    fields = list(dict.fromkeys([*(rows[0] if rows else {}), *row]))
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([*rows, row])


if __name__ == "__main__":
    sys.exit(main())
