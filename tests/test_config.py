import json
from dataclasses import replace

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
    """Precision, layout and caching may differ between a record and a resumed run: the same experiment."""
    cfg = paper_config("mvtec")
    recorded = json.loads(json.dumps(replace(cfg, amp=False, channels_last=False, checkpoint_every=50).to_dict()))
    assert replace(cfg, amp=True, channels_last=True).matches(recorded)
    assert "amp" not in cfg.experiment() and "epochs" in cfg.experiment()


def test_resolve_chooses_the_layout_and_refuses_emulated_bf16(monkeypatch):
    from mkdlib import hardware

    auto = paper_config("mnist").resolve("cpu")
    assert (auto.amp, auto.bf16_inference, auto.channels_last) == (False, False, True)  # fp32 by default
    assert paper_config("mnist", channels_last=False).resolve("cpu").channels_last is False
    assert paper_config("mnist", amp=True).inference_bf16 is True  # amp: bf16 everywhere
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)
    for asked in ({"amp": True}, {"bf16_inference": True}):
        with pytest.raises(ValueError, match=f"{next(iter(asked))}: this CPU .* does not compute bf16 natively"):
            paper_config("mnist", **asked).resolve("cpu")
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    assert paper_config("mnist", bf16_inference=True).resolve("cpu").inference_bf16 is True
    with pytest.raises(ValueError, match="channels_last must be true or false or null"):
        MKDConfig(channels_last="yes")
    with pytest.raises(ValueError, match="bf16_inference must be true or false, got None"):
        MKDConfig(bf16_inference=None)


def test_learning_rate_schedules():
    from mkdlib.config import learning_rate

    assert {learning_rate(paper_config("mvtec"), step, 4) for step in range(2404)} == {1e-3}  # the paper's
    cfg = paper_config("mvtec", schedule="cosine", lr=3e-3, warmup_epochs=6, epochs=120)
    lrs = [learning_rate(cfg, step, 4) for step in range(480)]
    assert lrs[0] == pytest.approx(3e-3 / 24) and lrs[23] == pytest.approx(3e-3)  # linear warm-up, 24 steps
    assert all(a >= b for a, b in zip(lrs[23:], lrs[24:])) and lrs[-1] < 1e-6  # cosine decay to ~0
    with pytest.raises(ValueError, match="warmup_epochs"):
        paper_config("mnist", schedule="cosine", warmup_epochs=51)
    with pytest.raises(ValueError, match="schedule must be one of"):
        paper_config("mnist", schedule="linear")


def test_fast_overrides_train_a_fifth_and_sample_as_many_cloners():
    from mkdlib.config import fast_overrides

    for dataset in PAPER_SETTINGS:
        paper, fast = paper_config(dataset), paper_config(dataset, **fast_overrides(dataset))
        assert fast.epochs * 5 <= paper.epochs and fast.schedule == "cosine"
        assert len(fast.eval_epochs()) == len(paper.eval_epochs()) and fast.eval_epochs()[-1] == fast.epochs
        assert fast.experiment().keys() == paper.experiment().keys()  # the schedule only:
        assert {k for k in fast.experiment() if fast.experiment()[k] != paper.experiment()[k]} <= {
            "epochs", "lr", "schedule", "warmup_epochs", "sample_last", "eval_every"}
