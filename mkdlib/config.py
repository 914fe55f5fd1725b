"""Run configuration: a dataclass whose defaults are the paper's, and per-dataset settings as data.

Sources: "paper" = Salehi et al. CVPR 2021 (sec. 4, supplementary); "code" = the authors' released
code (rohban-lab/Knowledge_Distillation_AD), which produced the published numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from mkdlib.models import CLONER_CFGS, SCORE_LAYERS, TRAIN_LAYERS, check_layers


def canonical_json(value):
    """`value` as plain JSON types (tuples -> lists): how spec.json and last.pt's recorded configurations
    are compared. ValueError for NaN or infinity (spec.json is strict JSON), TypeError if it is not
    JSON-serialisable."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except ValueError:
        raise ValueError(f"not a finite JSON value (NaN or infinity): {value!r}") from None


def check_fields(cls: type, d: Mapping[str, Any], what: str, exclude: Iterable[str] = ()) -> None:
    """ValueError naming the keys of `d` that are not fields of the dataclass `cls` (less `exclude`), with
    the valid ones: the one check of MKDConfig, RunSpec and config-override dicts."""
    valid = sorted({f.name for f in fields(cls)} - set(exclude))
    unknown = sorted(set(d) - set(valid))
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; valid: {valid}")


@dataclass(frozen=True)
class MKDConfig:
    dataset: str = "mvtec"
    image_size: int = 128  # code: MVTec / OCT resized to 128x128
    epochs: int = 601  # code: 601 for MVTec; the evaluated cloner is the one after this many passes
    value_weight: float = 0.5  # code: lambda, on the value (MSE) term; 0.5 for MVTec, 0.01 otherwise
    direction_weight: float = 1.0  # code: the direction term is unweighted
    batch_size: int = 64  # code: batch 64, shuffled, last partial batch kept
    lr: float = 1e-3  # code: Adam, default betas, no weight decay, no scheduler
    schedule: str = "constant"  # code: lr constant; "cosine" (ours, the fast profile): linear warm-up to lr, then cosine decay to 0, per step
    warmup_epochs: int = 0  # ours: epochs of linear warm-up before the cosine decay (schedule "cosine")
    train_layers: tuple[str, ...] = TRAIN_LAYERS  # code: pool2..pool5 in training
    score_layers: tuple[str, ...] = SCORE_LAYERS  # code: pool3..pool5 at test time
    cloner: str = "small"  # paper sec. 3.3.2: the smaller cloner ("equal" is the ablation)
    pretrained: bool = True  # paper: ImageNet source; False = random source (ablation)
    eval_every: int = 10  # code: test AUROC every 10 epochs
    sample_last: int = 100  # ours: report mean +- std over cloners sampled every eval_every epochs in the last sample_last epochs
    checkpoint_every: int = 10  # ours: resumable checkpoint period (code: 50)
    seed: int = 0  # ours: the released code is unseeded
    deterministic: bool = False  # ours: torch deterministic algorithms (exact resume, cached == uncached)
    amp: bool = False  # ours: bf16 autocast everywhere, the cloner's training step included (opt-in, see README)
    bf16_inference: bool = False  # ours: bf16 for the passes without gradients (source features, scoring); opt-in, native bf16 only
    channels_last: bool | None = None  # ours: channels_last memory format; None: mkdlib's choice (on: measured faster)
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
            value = getattr(self, name)
            if value is None and name in _AUTO_FIELDS:
                continue
            if not isinstance(value, (bool, np.bool_)):
                auto = " or null (mkdlib's choice for the device)" if name in _AUTO_FIELDS else ""
                raise ValueError(f"MKDConfig.{name} must be true or false{auto}, got {value!r}")
            object.__setattr__(self, name, bool(value))
        if self.value_weight == 0 and self.direction_weight == 0:
            raise ValueError("MKDConfig: value_weight and direction_weight are both 0: there is no loss")
        if self.schedule == "cosine" and self.warmup_epochs >= self.epochs:
            raise ValueError(f"MKDConfig.warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        for name, valid in (("cache_dtype", ("float32", "float16")), ("cloner", tuple(CLONER_CFGS)),
                            ("schedule", SCHEDULES),
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
        check_fields(cls, d, "MKDConfig")
        return cls(**d)

    def experiment(self) -> dict[str, Any]:
        """The fields that define what is trained: all but EXECUTION_FIELDS (how it is computed)."""
        return {k: v for k, v in self.to_dict().items() if k not in EXECUTION_FIELDS}

    @property
    def inference_bf16(self) -> bool:
        """Whether the passes without gradients run in bf16: under `amp`, or as bf16_inference says."""
        return self.amp or self.bf16_inference

    def resolve(self, device: str | Any = "cpu") -> MKDConfig:
        """This configuration with the execution settings it leaves to mkdlib (None) chosen for `device`;
        ValueError if it asks for bf16 where `device` would emulate it (slower than fp32, never done)."""
        from mkdlib.hardware import bf16_native, chosen, describe_device

        if (self.amp or self.bf16_inference) and not bf16_native(device):
            asked = "amp" if self.amp else "bf16_inference"
            raise ValueError(f"MKDConfig.{asked}: {describe_device(device)} does not compute bf16 natively "
                             f"(torch would emulate it, slower than fp32); set {asked}=false")
        return replace(self, **{k: chosen(k, getattr(self, k), device) for k in _AUTO_FIELDS})

    def matches(self, recorded: dict[str, Any]) -> bool:
        """Whether a configuration recorded by a run (spec.json, last.pt) trains the same experiment as
        this one. Execution settings (EXECUTION_FIELDS) may differ: a run started in fp32 may resume in bf16.
        A field the record lacks was added by a later mkdlib: it matches at its default, the value that
        keeps the old behaviour, so that runs in progress resume across such versions."""
        mine = json.loads(json.dumps(self.experiment()))
        defaults = json.loads(json.dumps(MKDConfig(dataset=self.dataset).experiment()))
        recorded = {k: v for k, v in recorded.items() if k not in EXECUTION_FIELDS}
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
               "checkpoint_every": 1, "seed": 0, "memory_budget_mb": 0, "warmup_epochs": 0}
SCHEDULES = ("constant", "cosine")
_FLOAT_FIELDS = {"value_weight": False, "direction_weight": False, "lr": True}
_BOOL_FIELDS = ("pretrained", "deterministic", "amp", "bf16_inference", "channels_last", "cache_features", "augment")
_AUTO_FIELDS = ("channels_last",)  # None: chosen per device by MKDConfig.resolve

# How a run is computed, not what it trains: precision, memory layout, caching, checkpointing. They are
# not part of a run's key (a run is the same experiment whichever device computed it, as it is whichever
# CPU's kernels did) and may change when a run resumes; spec.json records the values a run started with.
EXECUTION_FIELDS = ("amp", "bf16_inference", "channels_last", "deterministic", "cache_features", "cache_dtype",
                    "memory_budget_mb", "checkpoint_every")


def paper_config(dataset: str, **overrides: Any) -> MKDConfig:
    """The paper's configuration for a dataset, with any field overridden."""
    if dataset not in PAPER_SETTINGS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {sorted(PAPER_SETTINGS)}")
    return replace(MKDConfig(dataset=dataset, **PAPER_SETTINGS[dataset]), **overrides)


# Ours (issue 14): the `fast` profile. It changes only the optimisation schedule: source, cloner, loss,
# layers, image size and scoring stay the paper's. Chosen on development data only (MNIST classes 0-2,
# Fashion-MNIST class 0, a validation split of bottle's training images: scripts/select_fast_schedule.py,
# README "The fast profile"), then frozen.
FAST_EPOCH_DIVISOR = 5  # a fifth of the paper's epochs, rounded down: at most 1/5 of its image passes
FAST_SCHEDULE = {"schedule": "cosine", "lr": 3e-3}  # see README "The fast profile" for what was tried


def fast_overrides(dataset: str) -> dict[str, Any]:
    """The fast profile's overrides of paper_config(dataset): epochs // 5 with FAST_SCHEDULE, a warm-up of
    a twentieth of them (at least one epoch; Adam's early steps at a 3x higher lr otherwise overshoot), and
    the cloners sampled over a fifth of the paper's last epochs, five times as often (as many as the paper
    samples: 3 for MNIST, 11 for MVTec AD)."""
    paper = paper_config(dataset)
    epochs = max(2, paper.epochs // FAST_EPOCH_DIVISOR)
    return {"epochs": epochs, "warmup_epochs": max(1, epochs // 20),
            "sample_last": paper.sample_last // FAST_EPOCH_DIVISOR,
            "eval_every": max(1, paper.eval_every // FAST_EPOCH_DIVISOR), **FAST_SCHEDULE}


def learning_rate(cfg: MKDConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate of optimizer step `step` (0-based, over the whole run): cfg.lr throughout
    ("constant", the paper's), or a linear warm-up over cfg.warmup_epochs to cfg.lr then a cosine decay
    to 0 at the last step ("cosine"). A function of the step alone, so a resumed run follows it exactly."""
    if cfg.schedule == "constant":
        return cfg.lr
    warmup, total = cfg.warmup_epochs * steps_per_epoch, cfg.epochs * steps_per_epoch
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


# --- profiles: the paper's protocol, a smoke check, ours (fast) --------------------------------------

@dataclass(frozen=True)
class Profile:
    name: str
    label: str  # written into every table title (unless "paper") and the index
    config: dict[str, Any]  # MKDConfig overrides for every run, on top of the paper's per dataset
    image_size: dict[str, int]  # per dataset; absent = the paper's size
    max_train: int | None = None
    max_test: int | None = None
    seeds: int | None = None  # for the items with several seeds; None = the item's number
    per_dataset: Callable[[str], dict[str, Any]] | None = None  # more MKDConfig overrides by dataset

    def overrides(self, dataset: str) -> dict[str, Any]:
        """The MKDConfig overrides this profile puts on every run of `dataset`."""
        out = {**self.config, **(self.per_dataset(dataset) if self.per_dataset else {})}
        return {**out, "image_size": self.image_size[dataset]} if dataset in self.image_size else out


PROFILES: dict[str, Profile] = {
    "paper": Profile("paper", "paper: the full protocol", {}, {}),
    # 2 epochs, both sampled (eval_every 1, sample_last 1) so that mean ± std exists; images smaller where
    # the protocol allows (MNIST / F-MNIST keep their 32 px).
    "smoke": Profile("smoke", "smoke: tiny subsets, 2 epochs, small images; a pipeline check, NOT paper numbers",
                     {"epochs": 2, "eval_every": 1, "sample_last": 1, "checkpoint_every": 1},
                     {"cifar10": 64, "mvtec": 64, "retina": 64, "headct": 64, "brainmri": 64},
                     max_train=64, max_test=100, seeds=2),
    # Ours: the paper's method with a fifth of its epochs and a warm-up + cosine schedule (config.fast_overrides).
    "fast": Profile("fast", "fast: ours, a fifth of the paper's epochs (warm-up + cosine lr); NOT the paper's "
                    "protocol", {}, {}, per_dataset=fast_overrides),
}

def profile_of(name: str) -> Profile:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; valid: {list(PROFILES)}")
    return PROFILES[name]
