"""experiment: cached runs, resume after SIGKILL, locking, maps without the blur, run_many through Dask."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import replace

import numpy as np
import pytest

import mkdlib.runs.runner as ex
from mkdlib import scoring
from mkdlib.calibration import ConstantMapsError
from mkdlib.config import Execution
from mkdlib.datasets.subset import subset_indices
from mkdlib.runs import evaluation, loading
from mkdlib.runs.executors import run_many
from mkdlib.runs.runner import run
from mkdlib.runs.spec import RunSpec
from mkdlib.runs.store import RunError, load_run

TINY_CONFIG = dict(image_size=32, epochs=4, eval_every=2, sample_last=2, checkpoint_every=2, batch_size=4,
                   deterministic=True)
TINY_DATA = dict(size=32, n_train=8, n_test_good=3, n_test_defect=3)


def tiny(tmp_path, **kw) -> RunSpec:
    fields = dict(config=TINY_CONFIG, data_root=str(tmp_path / "data"), weights=None, dataset_options=TINY_DATA)
    return RunSpec("synthetic", **{**fields, **kw})


def test_subset_keeps_both_classes_in_proportion():
    labels = np.array([0] * 20 + [1] * 80)
    idx = subset_indices(labels, 10)
    assert len(set(idx)) == 10 and labels[idx].sum() == 8
    assert list(subset_indices(labels, 10)) == list(idx)  # deterministic
    rare = np.array([0] * 99 + [1])
    assert rare[subset_indices(rare, 5)].sum() == 1  # at least one of each
    assert len(subset_indices(labels, 500)) == 100


def test_run_writes_its_directory_and_a_second_run_is_a_cache_hit(tmp_path, monkeypatch):
    spec = tiny(tmp_path, localization=("gradients",))
    result = run(spec, tmp_path / "runs", progress=False)
    assert result.ok and result.run_dir == tmp_path / "runs" / spec.key()
    for name in ("spec.json", "env.json", "history.csv", "metrics.json", "scores.csv", "checkpoints/last.pt",
                 "checkpoints/cloner_e0002.pt", "checkpoints/cloner_e0004.pt"):
        assert (result.run_dir / name).is_file(), name
    assert not list(result.run_dir.rglob("*.tmp"))  # atomic writes leave no temporary file
    m = result.metrics
    assert set(m["image_auroc"]) >= {"final", "final_epoch", "mean", "std", "per_epoch"}
    assert m["image_auroc"]["final_epoch"] == 4 and set(m["image_auroc"]["per_epoch"]) == {2, 4}
    assert 0 <= m["image_auroc"]["final"] <= 1 and m["n_train"] == 8 and m["n_test"] == 6
    assert set(m["pixel"]["gradients"]) == {"paper_pixel_auroc", "pixel_auroc", "au_pro"}
    assert set(m["timing_s"]) >= {"train", "evaluate", "localize"}
    assert "threshold" not in m and not (result.run_dir / "calibration.json").exists()  # predict's, when asked
    ran = Execution(checkpoint_every=2, deterministic=True).to_dict()  # TINY_CONFIG's, kept apart from the config
    assert m["execution"] == ran and json.loads((result.run_dir / "spec.json").read_text())["execution"] == ran
    assert "checkpoint_every" not in m["config"]
    env = json.loads((result.run_dir / "env.json").read_text())
    assert env["packages"]["torch"] and env["device"] == "cpu" and "git_commit" in env

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(ex, "fit", no_training)
    again = run(RunSpec.from_dict(spec.to_dict()), tmp_path / "runs", progress=False)
    assert again.metrics == result.metrics and load_run(result.run_dir).metrics == result.metrics


def test_subsets_and_missing_data(tmp_path):
    result = run(tiny(tmp_path, max_train=3, max_test=4), tmp_path / "runs", progress=False)
    assert result.metrics["n_train"] == 3 and result.metrics["n_test"] == 4
    assert 1 <= result.metrics["n_test_anomalous"] <= 3
    from mkdlib.datasets import DatasetNotFoundError

    with pytest.raises(DatasetNotFoundError):
        run(RunSpec("headct", data_root=str(tmp_path / "absent")), tmp_path / "runs", progress=False)
    assert len(list((tmp_path / "runs").iterdir())) == 1  # nothing written for the missing dataset


KILLED_RUN = """
import os, signal, sys, torch
torch.set_num_threads(1)
import mkdlib.runs.runner as ex
from mkdlib.train import fit

