"""The practitioner's kit (issue 32): mkdlib.Detector on every input type, the same scores as `mkd predict`,
anomalib's names in predict's CSV / JSON, thresholds a user sets (--percentile, `mkd calibrate`, versioned),
bad threshold values refused (issue 29, point 6), a tampered calibration.json refused (point 8), and
`mkd export` to ONNX checked against the Detector with onnxruntime."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import mkdlib
from mkdlib.calibration import CALIBRATION, at_threshold
from mkdlib.decisions import read_calibration, write_calibration
from mkdlib.cli import main
from mkdlib.datasets import load_images, make_synthetic
from mkdlib.predict import predict
from mkdlib.runs.runner import run
from mkdlib.runs.spec import RunSpec
from mkdlib.runs.store import RunError
from mkdlib.tuning import best_f1

DATA = dict(size=48, n_train=12, n_test_good=6, n_test_defect=6)
CONFIG = dict(image_size=48, epochs=15, eval_every=15, sample_last=1, checkpoint_every=15, batch_size=12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real training on the synthetic set (random source: no weights file needed), its category
    folder, and labelled images that are not its test set (another seed's synthetic set, with masks)."""
    tmp = tmp_path_factory.mktemp("detector")
    spec = RunSpec("synthetic", config=CONFIG, data_root=str(tmp / "data"), weights=None, dataset_options=DATA)
    result = run(spec, tmp / "runs", progress=False)
    labelled = make_synthetic(tmp / "labelled", n_train=1, n_test_good=6, n_test_defect=6, size=48, seed=1)
    return result, next((tmp / "data").iterdir()), labelled


def _copy(result, tmp_path):
    """A copy of the run (tests that change its calibration.json keep the module's run as it is)."""
    copy = tmp_path / "runs" / result.run_dir.name
    shutil.copytree(result.run_dir, copy)
    return copy


def _a_test_image(category, defect="scratch"):
    return sorted((category / "test" / defect).iterdir())[0]


# --- Detector: every input type, as the file ------------------------------------------------------------

def test_every_input_type_scores_as_the_file_it_came_from(trained, tmp_path):
    result, category, _ = trained
    detector = mkdlib.Detector.from_run(result.run_dir, device="cpu")
    file = _a_test_image(category)
    rgb = np.asarray(Image.open(file).convert("RGB"))  # (H, W, 3) uint8
    raw = detector.predict(file).raw_score[0]
    tensor = torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255
    same = {"path": str(file), "PIL": Image.open(file), "uint8": rgb, "float": rgb / 255.0,
            "float32": (rgb / 255.0).astype(np.float32), "tensor": tensor}
    for kind, image in same.items():
        got = detector.predict(image)
        assert len(got) == 1 and got.raw_score[0] == pytest.approx(raw, rel=1e-6), kind
    batch = detector.predict(np.stack([rgb, rgb[::-1]]))  # (N, H, W, 3)
    assert batch.raw_score[0] == pytest.approx(raw, rel=1e-6) and batch.paths == [None, None]
    assert detector.predict(torch.stack([tensor, tensor])).raw_score == pytest.approx([raw, raw], rel=1e-6)

    grey = rgb[..., 0]  # (H, W) grey, against the grey PNG it would be saved to
    Image.fromarray(grey).save(tmp_path / "grey.png")
    assert detector.predict(grey).raw_score[0] == pytest.approx(detector.predict(tmp_path / "grey.png").raw_score[0],
                                                                rel=1e-6)
    folder = detector.predict(category / "test" / "scratch")  # a folder: its images, recursively, sorted
    assert folder.paths == [str(p) for p in sorted((category / "test" / "scratch").iterdir())]
    mixed = detector.predict([file, rgb, [Image.open(file)], category / "test" / "spot"])  # a list of any
    assert len(mixed) == 3 + len(list((category / "test" / "spot").iterdir()))
    assert mixed.raw_score[:3] == pytest.approx([raw] * 3, rel=1e-6) and mixed.paths[:2] == [str(file), None]
    assert mixed.anomaly_map is None and mixed.pred_mask is None  # maps only when asked


