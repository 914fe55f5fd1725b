import json
from dataclasses import replace

import numpy as np
import pytest

from mkdlib.config import PAPER_SETTINGS, MKDConfig, paper_config


def test_paper_settings():
    assert paper_config("mnist").epochs == 51 and paper_config("cifar10").epochs == 201
    assert paper_config("mvtec").epochs == 601 and paper_config("mvtec").value_weight == 0.5
    assert all(paper_config(d).value_weight == 0.01 for d in ("mnist", "fashionmnist", "cifar10", "retina", "headct"))
    cfg = MKDConfig()
    assert (cfg.batch_size, cfg.lr) == (64, 1e-3)
    assert cfg.train_layers == ("pool2", "pool3", "pool4", "pool5")
    assert cfg.score_layers == ("pool3", "pool4", "pool5")
    assert paper_config("mnist").image_size == 32 and paper_config("cifar10").image_size == 224


def test_eval_epochs_sample_the_last_epochs_every_ten():
    assert paper_config("mnist").eval_epochs() == [31, 41, 51]
    assert paper_config("mvtec").eval_epochs()[-1] == 601 and len(paper_config("mvtec").eval_epochs()) == 11
    assert paper_config("mnist", epochs=2).eval_epochs() == [2]


def test_round_trip_and_errors():
    cfg = paper_config("mvtec", epochs=3)
    assert MKDConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown dataset"):
        paper_config("imagenet")
    with pytest.raises(ValueError, match="epochs"):
        MKDConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown MKDConfig"):
        MKDConfig.from_dict({"epoch": 3})
    assert set(PAPER_SETTINGS) >= {"mnist", "fashionmnist", "cifar10", "mvtec", "retina", "headct", "brainmri"}


def test_a_recorded_configuration_matches_across_added_fields():
    cfg = paper_config("mvtec")
    recorded = json.loads(json.dumps(cfg.to_dict()))
    assert cfg.matches(recorded)
    older = {k: v for k, v in recorded.items() if k != "augment"}  # written before a field existed
    assert cfg.matches(older)
    assert not replace(cfg, augment=True).matches(older)  # a new field away from its default
    assert not cfg.matches({**recorded, "epochs": 600})
    assert not cfg.matches({**recorded, "schedule": "cosine"})  # a field this version does not know


def test_execution_settings_are_not_the_experiment():
    """Precision, layout and caching are Execution's, apart from what is trained: a record that mixed them
    into its configuration (older mkdlib) still matches, whatever values they had."""
    from mkdlib.config import EXECUTION_FIELDS, Execution, split

    cfg = paper_config("mvtec")
    assert not set(EXECUTION_FIELDS) & {f for f in cfg.to_dict()}
    recorded = {**cfg.to_dict(), "amp": False, "channels_last": None, "checkpoint_every": 50}
    assert cfg.matches(json.loads(json.dumps(recorded)))
    assert split({"amp": True, "lr": 0.1, "channels_last": None}) == ({"lr": 0.1}, {"amp": True, "channels_last": True})
    with pytest.raises(ValueError, match="unknown config field"):
        split({"epoch": 3})
    assert Execution().channels_last is True and Execution().amp is False  # fp32, channels_last by default


def test_execution_is_checked_and_refuses_emulated_bf16(monkeypatch):
    from mkdlib import hardware
    from mkdlib.config import Execution

    assert Execution(amp=True).inference_bf16 is True  # amp: bf16 everywhere
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)
    for asked in ({"amp": True}, {"bf16_inference": True}):
        with pytest.raises(ValueError, match=f"{next(iter(asked))}: this CPU .* does not compute bf16 natively"):
            Execution(**asked).check("cpu")
    assert Execution().check("cpu") == Execution()
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    assert Execution(bf16_inference=True).check("cpu").inference_bf16 is True
    with pytest.raises(ValueError, match="channels_last must be true or false"):
        Execution(channels_last="yes")
    with pytest.raises(ValueError, match="bf16_inference must be true or false, got None"):
        Execution(bf16_inference=None)
    with pytest.raises(ValueError, match="Execution.checkpoint_every must be an integer >= 1"):
        Execution(checkpoint_every=0)
    with pytest.raises(ValueError, match="cache_dtype must be one of"):
        Execution(cache_dtype="int8")


def test_every_field_is_checked_by_its_declared_type():
    for bad, match in ((dict(epochs=True), "epochs must be an integer >= 1, got True"),
                       (dict(epochs=2.5), "epochs must be an integer"), (dict(image_size=16), "image_size"),
                       (dict(lr=float("nan")), "lr must be a finite number > 0"), (dict(lr=0), "lr must be"),
                       (dict(value_weight=-1), "value_weight must be a finite number >= 0"),
                       (dict(value_weight=0, direction_weight=0), "both 0"), (dict(pretrained=1), "pretrained"),
                       (dict(train_layers="pool3"), "list of layer names"), (dict(score_layers=["pool9"]), "pool9"),
                       (dict(extra=[1]), "dict of dataset options"), (dict(cloner="huge"), "cloner must be one of")):
        with pytest.raises(ValueError, match=match):
            MKDConfig(**bad)
    assert MKDConfig(epochs=np.int64(3), lr=1).epochs == 3 and isinstance(MKDConfig(lr=1).lr, float)


def test_learning_rate_schedules():
    from mkdlib.train import learning_rate

    assert {learning_rate(paper_config("mvtec"), step, 4) for step in range(2404)} == {1e-3}  # the paper's
    cfg = paper_config("mvtec", schedule="cosine", lr=3e-3, warmup_epochs=6, epochs=120)
    lrs = [learning_rate(cfg, step, 4) for step in range(480)]
    assert lrs[0] == pytest.approx(3e-3 / 24) and lrs[23] == pytest.approx(3e-3)  # linear warm-up, 24 steps
    assert all(a >= b for a, b in zip(lrs[23:], lrs[24:])) and lrs[-1] < 1e-6  # cosine decay to ~0
    with pytest.raises(ValueError, match="warmup_epochs"):
        paper_config("mnist", schedule="cosine", warmup_epochs=51)
    with pytest.raises(ValueError, match="schedule must be one of"):
        paper_config("mnist", schedule="linear")


def test_fast_overrides_train_a_fraction_and_sample_as_many_cloners():
    from mkdlib.config import FAST_SCHEDULES, fast_overrides

    for name, schedule in FAST_SCHEDULES.items():
        for dataset in PAPER_SETTINGS:
            paper, fast = paper_config(dataset), paper_config(dataset, **fast_overrides(dataset, name))
            assert fast.epochs <= paper.epochs * schedule["fraction"] and fast.schedule == "cosine"
            assert len(fast.eval_epochs()) == len(paper.eval_epochs()) and fast.eval_epochs()[-1] == fast.epochs
    assert fast_overrides("mvtec", "fast-v1")["epochs"] == 120 and fast_overrides("mvtec")["epochs"] == 240
    for dataset in PAPER_SETTINGS:
        paper, fast = paper_config(dataset), paper_config(dataset, **fast_overrides(dataset))
        assert len(fast.eval_epochs()) == len(paper.eval_epochs()) and fast.eval_epochs()[-1] == fast.epochs
        assert fast.to_dict().keys() == paper.to_dict().keys()  # the schedule only:
        assert {k for k in fast.to_dict() if fast.to_dict()[k] != paper.to_dict()[k]} <= {
            "epochs", "lr", "schedule", "warmup_epochs", "sample_last", "eval_every"}
