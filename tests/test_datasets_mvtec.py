"""MVTec layout: masks by name, test/good kept, soft masks, errors naming what is missing."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import default_collate

from mkdlib.datasets import (MVTEC_CATEGORIES, DatasetNotFoundError, EmptyFolderError, EmptyMaskError, MaskSizeError,
                             ImageReadError, MissingMaskError, get_dataset)


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _mask(k: int) -> np.ndarray:
    m = np.zeros((64, 64), np.uint8)
    m[8 * k: 8 * k + 8, :] = 255  # a band whose row tells which image it belongs to
    return m


@pytest.fixture
def mvtec(tmp_path) -> Path:
    cat = tmp_path / "mv" / "bottle"
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _png(cat / split / "good" / f"{i:03d}.png", rng.integers(0, 255, (64, 64, 3), np.uint8))
    for k in (0, 2, 5):  # defect images 000, 002, 005; masks 000, 001 (an orphan), 002, 005
        _png(cat / "test" / "broken" / f"{k:03d}.png", np.full((64, 64), 40 * k, np.uint8))
    for k in (0, 1, 2, 5):
        _png(cat / "ground_truth" / "broken" / f"{k:03d}_mask.png", _mask(k))
    return tmp_path / "mv"


def test_train_is_good_only(mvtec):
    ds = get_dataset("mvtec", mvtec, split="train", normal_class="bottle")
    assert len(ds) == 3 and (ds.labels == 0).all() and ds.has_masks
    item = ds[0]
    assert item["image"].shape == (3, 128, 128) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1 and item["mask"].sum() == 0


def test_test_keeps_good_and_matches_masks_by_name(mvtec):
    ds = get_dataset("mvtec", mvtec, split="test", normal_class="bottle", image_size=64)
    assert len(ds) == 5 and list(ds.labels) == [1, 1, 1, 0, 0]
    assert ds.groups == ["broken"] * 3 + ["good"] * 2
    for i in range(len(ds)):
        item = ds[i]
        stem = Path(item["path"]).stem
        expected = _mask(int(stem)) / 255 if item["label"] else np.zeros((64, 64))
        assert np.allclose(item["mask"][0].numpy(), expected), item["path"]
    assert ds.masks.shape == (5, 64, 64)


def test_masks_are_resized_bilinearly_and_stay_soft(mvtec):
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 31] = 255  # one pixel wide: soft after resizing to 48
    _png(mvtec / "bottle" / "ground_truth" / "broken" / "000_mask.png", mask)
    m = get_dataset("mvtec", mvtec, split="test", normal_class="bottle", image_size=48)[0]["mask"]
    assert 0 < m.max() < 1 and ((m > 0) & (m < 1)).any()


def test_cache_off_gives_the_same_items_and_collate_works(mvtec):
    a = get_dataset("mvtec", mvtec, split="test", normal_class="bottle")
    b = get_dataset("mvtec", mvtec, split="test", normal_class="bottle", cache=False)
    batch_a, batch_b = default_collate([a[i] for i in range(5)]), default_collate([b[i] for i in range(5)])
    assert batch_a["image"].shape == (5, 3, 128, 128) and batch_a["mask"].shape == (5, 1, 128, 128)
    assert torch.equal(batch_a["image"], batch_b["image"]) and torch.equal(batch_a["mask"], batch_b["mask"])
    assert batch_a["label"].tolist() == [1, 1, 1, 0, 0]


def test_mask_of_another_size_names_both_files(mvtec):
    _png(mvtec / "bottle" / "ground_truth" / "broken" / "002_mask.png", np.zeros((32, 48), np.uint8))
    message = r"002_mask\.png is 48x32 px but its image .*broken/002\.png is 64x64 px"
    with pytest.raises(MaskSizeError, match=message):  # compared before both are resized to 32
        get_dataset("mvtec", mvtec, split="test", normal_class="bottle", image_size=32)
    lazy = get_dataset("mvtec", mvtec, split="test", normal_class="bottle", cache=False)
    with pytest.raises(MaskSizeError, match=message):  # uncached: when the item is read
        lazy[1]


def test_defect_without_mask_names_the_image(mvtec):
    (mvtec / "bottle" / "ground_truth" / "broken" / "005_mask.png").unlink()
    with pytest.raises(MissingMaskError, match="005.png"):
        get_dataset("mvtec", mvtec, split="test", normal_class="bottle")


def test_empty_defect_folder_is_an_error(mvtec):
    (mvtec / "bottle" / "test" / "crack").mkdir()
    with pytest.raises(EmptyFolderError, match="crack"):
        get_dataset("mvtec", mvtec, split="test", normal_class="bottle")


def test_unknown_category_lists_the_valid_ones(mvtec):
    with pytest.raises(ValueError, match="unknown category 'bottel'.*'bottle'.*'zipper'"):
        get_dataset("mvtec", mvtec, split="train", normal_class="bottel")
    assert len(MVTEC_CATEGORIES) == 15


def test_other_mvtec_layout_folders_load(mvtec):
    (mvtec / "bottle").rename(mvtec / "my_part")
    assert len(get_dataset("mvtec", mvtec, split="test", normal_class="my_part")) == 5


def test_missing_category_names_path_and_source(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"(?s)carpet.*mvtec\.com"):
        get_dataset("mvtec", tmp_path, split="train", normal_class="carpet")


def test_parent_of_mvtec_folder_and_env_var_work(mvtec, monkeypatch):
    mvtec.rename(mvtec.parent / "mvtec")  # the default subfolder of $MKDLIB_DATA
    monkeypatch.setenv("MKDLIB_DATA", str(mvtec.parent))
    assert len(get_dataset("mvtec", split="train", normal_class="bottle")) == 3
    assert len(get_dataset("mvtec", mvtec.parent, split="train", normal_class="bottle")) == 3


def test_empty_masks_of_defect_images_are_refused_at_load_naming_them(mvtec):
    gt = mvtec / "bottle" / "ground_truth" / "broken"
    _png(gt / "000_mask.png", np.zeros((64, 64), np.uint8))  # nothing drawn
    soft = np.zeros((64, 64), np.uint8)
    soft[:4, :4] = [[10, 50, 102, 50]] * 4  # soft, and never 0.5: no defect pixel for the metrics
    _png(gt / "005_mask.png", soft)
    message = r"2 defect images .*empty mask.*000_mask\.png \(peak 0/255\).*005_mask\.png \(peak 102/255\)"
    with pytest.raises(EmptyMaskError, match=message):  # at construction, not after training
        get_dataset("mvtec", mvtec, split="test", normal_class="bottle", image_size=32)
    lazy = get_dataset("mvtec", mvtec, split="test", normal_class="bottle", image_size=32, cache=False)
    assert lazy[1]["mask"].sum() > 0  # 002's mask is fine
    with pytest.raises(EmptyMaskError, match=r"1 defect image .*000_mask\.png"):  # uncached: when read
        lazy[0]


def test_red_and_alpha_masks_load_as_defects(mvtec):
    gt = mvtec / "bottle" / "ground_truth" / "broken"
    red = np.zeros((64, 64, 3), np.uint8)
    red[8:16, :, 0] = 255
    _png(gt / "000_mask.png", red)
    alpha = np.zeros((64, 64, 4), np.uint8)
    alpha[..., :3] = 255  # white everywhere; the defect is where it is opaque
    alpha[16:24, :, 3] = 255
    _png(gt / "002_mask.png", alpha)
    ds = get_dataset("mvtec", mvtec, split="test", normal_class="bottle", image_size=64)
    assert np.array_equal(ds.masks[0], _mask(1) / 255) and np.array_equal(ds.masks[1], _mask(2) / 255)


def test_an_unreadable_link_among_the_images_is_an_error_naming_it(mvtec):
    (mvtec / "bottle" / "train" / "good" / "007.png").symlink_to("007.png")  # loops: skipped silently before
    with pytest.raises(ImageReadError, match=r"good/007\.png"):
        get_dataset("mvtec", mvtec, split="train", normal_class="bottle")
