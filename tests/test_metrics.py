"""Metrics against scikit-learn, brute-force restatements and hand-made cases."""
import time

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from sklearn.metrics import roc_auc_score

from mkdlib.metrics import CROSS, au_pro, image_auroc, paper_pixel_auroc, pixel_auroc


def _blobs(rng, n=4, size=24):
    """(n, size, size) binary masks, each with one or two blobs, and noisy maps that like them.

    Blobs are rectangles dilated by the cross, so the paper's opening leaves them whole.
    """
    masks = np.zeros((n, size, size))
    for m in masks:
        for _ in range(rng.integers(1, 3)):
            r, c = rng.integers(1, size - 7, 2)
            m[r:r + rng.integers(1, 5), c:c + rng.integers(1, 5)] = 1
        m[:] = binary_dilation(m, CROSS)
    maps = np.clip(0.5 * masks + 0.6 * rng.random(masks.shape), 0, 1)
    return masks, maps


# --- brute-force restatements -------------------------------------------------------------------
def _open_binary(b):
    """Opening of one 2-D bool image with the 3x3 cross; pixels outside the image are ignored."""
    shifts = [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]

    def morph(x, pad, op):
        p = np.pad(x, 1, constant_values=pad)
        stack = [p[1 + dr:1 + dr + x.shape[0], 1 + dc:1 + dc + x.shape[1]] for dr, dc in shifts]
        return op(np.stack(stack), axis=0)

    return morph(morph(b, True, np.all), False, np.any)


def _paper_loop(masks, maps):
    tpr, fpr = [], []
    for i in range(1000):
        pred = np.stack([_open_binary(m >= 0.001 * i) for m in maps]).astype(float)
        tpr.append((pred * masks).sum() / masks.sum())
        fpr.append((pred * (1 - masks)).sum() / (1 - masks).sum())
    tpr, fpr = np.array(tpr)[::-1], np.array(fpr)[::-1]
    return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))


def _au_pro_loop(masks, maps, limit):
    from scipy.ndimage import label as nd_label
    regions = []
    for mask, m in zip(masks >= 0.5, maps):
        lab, k = nd_label(mask, structure=np.ones((3, 3)))
        regions += [(m, lab == j) for j in range(1, k + 1)]
    normal = masks < 0.5
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = (maps[normal] >= t).mean()
        pro = np.mean([(m[r] >= t).mean() for m, r in regions])
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 > limit:  # cut the segment at the limit
            y1 = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            x1 = limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / limit


# --- image AUROC --------------------------------------------------------------------------------
def test_image_auroc_matches_sklearn_and_hand_cases():
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 50), rng.random(50)
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    assert image_auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert image_auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


@pytest.mark.parametrize("labels, scores, msg", [
    ([0, 1], [0.1], "2 labels but 1 scores"),
    ([1, 1], [0.1, 0.2], "both normal"),
    ([0, 1], [np.nan, 0.2], "NaN"),
    ([], [], "no labels"),
])
def test_image_auroc_bad_input(labels, scores, msg):
    with pytest.raises(ValueError, match=msg):
        image_auroc(labels, scores)


# --- standard pixel AUROC -----------------------------------------------------------------------
def test_pixel_auroc_matches_sklearn_and_hand_cases():
    masks, maps = _blobs(np.random.default_rng(1))
    expected = roc_auc_score(masks.ravel() >= 0.5, maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected)
    assert pixel_auroc(masks, masks) == 1.0
    assert pixel_auroc(masks, 1 - masks) == 0.0
    assert pixel_auroc(masks * 0.7, maps) == pytest.approx(expected)  # soft masks binarised at 0.5


# --- the paper's pixel protocol -----------------------------------------------------------------
def test_paper_pixel_auroc_equals_per_threshold_loop():
    rng = np.random.default_rng(2)
    masks, maps = _blobs(rng, n=3, size=16)
    maps = np.round(maps, 3)  # values that hit the thresholds exactly
    soft = masks * rng.uniform(0.3, 1.0, masks.shape)  # soft masks weight the counts
    assert paper_pixel_auroc(soft, maps) == pytest.approx(_paper_loop(soft, maps), abs=1e-12)
    assert paper_pixel_auroc(masks, maps) == pytest.approx(_paper_loop(masks, maps), abs=1e-12)


def test_paper_pixel_auroc_hand_cases_and_labels():
    masks, maps = _blobs(np.random.default_rng(3))  # rectangles >= 3 px survive the opening
    assert paper_pixel_auroc(masks, masks) == pytest.approx(1.0)
    assert paper_pixel_auroc(masks, 1 - masks) == pytest.approx(0.0)
    normal = np.zeros_like(masks[:1])
    with_normal = (np.concatenate([masks, normal]), np.concatenate([maps, normal + 0.5]))
    labels = [1] * len(masks) + [0]
    assert paper_pixel_auroc(*with_normal, labels=labels) == paper_pixel_auroc(masks, maps)
    with pytest.raises(ValueError, match="no anomalous images"):
        paper_pixel_auroc(masks, maps, labels=[0] * len(masks))
    with pytest.raises(ValueError, match=r"maps in \[0, 1\]"):
        paper_pixel_auroc(masks, maps * 2)


def test_paper_pixel_auroc_is_fast():
    masks, maps = _blobs(np.random.default_rng(4), n=100, size=128)
    start = time.perf_counter()
    paper_pixel_auroc(masks, maps)
    assert time.perf_counter() - start < 5.0


# --- AU-PRO -------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_au_pro_equals_brute_force(limit):
    rng = np.random.default_rng(5)
    masks, maps = _blobs(rng, n=3, size=16)
    maps = np.round(maps, 2)  # ties
    masks = np.concatenate([masks, np.zeros_like(masks[:1])])  # a normal image counts for FPR
    maps = np.concatenate([maps, rng.random(maps[:1].shape)])
    assert au_pro(masks, maps, fpr_limit=limit) == pytest.approx(_au_pro_loop(masks, maps, limit))


def test_au_pro_hand_cases():
    masks, _ = _blobs(np.random.default_rng(6))
    assert au_pro(masks, masks) == pytest.approx(1.0)
    assert au_pro(masks, 1 - masks) == pytest.approx(0.0)
    # Two regions, the small one found, the big one missed: PRO 0.5 at FPR 0 whatever their sizes,
    # then a straight line to (1, 1) as the threshold drops to 0: area to 0.3 = 0.3 * (0.5 + 0.65) / 2.
    mask = np.zeros((1, 12, 12))
    mask[0, :2, :2], mask[0, 5:11, 5:11] = 1, 1
    found_small = np.zeros_like(mask)
    found_small[0, :2, :2] = 1
    assert au_pro(mask, found_small) == pytest.approx(0.575)


# --- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [pixel_auroc, paper_pixel_auroc, au_pro])
def test_pixel_metrics_bad_input(fn):
    masks, maps = _blobs(np.random.default_rng(7))
    with pytest.raises(ValueError, match="differs from maps shape"):
        fn(masks, maps[:, :-1])
    with pytest.raises(ValueError, match=r"masks must lie in \[0, 1\]"):
        fn(masks * 255, maps)
    with pytest.raises(ValueError, match="empty"):
        fn(np.zeros((0, 8, 8)), np.zeros((0, 8, 8)))
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fn(masks, bad)
    with pytest.raises(ValueError, match="anomalous"):
        fn(np.zeros_like(masks), maps)
