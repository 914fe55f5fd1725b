"""Detection and localisation metrics (paper sec. 4, Tables 1, 4 and 11): pure numpy functions.

Three pixel metrics, each named for what it is: the standard pixel AUROC, the paper's own pixel
protocol (anomalous images only, 1000 thresholds, binary opening, soft masks; see
docs/differences.md) and MVTec's AU-PRO up to a false-positive rate of 0.3.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.measure import label
from sklearn.metrics import roc_auc_score

# 3x3 elliptical structuring element (OpenCV's MORPH_ELLIPSE at 3x3 is this cross).
CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=bool)
# The released code's thresholds `0.001 * i`, i = 0..999 (same float64 values as this product).
PAPER_THRESHOLDS = 0.001 * np.arange(1000)


def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """AUROC of per-image anomaly scores; label 1 = anomaly (the positive class)."""
    labels, scores = np.asarray(labels).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if labels.size == 0:
        raise ValueError("image_auroc: no labels given")
    if labels.shape != scores.shape:
        raise ValueError(f"image_auroc: {labels.size} labels but {scores.size} scores")
    if not np.isfinite(scores).all():
        raise ValueError("image_auroc: scores contain NaN or inf")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("image_auroc: labels must be 0 (normal) or 1 (anomaly)")
    if np.unique(labels).size < 2:
        raise ValueError("image_auroc: needs both normal (0) and anomalous (1) images")
    return float(roc_auc_score(labels, scores))


def check_masks_maps(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (masks, maps) as float64 (N, H, W); a single (H, W) pair is promoted."""
    masks, maps = np.asarray(masks, dtype=np.float64), np.asarray(maps, dtype=np.float64)
    if masks.shape != maps.shape:
        raise ValueError(f"masks shape {masks.shape} differs from maps shape {maps.shape}")
    if masks.ndim == 2:
        masks, maps = masks[None], maps[None]
    if masks.ndim != 3:
        raise ValueError(f"expected (N, H, W) masks and maps, got shape {masks.shape}")
    if masks.size == 0:
        raise ValueError("empty set of masks and maps")
    if not np.isfinite(maps).all():
        raise ValueError("maps contain NaN or inf")
    if not np.isfinite(masks).all() or masks.min() < 0 or masks.max() > 1:
        raise ValueError(f"masks must lie in [0, 1], got range [{masks.min()}, {masks.max()}]")
    return masks, maps


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """Standard pixel AUROC over all pixels of all given images; masks binarised at 0.5."""
    masks, maps = check_masks_maps(masks, maps)
    truth = masks.ravel() >= 0.5
    if truth.all() or not truth.any():
        raise ValueError("pixel_auroc: masks need both anomalous and normal pixels")
    return float(roc_auc_score(truth, maps.ravel()))


def paper_pixel_auroc(masks: np.ndarray, maps: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The paper's pixel protocol on anomalous images only (pass only those, or `labels`): the area under
    paper_pixel_curve by the trapezoid rule over its 1000 points only (no (0, 0) end point, as coded)."""
    fpr, tpr = paper_pixel_curve(masks, maps, labels)
    return float(-np.trapezoid(tpr, fpr))  # fpr decreases with t


def paper_pixel_curve(masks: np.ndarray, maps: np.ndarray,
                      labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) of the paper's pixel protocol at t = 0.000..0.999, on anomalous images only (pass only
    those, or `labels`). At each t the binary map `maps >= t` is opened with CROSS, then soft masks weight
    the counts: TPR = sum(mask * pred) / sum(mask), FPR = sum((1 - mask) * pred) / sum(1 - mask)."""
    masks, maps = check_masks_maps(masks, maps)
    if labels is not None:
        labels = np.asarray(labels).ravel()
        if labels.size != len(maps):
            raise ValueError(f"paper_pixel_auroc: {labels.size} labels for {len(maps)} maps")
        masks, maps = masks[labels == 1], maps[labels == 1]
        if len(maps) == 0:
            raise ValueError("paper_pixel_auroc: no anomalous images (label 1) given")
    if maps.min() < 0 or maps.max() > 1:
        raise ValueError("paper_pixel_auroc: thresholds 0..0.999 assume maps in [0, 1]")
    positives, negatives = masks.sum(), (1 - masks).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("paper_pixel_auroc: masks need both anomalous and normal pixels")
    # Flat opening commutes with thresholding: open(maps >= t) == (grey_open(maps) >= t), exactly,
    # since grey erosion/dilation only pick values of `maps` (tested against a per-threshold loop).
    # Mode "reflect" maps an outside neighbour of the cross onto the border pixel itself, i.e.
    # out-of-image pixels are ignored, as OpenCV's default border does. Footprint (1, 3, 3): no
    # mixing across images.
    opened = ndimage.grey_opening(maps, footprint=CROSS[None], mode="reflect")
    # passed[p] = number of thresholds t <= opened[p]: pixel p is predicted at thresholds 0..passed-1.
    passed = np.searchsorted(PAPER_THRESHOLDS, opened.ravel(), side="right")
    n = len(PAPER_THRESHOLDS) + 1
    tp_at = np.bincount(passed, weights=masks.ravel(), minlength=n)
    fp_at = np.bincount(passed, weights=1 - masks.ravel(), minlength=n)
    # Predicted at threshold i <=> passed > i: reverse cumulative sums, shifted by one.
    tpr = np.cumsum(tp_at[::-1])[::-1][1:] / positives  # (1000,)
    fpr = np.cumsum(fp_at[::-1])[::-1][1:] / negatives
    return fpr, tpr


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under a curve with non-decreasing x, cut at x_max by linear interpolation."""
    i = int(np.searchsorted(x, x_max, side="right"))  # x[:i] <= x_max; x[0] == 0 so i >= 1
    area = float(np.trapezoid(y[:i], x[:i]))
    if i < len(x) and x[i - 1] < x_max:
        y_cut = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
        area += (x_max - x[i - 1]) * (y[i - 1] + y_cut) / 2
    return area


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, PRO) at every distinct score, from (0, 0); PRO = mean overlap per ground-truth region.

    Regions are 8-connected components (skimage.measure.label) of each mask binarised at 0.5.
    """
    masks, maps = check_masks_maps(masks, maps)
    regions = np.zeros(masks.shape, dtype=np.int64)  # (N, H, W), 0 = normal, ids unique over images
    n_regions = 0
    for i, mask in enumerate(masks >= 0.5):
        lab = label(mask, connectivity=2)
        regions[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += int(lab.max())
    regions = regions.ravel()
    n_normal = int((regions == 0).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError("au_pro: masks need at least one anomalous region and some normal pixels")
    sizes = np.bincount(regions)  # pixels per region id
    # Each pixel's step on either curve when the threshold drops to its score.
    fp_step = (regions == 0) / n_normal
    pro_step = np.where(regions > 0, 1.0 / (sizes[regions] * n_regions), 0.0)
    order = np.argsort(-maps.ravel(), kind="stable")
    scores = maps.ravel()[order]
    fpr, pro = np.cumsum(fp_step[order]), np.cumsum(pro_step[order])
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]  # a threshold takes all tied pixels at once
    fpr = np.r_[0.0, np.minimum(fpr[last_of_tie], 1.0)]
    pro = np.r_[0.0, np.minimum(pro[last_of_tie], 1.0)]
    return fpr, pro


def au_pro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """MVTec AU-PRO: area under the PRO curve up to `fpr_limit`, divided by `fpr_limit`."""
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"au_pro: fpr_limit must be in (0, 1], got {fpr_limit}")
    fpr, pro = pro_curve(masks, maps)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit
