"""What a Detector scores, as one flat list: image files (a folder gives the images in it and its subfolders),
PIL images, numpy arrays ((H, W) grey, (H, W, 3) RGB, (N, H, W, 3) batches; uint8, or float in [0, 1]), torch
tensors ((3, H, W) or (N, 3, H, W) in [0, 1]), or a list of any of these. Images in memory become 8-bit PIL
images and take the files' own path from there (mode, resize, grey, normalisation as the run's training
images): an array scores as the lossless PNG it would be saved to.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mkdlib.datasets import IMAGE_EXTENSIONS, EmptyFolderError, load_images
from mkdlib.datasets.base import AspectNote
from mkdlib.datasets.io import find_images
from mkdlib.outputs import MARKER

SHAPES = ("numpy (H, W) grey, (H, W, 3) RGB or (N, H, W, 3) uint8 or float in [0, 1]; torch (3, H, W) or "
          "(N, 3, H, W) in [0, 1]")


@dataclass(frozen=True)
class Item:
    """One image to score: a file, or pixels in memory (`path` None)."""
    image: Path | Image.Image
    path: str | None


def image_files(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, folders expanded to the images in them and in their subfolders (sorted; hidden files
    and folders, and folders mkdlib wrote, marked MARKER, are skipped); errors name the missing path. A link
    that cannot be followed is kept: predict lists it with the error reading it gives."""
    files: list[Path] = []
    for p in map(Path, paths):
        p = p.expanduser()
        if p.is_dir():
            found = find_images(p, skip_marked=MARKER)
            if not found:
                raise EmptyFolderError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {p} or its subfolders "
                                       f"(hidden ones and mkdlib's outputs, marked {MARKER}, are skipped)")
            files += found
        elif p.is_file() or p.is_symlink():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
    if not files:
        raise ValueError(f"no images given (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return files


def as_items(images) -> list[Item]:
    """`images` (anything the module docstring lists) as a flat list of items, in order."""
    if isinstance(images, (str, Path)):
        return [Item(f, str(f)) for f in image_files([images])]
    if isinstance(images, Image.Image):
        return [Item(images, getattr(images, "filename", "") or None)]
    if isinstance(images, torch.Tensor):
        return [Item(_pil(a), None) for a in _tensor_images(images)]
    if isinstance(images, np.ndarray):
        return [Item(_pil(a), None) for a in _array_images(images)]
    if isinstance(images, (list, tuple)):
        items = [item for x in images for item in as_items(x)]
        if not items:
            raise ValueError("no images given: the list is empty")
        return items
    raise TypeError(f"cannot score a {type(images).__name__}: give a path, a folder, a PIL image, or {SHAPES}")


def _array_images(a: np.ndarray) -> list[np.ndarray]:
    """A numpy image or batch as (H, W) or (H, W, C) arrays, C in 1, 3, 4 (RGBA: composited as files are)."""
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (1, 3, 4)):
        return [a]
    if a.ndim == 4 and a.shape[-1] in (1, 3, 4):
        return list(a)
    raise ValueError(f"cannot read a numpy array of shape {a.shape} as images: expected {SHAPES} "
                     "(channels last; move a (3, H, W) array's channels with a.transpose(1, 2, 0))")


def _tensor_images(t: torch.Tensor) -> list[np.ndarray]:
    """A (C, H, W) or (N, C, H, W) tensor, C in 1 or 3, as channel-last numpy images."""
    if t.ndim in (3, 4) and t.shape[-3] in (1, 3):
        a = t.detach().cpu().numpy()
        return list(np.moveaxis(a if t.ndim == 4 else a[None], 1, -1))
    raise ValueError(f"cannot read a tensor of shape {tuple(t.shape)} as images: expected {SHAPES}")


def _pil(a: np.ndarray) -> Image.Image:
    """An (H, W[, C]) array as an 8-bit PIL image: uint8 as it is, float in [0, 1] rounded to 0-255 (the
    values a uint8 image divided by 255 gives back exactly)."""
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise ValueError("a float image must hold finite values in [0, 1]; this one holds NaN or inf")
        if a.min() < 0 or a.max() > 1:
            raise ValueError(f"a float image must hold values in [0, 1], got [{a.min():g}, {a.max():g}]: divide "
                             "0-255 values by 255, or pass uint8")
        a = np.rint(a * 255).astype(np.uint8)
    elif a.dtype != np.uint8:
        raise ValueError(f"cannot read {a.dtype} pixels: give uint8 (0-255) or float in [0, 1]")
    a = a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    return Image.fromarray(np.ascontiguousarray(a))  # uint8 (H, W) -> L, (H, W, 3) -> RGB, (H, W, 4) -> RGBA


def prepare(items: Sequence[Item], dataset: str, image_size: int, imagenet_norm: bool | None,
            grey: bool = False, aspect: AspectNote | None = None):
    """(positions of the items that load, their (inputs, display) tensors, {position: error} of the others),
    prepared as dataset `dataset` prepares its own (load_images): one bad file does not stop the rest.
    `aspect`: says once that non-square images are squashed (one per predict call, shared by its chunks)."""
    good, inputs, display, bad = [], [], [], {}
    aspect = aspect or AspectNote(image_size, f"{dataset} images")
    for i, item in enumerate(items):
        try:
            x, d = load_images([item.image], dataset, image_size, imagenet_norm=imagenet_norm, grey=grey,
                               aspect=aspect)
        except Exception as err:  # any decoding failure: listed, the other images still scored
            bad[i] = " ".join(str(err).split()) or type(err).__name__
            continue
        good.append(i)
        inputs.append(x)
        display.append(d)
    if not good:
        return good, None, None, bad
    return good, torch.cat(inputs), torch.cat(display), bad