def test_results_are_anomalibs_fields_and_unreadable_inputs_are_listed(trained, tmp_path):
    result, category, _ = trained
    detector = mkdlib.Detector.from_run(result.run_dir, device="cpu")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    got = detector.predict([_a_test_image(category), tmp_path / "broken.png"], maps=True)
    assert got.error[0] == "" and "broken.png" in got.error[1]
    assert np.isnan(got.pred_score[1]) and np.isnan(got.raw_score[1]) and not got.pred_label[1]
    assert got.anomaly_map.shape == (2, 48, 48) and got.anomaly_map.dtype == np.float32
    assert np.isnan(got.anomaly_map[1]).all() and not got.pred_mask[1].any()
    assert (got.pred_mask[0] == (got.anomaly_map[0] > 0.5)).all()
    assert got.pred_label[0] == (got.pred_score[0] > 0.5) == (got.raw_score[0] > detector.threshold.value)
    assert got.threshold.name == "default" and 0 <= got.pred_score[0] <= 1


def test_arrays_it_cannot_read_are_refused_naming_what_it_takes(trained):
    result, _, _ = trained
    detector = mkdlib.Detector.from_run(result.run_dir, device="cpu")
    cases = [(np.zeros((3, 48, 48), np.uint8), "channels last"), (np.full((48, 48, 3), 2.0), r"\[0, 1\]"),
             (np.full((48, 48), np.nan), "finite"), (np.zeros((48, 48, 3), np.uint16), "uint16"),
             (torch.zeros(2, 5, 48, 48), "tensor of shape"), ([], "empty")]
    for image, words in cases:
        with pytest.raises(ValueError, match=words):
            detector.predict(image)
    with pytest.raises(TypeError, match="dict"):
        detector.predict({"image": 1})


# --- mkd predict is the Detector: same scores, maps on the run's scale, anomalib's names --------------------

def test_detector_gives_mkd_predicts_scores_and_maps(trained, tmp_path):
    result, category, _ = trained
    rgb = np.asarray(Image.open(_a_test_image(category)).convert("RGB"))
    Image.fromarray(rgb).save(tmp_path / "array.png")  # lossless: the array's own pixels
    out = tmp_path / "out"
    assert main(["predict", str(result.run_dir), str(tmp_path / "array.png"), "--out", str(out), "--save-maps",
                 "--quiet", "--device", "cpu"]) == 0
    written = pd.read_csv(out / "predictions.csv")
    assert list(written.columns) == ["path", "pred_score", "raw_score", "threshold", "pred_label", "anomaly_map",
                                     "map", "error"]
    detector = mkdlib.Detector.from_run(result.run_dir, device="cpu")
    for image in (rgb, Image.open(tmp_path / "array.png")):
        got = detector.predict(image, maps=True)
        assert got.pred_score[0] == pytest.approx(written["pred_score"][0], abs=1e-12)
        assert got.raw_score[0] == pytest.approx(written["raw_score"][0], rel=1e-6)
        np.testing.assert_allclose(got.anomaly_map[0], np.load(out / written["map"][0]), rtol=1e-6, atol=1e-6)
    assert bool(written["pred_label"][0]) == (written["pred_score"][0] > 0.5)
    assert written["anomaly_map"][0].startswith("heatmaps/") and (out / written["anomaly_map"][0]).is_file()

    summary = json.loads((out / "predictions.json").read_text())
    assert summary["run"] == result.run_dir.name and summary["threshold"]["name"] == "default"
    assert summary["threshold"]["raw"] == read_calibration(result.run_dir)["image"]["threshold"]
    assert "percentile 99" in summary["threshold"]["source"] and summary["threshold"]["normalised"] == 0.5
    row = summary["predictions"][0]
    assert list(row) == list(written.columns) and row["pred_score"] == pytest.approx(written["pred_score"][0])
    assert row["error"] == "" and summary["n_images"] == 1


def test_predictions_json_names_unreadable_images_with_null_scores(trained, tmp_path):
    result, category, _ = trained
    (tmp_path / "broken.png").write_bytes(b"not an image")
    table = predict(result.run_dir, [_a_test_image(category), tmp_path / "broken.png"],
                                   tmp_path / "out", heatmaps=False, progress=False)
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["predictions"][1]["pred_score"] is None and "broken.png" in summary["predictions"][1]["error"]
    assert summary["n_unreadable"] == 1 and summary["method"] is None and "anomaly_map" not in table


# --- thresholds a user can set ------------------------------------------------------------------------

