"""Cached image datasets shared by every loader (docs/differences.md: preprocessing as coded).

Images and masks are decoded and resized once into uint8 tensors; each item is then made float in
[0, 1], optionally augmented (train split) and ImageNet-normalised. An item is a dict:
`image` (3,H,W) float, `label` (0 normal, 1 anomalous), `path`, `index`, and `mask` (1,H,W) in [0, 1]
on datasets with masks (zeros for normal images); datasets without masks have no `mask` key.
`grey=True` replaces every image by its luma in all three channels (e.g. scans saved with a colour cast).
"""

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from torch import Tensor
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .errors import AspectRatioWarning, EmptyMaskError, MaskSizeError
from .io import open_image, open_mask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BILINEAR = T.InterpolationMode.BILINEAR


def resize_to_uint8(size: int) -> T.Compose:
    """PIL -> uint8 (C, size, size): the reference's `Resize((size, size))`, bilinear, aspect not kept."""
    return T.Compose([T.Resize((size, size), interpolation=BILINEAR), T.PILToTensor()])


class AspectNote:
    """Says once, with an AspectRatioWarning naming the first non-square image seen, that images are
    squashed to image_size x image_size: the paper's protocol resizes without keeping the aspect ratio,
    so the resize stays; one warning per dataset or call, not one per image."""

    def __init__(self, image_size: int, where: str) -> None:
        self.image_size, self.where, self.said = image_size, where, False

    def see(self, path: str | Path, size: tuple[int, int]) -> None:
        """`size`: the (width, height) of image `path` as decoded."""
        if self.said or size[0] == size[1]:
            return
        self.said = True
        s = self.image_size
        warnings.warn(f"{self.where}: images are resized to {s}x{s} px without keeping their aspect ratio (the "
                      f"paper's protocol), e.g. {path} is {size[0]}x{size[1]} px; crop or pad them to squares "
                      "first if the distortion matters (said once)", AspectRatioWarning, stacklevel=3)


