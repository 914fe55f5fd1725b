"""`folder`: a user's normal / abnormal / mask folders, seeded held-out normals, masks by name."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mkdlib.datasets import (AspectRatioWarning, DatasetNotFoundError, MaskSizeError, MissingMaskError, get_dataset,
                             load_images)
from mkdlib.datasets.errors import EmptyFolderError


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture
def user_data(tmp_path) -> Path:
    for i in range(10):
        _png(tmp_path / "normal" / f"n{i}.png", np.full((20, 20, 3), 100, np.uint8))
    for i in range(3):
        _png(tmp_path / "abnormal" / f"a{i}.jpg", np.full((20, 20, 3), 200, np.uint8))
        mask = np.zeros((20, 20), np.uint8)
        mask[i] = 255
        _png(tmp_path / "masks" / f"a{i}.png", mask)
    return tmp_path


def test_folder_split_and_masks(user_data):
    train = get_dataset("folder", user_data, split="train", mask_dir="masks", image_size=20)
    test = get_dataset("folder", user_data, split="test", mask_dir="masks", image_size=20)
    assert len(train) == 8 and len(test) == 5 and list(test.labels) == [0, 0, 1, 1, 1]
    assert not set(train.paths) & set(test.paths)
    for i in range(2, 5):
        row = int(Path(test.paths[i]).stem[1:])
        assert test[i]["mask"][0, row].min() == 1 and test[i]["mask"].sum() == 20
    assert test[0]["mask"].sum() == 0 and train[0]["mask"].sum() == 0


def test_folder_without_masks_and_with_normal_test_dir(user_data):
    (user_data / "normal").rename(user_data / "good_test")
    for i in range(4):
        _png(user_data / "train" / f"t{i}.png", np.zeros((8, 8), np.uint8))
    kw = dict(normal_dir=user_data / "train", normal_test_dir="good_test")
    assert len(get_dataset("folder", user_data, split="train", **kw)) == 4
    test = get_dataset("folder", user_data, split="test", **kw)
    assert len(test) == 13 and not test.has_masks and "mask" not in test[0]


def test_folder_seed_changes_held_out_normals(user_data):
    held = {s: tuple(get_dataset("folder", user_data, split="test", seed=s).paths[:2]) for s in range(4)}
    assert len(set(held.values())) > 1


def test_folder_errors(user_data):
    (user_data / "masks" / "a1.png").unlink()
    with pytest.raises(MissingMaskError, match="a1.jpg"):
        get_dataset("folder", user_data, split="test", mask_dir="masks")
    with pytest.raises(DatasetNotFoundError, match="missing_dir"):
        get_dataset("folder", user_data, split="test", abnormal_dir="missing_dir")
    with pytest.raises(ValueError, match="relative"):
        get_dataset("folder", None, split="train")


def test_folder_mask_of_another_size_is_refused(user_data):
    _png(user_data / "masks" / "a2.png", np.zeros((40, 40), np.uint8))  # its image is 20x20
    with pytest.raises(MaskSizeError, match=r"masks/a2\.png is 40x40 px but its image .*abnormal/a2\.jpg is 20x20"):
        get_dataset("folder", user_data, split="test", mask_dir="masks")


def test_several_abnormal_folders_each_a_group_and_extensions(user_data):
    for i in range(2):
        _png(user_data / "scratch" / f"s{i}.png", np.full((20, 20, 3), 50, np.uint8))
    (user_data / "scratch" / "notes.txt").write_text("not an image")
    test = get_dataset("folder", user_data, split="test", abnormal_dir=["abnormal", "scratch"], image_size=20)
    assert list(test.labels) == [0, 0, 1, 1, 1, 1, 1]
    assert list(test.groups)[2:] == ["abnormal"] * 3 + ["scratch"] * 2
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(user_data / "scratch" / "s9.bmp")
    only_png = get_dataset("folder", user_data, split="test", abnormal_dir=["scratch"], extensions=[".PNG"],
                           image_size=20)  # case-insensitive; the .bmp is left out
    assert list(only_png.labels) == [0, 0, 1, 1]
    with pytest.raises(EmptyFolderError, match="abnormal"):  # its .jpg images are not of these extensions
        get_dataset("folder", user_data, split="test", abnormal_dir=["abnormal"], extensions=["png"], image_size=20)
    with pytest.raises(ValueError, match="abnormal_dir must be a folder or a list"):
        get_dataset("folder", user_data, split="test", abnormal_dir=3, image_size=20)


def _aspect_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, AspectRatioWarning)]


def test_non_square_images_are_said_once_per_dataset_and_per_call(user_data):
    for i in range(3):
        _png(user_data / "normal" / f"n{i}.png", np.full((20, 30, 3), 100, np.uint8))  # 30 wide, 20 high
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        get_dataset("folder", user_data, split="train", image_size=16, normal_test_dir="normal")
        said = _aspect_warnings(record)
        assert len(said) == 1, said  # one for the dataset, not one per image
        assert re.search(r"folder train: .*resized to 16x16 .*aspect ratio.*normal/n0\.png is 30x20 px", said[0])
        load_images([user_data / "normal" / f"n{i}.png" for i in range(3)], "folder", 16)
        assert len(_aspect_warnings(record)) == 2  # one more for the call
        get_dataset("folder", user_data, split="test", image_size=16, abnormal_dir=None,
                    normal_test_dir="abnormal", cache=False)[0]  # square images: nothing to say
        assert len(_aspect_warnings(record)) == 2
