"""Post-processing against per-image restatements of the released code's formulas."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mkdlib import postprocess as pp


def test_grey_sums_absolute_values_over_channels():
    grads = np.random.default_rng(0).normal(size=(2, 3, 5, 6))
    expected = np.abs(grads[:, 0]) + np.abs(grads[:, 1]) + np.abs(grads[:, 2])
    np.testing.assert_allclose(pp.grey(grads), expected)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        pp.grey(grads[0])


def test_percentile_normalize_matches_per_image_formula():
    maps = np.random.default_rng(1).gamma(1.0, size=(3, 20, 20))
    out = pp.percentile_normalize(maps)
    for g, o in zip(maps, out):
        expected = np.clip((g - g.min()) / (np.percentile(g, 99) - g.min()), 0, 1)
        np.testing.assert_allclose(o, expected)
    assert out.min() == 0 and out.max() == 1


def test_normalizations_of_degenerate_maps():
    constant = np.full((1, 8, 8), 3.0)
    np.testing.assert_array_equal(pp.percentile_normalize(constant), 0)
    np.testing.assert_array_equal(pp.minmax_normalize(constant), 0)
    spike = np.zeros((1, 20, 20))
    spike[0, 0, 0] = 5.0  # percentile 99 == min: the limit, 1 above the minimum
    np.testing.assert_array_equal(pp.percentile_normalize(spike), spike > 0)
    with pytest.raises(ValueError, match="NaN"):
        pp.minmax_normalize(np.full((1, 4, 4), np.nan))


def test_minmax_normalize_per_image():
    maps = np.random.default_rng(2).normal(size=(2, 6, 6)) * [[[1.0]], [[10.0]]]
    out = pp.minmax_normalize(maps)
    np.testing.assert_allclose(out.min(axis=(1, 2)), 0)
    np.testing.assert_allclose(out.max(axis=(1, 2)), 1)
    np.testing.assert_allclose(out[1], (maps[1] - maps[1].min()) / np.ptp(maps[1]))


def test_blur_sigma_scales_with_size_and_images_do_not_mix():
    assert pp.blur_sigma(128) == 4.0 and pp.blur_sigma(256) == 8.0 and pp.blur_sigma(32) == 1.0
    maps = np.zeros((2, 64, 64))
    maps[0, 32, 32] = 1.0
    out = pp.gaussian_blur(maps)
    np.testing.assert_allclose(out[0], gaussian_filter(maps[0], sigma=2.0))
    np.testing.assert_array_equal(out[1], 0)


def test_opening_is_erosion_then_dilation_with_the_cross():
    maps = np.random.default_rng(3).random((2, 9, 11))

    def morph(x, fill, op):  # pixels outside the image are ignored
        p = np.pad(x, 1, constant_values=fill)
        h, w = x.shape
        return op(np.stack([p[1 + a:1 + a + h, 1 + b:1 + b + w]
                            for a, b in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]]), axis=0)

    expected = np.stack([morph(morph(m, np.inf, np.min), -np.inf, np.max) for m in maps])
    np.testing.assert_array_equal(pp.opening(maps), expected)
