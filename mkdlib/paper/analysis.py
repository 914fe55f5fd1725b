"""What a paper notebook shows after its tables, read from the run records only (nothing is trained):
paper beside ours per class, the training curves of its runs, their score distributions and ROC curves,
AUROC per defect type, and a few generated lines reading the table.

Each function takes a notebook's tables or runs and returns what `display` shows (matplotlib Figures,
DataFrames, IPython Markdown); none draws on screen by itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from mkdlib.metrics import image_auroc
from mkdlib.paper.numbers import PADDLE_LABEL
from mkdlib.plots import show_figures_in_notebooks
from mkdlib.runs.spec import RunResult
from mkdlib.runs.store import HISTORY, SCORES

MAX_RUNS_DRAWN = 12  # runs drawn one by one in a panel (more: the first ones, and the figure says so)
NOTHING_RAN = "*No finished run here: nothing to plot (the tables say why).*"
show_figures_in_notebooks()


def _label(result: RunResult) -> str:
    spec = result.spec
    what = spec.dataset if spec.normal_class is None else f"{spec.dataset} {spec.normal_class}"
    return what + (f" split {spec.seed}" if spec.dataset in ("headct", "brainmri") else "")


def _finished(results: Sequence[RunResult]) -> list[RunResult]:
    """The finished runs, each once (several tables share runs)."""
    seen: dict[str, RunResult] = {}
    for r in results:
        if r.ok and r.run_dir is not None:
            seen.setdefault(r.run_dir.name, r)
    return list(seen.values())


def paper_vs_ours(table: pd.DataFrame) -> Figure:
    """One row per class of a comparison table: the paper's number with its printed ±, the Paddle port's
    where the table has it, ours at the final epoch and our mean ± std (over sampled cloners, or seeds)."""
    df = table.drop(index="mean", errors="ignore")
    y = np.arange(len(df))[::-1]
    fig = Figure(figsize=(6.5, 0.9 + 0.32 * len(df)))
    ax = fig.subplots()
    ax.errorbar(df["paper"], y + 0.15, xerr=df["paper_pm"].fillna(0), fmt="s", color="tab:gray",
                label="paper (± as printed)")
    if "paddle" in df.columns and df["paddle"].notna().any():
        ax.plot(df["paddle"], y + 0.05, "^", color="tab:green", label=PADDLE_LABEL)
    ax.errorbar(df["ours_mean"], y - 0.15, xerr=df["ours_std"].fillna(0), fmt="none", ecolor="tab:blue", alpha=0.6)
    ax.plot(df["ours_final"], y - 0.15, "o", color="tab:blue", label="ours (final; bar: mean ± std)")
    ran = df["ours_final"].notna()
    ax.set_yticks(y, [f"{c}" if ran[c] else f"{c} (not run)" for c in df.index], fontsize=8)
    ax.set_xlabel("AUROC (%)")
    lowest = np.nanmin(df[["paper", "ours_final"]].to_numpy(dtype=float))
    ax.set_xlim(max(0.0, math.floor(lowest / 5) * 5 - 5), 100.5)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(table.attrs.get("title", ""), fontsize=9)
    fig.tight_layout()
    return fig


def _markdown(text: str):
    from IPython.display import Markdown  # IPython comes with the notebooks' kernel

    return Markdown(text)


def comparisons(tables) -> list:
    """For each table with ours in it: paper_vs_ours and its reading (Markdown), in order, for display(*...)."""
    out = []
    for table in (tables.values() if hasattr(tables, "values") else tables):
        if table["ours_final"].notna().any():
            out += [paper_vs_ours(table), _markdown(reading(table))]
    return out or [_markdown("*No table has a number of ours here (the tables say why).*")]


def per_group_aurocs(results: Sequence[RunResult]) -> list:
    """per_group_auroc of each finished run, for display(*...)."""
    return [per_group_auroc(r) for r in _finished(results)] or [_markdown(NOTHING_RAN)]


def training_curves(results: Sequence[RunResult]) -> Figure:
    """Per dataset, left: each run's training loss per epoch (history.csv); right: the image AUROC of its
    sampled cloners (the epochs the tables average over), the final one marked."""
    runs = _finished(results)
    if not runs:
        return _markdown(NOTHING_RAN)
    datasets = list(dict.fromkeys(r.spec.dataset for r in runs))
    fig = Figure(figsize=(10, 3.3 * len(datasets)))
    axes = fig.subplots(len(datasets), 2, squeeze=False)
    for (loss_ax, auroc_ax), dataset in zip(axes, datasets):
        mine = [r for r in runs if r.spec.dataset == dataset]
        for r in mine[:MAX_RUNS_DRAWN]:
            if (r.run_dir / HISTORY).is_file():
                history = pd.read_csv(r.run_dir / HISTORY)
                loss_ax.plot(history["epoch"], history["loss"], lw=1, label=_label(r))
            per_epoch = r.metrics["image_auroc"]["per_epoch"]
            epochs = sorted(per_epoch)
            line, = auroc_ax.plot(epochs, [100 * per_epoch[e] for e in epochs], ".-", lw=1)
            auroc_ax.plot(epochs[-1], 100 * per_epoch[epochs[-1]], "o", color=line.get_color())
        shown = "" if len(mine) <= MAX_RUNS_DRAWN else f" (the first {MAX_RUNS_DRAWN} of {len(mine)} runs)"
        loss_ax.set(yscale="log", xlabel="epoch", ylabel="training loss", title=f"{dataset}: training loss{shown}")
        auroc_ax.set(xlabel="epoch", ylabel="image AUROC (%)", title=f"{dataset}: sampled cloners (final: ●)")
        for ax in (loss_ax, auroc_ax):
            ax.grid(alpha=0.3)
        loss_ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig


def epoch_curves(checks: str | Path) -> Figure:
    """The paper profile's AUROC over training epochs per MVTec AD category, where a curve was measured
    (results/checks/<category>_curve_paper.csv, scripts/epoch_curve.py: a cloner kept every 10 epochs of the
    record's own training): detection, and the paper's pixel protocol every 50 epochs."""
    found = sorted(Path(checks).glob("*_curve_paper.csv"))
    if not found:
        return _markdown("*No curve over epochs measured here (scripts/epoch_curve.py writes one).*")
    fig = Figure(figsize=(10, 3.4))
    detect, locate = fig.subplots(1, 2)
    for path in found:
        curve, name = pd.read_csv(path), path.name.removesuffix("_curve_paper.csv")
        detect.plot(curve["epoch"], curve["image_auroc"], lw=1, label=name)
        pixel = curve.dropna(subset=["paper_pixel_auroc"])
        locate.plot(pixel["epoch"], pixel["paper_pixel_auroc"], "o-", lw=1, ms=3, label=name)
    detect.set(xlabel="epoch", ylabel="image AUROC (%)", title="detection over training (paper profile)")
    locate.set(xlabel="epoch", ylabel="pixel AUROC (%), paper's protocol", title="localisation over training")
    for ax in (detect, locate):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def schedule_choice(selection: str | Path, curve: str | Path, category: str = "transistor"):
    """How the fast schedule was chosen on a slow category: the paper profile's detection and localisation
    over its 601 epochs (its own training, `curve`), the 1-point band below its final values, and each
    candidate schedule's final values at the epochs it trained (`selection`: select_fast_schedule.py's CSV).
    A Markdown line instead where either file is absent (a results folder of another profile has neither)."""
    missing = [str(p) for p in (selection, curve) if not Path(p).is_file()]
    if missing:
        return _markdown(f"*Not drawn: {' and '.join(missing)} not found (the paper results folder has them).*")
    curve, tried = pd.read_csv(curve), pd.read_csv(selection)
    tried = tried[tried["class"].astype(str) == category]
    fig = Figure(figsize=(10, 3.6))
    for ax, column, label in zip(fig.subplots(1, 2), ("image_auroc", "paper_pixel_auroc"),
                                 ("detection: image AUROC (%)", "localisation: paper's pixel protocol (%)")):
        points = curve.dropna(subset=[column])
        ax.plot(points["epoch"], points[column], "-", color="tab:gray", lw=1, label="paper profile over its epochs")
        final = points[column].iloc[-1]
        ax.axhspan(final - 1, final, color="tab:green", alpha=0.12, label="within 1 point of its final")
        metric = "final" if column == "image_auroc" else "localisation"
        for _, row in tried.dropna(subset=[metric]).iterrows():
            ax.plot(row["epochs"], row[metric], "o", label=f"{row['candidate']} ({row['epochs']} epochs)")
        ax.set(xlabel="epochs trained", ylabel=label, title=f"{category}: {label.split(':')[0]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def scores(result: RunResult) -> pd.DataFrame:
    """The final cloner's test scores (scores.csv) with each image's group: its folder (MVTec's defect
    type, or good) where the path has one, else normal / anomalous."""
    table = pd.read_csv(result.run_dir / SCORES, dtype={"path": str})
    folders = table["path"].map(lambda p: Path(p).parent.name)
    by_folder = result.spec.dataset in ("mvtec", "synthetic", "folder")
    table["group"] = folders if by_folder else np.where(table["label"] == 1, "anomalous", "normal")
    return table


def per_group_auroc(result: RunResult) -> pd.DataFrame:
    """Image AUROC (%) of each anomalous group (MVTec: defect type) against the normal images, with counts."""
    table = scores(result)
    normal = table[table["label"] == 0]
    groups = {g: pd.concat([normal, sub]) for g, sub in table[table["label"] == 1].groupby("group")}
    rows = {g: {"images": int(t["label"].sum()), "AUROC (%)": round(100 * image_auroc(t["label"], t["score"]), 2)}
            for g, t in {**groups, "all": table}.items()}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = f"{_label(result)}: anomalous group"
    return out


def score_distributions(results: Sequence[RunResult], *, runs: int = 3) -> Figure:
    """For up to `runs` runs: the histogram of test scores per group (normal first), and one panel with the
    ROC curve of every run (up to MAX_RUNS_DRAWN) and its AUROC."""
    done = _finished(results)
    if not done:
        return _markdown(NOTHING_RAN)
    shown = done[:runs]
    fig = Figure(figsize=(3.4 * (len(shown) + 1), 3.2))
    axes = fig.subplots(1, len(shown) + 1, squeeze=False)[0]
    for ax, r in zip(axes, shown):
        table = scores(r)
        bins = np.linspace(table["score"].min(), table["score"].max(), 30)
        order = sorted(table["group"].unique(), key=lambda g: (g not in ("good", "normal"), g))
        for group in order:
            ax.hist(table.loc[table["group"] == group, "score"], bins=bins, alpha=0.55, label=group)
        ax.set(title=_label(r), xlabel="anomaly score (MKD loss)", ylabel="test images")
        ax.legend(fontsize=7)
    roc = axes[-1]
    for r in done[:MAX_RUNS_DRAWN]:
        table = scores(r)
        fpr, tpr, _ = roc_curve(table["label"], table["score"])
        roc.plot(fpr, tpr, lw=1, label=f"{_label(r)}: {100 * image_auroc(table['label'], table['score']):.1f}")
    roc.plot([0, 1], [0, 1], ":", color="gray")
    roc.set(title="ROC (final cloner)", xlabel="false-positive rate", ylabel="true-positive rate")
    roc.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return fig


def per_split(table: pd.DataFrame, results: Sequence[RunResult]) -> Figure:
    """Rows with several seeded splits (Table 6): each split's final AUROC as a dot, their mean, and the
    paper's number: how much of a row's spread is the split."""
    from mkdlib.paper.tabulation import row_of

    runs = _finished(results)
    if not runs:
        return _markdown(NOTHING_RAN)
    df = table.drop(index="mean", errors="ignore")
    fig = Figure(figsize=(6.5, 0.9 + 0.5 * len(df)))
    ax = fig.subplots()
    for y, row in zip(np.arange(len(df))[::-1], df.index):
        splits = [(r.spec.seed, 100 * r.metrics["image_auroc"]["final"]) for r in runs
                  if row_of(table.attrs["item"], r.spec) == row]
        if splits:
            ax.plot([v for _, v in splits], [y] * len(splits), "o", color="tab:blue", alpha=0.6,
                    label="ours, one split each" if y == len(df) - 1 else None)
            ax.plot(np.mean([v for _, v in splits]), y, "|", color="tab:blue", ms=18, mew=2)
        ax.plot(df.at[row, "paper"], y, "s", color="tab:gray", label="paper" if y == len(df) - 1 else None)
    ax.set_yticks(np.arange(len(df))[::-1], list(df.index))
    ax.set(xlabel="final AUROC (%)", title="per split (bar: mean over the splits)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fast_vs_paper(comparison: pd.DataFrame) -> Figure:
    """The fast profile beside the paper's, per reported row: fast − paper at the final epoch, the 1-point
    bound, development rows marked; with the image passes each spent."""
    if comparison is None or comparison.empty:
        return _markdown("*No row has both profiles finished here.*")
    rows = comparison[comparison["class"] != "mean"].dropna(subset=["diff"])
    labels = [f"{i.replace('table2_', '').replace('table', 'T')} {m.replace('_auroc', '')} {c}"
              for i, m, c in zip(rows["item"], rows["metric"], rows["class"])]
    y = np.arange(len(rows))[::-1]
    fig = Figure(figsize=(7.5, 1.0 + 0.22 * len(rows)))
    ax, cost = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    colours = np.where(rows["dev"].astype(bool), "tab:orange", "tab:blue")
    ax.scatter(rows["diff"], y, c=colours, s=14)
    ax.axvspan(-1, 1, color="tab:green", alpha=0.08, label="within 1 point")
    ax.axvline(0, color="gray", lw=0.8)
    ax.set_yticks(y, labels, fontsize=6)
    ax.set(xlabel="fast − paper, final AUROC (points); orange: dev rows", title="fast beside paper")
    ax.legend(fontsize=7, loc="lower left")
    cost.barh(y, rows["passes_ratio"], color="tab:gray")
    cost.set(xlabel="image passes, fast / paper", xlim=(0, 1))
    fig.tight_layout()
    return fig


def reading(table: pd.DataFrame) -> str:
    """A few generated lines reading a comparison table: how many classes ran, the mean difference to the
    paper, where ours is within one point and the largest gaps."""
    df = table.drop(index="mean", errors="ignore")
    ran = df[df["ours_final"].notna() & df["paper"].notna()]
    name = table.attrs.get("title", "this table")
    ours = df["ours_final"].dropna()
    if df["paper"].isna().all() and not ours.empty:  # a metric the paper does not report
        return (f"**{name}**: the paper reports no such number; ours over the {len(ours)} classes run: mean "
                f"{ours.mean():.2f} (" + ", ".join(f"{c} {v:.2f}" for c, v in ours.items()) + ").")
    if ran.empty:
        return f"**{name}**: no class ran here (see the notes for why)."
    diff = ran["ours_final"] - ran["paper"]
    within = [str(c) for c in diff.index if abs(diff[c]) <= 1]
    worst = diff.abs().sort_values(ascending=False).index[:3]
    lines = [f"**{name}**: {len(ran)} of {len(df)} classes ran; ours − paper at the final epoch: mean "
             f"{diff.mean():+.2f} points (from {diff.min():+.2f} to {diff.max():+.2f})."]
    lines.append(f"Within 1 point of the paper: {', '.join(within) if within else 'none'}; largest gaps: "
                 + ", ".join(f"{c} ({diff[c]:+.2f})" for c in worst) + ".")
    if "paddle" in ran.columns and ran["paddle"].notna().any():
        gap = (ran["ours_final"] - ran["paddle"]).dropna()
        lines.append(f"Against the {PADDLE_LABEL} (best epoch on the test set): mean {gap.mean():+.2f} points.")
    return " ".join(lines)
