"""The runs of a results folder as a table (`mkd runs`) and their removal (`mkd runs --rm KEY`).

Each `<results>/<key>/` is read with the run directory's own helpers (`mkdlib.runs.store`); an unreadable
one is listed as `corrupt` with the reason, never a crash, so that one bad folder does not hide the rest; a
failed run with its error's first line; a finished run whose last.pt is unreadable as finished, with a note.
Listing writes nothing: a lock is only tested, and only where a `.lock` file already exists.
"""

from __future__ import annotations

import os
import re
import shutil
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

from mkdlib.checkpoints import LAST, CheckpointError, load_checkpoint, trained_epochs
from mkdlib.config import PROFILES
from mkdlib.datasets import DATASET_NAMES
from mkdlib.datasets.factory import ALIASES
from mkdlib.datasets.onecls import CLASS_NAMES
from mkdlib.localization import localization_variants
from mkdlib.runs.spec import RunSpec
from mkdlib.runs.store import (ENV, ERROR, LOCK, METRICS, REEVALUATE, SPEC, RunError, lock_if_free, read_json,
                               read_metrics, read_spec, upgrade_root)

COLUMNS = ("key", "dataset", "class", "profile", "epochs", "status", "image AUROC", "pixel AUROC", "created")
STATUSES = ("finished", "training", "failed", "corrupt", "locked")
FAST_PROFILES = ("fast", "fast-v1")
PROFILE_NAMES = ("paper", "smoke", *FAST_PROFILES, "custom")
_KEY_LIKE = re.compile(r"[0-9a-f]{16}")  # a folder so named without spec.json is a broken run, not a stranger


def profile_name(spec: RunSpec) -> str:
    """Which profile a run looks like; spec.json records none, so this is derived from the spec alone:
    "paper" when it has no config overrides, no dataset options and no max_train/max_test (the paper's
    settings for its dataset, whole data); "smoke" when max_train or max_test is set or its epochs are the
    smoke profile's; "fast" (or "fast-v1") when its overrides are that profile's for its dataset; "custom"
    otherwise (any other override, e.g. a shorter schedule). The spec's execution settings (precision,
    layout) do not change what a run trains and are not looked at."""
    if not spec.config and not spec.dataset_options and spec.max_train is None and spec.max_test is None:
        return "paper"
    smoke = PROFILES["smoke"]
    if spec.max_train is not None or spec.max_test is not None or spec.config.get("epochs") == smoke.config["epochs"]:
        return "smoke"
    for name in FAST_PROFILES:
        if not spec.dataset_options and spec.config == PROFILES[name].overrides(spec.dataset):
            return name
    return "custom"


def _locked(run_dir: Path) -> bool:
    """Whether another process holds run_dir's lock (training or evaluating it now)."""
    try:
        with lock_if_free(run_dir, create=False) as free:
            return not free
    except OSError:  # an unreadable .lock: the listing reports the run, not the lock
        return False


def _created(run_dir: Path) -> datetime:
    """When the run was started: env.json's "created" (its first "written", kept by every process that
    resumes the run; kept by a copy or a git checkout), or "written" in an older env.json, else the
    modification time of spec.json (else of the folder), as a local time with its UTC offset."""
    try:
        env = read_json(run_dir / ENV)
        return datetime.strptime(env.get("created") or env["written"], "%Y-%m-%dT%H:%M:%S%z")
    except (RunError, KeyError, TypeError, ValueError):
        pass
    path = run_dir / SPEC if (run_dir / SPEC).is_file() else run_dir
    return datetime.fromtimestamp(path.stat().st_mtime).astimezone()


def _state(run_dir: Path, epochs: int, locked: bool) -> tuple[str, dict | None, str | None]:
    """(status, metrics, reason): finished with readable metrics.json (noting an unreadable last.pt, which
    only training further needs), else failed (error.txt; its first line the reason) unless another process
    holds the run (training it again), else training e/N from checkpoints/last.pt. Raises RunError for
    corrupt metrics or an unfinished run's unreadable last.pt."""
    last = run_dir / "checkpoints" / LAST
    if (run_dir / METRICS).is_file():
        metrics = read_metrics(run_dir)
        try:
            if last.is_file():
                load_checkpoint(last, mmap=True)
        except CheckpointError as err:
            return "finished (last.pt unreadable: only needed to train further)", metrics, str(err)
        return "finished", metrics, None
    if (run_dir / ERROR).is_file() and not locked:
        return "failed", None, _failure(run_dir / ERROR)
    try:
        return f"training {trained_epochs(run_dir / 'checkpoints')}/{epochs}", None, None
    except CheckpointError as err:
        raise RunError(str(err)) from None