def test_a_percentile_of_the_training_scores_costs_the_training_images_once(trained, tmp_path, monkeypatch):
    from mkdlib import decisions

    result, category, _ = trained
    copy = _copy(result, tmp_path)
    cal = mkdlib.Detector.from_run(copy, device="cpu").calibration
    cal["image"].pop("train_scores", None)  # as a run calibrated before the scores were kept
    write_calibration(copy, cal)
    detector = mkdlib.Detector.from_run(copy, device="cpu")
    at_99 = detector.threshold_for(percentile=99)
    assert at_99.value == detector.threshold.value and at_99.name == "percentile 99"  # the default, exactly
    stored = read_calibration(copy)["image"]["train_scores"]
    assert len(stored) == DATA["n_train"] and (copy / CALIBRATION).read_text().count("\n") < 40  # one line

    def no_images(*args, **kwargs):
        raise AssertionError("the training images were read again")

    monkeypatch.setattr(decisions, "_training_images", no_images)
    lower = mkdlib.Detector.from_run(copy, device="cpu").predict(category / "test" / "good", percentile=50)
    assert lower.threshold.value == pytest.approx(np.median(stored), rel=1e-6)
    assert (lower.pred_label == (lower.raw_score > lower.threshold.value)).all()
    table = predict(copy, [category / "test" / "good"], tmp_path / "out", percentile=50,
                                   heatmaps=False, progress=False)
    assert table["raw_score"].tolist() == pytest.approx(lower.raw_score.tolist())
    assert table["pred_label"].tolist() == lower.pred_label.tolist()
    assert json.loads((tmp_path / "out" / "predictions.json").read_text())["threshold"]["name"] == "percentile 50"


@pytest.mark.parametrize("argv, words", [
    (["--threshold", "nan"], "--threshold nan"), (["--threshold", "inf"], "--threshold inf"),
    (["--threshold", "-1"], "--threshold -1.0"), (["--percentile", "0"], "--percentile 0.0"),
    (["--percentile", "100.5"], "--percentile 100.5"), (["--percentile", "nan"], "--percentile nan"),
])
def test_bad_threshold_values_are_refused_before_any_work(trained, tmp_path, capsys, argv, words):
    """Issue 29 point 6: `--threshold nan` said "none of the 1 images could be read", -1 marked everything."""
    result, category, _ = trained
    code = main(["predict", str(result.run_dir), str(_a_test_image(category)), "--out", str(tmp_path / "out"),
                 "--quiet", "--device", "cpu", *argv])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_bad_threshold_values_are_refused_by_the_detector(trained):
    result, category, _ = trained
    detector = mkdlib.Detector.from_run(result.run_dir, device="cpu")
    for kwargs in ({"threshold": float("nan")}, {"threshold": -0.5}, {"percentile": 0}, {"percentile": 101},
                   {"threshold": 1.0, "percentile": 50}):
        with pytest.raises(ValueError):
            detector.predict(_a_test_image(category), **kwargs)


def test_best_f1_picks_the_midpoint_with_the_best_f1():
    got = best_f1([0.1, 0.2, 0.3, 0.35, 0.5, 0.6], [0, 0, 0, 1, 1, 1])
    assert got["threshold"] == pytest.approx(0.325) and got["f1"] == 1.0 and (got["tp"], got["fp"]) == (3, 0)
    noisy = best_f1([0.1, 0.4, 0.3, 0.35, 0.5, 0.6], [0, 0, 0, 1, 1, 1])  # a good image among the anomalous
    assert noisy["threshold"] == pytest.approx(0.325) and noisy["f1"] == pytest.approx(6 / 7)
    assert noisy["precision"] == pytest.approx(0.75) and noisy["recall"] == 1.0
    with pytest.raises(ValueError, match="good and anomalous"):
        best_f1([0.1, 0.2], [1, 1])


