"""The fast profile (ours) beside the paper's, issue 14: which runs to compare (`comparison_specs`: the
items of FAST_ROWS in both profiles), which fast runs to train (`partners`: only beside a finished paper
run), and the comparison table (`comparison`: AUROC of both, image passes, training seconds, ratios),
written as `results/fast_vs_paper.{csv,md}` by notebooks/fast_vs_paper.ipynb.
"""

from __future__ import annotations

import math
from fractions import Fraction
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mkdlib.config import FAST_SCHEDULES, profile_of
from mkdlib.io_utils import atomic_write_text
from mkdlib.paper.items import get_item, specs_for
from mkdlib.paper.tabulation import collect, row_of
from mkdlib.runs.spec import RunResult, RunSpec

# (item, setting) rows of `comparison`, and the rows whose test sets chose the fast schedule.
FAST_ROWS = (("table2_mnist", ""), ("table2_fashionmnist", ""), ("table6", ""), ("table3", ""), ("table4", ""),
             ("table4", "pixel_auroc"))
FAST_DEV = {("table2_mnist", "0"), ("table2_mnist", "1"), ("table2_mnist", "2"), ("table2_fashionmnist", "tshirt_top"),
            ("table3", "transistor"), ("table4", "transistor")}  # transistor since issue 31


def comparison_specs(profile: str = "paper", **options: Any) -> dict[str, list[RunSpec]]:
    """{"paper": ..., "fast": ...}: the runs of FAST_ROWS' items in `profile` and in the fast profile
    (options: specs_for's). A smoke profile is compared with itself, a pipeline check."""
    fast = "fast" if profile_of(profile).name == "paper" else profile
    items = list(dict.fromkeys(item for item, _ in FAST_ROWS))
    return {side: [spec for item in items for spec in specs_for(item, name, **options)]
            for side, name in (("paper", profile), ("fast", fast))}


def partners(specs: Mapping[str, Sequence[RunSpec]], paper: Sequence[RunResult]) -> list[RunSpec]:
    """The fast runs worth training: those whose paper run (`paper`, read in the order of specs["paper"])
    has finished, so that every comparison row is like for like (same data, class and seed) and no compute
    goes to a row with nothing beside it; all of them when a profile is compared with itself (smoke)."""
    pairs = list(zip(specs["fast"], specs["paper"], paper, strict=True))
    for fast, ref, _ in pairs:
        if (fast.dataset, fast.normal_class, fast.seed) != (ref.dataset, ref.normal_class, ref.seed):
            raise ValueError(f"partners: {fast.dataset} {fast.normal_class} seed {fast.seed} is paired "
                             f"with {ref.dataset} {ref.normal_class} seed {ref.seed}; specs are not aligned")
    return [fast for fast, ref, result in pairs if result.ok or fast.key() == ref.key()]


_COSTS = ("passes", "train_s")
FAST_COLUMNS = ["item", "metric", "class", "dev", "paper_final", "paper_mean", "paper_std", "paper_runs",
                "paper_passes", "paper_train_s", "fast_final", "fast_mean", "fast_std", "fast_runs", "fast_passes",
                "fast_train_s", "diff", "passes_ratio", "time_ratio"]


def _costs(item: str, results: Iterable[RunResult]) -> dict[str, dict[str, float]]:
    """Per row of `item`: image passes (epochs x training images) and training seconds, averaged over runs."""
    by_row: dict[str, list[dict]] = {}
    for res in (r for r in results if r.ok):
        row = row_of(item, res.spec)
        if row is not None:
            m = res.metrics
            by_row.setdefault(row, []).append({"passes": m["epochs"] * m["n_train"], "train_s": m["timing_s"]["train"]})
    return {row: {k: float(np.mean([c[k] for c in costs])) for k in _COSTS} for row, costs in by_row.items()}


def like_for_like(item: str, paper: Iterable[RunResult], fast: Iterable[RunResult]) -> list[RunResult]:
    """The finished paper runs of `item` to set beside the fast ones: in a row where some fast runs have
    finished, only the seeds they ran (a row of five paper seeds beside three fast ones is compared on
    those three); in a row with no fast run, all of them (shown beside an empty fast side)."""
    def rows(results):
        return [(r, row) for r in results if r.ok and (row := row_of(item, r.spec)) is not None]

    seeds: dict[str, set[int]] = {}
    for res, row in rows(fast):
        seeds.setdefault(row, set()).add(res.spec.seed)
    return [r for r, row in rows(paper) if r.spec.seed in seeds.get(row, {r.spec.seed})]