def _failure(path: Path) -> str:
    """The error of a failed run: error.txt's first line (runner._failures_recorded), or the exception line
    ending an older error.txt that holds the traceback alone."""
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError as err:
        return f"{path} is unreadable ({err.strerror})"
    if lines and lines[0].startswith("Traceback"):
        lines = [line for line in lines if not line.startswith(" ")][-1:]
    return " ".join(lines[0].split()) if lines else f"{path} is empty"


def describe(run_dir: Path) -> dict:
    """One row of the table for run_dir (numbers in %); a corrupt run gets status "corrupt" and `reason`;
    `locked` says whether another process holds the run now (its status then ends in "(locked)")."""
    row = {"key": run_dir.name, "dataset": None, "class": None, "profile": None, "epochs": None,
           "status": "corrupt", "image_auroc": None, "pixel_auroc": None, "created": None,
           "locked": _locked(run_dir), "run_dir": str(run_dir), "reason": None}
    try:
        row["created"] = _created(run_dir).isoformat(timespec="seconds")
        if not (run_dir / SPEC).is_file():
            raise RunError(f"{run_dir} has no {SPEC} (the run stopped before it began); "
                           f"`mkd runs --rm {run_dir.name}` removes it")
        spec, _ = read_spec(run_dir)
        if spec.key() != run_dir.name:
            raise RunError(f"{run_dir} holds run {spec.key()}: move it back to <results>/{spec.key()}")
        epochs = spec.mkd_config().epochs
        row.update({"dataset": spec.dataset, "class": spec.normal_class, "profile": profile_name(spec),
                    "epochs": epochs})
        row["status"], metrics, row["reason"] = _state(run_dir, epochs, row["locked"])
        if metrics is not None:  # in %; the pixel AUROC of the run's first method in localization_variants() order
            img, pixel = metrics["image_auroc"], metrics.get("pixel") or {}
            method = next((m for m in localization_variants() if m in pixel), None)
            image = {k: round(100 * img[k], 2) for k in ("final", "mean", "std")}
            px = None if method is None else {"method": method, "auroc": round(100 * pixel[method]["pixel_auroc"], 2)}
            row.update(image_auroc=image, pixel_auroc=px)
    except (RunError, OSError, ValueError) as err:
        row.update(status="corrupt", reason=" ".join(str(err).split()))
    except (KeyError, TypeError, AttributeError):  # a pixel entry read_metrics does not check
        row.update(status="corrupt", reason=f"{run_dir / METRICS} lacks fields this mkdlib needs; "
                   f"{REEVALUATE.format(run=run_dir)}")
    if row["locked"]:
        row["status"] += " (locked)"
    return row


def results_root(path: str | Path) -> Path:
    """The results folder, checked to exist; RunError saying how to name another one."""
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is a file" if root.exists() else "does not exist"
        raise RunError(f"results folder {root} {what}; pass --results DIR (or set $MKDLIB_RESULTS)")
    upgrade_root(root)
    return root


def _is_run_dir(path: Path) -> bool:
    """A folder holding spec.json, or named like a run key (a run that stopped before writing it)."""
    return path.is_dir() and not path.is_symlink() and ((path / SPEC).is_file() or bool(_KEY_LIKE.fullmatch(path.name)))


def _has_class(row: dict, wanted: str) -> bool:
    """Whether the row's normal class is `wanted`, by index or by name (mnist 3 is "3" and "three")."""
    cls = row["class"]
    if cls is None:
        return False
    names = {str(cls)}
    if isinstance(cls, int) and row["dataset"] in CLASS_NAMES:
        names.add(CLASS_NAMES[row["dataset"]][cls])
    return wanted.lower() in {n.lower() for n in names}


def _check_choice(what: str, value: str | None, valid: tuple[str, ...]) -> None:
    if value is not None and value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {list(valid)}")


