import numpy as np
import pytest
import torch

from mkdlib.config import paper_config
from mkdlib.features import FeatureStore
from mkdlib.scoring import evaluate_checkpoints, score, score_loss, summarize
from mkdlib.train import build, fit


class Toy(torch.utils.data.Dataset):
    """Normal images are dark noise, anomalies bright: any sensible detector separates them."""

    def __init__(self, n=24):
        g = torch.Generator().manual_seed(1)
        self.labels = np.r_[np.zeros(n // 2), np.ones(n // 2)].astype(int)
        self.x = torch.rand(n, 3, 32, 32, generator=g) * 0.3 + torch.as_tensor(self.labels).view(-1, 1, 1, 1) * 0.6

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": int(self.labels[i])}


def _cfg():
    return paper_config("mnist", epochs=4, batch_size=8, eval_every=1, sample_last=2)


def test_batched_scores_equal_one_image_at_a_time():
    cfg = _cfg()
    source, cloner, _ = build(cfg, weights=None)
    data, loss = Toy(), score_loss(cfg)
    batched = score(cloner, loss, data, source=source, batch_size=16)
    single = np.concatenate([score(cloner, loss, torch.utils.data.Subset(data, [i]), source=source) for i in range(len(data))])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-6)
    features = FeatureStore.compute(source, data, loss.layers, batch_size=5)
    np.testing.assert_allclose(score(cloner, loss, data, features=features, batch_size=7), batched, rtol=1e-4, atol=1e-6)
    assert cloner.training  # mode restored


def test_evaluate_checkpoints_reports_final_and_sampled(tmp_path):
    cfg = _cfg()
    source, cloner, _ = build(cfg, weights=None)
    train = torch.utils.data.Subset(Toy(), range(12))  # normal images only
    fit(cloner, source, train, cfg, checkpoint_dir=tmp_path, progress=False)
    result = evaluate_checkpoints(cloner, source, Toy(), cfg, tmp_path)
    assert sorted(result["per_epoch"]) == [2, 3, 4] and result["final_epoch"] == 4
    assert result["final"] == result["per_epoch"][4]
    assert result["mean"] == pytest.approx(np.mean(list(result["per_epoch"].values())))
    assert result["final"] > 0.9
    assert result["scores"].shape == (24,)


def test_summarize_and_bad_input(tmp_path):
    assert summarize({10: 0.5, 20: 0.7})["std"] == pytest.approx(0.1)
    with pytest.raises(ValueError):
        summarize({})
    cfg = _cfg()
    source, cloner, loss = build(cfg, weights=None)
    with pytest.raises(ValueError, match="exactly one"):
        score(cloner, loss, Toy())
    with pytest.raises(FileNotFoundError, match="cloner_e0002"):
        evaluate_checkpoints(cloner, source, Toy(), cfg, tmp_path)