def test_calibrate_sets_the_best_f1_threshold_versioned_and_switchable(trained, tmp_path, capsys):
    result, category, labelled = trained
    copy = _copy(result, tmp_path)
    defects = [str(labelled / "test" / d) for d in ("crack", "scratch", "spot")]
    default = mkdlib.Detector.from_run(copy, device="cpu").calibration["image"]  # computed if not yet
    argv = ["calibrate", str(copy), "--good", str(labelled / "test" / "good"), "--anomalous", *defects,
            "--masks", str(labelled / "ground_truth"), "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    cal = read_calibration(copy)
    name = cal["active"]
    entry = cal["thresholds"][name]
    assert name.startswith("f1-") and name.endswith("-1") and cal["image"] == default  # the default kept
    assert f"{name} is now the active threshold" in out and f"image F1 {entry['f1']:.3f}" in out
    assert f"pixel F1 {entry['pixel']['f1']:.3f}" in out and "the default threshold" in out
    assert (entry["n_good"], entry["n_anomalous"]) == (6, 6) and entry["folders"]["anomalous"] == defects

    detector = mkdlib.Detector.from_run(copy, device="cpu")
    assert detector.threshold.name == name and detector.threshold.value == entry["threshold"]
    scores = detector.predict([labelled / "test" / "good", *defects]).raw_score
    truth = np.r_[np.zeros(6, bool), np.ones(6, bool)]
    f1s = [at_threshold(scores > t, truth)["f1"] for t in np.r_[0, np.sort(scores)]]
    assert entry["f1"] == pytest.approx(max(f1s))  # no threshold does better on these images
    assert at_threshold(scores > entry["threshold"], truth)["f1"] == pytest.approx(entry["f1"])

    table = predict(copy, [category / "test"], tmp_path / "p", heatmaps=False, progress=False)
    assert (table["pred_label"] == (table["raw_score"] > entry["threshold"])).all()
    known = json.loads((tmp_path / "p" / "predictions.json").read_text())
    assert known["threshold"]["name"] == name and known["known_at_threshold"]["image"]["f1"] == entry["f1"]
    assert known["known_at_threshold"]["pixel"]["f1"] == entry["pixel"]["f1"]

    assert main(argv[:6] + ["--device", "cpu"]) == 0  # a second version: the first is kept
    assert read_calibration(copy)["active"].endswith("-2") and name in read_calibration(copy)["thresholds"]
    capsys.readouterr()
    assert main(["calibrate", str(copy), "--use", "default"]) == 0
    assert "default" in capsys.readouterr().out and read_calibration(copy)["active"] == "default"
    assert mkdlib.Detector.from_run(copy, device="cpu").threshold.value == default["threshold"]
    assert main(["calibrate", str(copy)]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].startswith("* default") and len(listing) == 3 and listing[1].startswith(f"  {name}")
    assert main(["calibrate", str(copy), "--use", "f1-bogus"]) == 2
    assert "f1-bogus" in capsys.readouterr().err


def test_calibrate_refuses_the_runs_test_images_even_copied(trained, tmp_path, capsys):
    result, category, labelled = trained
    good = tmp_path / "good"
    shutil.copytree(labelled / "test" / "good", good)
    shutil.copy(_a_test_image(category, "good"), good / "renamed.png")  # a test image under another name
    mkdlib.Detector.from_run(result.run_dir, device="cpu")  # the run's calibration, computed if not yet
    before = (result.run_dir / CALIBRATION).read_text()
    assert main(["calibrate", str(result.run_dir), "--good", str(good), "--anomalous",
                 str(labelled / "test" / "crack"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "renamed.png" in err and "test images" in err and len(err.strip().splitlines()) == 1
    assert main(["calibrate", str(result.run_dir), "--good", str(category / "test" / "good"), "--anomalous",
                 str(labelled / "test" / "crack")]) == 2
    assert "among the test images" in capsys.readouterr().err
    assert (result.run_dir / CALIBRATION).read_text() == before


# --- a tampered calibration.json (issue 29 point 8) ---------------------------------------------------

def _negate(value):
    if isinstance(value, dict):
        return {k: _negate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_negate(v) for v in value]
    return -value if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def test_a_tampered_calibration_is_refused_naming_the_file(trained, tmp_path, capsys):
    result, category, _ = trained
    copy = _copy(result, tmp_path)
    path = copy / CALIBRATION
    mkdlib.Detector.from_run(copy, device="cpu")  # the run's calibration, computed if not yet
    original = json.loads(path.read_text())
    assert len(original["sha256"]) == 64
    image = str(_a_test_image(category))

    path.write_text(json.dumps(_negate(original)))  # every value negated, valid JSON, the digest kept
    assert main(["predict", str(copy), image, "--out", str(tmp_path / "o"), "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "changed after mkdlib wrote it" in err and "delete it" in err
    assert len(err.strip().splitlines()) == 1

    older = _negate({k: v for k, v in original.items() if k != "sha256"})  # no digest: its ranges are checked
    path.write_text(json.dumps(older))
    with pytest.raises(RunError, match="calibration.json holds image.min = -.*delete it"):
        mkdlib.Detector.from_run(copy, device="cpu")
    edited = {**original, "image": {**original["image"], "threshold": original["image"]["threshold"] * 2}}
    path.write_text(json.dumps(edited))  # a plausible value, changed by hand: only the digest sees it
    with pytest.raises(RunError, match="changed after mkdlib wrote it"):
        mkdlib.Detector.from_run(copy, device="cpu")

    path.write_text(json.dumps({k: v for k, v in original.items() if k != "sha256"}))  # an older run's file
    assert mkdlib.Detector.from_run(copy, device="cpu").threshold.value == original["image"]["threshold"]
    path.unlink()  # what the message says to do: recomputed from the training images
    assert mkdlib.Detector.from_run(copy, device="cpu").threshold.value == pytest.approx(
        original["image"]["threshold"], rel=1e-6)


# --- mkd export: ONNX, checked with onnxruntime against the Detector -----------------------------------

RAW_RTOL = 1e-4  # docs/deployment.md: float32 convolutions summed in another order; measured ~5e-6


def _onnx_parity(run_dir, images, out):
    """(raw_score, pred_score) of the exported model and of the Detector on the same files, the model's span."""
    ort = pytest.importorskip("onnxruntime")
    detector = mkdlib.Detector.from_run(run_dir, device="cpu")
    ours = detector.predict(images)
    _, shown = load_images(images, detector.result.spec.dataset, detector.image_size)  # RGB in [0, 1], as resized
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    raw, pred = session.run(["raw_score", "pred_score"], {"images": shown.numpy()})
    sidecar = json.loads((out / "model.json").read_text())
    return ours, raw, pred, sidecar


def _assert_close(ours, raw, pred, span):
    raw_diff, pred_diff = np.abs(raw - ours.raw_score).max(), np.abs(pred - ours.pred_score).max()
    pred_tol = 0.5 * RAW_RTOL * np.abs(ours.raw_score).max() / span  # pred_score = 0.5 + 0.5 (raw - t) / span
    message = f"largest |difference|: raw_score {raw_diff:.2e}, pred_score {pred_diff:.2e}"
    assert np.all(np.abs(raw - ours.raw_score) <= RAW_RTOL * np.abs(ours.raw_score)), message
    assert pred_diff <= pred_tol, message


def test_export_onnx_scores_as_the_detector(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    result, category, _ = trained
    out = tmp_path / "exported"
    assert main(["export", str(result.run_dir), "--format", "onnx", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "model.onnx")
    images = sorted((category / "test").rglob("*.png"))
    ours, raw, pred, sidecar = _onnx_parity(result.run_dir, images, out)
    _assert_close(ours, raw, pred, sidecar["normalisation"]["span"])
    assert sidecar["input"]["shape"] == ["N", 3, 48, 48] and sidecar["input"]["range"] == [0.0, 1.0]
    assert sidecar["threshold"]["name"] == "default" and sidecar["run"]["key"] == result.run_dir.name
    assert sidecar["threshold"]["raw"] == read_calibration(result.run_dir)["image"]["threshold"]
    assert len(sidecar["cloner"]["sha256"]) == 64 and sidecar["opset"] == 17 and "maps" in sidecar
    assert sidecar["mkdlib_version"] == mkdlib.__version__ and sidecar["check"]["max_abs_diff_raw_score"] < 1e-4
    assert (out / ".mkdlib-output").is_file()  # replaced whole next time, like predict's folder


def test_export_puts_grey_and_imagenet_normalisation_inside_the_model(tmp_path):
    """A run trained on grey, ImageNet-normalised inputs: the model takes the colour images in [0, 1]."""
    pytest.importorskip("onnx")
    spec = RunSpec("synthetic", config={**CONFIG, "epochs": 1, "eval_every": 1, "checkpoint_every": 1},
                   data_root=str(tmp_path / "data"), weights=None,
                   dataset_options={**DATA, "grey": True, "imagenet_norm": True})
    result = run(spec, tmp_path / "runs", progress=False)
    category = next((tmp_path / "data").iterdir())
    from mkdlib.export import export_onnx

    model = export_onnx(result.run_dir)  # default: <run>/export
    assert model == result.run_dir / "export" / "model.onnx"
    images = sorted((category / "test").rglob("*.png"))[:6]
    ours, raw, pred, sidecar = _onnx_parity(result.run_dir, images, model.parent)
    assert sidecar["input"]["in_the_model"]["grey"] and sidecar["input"]["in_the_model"]["imagenet_normalisation"]
    _assert_close(ours, raw, pred, sidecar["normalisation"]["span"])
