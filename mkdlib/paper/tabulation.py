"""The paper's tables from finished runs: `collect` reads each item's runs back (by row, setting and
seed), `tables` lines them up with the paper (`mkdlib.paper.markdown.comparison_table`), `save_tables` writes
`results/<name>.csv|md` and `update_index` the index `results/README.md`. `add_maps` adds the saliency
maps a table reads to runs that lack them. Which runs an item needs is `mkdlib.paper.items`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mkdlib.config import Profile, paper_config, profile_of
from mkdlib.localization import localization_variants
from mkdlib.paper import markdown
from mkdlib.paper.items import (AU_PRO, PAPER_PIXEL, PIXEL_AUROC, Item, get_item, output_name, title,
                                varied_keys)
from mkdlib.paper.numbers import PAPER
from mkdlib.runs.evaluation import add_localization
from mkdlib.runs.spec import RunResult, RunSpec
from mkdlib.runs.store import recorded_execution
from mkdlib.weights import describe_weights, weights_sha256

PIXEL_LABELS = {
    PAPER_PIXEL: "pixel AUROC (%), the paper's protocol (anomalous test images only, 1000 thresholds, opening)",
    PIXEL_AUROC: "standard pixel AUROC (%) over all test images, masks binarised at 0.5",
    AU_PRO: "AU-PRO (%) up to a false-positive rate of 0.3",
}


def _same(spec: RunSpec, config: Mapping[str, Any], keys: Iterable[str]) -> bool:
    """Whether the run used `config`'s value of every key in `keys` (an override, else the paper's value for
    the run's dataset)."""
    default = paper_config(spec.dataset)

    def value(cfg: Mapping[str, Any], key: str) -> Any:
        v = cfg[key] if key in cfg else getattr(default, key)
        return tuple(v) if isinstance(v, list) else v

    return all(value(spec.config, k) == value(config, k) for k in keys)


def row_of(item: str | Item, spec: RunSpec) -> str | None:
    """The row of item a run belongs to (same dataset, class and row-specific config), or None."""
    it = get_item(item)
    keys = {k for r in it.rows.values() for k in r.config}
    return next((name for name, row in it.rows.items() if row.dataset == spec.dataset
                 and str(row.normal_class) == str(spec.normal_class) and _same(spec, row.config, keys)), None)


def _settings_of(it: Item, spec: RunSpec) -> list[str]:
    """The settings of it a run belongs to: it has their value of every config key the item's settings vary."""
    keys = {k for s in it.settings.values() for k in s.config}
    return [name for name, s in it.settings.items() if _same(spec, s.config, keys)]


def _metric(metrics: Mapping, path: tuple[str, ...]) -> tuple[float, float, float]:
    """(final, mean, std) as fractions; mean and std NaN for a metric with one value per run."""
    node: Any = metrics
    for key in path:
        node = node[key]
    if isinstance(node, Mapping):
        return float(node["final"]), float(node.get("mean", math.nan)), float(node.get("std", math.nan))
    return float(node), math.nan, math.nan


def failure_note(result: RunResult) -> str:
    """'not run: <where the data was looked for>' for absent data, else 'failed: <the error>'."""
    text = " ".join(str(result.error).split())
    if result.error_type == "DatasetNotFoundError":
        return markdown.not_run(text.split(" To obtain it")[0])
    if result.error_type == "NotRun":  # runner.finished_runs: read, never trained
        return markdown.not_run(text)
    return f"failed: {result.error_type}: {text[:300]}"


def supported(method: str) -> bool:
    """Whether runs can make this localisation method (what RunSpec accepts)."""
    return method in localization_variants()


def add_maps(item: str | Item, results: Sequence[RunResult], *, device: str = "cpu",
             progress: bool = True) -> list[RunResult]:
    """Add to each finished run of item the maps its settings read and the run lacks
    (evaluation.add_localization; methods mkdlib does not implement are left out and noted)."""
    it, out = get_item(item), []
    for res in results:
        ours = _settings_of(it, res.spec) if res.ok and row_of(it, res.spec) is not None else []
        need = {m for name in ours for m in it.settings[name].localization}
        missing = sorted(m for m in need if supported(m) and m not in res.metrics.get("pixel", {}))
        if missing:
            try:
                res = add_localization(res.run_dir, missing, device=device, progress=progress)
            except Exception as err:  # noted as missing maps in the table; the notebook goes on
                print(f"mkdlib: adding {missing} to {res.run_dir} failed: {err}", file=sys.stderr)
        out.append(res)
    return out


RANDOM = "none (random source: a pipeline check only)"


def _weights(result: RunResult) -> str:
    """The source weights a run used (weights.describe_weights: a file by name, SHA-256 and what it is), or
    those it asked for. Runs recorded before the digest was: the digest of the file now at the recorded path."""
    if not result.ok:
        return f"{result.spec.weights or RANDOM} (requested)"
    recorded = result.metrics.get("weights")
    if not recorded:
        return RANDOM
    sha = result.metrics.get("weights_sha256") or weights_sha256(str(recorded))
    return describe_weights(str(recorded), sha)


