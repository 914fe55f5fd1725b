"""A user's own data: a folder of normal images, one of abnormal images, optionally one of masks.

Same protocol as the paper's medical datasets (Sec. 4): train on normals only; test on held-out
normals (`normal_test_dir`, else a seeded `test_split_ratio` of `normal_dir`) plus all abnormal ones.
Masks are matched to abnormal images by name (`<stem>_mask.*` or `<stem>.*`).
"""

from pathlib import Path

import numpy as np

from .base import FileDataset
from .errors import DatasetNotFoundError
from .io import list_images, match_masks
from .splits import seeded_split


def _resolve(root: str | Path | None, folder: str | Path, role: str) -> Path:
    path = Path(folder).expanduser()
    if not path.is_absolute():
        if root is None:
            raise ValueError(f"folder: {role}={str(folder)!r} is relative; pass root= or an absolute path")
        path = Path(root).expanduser() / path
    if not path.is_dir():
        raise DatasetNotFoundError(f"folder dataset: {role} not found: expected a folder of images at {path}")
    return path


def build_folder(root: str | Path | None, *, split: str, seed: int, image_size: int | None,
                 normal_dir: str | Path = "normal", abnormal_dir: str | Path | None = "abnormal",
                 mask_dir: str | Path | None = None, normal_test_dir: str | Path | None = None,
                 test_split_ratio: float = 0.2, **kwargs) -> FileDataset:
    normal = list_images(_resolve(root, normal_dir, "normal_dir"))
    if normal_test_dir is not None:
        train, held_out = normal, list_images(_resolve(root, normal_test_dir, "normal_test_dir"))
    else:
        n_test = max(1, round(test_split_ratio * len(normal)))
        train_idx, test_idx = seeded_split(np.zeros(len(normal)), seed, n_test)
        train, held_out = [normal[i] for i in train_idx], [normal[i] for i in test_idx]
    if split == "train":
        files, labels, masks = train, [0] * len(train), None if mask_dir is None else [None] * len(train)
    else:
        abnormal = [] if abnormal_dir is None else list_images(_resolve(root, abnormal_dir, "abnormal_dir"))
        files, labels = held_out + abnormal, [0] * len(held_out) + [1] * len(abnormal)
        masks = None if mask_dir is None else \
            [None] * len(held_out) + match_masks(abnormal, _resolve(root, mask_dir, "mask_dir"))
    groups = ["abnormal" if v else "normal" for v in labels]
    return FileDataset(files, labels, groups, mask_files=masks, image_size=image_size or 128,
                       name="folder", split=split, **kwargs)
