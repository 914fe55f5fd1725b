"""`mkd export`: a run's detection scorer as an ONNX model: source + final cloner + the per-image MKD loss over
the score layers (raw_score) + its normalisation with the threshold in use (pred_score), for a (N, 3, S, S)
float32 batch of RGB images in [0, 1]; the grey conversion and ImageNet normalisation the run's inputs need are
inside the graph. A JSON sidecar says the input convention, the threshold, the run and its digests. Maps need
the input gradient, which a forward graph does not carry: they stay with Detector.predict(maps=True).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from mkdlib import __version__
from mkdlib.calibration import DECISION, IMAGE_RULE, span
from mkdlib.datasets import IMAGENET_MEAN, IMAGENET_STD
from mkdlib.datasets.factory import imagenet_normalised
from mkdlib.detector import Detector, Threshold, check_percentile, check_threshold
from mkdlib.io_utils import atomic_write_text, file_sha256
from mkdlib.outputs import check_output, output_folder
from mkdlib.runs.loading import final_cloner_file
from mkdlib.weights import weights_sha256

MODEL, SIDECAR, EXPORT_DIR = "model.onnx", "model.json", "export"
INPUT, OUTPUTS = "images", ("raw_score", "pred_score")
OPSET = 17
CHECK_IMAGES = 4  # seeded random images the export is checked on with onnxruntime, when it is installed
LUMA = (299.0, 587.0, 114.0)  # ITU-R 601 in thousandths, as datasets.base.grey_rgb


class ScoreGraph(nn.Module):
    """A detector's scorer as one forward graph, `threshold` at 0.5 on pred_score: images in [0, 1] ->
    (raw_score, pred_score), each (N,)."""

    def __init__(self, detector: Detector, threshold: Threshold) -> None:
        super().__init__()
        image = detector.calibration["image"]
        self.source, self.cloner, self.loss = detector.source, detector.cloner, detector.loss
        self.grey = bool(detector.grey)
        self.normalise = imagenet_normalised(detector.result.spec.dataset, detector.imagenet_norm)
        self.threshold, self.low, self.span = float(threshold.value), float(image["min"]), float(span(image))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1))

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        x = images
        if self.grey:  # datasets.base.grey_rgb on the 8-bit values, exactly: integer sums below 2**24 in float32
            levels = torch.round(x * 255)
            luma = torch.floor(((levels * self.luma).sum(dim=1, keepdim=True) + 500) / 1000) / 255
            x = luma.expand(-1, 3, -1, -1)
        if self.normalise:
            x = (x - self.mean) / self.std
        raw = self.loss(self.cloner(x), self.source(x), reduction="none")
        pred = torch.clamp(DECISION + DECISION * (raw - self.threshold) / self.span, 0.0, 1.0)  # normalize_scores
        return raw, pred


def export_onnx(run_dir: str | Path, out_dir: str | Path | None = None, *, weights: str | Path | None = None,
                opset: int = OPSET, threshold: float | None = None, percentile: float | None = None) -> Path:
    """Write out_dir/model.onnx and its sidecar out_dir/model.json (default out_dir: <run>/export, replaced
    whole; another folder only if mkdlib wrote it). The threshold: the run's active one, or a raw value, or a
    percentile of the training scores (detector.py). Returns the model's path."""
    try:
        import onnx
    except ModuleNotFoundError:
        raise ModuleNotFoundError("mkd export needs the onnx package: pip install 'mkdlib[onnx]'") from None
    threshold, percentile = check_threshold(threshold), check_percentile(percentile)  # before any work
    ours = out_dir is None  # the run's own export/ only mkdlib writes
    out_dir = Path(run_dir).expanduser() / EXPORT_DIR if ours else Path(out_dir).expanduser()
    check_output(out_dir, protect=[run_dir], ours=ours)
    detector = Detector.from_run(run_dir, weights=weights, device="cpu")
    chosen = detector.threshold_for(threshold, percentile)
    graph = ScoreGraph(detector, chosen).eval().cpu()
    size = detector.image_size
    with output_folder(out_dir, writer="mkd export", protect=[run_dir], ours=ours) as out:
        with warnings.catch_warnings():
            # The TorchScript-based exporter (dynamo=False) is deprecated but needs no onnxscript; MKDLoss's shape
            # check is traced once as a constant, which is right: the shapes are fixed by the architecture.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(graph, (torch.rand(2, 3, size, size),), str(out / MODEL), input_names=[INPUT],
                              output_names=list(OUTPUTS), opset_version=opset, dynamo=False,
                              dynamic_axes={name: {0: "batch"} for name in (INPUT, *OUTPUTS)})
        onnx.checker.check_model(onnx.load(str(out / MODEL)))
        sidecar = _sidecar(detector, graph, chosen, opset)
        sidecar["check"] = check_with_onnxruntime(graph, out / MODEL, size)
        atomic_write_text(out / SIDECAR, json.dumps(sidecar, indent=1, allow_nan=False) + "\n")
    return out_dir / MODEL


