"""Run configuration: a dataclass whose defaults are the paper's, and per-dataset settings as data.

Sources: "paper" = Salehi et al. CVPR 2021 (sec. 4, supplementary); "code" = the authors' released
code (rohban-lab/Knowledge_Distillation_AD), which produced the published numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from mkdlib.models import CLONER_CFGS, SCORE_LAYERS, TRAIN_LAYERS, check_layers


@dataclass(frozen=True)
class MKDConfig:
    dataset: str = "mvtec"
    image_size: int = 128  # code: MVTec / OCT resized to 128x128
    epochs: int = 601  # code: 601 for MVTec; the evaluated cloner is the one after this many passes
    value_weight: float = 0.5  # code: lambda, on the value (MSE) term; 0.5 for MVTec, 0.01 otherwise
    direction_weight: float = 1.0  # code: the direction term is unweighted
    batch_size: int = 64  # code: batch 64, shuffled, last partial batch kept
    lr: float = 1e-3  # code: Adam, default betas, no weight decay, no scheduler
    train_layers: tuple[str, ...] = TRAIN_LAYERS  # code: pool2..pool5 in training
    score_layers: tuple[str, ...] = SCORE_LAYERS  # code: pool3..pool5 at test time
    cloner: str = "small"  # paper sec. 3.3.2: the smaller cloner ("equal" is the ablation)
    pretrained: bool = True  # paper: ImageNet source; False = random source (ablation)
    eval_every: int = 10  # code: test AUROC every 10 epochs
    sample_last: int = 100  # ours: report mean +- std over cloners sampled every eval_every epochs in the last sample_last epochs
    checkpoint_every: int = 10  # ours: resumable checkpoint period (code: 50)
    seed: int = 0  # ours: the released code is unseeded
    deterministic: bool = False  # ours: torch deterministic algorithms (exact resume, cached == uncached)
    amp: bool = False  # ours: bf16 autocast (measured before becoming a default, see README)
    channels_last: bool = False  # ours: channels_last memory format
    cache_features: bool = True  # ours: source features computed once when the data is deterministic
    cache_dtype: str = "float32"  # ours: "float16" halves the feature cache (and its memory-mapped spill)
    memory_budget_mb: int = 4096  # ours: larger feature caches spill to a memory-mapped file
    augment: bool = False  # paper Table 6: HeadCT with rotation <= 20 deg, scale [0.9, 1.05]
    extra: dict[str, Any] = field(default_factory=dict)  # dataset options passed to get_dataset

    def __post_init__(self):
        """Every field checked for type and range before anything runs: a bad value fails here,
        naming the field, not hours later (`epochs=True` is not 1 epoch, `lr=nan` is no rate)."""
        for name, low in _INT_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"MKDConfig.{name} must be an integer >= {low}, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name, positive in _FLOAT_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or \
                    not math.isfinite(value) or value < 0 or (positive and value == 0):
                raise ValueError(f"MKDConfig.{name} must be a finite number {'>' if positive else '>='} 0, "
                                 f"got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"MKDConfig.{name} must be true or false, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        if self.value_weight == 0 and self.direction_weight == 0:
            raise ValueError("MKDConfig: value_weight and direction_weight are both 0: there is no loss")
        for name, valid in (("cache_dtype", ("float32", "float16")), ("cloner", tuple(CLONER_CFGS)),
                            ("dataset", tuple(PAPER_SETTINGS))):
            if getattr(self, name) not in valid:
                raise ValueError(f"MKDConfig.{name} must be one of {list(valid)}, got {getattr(self, name)!r}")
        for name in ("train_layers", "score_layers"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise ValueError(f"MKDConfig.{name} must be a list of layer names, got {value!r}")
            check_layers(value)  # names each unknown layer
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.extra, dict):
            raise ValueError(f"MKDConfig.extra must be a dict of dataset options, got {self.extra!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["train_layers"] = list(self.train_layers)
        d["score_layers"] = list(self.score_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MKDConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MKDConfig field(s) {unknown}; valid: {sorted(known)}")
        return cls(**d)

    def matches(self, recorded: dict[str, Any]) -> bool:
        """Whether a configuration recorded by a run (spec.json, last.pt) is this one. A field the record
        lacks was added by a later mkdlib: it matches at its default, the value that keeps the old
        behaviour, so that runs in progress resume across such versions."""
        mine = json.loads(json.dumps(self.to_dict()))
        defaults = json.loads(json.dumps(MKDConfig(dataset=self.dataset).to_dict()))
        return (set(recorded) <= set(mine) and all(recorded[k] == mine[k] for k in recorded)
                and all(mine[k] == defaults[k] for k in set(mine) - set(recorded)))

    def eval_epochs(self) -> list[int]:
        """Epochs (1-based counts of passes) whose cloners are scored: every eval_every passes
        counted back from the last, within the last sample_last epochs; the last is the final one."""
        start = max(1, self.epochs - self.sample_last)
        return list(range(self.epochs, start - 1, -self.eval_every))[::-1]


# Per-dataset paper settings. Epoch counts are the released config's `num_epochs` (51 / 201 / 601):
# the cloner it evaluates is the checkpoint written after that many passes (epoch index 50/200/600).
PAPER_SETTINGS: dict[str, dict[str, Any]] = {
    # code: MNIST / F-MNIST resized 28 -> 32, lambda 0.01, 51 epochs
    "mnist": dict(image_size=32, epochs=51, value_weight=0.01, sample_last=20),
    "fashionmnist": dict(image_size=32, epochs=51, value_weight=0.01, sample_last=20),
    # code: CIFAR-10 resize 256 -> crop 224, ImageNet normalisation, lambda 0.01, 201 epochs
    "cifar10": dict(image_size=224, epochs=201, value_weight=0.01, sample_last=50),
    # code: MVTec AD 128 px, lambda 0.5, 601 epochs
    "mvtec": dict(image_size=128, epochs=601, value_weight=0.5, sample_last=100),
    # code: Retinal OCT 128 px, lambda 0.01, 201 epochs
    "retina": dict(image_size=128, epochs=201, value_weight=0.01, sample_last=50),
    # paper Table 6 / code has no config: MVTec recipe (128 px), lambda 0.01 as every non-MVTec set,
    # epochs as the MVTec recipe (small training sets; assumption, documented in the README)
    "headct": dict(image_size=128, epochs=601, value_weight=0.01, sample_last=100),
    "brainmri": dict(image_size=128, epochs=601, value_weight=0.01, sample_last=100),
    # ours: the MVTec-layout synthetic demo set and users' folders follow the MVTec recipe
    "synthetic": dict(image_size=128, epochs=601, value_weight=0.5, sample_last=100),
    "folder": dict(image_size=128, epochs=601, value_weight=0.5, sample_last=100),
}


# Checked in MKDConfig.__post_init__: integers with their minimum (32 px: VGG-16's five 2x2 pools), floats
# (True: strictly positive), booleans.
_INT_FIELDS = {"image_size": 32, "epochs": 1, "batch_size": 1, "eval_every": 1, "sample_last": 0,
               "checkpoint_every": 1, "seed": 0, "memory_budget_mb": 0}
_FLOAT_FIELDS = {"value_weight": False, "direction_weight": False, "lr": True}
_BOOL_FIELDS = ("pretrained", "deterministic", "amp", "channels_last", "cache_features", "augment")


def paper_config(dataset: str, **overrides: Any) -> MKDConfig:
    """The paper's configuration for a dataset, with any field overridden."""
    if dataset not in PAPER_SETTINGS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(PAPER_SETTINGS)}")
    return replace(MKDConfig(dataset=dataset, **PAPER_SETTINGS[dataset]), **overrides)
