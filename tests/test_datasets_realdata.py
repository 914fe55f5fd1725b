"""The real files under $MKDLIB_DATA (skipped when the variable is unset or a dataset is absent)."""

import os
from pathlib import Path

import numpy as np
import pytest

from mkdlib.datasets import get_dataset
from mkdlib.datasets.base import resize_to_uint8
from mkdlib.datasets.io import open_mask

pytestmark = pytest.mark.realdata


def _data(sub: str) -> Path:
    root = os.environ.get("MKDLIB_DATA")
    if not root or not (Path(root) / sub).exists():
        pytest.skip(f"needs $MKDLIB_DATA/{sub}")
    return Path(root)


def test_mnist_class_0():
    _data("MNIST/raw")
    train = get_dataset("mnist", split="train", normal_class=0)
    test = get_dataset("mnist", split="test", normal_class=0)
    assert len(train) == 5923 and len(test) == 10_000 and (test.labels == 0).sum() == 980
    assert train[0]["image"].shape == (3, 32, 32)


def test_headct_splits():
    _data("head_ct/labels.csv")
    tests = []
    for seed in (0, 1, 2):
        train = get_dataset("headct", split="train", seed=seed, cache=False)
        test = get_dataset("headct", split="test", seed=seed, cache=False)
        assert len(train) == 90 and len(test) == 110 and (test.labels == 0).sum() == 10
        assert not set(train.paths) & set(test.paths)
        tests.append(frozenset(test.paths))
    assert len(set(tests)) == 3
    assert get_dataset("headct", split="test", seed=0)[0]["image"].shape == (3, 128, 128)


def test_leather_masks_aligned_by_name():
    root = _data("mvtec_leather_sample/leather") / "mvtec_leather_sample"
    assert len(get_dataset("mvtec", root, split="train", normal_class="leather")) == 4
    test = get_dataset("mvtec", root, split="test", normal_class="leather")
    assert len(test) == 15 and (test.labels == 0).sum() == 4
    resize = resize_to_uint8(128)
    for i in range(len(test)):
        image, mask = Path(test.files[i]), test[i]["mask"]
        if test.labels[i] == 0:
            assert test.mask_files[i] is None and mask.sum() == 0
            continue
        expected = root / "leather" / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
        assert test.mask_files[i] == expected
        assert np.array_equal((mask * 255).round().byte().numpy(), resize(open_mask(expected)).numpy())
        assert mask.sum() > 0
