"""A run's directory: the files in `root/<key>/` (`key()` of its `mkdlib.runs.spec.RunSpec`), their
JSON, the lock, the environment record and `load_run`.

Layout: spec.json, env.json (its "created": the first process's time), checkpoints/, history.csv, scores.csv,
cloner.pt (the final cloner's weights, its SHA-256 in metrics.json), metrics.json (written last: its presence
marks a finished run), calibration.json (predict's threshold, score normalisation and map scale, computed
when first needed), error.txt after a failure (the error on its first line, then the traceback), .lock
while a process holds it, figures/ after `mkd evaluate --figures`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
import warnings
from collections.abc import Iterable
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

from mkdlib import __version__
from mkdlib.checkpoints import missing_cloners
from mkdlib.config import EXECUTION_FIELDS, Execution, MKDConfig
from mkdlib.hardware import host_info
from mkdlib.io_utils import atomic_write_text, git_commit
from mkdlib.runs.spec import FORMAT_VERSION, RunResult, RunSpec

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are still atomic file by file
    fcntl = None

SPEC, METRICS, ENV, HISTORY, SCORES, ERROR, LOCK, CLONER = (
    "spec.json", "metrics.json", "env.json", "history.csv", "scores.csv", "error.txt", ".lock", "cloner.pt")


class RunError(RuntimeError):
    """A run directory that cannot be used: corrupt, unfinished or from an incompatible version."""


@contextmanager
def run_lock(run_dir: Path, *, quiet: bool = False):
    """Exclusive lock on run_dir/.lock (fcntl.flock, freed by the OS if the holder dies): a second
    process asking for the same run waits for the first, then finds it finished."""
    fd = os.open(Path(run_dir) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not quiet:
                    print(f"mkdlib: waiting for another process running {Path(run_dir)}", file=sys.stderr)
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # frees the lock


@contextmanager
def lock_if_free(run_dir: Path, *, create: bool):
    """Yields whether run_dir's lock is free, holding it (exclusively, without waiting) until the block
    ends. `run_lock` waits for the holder instead, which is right for training, wrong for a listing
    or a removal. create=False tests only an existing .lock file (so a listing writes nothing); without
    fcntl (Windows) every lock reads as free."""
    path = run_dir / LOCK
    if fcntl is None or not (create or path.is_file()):
        yield True
        return
    fd = os.open(path, os.O_RDONLY | (os.O_CREAT if create else 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # frees the lock


class CorruptMetrics(RunError):
    """metrics.json is unreadable: the run is re-evaluated from its checkpoints, nothing is deleted."""


def read_json(path: Path, advice: str | None = None) -> dict:
    """A JSON object from path; RunError naming the file and what to do (`advice`, default: the
    directory cannot be used and is to be re-run into a new results folder)."""
    advice = advice or f"re-run it into a new results folder (or move {path.parent} aside)"
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is unreadable or corrupt ({type(err).__name__}); {advice}") from None
    if not isinstance(d, dict):
        raise RunError(f"{path} is corrupt (not a JSON object); {advice}")
    return d


def write_json(path: Path, d: dict) -> None:
    atomic_write_text(path, json.dumps(d, indent=1, sort_keys=False) + "\n")


REEVALUATE = "`mkd evaluate {run}` re-evaluates it from its checkpoints (nothing is deleted)"


def read_metrics(run_dir: Path) -> dict:
    """metrics.json of a run; CorruptMetrics (with non-destructive advice) when it is unusable."""
    path = run_dir / METRICS
    advice = REEVALUATE.format(run=run_dir)
    try:
        metrics = read_json(path, advice)
        img = metrics["image_auroc"]
        img["per_epoch"] = {int(e): float(v) for e, v in img["per_epoch"].items()}
    except RunError as err:
        raise CorruptMetrics(str(err)) from None
    except (KeyError, TypeError, ValueError, AttributeError):
        raise CorruptMetrics(f"{path} lacks fields this mkdlib needs (corrupt, or an incompatible version); "
                             f"{advice}") from None
    return metrics


def read_spec(run_dir: Path) -> tuple[RunSpec, dict]:
    """The spec of run_dir/spec.json and the whole file; RunError if another format or key."""
    d = read_json(run_dir / SPEC)
    if d.get("format") != FORMAT_VERSION:
        raise RunError(f"{run_dir} was written by mkdlib run format {d.get('format')!r} (mkdlib "
                       f"{d.get('mkdlib', '?')}); this mkdlib {__version__} reads format {FORMAT_VERSION}: "
                       "re-run it into a new results folder")
    try:
        spec = RunSpec.from_dict(d["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{run_dir / SPEC} holds a spec this mkdlib cannot read ({err}); re-run it into a "
                       "new results folder") from None
    if d.get("key") not in (spec.key(), spec.key(legacy=True)):
        raise RunError(f"{run_dir / SPEC} does not match its key {d.get('key')} (its spec's key is {spec.key()}): "
                       f"it was edited or belongs to another run; restore the run's own {SPEC} (e.g. `git checkout` "
                       f"it), or move {run_dir} aside and run it again")
    return spec, d


def upgrade_root(root: str | Path) -> list[tuple[str, str]]:
    """Rename the run directories in `root` named by a legacy key (an execution setting such as amp
    among their config overrides, hashed by mkdlib before 2026-12) to their key, rewriting spec.json's key;
    nothing else changes. Skipped with a warning: a run another process holds, or one whose new name
    is taken. Returns the (old, new) names moved; reads only spec.json files, so it is cheap."""
    root, moved = Path(root).expanduser(), []
    for spec_file in sorted(root.glob(f"*/{SPEC}")) if root.is_dir() else []:
        run_dir = spec_file.parent
        try:
            spec, d = read_spec(run_dir)
        except RunError:
            continue  # unusable: left for the listing or the run to report
        new = root / spec.key()
        if d["key"] == spec.key() or run_dir.name != d["key"]:
            continue
        with lock_if_free(run_dir, create=False) as free:
            if not free or new.exists():
                why = "another process holds it" if not free else f"{new} exists"
                warnings.warn(f"mkdlib: run {run_dir} keeps its legacy key ({why})", stacklevel=2)
                continue
            write_json(spec_file, {**d, "key": spec.key()})
            run_dir.rename(new)
        moved.append((run_dir.name, new.name))
    return moved


def check_folder(path: str | Path, what: str = "results folder", option: str = "--results") -> Path:
    """path, expanded; ValueError when it or a folder above it is a file (mkdir would fail with a bare
    [Errno 20]): a folder is needed there, created if absent."""
    path = Path(path).expanduser()
    file = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if file is not None:
        where = "is a file" if file == path else f"is inside {file}, which is a file"
        raise ValueError(f"{what} {path} {where}: pass {option} DIR, a folder (created if absent)")
    return path


@functools.lru_cache(maxsize=None)
def upgrade_once(root: Path) -> None:
    """upgrade_root once per folder and process (runs read and written there afterwards have their keys)."""
    upgrade_root(root)


def write_spec(run_dir: Path, spec: RunSpec, cfg: MKDConfig, execution: Execution) -> None:
    """Write spec.json (the spec, its configuration and the execution the run starts with), or check that
    the one there is this spec with this configuration."""
    spec = spec.trained()
    if (run_dir / SPEC).is_file():
        old, d = read_spec(run_dir)
        if old.key() != spec.key():
            raise RunError(f"{run_dir} holds a different run ({old.label()}); use another results folder")
        if not isinstance(d.get("config"), dict) or not cfg.matches(d["config"]):
            raise RunError(f"{run_dir} was started with another resolved configuration (an earlier mkdlib "
                           "version's defaults); delete it or use another results folder")
        return
    write_json(run_dir / SPEC, {"format": FORMAT_VERSION, "key": spec.key(), "mkdlib": __version__,
                                "spec": spec.to_dict(), "config": cfg.to_dict(), "execution": execution.to_dict()})


def recorded_execution(run_dir: Path) -> dict:
    """The execution settings a run started with, from its spec.json ({} if unreadable); older records
    mix them into "config"."""
    try:
        d = read_json(run_dir / SPEC)
    except RunError:
        return {}
    return d.get("execution") or {k: v for k, v in d.get("config", {}).items() if k in EXECUTION_FIELDS}


def load_run(run_dir: str | Path) -> RunResult:
    """The spec and metrics of a run directory; metrics None (and `error` set) if it is unfinished."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / SPEC).is_file():
        what = "does not exist" if not run_dir.exists() else "is not an mkdlib run directory (no spec.json)"
        raise RunError(f"{run_dir} {what}")
    spec, _ = read_spec(run_dir)
    if not (run_dir / METRICS).is_file():
        return RunResult(spec, run_dir, None, f"run not finished (no {METRICS} in {run_dir})", "Unfinished")
    return RunResult(spec, run_dir, read_metrics(run_dir))


