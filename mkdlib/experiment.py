"""Runs: one (dataset, normal class, configuration, seed) trained, evaluated and cached on disk.

`run(spec, root)` writes `root/<spec.key()>/` (spec.json, env.json, checkpoints/, history.csv,
scores.csv, metrics.json last); a finished run is never recomputed and an interrupted one resumes
from its last checkpoint. `run_many` spreads specs over any concurrent.futures Executor (a local
process pool, or a Dask cluster through `distributed.Client.get_executor()`).

Each run also stores a decision threshold for new images (predict.py): the 99th percentile of the
final cloner's scores on its own training images.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, fields, replace
from hashlib import sha256
from importlib import metadata
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mkdlib import __version__
from mkdlib.config import MKDConfig, paper_config
from mkdlib.datasets import DATASET_NAMES, MVTEC_CATEGORIES, get_dataset
from mkdlib.datasets.factory import ALIASES, WITH_CLASS
from mkdlib.datasets.onecls import CLASS_NAMES, class_index
from mkdlib.features import image_loader
from mkdlib.io_utils import atomic_write_text
from mkdlib.localization import METHODS, SMOOTHGRAD, SMOOTHGRAD_REFERENCE, localize
from mkdlib.metrics import au_pro, paper_pixel_auroc, pixel_auroc
from mkdlib.models import Cloner, Source
from mkdlib.scoring import evaluate_checkpoints, score, score_loss
from mkdlib.train import LAST, build, cloner_path, fit, load_checkpoint, seed_everything, write_history

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are still atomic file by file
    fcntl = None

FORMAT_VERSION = 1  # bump when the run directory layout or the key's recipe changes
THRESHOLD_PERCENTILE = 99.0  # decision threshold: this percentile of the training images' scores
SPEC, METRICS, ENV, HISTORY, SCORES, ERROR, LOCK = (
    "spec.json", "metrics.json", "env.json", "history.csv", "scores.csv", "error.txt", ".lock")
_RESERVED_CONFIG = {"dataset": "RunSpec.dataset", "seed": "RunSpec.seed"}
_RESERVED_OPTIONS = ("root", "split", "normal_class", "seed", "download")
_BUILD_LOCK = threading.Lock()  # seeding + init use torch's global RNG: one run at a time per process


class RunError(RuntimeError):
    """A run directory that cannot be used: corrupt, unfinished or from an incompatible version."""


def _canonical_json(value):
    """`value` as plain JSON types (tuples -> lists); TypeError if it is not JSON-serialisable."""
    return json.loads(json.dumps(value))


@dataclass(frozen=True)
class RunSpec:
    """What defines a run. `key()` hashes all of it (data_root included: None keeps keys portable)."""

    dataset: str
    normal_class: int | str | None = None  # class index/name (mnist, fashionmnist, cifar10) or MVTec category
    config: dict = field(default_factory=dict)  # MKDConfig overrides on top of paper_config(dataset)
    seed: int = 0  # training seed and split seed (headct, brainmri, folder, synthetic)
    data_root: str | None = None  # None -> $MKDLIB_DATA (the datasets' own rule)
    weights: str | None = "imagenet"  # Source weights ("imagenet" follows $MKDLIB_VGG16_WEIGHTS)
    localization: tuple[str, ...] = ()  # methods whose pixel metrics are computed when masks exist
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
        options = _canonical_json(dict(self.dataset_options))
        bad = [k for k in options if k in _RESERVED_OPTIONS]
        if bad:
            raise ValueError(f"dataset_options {bad} are set by the RunSpec itself "
                             "(data_root, seed, normal_class)")
        set_("dataset_options", options)
        methods = (self.localization,) if isinstance(self.localization, str) else tuple(self.localization)
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown localization method(s) {unknown}; valid: {list(METHODS)}")
        set_("localization", tuple(dict.fromkeys(methods)))
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
        for k, v in _canonical_json(overrides).items():  # 1 and 1.0 are the same learning rate
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

    def key(self) -> str:
        """16 hex digits of sha256 over the canonical JSON of the spec and the run format version."""
        text = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True, separators=(",", ":"))
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


# ----------------------------------------------------------------------------------------- data

class Subset(Dataset):
    """Items `indices` of an mkdlib dataset, keeping labels / masks / deterministic; items of a
    deterministic dataset are kept in memory (the base is then built without its own cache)."""

    def __init__(self, base: Dataset, indices: np.ndarray):
        self.base, self.indices = base, np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(base.labels)[self.indices]
        self.has_masks = base.has_masks
        self.paths = [base.paths[i] for i in self.indices]
        self._items = [base[int(i)] for i in self.indices] if self.deterministic else None

    @property
    def deterministic(self) -> bool:
        return getattr(self.base, "deterministic", True)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = dict(self._items[i]) if self._items is not None else self.base[int(self.indices[i])]
        item["index"] = i
        return item

    @property
    def masks(self) -> np.ndarray | None:
        if not self.has_masks:
            return None
        return np.stack([self[i]["mask"][0].numpy() for i in range(len(self))]).astype(np.float32)


def _spread(idx: np.ndarray, k: int) -> np.ndarray:
    """k indices spread evenly over idx (deterministic, distinct for k <= len(idx))."""
    return idx[(np.arange(k) * len(idx)) // k] if k > 0 else idx[:0]


def subset_indices(labels: np.ndarray, n: int) -> np.ndarray:
    """n indices spread over the data, normal and anomalous images in proportion, >= 1 of each."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels != 0)
    if len(normal) == 0 or len(anomalous) == 0:
        return _spread(np.arange(len(labels)), n)
    n_anom = int(np.clip(round(n * len(anomalous) / len(labels)), 1, min(n - 1, len(anomalous))))
    n_norm = min(n - n_anom, len(normal))
    return np.sort(np.concatenate([_spread(normal, n_norm), _spread(anomalous, n - n_norm)]))


