"""get_dataset's argument checks, the data-root fallback, and load_images."""

import pytest
import torch

from mkdlib.datasets import DATASET_NAMES, DatasetNotFoundError, ImageReadError, get_dataset, load_images

SMALL = dict(n_train=4, n_test_good=2, n_test_defect=3, size=32)


def test_names():
    assert set(DATASET_NAMES) == {"mnist", "fashionmnist", "cifar10", "mvtec", "retina", "headct", "brainmri",
                                  "folder", "synthetic"}


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'mnist'.*'synthetic'"):
        get_dataset("imagenet", split="train")


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="mnist", split="val", normal_class=0), "split"),
    (dict(name="mnist", split="train"), "normal_class"),
    (dict(name="headct", split="train", normal_class=1), "normal_class=None"),
    (dict(name="headct", split="train", download=True), "download_mvtec"),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        get_dataset(**kwargs)


def test_no_root_and_no_env_var(monkeypatch):
    monkeypatch.delenv("MKDLIB_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match=r"(?s)MKDLIB_DATA.*head_ct"):
        get_dataset("headct", split="train")


def test_names_are_case_insensitive_and_augmented_data_is_not_deterministic(tmp_path):
    ds = get_dataset("SYNTHETIC", tmp_path, split="train", **SMALL)
    assert ds.deterministic and ds[0]["image"].shape == (3, 32, 32)
    assert not get_dataset("synthetic", tmp_path, split="train", augment=True, **SMALL).deterministic


@pytest.mark.parametrize("norm,grey", [(None, False), (True, False), (None, True), (True, True)])
def test_load_images_prepares_files_as_the_dataset_does(tmp_path, norm, grey):
    ds = get_dataset("synthetic", tmp_path, split="test", image_size=24, imagenet_norm=norm, grey=grey, **SMALL)
    inputs, display = load_images(ds.paths, "synthetic", 24, imagenet_norm=norm, grey=grey)
    expected = torch.stack([ds[i]["image"] for i in range(len(ds))])
    assert inputs.shape == display.shape == (len(ds), 3, 24, 24)
    torch.testing.assert_close(inputs, expected)
    assert display.min() >= 0 and display.max() <= 1 and torch.equal(inputs, display) == (norm is None)


def test_grey_gives_each_pixel_its_luma_in_every_channel(tmp_path):
    colour = get_dataset("synthetic", tmp_path, split="test", **SMALL)
    grey = get_dataset("synthetic", tmp_path, split="test", grey=True, **SMALL)
    uncached = get_dataset("synthetic", tmp_path, split="test", grey=True, cache=False, **SMALL)
    rgb = colour[3]["image"].mul(255).round()  # (3, H, W), the synthetic images are coloured
    r, g, b = rgb
    luma = torch.floor((299 * r + 587 * g + 114 * b + 500) / 1000) / 255  # ITU-R 601, Pillow's 'L'
    assert not torch.equal(rgb[0], rgb[1])
    for ds in (grey, uncached):
        x = ds[3]["image"]
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
        torch.testing.assert_close(x[0], luma, atol=0, rtol=0)
    assert "grey=True" in repr(grey) and torch.equal(grey[3]["mask"], colour[3]["mask"])


def test_grey_leaves_grey_images_unchanged_and_refuses_a_non_boolean(tmp_path):
    from mkdlib.datasets.base import grey_rgb
    v = torch.arange(256, dtype=torch.uint8).view(1, 16, 16)
    assert torch.equal(grey_rgb(v.expand(3, 16, 16)), v.expand(3, 16, 16))
    with pytest.raises(ValueError, match="grey must be true or false, got 'yes'"):
        get_dataset("synthetic", tmp_path, split="test", grey="yes", **SMALL)


def test_load_images_errors_name_the_dataset_and_the_file(tmp_path):
    with pytest.raises(ValueError, match="'imagenet'.*'synthetic'"):
        load_images([], "imagenet", 32)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        load_images([bad], "mnist", 32)


@pytest.mark.parametrize("name,valid", [
    ("synthetic", r"\['n_train', 'n_test_good', 'n_test_defect', 'size'\]"),
    ("headct", r"\['n_test_normal'\]"),
    ("mvtec", "none"),
])
def test_unknown_option_is_refused_by_name_with_the_valid_ones(tmp_path, name, valid):
    kwargs = {"normal_class": "bottle"} if name == "mvtec" else {}
    message = rf"{name}: unknown dataset option\(s\) \['bogus'\]; valid options for {name}: {valid}"
    with pytest.raises(ValueError, match=message):
        get_dataset(name, tmp_path, split="train", bogus=1, **kwargs)
    assert not list(tmp_path.iterdir())  # refused before anything is read or generated
