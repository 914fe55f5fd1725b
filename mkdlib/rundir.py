"""A run's identity and its directory: `RunSpec` (what defines a run; its `key()` names the folder),
the files in `root/<key>/`, their JSON, the lock, the environment record and `load_run`.

Layout: spec.json, env.json, checkpoints/, history.csv, scores.csv, calibration.json (predict's score
normalisation and map scale), metrics.json (written last: its presence marks a finished run), error.txt
after a failure, .lock while a process holds it, figures/ after `mkd evaluate --figures`.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from hashlib import sha256
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from mkdlib import __version__
from mkdlib.config import EXECUTION_FIELDS, MKDConfig, paper_config
from mkdlib.datasets import DATASET_NAMES, MVTEC_CATEGORIES
from mkdlib.datasets.factory import ALIASES, WITH_CLASS
from mkdlib.datasets.onecls import CLASS_NAMES, class_index
from mkdlib.io_utils import atomic_write_text
from mkdlib.localization import METHODS

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are still atomic file by file
    fcntl = None

FORMAT_VERSION = 1  # bump when the run directory layout or the key's recipe changes
SPEC, METRICS, ENV, HISTORY, SCORES, ERROR, LOCK = (
    "spec.json", "metrics.json", "env.json", "history.csv", "scores.csv", "error.txt", ".lock")
NOBLUR_SUFFIX = "-noblur"  # "<method>-noblur": the method's maps without the Gaussian (Tables 1 and 11)
_RESERVED_CONFIG = {"dataset": "RunSpec.dataset", "seed": "RunSpec.seed"}
_RESERVED_OPTIONS = ("root", "split", "normal_class", "seed", "download")


class RunError(RuntimeError):
    """A run directory that cannot be used: corrupt, unfinished or from an incompatible version."""


def localization_variants() -> tuple[str, ...]:
    """Every name RunSpec.localization accepts: each method, then each method without the blur."""
    return METHODS + tuple(m + NOBLUR_SUFFIX for m in METHODS)


def parse_method(name: str) -> tuple[str, bool]:
    """'gradients' -> ('gradients', True); 'gradients-noblur' -> ('gradients', False)."""
    if name in METHODS:
        return name, True
    method = name[:-len(NOBLUR_SUFFIX)] if isinstance(name, str) and name.endswith(NOBLUR_SUFFIX) else None
    if method not in METHODS:
        raise ValueError(f"unknown localization method {name!r}; valid: {list(localization_variants())}")
    return method, False


def check_methods(methods) -> tuple[str, ...]:
    """methods (a name or names) as a tuple without repeats; ValueError naming every valid name."""
    methods = (methods,) if isinstance(methods, str) else tuple(methods)
    unknown = [m for m in methods if m not in localization_variants()]
    if unknown:
        raise ValueError(f"unknown localization method(s) {unknown}; valid: {list(localization_variants())}")
    return tuple(dict.fromkeys(methods))


def canonical_json(value):
    """`value` as plain JSON types (tuples -> lists); ValueError for NaN or infinity (spec.json is
    strict JSON), TypeError if it is not JSON-serialisable."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except ValueError:
        raise ValueError(f"not a finite JSON value (NaN or infinity): {value!r}") from None


@dataclass(frozen=True)
class RunSpec:
    """What defines a run. `key()` hashes all of it (data_root included: None keeps keys portable)
    except `localization`: the maps to evaluate are an evaluation of the trained run, added to it
    when asked for (`add_localization`), never a reason to train again."""

    dataset: str
    normal_class: int | str | None = None  # class index/name (mnist, fashionmnist, cifar10) or MVTec category
    config: dict = field(default_factory=dict)  # MKDConfig overrides on top of paper_config(dataset)
    seed: int = 0  # training seed and split seed (headct, brainmri, folder, synthetic)
    data_root: str | None = None  # None -> $MKDLIB_DATA (the datasets' own rule)
    weights: str | None = "imagenet"  # Source weights ("imagenet" follows $MKDLIB_VGG16_WEIGHTS)
    localization: tuple[str, ...] = ()  # localization_variants() whose pixel metrics are computed (masks)
    max_train: int | None = None  # deterministic subsets (smoke profiles)
    max_test: int | None = None  # the test subset keeps both normal and anomalous images
    dataset_options: dict = field(default_factory=dict)  # passed to get_dataset

    def __post_init__(self):
        name = ALIASES.get(str(self.dataset).lower(), str(self.dataset).lower())
        if name not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid: {list(DATASET_NAMES)}")
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("dataset", name)
        cls = self.normal_class
        if name in CLASS_NAMES:
            cls = class_index(name, cls) if cls is not None else None  # "cat" and 3 are the same run
        if name in WITH_CLASS and cls is None:
            valid = CLASS_NAMES.get(name, MVTEC_CATEGORIES)
            raise ValueError(f"{name} needs normal_class; valid: {list(valid)}")
        if name not in WITH_CLASS and cls is not None:
            raise ValueError(f"{name} has a fixed normal class; leave normal_class=None (got {cls!r})")
        if name == "mvtec" and not (isinstance(cls, str) and cls):
            raise ValueError(f"mvtec: normal_class is a category name, got {cls!r}")
        set_("normal_class", cls)
        set_("config", self._check_config(name, dict(self.config)))
        options = canonical_json(dict(self.dataset_options))
        bad = [k for k in options if k in _RESERVED_OPTIONS]
        if bad:
            raise ValueError(f"dataset_options {bad} are set by the RunSpec itself "
                             "(data_root, seed, normal_class)")
        set_("dataset_options", options)
        set_("localization", check_methods(self.localization))
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        set_("seed", int(self.seed))
        for k, low in (("max_train", 1), ("max_test", 2)):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low):
                raise ValueError(f"{k} must be None or an integer >= {low}, got {v!r}")
            set_(k, None if v is None else int(v))
        for k in ("data_root", "weights"):  # paths made absolute: the key must not depend on the cwd
            v = getattr(self, k)
            set_(k, None if v is None else v if v == "imagenet" else str(Path(v).expanduser().absolute()))

    @staticmethod
    def _check_config(dataset: str, overrides: dict) -> dict:
        defaults = {f.name: f.default for f in fields(MKDConfig)}
        for k in overrides:
            if k in _RESERVED_CONFIG:
                raise ValueError(f"config[{k!r}] is set by {_RESERVED_CONFIG[k]}, not by a config override")
            if k not in defaults:
                valid = sorted(set(defaults) - set(_RESERVED_CONFIG))
                raise ValueError(f"unknown config field {k!r}; valid: {valid}")
        out = {}
        for k, v in canonical_json(overrides).items():  # 1 and 1.0 are the same learning rate
            if isinstance(defaults[k], float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            out[k] = v
        paper_config(dataset, **out)  # invalid values fail here, not hours later
        return out

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "normal_class": self.normal_class, "config": dict(self.config),
                "seed": self.seed, "data_root": self.data_root, "weights": self.weights,
                "localization": list(self.localization), "max_train": self.max_train,
                "max_test": self.max_test, "dataset_options": dict(self.dataset_options)}

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown RunSpec field(s) {unknown}; valid: {sorted(known)}")
        d = dict(d)
        if "localization" in d and not isinstance(d["localization"], str):
            d["localization"] = tuple(d["localization"])
        return cls(**d)

    def trained(self) -> RunSpec:
        """The spec of the training run alone (no localisation): what `key()` names and spec.json holds."""
        return replace(self, localization=())

    def key(self, *, legacy: bool = False) -> str:
        """16 hex digits of sha256 over the canonical JSON of the trained spec and the run format
        version (localization hashed as empty, as keys always had it). The execution settings among
        the config overrides (precision, layout, caching: EXECUTION_FIELDS) are left out, so that an
        experiment has one key on every device; a spec without such overrides keeps the key it always
        had. legacy=True: the key mkdlib gave before 2026-12, with them hashed (see `upgrade_root`)."""
        d = {"format": FORMAT_VERSION, **self.trained().to_dict()}
        if not legacy:
            d["config"] = {k: v for k, v in d["config"].items() if k not in EXECUTION_FIELDS}
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return sha256(text.encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.key())

    def label(self) -> str:
        """Short human-readable name, e.g. 'mnist class 3 seed 0'."""
        what = "" if self.normal_class is None else f" {self.normal_class}"
        return f"{self.dataset}{what} seed {self.seed}"

    def mkd_config(self) -> MKDConfig:
        """The resolved configuration: paper_config(dataset) + overrides, seed, and the dataset
        options that are also config fields (image_size, augment)."""
        cfg = paper_config(self.dataset, **self.config, seed=self.seed)
        for k in ("image_size", "augment"):
            if k in self.dataset_options:
                if k in self.config and self.config[k] != self.dataset_options[k]:
                    raise ValueError(f"{k} is {self.config[k]!r} in config but {self.dataset_options[k]!r} "
                                     "in dataset_options")
                cfg = replace(cfg, **{k: self.dataset_options[k]})
        return cfg


@dataclass
class RunResult:
    spec: RunSpec
    run_dir: Path | None
    metrics: dict | None
    error: str | None = None
    error_type: str | None = None  # e.g. "DatasetNotFoundError": notebooks show "not run: <error>"

    @property
    def ok(self) -> bool:
        return self.error is None and self.metrics is not None


class RunLock:
    """Exclusive lock on run_dir/.lock (fcntl.flock, freed by the OS if the holder dies): a second
    process asking for the same run waits for the first, then finds it finished."""

    def __init__(self, run_dir: Path, *, quiet: bool = False):
        self.path, self.quiet, self.fd = Path(run_dir) / LOCK, quiet, None

    def __enter__(self) -> RunLock:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not self.quiet:
                    print(f"mkdlib: waiting for another process running {self.path.parent}", file=sys.stderr)
                fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if fcntl is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


@contextmanager
def lock_if_free(run_dir: Path, *, create: bool):
    """Yields whether run_dir's lock is free, holding it (exclusively, without waiting) until the block
    ends. `rundir.RunLock` waits for the holder instead, which is right for training, wrong for a listing
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
        float(metrics["threshold"])
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
        raise RunError(f"{run_dir / SPEC}: key {d.get('key')!r} does not match its spec ({spec.key()}); "
                       "it comes from an incompatible mkdlib version")
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


def write_spec(run_dir: Path, spec: RunSpec, cfg: MKDConfig) -> None:
    """Write spec.json, or check that the one there is this spec with this resolved configuration."""
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
                                "spec": spec.to_dict(), "config": cfg.to_dict()})


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


def _git_commit() -> dict:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        if commit.returncode != 0:
            return {"git_commit": None}
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None}


def environment(device: str | torch.device) -> dict:
    """Versions, device and git commit: what produced a run (env.json)."""
    versions = {}
    for name in ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "scikit-image", "pillow", "pandas"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        platform.processor() or platform.machine()
    return {"mkdlib": __version__, "format": FORMAT_VERSION, "python": platform.python_version(),
            "platform": platform.platform(), "packages": versions, "device": str(device), "device_name": name,
            "torch_threads": torch.get_num_threads(), "cuda": torch.version.cuda, **_git_commit(),
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