def load_data(spec: RunSpec, cfg: MKDConfig | None = None, *, split: str, augment: bool | None = None):
    """The (subset of the) train or test split a run uses."""
    cfg = cfg or spec.mkd_config()
    options = {**cfg.extra, **spec.dataset_options}
    options.pop("image_size", None)
    options.pop("augment", None)
    limit = spec.max_train if split == "train" else spec.max_test
    if limit is not None:
        options.setdefault("cache", False)  # the Subset keeps its own items
    augment = cfg.augment if augment is None else augment
    data = get_dataset(spec.dataset, spec.data_root, split=split, normal_class=spec.normal_class,
                       seed=spec.seed, image_size=cfg.image_size, augment=augment and split == "train",
                       **options)
    return data if limit is None else Subset(data, subset_indices(data.labels, limit))


# -------------------------------------------------------------------------------- run directory

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


def _read_json(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is unreadable or corrupt ({type(err).__name__}); delete "
                       f"{path.parent} to recompute the run") from None
    if not isinstance(d, dict):
        raise RunError(f"{path} is corrupt (not a JSON object); delete {path.parent} to recompute the run")
    return d


def _write_json(path: Path, d: dict) -> None:
    atomic_write_text(path, json.dumps(d, indent=1, sort_keys=False) + "\n")


def _read_spec(run_dir: Path) -> tuple[RunSpec, dict]:
    d = _read_json(run_dir / SPEC)
    if d.get("format") != FORMAT_VERSION:
        raise RunError(f"{run_dir} was written by mkdlib run format {d.get('format')!r} (mkdlib "
                       f"{d.get('mkdlib', '?')}); this mkdlib {__version__} reads format {FORMAT_VERSION}: "
                       "re-run it into a new results folder")
    try:
        spec = RunSpec.from_dict(d["spec"])
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{run_dir / SPEC} holds a spec this mkdlib cannot read ({err}); re-run it into a "
                       "new results folder") from None
    if d.get("key") != spec.key():
        raise RunError(f"{run_dir / SPEC}: key {d.get('key')!r} does not match its spec ({spec.key()}); "
                       "it comes from an incompatible mkdlib version")
    return spec, d


