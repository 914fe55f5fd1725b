"""A small synthetic dataset in MVTec layout: woven textures with scratches, spots and cracks.

The embedded default for the quick demo and the tests (no download). Deterministic per seed: each
image has its own generator seeded by (seed, split, defect, index), and masks are exactly the painted
pixels. Defect colours lie >= 0.3 from the texture's mean colour in every channel, so that a trained
MKD model can detect them.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import ellipse, line
from skimage.filters import gaussian
from skimage.morphology import dilation, disk

from .base import FileDataset
from .mvtec import mvtec_files

DEFECTS = ("scratch", "spot", "crack")
VERSION = 1  # bump when the generator's output changes, so old caches are not reused


def default_root() -> Path:
    """`$XDG_CACHE_HOME/mkdlib/synthetic`, else `~/.cache/mkdlib/synthetic`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mkdlib" / "synthetic"


def _style(seed: int) -> dict:
    """Texture parameters shared by every image of a dataset: what 'normal' means."""
    rng = np.random.default_rng([seed, 99])
    return {"colour": rng.uniform(0.35, 0.65, 3),  # (3,) mean RGB
            "freq": rng.uniform(6, 14, 2),  # weave cycles per image along u, v
            "angle": rng.uniform(0, np.pi)}


def _texture(style: dict, rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float in [0, 1]: a weave with random phase, orientation jitter and grain."""
    yy, xx = np.mgrid[0:size, 0:size] / size  # (H, W) in [0, 1)
    a = style["angle"] + rng.normal(0, 0.05)
    u, v = xx * np.cos(a) + yy * np.sin(a), -xx * np.sin(a) + yy * np.cos(a)
    phase = rng.uniform(0, 1, 2)
    fu, fv = style["freq"]
    weave = np.sin(2 * np.pi * (fu * u + phase[0])) * np.sin(2 * np.pi * (fv * v + phase[1]))  # (H, W)
    grain = gaussian(rng.standard_normal((size, size)), sigma=size / 96)
    grain /= grain.std() + 1e-8
    shade = 1 + 0.12 * weave + 0.05 * grain  # (H, W), about 1 +- 0.25
    return np.clip(style["colour"] * shade[..., None], 0, 1)


def _stroke(points: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: a polyline through (K, 2) row/col points, about size/64 px wide."""
    mask = np.zeros((size, size), bool)
    pts = np.clip(np.rint(points), 0, size - 1).astype(int)
    for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
        rr, cc = line(r0, c0, r1, c1)
        mask[rr, cc] = True
    return dilation(mask, disk(max(1, size // 128)))


def _defect(kind: str, style: dict, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(mask (H, W) bool, RGB colour (3,)) of one defect."""
    start = rng.uniform(0.2, 0.8, 2) * size
    if kind == "scratch":  # a long straight bright line
        a, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.6) * size
        return _stroke(np.stack([start, start + length * np.array([np.sin(a), np.cos(a)])]), size), \
            np.full(3, 0.95)
    if kind == "crack":  # a dark random walk
        a, steps = rng.uniform(0, 2 * np.pi), [start]
        for _ in range(8):
            a += rng.normal(0, 0.6)
            steps.append(steps[-1] + rng.uniform(0.04, 0.08) * size * np.array([np.sin(a), np.cos(a)]))
        return _stroke(np.stack(steps), size), 0.1 * style["colour"]
    # spot: an ellipse whose colour is far from the texture in every channel
    mask = np.zeros((size, size), bool)
    radii = rng.uniform(0.03, 0.07, 2) * size
    rr, cc = ellipse(*start, *radii, shape=mask.shape, rotation=rng.uniform(0, np.pi))
    mask[rr, cc] = True
    return mask, np.where(style["colour"] > 0.5, 0.1, 0.9)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.rint(array * 255).astype(np.uint8)).save(path)


def _write(out: Path, seed: int, size: int, n_train: int, n_test_good: int, n_test_defect: int) -> None:
    style = _style(seed)
    for split, folder, n in ((0, "train/good", n_train), (1, "test/good", n_test_good)):
        for i in range(n):
            rng = np.random.default_rng([seed, split, 0, i])
            _save(_texture(style, rng, size), out / folder / f"{i:03d}.png")
    for d, kind in enumerate(DEFECTS):
        for i in range(n_test_defect // len(DEFECTS) + (d < n_test_defect % len(DEFECTS))):
            rng = np.random.default_rng([seed, 2, d, i])
            img = _texture(style, rng, size)
            mask, colour = _defect(kind, style, rng, size)
            img[mask] = colour
            _save(img, out / "test" / kind / f"{i:03d}.png")
            _save(mask.astype(float), out / "ground_truth" / kind / f"{i:03d}_mask.png")


def make_synthetic(root: str | Path | None = None, *, n_train: int = 32, n_test_good: int = 8,
                   n_test_defect: int = 16, size: int = 128, seed: int = 0) -> Path:
    """Write (once) and return `root/<name>`, an MVTec-layout category folder (root: `default_root()`)."""
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0 or n_test_good + n_test_defect < 1:
        raise ValueError("synthetic: need n_train >= 1 and at least one test image")
    if size < 32 or seed < 0:
        raise ValueError(f"synthetic: need size >= 32 and seed >= 0, got size={size}, seed={seed}")
    params = {"version": VERSION, "seed": seed, "size": size, "n_train": n_train,
              "n_test_good": n_test_good, "n_test_defect": n_test_defect}
    root = Path(root).expanduser() if root is not None else default_root()
    final = root / f"synthetic_v{VERSION}_s{seed}_{size}px_{n_train}-{n_test_good}-{n_test_defect}"
    if (final / "params.json").is_file():
        return final
    if final.exists():
        raise FileExistsError(f"{final} exists but is not a complete synthetic dataset; delete it")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))  # written whole, then renamed
    try:
        _write(tmp, seed, size, n_train, n_test_good, n_test_defect)
        (tmp / "params.json").write_text(json.dumps(params, indent=1))
        os.chmod(tmp, 0o755)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / "params.json").is_file():  # not merely a concurrent writer finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_synthetic(root: str | Path | None, *, split: str, seed: int, image_size: int | None,
                    n_train: int = 32, n_test_good: int = 8, n_test_defect: int = 16, size: int = 128,
                    **kwargs) -> FileDataset:
    category = make_synthetic(root, n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect,
                              size=size, seed=seed)
    files, labels, masks, groups = mvtec_files(category, split)
    return FileDataset(files, labels, groups, mask_files=masks, image_size=image_size or size,
                       name="synthetic", split=split, **kwargs)
