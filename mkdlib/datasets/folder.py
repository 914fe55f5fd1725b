"""A user's own data: a folder of normal images, one or more of abnormal images, optionally masks.

Defaults, relative to the dataset root: `normal/` and `abnormal/`; `abnormal_dir` may be a list of
folders (e.g. one per defect type, as MVTec AD's test/<defect>/), each a group of its own; `mask_dir`
(none by default) holds masks matched to abnormal images by name (`<stem>_mask.*` or `<stem>.*`);
`extensions` limits the image files read (default: IMAGE_EXTENSIONS).
Same protocol as the paper's medical datasets (Sec. 4): train on normals only; test on held-out
normals (`normal_test_dir`, else a seeded `test_split_ratio` of `normal_dir`) plus all abnormal ones.
"""

from pathlib import Path

import numpy as np

from .base import FileDataset
from .errors import DatasetNotFoundError
from .io import IMAGE_EXTENSIONS, list_images, match_masks
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


def _abnormal(root, abnormal_dir, extensions) -> tuple[list[Path], list[str]]:
    """The abnormal images of one folder or a list of folders, with each image's group (its folder's name)."""
    dirs = [] if abnormal_dir is None else [abnormal_dir] if isinstance(abnormal_dir, (str, Path)) else abnormal_dir
    if not isinstance(dirs, (list, tuple)):
        raise ValueError(f"folder: abnormal_dir must be a folder or a list of folders, got {abnormal_dir!r}")
    files, groups = [], []
    for d in dirs:
        found = list_images(_resolve(root, d, "abnormal_dir"), extensions)
        files += found
        groups += [Path(d).name] * len(found)
    return files, groups


def build_folder(root: str | Path | None, *, split: str, seed: int, image_size: int | None,
                 normal_dir: str | Path = "normal", abnormal_dir: str | Path | list | None = "abnormal",
                 mask_dir: str | Path | None = None, normal_test_dir: str | Path | None = None,
                 test_split_ratio: float = 0.2, extensions: list[str] | tuple[str, ...] = IMAGE_EXTENSIONS,
                 **kwargs) -> FileDataset:
    if isinstance(extensions, str):
        extensions = [extensions]
    normal = list_images(_resolve(root, normal_dir, "normal_dir"), extensions)
    if normal_test_dir is not None:
        train, held_out = normal, list_images(_resolve(root, normal_test_dir, "normal_test_dir"), extensions)
    else:
        n_test = max(1, round(test_split_ratio * len(normal)))
        train_idx, test_idx = seeded_split(np.zeros(len(normal)), seed, n_test)
        train, held_out = [normal[i] for i in train_idx], [normal[i] for i in test_idx]
    if split == "train":
        files, labels, masks = train, [0] * len(train), None if mask_dir is None else [None] * len(train)
        groups = ["normal"] * len(train)
    else:
        abnormal, kinds = _abnormal(root, abnormal_dir, extensions)
        files, labels = held_out + abnormal, [0] * len(held_out) + [1] * len(abnormal)
        groups = ["normal"] * len(held_out) + kinds
        masks = None if mask_dir is None else \
            [None] * len(held_out) + match_masks(abnormal, _resolve(root, mask_dir, "mask_dir"))
    return FileDataset(files, labels, groups, mask_files=masks, image_size=image_size or 128,
                       name="folder", split=split, **kwargs)