def complete(run_dir: Path, cfg: MKDConfig) -> bool:
    """A finished run whose record is usable as it is: readable metrics.json, no lost sampled cloner
    (a record without checkpoints/, as committed, has none to lose)."""
    if not (run_dir / METRICS).is_file():
        return False
    try:
        read_metrics(run_dir)
        return not missing_cloners(run_dir / "checkpoints", cfg)
    except (RunError, RuntimeError):
        return False  # corrupt metrics are re-evaluated; an unreadable last.pt is reported by run()


def is_finished(spec: RunSpec, root: str | Path) -> bool:
    """Whether spec's run is finished in root (its record usable as it is); False if it cannot tell."""
    try:
        return complete(Path(root).expanduser() / spec.key(), spec.mkd_config())
    except ValueError:
        return False


def finished_runs(specs: Iterable[RunSpec], results_root: str | Path) -> list[RunResult]:
    """The specs' finished runs in results_root, read as they are and never trained; the others as
    results with error_type "NotRun" (a table says "not run: ..."). For reading another profile's runs,
    or planning, without starting hours of training."""
    root = Path(results_root).expanduser()
    upgrade_once(root.resolve())
    return [load_run(root / spec.key()) if is_finished(spec, root) else
            RunResult(spec, None, None, f"no finished run {spec.key()} in {root}", "NotRun") for spec in specs]


def environment(device: str | torch.device) -> dict:
    """Versions, device and git commit: what produced a run (env.json)."""
    versions = {}
    for name in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "scikit-image", "pillow", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.device(device)
    host = host_info()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else host["cpu"]
    sha, dirty = git_commit(Path(__file__).resolve().parent)
    return {"mkdlib": __version__, "format": FORMAT_VERSION, "python": host["python"],
            "platform": host["platform"], "packages": versions, "device": str(device), "device_name": name,
            "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda, "git_commit": sha,
            **({"git_dirty": dirty} if sha else {}), "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_environment(run_dir: Path, device: str | torch.device) -> None:
    """env.json: what this process computes the run with (`environment`), and when the run was created: the
    first env.json's time, kept by every process that resumes or re-evaluates the run."""
    env = environment(device)
    try:
        old = read_json(run_dir / ENV)
    except RunError:
        old = {}
    write_json(run_dir / ENV, {**env, "created": old.get("created") or old.get("written") or env["written"]})