def check_with_onnxruntime(graph: ScoreGraph, model: Path, size: int) -> dict | None:
    """The largest absolute differences between onnxruntime's and torch's outputs on CHECK_IMAGES seeded random
    images in [0, 1], or None where onnxruntime is not installed."""
    try:
        import onnxruntime
    except ModuleNotFoundError:
        return None
    images = torch.rand(CHECK_IMAGES, 3, size, size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ours = session.run(list(OUTPUTS), {INPUT: images.numpy()})
    with torch.inference_mode():
        theirs = [t.numpy() for t in graph(images)]
    return {"images": f"{CHECK_IMAGES} seeded random images in [0, 1] (torch.manual_seed 0)",
            "runtime": f"onnxruntime {onnxruntime.__version__}, CPUExecutionProvider",
            **{f"max_abs_diff_{name}": float(np.abs(a - b).max()) for name, a, b in zip(OUTPUTS, ours, theirs)}}


def _sidecar(detector: Detector, graph: ScoreGraph, chosen: Threshold, opset: int) -> dict:
    """The model's conventions and provenance (docs/deployment.md, "The ONNX model")."""
    result, spec, size = detector.result, detector.result.spec, detector.image_size
    cloner_file = final_cloner_file(result.run_dir, detector.cfg)
    resize = ("the shorter side to round(S * 256 / 224) (Lanczos), then the centre S x S crop"
              if spec.dataset.lower() in ("cifar10", "cifar", "cifar-10") else
              "to S x S, bilinear, without keeping the aspect ratio (the paper's protocol)")
    return {
        "model": MODEL, "format": "onnx", "opset": opset, "mkdlib_version": __version__,
        "exporter": f"torch.onnx.export, TorchScript-based (dynamo=False), torch {torch.__version__}",
        "input": {"name": INPUT, "shape": ["N", 3, size, size], "dtype": "float32", "range": [0.0, 1.0],
                  "layout": "NCHW, RGB", "image_size": size,
                  "prepare": f"decode to 8-bit RGB (EXIF orientation applied, transparency over black), resize "
                             f"{resize}, divide by 255",
                  "in_the_model": {"grey": graph.grey, "grey_rule": "each pixel's luma in all three channels, on its "
                                   "8-bit values as mkdlib computes it: (299 R + 587 G + 114 B + 500) // 1000 / 255",
                                   "imagenet_normalisation": graph.normalise,
                                   "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}},
        "outputs": {"raw_score": "(N,) the MKD loss over the score layers (the anomaly score)",
                    "pred_score": f"(N,) raw_score normalised, the threshold at {DECISION}: anomalous when > "
                                  f"{DECISION}"},
        "normalisation": {"rule": IMAGE_RULE, "min": graph.low, "span": graph.span,
                          "formula": "clip(0.5 + 0.5 * (raw_score - threshold) / span, 0, 1)"},
        "threshold": {"name": chosen.name, "raw": chosen.value, "normalised": DECISION, "source": chosen.source},
        "run": {"key": result.run_dir.name, "dataset": spec.dataset, "normal_class": spec.normal_class,
                "seed": spec.seed, "score_layers": list(detector.loss.layers),
                "value_weight": detector.loss.value_weight, "direction_weight": detector.loss.direction_weight},
        "source_weights": {"file": Path(str(detector.source.weights)).name if detector.source.weights else None,
                           "sha256": result.metrics.get("weights_sha256") or weights_sha256(detector.source.weights)},
        "cloner": {"file": cloner_file.name, "sha256": file_sha256(cloner_file)},
        "maps": "not exported: maps are the input gradient of the loss, which a forward ONNX graph does not give; "
                "use mkdlib.Detector.from_run(run).predict(images, maps=True)",
    }
