"""cli: `mkd` / `python -m mkdlib` subcommands, delegation, and one-line errors."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from mkdlib import cli
from mkdlib.cli import main

TRAIN = ["train", "--dataset", "synthetic", "--weights", "none", "--quiet",
         "--config", "image_size=32", "--config", "epochs=2", "--config", "eval_every=1",
         "--config", "sample_last=1", "--config", "batch_size=4", "--device", "cpu",
         "--option", "size=32", "--option", "n_train=4", "--option", "n_test_good=2",
         "--option", "n_test_defect=3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    args = TRAIN + ["--data-root", str(tmp / "data"), "--results", str(tmp / "runs")]
    return tmp, args


def _train(trained, capsys):
    tmp, args = trained
    assert main(args) == 0
    out, err = capsys.readouterr()
    return tmp, out.strip(), err


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    for command in ("train", "evaluate", "predict", "calibrate", "export", "regenerate"):
        assert command in out
    for command in ("train", "evaluate", "predict", "calibrate", "export"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "usage: mkd " + command in capsys.readouterr().out


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "mkdlib", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "regenerate" in proc.stdout


def test_cli_names_match_the_library():
    from mkdlib.datasets import DATASET_NAMES
    from mkdlib.localization import localization_variants
    from mkdlib.localization import METHODS

    from mkdlib import cli_parser

    assert cli_parser.METHODS == METHODS and cli_parser.DATASETS == DATASET_NAMES
    assert cli_parser.VARIANTS == localization_variants()


def test_train_prints_the_run_directory_and_caches(trained, capsys):
    tmp, run_dir, err = _train(trained, capsys)
    assert run_dir.startswith(str(tmp / "runs"))
    assert (tmp / "runs" / run_dir.split("/")[-1] / "metrics.json").is_file()
    assert "image AUROC" in err
    assert _train(trained, capsys)[1] == run_dir  # second call: same directory, cached


def test_evaluate_adds_localization_metrics(trained, capsys):
    _, run_dir, _ = _train(trained, capsys)
    assert main(["evaluate", run_dir, "--localization", "gradients", "--quiet", "--device", "cpu"]) == 0
    assert "gradients: paper pixel AUROC" in capsys.readouterr().out
    metrics = json.loads(open(f"{run_dir}/metrics.json").read())
    assert set(metrics["pixel"]["gradients"]) == {"paper_pixel_auroc", "pixel_auroc", "au_pro"}
    assert main(["evaluate", run_dir, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pixel"] == metrics["pixel"]


def test_predict_writes_csv_and_pngs(trained, capsys):
    tmp, run_dir, _ = _train(trained, capsys)
    images = next((tmp / "data").iterdir()) / "test"
    out = tmp / "pred"
    assert main(["predict", run_dir, str(images / "good"), str(images / "spot"), "--out", str(out),
                 "--threshold", "0", "--quiet", "--device", "cpu"]) == 0
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0] == "path,pred_score,raw_score,threshold,pred_label,anomaly_map,error" and len(lines) == 1 + 3
    assert all(",True," in line and line.endswith(",") for line in lines[1:])  # all flagged, none unreadable
    assert len(list((out / "heatmaps").glob("*.png"))) == 3


def test_user_errors_are_one_line(trained, capsys, tmp_path):
    _, run_dir, _ = _train(trained, capsys)
    cases = [
        (["train", "--dataset", "imagenet"], "valid: ['mnist'"),
        (["train", "--dataset", "mnist", "--class", "12"], "0..9"),
        (["train", "--dataset", "mvtec", "--class", "lether", "--data-root", str(tmp_path)], "'leather'"),
        (["evaluate", str(tmp_path)], "not an mkdlib run directory"),
        (["predict", run_dir, str(tmp_path / "none.png"), "--out", str(tmp_path)], "none.png"),
        (["train", "--dataset", "synthetic", "--config", "epochs=true"], "epochs must be an integer"),
        (["train", "--dataset", "synthetic", "--option", "bogus=1", "--data-root", str(tmp_path)], "bogus"),
        (["train", "--dataset", "synthetic", "--device", "cuda:7", "--data-root", str(tmp_path)], "cuda:7"),
        (["predict", run_dir, str(next((trained[0] / "data").iterdir()) / "test" / "good"), "--out",
          str(tmp_path / "p"), "--weights", str(tmp_path / "w.pth")], "w.pth"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    with pytest.raises(SystemExit):
        main(["evaluate", run_dir, "--localization", "grad"])  # argparse lists the choices
    assert "guided-backprop" in capsys.readouterr().err

    tmp, _ = trained
    good = next((tmp / "data").iterdir()) / "test" / "good"
    final = sorted((tmp_path.parent / run_dir).glob("checkpoints/cloner_e*.pt"))[-1]
    saved = final.read_bytes()
    try:
        final.write_bytes(b"corrupt")
        assert main(["predict", run_dir, str(good), "--out", str(tmp_path / "o")]) == 2
    finally:
        final.write_bytes(saved)
    err = capsys.readouterr().err
    assert final.name in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_evaluate_re_evaluates_a_corrupt_metrics_file(trained, capsys):
    _, run_dir, _ = _train(trained, capsys)
    metrics = Path(run_dir) / "metrics.json"
    saved = metrics.read_text()
    metrics.write_text("{")
    assert main(["evaluate", run_dir, "--json", "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["image_auroc"] == json.loads(saved)["image_auroc"]
    for aside in Path(run_dir).glob("metrics.json.corrupt-*"):
        aside.unlink()


def test_demo_and_regenerate_are_delegated(monkeypatch):
    seen = {}
    import mkdlib.demo

    monkeypatch.setattr(mkdlib.demo, "main", lambda argv: seen.setdefault("demo", argv) and 0)
    assert main(["demo", "--out", "d", "--help"]) == 0 and seen["demo"] == ["--out", "d", "--help"]
    fake = types.ModuleType("mkdlib.paper.regenerate")
    fake.main = lambda argv: seen.setdefault("regenerate", argv) and 0
    monkeypatch.setitem(sys.modules, "mkdlib.paper.regenerate", fake)
    assert main(["regenerate", "--items", "table1"]) == 0 and seen["regenerate"] == ["--items", "table1"]


def test_train_help_names_every_folder_option(capsys):
    from mkdlib.datasets import dataset_options, describe_options

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(name in text for name in dataset_options("folder"))  # the static help cannot drift from the code
    assert "abnormal_dir='abnormal'" in describe_options("folder")


def test_evaluate_figures_removes_what_a_killed_one_left(trained, capsys, tmp_path):
    """`mkd evaluate --figures` writes through mkdlib.outputs, as predict does: a killed process's temporary
    folder beside --out is removed (issue 29, point 12)."""
    _, run_dir, _ = _train(trained, capsys)
    dead = tmp_path / ".figs.tmp-999999999-abc"  # a pid no process has
    dead.mkdir()
    (dead / "half.png").write_bytes(b"half written")
    assert main(["evaluate", run_dir, "--figures", "--out", str(tmp_path / "figs"), "--quiet", "--device", "cpu"]) == 0
    assert not dead.exists() and (tmp_path / "figs" / ".mkdlib-output").is_file()


def test_train_with_the_fast_profile_says_where_it_stands_in_for_paper(trained, capsys):
    from mkdlib.config import profile_of

    tmp, args = trained
    assert main(args + ["--profile", "fast", "--config", "warmup_epochs=1"]) == 0  # a tiny run of the fast schedule
    err = capsys.readouterr().err
    assert err.startswith(f"fast: {profile_of('fast').guidance}") and "points" in profile_of("fast").guidance
