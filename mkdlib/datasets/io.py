"""Robust file-level helpers: list images, decode any common mode to RGB / grey, match masks by name.

Every reader names the file at fault. Grey, palette, RGBA (composited over black) and 16-bit images
(scaled by 255/65535, torchvision's convention) all come out as 8-bit RGB.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from .errors import EmptyFolderError, ImageReadError, MissingMaskError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _image_files(folder: Path, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes
    )


def list_images(folder: Path, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    """Image files of `folder` with one of `extensions` (case-insensitive), sorted by name; hidden files
    skipped; error if none."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder not found: {folder}")
    files = _image_files(folder, extensions)
    if not files:
        raise EmptyFolderError(f"no images ({', '.join(extensions)}) in folder {folder}")
    return files


def _to_8bit(im: Image.Image) -> Image.Image:
    """16/32-bit integer modes -> 'L' by full-range scaling (Pillow's own convert would clip at 255)."""
    if im.mode.startswith("I;16") or im.mode == "I":
        a = np.asarray(im).astype(np.float64)  # (H, W), 0..65535
        return Image.fromarray(np.clip(np.rint(a * (255 / 65535)), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":
        return Image.fromarray(np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8), "L")
    return im


def _decode(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return _to_8bit(im)
    except FileNotFoundError:
        raise
    except Exception as e:  # UnidentifiedImageError, truncated data, broken chunks, bombs ...
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def open_image(path: Path) -> Image.Image:
    """Decode `path` as 8-bit RGB; transparency is composited over black."""
    im = _decode(path)
    if im.mode == "P" or "A" in im.mode or "a" in im.mode:
        rgba = im.convert("RGBA")  # a palette's transparency index becomes alpha here
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return im.convert("RGB")


def open_mask(path: Path) -> Image.Image:
    """Decode a ground-truth mask as 'L' with 255 = defect; masks saved as 0/1 are rescaled."""
    im = _decode(path)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    im = im.convert("L")  # alpha, if any, is ignored
    if 0 < im.getextrema()[1] <= 1:  # a 0/1 label image, not a 0/255 mask
        im = im.point(lambda v: v * 255)
    return im


def match_masks(images: list[Path], mask_dir: Path) -> list[Path]:
    """The mask of each image, found by name (`<stem>_mask.*` or `<stem>.*`), never by order."""
    by_stem = {p.stem: p for p in _image_files(mask_dir)} if mask_dir.is_dir() else {}
    masks = []
    for img in images:
        mask = by_stem.get(f"{img.stem}_mask") or by_stem.get(img.stem)
        if mask is None:
            raise MissingMaskError(
                f"defect image {img} has no mask: expected {mask_dir / (img.stem + '_mask.png')}"
            )
        masks.append(mask)
    return masks
