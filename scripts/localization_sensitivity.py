"""How much MVTec AD localisation (the paper's pixel protocol) moves with its post-processing choices, on one
finished run's final cloner (issue 15: the bottle gap to the paper). Read-only: loads the run, writes nothing.

    python scripts/localization_sensitivity.py ~/mkd-runs/<key>   # a finished MVTec AD run with checkpoints

The last rows resample the test images themselves (the cloner stays): other resize filters from the files, and
detours through a coarser copy. The shared `bottle` is a 256-px copy of the 900-px originals; if 128-px inputs
made from it in other ways move the metric by tenths, the copy's resolution is not what stands between us and the
paper.
"""

import sys
import time

import numpy as np
import torch
from PIL import Image

from mkdlib.datasets.io import open_image

from mkdlib import postprocess
from mkdlib.localization import GRADIENTS, attribution_maps, finish_maps
from mkdlib.metrics import paper_pixel_auroc, pixel_auroc
from mkdlib.runs.loading import load_data, load_model
from mkdlib.scoring import score_loss

torch.set_num_threads(1)
run_dir = sys.argv[1]  # a finished MVTec AD run with its checkpoints, e.g. ~/mkd-runs/<key>
result, cfg, source, cloner = load_model(run_dir)
test = load_data(result.spec, cfg, split="test")
labels = np.asarray(test.labels); masks = test.masks
x = torch.stack([test[i]["image"] for i in range(len(test))])
t0 = time.time()
raw = attribution_maps(x, source, cloner, score_loss(cfg), method=GRADIENTS).numpy()
print(f"raw maps {raw.shape} in {time.time() - t0:.0f} s", flush=True)
def report(name, maps, m=masks):
    print(f"{name:62s} paper {100 * paper_pixel_auroc(m, maps, labels):6.2f}   standard {100 * pixel_auroc(m, maps):6.2f}", flush=True)
report("ours: p99 normalise, blur sigma 4 (the paper's recipe)", finish_maps(raw, GRADIENTS))
for sigma in (2, 8, 12):
    report(f"blur sigma {sigma}", finish_maps(raw, GRADIENTS, sigma=sigma))
report("no blur", finish_maps(raw, GRADIENTS, blur=False))
report("min-max instead of p99", postprocess.gaussian_blur(postprocess.minmax_normalize(raw)))
report("masks binarised at 0.5", finish_maps(raw, GRADIENTS), (masks > 0.5).astype(np.float32))
report("blur raw then p99", postprocess.percentile_normalize(postprocess.gaussian_blur(raw)))


def resampled(resize) -> torch.Tensor:
    """The test images as the model's 128-px inputs, each made by `resize` (PIL image -> PIL image) from its file."""
    size = cfg.image_size
    arrays = [np.asarray(resize(open_image(p), size), dtype=np.float32) / 255 for p in test.paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


RESAMPLINGS = {
    "test images: bilinear from the files (ours; must match row 1)": lambda im, s: im.resize((s, s), Image.BILINEAR),
    "test images: Lanczos": lambda im, s: im.resize((s, s), Image.LANCZOS),
    "test images: box (area average)": lambda im, s: im.resize((s, s), Image.BOX),
    "test images: nearest (no antialiasing)": lambda im, s: im.resize((s, s), Image.NEAREST),
    "test images: via a 96-px copy (coarser than ours)":
        lambda im, s: im.resize((96, 96), Image.BILINEAR).resize((s, s), Image.BILINEAR),
}
for name, resize in RESAMPLINGS.items():
    maps = attribution_maps(resampled(resize), source, cloner, score_loss(cfg), method=GRADIENTS).numpy()
    report(name, finish_maps(maps, GRADIENTS))
