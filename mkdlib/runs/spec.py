"""What defines a run: `RunSpec` (dataset, normal class, configuration overrides, seed, data, weights,
subsets), validated on construction, with how it is computed (`execution`) and the localisation variants
to evaluate; its `key()` names the run's folder and hashes the experiment only. `RunResult` is what
`run` returns: the spec, its folder, its metrics or the error that stopped it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from hashlib import sha256
from pathlib import Path

import numpy as np

from mkdlib.config import Execution, MKDConfig, canonical_json, check_fields, paper_config, split
from mkdlib.datasets import DATASET_NAMES, MVTEC_CATEGORIES
from mkdlib.datasets.factory import ALIASES, WITH_CLASS
from mkdlib.datasets.onecls import CLASS_NAMES, class_index
from mkdlib.localization import check_methods

FORMAT_VERSION = 1  # bump when the run directory layout or the key's recipe changes
_RESERVED_CONFIG = {"dataset": "RunSpec.dataset", "seed": "RunSpec.seed"}
_RESERVED_OPTIONS = ("root", "split", "normal_class", "seed", "download")


@dataclass(frozen=True)
class RunSpec:
    """What defines a run. `key()` hashes all of it (data_root included: None keeps keys portable)
    except `execution` (how it is computed: a run is the same experiment on every device) and
    `localization` (the maps to evaluate are an evaluation of the trained run, added to it when asked
    for by `add_localization`, never a reason to train again). Execution settings given among the
    config overrides (`--config amp=true`, and older records) are moved to `execution`."""

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
    execution: dict = field(default_factory=dict)  # Execution overrides: precision, layout, caches, cadence

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
        config, execution = split(dict(self.config))
        set_("config", self._check_config(name, config))
        execution = canonical_json({**execution, **dict(self.execution)})
        check_fields(Execution, execution, "execution")
        Execution(**execution)  # invalid values fail here
        set_("execution", execution)
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
        reserved = sorted(set(overrides) & set(_RESERVED_CONFIG))
        if reserved:
            raise ValueError(f"config[{reserved[0]!r}] is set by {_RESERVED_CONFIG[reserved[0]]}, not by a config "
                             "override")
        check_fields(MKDConfig, overrides, "config", exclude=_RESERVED_CONFIG)
        out = {}
        for k, v in canonical_json(overrides).items():  # 1 and 1.0 are the same learning rate
            if isinstance(defaults[k], float) and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            out[k] = v
        paper_config(dataset, **out)  # invalid values fail here, not hours later
        return out

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}  # in field order, as spec.json has it
        return {**d, "config": dict(self.config), "localization": list(self.localization),
                "dataset_options": dict(self.dataset_options), "execution": dict(self.execution)}

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        check_fields(cls, d, "RunSpec")
        d = dict(d)
        if "localization" in d and not isinstance(d["localization"], str):
            d["localization"] = tuple(d["localization"])
        return cls(**d)

    def trained(self) -> RunSpec:
        """The spec of the training run alone (no localisation): what `key()` names and spec.json holds."""
        return replace(self, localization=())

    def key(self, *, legacy: bool = False) -> str:
        """16 hex digits of sha256 over the canonical JSON of the trained spec and the run format
        version (localization hashed as empty, as keys always had it), without `execution`, so that an
        experiment has one key on every device. legacy=True: the key mkdlib gave before 2026-12, with the
        execution overrides hashed among the config overrides (see `upgrade_root`)."""
        d = {"format": FORMAT_VERSION, **self.trained().to_dict()}
        execution = d.pop("execution")
        if legacy:
            d["config"] = {**d["config"], **execution}
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return sha256(text.encode()).hexdigest()[:16]

    def __hash__(self) -> int:
        return hash(self.key())

    def label(self) -> str:
        """Short human-readable name, e.g. 'mnist class 3 seed 0'."""
        what = "" if self.normal_class is None else f" {self.normal_class}"
        return f"{self.dataset}{what} seed {self.seed}"

    def execution_config(self) -> Execution:
        return Execution(**self.execution)

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