def killed_at_epoch_3(*args, **kwargs):
    kwargs["on_epoch_end"] = lambda done, cloner: os.kill(os.getpid(), signal.SIGKILL) if done == 3 else None
    return fit(*args, **kwargs)

ex.fit = killed_at_epoch_3
ex.run(ex.RunSpec.from_dict({spec}), sys.argv[1], progress=False)
"""


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_metrics(tmp_path):
    spec = tiny(tmp_path, config={**TINY_CONFIG, "epochs": 6, "sample_last": 4})
    reference = run(spec, tmp_path / "uninterrupted", progress=False)

    script = textwrap.dedent(KILLED_RUN).replace("{spec}", repr(spec.to_dict()))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "killed")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_dir = tmp_path / "killed" / spec.key()
    assert (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "metrics.json").exists()
    assert load_run(run_dir).error_type == "Unfinished"

    resumed = run(spec, tmp_path / "killed", progress=False)
    assert resumed.metrics["resumed_from_epoch"] == 2
    assert resumed.metrics["image_auroc"] == reference.metrics["image_auroc"]
    losses = lambda d: (d / "history.csv").read_text().splitlines()  # noqa: E731
    assert [r.split(",")[:2] for r in losses(run_dir)] == [r.split(",")[:2] for r in losses(reference.run_dir)]


def test_two_callers_of_one_run_train_it_once(tmp_path, monkeypatch):
    calls, real_fit = [], ex.fit

    def counted(*args, **kwargs):
        calls.append(1)
        time.sleep(0.5)  # the other caller reaches the lock meanwhile
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(ex, "fit", counted)
    spec, results = tiny(tmp_path), []
    threads = [threading.Thread(target=lambda: results.append(run(spec, tmp_path / "runs", progress=False)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and len(calls) == 1
    assert results[0].metrics == results[1].metrics


def test_an_unreadable_checkpoint_is_a_one_line_error(tmp_path):
    spec = tiny(tmp_path)
    run_dir = run(spec, tmp_path / "runs", progress=False).run_dir
    (run_dir / "metrics.json").unlink()
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"garbage")
    with pytest.raises(RunError, match="last.pt is unreadable") as err:
        run(spec, tmp_path / "runs", progress=False)
    assert "\n" not in str(err.value) and "the run restarts from scratch" in str(err.value)


def test_an_unreadable_last_pt_of_a_finished_run_costs_nothing_to_delete(tmp_path, monkeypatch):
    """A finished run needs last.pt only to train further: the advice says so, and deleting it recomputes nothing."""
    first = run(tiny(tmp_path), tmp_path / "runs", progress=False)
    last = first.run_dir / "checkpoints" / "last.pt"
    last.write_bytes(b"garbage")
    with pytest.raises(RunError, match="last.pt is unreadable") as err:
        ex.evaluate(first.run_dir)
    message = str(err.value)
    assert "nothing is recomputed: the run is finished" in message and "from scratch" not in message, message
    assert not (first.run_dir / "error.txt").exists()  # a finished run has not failed
    last.unlink()
    calls = _fit_calls(monkeypatch)
    assert ex.evaluate(first.run_dir).metrics["image_auroc"] == first.metrics["image_auroc"] and calls == []


def test_an_unreadable_final_cloner_says_what_deleting_it_costs(tmp_path):
    import shutil

    result = run(tiny(tmp_path), tmp_path / "runs", progress=False)
    (result.run_dir / "checkpoints" / "cloner_e0004.pt").write_bytes(b"garbage")
    with pytest.raises(RunError) as err:
        loading.load_model(result.run_dir)
    message = str(err.value)
    assert "cloner_e0004.pt is unreadable" in message and message.count("delete") == 1, message
    assert "only it is recomputed" in message, message
    record = tmp_path / "record" / result.run_dir.name  # a record without checkpoints/: cloner.pt is all it has
    shutil.copytree(result.run_dir, record, ignore=shutil.ignore_patterns("checkpoints"))
    metrics = json.loads((record / "metrics.json").read_text())
    del metrics["cloner_sha256"]  # as before records kept its digest: the file itself is read
    (record / "metrics.json").write_text(json.dumps(metrics))
    (record / "cloner.pt").write_bytes(b"garbage")
    with pytest.raises(RunError) as err:
        loading.load_model(record)
    message = str(err.value)
    assert "cloner.pt is unreadable" in message and "delete" not in message and "cannot be recomputed" in message


def test_an_edited_spec_json_is_said_not_to_match_its_key(tmp_path):
    result = run(tiny(tmp_path), tmp_path / "runs", progress=False)
    path = result.run_dir / "spec.json"
    d = json.loads(path.read_text())
    d["spec"]["seed"] = 5
    path.write_text(json.dumps(d))
    with pytest.raises(RunError) as err:
        load_run(result.run_dir)
    message = str(err.value)
    assert f"{path} does not match its key {result.run_dir.name}" in message, message
    assert "edited or belongs to another run" in message and "incompatible" not in message, message


def test_a_moved_run_without_its_weights_file_suggests_weights(tmp_path):
    import torch

    from mkdlib.models import vgg16_features

    weights = tmp_path / "vgg16_features.pth"
    torch.save(vgg16_features().state_dict(), weights)
    result = run(tiny(tmp_path, weights=str(weights)), tmp_path / "runs", progress=False)
    weights.rename(tmp_path / "elsewhere.pth")  # the run on another machine, its weights file elsewhere
    with pytest.raises(FileNotFoundError) as err:
        loading.load_model(result.run_dir)
    assert str(weights) in str(err.value) and "--weights FILE" in str(err.value), err.value
    loading.load_model(result.run_dir, weights=tmp_path / "elsewhere.pth")


def test_a_results_folder_that_is_a_file_is_said_to_be_one(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    with pytest.raises(ValueError, match=f"results folder {tmp_path / 'runs'} is a file"):
        run(tiny(tmp_path), tmp_path / "runs", progress=False)


def test_maps_with_and_without_the_gaussian_share_one_attribution(tmp_path, monkeypatch):
    calls, real = [], scoring.attribution_maps

    def counted(*args, **kwargs):
        calls.append(kwargs["method"])
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "attribution_maps", counted)
    spec = tiny(tmp_path, localization=("gradients-noblur", "gradients"))
    result = run(spec, tmp_path / "runs", progress=False)
    pixel = result.metrics["pixel"]
    assert calls == ["gradients"]  # 6 test images: one batch, one backward pass for both variants
    assert list(pixel) == ["gradients-noblur", "gradients"] and pixel["gradients"] != pixel["gradients-noblur"]
    assert all(0 <= v <= 1 for m in pixel.values() for v in m.values())
    _, cfg, source, cloner = loading.load_model(result.run_dir)
    test = loading.load_data(spec, cfg, split="test")
    assert scoring.pixel_metrics(source, cloner, cfg, test, ["gradients"]) == {"gradients": pixel["gradients"]}

    calls.clear()
    more = evaluation.add_localization(result.run_dir, ["guided-backprop", "gradients", "guided-backprop-noblur"],
                               progress=False)
    assert calls == ["guided-backprop"]  # "gradients" is already in metrics.json
    assert set(more.metrics["pixel"]) == {"gradients", "gradients-noblur", "guided-backprop",
                                          "guided-backprop-noblur"}
    with pytest.raises(ValueError, match="gradients-noblur"):
        evaluation.add_localization(result.run_dir, ["gradient-noblur"], progress=False)


def test_run_many_in_process_reports_failures_and_keeps_going(tmp_path):
    bad = RunSpec("headct", data_root=str(tmp_path / "absent"))
    good = tiny(tmp_path)
    results = run_many([bad, good, good], tmp_path / "runs", progress=False)
    assert [r.ok for r in results] == [False, True, True]
    assert results[0].error_type == "DatasetNotFoundError" and "absent" in results[0].error
    assert results[1] is results[2]


def test_run_many_through_a_dask_cluster(tmp_path):
    distributed = pytest.importorskip("distributed")
    specs = [tiny(tmp_path, seed=0), tiny(tmp_path, seed=1), RunSpec("headct", data_root=str(tmp_path / "no"))]
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        results = run_many(specs, tmp_path / "runs", executor=client.get_executor(), progress=False)
    assert [r.ok for r in results] == [True, True, False]
    assert [r.spec for r in results] == specs and results[2].error_type == "DatasetNotFoundError"
    assert results[0].run_dir != results[1].run_dir
    again = run_many(specs[:2], tmp_path / "runs", progress=False)  # cached, in process
    assert [r.metrics for r in again] == [r.metrics for r in results[:2]]


# --- damaged runs are mended by recomputing only what is missing (issue 11, point 7) -------------------

def _fit_calls(monkeypatch) -> list:
    calls, real = [], ex.restore_cloners.__globals__["fit"]

    def counted(*args, **kwargs):
        calls.append(args[3].epochs)
        return real(*args, **kwargs)

    monkeypatch.setitem(ex.restore_cloners.__globals__, "fit", counted)
    monkeypatch.setattr(ex, "fit", counted)
    return calls


def test_a_deleted_sampled_cloner_is_retrained_not_looped_on(tmp_path, monkeypatch):
    spec = tiny(tmp_path)
    first = run(spec, tmp_path / "runs", progress=False)
    ckpt = first.run_dir / "checkpoints"
    original = (ckpt / "cloner_e0002.pt").read_bytes()
    (ckpt / "cloner_e0002.pt").unlink()
    (first.run_dir / "metrics.json").unlink()  # the state the advice "delete it" left: no metrics
    calls = _fit_calls(monkeypatch)
    again = run(spec, tmp_path / "runs", progress=False)
    assert calls[0] == 2  # retrained to epoch 2 only, then the main fit found the run complete
    assert again.metrics["image_auroc"] == first.metrics["image_auroc"]  # deterministic: the same cloner
    import torch
    a = torch.load(ckpt / "cloner_e0002.pt", weights_only=True)["cloner"]
    b = torch.load(__import__("io").BytesIO(original), weights_only=True)["cloner"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (ckpt / "recover").exists()


def test_a_deleted_final_cloner_of_a_finished_run_is_restored_from_last(tmp_path, monkeypatch):
    spec = tiny(tmp_path)
    first = run(spec, tmp_path / "runs", progress=False)
    final = first.run_dir / "checkpoints" / "cloner_e0004.pt"
    final.unlink()
    loading.load_model(first.run_dir)  # the record's own copy (cloner.pt) serves
    (first.run_dir / "cloner.pt").rename(tmp_path / "kept.pt")
    with pytest.raises(RunError, match="mkd evaluate"):  # what predict says without either
        loading.load_model(first.run_dir)
    (tmp_path / "kept.pt").rename(first.run_dir / "cloner.pt")
    calls = _fit_calls(monkeypatch)
    again = run(spec, tmp_path / "runs", progress=False)  # not "cached" with a lost cloner
    assert final.is_file() and again.metrics == first.metrics
    assert calls == []  # taken from last.pt (the final state): nothing trained, the metrics kept
    loading.load_model(first.run_dir)  # usable again


def test_corrupt_metrics_are_re_evaluated_and_kept_aside(tmp_path):
    spec = tiny(tmp_path)
    first = run(spec, tmp_path / "runs", progress=False)
    (first.run_dir / "metrics.json").write_text("{not json")
    with pytest.raises(RunError) as err:
        load_run(first.run_dir)
    assert "mkd evaluate" in str(err.value) and "nothing is deleted" in str(err.value)
    again = ex.evaluate(first.run_dir)
    assert again.metrics["image_auroc"] == first.metrics["image_auroc"]
    assert len(list(first.run_dir.glob("metrics.json.corrupt-*"))) == 1
    assert (first.run_dir / "checkpoints" / "last.pt").is_file()


def test_localization_is_added_to_a_finished_run_without_training(tmp_path, monkeypatch):
    spec = tiny(tmp_path)
    first = run(spec, tmp_path / "runs", progress=False)
    monkeypatch.setattr(ex, "fit", lambda *a, **k: (_ for _ in ()).throw(AssertionError("retrained")))
    more = run(tiny(tmp_path, localization=("gradients",)), tmp_path / "runs", progress=False)
    assert more.run_dir == first.run_dir and set(more.metrics["pixel"]) == {"gradients"}


def test_a_waiting_evaluate_reuses_the_maps_the_first_one_stored(tmp_path, monkeypatch):
    spec = tiny(tmp_path, localization=("gradients",))
    done = run(spec, tmp_path / "runs", progress=False)
    stale = ex.RunResult(done.spec, done.run_dir, {**done.metrics, "pixel": {}})
    views = iter([stale])  # the first look predates the other process's write; later looks see it
    real_load = evaluation.load_run
    monkeypatch.setattr(evaluation, "load_run", lambda d: next(views, None) or real_load(d))
    monkeypatch.setattr(evaluation, "pixel_metrics", lambda *a, **k: (_ for _ in ()).throw(AssertionError("recomputed")))
    assert evaluation.add_localization(done.run_dir, ["gradients"]).metrics["pixel"] == done.metrics["pixel"]


# --- everything is checked before a file is written (issue 11, points 8 and 12) ----------------------

@pytest.mark.parametrize("config, words", [
    ({"epochs": True}, "epochs must be an integer"), ({"epochs": 2.5}, "epochs must be an integer"),
    ({"batch_size": "abc"}, "batch_size must be an integer"), ({"sample_last": -5}, "sample_last"),
    ({"image_size": 16}, "image_size must be an integer >= 32"), ({"lr": float("nan")}, "lr"),
    ({"lr": 0}, "lr must be a finite number > 0"), ({"amp": "yes"}, "amp must be true or false"),
])
def test_bad_configuration_is_refused_before_any_file(tmp_path, config, words):
    with pytest.raises(ValueError, match=words):
        run(tiny(tmp_path, config={**TINY_CONFIG, **config}), tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_unavailable_device_unknown_option_bad_weights_leave_no_run_directory(tmp_path):
    import torch
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available here"):
            run(tiny(tmp_path), tmp_path / "runs", device="cuda", progress=False)
    with pytest.raises(ValueError, match="bogus"):
        run(tiny(tmp_path, dataset_options={**TINY_DATA, "bogus": 1}), tmp_path / "runs", progress=False)
    (tmp_path / "not-weights.pth").write_text("hello")
    with pytest.raises(ValueError, match="not-weights.pth"):
        run(tiny(tmp_path, weights=str(tmp_path / "not-weights.pth")), tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_spec_json_is_strict_json(tmp_path):
    with pytest.raises(ValueError, match="NaN|finite"):
        RunSpec("synthetic", dataset_options={"noise": float("nan")})
    result = run(tiny(tmp_path), tmp_path / "runs", progress=False)
    json.loads((result.run_dir / "spec.json").read_text(), parse_constant=lambda c: pytest.fail(c))


def test_localization_without_masks_says_so(tmp_path):
    from PIL import Image
    for sub, n in (("normal", 6), ("abnormal", 2)):
        (tmp_path / "folder" / sub).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (32, 32), (i * 20, 0, 0)).save(tmp_path / "folder" / sub / f"{i}.png")
    spec = RunSpec("folder", config=TINY_CONFIG, data_root=str(tmp_path / "folder"), weights=None,
                   localization=("gradients",))
    with pytest.raises(ValueError, match="needs ground-truth masks"):
        run(spec, tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists()


def test_a_run_recorded_before_a_config_field_existed_resumes(tmp_path):
    spec = tiny(tmp_path, config={**TINY_CONFIG, "epochs": 2, "sample_last": 0})
    first = run(spec, tmp_path / "runs", progress=False)
    path = first.run_dir / "spec.json"
    d = json.loads(path.read_text())
    del d["config"]["warmup_epochs"]  # as an older mkdlib wrote it
    path.write_text(json.dumps(d))
    (first.run_dir / "metrics.json").unlink()
    assert run(spec, tmp_path / "runs", progress=False).metrics["image_auroc"] == first.metrics["image_auroc"]


def test_constant_maps_do_not_lose_the_trained_run(tmp_path, monkeypatch):
    """Maps without a scale stop predict with a message, not the run: training computes no map scale."""
    from mkdlib import decisions
    from mkdlib.predict import predict

    def constant(*args, **kwargs):
        raise ConstantMapsError("the gradients maps of the training images are constant")

    monkeypatch.setattr(decisions, "map_calibration", constant)
    result = run(tiny(tmp_path), tmp_path / "runs", progress=False)
    assert result.ok
    with pytest.raises(ConstantMapsError, match="constant"):
        predict(result.run_dir, [next((tmp_path / "data").iterdir()) / "test" / "good"], tmp_path / "out",
                progress=False)
    assert load_run(result.run_dir).ok


def test_a_long_run_prints_its_estimated_time_first(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ex, "LONG_RUN_PASSES", 1)
    run(tiny(tmp_path), tmp_path / "runs", progress=True)
    assert "4 epochs x 8 images = 32 image passes: under a minute at" in capsys.readouterr().err


def test_a_finished_bf16_run_is_read_on_a_cpu_without_bf16(tmp_path, monkeypatch):
    """bf16 is refused only where something would be computed in it, not when a finished run is read."""
    from mkdlib import hardware

    spec = replace(tiny(tmp_path), config={**tiny(tmp_path).config, "bf16_inference": True})
    monkeypatch.setattr(hardware, "native_bf16", lambda: True)
    first = run(spec, tmp_path / "runs", progress=False)
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)
    assert run(spec, tmp_path / "runs", progress=False).metrics == first.metrics
    with pytest.raises(ValueError, match="bf16_inference: this CPU .* does not compute bf16 natively"):
        run(spec, tmp_path / "other", progress=False)


def test_a_record_keeps_its_final_cloner_and_works_without_checkpoints(tmp_path):
    """cloner.pt beside the record (a state dict, its SHA-256 in metrics.json): a committed record without
    checkpoints/ still scores new images; a changed file is refused, naming it."""
    import shutil

    import torch

    from mkdlib.predict import predict
    from mkdlib.runs.loading import load_model

    result = run(tiny(tmp_path), tmp_path / "runs", progress=False)
    state = torch.load(result.run_dir / "cloner.pt", weights_only=True)
    final = torch.load(result.run_dir / "checkpoints" / "cloner_e0004.pt", weights_only=True)["cloner"]
    assert state.keys() == final.keys() and all(torch.equal(state[k], final[k]) for k in state)
    assert len(result.metrics["cloner_sha256"]) == 64
    record = tmp_path / "record" / result.run_dir.name
    shutil.copytree(result.run_dir, record, ignore=shutil.ignore_patterns("checkpoints"))
    images = [next((tmp_path / "data").iterdir()) / "test" / "good"]
    ours = predict(record, images, tmp_path / "a", heatmaps=False, progress=False)
    theirs = predict(result.run_dir, images, tmp_path / "b", heatmaps=False, progress=False)
    assert ours["raw_score"].tolist() == theirs["raw_score"].tolist()
    state["net.body.0.weight"] += 1
    torch.save(state, record / "cloner.pt")
    with pytest.raises(RunError, match="cloner.pt has sha256 .* not the"):
        load_model(record)