def precision_of(result: RunResult) -> str:
    """Where a finished run computed in bf16, from the execution its spec.json recorded ("" for fp32)."""
    recorded = recorded_execution(result.run_dir) if result.run_dir is not None else {}
    if recorded.get("amp"):
        return "bf16 training and scoring"
    return "bf16 scoring" if recorded.get("bf16_inference") else ""


def _overrides(result: RunResult, exclude: set[str]) -> str:
    """The run's MKDConfig overrides outside `exclude` ("key=value, ...") and where it computed in bf16."""
    config = ", ".join(f"{k}={v!r}" for k, v in sorted(result.spec.config.items()) if k not in exclude)
    return ", ".join(t for t in (config, precision_of(result)) if t)


def _row_overrides(per_run: list[str]) -> str:
    """One row's overrides: "" when no run has any, the text when every run shares it, and otherwise
    each text with the share of runs it applies to ("bf16 training and scoring (4 of 5 runs)")."""
    texts = sorted(set(per_run), key=lambda t: (t == "", t))
    if len(texts) <= 1:
        return texts[0] if texts else ""
    return "; ".join(f"{t or 'none'} ({per_run.count(t)} of {len(per_run)} runs)" for t in texts)


def collect(item: str | Item, results: Iterable[RunResult], *, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """One row per (setting, class) with runs: final, mean, std (in %), n (runs that finished), note,
    the source weights the runs used and their config overrides (besides the keys the item varies and
    `exclude`).

    One seed: the run's final value and mean ± std over its sampled epochs. Several seeds: final and mean
    = mean over seeds of the final values, std = their std. Runs of other items are ignored.
    """
    it = get_item(item)
    exclude = varied_keys(it) | set(exclude)
    found: dict[tuple[str, str], dict[int, RunResult]] = {}
    for res in results:
        row = row_of(it, res.spec)
        for name in _settings_of(it, res.spec) if row is not None else []:
            found.setdefault((name, row), {}).setdefault(res.spec.seed, res)  # one run per seed
    out = []
    for (name, row), by_seed in sorted(found.items(), key=lambda kv: (list(it.settings).index(kv[0][0]),
                                                                       list(it.rows).index(kv[0][1]))):
        runs = list(by_seed.values())
        ok = [r for r in runs if r.ok]
        failed = [failure_note(r) for r in runs if not r.ok]
        path = it.settings[name].metric
        if path[0] == "pixel" and any(path[1] not in r.metrics.get("pixel", {}) for r in ok):
            failed += [f"not run: localisation method {path[1]!r} is not implemented (RunSpec.localization)"
                       if not supported(path[1]) else
                       f"not run: no {path[1]!r} maps in the run (call tabulation.add_maps)"] * len(ok)
            ok = []
        values = np.array([_metric(r.metrics, path) for r in ok]).reshape(-1, 3)  # (n runs, 3)
        final = mean = std = math.nan
        note = failed[0] if failed and not ok else ""
        if len(ok) == 1:
            final, mean, std = values[0]
        elif ok:
            final = mean = values[:, 0].mean()
            std = values[:, 0].std()
            note = f"mean ± std over {len(ok)} seeds"
        if failed and ok:
            note += f"; {len(failed)} of {len(runs)} runs {failed[0]}"
        out.append({"setting": name, "class": row, "final": 100 * final, "mean": 100 * mean,
                    "std": 100 * std, "n": len(ok), "note": note.lstrip("; "),
                    "weights": "; ".join(sorted({_weights(r) for r in (ok or runs)})),
                    "overrides": _row_overrides([_overrides(r, exclude) for r in runs])})
    return pd.DataFrame(out, columns=["setting", "class", "final", "mean", "std", "n", "note", "weights",
                                      "overrides"])


def tables(item: str | Item, results: Iterable[RunResult], *, profile: str,
           settings: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """Output name -> `markdown.comparison_table` (ours beside the paper) for each setting of an item,
    plus the item's means-only summary (Table 1 from Table 11). Tables carry `profile`, `weights` (the
    source weights of each row's runs) and `overrides` (their config beyond the paper's and the profile's)."""
    it, prof = get_item(item), profile_of(profile)
    profile_keys = {k for d in it.datasets for k in prof.overrides(d)}  # the profile's own, named by `profile`
    long = collect(it, results, exclude=profile_keys)
    out: dict[str, pd.DataFrame] = {}
    for name in settings if settings is not None else it.settings:
        s = it.settings[name]
        sub = long[long["setting"] == name].set_index("class")
        notes = {c: n for c, n in sub["note"].items() if n}
        df = markdown.comparison_table(it.id, sub[["final", "mean", "std"]], column=s.column, notes=notes)
        metric = PIXEL_LABELS[s.metric[-1]] + f"; maps: {s.metric[1]}" if s.metric[0] == "pixel" else df.attrs["metric"]
        if not s.compare:
            df[[c for c in ("paper", "paper_pm", "paddle", "diff") if c in df.columns]] = math.nan
        used = markdown.distinct(sub, "overrides")
        notes_below = list(it.notes) + [f"Runs with config overrides beyond the paper's protocol or computed in "
                                         f"bf16: {used} (see the overrides column and the README)."] * bool(used)
        df.attrs.update(title=_title(df.attrs["title"], s.label, prof), metric=metric, profile=prof.name,
                        setting=name, notes=notes_below)  # written under the table by markdown.to_markdown
        df["profile"] = prof.name
        df[["weights", "overrides"]] = sub[["weights", "overrides"]].reindex(df.index)
        out[output_name(it.id, name)] = df
    if it.summary:
        out[it.summary] = means_table(it.summary, {n: out[output_name(it.id, n)] for n in it.settings
                                                   if output_name(it.id, n) in out}, profile=prof.name)
    return out


def _title(base: str, label: str, prof: Profile) -> str:
    return base + (f" ({label})" if label else "") + ("" if prof.name == "paper" else f" [profile {prof.label}]")


def means_table(item: str, by_setting: Mapping[str, pd.DataFrame], *, profile: str) -> pd.DataFrame:
    """A means-only paper table (Table 1): one row per setting, its mean over the classes that every
    setting has a number for (so that the methods are compared on the same categories: with transistor's
    gradient maps but no SmoothGrad of it, every row is bottle's), else each table's own mean row."""
    t, prof = PAPER[item], profile_of(profile)
    shown = {n: df for n, df in by_setting.items() if df.attrs["column"] in t.printed_mean and "mean" in df.index}
    ran = {n: set(df.index[df["ours_final"].notna()]) - {"mean"} for n, df in shown.items()}
    some = [classes for classes in ran.values() if classes]  # settings with no run at all say "not run"
    common = sorted(set.intersection(*some)) if some else []
    rows = {}
    for name, df in shown.items():
        column = df.attrs["column"]
        r = df.loc["mean", markdown.COLUMNS].copy()
        if common and len(common) < len(ran[name]):
            r["ours_final"] = df.loc[common, "ours_final"].mean()
            r["note"] = (f"ours over {len(common)} of {len(df.index) - 1} classes ({', '.join(common)}: "
                         "those every method ran); no diff")
        r["paper"], r["paper_pm"] = t.printed_mean[column], math.nan
        r["diff"] = r["ours_final"] - r["paper"] if not r["note"] else math.nan
        label = t.column_labels.get(column, column)
        rows[label + (f" [{df.attrs['setting']}]" if df.attrs["setting"] != column else "")] = r
    out = pd.DataFrame.from_dict(rows, orient="index", columns=markdown.COLUMNS)
    out[markdown.COLUMNS[:-1]] = out[markdown.COLUMNS[:-1]].astype(float)
    out.index.name = "setting"
    out["profile"] = prof.name
    out["weights"] = "; ".join(sorted({w for df in by_setting.values() for w in df["weights"].dropna()})) or None
    out["overrides"] = "; ".join(sorted({o for df in by_setting.values() for o in df["overrides"].dropna() if o}))
    out.attrs.update(item=item, title=_title(title(item), "", prof), profile=prof.name,
                     metric=t.metric + "; ours: mean over the MVTec AD categories run",
                     notes=list(dict.fromkeys(n for df in by_setting.values() for n in markdown.table_notes(df))))
    return out


def save_tables(tabs: Mapping[str, pd.DataFrame], results_dir: str | Path) -> list[Path]:
    """Write each table as `<results_dir>/<name>.csv` and `.md`; returns the paths written."""
    return [p for name, df in tabs.items() for p in markdown.write_table(df, results_dir, name)]


def weights_used(results_dir: str | Path, results: Iterable[RunResult] = ()) -> str:
    """The source weights behind every table in results_dir (their `weights` column) and `results`."""
    seen = {_weights(r) for r in results}
    for csv in Path(results_dir).glob("*.csv"):
        column = pd.read_csv(csv).get("weights")
        seen |= set() if column is None else {w for v in column.dropna() for w in str(v).split("; ")}
    ran = {w for w in seen if not w.endswith("(requested)")}
    return "; ".join(sorted(ran or seen)) or "unknown (no runs)"


def update_index(results_dir: str | Path, *, profile: str, results: Iterable[RunResult] = ()) -> Path:
    """Regenerate `<results_dir>/README.md`: every table there, the profile, the weights the runs used."""
    commit = markdown.commit_text(Path(__file__).resolve().parent)
    return markdown.write_index(results_dir, profile=profile_of(profile).label,
                                weights=weights_used(results_dir, results), commit=commit)
