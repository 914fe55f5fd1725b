import numpy as np
import pytest
import torch

from mkdlib.losses import MKDLoss

LAYERS = ("pool2", "pool3", "pool4", "pool5")


def _features(seed: int, b: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"pool2": (8, 8, 8), "pool3": (16, 4, 4), "pool4": (32, 2, 2), "pool5": (32, 1, 1)}
    return {k: torch.rand((b, *s), generator=g) for k, s in shapes.items()}


def _reference(c: dict, s: dict, layers, lam: float) -> float:
    """The reference document's formulas, restated in numpy: sum_i dir_i + lambda * sum_i val_i."""
    total = 0.0
    for k in layers:
        a_c, a_s = c[k].numpy().astype(np.float64), s[k].numpy().astype(np.float64)
        value = np.mean((a_c - a_s) ** 2)  # mean over B, C, H, W
        fc, fs = a_c.reshape(len(a_c), -1), a_s.reshape(len(a_s), -1)
        cos = (fc * fs).sum(1) / (np.linalg.norm(fc, axis=1) * np.linalg.norm(fs, axis=1))
        total += np.mean(1 - cos) + lam * value
    return total


@pytest.mark.parametrize("lam", [0.01, 0.5])
def test_parity_with_reference_formulas(lam):
    c, s = _features(0), _features(1)
    got = MKDLoss(LAYERS, value_weight=lam)(c, s).item()
    assert got == pytest.approx(_reference(c, s, LAYERS, lam), rel=1e-5)


def test_score_layers_parity():
    c, s = _features(2), _features(3)
    layers = ("pool3", "pool4", "pool5")
    per_image = MKDLoss(layers, value_weight=0.5)(c, s, reduction="none")
    for b in range(3):
        one = {k: v[b : b + 1] for k, v in c.items()}, {k: v[b : b + 1] for k, v in s.items()}
        assert per_image[b].item() == pytest.approx(_reference(*one, layers, 0.5), rel=1e-5)


def test_mean_of_per_image_equals_scalar():
    c, s = _features(4), _features(5)
    loss = MKDLoss(LAYERS)
    torch.testing.assert_close(loss(c, s, reduction="none").mean(), loss(c, s))


def test_identical_features_give_zero():
    c = _features(6)
    assert MKDLoss(LAYERS)(c, c).item() == pytest.approx(0.0, abs=1e-6)


def test_ablations_drop_a_term():
    c, s = _features(7), _features(8)
    terms = MKDLoss(LAYERS).terms(c, s)
    direction = sum(terms[f"direction_{k}"] for k in LAYERS).mean()
    value = sum(terms[f"value_{k}"] for k in LAYERS).mean()
    # Fig. 5's settings are these weights (items: direction_weight / value_weight overrides)
    torch.testing.assert_close(MKDLoss(LAYERS, value_weight=0.0, direction_weight=1.0)(c, s), direction)
    torch.testing.assert_close(MKDLoss(LAYERS, value_weight=1.0, direction_weight=0.0)(c, s), value)
    torch.testing.assert_close(MKDLoss(LAYERS, value_weight=0.5)(c, s), direction + 0.5 * value)


def test_bad_arguments():
    c, s = _features(9), _features(10)
    with pytest.raises(ValueError, match="reduction"):
        MKDLoss(LAYERS)(c, s, reduction="sum")
    with pytest.raises(ValueError, match="not both 0"):
        MKDLoss(LAYERS, value_weight=0, direction_weight=0)
    with pytest.raises(KeyError, match="pool2"):
        MKDLoss(LAYERS)({"pool3": c["pool3"]}, s)
