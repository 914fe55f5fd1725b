"""The `mkd` command line's parser: its subcommands, options and help texts, and the names they offer.

Kept apart from mkdlib/cli.py (which runs the subcommands) and free of torch, like it, so that `mkd --help`
stays fast: METHODS and DATASETS are copies of the library's names (tests/test_cli.py checks them).
"""

from __future__ import annotations

import argparse
import json

from mkdlib import __version__

RESULTS_ENV = "MKDLIB_RESULTS"
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
  mkd calibrate runs/1a2b3c4d5e6f7a8b --good labelled/good --anomalous labelled/bad
  mkd export runs/1a2b3c4d5e6f7a8b --format onnx --out exported/
  mkd demo --out demo
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


def build_parser() -> argparse.ArgumentParser:
    """`mkd`'s parser: train, evaluate, predict, calibrate, export and runs parsed here; demo and regenerate are
    placeholders for the help, their own parsers own their arguments (cli.main delegates them)."""
    p = argparse.ArgumentParser(
        prog="mkd", description="Multiresolution Knowledge Distillation for anomaly detection "
        "(Salehi et al., CVPR 2021): train, evaluate and apply cached runs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"mkdlib {__version__}")
    p.add_argument("--traceback", action="store_true", help="show the full traceback on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for add in (_add_train, _add_evaluate, _add_predict, _add_calibrate, _add_export, _add_runs):  # as listed
        add(sub)
    sub.add_parser("demo", add_help=False, help="quick demo on the generated synthetic set (mkd demo --help)")
    sub.add_parser("regenerate", add_help=False,
                   help="regenerate the paper's tables and figures (mkd regenerate --help)")
    return p


def _add_train(sub: argparse._SubParsersAction) -> None:
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
                   help="paper: the paper's protocol (default, the faithful reproduction); fast: ours, 2/5 of "
                        "the epochs with a warm-up + cosine learning rate; prints where it stands in for paper "
                        "(docs/fast-profile.md)")
    t.add_argument("--config", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="MKDConfig override on top of the profile's settings, e.g. epochs=51 (repeatable)")
    t.add_argument("--option", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="dataset option passed to get_dataset (repeatable; VALUE as JSON). folder: "
                        "normal_dir=normal, abnormal_dir=abnormal (or a list, '[\"crack\", \"scratch\"]'), "
                        "mask_dir (none), normal_test_dir (none: a seeded test_split_ratio=0.2 of normal_dir), "
                        "extensions (.png .jpg .jpeg .bmp .tif .tiff .webp); every dataset: image_size, "
                        "imagenet_norm, grey (true: each image's luma in all 3 channels); the others: "
                        "mkdlib.datasets.describe_options(NAME). Unknown keys are refused by name")
    t.add_argument("--localization", nargs="+", default=[], choices=VARIANTS, metavar="METHOD",
                   help=f"pixel metrics for these methods when masks exist: {', '.join(VARIANTS)}")
    t.add_argument("--max-train", type=int, metavar="N", help="use N training images (smoke runs)")
    t.add_argument("--max-test", type=int, metavar="N", help="use N test images, both classes kept")
    t.add_argument("--results", metavar="DIR", help=f"results folder (default: ${RESULTS_ENV}, else ./runs)")
    t.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
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


def _add_predict(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("predict", help="score new images with a run: CSV + JSON + a figure per image",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="""\
Score images with a finished run's final cloner (mkdlib.Detector):
  1. raw_score = the MKD loss; pred_score = raw_score normalised so that the threshold in use is
     0.5 and the run's lowest training score 0 (clipped to [0, 1]); pred_label = pred_score > 0.5.
     The threshold in use: --threshold, --percentile, else the run's active one (its default, the
     99th percentile of its training images' scores, or one `mkd calibrate` set).
  2. maps on the run's fixed scale (calibrated on its training images, RUN/calibration.json,
     computed once if the run lacks it): pixels above 0.5 form the predicted mask.
  3. OUT/predictions.csv (path, pred_score, raw_score, threshold, pred_label, anomaly_map, error),
     OUT/predictions.json (the same rows, the run, the threshold in use and its source) and
     OUT/heatmaps/*.png (image | map with colour bar | predicted mask; title: name, score,
     decision); with --save-maps the maps as OUT/maps/*.npy (column map). OUT is replaced whole.
Earlier versions named the columns score, anomalous, heatmap (now pred_score, pred_label, anomaly_map).""")
    r.add_argument("run", metavar="RUN", help="run directory")
    r.add_argument("paths", nargs="+", metavar="PATH",
                   help="image files or folders of images, scanned recursively (hidden files and folders, "
                        "and folders mkdlib wrote, such as an earlier --out, are skipped)")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    r.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)
    threshold = r.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, metavar="T", help="decision threshold on the raw score, "
                           "finite and >= 0 (default: the run's active one); it becomes 0.5 on pred_score")
    threshold.add_argument("--percentile", type=float, metavar="P", help="the threshold at percentile P, in "
                           "(0, 100], of the run's training images' scores (computed from them once, then "
                           "kept in RUN/calibration.json)")
    r.add_argument("--method", default="gradients", choices=METHODS, metavar="METHOD",
                   help=f"heatmap method (default gradients): {', '.join(METHODS)}")
    r.add_argument("--no-heatmaps", action="store_true", help="scores and decisions only, no figures")
    r.add_argument("--save-maps", action="store_true", help="also write each map as float32 .npy (fixed "
                   "scale, not clipped; > 0.5 = predicted anomalous pixel)")
    r.add_argument("--device", help="default: cuda when available")
    r.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_calibrate(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("calibrate", help="set a run's threshold at the best F1 on labelled images; list or "
                       "switch its thresholds", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="""\
Set a run's image threshold at the best F1 on labelled images that are NOT its test set (a file
that is one of the run's test images is refused, named): --good and --anomalous folders (or
files); with --masks the pixel F1 of the maps (> 0.5 on the run's fixed scale) is reported too.
Each threshold is kept as a new version in RUN/calibration.json ("thresholds", e.g.
f1-2026-05-09-1) and made active; the default (99th percentile of the training images' scores)
is never overwritten. `mkd predict` and mkdlib.Detector use the active one.
  mkd calibrate RUN                               list the thresholds, the active one marked
  mkd calibrate RUN --good g/ --anomalous a/      add one at the best F1 and make it active
  mkd calibrate RUN --use default                 switch back (or --use NAME)""")
    c.add_argument("run", metavar="RUN", help="run directory")
    c.add_argument("--good", nargs="+", metavar="PATH", help="normal images: files or folders (recursive)")
    c.add_argument("--anomalous", nargs="+", metavar="PATH", help="anomalous images: files or folders")
    c.add_argument("--masks", metavar="DIR", help="ground-truth masks of the anomalous images, found by name "
                   "(<stem>_mask.* or <stem>.*) in DIR/<subfolder>, DIR/<folder>/<subfolder> or DIR, for an image "
                   "in <subfolder> of an --anomalous <folder> (MVTec: --anomalous test/crack test/cut --masks "
                   "ground_truth)")
    c.add_argument("--use", metavar="NAME", help="make NAME (default, or a version listed by `mkd calibrate "
                   "RUN`) the active threshold")
    c.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)
    c.add_argument("--device", help="default: cuda when available")


