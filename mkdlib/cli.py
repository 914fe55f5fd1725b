"""`mkd` / `python -m mkdlib`: train, evaluate and apply runs; regenerate the paper.

Every subcommand is a thin shell over mkdlib functions (runs.runner.run, runs.runner.add_localization,
predict.predict, tuning.calibrate, export.export_onnx, demo.main, regenerate.main). Errors users can fix
are one line on stderr, exit 2.
The parser and its help texts are mkdlib/cli_parser.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from mkdlib.cli_parser import RESULTS_ENV, build_parser

DELEGATED = {"demo": "mkdlib.demo", "regenerate": "mkdlib.paper.regenerate"}


def _train(a) -> int:
    from mkdlib.config import PAPER_SETTINGS, profile_of
    from mkdlib.datasets.factory import ALIASES
    from mkdlib.runs.runner import run
    from mkdlib.runs.spec import RunSpec

    cls = int(a.normal_class) if a.normal_class and a.normal_class.isdigit() else a.normal_class
    dataset = ALIASES.get(a.dataset.lower(), a.dataset.lower())  # e.g. "MNIST" -> "mnist"
    profile = profile_of(a.profile)
    if profile.guidance:
        print(f"{profile.name}: {profile.guidance}", file=sys.stderr)
    overrides = profile.overrides(dataset) if dataset in PAPER_SETTINGS else {}
    spec = RunSpec(a.dataset, cls, config={**overrides, **dict(a.config)}, seed=a.seed, data_root=a.data_root,
                   weights=None if str(a.weights).lower() == "none" else a.weights,
                   localization=tuple(a.localization), max_train=a.max_train, max_test=a.max_test,
                   dataset_options=dict(a.option))
    result = run(spec, _results_root(a), device=a.device, progress=not a.quiet)
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
    lines.append(f"{m['n_train']} training / {m['n_test']} test images")
    return "\n".join(lines)


def _evaluate(a) -> int:
    from mkdlib.decisions import add_threshold_metrics
    from mkdlib.runs.runner import evaluate

    if a.out and not a.figures:
        raise ValueError("mkd evaluate --out is the folder for --figures; add --figures or drop --out")
    if a.out:
        from mkdlib.outputs import check_output

        check_output(a.out, protect=[a.run])  # before any work: never the run, nor a folder mkdlib did not write
    evaluate(a.run, a.localization, device=a.device, progress=not a.quiet, weights=a.weights)
    result = add_threshold_metrics(a.run, device=a.device, weights=a.weights)
    print(json.dumps(result.metrics, indent=1) if a.json else
          _summary(result.metrics) + "\n" + _at_threshold_summary(result.metrics.get("at_threshold")))
    if a.figures:
        from mkdlib.predict import evaluation_figures

        folder = evaluation_figures(a.run, a.out, device=a.device, progress=not a.quiet, weights=a.weights)
        print(f"wrote the test figures to {folder}", file=sys.stderr)
    return 0


def _at_threshold_summary(decisions: dict | None) -> str:
    if decisions is None:
        return "no metrics at a threshold: the run's final cloner is not here to calibrate one"
    return "\n".join(f"at the threshold, {level}: precision {d['precision']:.3f}, recall {d['recall']:.3f}, "
                     f"F1 {d['f1']:.3f} (tp {d['tp']}, fp {d['fp']}, tn {d['tn']}, fn {d['fn']})"
                     for level, d in decisions.items() if level in ("image", "pixel"))


def _predict(a) -> int:
    from mkdlib.predict import CSV_NAME, JSON_NAME, predict

    table = predict(a.run, a.paths, a.out, threshold=a.threshold, percentile=a.percentile, method=a.method,
                    weights=a.weights, device=a.device, heatmaps=not a.no_heatmaps,
                    save_maps=a.save_maps, progress=not a.quiet)
    threshold = json.loads((Path(a.out) / JSON_NAME).read_text())["threshold"]
    print(f"{int(table['pred_label'].sum())} of {len(table)} images anomalous (pred_score > 0.5: raw score > "
          f"{threshold['raw']:.6g}, threshold {threshold['name']}); wrote {Path(a.out) / CSV_NAME} and "
          f"{JSON_NAME}", file=sys.stderr)
    return 0


def _calibrate(a) -> int:
    from mkdlib.tuning import calibrate, describe, list_thresholds, use_threshold

    labelled = a.good is not None or a.anomalous is not None or a.masks is not None
    if a.use is not None:
        if labelled:
            raise ValueError("mkd calibrate --use switches the active threshold; give it without --good/--anomalous")
        print(use_threshold(a.run, a.use))
    elif not labelled:
        print(list_thresholds(a.run))
    elif a.good is None or a.anomalous is None:
        raise ValueError("mkd calibrate needs both --good and --anomalous (labelled images, not the test set)")
    else:
        print(describe(calibrate(a.run, a.good, a.anomalous, masks=a.masks, weights=a.weights, device=a.device)))
    return 0


def _export(a) -> int:
    from mkdlib.export import export_onnx

    model = export_onnx(a.run, a.out, weights=a.weights, opset=a.opset, threshold=a.threshold,
                        percentile=a.percentile)
    print(f"wrote {model} and {model.with_suffix('.json').name} (the sidecar: input size, value range, "
          "threshold, digests)", file=sys.stderr)
    print(model)
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
        if "device" in args and args.device is None:
            import torch

            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        commands = {"train": _train, "evaluate": _evaluate, "predict": _predict, "calibrate": _calibrate,
                    "export": _export, "runs": _runs}
        return commands[args.command](args)
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
