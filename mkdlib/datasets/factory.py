"""`get_dataset`: one entry point for every dataset of the paper (Sec. 4) plus `folder` and `synthetic`.

Defaults follow the reference code's preprocessing per dataset (docs/differences.md: preprocessing as coded);
`imagenet_norm=True` on a dataset where the reference did not normalise, or False on CIFAR-10, is a deviation
from it, and so is `grey=True` (every image its luma in all three channels).
"""

import inspect
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image

from .base import IMAGENET_MEAN, IMAGENET_STD, AspectNote, ImageDataset, grey_rgb, resize_to_uint8
from .folder import build_folder
from .io import open_image, upright_rgb
from .medical import build_brainmri, build_headct, build_retina
from .mvtec import build_mvtec
from .onecls import TORCHVISION, build_onecls, reference_transform
from .synthetic import build_synthetic

ALIASES = {"fmnist": "fashionmnist", "fashion_mnist": "fashionmnist", "fashion-mnist": "fashionmnist",
           "cifar": "cifar10", "cifar-10": "cifar10", "mvtec_ad": "mvtec", "mvtecad": "mvtec",
           "oct": "retina", "oct2017": "retina", "head_ct": "headct", "brain_mri": "brainmri"}
WITH_CLASS = ("mnist", "fashionmnist", "cifar10", "mvtec")  # normal_class required
SEEDED = ("headct", "brainmri", "folder", "synthetic")  # `seed` picks the split / the generated data
DOWNLOADABLE = ("mnist", "fashionmnist", "cifar10")
REFERENCE_IMAGENET_NORM = {"cifar10": True}  # every other dataset: [0, 1] inputs, no normalisation


BUILDERS = {
    "mnist": partial(build_onecls, "mnist"),
    "fashionmnist": partial(build_onecls, "fashionmnist"),
    "cifar10": partial(build_onecls, "cifar10"),
    "mvtec": build_mvtec,
    "retina": build_retina,
    "headct": build_headct,
    "brainmri": build_brainmri,
    "folder": build_folder,
    "synthetic": build_synthetic,
}
DATASET_NAMES = tuple(BUILDERS)


# keyword parameters of builders that get_dataset sets itself: not dataset options
_SET_BY_GET_DATASET = {"split", "image_size", "normal_class", "seed", "download"}


def dataset_options(key: str) -> tuple[str, ...]:
    """The options dataset `key` accepts beyond get_dataset's own arguments: its builder's keyword
    parameters, read from its signature so that the list cannot drift from the code."""
    params = inspect.signature(BUILDERS[key]).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _SET_BY_GET_DATASET)


def describe_options(key: str) -> str:
    """`key`'s dataset options with their defaults, for --help, e.g. "normal_dir='normal', ..."."""
    params = inspect.signature(BUILDERS[key]).parameters
    return ", ".join(f"{name}={params[name].default!r}" for name in dataset_options(key)) or "none"


def _key(name: str) -> str:
    """The dataset `name` (or an alias of it) means."""
    key = ALIASES.get(name.lower(), name.lower()) if isinstance(name, str) else name
    if key not in BUILDERS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {list(DATASET_NAMES)}")
    return key


def get_dataset(name: str, root: str | Path | None = None, *, split: str,
                normal_class: int | str | None = None, seed: int = 0, image_size: int | None = None,
                imagenet_norm: bool | None = None, grey: bool = False, augment: bool = False,
                cache: bool = True, download: bool = False, **options) -> ImageDataset:
    """The `split` ("train" | "test") of dataset `name`, preprocessed as the reference did.

    root: the dataset's folder or its parent; None = `$MKDLIB_DATA` (synthetic: a cache folder).
    normal_class: the class (mnist, fashionmnist, cifar10) or category (mvtec); None elsewhere.
    seed: the split (headct, brainmri, folder) or the generated data (synthetic).
    image_size: overrides the reference's input size. imagenet_norm: None = the reference's choice.
    grey: replace each image by its luma, repeated to three channels (not the reference's preprocessing).
    augment: the paper's HeadCT augmentation, applied per item to the train split only.
    cache: decode and resize every image once, at construction (False: per item).
    options: dataset specific, e.g. folder's normal_dir / abnormal_dir / mask_dir, headct's n_test_normal.
    """
    key = _key(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    valid = dataset_options(key)  # refused by name (e.g. `mkd train --option bogus=1`), not by a TypeError
    if unknown := sorted(set(options) - set(valid)):
        raise ValueError(f"{key}: unknown dataset option(s) {unknown}; valid options for {key}: "
                         f"{list(valid) if valid else 'none'}")
    if key in WITH_CLASS:
        if normal_class is None:
            raise ValueError(f"{key} needs normal_class (the normal class or category)")
        options["normal_class"] = normal_class
    elif normal_class is not None:
        raise ValueError(f"{key} has a fixed normal class; leave normal_class=None (got {normal_class!r})")
    if key in DOWNLOADABLE:
        options["download"] = download
    elif download:
        raise ValueError(f"download=True is for {list(DOWNLOADABLE)}; for MVTec AD use download_mvtec(), "
                         f"for the others see mkdlib/datasets/README_DATA.md")
    if key in SEEDED:
        options["seed"] = seed
    return BUILDERS[key](root, split=split, image_size=image_size, normalize=imagenet_normalised(key, imagenet_norm),
                         augment=augment and split == "train", cache=cache, grey=_flag("grey", grey), **options)


def _flag(name: str, value) -> bool:
    """A boolean option as given by a caller or a spec's JSON (True / False only, not "yes" or 1.5)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def load_images(files: Sequence[str | Path | Image.Image], name: str, image_size: int, *,
                imagenet_norm: bool | None = None, grey: bool = False,
                aspect: AspectNote | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """New image files prepared as dataset `name` prepares its own: (inputs, display), both (N, 3, S, S)
    float; inputs as the networks take them (ImageNet-normalised where the dataset is, see
    get_dataset's imagenet_norm and grey), display the same images in [0, 1]. Errors name an unreadable
    file. Non-square images squashed to a square are said once per call, or once per `aspect` shared by
    several calls (predict's). A PIL image in `files` takes the same path from its decoded pixels on
    (EXIF turn, mode to 8-bit RGB, the dataset's resize), so it scores as the file it was read from."""
    key = _key(name)
    # mnist, fashionmnist, cifar10: the reference's resize (and crop); the others a square resize
    transform = reference_transform(key, image_size)[0] if key in TORCHVISION else resize_to_uint8(image_size)
    aspect = aspect or AspectNote(image_size, f"{key} images")
    prepared = []
    for f in files:
        image = upright_rgb(f) if isinstance(f, Image.Image) else open_image(f)
        if key != "cifar10":  # cifar10's resize keeps the ratio and crops the centre
            aspect.see(f if not isinstance(f, Image.Image) else getattr(f, "filename", "") or "an image in memory",
                       image.size)
        prepared.append(transform(image))
    images = torch.stack(prepared)  # (N, 3, S, S) uint8
    display = (grey_rgb(images) if _flag("grey", grey) else images).float().div(255)
    normalize = imagenet_normalised(key, imagenet_norm)
    return (TF.normalize(display, IMAGENET_MEAN, IMAGENET_STD) if normalize else display), display


def imagenet_normalised(name: str, imagenet_norm: bool | None = None) -> bool:
    """Whether dataset `name`'s network inputs are ImageNet-normalised: imagenet_norm as given, else the
    reference's choice (cifar10 only)."""
    key = ALIASES.get(name.lower(), name.lower())
    return REFERENCE_IMAGENET_NORM.get(key, False) if imagenet_norm is None else bool(imagenet_norm)