def list_runs(root: str | Path, *, dataset: str | None = None, normal_class: str | None = None,
              status: str | None = None, profile: str | None = None) -> list[dict]:
    """The rows (see `describe`) of the runs in root that pass every filter given, oldest first.
    status is the status's first word (finished, training, failed, corrupt) or "locked"."""
    _check_choice("status", status, STATUSES)
    _check_choice("profile", profile, PROFILE_NAMES)
    if dataset is not None:
        canonical = ALIASES.get(dataset.lower(), dataset.lower())
        if canonical not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {dataset!r} for --dataset; valid: {list(DATASET_NAMES)}")
        dataset = canonical
    rows = [describe(d) for d in sorted(results_root(root).iterdir()) if _is_run_dir(d)]
    keep = [r for r in rows
            if (dataset is None or r["dataset"] == dataset)
            and (normal_class is None or _has_class(r, normal_class))
            and (status is None or status == r["status"].split()[0] or (status == "locked" and r["locked"]))
            and (profile is None or r["profile"] == profile)]
    return sorted(keep, key=lambda r: (r["created"] is None, r["created"] or "", r["key"]))


def _cells(row: dict) -> list[str]:
    img, px = row["image_auroc"], row["pixel_auroc"]
    return [row["key"], row["dataset"] or "", "" if row["class"] is None else str(row["class"]),
            row["profile"] or "", "" if row["epochs"] is None else str(row["epochs"]), row["status"],
            f"{img['final']:.2f} ({img['mean']:.2f} +- {img['std']:.2f})" if img else "",
            f"{px['method']} {px['auroc']:.2f}" if px else "", row["created"] or ""]


def format_table(rows: list[dict]) -> str:
    """A plain-text table (image AUROC: final (mean +- std over the sampled cloners), in %), then one
    line per run with a reason (corrupt, failed, or finished with a note) naming its folder and what is wrong."""
    import pandas as pd

    table = pd.DataFrame([_cells(r) for r in rows], columns=list(COLUMNS)).to_string(index=False)
    notes = [f"{r['status'].split()[0]} {r['run_dir']}: {r['reason']}" for r in rows if r["reason"]]
    return "\n".join([table, *notes])


def _checked_run_dir(root: Path, key: str) -> Path:
    """root/key, checked to be a run directory of root that may be removed; RunError otherwise."""
    run_dir = root / key
    if key != Path(key).name or key in ("", ".", "..") or not _is_run_dir(run_dir):
        raise RunError(f"no run {key!r} in results folder {root}; `mkd runs --results {root}` lists its keys")
    try:
        spec, _ = read_spec(run_dir)
    except RunError:
        return run_dir  # a corrupt run (listed as such) may be removed: it is a run folder all the same
    if spec.key() != key:
        raise RunError(f"{run_dir} holds run {spec.key()}, not {key}; move it back to <results>/{spec.key()} "
                       "before removing it")
    return run_dir


def remove_runs(root: str | Path, keys: list[str]) -> list[Path]:
    """Remove the run directories root/<key>; every key is checked, and every lock taken, before
    anything is removed, so an unknown key, a folder this process may not change (read-only) or a run
    another process holds removes nothing."""
    root = results_root(root)
    run_dirs = list(dict.fromkeys(_checked_run_dir(root, k) for k in keys))
    for run_dir in run_dirs:
        for folder in (run_dir.parent, run_dir):  # a read-only folder or file system
            if not os.access(folder, os.W_OK | os.X_OK):
                raise RunError(f"cannot remove run {run_dir}: {folder} is not writable here (read-only); make it "
                               "writable (or remove the run as its owner), nothing was removed")
    with ExitStack() as locks:
        for run_dir in run_dirs:
            if not locks.enter_context(lock_if_free(run_dir, create=True)):
                raise RunError(f"run {run_dir} is in use by another process (its {LOCK} is held); "
                               "wait for it to finish or stop it, then remove it")
        for run_dir in run_dirs:
            try:
                shutil.rmtree(run_dir)
            except OSError as err:  # rmtree's error names a file without its folder
                raise RunError(f"cannot remove run {run_dir} ({err.strerror or err}: {err.filename}); make it "
                               f"writable, then run `mkd runs --rm {run_dir.name}` again") from None
    return run_dirs
