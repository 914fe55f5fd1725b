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
    older = {k: v for k, v in recorded.items() if k != "channels_last"}  # written before a field existed
    assert cfg.matches(older)
    assert not replace(cfg, channels_last=True).matches(older)  # a new field away from its default
    assert not cfg.matches({**recorded, "epochs": 600})
    assert not cfg.matches({**recorded, "schedule": "cosine"})  # a field this version does not know
