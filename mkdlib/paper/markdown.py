"""Results tables written by code: ours beside the paper's number, and the results index.

`comparison_table` lines our per-class AUROC (final epoch; mean ± std over sampled checkpoints, in %)
up with a table of `mkdlib.paper.numbers`; `write_table` writes it as CSV and Markdown (with the notes in
`df.attrs["notes"]`); `write_index` regenerates `results/README.md` from the tables present.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from mkdlib.hardware import host_info
from mkdlib.io_utils import atomic_write_text, git_commit
from mkdlib.paper.numbers import PADDLE, PADDLE_LABEL, PADDLE_NOTE, PAPER

COLUMNS = ["paper", "paper_pm", "ours_final", "ours_mean", "ours_std", "diff", "note"]
INDEX_PROFILE = "profile of the run writing this index"  # a line of the index, read back by written_profile
UNKNOWN = "unknown"  # the profile of a results file that records none
NOT_ASKED = "not run: not among the classes asked for (`classes`)"  # a paper class no run was requested for


def not_run(path: str | Path) -> str:
    """The note for a class whose data was absent."""
    return f"not run: {path}"


def comparison_table(item: str, ours: pd.DataFrame, *, column: str | None = None,
                     notes: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Paper vs ours (index: class; columns final and optionally mean, std; AUROC in %) for one paper item
    and column (default: the paper's method column).

    Rows are the paper table's classes (or ours' classes, for a table printing only means), then a
    "mean" row when the paper prints a mean: mean over classes of each column, with the paper's
    printed mean. A paper class missing from `ours` gets NaN and a note (NOT_ASKED unless `notes` says why).
    """
    t = PAPER[item]
    col = column or t.default_column
    if col not in t.columns:
        raise KeyError(f"{item} has no column {col!r}; columns: {t.columns}")
    if set(ours.columns) - {"final", "mean", "std"} or "final" not in ours.columns:
        raise ValueError(f"ours needs column 'final' (and optionally 'mean', 'std'); got {list(ours.columns)}")
    o = ours.reindex(columns=["final", "mean", "std"]).astype(float)
    o.index = o.index.map(str)
    auroc = o[["final", "mean"]].to_numpy().ravel()
    if ((auroc < 0) | (auroc > 100)).any():  # NaN compares False: not run
        raise ValueError("AUROC values outside [0, 100]: ours is in %")
    notes = dict(notes or {})
    classes = t.classes or list(o.index)
    extra = (set(o.index) | set(notes)) - set(classes)
    if extra:
        raise ValueError(f"classes not in {item}: {sorted(extra)}; expected {classes}")

    independent = PADDLE.get(item) if col == t.default_column else None  # an independent reproduction's
    columns = [*COLUMNS[:2], "paddle", *COLUMNS[2:]] if independent else COLUMNS
    df = pd.DataFrame(index=pd.Index(classes, name="class"), columns=columns)
    df["paper"] = [t.rows[c][col] if c in t.rows else None for c in classes]
    if independent:
        df["paddle"] = [independent.get(c) for c in classes]
    df["paper_pm"] = [t.spread.get(c, {}).get(col) for c in classes]
    df[["ours_final", "ours_mean", "ours_std"]] = o.reindex(classes).to_numpy()
    num = columns[:-1]
    df[num] = df[num].astype(float)
    df["diff"] = df["ours_final"] - df["paper"]
    df["note"] = [notes.get(c, "" if c in o.index and not math.isnan(o.at[c, "final"]) else NOT_ASKED)
                  for c in classes]

    printed = t.printed_mean.get(col)
    if printed is not None:
        mean = df[num].mean(skipna=True)
        mean["paper"], mean["paper_pm"] = printed, math.nan
        if independent:
            mean["paddle"] = independent["mean"]
        ran = int(df["ours_final"].notna().sum())
        note = "" if ran == len(classes) else f"ours over {ran} of {len(classes)} classes; no diff"
        mean["diff"] = mean["ours_final"] - printed if not note else math.nan
        df.loc["mean"] = [*mean[num].tolist(), note]
        df[num] = df[num].astype(float)
    title = f"{t.source}: {t.title}" + (f", {t.column_labels[col]}" if t.column_labels else "")
    df.attrs.update(item=item, column=col, source=t.source, metric=t.metric, title=title)
    return df


