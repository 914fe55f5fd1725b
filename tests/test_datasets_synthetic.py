"""`synthetic`: deterministic per seed, exact masks, visibly distinct defects, created on demand."""

import numpy as np
import pytest
from PIL import Image

from mkdlib.datasets import get_dataset, make_synthetic

SMALL = dict(n_train=4, n_test_good=2, n_test_defect=3, size=64)


def _arrays(folder):
    return {p.relative_to(folder).as_posix(): np.asarray(Image.open(p))
            for p in sorted(folder.rglob("*.png"))}


def test_deterministic_per_seed(tmp_path):
    a, b = make_synthetic(tmp_path / "a", **SMALL), make_synthetic(tmp_path / "b", **SMALL)
    c = make_synthetic(tmp_path / "a", **SMALL, seed=1)
    arrays_a, arrays_b, arrays_c = _arrays(a), _arrays(b), _arrays(c)
    assert len(arrays_a) == 4 + 2 + 3 * 2
    assert arrays_a.keys() == arrays_b.keys()
    assert all(np.array_equal(arrays_a[k], arrays_b[k]) for k in arrays_a)
    assert not np.array_equal(arrays_a["train/good/000.png"], arrays_c["train/good/000.png"])


def test_second_call_reuses_the_folder(tmp_path):
    path = make_synthetic(tmp_path, **SMALL)
    stamp = (path / "train" / "good" / "000.png").stat().st_mtime_ns
    assert make_synthetic(tmp_path, **SMALL) == path
    assert (path / "train" / "good" / "000.png").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_masks_are_exact_and_defects_distinct(tmp_path):
    path = make_synthetic(tmp_path, **SMALL)
    texture = np.stack([np.asarray(Image.open(p)) for p in (path / "train" / "good").glob("*.png")]) / 255
    for mask_path in (path / "ground_truth").rglob("*_mask.png"):
        mask = np.asarray(Image.open(mask_path)) > 0
        defect = path / "test" / mask_path.parent.name / mask_path.name.replace("_mask", "")
        image = np.asarray(Image.open(defect)) / 255
        assert set(np.unique(np.asarray(Image.open(mask_path)))) == {0, 255} and mask.sum() > 10
        gap = np.abs(image[mask][:, None, :] - texture.reshape(-1, 3).mean(0)).mean()
        assert gap > 0.25, mask_path  # far from the texture's mean colour
        assert image[~mask].min() >= texture.min() - 0.05 and image[~mask].max() <= texture.max() + 0.05


def test_get_dataset_creates_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    test = get_dataset("synthetic", split="test", **SMALL)
    assert str(test.paths[0]).startswith(str(tmp_path / "cache" / "mkdlib" / "synthetic"))
    assert len(test) == 5 and test.labels.sum() == 3 and test.has_masks
    for i in range(len(test)):
        item = test[i]
        assert item["image"].shape == (3, 64, 64) and (item["mask"].sum() > 0) == bool(item["label"])
    train = get_dataset("synthetic", tmp_path, split="train", seed=2, image_size=32, **SMALL)
    assert len(train) == 4 and train[0]["image"].shape == (3, 32, 32)


def test_incomplete_folder_is_not_reused(tmp_path):
    path = make_synthetic(tmp_path, **SMALL)
    (path / "params.json").unlink()
    with pytest.raises(FileExistsError, match="delete"):
        make_synthetic(tmp_path, **SMALL)
