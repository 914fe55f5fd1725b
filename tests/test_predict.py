"""predict: scores, decisions and figures for new images from a finished run; the run's calibration
(fixed map scale, normalised scores) and the metrics at its threshold (mkd evaluate)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mkdlib.calibration import CALIBRATION
from mkdlib.cli import main
from mkdlib.decisions import add_threshold_metrics, read_calibration
from mkdlib.predict import evaluation_figures, image_files, predict
from mkdlib.runs.runner import run
from mkdlib.runs.spec import RunSpec
from mkdlib.runs.store import load_run

DATA = dict(size=48, n_train=12, n_test_good=6, n_test_defect=6)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A short real training on the synthetic set (random source: no weights file needed)."""
    tmp = tmp_path_factory.mktemp("predict")
    spec = RunSpec("synthetic", config=dict(image_size=48, epochs=15, eval_every=15, sample_last=1,
                                            checkpoint_every=15, batch_size=12),
                   data_root=str(tmp / "data"), weights=None, dataset_options=DATA)
    result = run(spec, tmp / "runs", progress=False)
    category = next((tmp / "data").iterdir())
    return result, category


def test_predict_flags_defects_above_the_threshold(trained, tmp_path):
    result, category = trained
    table = predict(result.run_dir, [category / "test"/ d for d in ("good", "scratch", "spot", "crack")],
                    tmp_path / "out", progress=False)
    written = pd.read_csv(tmp_path / "out" / "predictions.csv")
    assert list(written.columns) == ["path", "pred_score", "raw_score", "threshold", "pred_label", "anomaly_map",
                                     "error"]
    assert len(written) == 12 and (written["threshold"] == 0.5).all()
    assert written["pred_label"].tolist() == table["pred_label"].tolist() == (written["pred_score"] > 0.5).tolist()
    threshold = read_calibration(result.run_dir)["image"]["threshold"]  # computed by this first predict
    assert written["pred_label"].tolist() == (written["raw_score"] > threshold).tolist()
    assert written["pred_score"].between(0, 1).all()
    for name in written["anomaly_map"]:
        with Image.open(tmp_path / "out" / name) as im:
            assert im.format == "PNG" and im.width > im.height >= 48  # image | overlay, side by side
    defect = ~written["path"].str.contains("/good/")
    assert written.loc[defect, "pred_label"].mean() > written.loc[~defect, "pred_label"].mean()
    assert written.loc[defect, "pred_label"].mean() >= 0.5

    high = predict(result.run_dir, [category / "test" / "good"], tmp_path / "high", threshold=1e9,
                   heatmaps=False, progress=False)
    assert not high["pred_label"].any() and "anomaly_map" not in high
    assert not (tmp_path / "high" / "heatmaps").exists()


def test_bad_inputs(trained, tmp_path):
    result, category = trained
    with pytest.raises(FileNotFoundError, match="no-such.png"):
        image_files([category / "no-such.png"])
    with pytest.raises(ValueError, match="guided-backprop"):
        predict(result.run_dir, [category / "test" / "good"], tmp_path, method="grad", progress=False)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.png"):
        predict(result.run_dir, [tmp_path / "broken.png"], tmp_path / "out", progress=False)