def comparison(paper: Sequence[RunResult], fast: Sequence[RunResult]) -> pd.DataFrame:
    """One row per FAST_ROWS class with runs in either profile: AUROC in % (final; mean, std over sampled
    cloners or seeds) of each, fast - paper, the runs (seeds) behind each side, and each one's image passes
    and training seconds per run with the fast/paper ratios; `dev` marks the rows used to choose the
    schedule. Rows of several seeds are compared on the seeds both profiles finished (`like_for_like`).
    Ends with per-item means (over the classes of one dataset; none for Table 6, whose rows are different
    datasets)."""
    out = []
    for item, setting in FAST_ROWS:
        sides = {"paper": like_for_like(item, paper, fast), "fast": fast}
        longs = {name: collect(item, res) for name, res in sides.items()}
        frames = {name: long[long["setting"] == setting].set_index("class") for name, long in longs.items()}
        costs = {name: _costs(item, res) for name, res in sides.items()}
        it = get_item(item)
        for cls in it.rows:
            if not any(cls in f.index and f.at[cls, "n"] for f in frames.values()):
                continue
            row = {"item": item, "metric": it.settings[setting].metric[-1], "class": cls,
                   "dev": (item, cls) in FAST_DEV}
            for name, f in frames.items():
                for k in ("final", "mean", "std"):
                    row[f"{name}_{k}"] = f.at[cls, k] if cls in f.index else math.nan
                row[f"{name}_runs"] = int(f.at[cls, "n"]) if cls in f.index else 0
                for k in _COSTS:
                    row[f"{name}_{k}"] = costs[name].get(cls, {}).get(k, math.nan)
            row["diff"] = row["fast_final"] - row["paper_final"]
            row["passes_ratio"] = row["fast_passes"] / row["paper_passes"]
            row["time_ratio"] = row["fast_train_s"] / row["paper_train_s"]
            out.append(row)
    df = pd.DataFrame(out, columns=FAST_COLUMNS)
    if df.empty:
        return df
    means = [{"item": item, "metric": metric, "class": "mean", "dev": False,
              **sub.drop(columns=["item", "metric", "class", "dev"]).mean(skipna=False).to_dict(),
              "paper_runs": int(sub["paper_runs"].sum()), "fast_runs": int(sub["fast_runs"].sum())}
             for (item, metric), sub in df.groupby(["item", "metric"], sort=False)
             if len(sub) > 1 and len(get_item(item).datasets) == 1]  # Table 6's rows are two datasets: no mean
    return pd.concat([df, pd.DataFrame(means)], ignore_index=True)


def comparison_markdown(df: pd.DataFrame) -> str:
    """The comparison as a Markdown table (2 decimals; ratios to 3), the fast schedule named from
    config.FAST_SCHEDULES."""
    def cell(col, v):
        if isinstance(v, (bool, np.bool_)):
            return "dev" if v else ""
        if isinstance(v, float):
            return "—" if math.isnan(v) else f"{v:.3f}" if col.endswith("ratio") else \
                f"{v:,.0f}" if col.endswith(("passes", "_s")) else f"{v:.2f}"
        return str(v)

    spec = FAST_SCHEDULES["fast"]
    schedule = (f"{Fraction(spec['fraction']).limit_denominator(10)} of the paper's epochs, warm-up + "
                f"{spec['schedule']} lr from a peak of {spec['lr']:g}")
    lines = ["# The fast profile beside the paper's", "",
             f"AUROC in %; `fast` is ours ({schedule}), `paper` the faithful protocol. diff = fast "
             "final − paper final; `runs`: the runs behind each side (seeds: a row of several is compared on "
             "the seeds both finished). Passes and seconds are per run, as each run recorded them (training "
             "only; the machines and threads of the sessions that ran them differ: see each run's env.json). "
             "`dev`: rows whose test sets chose the schedule.", "",
             "| " + " | ".join(FAST_COLUMNS) + " |", "|" + "---|" * len(FAST_COLUMNS)]
    lines += ["| " + " | ".join(cell(c, r[c]) for c in FAST_COLUMNS) + " |" for _, r in df.iterrows()]
    return "\n".join(lines) + "\n"


def save_comparison(df: pd.DataFrame, results_dir: str | Path) -> tuple[Path, Path]:
    """Write `<results_dir>/fast_vs_paper.csv` and `.md` atomically."""
    results_dir = Path(results_dir)
    csv = atomic_write_text(results_dir / "fast_vs_paper.csv", df.to_csv(index=False, float_format="%.10g"))
    return csv, atomic_write_text(results_dir / "fast_vs_paper.md", comparison_markdown(df))