def _fmt(x: float) -> str:
    return "—" if pd.isna(x) else f"{x:.2f}"


def _pm(m: float, s: float) -> str:
    return _fmt(m) if pd.isna(s) or pd.isna(m) else f"{m:.2f} ± {s:.2f}"


def distinct(df: pd.DataFrame, column: str) -> str | None:
    """The distinct values of a column, '; '-joined in order of appearance, each led by its rows' names
    where rows differ ("brainmri: ...; headct: ..."); None without any."""
    if column not in df.columns:
        return None
    rows: dict[str, list[str]] = {}
    for cls, v in df[column].dropna().items():
        if str(v):
            rows.setdefault(str(v), []).append(str(cls))
    if len(rows) > 1:
        return "; ".join(f"{', '.join(names)}: {v}" for v, names in rows.items())
    return next(iter(rows), None)


def table_notes(df: pd.DataFrame) -> list[str]:
    """The table-wide notes in `df.attrs["notes"]` (a string or a sequence of strings)."""
    notes = df.attrs.get("notes") or ()
    return [notes] if isinstance(notes, str) else [str(n) for n in notes]


def to_markdown(df: pd.DataFrame, title: str, *, level: int = 1) -> str:
    """A Markdown table: paper and ours as `mean ± std`, numbers to 2 decimals. The first column is
    headed by the index name (classes, or settings for Table 1); under the table, the profile, the
    source weights and the config overrides (the `profile` / `weights` / `overrides` columns, where
    present) and `df.attrs["notes"]`. level: the title's heading level, 1 (`# title`) for the files in
    results/, which stand alone; a notebook shows its tables as sections of its own page (level 3)."""
    if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 6:
        raise ValueError(f"to_markdown: level must be a Markdown heading level 1-6, got {level!r}")
    paddle = "paddle" in df.columns and bool(df["paddle"].notna().any())
    head = [df.index.name or "class", "paper", *[PADDLE_LABEL] * paddle, "ours (final)", "ours (mean ± std)", "diff"]
    has_notes = "note" in df.columns and bool(df["note"].astype(bool).any())
    head += ["note"] * has_notes
    lines = [f"{'#' * level} {title}", ""]
    if df.attrs.get("metric"):
        pm = " Paper ± as printed (the paper calls it variance)." if df["paper_pm"].notna().any() else ""
        lines += [f"Metric: {df.attrs['metric']}. diff = ours (final) − paper.{pm}", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cls, r in df.iterrows():
        cells = [str(cls), _pm(r["paper"], r["paper_pm"]), *([_fmt(r["paddle"])] if paddle else []), _fmt(r["ours_final"]),
                 _pm(r["ours_mean"], r["ours_std"]), _fmt(r["diff"])]
        cells += [str(r["note"])] * has_notes
        lines.append("| " + " | ".join(cells) + " |")
    provenance = [f"{label}: `{value}`" for label, value in (("Profile", distinct(df, "profile")),
                                                              ("source weights", distinct(df, "weights")),
                                                              ("config overrides", distinct(df, "overrides")))
                  if value is not None]
    if provenance:
        lines += ["", "; ".join(provenance) + "."]
    notes = table_notes(df) + [PADDLE_NOTE] * paddle
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def write_table(df: pd.DataFrame, results_dir: str | Path, item: str, *,
                title: str | None = None) -> tuple[Path, Path]:
    """Write `<results_dir>/<item>.csv` and `.md` atomically; returns (csv, md)."""
    results_dir = Path(results_dir)
    title = title or df.attrs.get("title") or item
    text = df.to_csv(index_label=df.index.name or "class", float_format="%.10g")  # no float noise
    csv = atomic_write_text(results_dir / f"{item}.csv", text)
    md = atomic_write_text(results_dir / f"{item}.md", to_markdown(df, title))
    return csv, md


def commit_text(where: str | Path) -> str | None:
    """HEAD's SHA of the checkout holding `where` (+ " (dirty)" with uncommitted changes); None if git fails."""
    sha, dirty = git_commit(where)
    return sha and sha + " (dirty)" * dirty


def _kv(value: str | Mapping[str, str]) -> list[str]:
    if isinstance(value, Mapping):
        return [f"  - {k}: `{v}`" for k, v in value.items()]
    return [f"  - `{value}`"]


PROVENANCE = ("How these results were produced: the tables here are written only by the notebooks in "
              "`notebooks/` (run them with `mkd regenerate`), never by hand. Each table states its profile "
              "and the source weights its runs used (columns `profile` and `weights`, and the table below), and "
              "any config overrides beyond the paper's protocol (column `overrides`, beside the profile below). "
              "Tables of the `smoke` profile are pipeline checks on tiny subsets, not paper numbers.")


def _read_csv(csv: Path) -> pd.DataFrame | None:
    """A written table as strings, indexed by its first column (the rows' names); None when missing, empty
    or malformed."""
    try:
        return pd.read_csv(csv, dtype=str, index_col=0)
    except (OSError, ValueError):
        return None


def _provenance(csv: Path) -> tuple[str, str]:
    """(profile with any config overrides, weights) of a written table, from its CSV's columns; '—' where
    absent or unreadable."""
    df = _read_csv(csv)
    if df is None:
        return "—", "—"
    overrides = distinct(df, "overrides")
    profile = (distinct(df, "profile") or "—") + (f" (overrides: {overrides})" if overrides else "")
    return profile, distinct(df, "weights") or "—"


def _cell(text: str) -> str:
    return text.replace("|", "/")


def write_index(results_dir: str | Path, *, profile: str, weights: str | Mapping[str, str],
                hardware: str | Mapping[str, str] | None = None, commit: str | None = None) -> Path:
    """Regenerate `<results_dir>/README.md`: every `*.md` table there with its profile and weights,
    and the provenance of the run writing the index (profile, weights of all tables, commit, hardware)."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    commit = commit or commit_text(results_dir) or "unknown (git rev-parse failed)"
    hardware = hardware if hardware is not None else host_info()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# Results", "",
             "Written by `mkdlib.paper.markdown.write_index`; do not edit by hand.", "", PROVENANCE, "",
             f"- date: {now}", f"- commit: `{commit}`", f"- {INDEX_PROFILE}: `{profile}`",
             "- weights:", *_kv(weights), "- hardware:", *_kv(hardware), "",
             "| item | title | profile | weights | file | csv | modified |", "|---|---|---|---|---|---|---|"]
    for md in sorted(p for p in results_dir.glob("*.md") if p.name != "README.md"):
        title = (md.read_text(encoding="utf-8").splitlines() or [""])[0].lstrip("#").strip()
        csv = md.with_suffix(".csv")
        mtime = datetime.fromtimestamp(md.stat().st_mtime, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        csv_cell = f"[{csv.name}]({csv.name})" if csv.exists() else "—"
        prof, used = _provenance(csv)
        lines.append(f"| {md.stem} | {_cell(title)} | {_cell(prof)} | {_cell(used)} | [{md.name}]({md.name}) "
                     f"| {csv_cell} | {mtime} |")
    return atomic_write_text(results_dir / "README.md", "\n".join(lines) + "\n")


def written_profile(path: str | Path) -> str | None:
    """The profile that wrote a results file, from what the file records, so that one profile's run never
    silently replaces another's tables: a table's `profile` column (for a .md, its 'Profile:' line, else
    its CSV twin's column), the index's profile line (its first word, the profile's name). None when the
    file does not exist; UNKNOWN when it records no profile."""
    path = Path(path)
    if not path.exists():
        return None
    if path.suffix == ".csv":
        df = _read_csv(path)
        return (None if df is None else distinct(df, "profile")) or UNKNOWN
    line = rf"^- {INDEX_PROFILE}: `([^`:]*)" if path.name == "README.md" else r"^Profile: `([^`]*)`"
    found = re.search(line, path.read_text(encoding="utf-8", errors="replace"), re.MULTILINE)
    if found:
        return found.group(1).strip()
    twin = path.with_suffix(".csv")
    return written_profile(twin) if path.name != "README.md" and twin.exists() else UNKNOWN
