"""`mkd` / `python -m mkdlib`: train, evaluate and apply runs; benchmark; regenerate the paper.

Every subcommand is a thin shell over mkdlib functions (runs.runner.run, runs.runner.add_localization,
predict.predict, bench.main, regenerate.main). Errors users can fix are one line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mkdlib import __version__

RESULTS_ENV = "MKDLIB_RESULTS"
DELEGATED = {"demo": "mkdlib.demo", "bench": "mkdlib.bench", "regenerate": "mkdlib.paper.regenerate"}
METHODS = ("gradients", "smoothgrad", "smoothgrad-reference", "guided-backprop")  # = localization.METHODS
VARIANTS = METHODS + tuple(m + "-noblur" for m in METHODS)  # = localization.localization_variants()
DATASETS = ("mnist", "fashionmnist", "cifar10", "mvtec", "retina", "headct", "brainmri", "folder", "synthetic")

EPILOG = """\
examples:
  mkd train --dataset synthetic --config epochs=20 --localization gradients
  mkd train --dataset mnist --class 3 --data-root ~/data
  mkd train --dataset mvtec --class leather --results runs/
  mkd train --dataset mvtec --class bottle --profile fast
  mkd evaluate runs/1a2b3c4d5e6f7a8b --localization smoothgrad
  mkd predict runs/1a2b3c4d5e6f7a8b new_images/ --out predictions/
  mkd demo --out demo
  mkd bench --sizes 128 --batch 32
  mkd regenerate --help

environment: MKDLIB_DATA (data root), MKDLIB_VGG16_WEIGHTS (VGG-16 weights file),
MKDLIB_RESULTS (default results folder for `train`, else ./runs).
"""


WEIGHTS_HELP = ("the source weights file on this machine (default: as the run recorded them); refused if its "
                "SHA-256 differs from the one the run was trained with")


def key_value(text: str) -> tuple[str, object]:
    """KEY=VALUE (`--config`, `--option`, `mkd regenerate -p`): KEY a name ('-' read as '_'), VALUE parsed as
    JSON when it is JSON (2, 0.5, true, null, [..], {..}), else kept a string."""
    key, sep, value = text.partition("=")
    key = key.replace("-", "_")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mkd", description="Multiresolution Knowledge Distillation for anomaly detection "
        "(Salehi et al., CVPR 2021): train, evaluate and apply cached runs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mkdlib {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train and evaluate one run (cached); prints its directory",
                       description="Train (or resume) and evaluate one run, cached in RESULTS/<hash>/. "
                       "A finished run is not recomputed. Prints the run directory on stdout.")
    t.add_argument("--dataset", required=True, metavar="NAME", help=f"one of: {', '.join(DATASETS)}")
    t.add_argument("--class", dest="normal_class", metavar="C",
                   help="normal class (mnist/fashionmnist/cifar10: index or name) or MVTec category")
    t.add_argument("--seed", type=int, default=0, help="training seed and split seed (default 0)")
    t.add_argument("--data-root", metavar="DIR", help="dataset root (default: $MKDLIB_DATA)")
    t.add_argument("--weights", default="imagenet", metavar="W",
                   help="source weights: imagenet (default; follows $MKDLIB_VGG16_WEIGHTS), a file, or none")
    t.add_argument("--profile", choices=("paper", "fast"), default="paper",
                   help="paper: the paper's protocol (default, the faithful reproduction); fast: ours, a fifth "
                        "of the epochs with a warm-up + cosine learning rate (README, 'The fast profile')")
    t.add_argument("--config", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="MKDConfig override on top of the profile's settings, e.g. epochs=51 (repeatable)")
    t.add_argument("--option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option passed to get_dataset (repeatable; VALUE as JSON). folder: "
                        "normal_dir=normal, abnormal_dir=abnormal (or a list, '[\"crack\", \"scratch\"]'), "
                        "mask_dir (none), normal_test_dir (none: a seeded test_split_ratio=0.2 of normal_dir), "
                        "extensions (.png .jpg .jpeg .bmp .tif .tiff .webp); every dataset: image_size, "
                        "imagenet_norm; the others: mkdlib.datasets.describe_options(NAME). Unknown keys "
                        "are refused by name")
    t.add_argument("--localization", nargs="+", default=[], choices=VARIANTS, metavar="METHOD",
                   help=f"pixel metrics for these methods when masks exist: {', '.join(VARIANTS)}")
    t.add_argument("--max-train", type=int, metavar="N", help="use N training images (smoke runs)")
    t.add_argument("--max-test", type=int, metavar="N", help="use N test images, both classes kept")
    t.add_argument("--results", metavar="DIR", help=f"results folder (default: ${RESULTS_ENV}, else ./runs)")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("evaluate", help="show a run's metrics; add localisation metrics",
                       description="Print the metrics of a finished run. With --localization, compute the "
                       "pixel metrics of methods the run lacks (final cloner, test set) and store them. "
                       "A corrupt metrics.json is re-evaluated and a lost sampled cloner recomputed "
                       "from the run's checkpoints; nothing else is redone. A run lacking them gets the "
                       "metrics at its threshold (precision, recall, F1, tp/fp/tn/fn; image level, and "
                       "pixel level where the test set has masks) in metrics.json \"at_threshold\".")
    e.add_argument("run", metavar="RUN", help="run directory")
    e.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)
    e.add_argument("--localization", nargs="+", default=[], choices=VARIANTS, metavar="METHOD",
                   help=f"one or more of: {', '.join(VARIANTS)}")
    e.add_argument("--figures", action="store_true", help="also write one figure per test image: image | "
                   "ground truth | map on the run's fixed scale | predicted mask")
    e.add_argument("--out", metavar="DIR", help="folder for --figures (default: RUN/figures), replaced whole")
    e.add_argument("--json", action="store_true", help="print metrics.json instead of a summary")
    e.add_argument("--device", help="default: cuda when available")
    e.add_argument("--quiet", action="store_true", help="no progress bars")

    r = sub.add_parser("predict", help="score new images with a run: CSV + a figure per image",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="""\
