"""Attribution maps to localisation maps (paper Eq. 6 and sec. 3.3.4), as the released code does it.

grey = sum over channels of |gradient|; per-image percentile-99 or min-max normalisation to [0, 1];
Gaussian blur with sigma 4 px at 128 px (scaled with the image size); optional grey opening with the
3x3 elliptical structuring element (the cross) of Eq. 6. Arrays are numpy, (B, H, W) unless noted.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from mkdlib.metrics import CROSS

BLUR_SIGMA_AT_128 = 4.0  # paper sec. 4 "Gaussian filter with sigma = 4", at 128 px


def grey(grads: np.ndarray) -> np.ndarray:
    """(B, C, H, W) gradients -> (B, H, W) sum over channels of their absolute values."""
    grads = np.asarray(grads)
    if grads.ndim != 4:
        raise ValueError(f"expected (B, C, H, W) gradients, got shape {grads.shape}")
    return np.abs(grads).sum(axis=1)


def _check_maps(maps: np.ndarray) -> np.ndarray:
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3 or maps.size == 0:
        raise ValueError(f"expected a non-empty (B, H, W) stack of maps, got shape {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or inf")
    return maps


def percentile_normalize(maps: np.ndarray, q: float = 99.0) -> np.ndarray:
    """Per image (g - min) / (percentile_q(g) - min), clipped to [0, 1] (the released code's grey map).

    Where percentile == min the limit is taken: 1 above the minimum, 0 at it.
    """
    maps = _check_maps(maps)
    flat = maps.reshape(len(maps), -1)
    low = flat.min(axis=1)[:, None, None]  # (B, 1, 1)
    high = np.percentile(flat, q, axis=1)[:, None, None]  # numpy's default linear interpolation
    span = high - low
    scaled = (maps - low) / np.where(span > 0, span, 1.0)
    scaled = np.where(span > 0, scaled, (maps > low).astype(np.float64))
    return np.clip(scaled, 0.0, 1.0)


def minmax_normalize(maps: np.ndarray) -> np.ndarray:
    """Per image (g - min) / (max - min); a constant image becomes zeros."""
    maps = _check_maps(maps)
    flat = maps.reshape(len(maps), -1)
    low, high = flat.min(axis=1)[:, None, None], flat.max(axis=1)[:, None, None]
    span = high - low
    return np.where(span > 0, (maps - low) / np.where(span > 0, span, 1.0), 0.0)


def blur_sigma(size: int) -> float:
    """The paper's sigma (4 px at 128 px) scaled to an image of `size` pixels."""
    return BLUR_SIGMA_AT_128 * size / 128


def gaussian_blur(maps: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Per-image Gaussian blur (scipy's gaussian_filter, as the released code); sigma None = scaled 4."""
    maps = _check_maps(maps)
    if sigma is None:
        sigma = blur_sigma(maps.shape[1])
    return ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma))  # sigma 0: images don't mix


def opening(maps: np.ndarray) -> np.ndarray:
    """Eq. 6's grey opening (erosion then dilation) with the 3x3 cross, image by image."""
    return ndimage.grey_opening(_check_maps(maps), footprint=CROSS[None], mode="reflect")
