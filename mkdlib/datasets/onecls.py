"""MNIST, Fashion-MNIST and CIFAR-10 under the one-class protocol (paper Sec. 4, "Evaluation Protocol").

One class is normal: train on its training images, test on the whole test set (the other nine classes
anomalous). Read through torchvision's dataset classes, which download only when asked.
"""

from pathlib import Path

import numpy as np
import torchvision.datasets as tvd
import torchvision.transforms as T
from PIL import Image
from torch import Tensor

from .base import ImageDataset, resize_to_uint8
from .roots import ENV_VAR, data_root, not_found

# name -> (torchvision class, its folder under root)
TORCHVISION: dict[str, tuple[type, str]] = {
    "mnist": (tvd.MNIST, "MNIST"),
    "fashionmnist": (tvd.FashionMNIST, "FashionMNIST"),
    "cifar10": (tvd.CIFAR10, "cifar-10-batches-py"),
}
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashionmnist": tuple(tvd.FashionMNIST.classes),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def class_index(name: str, normal_class: int | str) -> int:
    """0..9 from an index or a class name ("cat", "T-shirt/top", "7")."""
    names = CLASS_NAMES[name]
    if isinstance(normal_class, str) and normal_class in names:
        return names.index(normal_class)
    if isinstance(normal_class, str) and normal_class.isdigit():
        normal_class = int(normal_class)
    if isinstance(normal_class, (int, np.integer)) and not isinstance(normal_class, bool) \
            and 0 <= normal_class < len(names):
        return int(normal_class)
    raise ValueError(f"{name}: normal_class must be 0..{len(names) - 1} or one of {list(names)}, "
                     f"got {normal_class!r}")


def reference_transform(name: str, image_size: int | None) -> tuple[T.Compose, int]:
    """PIL -> uint8 (C,S,S) as the reference code preprocessed `name`, and S."""
    if name == "cifar10":  # resize 256 (Lanczos) -> center crop 224; the ratio is kept for other S
        crop = image_size or 224
        resize = T.Resize(round(crop * 256 / 224), interpolation=T.InterpolationMode.LANCZOS)
        return T.Compose([resize, T.CenterCrop(crop), T.PILToTensor()]), crop
    size = image_size or 32  # MNIST / F-MNIST: 28 -> 32
    return resize_to_uint8(size), size


class ArrayDataset(ImageDataset):
    """Images already in memory as uint8 arrays, (N, H, W) grey or (N, H, W, 3) RGB."""

    def __init__(self, data: np.ndarray, labels: np.ndarray, groups: list[str], paths: list[str], *,
                 transform: T.Compose, image_size: int, **kwargs) -> None:
        self.data = data
        self._transform = transform
        super().__init__(paths=paths, labels=labels, groups=groups, has_masks=False,
                         image_size=image_size, **kwargs)

    def _prepare(self, i: int) -> tuple[Tensor, None]:
        img = self._transform(Image.fromarray(self.data[i]))  # (1 or 3, S, S) uint8
        return (img.repeat(3, 1, 1) if img.shape[0] == 1 else img), None  # grey repeated to RGB


def build_onecls(name: str, root: str | Path | None, *, split: str, normal_class: int | str,
                 image_size: int | None, download: bool, **kwargs) -> ArrayDataset:
    tv_class, folder = TORCHVISION[name]
    k = class_index(name, normal_class)
    base = data_root(name, root)
    if base.name == folder:  # the dataset folder itself was given, not its parent
        base = base.parent
    try:
        tv = tv_class(str(base), train=split == "train", download=download)
    except (RuntimeError, OSError) as e:  # torchvision: "Dataset not found or corrupted", network errors
        where = Path(f"${ENV_VAR}") / folder if root is None else base / folder  # the documented place
        raise not_found(name, where, f"{name} not found or corrupt under {where} ({e}).") from e
    data = tv.data.numpy() if isinstance(tv.data, Tensor) else np.asarray(tv.data)
    targets = np.asarray(tv.targets)
    keep = np.flatnonzero(targets == k) if split == "train" else np.arange(len(targets))
    transform, size = reference_transform(name, image_size)
    return ArrayDataset(
        data[keep], (targets[keep] != k).astype(np.int64), [CLASS_NAMES[name][t] for t in targets[keep]],
        [f"{folder}/{split}/{j}" for j in keep], transform=transform, image_size=size,
        name=name, split=split, **kwargs)