def grey_rgb(img: Tensor) -> Tensor:
    """(..., 3, H, W) uint8 RGB -> the same shape, each pixel its luma (ITU-R 601: 299 R + 587 G + 114 B,
    rounded; Pillow's 'L') repeated in all three channels. An image that is already grey is unchanged."""
    r, g, b = img.to(torch.int32).unbind(-3)
    luma = ((299 * r + 587 * g + 114 * b + 500) // 1000).to(torch.uint8)
    return luma.unsqueeze(-3).expand_as(img).contiguous()


def for_display(data, images: torch.Tensor) -> torch.Tensor:
    """A dataset's (B, 3, H, W) network inputs back in [0, 1] for display: its normalisation undone."""
    mean, std = getattr(data, "mean", None), getattr(data, "std", None)
    if mean is not None:
        images = images * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    return images.clamp(0, 1)


class ImageDataset(Dataset):
    """Base class: a subclass sets its own fields, implements `_prepare`, then calls this __init__."""

    def __init__(self, *, name: str, split: str, paths: list[str], labels: list[int] | np.ndarray,
                 groups: list[str], has_masks: bool, image_size: int, normalize: bool = False,
                 augment: bool = False, cache: bool = True, grey: bool = False) -> None:
        if len(paths) == 0:
            raise ValueError(f"{name} {split}: no images")
        self.name, self.split = name, split
        self.paths = paths
        self.labels = np.asarray(labels, dtype=np.int64)  # (N,), 1 = anomalous
        self.groups = groups  # class / defect folder of each item, e.g. "good", "cut", "NORMAL"
        self.has_masks = has_masks
        self.image_size = image_size  # items are (3, image_size, image_size)
        self.mean, self.std = (IMAGENET_MEAN, IMAGENET_STD) if normalize else (None, None)
        # the paper's HeadCT augmentation (Sec. 4.4): rotation up to 20 degrees, scale in [0.9, 1.05]
        self.augment = T.RandomAffine(degrees=20, scale=(0.9, 1.05), interpolation=BILINEAR) if augment else None
        self.grey = bool(grey)
        # once cached: (N, 3, H, W) uint8 images and (N, 1, H, W) uint8 masks, 255 = defect
        self._images, self._masks = self._load_all() if cache else (None, None)

    def _prepare(self, i: int) -> tuple[Tensor, Tensor | None]:
        """Decoded, resized uint8 image (3,H,W) and mask (1,H,W) or None of item i."""
        raise NotImplementedError

    def _prepared(self, i: int) -> tuple[Tensor, Tensor | None]:
        img, mask = self._prepare(i)
        return (grey_rgb(img) if self.grey else img), mask

    def _load_all(self) -> tuple[Tensor, Tensor | None]:
        n = len(self.paths)
        images = masks = None
        # PIL decodes and resizes outside the GIL, so threads overlap the work
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            done = pool.map(self._prepared, range(n))
            for i, (img, mask) in enumerate(tqdm(done, total=n, delay=2,  # shown only if slow
                                                 desc=f"{self.name} {self.split}: decoding")):
                if images is None:
                    images = torch.empty((n, *img.shape), dtype=torch.uint8)
                    masks = torch.empty((n, 1, *img.shape[1:]), dtype=torch.uint8) if self.has_masks else None
                images[i] = img
                if masks is not None:
                    masks[i] = mask
        return images, masks

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        if self._images is not None:
            img, mask = self._images[i], None if self._masks is None else self._masks[i]
        else:
            img, mask = self._prepared(i)
        x = img.float().div(255)  # (3, H, W) in [0, 1]
        if self.augment is not None:
            x = self.augment(x)
        if self.mean is not None:
            x = TF.normalize(x, self.mean, self.std)
        item = {"image": x, "label": int(self.labels[i]), "path": self.paths[i], "index": i}
        if self.has_masks:
            item["mask"] = mask.float().div(255)  # (1, H, W), soft after bilinear resizing
        return item

    @property
    def deterministic(self) -> bool:
        """False when items are randomly augmented: source features cannot be cached then."""
        return self.augment is None

    @property
    def masks(self) -> np.ndarray | None:
        """All ground-truth masks, (N, H, W) float32 in [0, 1], or None for datasets without masks."""
        if not self.has_masks:
            return None
        m = self._masks if self._masks is not None else torch.stack([self._prepare(i)[1] for i in range(len(self))])
        return m[:, 0].numpy().astype(np.float32) / 255

    def __repr__(self) -> str:
        n_anom = int(self.labels.sum())
        return (f"{type(self).__name__}({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"normal={len(self) - n_anom}, anomalous={n_anom}, masks={self.has_masks}, "
                f"normalized={self.mean is not None}, grey={self.grey}, deterministic={self.deterministic})")


DEFECT_LEVEL = 128  # a mask pixel is a defect from 128/255 up: the 0.5 at which the pixel metrics binarise
SHOWN = 3  # files named in an error; the rest are counted


class FileDataset(ImageDataset):
    """Images on disk resized to a square; `mask_files[i]` None = zero mask, else its ground truth.

    Checked when the dataset is read (all at once when cached, else each item as it is read), not after
    training: each defect image's mask, as decoded, must reach DEFECT_LEVEL somewhere (EmptyMaskError),
    and non-square images are said once (AspectRatioWarning: they are squashed, as the paper does)."""

    def __init__(self, files: list[Path], labels: list[int] | np.ndarray, groups: list[str], *,
                 mask_files: list[Path | None] | None, image_size: int, **kwargs) -> None:
        self.files = list(files)
        self.mask_files = mask_files  # None: the dataset has no masks at all
        self._resize = resize_to_uint8(image_size)  # masks too: bilinear, so they stay soft
        self._lazy = not kwargs.get("cache", True)
        self._native_size: dict[int, tuple[int, int]] = {}  # item -> its image's (width, height) as decoded
        self._mask_peak: dict[int, int] = {}  # item -> its mask's highest value (0-255) at its own size
        super().__init__(paths=[str(f) for f in self.files], labels=labels, groups=groups,
                         has_masks=mask_files is not None, image_size=image_size, **kwargs)
        self._aspect = AspectNote(image_size, f"{self.name} {self.split}")
        if not self._lazy:
            self._check(range(len(self)))

    def _prepare(self, i: int) -> tuple[Tensor, Tensor | None]:
        image = open_image(self.files[i])
        self._native_size[i] = image.size
        img, mask = self._resize(image), None  # (3, S, S) uint8
        if self.mask_files is not None:
            if (m := self.mask_files[i]) is None:
                mask = torch.zeros((1, *img.shape[1:]), dtype=torch.uint8)
            else:
                mask_image = open_mask(m)
                if mask_image.size != image.size:  # native sizes: both are then resized to S alike
                    raise MaskSizeError(f"mask {m} is {mask_image.width}x{mask_image.height} px but its image "
                                        f"{self.files[i]} is {image.width}x{image.height} px; a mask must have its "
                                        "image's size (check that it belongs to this image, or save it at the "
                                        "image's size)")
                self._mask_peak[i] = mask_image.getextrema()[1]  # at its own size: resizing may thin a small defect
                mask = self._resize(mask_image)  # (1, S, S) uint8
        if self._lazy:  # uncached: each item as it is read; cached: all at once in __init__
            self._check([i])
        return img, mask

    def _check(self, items) -> None:
        """Among decoded `items`: the aspect warning (the first non-square image), then EmptyMaskError naming
        the masks of defect images that mark no defect pixel."""
        for i in items:
            self._aspect.see(self.files[i], self._native_size[i])
        empty = [i for i in items if self.labels[i] == 1 and self._mask_peak.get(i, 255) < DEFECT_LEVEL]
        if not empty:
            return
        named = ", ".join(f"{self.mask_files[i]} (peak {self._mask_peak[i]}/255)" for i in empty[:SHOWN])
        more = f" and {len(empty) - SHOWN} more" if len(empty) > SHOWN else ""
        n = f"{len(empty)} defect image{'s' if len(empty) > 1 else ''}"
        raise EmptyMaskError(f"{self.name} {self.split}: {n} with an empty mask, no pixel reaching "
                             f"{DEFECT_LEVEL}/255: {named}{more}; a mask pixel is its brightest colour channel "
                             "(else its alpha), a two-level mask is read as 0/255 (README_DATA.md, 'Masks'): "
                             "draw the defect, or move an image without one to the normal images")