Score images with a finished run's final cloner:
  1. raw_score = the MKD loss; score = raw_score normalised so that the run's threshold (99th
     percentile of its training images' scores, or --threshold) is 0.5 and its lowest training
     score 0 (clipped to [0, 1]); anomalous = score > 0.5.
  2. maps on the run's fixed scale (calibrated on its training images, RUN/calibration.json,
     computed once if the run lacks it): pixels above 0.5 form the predicted mask.
  3. OUT/predictions.csv (path, score, raw_score, threshold, anomalous, heatmap, error) and
     OUT/heatmaps/*.png (image | map with colour bar | predicted mask; title: name, score,
     decision); with --save-maps the maps as OUT/maps/*.npy. OUT is replaced whole.""")
    r.add_argument("run", metavar="RUN", help="run directory")
    r.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)
    r.add_argument("--threshold", type=float, help="decision threshold on the raw score (default: the run's); "
                   "it becomes 0.5 on the normalised score")
    r.add_argument("--method", default="gradients", choices=METHODS, metavar="METHOD",
                   help=f"heatmap method (default gradients): {', '.join(METHODS)}")
    r.add_argument("--no-heatmaps", action="store_true", help="scores and decisions only, no figures")
    r.add_argument("--save-maps", action="store_true", help="also write each map as float32 .npy (fixed "
                   "scale, not clipped; > 0.5 = predicted anomalous pixel)")
    r.add_argument("--device", help="default: cuda when available")
    r.add_argument("--quiet", action="store_true", help="no progress bars")

    s = sub.add_parser("runs", help="list the runs in a results folder; remove runs (--rm)",
                       description="A table of the runs in RESULTS: key, dataset, class, profile, epochs, "
                       "status, image AUROC in percent (final (mean +- std over the sampled cloners)), pixel "
                       "AUROC in percent (of the first localisation method the run has), created (when it "
                       "started); oldest first. status: finished, training e/N, failed (error.txt) or corrupt "
                       "(the reason is printed below the table), with (locked) while another process holds the "
                       "run. profile: paper (no overrides, whole data), smoke (max-train/max-test or the smoke "
                       "profile's epochs), fast (the fast profile's schedule) or custom.")
    s.add_argument("--results", metavar="DIR", help=f"results folder (default: ${RESULTS_ENV}, else ./runs)")
    s.add_argument("--dataset", metavar="NAME", help="only runs of this dataset")
    s.add_argument("--class", dest="normal_class", metavar="C", help="only runs of this normal class (index or name)")
    s.add_argument("--status", metavar="S", help="only runs with this status: finished, training, failed, corrupt "
                   "or locked")
    s.add_argument("--profile", metavar="P", help="only runs of this profile: paper, smoke, fast or custom")
    s.add_argument("--json", action="store_true", help="print the rows as JSON (numbers, run_dir, reason)")
    s.add_argument("--rm", nargs="+", metavar="KEY", help="remove these runs (refused for an unknown key or a "
                   "run another process holds; nothing is removed then)")

    sub.add_parser("demo", add_help=False, help="quick demo on the generated synthetic set (mkd demo --help)")
    sub.add_parser("bench", add_help=False, help="throughput benchmark (mkd bench --help)")
    sub.add_parser("regenerate", add_help=False,
                   help="regenerate the paper's tables and figures (mkd regenerate --help)")
    return p


def _train(a) -> int:
    from mkdlib.config import PAPER_SETTINGS
    from mkdlib.runs.runner import run
    from mkdlib.runs.spec import RunSpec

    cls = a.normal_class
    if isinstance(cls, str) and cls.isdigit():
        cls = int(cls)
    weights = None if str(a.weights).lower() == "none" else a.weights
    from mkdlib.datasets.factory import ALIASES
    from mkdlib.config import profile_of

    dataset = ALIASES.get(a.dataset.lower(), a.dataset.lower())  # e.g. "MNIST" -> "mnist"
    overrides = profile_of(a.profile).overrides(dataset) if dataset in PAPER_SETTINGS else {}
    config = {**overrides, **dict(a.config)}
    spec = RunSpec(a.dataset, cls, config=config, seed=a.seed, data_root=a.data_root, weights=weights,
                   localization=tuple(a.localization), max_train=a.max_train, max_test=a.max_test,
                   dataset_options=dict(a.option))
    result = run(spec, _results_root(a), device=a.device or _default_device(), progress=not a.quiet)
    print(_summary(result.metrics), file=sys.stderr)
    print(result.run_dir)
    return 0


def _results_root(a) -> str:
    """--results, else $MKDLIB_RESULTS, else ./runs (train and runs share it)."""
    return a.results or os.environ.get(RESULTS_ENV) or "runs"


def _summary(m: dict) -> str:
    img = m["image_auroc"]
    lines = [f"image AUROC: final {100 * img['final']:.2f} (epoch {img['final_epoch']}), "
             f"mean {100 * img['mean']:.2f} +- {100 * img['std']:.2f} over {len(img['per_epoch'])} cloners"]
    for method, px in m.get("pixel", {}).items():
        lines.append(f"{method}: paper pixel AUROC {100 * px['paper_pixel_auroc']:.2f}, pixel AUROC "
                     f"{100 * px['pixel_auroc']:.2f}, AU-PRO {100 * px['au_pro']:.2f}")
    lines.append(f"threshold {m['threshold']:.6g}; {m['n_train']} training / {m['n_test']} test images")
    return "\n".join(lines)


def _evaluate(a) -> int:
    from mkdlib.decisions import add_threshold_metrics
    from mkdlib.runs.runner import evaluate

    device = a.device or _default_device()
    if a.out and not a.figures:
        raise ValueError("mkd evaluate --out is the folder for --figures; add --figures or drop --out")
    evaluate(a.run, a.localization, device=device, progress=not a.quiet, weights=a.weights)
    result = add_threshold_metrics(a.run, device=device, weights=a.weights)
    print(json.dumps(result.metrics, indent=1) if a.json else
          _summary(result.metrics) + "\n" + _at_threshold_summary(result.metrics["at_threshold"]))
    if a.figures:
        from mkdlib.predict import evaluation_figures

        folder = evaluation_figures(a.run, a.out, device=device, progress=not a.quiet, weights=a.weights)
        print(f"wrote the test figures to {folder}", file=sys.stderr)
    return 0


def _at_threshold_summary(decisions: dict) -> str:
    """One line per level of metrics.json "at_threshold"."""
    return "\n".join(f"at the threshold, {level}: precision {d['precision']:.3f}, recall {d['recall']:.3f}, "
                     f"F1 {d['f1']:.3f} (tp {d['tp']}, fp {d['fp']}, tn {d['tn']}, fn {d['fn']})"
                     for level, d in decisions.items() if level in ("image", "pixel"))


def _predict(a) -> int:
    from mkdlib.predict import predict

    table = predict(a.run, a.paths, a.out, threshold=a.threshold, method=a.method, weights=a.weights,
                    device=a.device or _default_device(), heatmaps=not a.no_heatmaps, save_maps=a.save_maps,
                    progress=not a.quiet)
    print(f"{int(table['anomalous'].sum())} of {len(table)} images anomalous (normalised score > "
          f"{table['threshold'].iloc[0]:g}); wrote {Path(a.out) / 'predictions.csv'}", file=sys.stderr)
    return 0


def _runs(a) -> int:
    from mkdlib.runs.catalog import format_table, list_runs, remove_runs

    root = _results_root(a)
    filters = {"dataset": a.dataset, "normal_class": a.normal_class, "status": a.status, "profile": a.profile}
    if a.rm:
        if a.json or any(v is not None for v in filters.values()):
            raise ValueError("mkd runs --rm takes run keys only; list them first, then remove them by key")
        for run_dir in remove_runs(root, a.rm):
            print(f"removed {run_dir}")
        return 0
    rows = list_runs(root, **filters)
    if a.json:
        print(json.dumps(rows, indent=1))
    elif rows:
        print(format_table(rows))
    else:
        print(f"no runs in {root}" + (" match the filters" if any(filters.values()) else ""), file=sys.stderr)
    return 0


def _delegate(command: str, argv: list[str]) -> int:
    import importlib

    try:
        module = importlib.import_module(DELEGATED[command])
    except ModuleNotFoundError as err:
        if err.name != DELEGATED[command]:
            raise
        print(f"mkd {command}: {DELEGATED[command]} is not available in this installation", file=sys.stderr)
        return 2
    return int(module.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((i for i, x in enumerate(argv) if x != "--traceback"), len(argv))
    if first < len(argv) and argv[first] in DELEGATED:  # their own parsers own their arguments and --help
        return _delegate(argv[first], argv[first + 1:])
    args = build_parser().parse_args(argv)
    try:
        return {"train": _train, "evaluate": _evaluate, "predict": _predict, "runs": _runs}[args.command](args)
    except KeyboardInterrupt:
        print("mkd: interrupted (a run resumes from its last checkpoint)", file=sys.stderr)
        return 130
    except Exception as err:
        if args.traceback:
            raise
        print(f"mkd {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: Exception) -> str:
    from mkdlib.runs.store import RunError
    from mkdlib.checkpoints import CheckpointError

    text = " ".join(str(err).split()) or repr(err)
    known = (RunError, CheckpointError, ValueError, OSError)  # users' errors: missing data, bad names, corrupt files
    return text if isinstance(err, known) else f"{type(err).__name__}: {text} (rerun with --traceback)"
