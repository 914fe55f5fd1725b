"""runs.store: the spec's key, validation, localisation variants, spec/metrics files, load_run, the lock."""

import json
import threading
import time

import pytest

from mkdlib.config import Execution
from mkdlib.localization import METHODS, NOBLUR_SUFFIX, localization_variants, parse_method
from mkdlib.runs.spec import RunSpec
from mkdlib.runs.store import (SPEC, RunError, environment, load_run, read_spec, run_lock, upgrade_root, write_json,
                               write_spec)

METRICS = {"image_auroc": {"final": 0.5, "per_epoch": {"2": 0.4, "4": 0.5}}, "threshold": 1.0, "pixel": {}}


def test_key_is_stable_and_canonical():
    assert RunSpec("mnist", 0).key() == "525a9b82cb562ca5"  # changing this orphans every cached run
    assert RunSpec("cifar10", "cat").key() == RunSpec("CIFAR-10", 3).key()
    assert RunSpec("mnist", 1, config={"lr": 1}).key() == RunSpec("mnist", 1, config={"lr": 1.0}).key()
    assert RunSpec("mnist", 1, seed=1).key() != RunSpec("mnist", 1).key()
    spec = RunSpec("mvtec", "leather", config={"epochs": 3}, localization=["gradients"], max_test=5)
    assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert len({spec, RunSpec.from_dict(spec.to_dict())}) == 1
    assert spec.mkd_config().epochs == 3 and spec.mkd_config().value_weight == 0.5


@pytest.mark.parametrize("kwargs, words", [
    (dict(dataset="imagenet"), ["unknown dataset", "mvtec", "synthetic"]),
    (dict(dataset="mnist", normal_class=12), ["0..9"]),
    (dict(dataset="mvtec"), ["normal_class", "leather"]),
    (dict(dataset="headct", normal_class=1), ["fixed normal class"]),
    (dict(dataset="mnist", normal_class=0, config={"epoch": 3}), ["unknown config field", "epochs"]),
    (dict(dataset="mnist", normal_class=0, config={"seed": 3}), ["RunSpec.seed"]),
    (dict(dataset="mnist", normal_class=0, config={"epochs": 0}), ["epochs must be an integer >= 1", "got 0"]),
    (dict(dataset="mvtec", normal_class="wood", localization=("gradient",)), ["gradients", "guided-backprop"]),
    (dict(dataset="mvtec", normal_class="wood", localization=("gradients-blur",)),
     ["gradients-noblur", "smoothgrad-reference-noblur"]),
])
def test_bad_specs_name_the_valid_values(kwargs, words):
    with pytest.raises(ValueError) as err:
        RunSpec(**kwargs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_every_method_has_a_variant_without_the_gaussian():
    names = localization_variants()
    assert names == METHODS + tuple(m + NOBLUR_SUFFIX for m in METHODS) and "guided-backprop-noblur" in names
    assert parse_method("gradients") == ("gradients", True)
    assert parse_method("smoothgrad-reference-noblur") == ("smoothgrad-reference", False)
    for bad in ("-noblur", "gradients-noblur-noblur", "noblur"):
        with pytest.raises(ValueError, match="valid"):
            parse_method(bad)
    spec = RunSpec("mvtec", "wood", localization=("gradients-noblur", "gradients", "gradients-noblur"))
    assert spec.localization == ("gradients-noblur", "gradients")
    # The maps are an evaluation of the trained run, not part of its identity (no retraining for them).
    assert spec.key() == RunSpec("mvtec", "wood", localization=("gradients",)).key() == RunSpec("mvtec", "wood").key()

    from mkdlib.paper.tabulation import supported  # what the paper items (Tables 1, 11) ask runs for

    assert all(supported(m) for m in names) and not supported("gradients-blur")


def _finished(tmp_path):
    spec = RunSpec("synthetic", config={"epochs": 4}, weights=None)
    run_dir = tmp_path / spec.key()
    run_dir.mkdir()
    write_spec(run_dir, spec, spec.mkd_config(), Execution())
    return spec, run_dir


def test_load_run_tells_unfinished_from_corrupt_and_incompatible(tmp_path):
    spec, run_dir = _finished(tmp_path)
    assert load_run(run_dir).error_type == "Unfinished" and load_run(run_dir).spec == spec
    write_json(run_dir / "metrics.json", METRICS)
    result = load_run(run_dir)
    assert result.ok and result.metrics["image_auroc"]["per_epoch"] == {2: 0.4, 4: 0.5}

    write_json(run_dir / "metrics.json", {"pixel": {}})
    with pytest.raises(RunError, match="lacks fields"):
        load_run(run_dir)
    (run_dir / "metrics.json").write_text("{ not json")
    with pytest.raises(RunError, match="corrupt"):
        load_run(run_dir)

    d = json.loads((run_dir / "spec.json").read_text())
    (run_dir / "spec.json").write_text(json.dumps({**d, "key": "0" * 16}))
    with pytest.raises(RunError, match="does not match its key"):
        load_run(run_dir)
    (run_dir / "spec.json").write_text(json.dumps({**d, "format": 0}))
    with pytest.raises(RunError, match="format 0"):
        load_run(run_dir)
    with pytest.raises(RunError, match="not an mkdlib run directory"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="does not exist"):
        load_run(tmp_path / "absent")


def test_a_run_directory_holds_one_spec_and_configuration(tmp_path):
    spec, run_dir = _finished(tmp_path)
    write_spec(run_dir, spec, spec.mkd_config(), Execution())  # the same run again: accepted
    with pytest.raises(RunError, match="different run"):
        write_spec(run_dir, RunSpec("synthetic", seed=1), spec.mkd_config(), Execution())
    with pytest.raises(RunError, match="another resolved configuration"):
        write_spec(run_dir, spec, RunSpec("synthetic", config={"epochs": 5}).mkd_config(), Execution())


def test_the_lock_makes_a_second_holder_wait(tmp_path):
    order = []

    def second():
        with run_lock(tmp_path, quiet=True):
            order.append("second")

    with run_lock(tmp_path, quiet=True):
        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.3)
        order.append("first done")
    waiter.join(timeout=10)
    assert order == ["first done", "second"]