def _add_export(sub: argparse._SubParsersAction) -> None:
    x = sub.add_parser("export", help="export a run's detection scorer (ONNX) with a JSON sidecar",
                       description="Write the run's detection scorer (source + final cloner + the per-image MKD "
                       "loss over the score layers + the normalisation to pred_score with the threshold in use) "
                       "as OUT/model.onnx, taking a (N, 3, S, S) float32 batch of RGB images in [0, 1] resized to "
                       "the run's size S, and returning raw_score and pred_score; OUT/model.json says the input "
                       "convention, the threshold and its name, the run, the weights' and cloner's SHA-256. Maps "
                       "are not exported (they need the input gradient): use mkdlib.Detector.predict(maps=True). "
                       "Needs the onnx extra: pip install 'mkdlib[onnx]'. docs/deployment.md has the details.")
    x.add_argument("run", metavar="RUN", help="run directory")
    x.add_argument("--format", choices=("onnx",), default="onnx", help="onnx (the only format)")
    x.add_argument("--out", metavar="DIR", help="output folder (default RUN/export), replaced whole")
    x.add_argument("--opset", type=int, default=17, metavar="N", help="ONNX opset (default 17)")
    threshold = x.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, metavar="T", help="the raw-score threshold put at 0.5 on "
                           "pred_score (default: the run's active one)")
    threshold.add_argument("--percentile", type=float, metavar="P", help="the threshold at percentile P of the "
                           "run's training images' scores")
    x.add_argument("--weights", metavar="FILE", help=WEIGHTS_HELP)


def _add_runs(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("runs", help="list the runs in a results folder; remove runs (--rm)",
                       description="A table of the runs in RESULTS: key, dataset, class, profile, epochs, "
                       "status, image AUROC in percent (final (mean +- std over the sampled cloners)), pixel "
                       "AUROC in percent (of the first localisation method the run has), created (when it "
                       "started); oldest first. status: finished, training e/N, failed (error.txt; its first "
                       "line is printed below the table) or corrupt (the reason below the table), with (locked) "
                       "while another process holds the run; a finished run whose last.pt is unreadable gets a "
                       "note (it is only needed to train further). profile: paper (no overrides, whole data), smoke "
                       "(max-train/max-test or the smoke profile's epochs), fast (the fast profile's schedule) or "
                       "custom.")
    s.add_argument("--results", metavar="DIR", help=f"results folder (default: ${RESULTS_ENV}, else ./runs)")
    s.add_argument("--dataset", metavar="NAME", help="only runs of this dataset")
    s.add_argument("--class", dest="normal_class", metavar="C", help="only runs of this normal class (index or name)")
    s.add_argument("--status", metavar="S", help="only runs with this status: finished, training, failed, corrupt "
                   "or locked")
    s.add_argument("--profile", metavar="P", help="only runs of this profile: paper, smoke, fast, fast-v1 or custom")
    s.add_argument("--json", action="store_true", help="print the rows as JSON (numbers, run_dir, reason)")
    s.add_argument("--rm", nargs="+", metavar="KEY", help="remove these runs (refused for an unknown key or a "
                   "run another process holds; nothing is removed then)")