def test_unreadable_images_are_listed_and_the_rest_scored(trained, tmp_path, capsys):
    result, category = trained
    good = sorted((category / "test" / "good").iterdir())[:2]
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    predict(result.run_dir, [good[0]], out, heatmaps=False, progress=False)  # an older prediction, marked ours
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "stale.png").write_bytes(b"from an older prediction")
    table = predict(result.run_dir, [good[0], bad, good[1]], out, progress=False)
    assert table["error"].tolist()[0] == "" and "broken.png" in table["error"].tolist()[1]
    assert table["pred_score"].notna().tolist() == [True, False, True]
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted(
        name.split("/")[-1] for name in table["anomaly_map"] if name)  # replaced whole: nothing stale
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left
    with pytest.raises(ValueError, match="none of the 1 images could be read"):
        predict(result.run_dir, [bad], tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()


def test_weights_of_another_digest_are_refused_and_weights_finds_them(tmp_path):
    import shutil

    import torch

    from mkdlib.runs.store import RunError
    from mkdlib.models import vgg16_features

    weights = tmp_path / "vgg.pth"
    torch.manual_seed(0)
    torch.save(vgg16_features().state_dict(), weights)
    spec = RunSpec("synthetic", config=dict(image_size=32, epochs=1, eval_every=1, sample_last=0, batch_size=4),
                   data_root=str(tmp_path / "data"), weights=str(weights),
                   dataset_options=dict(size=32, n_train=4, n_test_good=2, n_test_defect=2))
    result = run(spec, tmp_path / "runs", progress=False)
    images = next((tmp_path / "data").iterdir()) / "test" / "good"
    shutil.copy(weights, tmp_path / "moved.pth")
    torch.manual_seed(1)
    torch.save(vgg16_features().state_dict(), weights)  # another file at the recorded path
    with pytest.raises(RunError, match="sha256.*--weights"):
        predict(result.run_dir, [images], tmp_path / "out", progress=False)
    table = predict(result.run_dir, [images], tmp_path / "out", progress=False, weights=tmp_path / "moved.pth")
    assert table["pred_score"].notna().all()


def _good(table):
    return table["path"].str.contains("/good/")


def test_shared_scale_and_normalised_scores_separate_good_from_defective(trained, tmp_path):
    """The issue's acceptance test: one map scale per run, scores around 0.5, every output file."""
    result, category = trained
    table = predict(result.run_dir, [category / "test" / d for d in ("good", "scratch", "spot", "crack")],
                    tmp_path / "out", save_maps=True, progress=False)
    assert list(table.columns) == ["path", "pred_score", "raw_score", "threshold", "pred_label", "anomaly_map",
                                   "map", "error"]
    assert (result.run_dir / CALIBRATION).is_file() and (tmp_path / "out" / "predictions.csv").is_file()
    maps = [np.load(tmp_path / "out" / name) for name in table["map"]]
    assert all(m.shape == (48, 48) and m.dtype == np.float32 for m in maps)
    for name in table["anomaly_map"]:
        with Image.open(tmp_path / "out" / name) as im:
            assert im.format == "PNG" and im.width > im.height
    shown = np.array([np.clip(m, 0, 1).mean() for m in maps])  # as the figures draw them
    good = _good(table).to_numpy()
    assert shown[good].mean() < 0.8 * shown[~good].mean()
    # The threshold is the 99th percentile of the training images' scores; unseen good images score higher
    # than the ones the cloner was fit to, so one may lie above it (it did on the AVX2 kernels): the medians
    # are what a 15-epoch toy detector can be held to on every CPU.
    assert table.loc[good, "pred_score"].median() < 0.5 < table.loc[~good, "pred_score"].median()
    assert ((table["pred_score"] > 0.5) == table["pred_label"]).all()  # the decision is the normalised score at 0.5


def test_a_user_threshold_on_the_raw_score_is_0_5_on_the_normalised_one(trained, tmp_path):
    result, category = trained
    paths = [category / "test" / "good", category / "test" / "scratch"]
    table = predict(result.run_dir, paths, tmp_path / "a", heatmaps=False, progress=False)
    cut = float(table["raw_score"].median())
    moved = predict(result.run_dir, paths, tmp_path / "b", threshold=cut, heatmaps=False, progress=False)
    assert moved["pred_label"].tolist() == (table["raw_score"] > cut).tolist()
    assert moved["raw_score"].tolist() == table["raw_score"].tolist() and (moved["threshold"] == 0.5).all()


def _copy(result, tmp_path, checkpoints=True):
    """The run as training left it (no calibration.json, no metrics at the threshold), or as a committed
    record without its checkpoints."""
    copy = tmp_path / "runs" / result.run_dir.name
    shutil.copytree(result.run_dir, copy, ignore=None if checkpoints else shutil.ignore_patterns("checkpoints", "cloner.pt"))
    (copy / CALIBRATION).unlink(missing_ok=True)
    metrics = json.loads((copy / "metrics.json").read_text())
    metrics.pop("at_threshold", None)
    (copy / "metrics.json").write_text(json.dumps(metrics))
    return copy


def test_a_run_computes_its_calibration_when_first_needed_and_keeps_it(trained, tmp_path):
    """Training computes no threshold (issue 33): the first predict does, from the training images, and
    stores it once; the threshold is the 99th percentile of the final cloner's training scores."""
    from mkdlib.runs.loading import load_data, load_model
    from mkdlib.scoring import score, score_loss

    result, category = trained
    run = _copy(result, tmp_path)
    assert not (run / CALIBRATION).exists() and "threshold" not in result.metrics
    predict(run, [category / "test" / "good"], tmp_path / "out", progress=False)
    stored = read_calibration(run)
    _, cfg, source, cloner = load_model(run)
    train_scores = score(cloner, score_loss(cfg), load_data(result.spec, cfg, split="train"), source=source)
    assert stored["image"]["threshold"] == pytest.approx(np.percentile(train_scores, 99), rel=1e-5)
    assert stored["image"]["min"] == pytest.approx(train_scores.min(), rel=1e-5) and "gradients" in stored["maps"]
    written = (run / CALIBRATION).stat().st_mtime_ns
    predict(run, [category / "test" / "spot"], tmp_path / "out2", progress=False)
    assert (run / CALIBRATION).stat().st_mtime_ns == written  # kept, not recomputed
    assert not [p for p in run.iterdir() if p.name.startswith(".calibration")]  # written atomically


def test_a_calibration_without_the_training_images_says_where_to_run(trained, tmp_path, monkeypatch):
    from mkdlib import decisions
    from mkdlib.datasets import DatasetNotFoundError
    from mkdlib.runs.store import RunError

    def missing(*args, **kwargs):
        raise DatasetNotFoundError("synthetic data not found: expected /elsewhere")

    result, category = trained
    old = _copy(result, tmp_path)
    monkeypatch.setattr(decisions, "load_data", missing)
    with pytest.raises(RunError, match="calibration.json lacks.*/elsewhere.*copy calibration.json"):
        predict(old, [category / "test" / "good"], tmp_path / "out", progress=False)


def test_metrics_at_the_threshold_from_mkd_evaluate(trained, tmp_path, capsys):
    result, _ = trained
    run = _copy(result, tmp_path)
    assert main(["evaluate", str(run), "--quiet", "--device", "cpu"]) == 0
    assert "at the threshold, image: precision" in capsys.readouterr().out
    decisions = load_run(run).metrics["at_threshold"]
    image = decisions["image"]
    assert image["tp"] + image["fn"] == result.metrics["n_test_anomalous"]
    assert image["tp"] + image["fp"] + image["tn"] + image["fn"] == result.metrics["n_test"]
    assert 0 <= image["precision"] <= 1 and image["f1"] > 0.5
    assert decisions["threshold"] == read_calibration(run)["image"]["threshold"]
    pixel = decisions["pixel"]
    assert pixel["method"] == "gradients" and pixel["tp"] + pixel["fp"] + pixel["tn"] + pixel["fn"] == 12 * 48 * 48
    assert load_run(run).metrics["pixel"] == result.metrics["pixel"]  # the paper's metrics untouched

    record = _copy(result, tmp_path / "record", checkpoints=False)  # a record without its cloner or threshold
    assert "at_threshold" not in add_threshold_metrics(record).metrics
    assert main(["evaluate", str(record), "--quiet", "--device", "cpu"]) == 0
    assert "no metrics at a threshold" in capsys.readouterr().out
    shutil.copy(run / CALIBRATION, record / CALIBRATION)  # its calibration beside it: image level
    assert set(add_threshold_metrics(record).metrics["at_threshold"]) == {"threshold", "image"}


def test_evaluate_figures_one_png_per_test_image(trained, tmp_path, capsys):
    result, _ = trained
    old = _copy(result, tmp_path)
    folder = evaluation_figures(old, progress=False)
    assert folder == old / "figures" and len(list(folder.glob("*.png"))) == result.metrics["n_test"]
    assert main(["evaluate", str(old), "--figures", "--out", str(tmp_path / "figs"), "--quiet",
                 "--device", "cpu"]) == 0
    assert len(list((tmp_path / "figs").glob("*.png"))) == result.metrics["n_test"]
    assert main(["evaluate", str(old), "--out", str(tmp_path / "x")]) == 2
    assert "--figures" in capsys.readouterr().err


def test_a_run_trained_on_grey_images_scores_new_images_in_grey(tmp_path):
    """dataset_options grey=True: predict prepares a coloured file as training did, so it scores as the
    file's own grey copy does."""
    spec = RunSpec("synthetic", config=dict(image_size=48, epochs=1, eval_every=1, sample_last=1,
                                            checkpoint_every=1, batch_size=12),
                   data_root=str(tmp_path / "data"), weights=None, dataset_options={**DATA, "grey": True})
    result = run(spec, tmp_path / "runs", progress=False)
    coloured = sorted(next((tmp_path / "data").iterdir()).glob("test/scratch/*"))[0]
    grey_copy = tmp_path / "grey.png"
    Image.open(coloured).convert("L").convert("RGB").save(grey_copy)
    table = predict(result.run_dir, [coloured, grey_copy], tmp_path / "out", heatmaps=False, progress=False)
    assert table["raw_score"].iloc[0] == pytest.approx(table["raw_score"].iloc[1], rel=1e-6)


# --- --out never replaces what mkdlib did not write (issue 29, points 1 and 12) -------------------------

def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_out_refuses_the_input_folder_the_run_a_users_folder_and_a_file(trained, tmp_path, capsys):
    result, category = trained
    images = tmp_path / "images"
    shutil.copytree(category / "test" / "good", images)
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\section{Results}")
    (thesis / "notes.txt").write_text("my notes")
    results = tmp_path / "results"
    shutil.copytree(result.run_dir, results / "runs" / result.run_dir.name)
    csv = tmp_path / "scores.csv"
    csv.write_text("a,b\n1,2\n")
    cases = {images: "would replace", result.run_dir: "run directory", thesis: "did not write",
             results: "results folder", csv: "is a file", tmp_path: "would replace"}
    before = {p: _listing(p) if p.is_dir() else p.read_text() for p in cases}
    run_before = _listing(result.run_dir)
    for out, why in cases.items():
        assert main(["predict", str(result.run_dir), str(images), "--out", str(out), "--quiet",
                     "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert str(out) in err and why in err, err
        assert main(["evaluate", str(result.run_dir), "--figures", "--out", str(out), "--quiet"]) == 2
        assert str(out) in capsys.readouterr().err
    for p, listing in before.items():
        assert (_listing(p) if p.is_dir() else p.read_text()) == listing, p
    assert _listing(result.run_dir) == run_before
    assert main(["evaluate", str(result.run_dir), "--quiet"]) == 0  # the run is still a run


def test_out_replaces_its_own_folder_and_an_empty_one(trained, tmp_path):
    result, category = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    predict(result.run_dir, [category / "test" / "good"], empty, heatmaps=False, progress=False)
    assert (empty / ".mkdlib-output").is_file() and (empty / "predictions.csv").is_file()
    predict(result.run_dir, [category / "test" / "spot"], empty, heatmaps=False, progress=False)  # ours: replaced
    assert "/spot/" in pd.read_csv(empty / "predictions.csv")["path"].iloc[0]


def test_a_killed_predict_leaves_nothing_the_next_one_keeps(trained, tmp_path):
    result, category = trained
    dead = tmp_path / ".out.tmp-999999999-abc"  # a pid no process has
    dead.mkdir()
    (dead / "predictions.csv").write_text("half written")
    predict(result.run_dir, [category / "test" / "good"], tmp_path / "out", heatmaps=False, progress=False)
    assert not dead.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


# --- bad inputs of issue 29: non-square images, unreadable links, folders scanned recursively ------------

def test_non_square_images_are_said_once_per_predict(trained, tmp_path, monkeypatch):
    import warnings

    from mkdlib import predict as predict_module
    from mkdlib.datasets import AspectRatioWarning

    result, category = trained
    source = sorted((category / "test" / "good").iterdir())[0]
    for k in range(2):
        Image.open(source).resize((60, 48)).save(tmp_path / f"wide{k}.png")
    monkeypatch.setattr(predict_module, "CHUNK", 1)  # one call of load_images per chunk, one chunk per image
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        predict(result.run_dir, [tmp_path / "wide0.png", tmp_path / "wide1.png"], tmp_path / "out",
                heatmaps=False, progress=False)
    said = [str(w.message) for w in record if issubclass(w.category, AspectRatioWarning)]
    assert len(said) == 1 and "wide0.png is 60x48 px" in said[0] and "48x48" in said[0], said


def test_a_looping_or_broken_link_reaches_the_error_column(trained, tmp_path):
    result, category = trained
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(sorted((category / "test" / "good").iterdir())[0], images / "a.png")
    (images / "b_loop.png").symlink_to("b_loop.png")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    table = predict(result.run_dir, [images, tmp_path / "gone.png"], tmp_path / "out", heatmaps=False,
                    progress=False)
    assert [p.split("/")[-1] for p in table["path"]] == ["a.png", "b_loop.png", "gone.png"]
    assert table["pred_score"].notna().tolist() == [True, False, False]
    assert "b_loop.png" in table["error"][1] and "symbolic link" in table["error"][1]
    assert "gone.png" in table["error"][2]


def test_folders_are_scanned_recursively_skipping_hidden_and_mkdlib_outputs(tmp_path):
    from mkdlib.outputs import MARKER

    for name in ["z.png", "sub/a.jpg", "sub/deeper/b.PNG", "sub/.hidden.png", ".cache/c.png",
                 "old_prediction/heatmaps/0000_z.png", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "old_prediction" / MARKER).write_text("")  # an earlier `mkd predict --out` inside the input
    (tmp_path / "sub" / "link_to_top").symlink_to(tmp_path)  # a linked folder is not followed: no loop
    found = [p.relative_to(tmp_path).as_posix() for p in image_files([tmp_path])]
    assert found == ["sub/a.jpg", "sub/deeper/b.PNG", "z.png"]
    with pytest.raises(ValueError, match=rf"no images .* in {tmp_path / 'old_prediction'} or its subfolders"):
        image_files([tmp_path / "old_prediction"])
