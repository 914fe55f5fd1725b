"""Standard SmoothGrad's MVTec AD localisation as its noise level goes to zero, on one finished run's final
cloner (issue 15: standard SmoothGrad at sigma 0.15 scored below chance on bottle). At sigma 0 every noisy
copy is the image itself, so the map is the percentile-normalised gradient map, min-max normalised and
blurred: the sweep shows whether the drop comes from the noise or from the method's code. Read-only: loads
the run, writes nothing.

    python scripts/smoothgrad_noise.py ~/mkd-runs/<key> [samples] [sigma ...]   # defaults: 10; 0 .02 .05 .1 .15
"""

import sys
import time

import numpy as np
import torch

from mkdlib.localization import GRADIENTS, SMOOTHGRAD, SMOOTHGRAD_REFERENCE, attribution_maps, finish_maps
from mkdlib.metrics import paper_pixel_auroc, pixel_auroc
from mkdlib.runs.loading import load_data, load_model
from mkdlib.scoring import score_loss

run_dir = sys.argv[1]  # a finished MVTec AD run with its checkpoints, e.g. ~/mkd-runs/<key>
samples = int(sys.argv[2]) if len(sys.argv) > 2 else 10
sigmas = [float(s) for s in sys.argv[3:]] or [0.0, 0.02, 0.05, 0.1, 0.15]
result, cfg, source, cloner = load_model(run_dir)
test = load_data(result.spec, cfg, split="test")
labels, masks = np.asarray(test.labels), test.masks
x = torch.stack([test[i]["image"] for i in range(len(test))])
loss = score_loss(cfg)
span = (x.flatten(1).amax(1) - x.flatten(1).amin(1))
print(f"{run_dir}: {len(x)} test images, value range {span.min():.2f}-{span.max():.2f} "
      f"(noise std = sigma x range); {samples} noisy copies each", flush=True)


def report(name: str, method: str, **kwargs) -> None:
    t0 = time.time()
    raw = attribution_maps(x, source, cloner, loss, method=method, generator=torch.Generator().manual_seed(0),
                           **kwargs).numpy()
    for blur in (True, False):
        maps = finish_maps(raw, method, blur=blur)
        print(f"{name:40s} {'blur' if blur else 'no blur':8s} paper {100 * paper_pixel_auroc(masks, maps, labels):6.2f}"
              f"   standard {100 * pixel_auroc(masks, maps):6.2f}   ({time.time() - t0:.0f} s)", flush=True)


report("gradients", GRADIENTS)
report("smoothgrad-reference (the code's noise)", SMOOTHGRAD_REFERENCE, n_samples=samples)
for sigma in sigmas:
    report(f"smoothgrad sigma {sigma:g}", SMOOTHGRAD, n_samples=samples, sigma=sigma)
