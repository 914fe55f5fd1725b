"""AUROC over training epochs for one run: detection and localisation of a cloner kept every N epochs.

Trains (or resumes) the run of `--dataset / --class / --profile / --config` in the run cache like
`mkd train` does, keeping the cloner every `--every` epochs (and after epoch 1) in
`<run>/checkpoints/curve/`, then scores each kept cloner on the test set: image AUROC, and for every
`--pixel-every`-th one the localisation (gradients + Gaussian: the paper's pixel protocol, the standard
pixel AUROC, AU-PRO). The run's own record is the same as `mkd train`'s: the curve is read off the same
training, never a second one. A finished run without a curve folder cannot give one (its cloners were
not kept): delete it or use another --runs-dir.

    python scripts/epoch_curve.py --dataset mvtec --class transistor --runs-dir ~/mkd-runs \
        --out results/checks/transistor_curve_paper.csv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from mkdlib.checkpoints import load_checkpoint, save_checkpoint
from mkdlib.cli_parser import key_value
from mkdlib.config import profile_of
from mkdlib.features import FeatureStore
from mkdlib.io_utils import atomic_write_text
from mkdlib.metrics import image_auroc
from mkdlib.runs.loading import build_models, load_data
from mkdlib.runs.runner import run
from mkdlib.runs.spec import RunSpec
from mkdlib.scoring import pixel_metrics, score, score_loss

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--dataset", default="mvtec")
parser.add_argument("--class", dest="normal_class", required=True)
parser.add_argument("--profile", default="paper", choices=["paper", "fast", "smoke"])
parser.add_argument("--config", nargs="*", type=key_value, default=[], help="MKDConfig overrides, key=value")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--every", type=int, default=10, help="keep the cloner every N epochs (and after epoch 1)")
parser.add_argument("--pixel-every", type=int, default=5, help="localise every K-th kept cloner (and the last)")
parser.add_argument("--runs-dir", required=True)
parser.add_argument("--threads", type=int, default=1)
parser.add_argument("--out", required=True, help="CSV: epoch, image AUROC, localisation metrics")


def main(argv: list[str] | None = None) -> int:
    a = parser.parse_args(argv)
    torch.set_num_threads(a.threads)
    cls = int(a.normal_class) if a.normal_class.isdigit() else a.normal_class
    config = {**profile_of(a.profile).overrides(a.dataset), **dict(a.config)}
    spec = RunSpec(a.dataset, cls, config=config, seed=a.seed, localization=("gradients",))
    run_dir = Path(a.runs_dir).expanduser() / spec.key()
    curve = run_dir / "checkpoints" / "curve"

    def keep(epoch: int, cloner) -> None:
        if epoch == 1 or epoch % a.every == 0:
            save_checkpoint({"cloner": cloner.state_dict(), "epoch": epoch}, curve / f"cloner_e{epoch:04d}.pt")

    t0 = time.time()
    result = run(spec, a.runs_dir, on_epoch_end=keep)
    print(f"{spec.label()}: {result.run_dir} ({time.time() - t0:.0f} s)", file=sys.stderr)
    kept = sorted(curve.glob("cloner_e*.pt"))
    if not kept:
        raise SystemExit(f"no kept cloners in {curve}: the run finished before this script kept any")
    cfg = spec.mkd_config().resolve("cpu")
    source, cloner, _ = build_models(spec, cfg, "cpu")
    test = load_data(spec, cfg, split="test")
    loss = score_loss(cfg)
    features = FeatureStore.compute(source, test, loss.layers, batch_size=cfg.batch_size, device="cpu",
                                    channels_last=cfg.channels_last, progress=False)
    labels = np.asarray(test.labels)
    rows = []
    for i, path in enumerate(kept):
        epoch = int(path.stem.split("_e")[1])
        cloner.load_state_dict(load_checkpoint(path)["cloner"])
        scores = score(cloner, loss, test, features=features, batch_size=cfg.batch_size,
                       channels_last=cfg.channels_last)
        row = {"epoch": epoch, "image_auroc": round(100 * image_auroc(labels, scores), 4)}
        if test.has_masks and (i % a.pixel_every == 0 or path == kept[-1]):
            px = pixel_metrics(source, cloner, cfg, test, ["gradients"], seed=spec.seed)["gradients"]
            row.update({k: round(100 * v, 4) for k, v in px.items()})
        rows.append(row)
        print(row, file=sys.stderr)
    fields = ["epoch", "image_auroc", "paper_pixel_auroc", "pixel_auroc", "au_pro"]
    out = [",".join(fields)] + [",".join(str(r.get(f, "")) for f in fields) for r in rows]
    atomic_write_text(Path(a.out), "\n".join(out) + "\n")
    print(f"wrote {a.out} ({len(rows)} cloners; run {spec.key()})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
