"""predict: scores, decisions and heatmaps for new images from a finished run."""

import pandas as pd
import pytest
from PIL import Image

from mkdlib.experiment import RunSpec, run
from mkdlib.predict import image_files, predict

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
    assert list(written.columns) == ["path", "score", "threshold", "anomalous", "heatmap", "error"]
    assert len(written) == 12 and (written["threshold"] == result.metrics["threshold"]).all()
    assert written["anomalous"].tolist() == table["anomalous"].tolist()
    for name in written["heatmap"]:
        with Image.open(tmp_path / "out" / name) as im:
            assert im.format == "PNG" and im.width > im.height >= 48  # image | overlay, side by side
    defect = ~written["path"].str.contains("/good/")
    assert written.loc[defect, "anomalous"].mean() > written.loc[~defect, "anomalous"].mean()
    assert written.loc[defect, "anomalous"].mean() >= 0.5

    high = predict(result.run_dir, [category / "test" / "good"], tmp_path / "high", threshold=1e9,
                   heatmaps=False, progress=False)
    assert not high["anomalous"].any() and "heatmap" not in high
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
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "stale.png").write_bytes(b"from an older prediction")
    table = predict(result.run_dir, [good[0], bad, good[1]], out, progress=False)
    assert table["error"].tolist()[0] == "" and "broken.png" in table["error"].tolist()[1]
    assert table["score"].notna().tolist() == [True, False, True]
    assert "broken.png" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "heatmaps").iterdir()) == sorted(
        name.split("/")[-1] for name in table["heatmap"] if name)  # replaced whole: nothing stale
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary folder left
    with pytest.raises(ValueError, match="none of the 1 images could be read"):
        predict(result.run_dir, [bad], tmp_path / "out2", progress=False)
    assert not (tmp_path / "out2").exists()


def test_weights_of_another_digest_are_refused_and_weights_finds_them(tmp_path):
    import shutil

    import torch

    from mkdlib.experiment import RunError
    from mkdlib.models import _vgg16_features

    weights = tmp_path / "vgg.pth"
    torch.manual_seed(0)
    torch.save(_vgg16_features().state_dict(), weights)
    spec = RunSpec("synthetic", config=dict(image_size=32, epochs=1, eval_every=1, sample_last=0, batch_size=4),
                   data_root=str(tmp_path / "data"), weights=str(weights),
                   dataset_options=dict(size=32, n_train=4, n_test_good=2, n_test_defect=2))
    result = run(spec, tmp_path / "runs", progress=False)
    images = next((tmp_path / "data").iterdir()) / "test" / "good"
    shutil.copy(weights, tmp_path / "moved.pth")
    torch.manual_seed(1)
    torch.save(_vgg16_features().state_dict(), weights)  # another file at the recorded path
    with pytest.raises(RunError, match="sha256.*--weights"):
        predict(result.run_dir, [images], tmp_path / "out", progress=False)
    table = predict(result.run_dir, [images], tmp_path / "out", progress=False, weights=tmp_path / "moved.pth")
    assert table["score"].notna().all()
