"""mkdlib.datasets.io: mode conversion, corrupt files, folder listing, masks matched by name."""

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mkdlib.datasets import AspectRatioWarning, load_images
from mkdlib.datasets.errors import EmptyFolderError, ImageReadError, MissingMaskError
from mkdlib.datasets.io import list_images, match_masks, open_image, open_mask


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def test_grey_becomes_rgb(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = np.asarray(open_image(_save(tmp_path / "g.png", Image.fromarray(grey, "L"))))
    assert rgb.shape == (8, 8, 3) and (rgb == grey[..., None]).all()


def test_rgba_is_composited_over_black(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:2, ..., 3] = 255  # top half opaque, bottom half fully transparent
    rgb = np.asarray(open_image(_save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))))
    assert (rgb[:2] == (200, 100, 50)).all() and (rgb[2:] == 0).all()


def test_palette_becomes_rgb(tmp_path):
    pal = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    rgb = np.asarray(open_image(_save(tmp_path / "p.png", pal)))
    assert tuple(rgb[0, 0]) == (255, 0, 0) and tuple(rgb[0, 1]) == (0, 0, 255)


def test_16bit_is_scaled_not_clipped(tmp_path):
    a = np.array([[0, 257 * 100, 65535, 257 * 7]], np.uint16)
    path = _save(tmp_path / "s.png", Image.fromarray(a))
    assert Image.open(path).mode.startswith("I")
    assert list(np.asarray(open_image(path))[0, :, 0]) == [0, 100, 255, 7]
    assert list(np.asarray(open_mask(path))[0]) == [0, 100, 255, 7]


@pytest.mark.parametrize("content", [b"not an image at all", "truncated"])
def test_corrupt_image_names_the_file(tmp_path, content):
    path = tmp_path / "bad.png"
    if content == "truncated":
        _save(path, Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)))
        path.write_bytes(path.read_bytes()[:200])
    else:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.png"):
        open_image(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        open_image(tmp_path / "nope.png")


def test_mask_saved_as_0_1_is_rescaled(tmp_path):
    m = np.array([[0, 1], [1, 0]], np.uint8)
    assert list(np.asarray(open_mask(_save(tmp_path / "m.png", Image.fromarray(m))))[0]) == [0, 255]


def test_list_images_skips_hidden_and_other_files(tmp_path):
    for name in ["b.PNG", "a.jpg", ".hidden.png", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(EmptyFolderError, match=str(tmp_path)):
        list_images(tmp_path)


def test_masks_matched_by_name_not_order(tmp_path):
    images = [tmp_path / "img" / f"{k}.png" for k in ("002", "010")]
    for name in ("001_mask.png", "002_mask.png", "010.png"):  # an extra mask shifts any order-based pairing
        (tmp_path / "gt").mkdir(exist_ok=True)
        (tmp_path / "gt" / name).write_bytes(b"")
    assert [p.name for p in match_masks(images, tmp_path / "gt")] == ["002_mask.png", "010.png"]
    with pytest.raises(MissingMaskError, match="003.png"):
        match_masks([tmp_path / "img" / "003.png"], tmp_path / "gt")


# --- masks read by one rule: the brightest colour channel, else the alpha channel (issue 29) -------------

def _rgba(colour, alpha) -> Image.Image:
    a = np.zeros((2, 2, 4), np.uint8)
    a[...] = (*colour, 0)
    a[:, 1, 3] = alpha  # the defect: the right column, drawn only in the alpha channel
    return Image.fromarray(a, "RGBA")


@pytest.mark.parametrize("name,mask", [
    ("red.png", Image.fromarray(np.array([[[0, 0, 0], [255, 0, 0]]] * 2, np.uint8), "RGB")),
    ("blue.png", Image.fromarray(np.array([[[0, 0, 0], [0, 0, 255]]] * 2, np.uint8), "RGB")),
    ("alpha_on_black.png", _rgba((0, 0, 0), 255)),
    ("alpha_on_white.png", _rgba((255, 255, 255), 255)),
    ("alpha_faint.png", _rgba((255, 0, 0), 60)),  # two levels, 0 and 60: a binary mask
    ("grey_0_102.png", Image.fromarray(np.array([[0, 102]] * 2, np.uint8), "L")),
    ("grey_0_3.png", Image.fromarray(np.array([[0, 3]] * 2, np.uint8), "L")),
    ("label_16bit.png", Image.fromarray(np.array([[0, 1]] * 2, np.uint16))),  # 1/65535 rounds to 0 if scaled
    ("white.png", Image.fromarray(np.array([[0, 255]] * 2, np.uint8), "L")),
])
def test_binary_masks_in_any_colour_or_alpha_or_grey_level_load_as_0_255(tmp_path, name, mask):
    assert np.asarray(open_mask(_save(tmp_path / name, mask))).tolist() == [[0, 255]] * 2


def test_soft_masks_stay_soft_and_opaque_colour_wins_over_alpha(tmp_path):
    soft = np.array([[0, 30, 102, 200, 255]], np.uint8)  # more than two levels: soft, kept as stored
    assert np.array_equal(np.asarray(open_mask(_save(tmp_path / "s.png", Image.fromarray(soft)))), soft)
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 1, :3] = 255  # the colour carries the defect; the alpha channel is a constant 255
    rgba[..., 3] = 255
    assert np.asarray(open_mask(_save(tmp_path / "c.png", Image.fromarray(rgba, "RGBA")))).tolist() == [[0, 255]]


# --- EXIF orientation applied wherever an image or mask is read (issue 29) ------------------------------

def _rotated_jpeg(path: Path) -> Path:
    """An 8x4 JPEG whose left half is white, tagged Orientation=6: shown rotated 90 degrees clockwise,
    i.e. 4x8 with its top half white."""
    a = np.zeros((4, 8, 3), np.uint8)
    a[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    Image.fromarray(a).save(path, quality=100, exif=exif)
    return path


def test_exif_orientation_is_applied_to_images_masks_and_predicts_inputs(tmp_path):
    shown = np.asarray(open_image(_rotated_jpeg(tmp_path / "photo.jpg")))
    assert shown.shape == (8, 4, 3) and shown[:4].min() > 200 and shown[4:].max() < 50
    mask = np.zeros((4, 8), np.uint8)
    mask[:, :4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(mask).save(tmp_path / "photo_mask.png", exif=exif)
    assert np.asarray(open_mask(tmp_path / "photo_mask.png")).tolist() == [[255] * 4] * 4 + [[0] * 4] * 4
    with pytest.warns(AspectRatioWarning, match="photo.jpg is 4x8 px"):  # predict's path: upright, then squashed
        _, display = load_images([tmp_path / "photo.jpg"], "folder", 8)
    assert display[0, :, :4].min() > 0.8 and display[0, :, 4:].max() < 0.2


# --- unreadable entries of a folder are listed, so that reading them names them (issue 29) ---------------

def test_broken_and_looping_links_are_listed_and_name_themselves(tmp_path):
    _save(tmp_path / "good.png", Image.new("L", (2, 2)))
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")  # a link to itself
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    os.mkfifo(tmp_path / "pipe.png")  # not a file: reading it would wait forever
    assert [p.name for p in list_images(tmp_path)] == ["broken.png", "good.png", "loop.png"]
    for name in ("loop.png", "broken.png"):
        with pytest.raises(ImageReadError, match=rf"{name}.*(broken|looping) symbolic link"):
            open_image(tmp_path / name)
