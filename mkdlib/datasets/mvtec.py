"""MVTec AD in its official layout (paper Sec. 4; docs/differences.md, "Protocols").

Per category: train on `train/good`, test on every `test/<defect>` folder, `test/good` included, so
detection and localisation share one test set. Masks `ground_truth/<defect>/<name>_mask.png` are
matched to images by file name, never by listing order.
"""

from pathlib import Path

from .base import FileDataset
from .errors import DatasetNotFoundError, EmptyFolderError
from .io import list_images, match_masks
from .roots import locate, not_found

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
    "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)


def mvtec_files(category_dir: Path, split: str) -> tuple[list[Path], list[int], list[Path | None], list[str]]:
    """(images, labels, masks or None for good ones, defect folder names) of one category and split."""
    top = category_dir / split
    if not top.is_dir():
        raise not_found("mvtec", top)
    folders = [top / "good"] if split == "train" else sorted(
        p for p in top.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise EmptyFolderError(f"no class folders (good, <defect>...) in {top}")
    files, labels, masks, groups = [], [], [], []
    for folder in folders:
        images = list_images(folder)
        good = folder.name == "good"
        files += images
        labels += [0 if good else 1] * len(images)
        groups += [folder.name] * len(images)
        if good:
            masks += [None] * len(images)
        else:
            masks += match_masks(images, category_dir / "ground_truth" / folder.name)
    return files, labels, masks, groups


def build_mvtec(root: str | Path | None, *, split: str, normal_class: str, image_size: int | None,
                **kwargs) -> FileDataset:
    category = normal_class
    if not isinstance(category, str):
        raise ValueError(f"mvtec: normal_class is the category name, one of {list(MVTEC_CATEGORIES)}; "
                         f"got {category!r}")
    try:
        base = locate("mvtec", root, f"{category}/{split}")
    except DatasetNotFoundError:
        if category not in MVTEC_CATEGORIES:  # an MVTec-layout folder of another name is fine if present
            raise ValueError(f"mvtec: unknown category {category!r}; "
                             f"valid: {list(MVTEC_CATEGORIES)}") from None
        raise
    files, labels, masks, groups = mvtec_files(base / category, split)
    return FileDataset(files, labels, groups, mask_files=masks, image_size=image_size or 128,
                       name="mvtec", split=split, **kwargs)
