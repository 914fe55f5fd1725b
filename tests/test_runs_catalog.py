"""runs.catalog / `mkd runs`: the table of a results folder's runs, its filters, --json and --rm; and runs.planning's plan."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from mkdlib.cli import RESULTS_ENV, main
from mkdlib.runs import planning
from mkdlib.runs.catalog import COLUMNS, list_runs
from mkdlib.runs.planning import plan
from mkdlib.runs.runner import run
from mkdlib.runs.spec import RunSpec
from mkdlib.runs.store import ERROR, SPEC, run_lock, write_spec
from tests.test_runs_runner import TINY_CONFIG, tiny

SMOKE_CONFIG = {**TINY_CONFIG, "epochs": 2, "eval_every": 1, "sample_last": 1, "checkpoint_every": 1}
CORRUPT = "deadbeefdeadbeef"


def _started(root: Path, spec: RunSpec, year: int) -> Path:
    """A run directory as run() leaves it before training (spec.json), dated `year`."""
    run_dir = root / spec.key()
    run_dir.mkdir(parents=True)
    write_spec(run_dir, spec, spec.mkd_config(), spec.execution_config())
    stamp = 1e9 + (year - 2001) * 3.2e7
    os.utime(run_dir / SPEC, (stamp, stamp))
    return run_dir


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Two real tiny runs (custom with maps, smoke) and, by hand: a paper run (CIFAR-10 cat) stopped at
    epoch 5, a failed run, a run with an unreadable last.pt, a corrupt spec.json and a folder that is no run."""
    tmp = tmp_path_factory.mktemp("catalog")
    root = tmp / "runs"
    keys = {"custom": run(tiny(tmp, localization=("gradients",)), root, progress=False).run_dir.name,
            "smoke": run(tiny(tmp, config=SMOKE_CONFIG, max_train=6), root, progress=False).run_dir.name}
    paper = _started(root, RunSpec("cifar10", "cat", data_root=str(tmp / "data")), 2020)
    (paper / "checkpoints").mkdir()
    torch.save({"epoch": 5}, paper / "checkpoints" / "last.pt")  # all trained_epochs reads of last.pt
    failed = _started(root, RunSpec("synthetic", config={"epochs": 2}, data_root=str(tmp / "data")), 2021)
    (failed / ERROR).write_text("Traceback ...\nValueError: boom\n")
    bad_ckpt = _started(root, RunSpec("synthetic", seed=1, data_root=str(tmp / "data")), 2022)
    (bad_ckpt / "checkpoints").mkdir()
    (bad_ckpt / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    (root / CORRUPT).mkdir()
    (root / CORRUPT / SPEC).write_text("{not json")
    (root / "notes").mkdir()
    keys.update(paper=paper.name, failed=failed.name, bad_ckpt=bad_ckpt.name, corrupt=CORRUPT)
    return root, keys


def _runs(capsys, *args):
    """(exit code, stdout, stderr) of `mkd runs ARGS`."""
    code = main(["runs", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_listing_has_each_runs_columns_and_values(results):
    root, keys = results
    rows = {r["key"]: r for r in list_runs(root)}
    assert set(rows) == set(keys.values())  # "notes" is not a run
    custom, smoke = rows[keys["custom"]], rows[keys["smoke"]]
    metrics = json.loads((root / keys["custom"] / "metrics.json").read_text())
    assert (custom["dataset"], custom["class"], custom["profile"], custom["epochs"], custom["status"]) == \
        ("synthetic", None, "custom", 4, "finished")
    img = metrics["image_auroc"]
    assert custom["image_auroc"] == {k: round(100 * img[k], 2) for k in ("final", "mean", "std")}
    assert custom["pixel_auroc"] == {"method": "gradients",
                                     "auroc": round(100 * metrics["pixel"]["gradients"]["pixel_auroc"], 2)}
    assert (smoke["profile"], smoke["epochs"], smoke["status"], smoke["pixel_auroc"]) == ("smoke", 2, "finished", None)
    paper = rows[keys["paper"]]
    assert (paper["dataset"], paper["class"], paper["profile"], paper["status"], paper["image_auroc"]) == \
        ("cifar10", 3, "paper", "training 5/201", None)
    assert paper["created"].startswith("2020-") and not paper["locked"]
    assert (rows[keys["failed"]]["status"], rows[keys["failed"]]["profile"]) == ("failed", "smoke")
    bad_ckpt = rows[keys["bad_ckpt"]]
    assert bad_ckpt["status"] == "corrupt" and "last.pt is unreadable" in bad_ckpt["reason"]
    corrupt = rows[CORRUPT]
    assert corrupt["status"] == "corrupt" and str(root / CORRUPT / SPEC) in corrupt["reason"]
    order = [r["key"] for r in list_runs(root)]
    assert order[:3] == [keys["paper"], keys["failed"], keys["bad_ckpt"]]  # oldest first
    created = [r["created"] for r in list_runs(root) if r["key"] in (keys["custom"], keys["smoke"])]
    assert all(c[:4] >= "2024" for c in created)  # env.json's "written"


def test_the_text_table_names_columns_and_corrupt_folders(results, capsys, monkeypatch):
    root, keys = results
    monkeypatch.setenv(RESULTS_ENV, str(root))  # the default results folder, as for `mkd train`
    code, out, _ = _runs(capsys)
    assert code == 0
    header, *lines = out.splitlines()
    assert header.split() == " ".join(COLUMNS).split()
    custom = next(line for line in lines if line.startswith(keys["custom"]))
    assert "finished" in custom and "gradients " in custom and " +- " in custom
    assert f"corrupt {root / CORRUPT}: {root / CORRUPT / SPEC} is unreadable" in out


@pytest.mark.parametrize("args, expected", [
    (["--dataset", "cifar10"], {"paper"}),
    (["--dataset", "CIFAR-10", "--class", "cat"], {"paper"}),  # a dataset by alias, a class by name or index
    (["--class", "3"], {"paper"}),
    (["--status", "finished"], {"custom", "smoke"}),
    (["--status", "training"], {"paper"}),
    (["--status", "failed"], {"failed"}),
    (["--status", "corrupt"], {"bad_ckpt", "corrupt"}),
    (["--profile", "paper"], {"paper", "bad_ckpt"}),  # a corrupt last.pt still has a readable spec
    (["--profile", "smoke"], {"smoke", "failed"}),
    (["--profile", "custom", "--status", "finished"], {"custom"}),
    (["--dataset", "mnist"], set()),
    (["--class", "dog"], set()),
])
def test_each_filter_keeps_only_matching_runs(results, capsys, args, expected):
    root, keys = results
    code, out, _ = _runs(capsys, "--results", str(root), "--json", *args)
    assert code == 0
    assert {r["key"] for r in json.loads(out)} == {keys[name] for name in expected}


@pytest.mark.parametrize("args, message", [
    (["--status", "done"], "unknown status 'done'"),
    (["--profile", "quick"], "unknown profile 'quick'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--rm", CORRUPT, "--status", "failed"], "--rm takes run keys only"),
])
def test_bad_filters_are_one_line_errors(results, capsys, args, message):
    code, _, err = _runs(capsys, "--results", str(results[0]), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_missing_results_folder_is_named(tmp_path, capsys):
    code, _, err = _runs(capsys, "--results", str(tmp_path / "nope"))
    assert code == 2 and f"results folder {tmp_path / 'nope'} does not exist" in err
    (tmp_path / "file").write_text("not a folder")
    code, _, err = _runs(capsys, "--results", str(tmp_path / "file"))
    assert code == 2 and f"results folder {tmp_path / 'file'} is a file; pass --results DIR" in err
    train = ["train", "--dataset", "synthetic", "--weights", "none", "--data-root", str(tmp_path / "data")]
    assert main([*train, "--results", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert f"results folder {tmp_path / 'file'} is a file" in err and "Errno" not in err, err


@pytest.fixture
def copy(results, tmp_path):
    """A copy of the results folder that a test may remove runs from."""
    return shutil.copytree(results[0], tmp_path / "runs"), results[1]


def test_rm_removes_the_runs_named_and_says_so(copy, capsys):
    root, keys = copy
    code, out, _ = _runs(capsys, "--results", str(root), "--rm", keys["custom"], CORRUPT)
    assert code == 0
    assert out.splitlines() == [f"removed {root / keys['custom']}", f"removed {root / CORRUPT}"]
    assert not (root / keys["custom"]).exists() and not (root / CORRUPT).exists()
    assert {r["key"] for r in list_runs(root)} == {keys[k] for k in ("smoke", "paper", "failed", "bad_ckpt")}


def test_a_metrics_json_with_a_broken_pixel_entry_is_listed_as_corrupt(copy):
    root, keys = copy
    path = root / keys["custom"] / "metrics.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pixel": {"gradients": {"au_pro": 0.5}}}))
    row = next(r for r in list_runs(root) if r["key"] == keys["custom"])
    assert row["status"] == "corrupt" and f"{path} lacks fields" in row["reason"] and "mkd evaluate" in row["reason"]


def test_an_empty_results_folder_says_so(tmp_path, capsys):
    assert _runs(capsys, "--results", str(tmp_path)) == (0, "", f"no runs in {tmp_path}\n")
    assert _runs(capsys, "--results", str(tmp_path), "--json") == (0, "[]\n", "")


@pytest.mark.parametrize("key", ["0000000000000000", "notes", "..", "../runs"])
def test_rm_refuses_an_unknown_key_and_removes_nothing(copy, capsys, key):
    root, keys = copy
    code, _, err = _runs(capsys, "--results", str(root), "--rm", keys["smoke"], key)
    assert code == 2 and f"no run {key!r} in results folder {root}" in err
    assert (root / keys["smoke"]).is_dir() and (root / "notes").is_dir()


def test_rm_refuses_a_run_another_holder_has_locked(copy, capsys):
    root, keys = copy
    with run_lock(root / keys["smoke"], quiet=True):
        code, out, _ = _runs(capsys, "--results", str(root), "--json", "--status", "locked")
        assert [(r["key"], r["status"]) for r in json.loads(out)] == [(keys["smoke"], "finished (locked)")]
        code, _, err = _runs(capsys, "--results", str(root), "--rm", keys["custom"], keys["smoke"])
        assert code == 2 and f"run {root / keys['smoke']} is in use by another process" in err
    assert (root / keys["smoke"]).is_dir() and (root / keys["custom"]).is_dir()  # nothing removed


def test_help_lists_the_columns_and_filters(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["runs", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0
    for word in (*COLUMNS, "--dataset", "--class", "--status", "--profile", "--json", "--rm", "--results",
                 "finished", "training e/N", "failed", "corrupt", "locked", "paper", "smoke", "custom"):
        assert word in text, word


def _speeds(monkeypatch, img_s: float) -> list:
    """measure_speed replaced by a fixed speed (the plan's text is then exact); returns its calls."""
    calls = []
    monkeypatch.setattr(planning, "measure_speed", lambda *a, **kw: calls.append(kw) or img_s)
    return calls


def test_plan_counts_distinct_runs_cached_passes_left_and_measures_once(results, copy, monkeypatch):
    root, data = copy[0], results[0].parent  # the specs' data_root is the fixture's data/
    finished = tiny(data, localization=("gradients",))
    resumed = tiny(data, config={**TINY_CONFIG, "lr": 0.003})
    (root / resumed.key() / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 3}, root / resumed.key() / "checkpoints" / "last.pt")  # 1 of its 4 epochs left
    absent = RunSpec("mnist", 0, data_root=str(data / "absent"), weights=None)
    specs = [finished, tiny(data), tiny(data, config={**TINY_CONFIG, "lr": 0.002}), resumed, absent]
    calls = _speeds(monkeypatch, 16.0)
    assert plan(specs, root) == (
        "4 runs: 1 finished (cached), 3 to train: ~40 image passes, under a minute on this CPU "
        "(measured 16 img/s; one run at a time); size unknown for 1 whose data was not found (mnist 0 seed 0)")
    assert len(calls) == 1  # one configuration (lr and the seed do not change a step's time)
    _speeds(monkeypatch, 0.01)  # 40 passes at 0.01 img/s: 4000 s
    assert "~40 image passes, about 1 h 7 min on this CPU (measured 0.01 img/s;" in plan(specs, root)
    calls = _speeds(monkeypatch, 16.0)
    larger = tiny(data, config={**TINY_CONFIG, "image_size": 48})  # another speed: measured apart
    assert "~72 image passes, under a minute on this CPU (measured 16 img/s at 32 px, small cloner / 16 img/s " \
           "at 48 px, small cloner; one run at a time)" in plan([*specs, larger], root)
    assert len(calls) == 2


def test_plan_of_finished_runs_measures_nothing(results, monkeypatch):
    root, data = results[0], results[0].parent
    calls = _speeds(monkeypatch, 16.0)
    specs = [tiny(data), tiny(data, localization=("gradients",)), tiny(data, config=SMOKE_CONFIG, max_train=6)]
    assert plan(specs, root) == "2 runs, all finished (cached): nothing to train"
    assert calls == []


# --- issue 29: failed runs, a finished run's unreadable last.pt, a read-only folder, the created time ----

def _nan_after_epoch_1(epoch: int, cloner) -> None:
    """on_epoch_end that leaves NaN weights after epoch 1: epoch 2's loss is not finite."""
    if epoch == 1:
        for p in cloner.parameters():
            p.data.fill_(float("nan"))


def test_a_run_that_fails_in_training_is_listed_failed_with_its_error(tmp_path, capsys, monkeypatch):
    """`mkd train` says the FloatingPointError in one line; the run keeps error.txt and is listed failed."""
    import mkdlib.runs.runner as runner

    real_fit = runner.fit
    monkeypatch.setattr(runner, "fit", lambda *a, **kw: real_fit(*a, **{**kw, "on_epoch_end": _nan_after_epoch_1}))
    spec, root = tiny(tmp_path), tmp_path / "runs"
    argv = ["train", "--dataset", "synthetic", "--weights", "none", "--quiet", "--device", "cpu",
            "--data-root", spec.data_root, "--results", str(root),
            *[a for k, v in TINY_CONFIG.items() for a in ("--config", f"{k}={json.dumps(v)}")],
            *[a for k, v in spec.dataset_options.items() for a in ("--option", f"{k}={v}")]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "non-finite training loss" in err and "epoch 2" in err, err
    run_dir = root / spec.key()
    assert (run_dir / ERROR).is_file()
    [row] = list_runs(root)
    assert row["status"] == "failed" and row["reason"].startswith("FloatingPointError: non-finite training loss")
    code, out, _ = _runs(capsys, "--results", str(root))
    assert f"failed {run_dir}: FloatingPointError: non-finite training loss" in out


def test_a_run_that_fails_after_training_is_listed_failed_with_its_error(tmp_path, monkeypatch):
    import mkdlib.runs.runner as runner
    from mkdlib.datasets import MaskSizeError

    def bad_mask(*args, **kwargs):
        raise MaskSizeError("mask ground_truth/crack/000_mask.png is 20x20 px but its image is 32x32 px")

    monkeypatch.setattr(runner, "pixel_metrics", bad_mask)
    spec, root = tiny(tmp_path, localization=("gradients",)), tmp_path / "runs"
    with pytest.raises(MaskSizeError):
        run(spec, root, progress=False)
    assert (root / spec.key() / ERROR).read_text().startswith("MaskSizeError: mask ground_truth/crack/000_mask.png")
    [row] = list_runs(root)
    assert (row["status"], row["reason"]) == ("failed", "MaskSizeError: mask ground_truth/crack/000_mask.png is "
                                                        "20x20 px but its image is 32x32 px")


def test_an_older_error_txt_gives_its_exception_line(results):
    root, keys = results  # the fixture's error.txt is a bare traceback
    row = next(r for r in list_runs(root) if r["key"] == keys["failed"])
    assert row["reason"] == "ValueError: boom"


def test_a_failed_run_training_again_is_listed_training(results):
    root, keys = results
    with run_lock(root / keys["failed"], quiet=True):
        row = next(r for r in list_runs(root) if r["key"] == keys["failed"])
        assert (row["status"], row["reason"]) == ("training 0/2 (locked)", None)
        assert keys["failed"] in {r["key"] for r in list_runs(root, status="training")}
        assert keys["failed"] not in {r["key"] for r in list_runs(root, status="failed")}


def test_a_finished_run_with_an_unreadable_last_pt_is_finished_with_a_note(copy, capsys):
    root, keys = copy
    last = root / keys["custom"] / "checkpoints" / "last.pt"
    last.write_bytes(b"not a checkpoint")
    row = next(r for r in list_runs(root) if r["key"] == keys["custom"])
    assert row["status"] == "finished (last.pt unreadable: only needed to train further)"
    assert row["image_auroc"] is not None and str(last) in row["reason"]
    assert "nothing is recomputed" in row["reason"] and "from scratch" not in row["reason"]
    assert keys["custom"] in {r["key"] for r in list_runs(root, status="finished")}
    _, out, _ = _runs(capsys, "--results", str(root))
    assert f"finished {root / keys['custom']}: checkpoint {last} is unreadable" in out


def _read_only(*args, **kwargs):
    raise OSError(errno.EROFS, "Read-only file system", "metrics.json")  # as rmtree's relative unlink says it


def test_rm_in_a_read_only_folder_names_it(copy, capsys, monkeypatch):
    from mkdlib.runs import catalog

    root, keys = copy
    monkeypatch.setattr(catalog.shutil, "rmtree", _read_only)
    code, _, err = _runs(capsys, "--results", str(root), "--rm", keys["smoke"])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{root / keys['smoke']}" in err and "Read-only file system" in err and "writable" in err, err


def test_rm_in_a_folder_chmod_read_only_removes_nothing(copy, capsys):
    root, keys = copy
    os.chmod(root, 0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("chmod does not stop this user (root) from writing")
        code, _, err = _runs(capsys, "--results", str(root), "--rm", keys["smoke"])
    finally:
        os.chmod(root, 0o755)
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(root) in err and "writable" in err, err
    assert (root / keys["smoke"] / "metrics.json").is_file()


def test_created_is_kept_when_a_run_is_resumed(tmp_path):
    """env.json is rewritten by every process that trains the run; its first time stays the run's created."""
    result = run(tiny(tmp_path), tmp_path / "runs", progress=False)
    env = result.run_dir / "env.json"
    first = {k: v for k, v in json.loads(env.read_text()).items() if k != "created"}  # as an older mkdlib wrote it
    env.write_text(json.dumps({**first, "written": "2020-01-02T03:04:05+0000"}))
    (result.run_dir / "metrics.json").unlink()  # evaluated again by the next process: env.json rewritten
    run(tiny(tmp_path), tmp_path / "runs", progress=False)
    assert json.loads(env.read_text())["written"][:4] != "2020"  # this process's environment
    assert json.loads(env.read_text())["created"] == "2020-01-02T03:04:05+0000"
    [row] = list_runs(tmp_path / "runs")
    assert row["created"] == "2020-01-02T03:04:05+00:00"
