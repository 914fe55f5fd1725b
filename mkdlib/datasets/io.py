"""Robust file-level helpers: list images, decode any common mode to RGB / grey, match masks by name.

Every reader names the file at fault and turns the image as its EXIF Orientation says. Grey, palette,
RGBA (composited over black) and 16-bit images (scaled by 255/65535, torchvision's convention) all come
out as 8-bit RGB; masks are read by the rule of README_DATA.md, "Masks".
"""

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import EmptyFolderError, ImageReadError, MissingMaskError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def _dead_link(p: Path) -> bool:
    """A symbolic link that cannot be followed: its target is missing, or it loops."""
    return p.is_symlink() and not p.exists()


def _image_files(folder: Path, extensions=IMAGE_EXTENSIONS) -> list[Path]:
    """Files with an image extension, and links to them that cannot be followed: listed, so that reading
    them names them instead of their being left out unseen. Not folders, pipes or devices."""
    suffixes = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted(
        p for p in folder.iterdir()
        if (p.is_file() or _dead_link(p)) and not p.name.startswith(".") and p.suffix.lower() in suffixes
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


def find_images(folder: Path, *, skip_marked: str | None = None) -> list[Path]:
    """Image files of `folder` and of its subfolders, sorted by path; hidden files and folders are skipped,
    linked folders are not followed (no loops), and a folder holding a file named `skip_marked` is skipped
    with all it holds (e.g. mkdlib's own outputs)."""
    def walk(d: Path) -> list[Path]:
        if skip_marked is not None and (d / skip_marked).exists():
            return []
        subfolders = [p for p in d.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]
        return _image_files(d) + [f for sub in subfolders for f in walk(sub)]

    return sorted(walk(folder))


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """Pixel values in a file's own range -> uint8: integers (16/32 bit) scaled by 255/65535 over the full range
    (Pillow's own convert would clip at 255), floats as they are."""
    scale = 1 if a.dtype.kind == "f" else 255 / 65535
    return np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)


def _decode(path: Path) -> Image.Image:
    """The file's pixels in their own mode (8 or 16 bit, any bands), upright: turned as its EXIF
    Orientation tag says (a phone's JPEG is stored sideways), as every viewer shows it."""
    path = Path(path)  # load_images passes strings too
    if _dead_link(path):
        raise ImageReadError(f"cannot read image {path}: a broken or looping symbolic link (to "
                             f"{os.readlink(path)}); fix or remove the link")
    try:
        with Image.open(path) as im:
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return im
    except FileNotFoundError:
        raise
    except Exception as e:  # UnidentifiedImageError, truncated data, broken chunks, bombs ...
        raise ImageReadError(f"cannot read image {path}: {e}") from e


def open_image(path: Path) -> Image.Image:
    """Decode `path` as 8-bit RGB; transparency is composited over black."""
    return as_rgb(_decode(path))


def upright_rgb(im: Image.Image) -> Image.Image:
    """An image already in memory (e.g. a caller's PIL image) as `open_image` makes a file: turned as its
    EXIF Orientation says (a copy; the caller's image is not changed), then as_rgb."""
    return as_rgb(ImageOps.exif_transpose(im))


def as_rgb(im: Image.Image) -> Image.Image:
    """A decoded image of any mode as 8-bit RGB: 16-bit scaled, transparency composited over black."""
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        im = Image.fromarray(_to_uint8(np.asarray(im)), "L")
    if im.mode == "P" or "A" in im.mode or "a" in im.mode:
        rgba = im.convert("RGBA")  # a palette's transparency index becomes alpha here
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(black, rgba)
    return im.convert("RGB")


_MASK_AS_IS = ("L", "LA", "RGB", "RGBA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_MASK_CONVERT = {"1": "L", "La": "LA", "P": "RGBA", "PA": "RGBA", "RGBa": "RGBA"}  # a palette's transparency: alpha


def open_mask(path: Path) -> Image.Image:
    """Decode a ground-truth mask as 'L', 255 = defect (README_DATA.md, "Masks"): a pixel's value is its
    brightest colour channel, or its alpha where the colour is the same everywhere; a mask of two levels
    (0 and one other, e.g. 0/1 labels, a red or 40% grey drawing) is binary, 0/255; other masks stay soft."""
    im = _decode(path)
    if im.mode not in _MASK_AS_IS:  # CMYK, YCbCr ... as RGB
        im = im.convert(_MASK_CONVERT.get(im.mode, "RGBA" if "A" in im.getbands() else "RGB"))
    a = np.asarray(im)  # in the file's own range (8 or 16 bit)
    alpha = a[..., -1] if im.mode in ("LA", "RGBA") else None
    value = a if a.ndim == 2 else (a if alpha is None else a[..., :-1]).max(axis=-1)  # red, green, white ... all count
    if alpha is not None and value.min() == value.max() and alpha.min() != alpha.max():
        value = alpha  # the colour carries nothing: the defect is drawn in the alpha channel
    peak = value.max()
    if peak > 0 and ((value == 0) | (value == peak)).all():
        value = np.where(value == peak, 255, 0).astype(np.uint8)
    elif value.dtype != np.uint8:  # soft, scaled as images are
        value = _to_uint8(value)
    return Image.fromarray(value, "L")


def match_masks(images: list[Path], mask_dir: Path) -> list[Path]:
    """The mask of each image, found by name (`<stem>_mask.*` or `<stem>.*`), never by order."""
    by_stem = {p.stem: p for p in _image_files(mask_dir)} if mask_dir.is_dir() else {}
    masks = []
    for img in images:
        mask = by_stem.get(f"{img.stem}_mask") or by_stem.get(img.stem)
        if mask is None:
            raise MissingMaskError(f"defect image {img} has no mask: expected {mask_dir / (img.stem + '_mask.png')}")
        masks.append(mask)
    return masks
