"""A run's pieces, for training it or using it once trained: the data it uses (`load_data`: the split, or
the subset a smoke profile takes), its models (`build_models`: source, seeded cloner, loss), and a
finished run's final cloner with the source it was trained against (`load_model`, weights checked)."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch

from mkdlib.checkpoints import CheckpointError, cloner_path, load_checkpoint, save_checkpoint
from mkdlib.io_utils import file_sha256
from mkdlib.config import MKDConfig
from mkdlib.datasets import get_dataset
from mkdlib.datasets.subset import Subset, subset_indices
from mkdlib.models import Cloner, Source
from mkdlib.runs.spec import RunResult, RunSpec
from mkdlib.runs.store import CLONER, RunError, load_run
from mkdlib.train import build
from mkdlib.weights import weights_sha256


_BUILD_LOCK = threading.Lock()  # seeding + init use torch's global RNG: one run at a time per process


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


def build_models(spec: RunSpec, cfg: MKDConfig, device: str | torch.device, *, weights: str | Path | None = None):
    """Source, seeded cloner and loss (`train.build` seeds before the source too, so that a random
    source is the same in every process that resumes the run). weights: instead of spec.weights."""
    with _BUILD_LOCK:
        return build(cfg, weights=spec.weights if weights is None else str(weights), device=device,
                     deterministic=spec.execution_config().deterministic)


def check_device(device: str | torch.device) -> torch.device:
    """The device, or a ValueError saying it is not available here (before any run is started)."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"invalid device {device!r} ({err}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} is not available here (no CUDA GPU visible to torch); "
                         "use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' is not available here; use --device cpu")
    return device


def final_cloner_file(run_dir: Path, cfg: MKDConfig) -> Path | None:
    """The run's final cloner: its checkpoint where the run's checkpoints are here, else the record's own
    copy (cloner.pt, committed beside a record); None without either."""
    for path in (cloner_path(Path(run_dir) / "checkpoints", cfg.epochs), Path(run_dir) / CLONER):
        if path.is_file():
            return path
    return None


def keep_final_cloner(run_dir: Path, cfg: MKDConfig, metrics: dict) -> dict:
    """Copy the final cloner's weights from the checkpoints to run_dir/cloner.pt (a state dict, loaded with
    weights_only=True) and record its SHA-256 in `metrics` ("cloner_sha256"), so that the record alone
    can score and localise new images; returns `metrics`."""
    state = load_checkpoint(cloner_path(Path(run_dir) / "checkpoints", cfg.epochs))["cloner"]
    save_checkpoint(state, Path(run_dir) / CLONER)
    metrics["cloner_sha256"] = file_sha256(Path(run_dir) / CLONER)
    return metrics


def load_final_cloner(cloner: Cloner, run_dir: Path, cfg: MKDConfig, metrics: dict | None = None) -> Cloner:
    """`cloner` with the run's final weights (final_cloner_file), in eval mode. The record's cloner.pt is
    checked against the SHA-256 its metrics.json holds."""
    path = final_cloner_file(run_dir, cfg)
    if path is None:
        raise RunError(f"missing final cloner in {run_dir} (neither checkpoints/ nor {CLONER}): `mkd evaluate "
                       f"{run_dir}` recomputes a lost checkpoint; a record without either cannot be used on new "
                       "images")
    recorded = (metrics or {}).get("cloner_sha256")
    if path.name == CLONER and recorded and file_sha256(path) != recorded:
        raise RunError(f"{path} has sha256 {file_sha256(path)[:12]}, not the {recorded[:12]} its metrics.json "
                       "records: restore the file the run wrote (e.g. `git checkout` it) or retrain the run")
    try:
        state = load_checkpoint(path)
        cloner.load_state_dict(state["cloner"] if path.name != CLONER else state)
    except CheckpointError:
        problem = "unreadable"
    except (RuntimeError, KeyError, TypeError) as err:
        problem = f"unusable ({str(err).splitlines()[0]})"
    else:
        return cloner.eval()
    # what deleting it costs: a checkpoint is recomputed alone; the record's cloner.pt, without checkpoints, is not
    if path.name != CLONER:
        advice = f"delete that file and run `mkd evaluate {run_dir}`: only it is recomputed (from last.pt)"
    else:
        advice = ("restore the file the run wrote (e.g. `git checkout` it): without the run's checkpoints it cannot "
                  "be recomputed, and deleting it leaves the record unable to score new images")
    raise RunError(f"final cloner {path} is {problem}; {advice}")


def check_weights(result: RunResult, source: Source) -> None:
    """Refuse a source whose weights differ from the ones the run was trained with: its scores would
    not match the run's threshold. Compared by SHA-256 where the run recorded one, else by path."""
    recorded, digest = result.metrics.get("weights"), result.metrics.get("weights_sha256")
    now = weights_sha256(source.weights)
    if digest and now and digest != now:
        raise RunError(f"{result.run_dir} was trained with source weights of sha256 {digest[:12]} "
                       f"({recorded}), but {source.weights} has sha256 {now[:12]}: pass --weights with the "
                       "file it was trained with")
    if not (digest and now) and recorded != source.weights:
        warnings.warn(f"the run was trained with source weights {recorded!r} but they now resolve to "
                      f"{source.weights!r} (no digest to compare): scores may not match its threshold",
                      stacklevel=3)


def load_model(run_dir: str | Path, *, device: str | torch.device = "cpu", weights: str | Path | None = None):
    """(RunResult, resolved config, source, final cloner) of a finished run, for new images.

    weights: the source weights file on this machine (default: as the run recorded them); refused
    when its SHA-256 differs from the run's."""
    result = load_run(run_dir)
    if result.metrics is None:
        raise RunError(result.error)
    cfg = result.spec.mkd_config()
    source, cloner, _ = build_models(result.spec, cfg, device, weights=weights)
    check_weights(result, source)
    return result, cfg, source, load_final_cloner(cloner, result.run_dir, cfg, result.metrics)