def test_environment_names_versions_and_device():
    env = environment("cpu")
    assert env["packages"]["torch"] and env["device"] == "cpu" and "git_commit" in env and env["format"] == 1


def test_execution_settings_leave_the_key_alone():
    """Precision and layout are how a run is computed, not what: one key on every device."""
    base = RunSpec("mnist", 0)
    fast = RunSpec("mnist", 0, config={"amp": True, "channels_last": True, "checkpoint_every": 5})
    assert fast.key() == base.key() == "525a9b82cb562ca5"
    assert fast.key(legacy=True) != base.key(legacy=True) == base.key()


def test_upgrade_root_renames_legacy_keys_only(tmp_path):
    legacy = RunSpec("mnist", 0, config={"amp": True})
    old_dir = tmp_path / legacy.key(legacy=True)
    old_dir.mkdir()
    write_json(old_dir / SPEC, {"format": 1, "key": legacy.key(legacy=True), "mkdlib": "0.3",
                                "spec": legacy.to_dict(), "config": legacy.mkd_config().to_dict()})
    (old_dir / "metrics.json").write_text("{}")
    current = tmp_path / RunSpec("mnist", 1).key()
    current.mkdir()
    write_spec(current, RunSpec("mnist", 1), RunSpec("mnist", 1).mkd_config(), Execution())
    assert upgrade_root(tmp_path) == [(old_dir.name, legacy.key())]
    new_dir = tmp_path / legacy.key()
    assert (new_dir / "metrics.json").read_text() == "{}" and not old_dir.exists()
    assert read_spec(new_dir)[1]["key"] == legacy.key()
    assert upgrade_root(tmp_path) == [] and current.is_dir()  # idempotent; current keys untouched
