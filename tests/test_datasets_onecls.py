"""MNIST / Fashion-MNIST / CIFAR-10 on fake files in torchvision's layout: one-class protocol and
the reference preprocessing, restated independently with torchvision transforms."""

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
import torchvision.transforms as T
from PIL import Image

from mkdlib.datasets import DatasetNotFoundError, get_dataset

RNG = np.random.default_rng(0)


def _idx(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(images), 28, 28)
                                                         + images.tobytes())
    (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(labels))
                                                         + labels.tobytes())


@pytest.fixture
def mnist_root(tmp_path) -> Path:
    for prefix, n in (("train", 40), ("t10k", 20)):
        _idx(tmp_path / "MNIST" / "raw", prefix, RNG.integers(0, 255, (n, 28, 28), np.uint8),
             np.arange(n, dtype=np.uint8) % 10)
    return tmp_path


def test_mnist_one_class_protocol_and_preprocessing(mnist_root):
    train = get_dataset("mnist", mnist_root, split="train", normal_class=3)
    test = get_dataset("mnist", mnist_root, split="test", normal_class="3")
    assert len(train) == 4 and (train.labels == 0).all() and set(train.groups) == {"3"}
    assert len(test) == 20 and (test.labels == 0).sum() == 2 and not test.has_masks
    raw = tvd.MNIST(str(mnist_root), train=False)
    reference = T.Compose([T.Resize(32), T.ToTensor()])  # 28 -> 32, [0, 1], no normalisation
    for i in (0, 3, 7):
        x = test[i]["image"]
        assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2])
        assert torch.allclose(x, reference(Image.fromarray(raw.data[i].numpy())).repeat(3, 1, 1), atol=1e-6)
        assert test[i]["label"] == int(raw.targets[i] != 3) and "mask" not in test[i]


def test_mnist_root_may_be_the_dataset_folder(mnist_root):
    assert len(get_dataset("mnist", mnist_root / "MNIST", split="train", normal_class=0)) == 4


def test_bad_class_and_missing_data(mnist_root, tmp_path):
    with pytest.raises(ValueError, match="0..9"):
        get_dataset("mnist", mnist_root, split="train", normal_class=10)
    with pytest.raises(ValueError, match="T-shirt/top"):
        get_dataset("fashionmnist", mnist_root, split="train", normal_class="shoe")
    with pytest.raises(DatasetNotFoundError, match=r"(?s)FashionMNIST.*download=True"):
        get_dataset("fashionmnist", tmp_path / "empty", split="train", normal_class=0)


def test_imagenet_norm_option_is_a_deviation_on_mnist(mnist_root):
    x = get_dataset("mnist", mnist_root, split="test", normal_class=0, imagenet_norm=True)[0]["image"]
    assert x.min() < 0


@pytest.fixture
def cifar_root(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(batches):
        batch = {"data": RNG.integers(0, 255, (4, 3072), np.uint8),  # 4 images of 3 x 32 x 32
                 "labels": [(k + j) % 10 for j in range(4)]}
        (folder / name).write_bytes(pickle.dumps(batch))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names}))
    monkeypatch.setattr(tvd.cifar, "check_integrity", lambda *a, **k: True)  # fake files fail the md5s
    return tmp_path


def test_cifar_reference_preprocessing(cifar_root):
    train = get_dataset("cifar10", cifar_root, split="train", normal_class="dog")  # labels 5, 6, 7, 8
    test = get_dataset("cifar10", cifar_root, split="test", normal_class=5)
    assert len(train) == 3 and set(train.groups) == {"dog"} and list(test.labels) == [0, 1, 1, 1]
    reference = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.LANCZOS), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    raw = tvd.CIFAR10(str(cifar_root), train=False)
    x = test[3]["image"]
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x, reference(Image.fromarray(raw.data[3])), atol=1e-5)
    plain = get_dataset("cifar10", cifar_root, split="test", normal_class=5, imagenet_norm=False,
                        image_size=112)
    assert plain[0]["image"].shape == (3, 112, 112) and plain[0]["image"].min() >= 0
