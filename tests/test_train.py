import os

import numpy as np
import pytest
import torch

from mkdlib.checkpoints import LAST, cloner_path
from mkdlib.config import MKDConfig, paper_config
from mkdlib.train import build, fit


def _cfg(**kw):
    base = dict(epochs=4, batch_size=8, eval_every=2, sample_last=2, checkpoint_every=2, deterministic=True)
    return paper_config("mnist", **{**base, **kw})


def _data(n=20, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_cloner_gets_gradients_and_source_none():
    source, cloner, loss = build(_cfg(), weights=None)
    x = _data(4)
    loss(cloner(x), source(x)).backward()
    assert all(p.grad is not None for p in cloner.parameters())
    assert all(p.grad is None for p in source.parameters())


def test_tiny_fit_lowers_the_loss_and_writes_checkpoints(tmp_path):
    cfg = _cfg(epochs=6)
    source, cloner, _ = build(cfg, weights=None)
    history = fit(cloner, source, _data(), cfg, checkpoint_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["loss"] < history[0]["loss"]
    assert (tmp_path / LAST).exists() and (tmp_path / "history.csv").exists()
    assert all(cloner_path(tmp_path, e).exists() for e in cfg.eval_epochs())


@pytest.mark.parametrize("schedule", [{}, {"schedule": "cosine", "warmup_epochs": 1, "lr": 3e-3}])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, schedule):
    cfg = _cfg(**schedule)  # the paper's constant lr, and the fast profile's schedule (a function of the step)
    source, cloner, _ = build(cfg, weights=None)
    fit(cloner, source, _data(), cfg, checkpoint_dir=tmp_path / "a", progress=False)
    expected = _weights(cloner)

    class Interrupt(Exception):
        pass

    def stop_after_3(epoch, _):
        if epoch == 3:  # last.pt was written after epoch 2
            raise Interrupt

    source, cloner, _ = build(cfg, weights=None)
    with pytest.raises(Interrupt):
        fit(cloner, source, _data(), cfg, checkpoint_dir=tmp_path / "b", progress=False, on_epoch_end=stop_after_3)
    source, cloner, _ = build(cfg, weights=None)  # a fresh process would start from scratch weights
    history = fit(cloner, source, _data(), cfg, checkpoint_dir=tmp_path / "b", progress=False)
    assert len(history) == 4
    for k, v in expected.items():
        assert torch.equal(cloner.state_dict()[k], v), k
    # a finished run trains nothing more
    assert fit(cloner, source, _data(), cfg, checkpoint_dir=tmp_path / "b", progress=False) == history


def test_cached_and_uncached_training_agree():
    results = []
    for cache in (True, False):
        cfg = _cfg(cache_features=cache)
        source, cloner, _ = build(cfg, weights=None)
        fit(cloner, source, _data(), cfg, progress=False)
        results.append(_weights(cloner))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-5)


def test_float16_cache_and_spill_to_disk(tmp_path):
    cfg = _cfg(epochs=2, cache_dtype="float16", memory_budget_mb=0)  # forces the memory-mapped spill
    source, cloner, _ = build(cfg, weights=None)
    history = fit(cloner, source, _data(), cfg, checkpoint_dir=tmp_path, progress=False)
    assert np.isfinite(history[-1]["loss"])
    assert (tmp_path / "features" / "pool2.npy").exists()


def test_non_finite_loss_names_the_epoch():
    cfg = _cfg()
    source, cloner, _ = build(cfg, weights=None)
    x = _data()
    x[3] = float("nan")
    with pytest.raises(FloatingPointError, match="epoch 1"):
        fit(cloner, source, x, cfg, progress=False)


@pytest.mark.realdata
@pytest.mark.skipif(not (os.environ.get("MKDLIB_VGG16_WEIGHTS") and os.environ.get("MKDLIB_DATA")),
                    reason="needs MKDLIB_VGG16_WEIGHTS and MKDLIB_DATA")
def test_real_weights_two_epochs_on_mnist_zero_beat_chance():
    from torch.utils.data import Subset

    from mkdlib.datasets import get_dataset
    from mkdlib.metrics import image_auroc
    from mkdlib.scoring import score, score_loss

    cfg = paper_config("mnist", epochs=2, batch_size=8)  # 16 steps: one step per epoch is too few to learn
    source, cloner, _ = build(cfg)
    train = Subset(get_dataset("mnist", split="train", normal_class=0), range(64))
    fit(cloner, source, train, cfg, progress=False)
    test = get_dataset("mnist", split="test", normal_class=0)
    idx = np.random.default_rng(0).choice(len(test), 400, replace=False)
    scores = score(cloner, score_loss(cfg), Subset(test, idx), source=source)
    auroc = image_auroc(test.labels[idx], scores)
    assert auroc > 0.7, auroc


def test_plan_text_and_speed_measurement():
    from mkdlib.train import measure_speed, plan_text
    assert plan_text(601, 209, 21.0) == ("601 epochs x 209 images = 125,609 image passes: about 1 h 40 min at "
                                         "21 img/s measured here")
    assert plan_text(2, 8, 1000.0).endswith("under a minute at 1e+03 img/s measured here")
    cfg = MKDConfig(image_size=32, batch_size=4)
    source, cloner, loss = build(cfg, weights=None)
    before = {k: v.clone() for k, v in cloner.state_dict().items()}
    assert measure_speed(cloner, source, cfg, loss, cached=True, steps=1) > 0
    assert all(torch.equal(before[k], v) for k, v in cloner.state_dict().items())  # the run's cloner untouched


def test_the_schedule_reaches_the_optimizer(tmp_path, monkeypatch):
    """Each step's lr is config.learning_rate of that step; the constant schedule never touches it."""
    from mkdlib import config as config_module, train

    seen = []
    real = config_module.learning_rate
    monkeypatch.setattr(train, "learning_rate", lambda cfg, step, n: seen.append((step, n)) or real(cfg, step, n))
    cfg = _cfg(schedule="cosine", warmup_epochs=1, lr=3e-3)
    source, cloner, _ = build(cfg, weights=None)
    fit(cloner, source, _data(), cfg, progress=False)
    assert seen == [(step, 3) for step in range(12)]  # 20 images, batch 8: 3 steps per epoch, 4 epochs
    seen.clear()
    source, cloner, _ = build(_cfg(), weights=None)
    fit(cloner, source, _data(), _cfg(), progress=False)
    assert seen == []
