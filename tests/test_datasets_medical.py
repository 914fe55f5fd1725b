"""Retinal OCT, HeadCT, BrainMRI: official or seeded splits, augmentation, layout errors."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mkdlib.datasets import DatasetNotFoundError, EmptyFolderError, get_dataset

# the images here are 40x30, as the real scans are not square either: the warning is expected
pytestmark = pytest.mark.filterwarnings("ignore::mkdlib.datasets.AspectRatioWarning")


def _png(path: Path, seed: int, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, size[::-1], np.uint8)).save(path)


@pytest.fixture
def headct(tmp_path) -> Path:
    root = tmp_path / "head_ct"
    labels = [i % 2 for i in range(30)]  # 15 normal, 15 hemorrhage
    (root / "images").mkdir(parents=True)
    (root / "labels.csv").write_text("id, hemorrhage\n" + "".join(f"{i},{v}\n" for i, v in enumerate(labels)))
    for i in range(30):
        _png(root / "images" / f"{i:03d}.png", i)
    return root


def test_headct_seeded_split(headct):
    splits = {}
    for seed in (0, 1, 2):
        train = get_dataset("headct", headct, split="train", seed=seed)
        test = get_dataset("headct", headct, split="test", seed=seed)
        assert len(train) == 5 and (train.labels == 0).all() and not train.has_masks
        assert len(test) == 25 and (test.labels == 0).sum() == 10
        assert not set(train.paths) & set(test.paths)
        splits[seed] = tuple(test.paths)
        assert "mask" not in test[0] and test[0]["image"].shape == (3, 128, 128)
    assert len(set(splits.values())) == 3
    assert tuple(get_dataset("headct", headct, split="test", seed=1).paths) == splits[1]


def test_headct_root_from_parent_or_env(headct, monkeypatch):
    assert len(get_dataset("headct", headct.parent, split="test")) == 25
    monkeypatch.setenv("MKDLIB_DATA", str(headct.parent))
    assert len(get_dataset("headct", split="test")) == 25


def test_headct_augmentation_is_random_and_train_only(headct):
    train = get_dataset("headct", headct, split="train", augment=True)
    assert not train.deterministic
    torch.manual_seed(0)
    a, b = train[0]["image"], train[0]["image"]
    assert a.shape == (3, 128, 128) and not torch.equal(a, b)
    assert get_dataset("headct", headct, split="test", augment=True).deterministic


def test_headct_missing_image_is_named(headct):
    (headct / "images" / "007.png").unlink()
    with pytest.raises(DatasetNotFoundError, match="007.png"):
        get_dataset("headct", headct, split="train")


def test_headct_missing_root_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)labels\.csv.*head-ct-hemorrhage"):
        get_dataset("headct", tmp_path / "nowhere", split="train")


def test_brainmri_split_and_mixed_extensions(tmp_path):
    for i in range(14):
        _png(tmp_path / "brain_mri" / "no" / f"no {i}.{'jpg' if i % 2 else 'JPG'}", 10)
    for i in range(6):
        _png(tmp_path / "brain_mri" / "yes" / f"Y{i}.png", 200)
    train = get_dataset("brainmri", tmp_path, split="train", seed=3)
    test = get_dataset("brainmri", tmp_path, split="test", seed=3, image_size=64)
    assert len(train) == 4 and len(test) == 16 and test.labels.sum() == 6
    assert test[0]["image"].shape == (3, 64, 64)


@pytest.fixture
def oct2017(tmp_path) -> Path:
    root = tmp_path / "OCT2017"
    for split, n in (("train", 3), ("test", 2)):
        for c in ("CNV", "DME", "DRUSEN", "NORMAL"):
            for i in range(n):
                _png(root / split / c / f"{c}-{i}.jpeg", 50)
    return root


def test_retina_trains_on_normal_only(oct2017):
    train = get_dataset("retina", oct2017, split="train")
    test = get_dataset("retina", oct2017, split="test")
    assert len(train) == 3 and set(train.groups) == {"NORMAL"} and (train.labels == 0).all()
    assert len(test) == 8 and test.labels.sum() == 6
    assert all(g == "NORMAL" for g, v in zip(test.groups, test.labels) if v == 0)


def test_retina_missing_or_empty_class_folder(oct2017):
    for p in (oct2017 / "test" / "CNV").iterdir():
        p.unlink()
    with pytest.raises(EmptyFolderError, match="CNV"):
        get_dataset("retina", oct2017, split="test")
    (oct2017 / "test" / "CNV").rmdir()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)CNV.*Mendeley"):
        get_dataset("retina", oct2017, split="test")


@pytest.mark.parametrize("rows,message", [
    ("id,label\n0,0\n", r"expected columns 'id, hemorrhage', got \['id', 'label'\]"),
    ("id, hemorrhage\n0,0\n1,2\n", r"data row 2: .*hemorrhage 0 or 1, got id='1', hemorrhage='2'"),
    ("id, hemorrhage\n0,0\nseven,1\n", r"data row 2: .*got id='seven'"),
    ("id, hemorrhage\n0,0\n1\n", r"data row 2: .*hemorrhage=''"),
    ("id, hemorrhage\n0,0\n1,1,1\n", r"not a readable CSV table \(ParserError"),
    ("id, hemorrhage\n", "no rows"),
    ("id, hemorrhage\n0,0\n0,1\n", r"id\(s\) \[0\] listed more than once"),
])
def test_headct_bad_labels_csv_names_the_file(headct, rows, message):
    (headct / "labels.csv").write_text(rows)
    with pytest.raises(ValueError, match=rf"(?s)head_ct/labels\.csv.*{message}"):
        get_dataset("headct", headct, split="train")


def test_headct_ids_without_an_image_name_the_csv(headct):
    (headct / "labels.csv").write_text("id, hemorrhage\n0,0\n31,1\n40,0\n")
    with pytest.raises(DatasetNotFoundError, match=r"labels\.csv lists id\(s\) \[31, 40\] without an image.*031\.png"):
        get_dataset("headct", headct, split="train")
