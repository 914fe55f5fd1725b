import os

import numpy as np
import pytest
import torch

from mkdlib.checkpoints import LAST, cloner_path
from mkdlib.config import Execution, paper_config
from mkdlib.train import build, fit

EX = Execution(checkpoint_every=2, deterministic=True)


def _cfg(**kw):
    return paper_config("mnist", **{**dict(epochs=4, batch_size=8, eval_every=2, sample_last=2), **kw})


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
    history = fit(cloner, source, _data(), cfg, execution=EX, checkpoint_dir=tmp_path, progress=False)
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert history[-1]["loss"] < history[0]["loss"]
    assert (tmp_path / LAST).exists() and (tmp_path / "history.csv").exists()
    assert all(cloner_path(tmp_path, e).exists() for e in cfg.eval_epochs())


@pytest.mark.parametrize("schedule", [{}, {"schedule": "cosine", "warmup_epochs": 1, "lr": 3e-3}])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, schedule):
    cfg = _cfg(**schedule)  # the paper's constant lr, and the fast profile's schedule (a function of the step)
    source, cloner, _ = build(cfg, weights=None)
    fit(cloner, source, _data(), cfg, execution=EX, checkpoint_dir=tmp_path / "a", progress=False)
    expected = _weights(cloner)

    class Interrupt(Exception):
        pass

    def stop_after_3(epoch, _):
        if epoch == 3:  # last.pt was written after epoch 2
            raise Interrupt

    source, cloner, _ = build(cfg, weights=None)
    with pytest.raises(Interrupt):
        fit(cloner, source, _data(), cfg, execution=EX, checkpoint_dir=tmp_path / "b", progress=False,
            on_epoch_end=stop_after_3)
    source, cloner, _ = build(cfg, weights=None)  # a fresh process would start from scratch weights
    history = fit(cloner, source, _data(), cfg, execution=EX, checkpoint_dir=tmp_path / "b", progress=False)
    assert len(history) == 4
    for k, v in expected.items():
        assert torch.equal(cloner.state_dict()[k], v), k
    # a finished run trains nothing more
    assert fit(cloner, source, _data(), cfg, execution=EX, checkpoint_dir=tmp_path / "b", progress=False) == history


def test_cached_and_uncached_training_agree():
    results = []
    for cache in (True, False):
        cfg = _cfg()
        source, cloner, _ = build(cfg, weights=None, deterministic=True)
        fit(cloner, source, _data(), cfg, execution=Execution(deterministic=True, cache_features=cache), progress=False)
        results.append(_weights(cloner))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-5)


def test_float16_cache_and_spill_to_disk(tmp_path):
    cfg = _cfg(epochs=2)
    spill = Execution(cache_dtype="float16", memory_budget_mb=0)  # forces the memory-mapped spill
    source, cloner, _ = build(cfg, weights=None)
    history = fit(cloner, source, _data(), cfg, execution=spill, checkpoint_dir=tmp_path, progress=False)
    assert np.isfinite(history[-1]["loss"])
    assert (tmp_path / "features" / "pool2.npy").exists()


def test_non_finite_loss_names_the_epoch_and_keeps_the_history(tmp_path):
    cfg = _cfg()
    source, cloner, _ = build(cfg, weights=None)
    x = _data()
    poison = lambda epoch, _: x.__setitem__(3, float("nan")) if epoch == 3 else None  # noqa: E731
    with pytest.raises(FloatingPointError, match="epoch 4"):
        fit(cloner, source, x, cfg, execution=EX, checkpoint_dir=tmp_path, progress=False, on_epoch_end=poison)
    assert (tmp_path / "history.csv").read_text().splitlines()[-1].startswith("3,")  # last.pt has epoch 2 only


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


def test_the_schedule_reaches_the_optimizer(monkeypatch):
    """Each step's lr is train.learning_rate of that step: cfg.lr throughout for the paper's constant one."""
    from mkdlib import train

    seen = []
    real = train.learning_rate
    monkeypatch.setattr(train, "learning_rate", lambda cfg, step, n: seen.append((step, n, real(cfg, step, n)))
                        or real(cfg, step, n))
    cfg = _cfg(schedule="cosine", warmup_epochs=1, lr=3e-3)
    source, cloner, _ = build(cfg, weights=None)
    fit(cloner, source, _data(), cfg, progress=False)
    assert [s[:2] for s in seen] == [(step, 3) for step in range(12)]  # 20 images, batch 8: 3 steps an epoch, 4 epochs
    assert seen[0][2] == pytest.approx(1e-3) and seen[2][2] == pytest.approx(3e-3) and seen[-1][2] < 3e-4
    seen.clear()
    source, cloner, _ = build(_cfg(), weights=None)
    fit(cloner, source, _data(), _cfg(), progress=False)
    assert {s[2] for s in seen} == {1e-3}
