"""scripts/select_fast_schedule.py: the validation anomalies it makes from training images."""

import importlib.util
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "select_fast_schedule.py"


def _script():
    spec = importlib.util.spec_from_file_location("select_fast_schedule", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cutpaste_pastes_one_rectangle_of_another_image_and_is_seeded():
    cutpaste = _script().cutpaste
    images = torch.stack([torch.full((3, 40, 40), float(i)) for i in range(4)])  # image i is all i
    out = cutpaste(images, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and torch.equal(images[:, 0, 0, 0], torch.arange(4.0))  # input untouched
    for i in range(4):
        changed = out[i] != i
        assert changed.any() and (out[i][changed] != i).all()  # some pixels come from another image
        rows, cols = changed.any(0).nonzero(as_tuple=True)
        h, w = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert 4 <= h <= 10 and 4 <= w <= 10 and changed[0].sum() == h * w  # one rectangle, 10-25% of the side
    assert torch.equal(out, cutpaste(images, torch.Generator().manual_seed(1)))


def test_every_candidate_changes_only_the_schedule():
    from mkdlib.config import fast_overrides

    for schedule, extra in _script().CANDIDATES.values():
        assert set(schedule) == {"fraction", "schedule", "lr"} and set(extra) <= {"warmup_epochs"}
        changed = fast_overrides("mvtec", **schedule)
        assert set(changed) == {"epochs", "warmup_epochs", "sample_last", "eval_every", "schedule", "lr"}
