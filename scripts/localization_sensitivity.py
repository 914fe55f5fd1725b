"""How much MVTec AD localisation (the paper's pixel protocol) moves with its post-processing choices, on one
finished run's final cloner (issue 15: the bottle gap to the paper). Read-only: loads the run, writes nothing.

    python scripts/localization_sensitivity.py ~/mkd-runs/<key>   # a finished MVTec AD run with checkpoints
"""

import sys
import time

import numpy as np
import torch

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
    print(f"{name:55s} paper {100 * paper_pixel_auroc(m, maps, labels):6.2f}   standard {100 * pixel_auroc(m, maps):6.2f}", flush=True)
report("ours: p99 normalise, blur sigma 4 (the paper's recipe)", finish_maps(raw, GRADIENTS))
for sigma in (2, 8, 12):
    report(f"blur sigma {sigma}", finish_maps(raw, GRADIENTS, sigma=sigma))
report("no blur", finish_maps(raw, GRADIENTS, blur=False))
report("min-max instead of p99", postprocess.gaussian_blur(postprocess.minmax_normalize(raw)))
report("masks binarised at 0.5", finish_maps(raw, GRADIENTS), (masks > 0.5).astype(np.float32))
report("blur raw then p99", postprocess.percentile_normalize(postprocess.gaussian_blur(raw)))