def load_run(run_dir: str | Path) -> RunResult:
    """The spec and metrics of a run directory; metrics None (and `error` set) if it is unfinished."""
    run_dir = Path(run_dir).expanduser()
    if not (run_dir / SPEC).is_file():
        what = "does not exist" if not run_dir.exists() else "is not an mkdlib run directory (no spec.json)"
        raise RunError(f"{run_dir} {what}")
    spec, _ = _read_spec(run_dir)
    if not (run_dir / METRICS).is_file():
        return RunResult(spec, run_dir, None, f"run not finished (no {METRICS} in {run_dir})", "Unfinished")
    metrics = _read_json(run_dir / METRICS)
    try:
        img = metrics["image_auroc"]
        img["per_epoch"] = {int(e): float(v) for e, v in img["per_epoch"].items()}
        float(metrics["threshold"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise RunError(f"{run_dir / METRICS} lacks fields this mkdlib needs; it comes from an incompatible "
                       "version or is corrupt: re-run it into a new results folder") from None
    return RunResult(spec, run_dir, metrics)


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


def _write_spec(run_dir: Path, spec: RunSpec, cfg: MKDConfig) -> None:
    if (run_dir / SPEC).is_file():
        old, d = _read_spec(run_dir)
        if old != spec:
            raise RunError(f"{run_dir} holds a different run ({old.label()}); use another results folder")
        if d.get("config") != _canonical_json(cfg.to_dict()):
            raise RunError(f"{run_dir} was started with another resolved configuration (an earlier mkdlib "
                           "version's defaults); delete it or use another results folder")
        return
    _write_json(run_dir / SPEC, {"format": FORMAT_VERSION, "key": spec.key(), "mkdlib": __version__,
                                 "spec": spec.to_dict(), "config": cfg.to_dict()})


def build_models(spec: RunSpec, cfg: MKDConfig, device: str | torch.device):
    """Source, seeded cloner and loss. The seed is set before the source too, so that a random
    source (weights=None, pretrained=False) is the same in every process that resumes the run."""
    with _BUILD_LOCK:
        seed_everything(cfg.seed, cfg.deterministic)
        return build(cfg, weights=spec.weights, device=device)


def _check_resume(ckpt_dir: Path, cloner: Cloner, cfg: MKDConfig) -> int:
    """Epochs already done; one-line errors for a corrupt or incompatible last checkpoint."""
    path = ckpt_dir / LAST
    if not path.is_file():
        return 0
    try:
        state = load_checkpoint(path)
    except RuntimeError as err:
        raise RunError(str(err)) from None
    if not isinstance(state, dict) or not {"cloner", "optimizer", "epoch", "history"} <= set(state):
        raise RunError(f"checkpoint {path} lacks fields this mkdlib needs (incompatible version); delete it")
    if state.get("config") is not None and _canonical_json(state["config"]) != _canonical_json(cfg.to_dict()):
        raise RunError(f"checkpoint {path} was trained with another configuration; delete it or use another "
                       "results folder")
    try:
        cloner.load_state_dict(state["cloner"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise RunError(f"checkpoint {path} does not fit this cloner ({str(err).splitlines()[0]}); delete it") \
            from None
    return int(state["epoch"])


def load_final_cloner(cloner: Cloner, run_dir: Path, cfg: MKDConfig) -> Cloner:
    path = cloner_path(Path(run_dir) / "checkpoints", cfg.epochs)
    if not path.is_file():
        raise RunError(f"missing final cloner {path}: the run is unfinished or was moved incompletely")
    try:
        cloner.load_state_dict(load_checkpoint(path)["cloner"])
    except (RuntimeError, KeyError, TypeError) as err:
        raise RunError(f"final cloner {path} is unusable ({str(err).splitlines()[0]}); delete the run to "
                       "recompute it") from None
    return cloner.eval()


def load_model(run_dir: str | Path, *, device: str | torch.device = "cpu"):
    """(RunResult, resolved config, source, final cloner) of a finished run, for new images."""
    result = load_run(run_dir)
    if result.metrics is None:
        raise RunError(result.error)
    cfg = result.spec.mkd_config()
    source, cloner, _ = build_models(result.spec, cfg, device)
    return result, cfg, source, load_final_cloner(cloner, result.run_dir, cfg)


# ---------------------------------------------------------------------------------- evaluation

def pixel_metrics(source: Source, cloner: Cloner, cfg: MKDConfig, test: Dataset, methods: Iterable[str], *,
                  seed: int = 0, device: str | torch.device = "cpu", progress: bool = False) -> dict:
    """Pixel metrics of each localisation method with this cloner on the test set (masks needed):
    the paper's pixel AUROC (anomalous images only), standard pixel AUROC and AU-PRO (all images)."""
    masks, labels, loss, out = test.masks, np.asarray(test.labels), score_loss(cfg), {}
    for method in methods:
        gen = torch.Generator(torch.device(device)).manual_seed(seed) \
            if method in (SMOOTHGRAD, SMOOTHGRAD_REFERENCE) else None
        maps = np.concatenate([
            localize(x.to(device), source, cloner, loss, method=method, generator=gen)
            for x in tqdm(image_loader(test, 32), desc=f"localize {method}", disable=not progress, leave=False)
        ])  # (N, H, W) in [0, 1]
        out[method] = {"paper_pixel_auroc": paper_pixel_auroc(masks, maps, labels),
                       "pixel_auroc": pixel_auroc(masks, maps), "au_pro": au_pro(masks, maps)}
    return out


def add_localization(run_dir: str | Path, methods: Iterable[str], *, device: str | torch.device = "cpu",
                     progress: bool = True) -> RunResult:
    """Compute the pixel metrics of methods a finished run lacks and add them to its metrics.json."""
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown localization method(s) {unknown}; valid: {list(METHODS)}")
    result = load_run(run_dir)
    missing = [m for m in methods if m not in (result.metrics or {}).get("pixel", {})]
    if result.metrics is None or not missing:
        return result
    spec, cfg = result.spec, result.spec.mkd_config()
    test = load_data(spec, cfg, split="test")
    if not test.has_masks:
        raise ValueError(f"{spec.dataset} has no ground-truth masks: pixel metrics need them")
    with RunLock(result.run_dir, quiet=not progress):
        metrics = load_run(run_dir).metrics
        source, cloner, _ = build_models(spec, cfg, device)
        load_final_cloner(cloner, result.run_dir, cfg)
        t0 = time.perf_counter()
        metrics.setdefault("pixel", {}).update(
            pixel_metrics(source, cloner, cfg, test, missing, seed=spec.seed, device=device, progress=progress))
        metrics["timing_s"][f"localize_{'+'.join(missing)}"] = round(time.perf_counter() - t0, 3)
        _write_json(result.run_dir / METRICS, metrics)
    return load_run(run_dir)


def _write_scores(path: Path, data: Dataset, scores: np.ndarray) -> None:
    table = pd.DataFrame({"index": np.arange(len(scores)), "path": list(data.paths),
                          "label": np.asarray(data.labels), "score": scores})
    buf = io.StringIO()
    table.to_csv(buf, index=False)
    atomic_write_text(path, buf.getvalue())


# ------------------------------------------------------------------------------------------ run

def run(spec: RunSpec, results_root: str | Path, *, device: str = "cpu", progress: bool = True) -> RunResult:
    """Train (or resume), evaluate and cache one run in results_root/<spec.key()>/.

    metrics.json is written last, atomically: its presence marks a finished run, which is returned
    as it is. Raises the datasets' errors (e.g. DatasetNotFoundError) and RunError."""
    if isinstance(spec, dict):
        spec = RunSpec.from_dict(spec)
    run_dir = Path(results_root).expanduser() / spec.key()
    if (run_dir / METRICS).is_file():
        return _cached(run_dir, spec)
    cfg = spec.mkd_config()
    t0 = time.perf_counter()
    train, test = load_data(spec, cfg, split="train"), load_data(spec, cfg, split="test")  # fail before any write
    t_data = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    with RunLock(run_dir, quiet=not progress):
        if (run_dir / METRICS).is_file():  # another process finished it while we waited
            return _cached(run_dir, spec)
        _write_spec(run_dir, spec, cfg)
        _write_json(run_dir / ENV, environment(device))
        metrics = _train_and_evaluate(spec, cfg, train, test, run_dir, device, progress)
        metrics["timing_s"]["data"] = round(t_data, 3)
        _write_json(run_dir / METRICS, metrics)
        (run_dir / ERROR).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints" / "features", ignore_errors=True)  # spilled feature cache
    return load_run(run_dir)


def _cached(run_dir: Path, spec: RunSpec) -> RunResult:
    result = load_run(run_dir)
    if result.spec != spec:
        raise RunError(f"{run_dir} holds a different run ({result.spec.label()}); use another results folder")
    return result


def _train_and_evaluate(spec: RunSpec, cfg: MKDConfig, train: Dataset, test: Dataset, run_dir: Path,
                        device: str, progress: bool) -> dict:
    ckpt = run_dir / "checkpoints"
    source, cloner, loss = build_models(spec, cfg, device)
    resumed_from = _check_resume(ckpt, cloner, cfg)
    t0 = time.perf_counter()
    history = fit(cloner, source, train, cfg, loss, device=device, checkpoint_dir=ckpt, progress=progress)
    t_train = time.perf_counter() - t0
    write_history(history, run_dir / HISTORY)

    t0 = time.perf_counter()
    try:
        image = evaluate_checkpoints(cloner, source, test, cfg, ckpt, device=device, progress=progress)
    except RuntimeError as err:  # an unreadable sampled cloner: load_checkpoint's one-line message
        raise RunError(str(err)) from None
    test_scores = image.pop("scores")
    load_final_cloner(cloner, run_dir, cfg)
    fit_data = train if getattr(train, "deterministic", True) else \
        load_data(spec, cfg, split="train", augment=False)  # threshold on the images, not augmented copies
    train_scores = score(cloner, score_loss(cfg), fit_data, source=source, batch_size=cfg.batch_size,
                         device=device, amp=cfg.amp, channels_last=cfg.channels_last)
    threshold = float(np.percentile(train_scores, THRESHOLD_PERCENTILE))
    _write_scores(run_dir / SCORES, test, test_scores)
    t_eval = time.perf_counter() - t0

    t0 = time.perf_counter()
    pixel = {}
    if spec.localization and test.has_masks:
        pixel = pixel_metrics(source, cloner, cfg, test, spec.localization, seed=spec.seed, device=device,
                              progress=progress)
    t_loc = time.perf_counter() - t0
    labels = np.asarray(test.labels)
    return {
        "image_auroc": image,
        "pixel": pixel,
        "threshold": threshold,
        "threshold_rule": f"percentile {THRESHOLD_PERCENTILE:g} of the final cloner's scores on the training "
                          "images",
        "train_scores": {"min": float(train_scores.min()), "median": float(np.median(train_scores)),
                         "max": float(train_scores.max())},
        "n_train": len(train), "n_test": len(test), "n_test_anomalous": int(labels.sum()),
        "epochs": cfg.epochs, "resumed_from_epoch": resumed_from,
        "timing_s": {"train": round(t_train, 3), "evaluate": round(t_eval, 3), "localize": round(t_loc, 3),
                     "train_epochs_total": round(sum(h["seconds"] for h in history), 3)},  # all sessions
        "config": cfg.to_dict(),
        "weights": source.weights,
        "device": str(device),
    }


# ------------------------------------------------------------------------------------ many runs

def _run_one(spec: RunSpec, results_root: str, device: str, progress: bool) -> RunResult:
    """run() that never raises: the error becomes part of the result (and run_dir/error.txt)."""
    try:
        return run(spec, results_root, device=device, progress=progress)
    except Exception as err:  # one failing run must not stop the others
        run_dir = Path(results_root).expanduser() / spec.key()
        if run_dir.is_dir():
            try:
                atomic_write_text(run_dir / ERROR, traceback.format_exc())
            except OSError:
                pass
        return RunResult(spec, run_dir if run_dir.is_dir() else None, None, str(err) or repr(err),
                         type(err).__name__)


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_many(specs: Iterable[RunSpec], results_root: str | Path, *, executor: Executor | None = None,
             workers: int | None = None, device: str = "cpu", progress: bool = True) -> list[RunResult]:
    """Run independent specs; results in the order of `specs`, failures as RunResult(error=...).

    executor: any concurrent.futures.Executor, e.g. `distributed.Client(...).get_executor()` for a
    Dask cluster (results_root must then be on a file system every worker sees). Without one:
    in-process and sequential, or a local pool of `workers` processes. Identical specs run once.
    """
    specs = [RunSpec.from_dict(s) if isinstance(s, dict) else s for s in specs]
    if executor is not None and workers is not None:
        raise ValueError("pass either executor= or workers=, not both")
    root = str(Path(results_root).expanduser())
    unique = list({s.key(): s for s in specs}.values())
    done: dict[str, RunResult] = {}
    bar = tqdm(total=len(unique), desc="runs", unit="run", disable=not progress)

    def record(spec: RunSpec, result: RunResult) -> None:
        done[spec.key()] = result
        if not result.ok:
            tqdm.write(f"mkdlib: run {spec.key()} ({spec.label()}) failed: {result.error_type}: {result.error}",
                       file=sys.stderr)
        bar.update(1)
        bar.set_postfix(failed=sum(not r.ok for r in done.values()))

    own_pool = None
    if executor is None and (workers or 1) > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        executor = own_pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                                                  initializer=_init_worker, initargs=(threads,))
    try:
        if executor is None:
            for spec in unique:
                record(spec, _run_one(spec, root, device, progress))
        else:
            futures = {executor.submit(_run_one, spec, root, device, False): spec for spec in unique}
            for future in as_completed(futures):
                spec = futures[future]
                try:
                    result = future.result()
                except Exception as err:  # the worker itself died (BrokenProcessPool, KilledWorker, ...)
                    result = RunResult(spec, None, None, str(err) or repr(err), type(err).__name__)
                record(spec, result)
    finally:
        bar.close()
        if own_pool is not None:
            own_pool.shutdown(cancel_futures=True)
    return [done[s.key()] for s in specs]
