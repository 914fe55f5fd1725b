"""`mkd regenerate --train-only` and scripts/regenerate_gpu.sh: the notebooks' own run keys, built and run
without papermill; absent data skipped, not failed; one archive of run records; the script end to end on CPU."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from mkdlib.datasets import make_synthetic
from mkdlib.paper import notebook, regenerate, reproduce, reproduction, train_only
from mkdlib.paper.notebook import NOTEBOOKS
from mkdlib.runs.spec import RunResult, RunSpec
from mkdlib.weights import WEIGHTS_ENV

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "regenerate_gpu.sh"
TINY = {"n_train": 8, "n_test_good": 3, "n_test_defect": 3, "size": 64}


class _Trained(Exception):
    """Raised in place of training, with the specs reproduce was about to run."""


def _notebook_keys(name: str, **parameters) -> list[str]:
    """The run keys the notebook's one call (`reproduce`) trains, caught before anything runs."""
    def caught(specs, *args, **kwargs):
        raise _Trained([s.key() for s in specs])

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(reproduction, "_train", caught)
        try:
            reproduce(name, results_dir=REPO / "no-results-written", **parameters)
        except _Trained as trained:
            return trained.args[0]
    raise AssertionError(f"{name} trains nothing")


@pytest.mark.parametrize("name", [nb for nb in NOTEBOOKS if nb not in notebook.WALKTHROUGHS])
@pytest.mark.parametrize("parameters", [{"profile": "paper"}, {"profile": "smoke"},
                                        {"profile": "smoke", "classes": {"mvtec": ["bottle"]}, "seeds": [3]}])
def test_notebook_specs_are_the_notebooks_own(name, parameters, no_locations):
    """--train-only trains what the notebooks train; fast_vs_paper's notebook trains only the fast runs
    beside a finished paper run (here none in the paper profile), --train-only all of them."""
    options = {k: v for k, v in parameters.items() if k != "profile"}
    ours = [s.key() for specs in notebook.notebook_specs(name, parameters["profile"], **options).values()
            for s in specs]
    theirs = _notebook_keys(name, **parameters)
    assert set(theirs) <= set(ours) if name == "fast_vs_paper" else theirs == ours
    assert notebook.notebook_specs("00_quickstart", "smoke") == {}  # the demo has no cached runs


@pytest.fixture
def no_locations(monkeypatch):
    """$MKDLIB_DATA and $MKDLIB_VGG16_WEIGHTS unset, and restored after the test (main's --data-root and
    --weights set them in this process)."""
    for env in ("MKDLIB_DATA", WEIGHTS_ENV):
        monkeypatch.setenv(env, "")  # records the value to restore, even "unset"
        monkeypatch.delenv(env)


@pytest.fixture
def data(tmp_path) -> Path:
    """A data root ($MKDLIB_DATA layout) with one tiny MVTec AD category, leather (the smoke profile's row)."""
    root = tmp_path / "data"
    (root / "mvtec").mkdir(parents=True)
    shutil.copytree(make_synthetic(tmp_path / "synthetic", **TINY), root / "mvtec" / "leather")
    return root


def test_train_only_runs_the_notebook_keys_without_papermill(data, tmp_path, monkeypatch, capsys, no_locations):
    for module in ("papermill", "nbformat", "jupyter_client"):
        monkeypatch.setitem(sys.modules, module, None)  # as on a GPU machine without Jupyter
    runs, log, archive = tmp_path / "runs", tmp_path / "train.log", tmp_path / "runs.tar.gz"
    argv = ["--train-only", "--profile", "smoke", "--device", "cpu", "--only", "table3", "table5",
            "--data-root", str(data), "--runs-dir", str(runs), "--log", str(log), "--archive", str(archive)]
    assert regenerate.main(argv) == 0  # Table 5's absent OCT data is skipped, not a failure
    key, = _notebook_keys("table3_mvtec_detection", profile="smoke")  # the notebook's own key, same settings
    assert (runs / key / "metrics.json").is_file() and [p.name for p in runs.iterdir()] == [key]
    out = capsys.readouterr().out
    assert "table3: 1 runs (1 new, 0 cached), 0 failed" in out
    assert "table5: skipped: no data here: retina (not run: " in out and "OCT2017" in out
    assert log.read_text().count("table3: 1 runs (1 new") == 1
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert f"{key}/metrics.json" in names and f"{key}/spec.json" in names
    assert not [n for n in names if "/checkpoints/" in n] and f"{key}/cloner.pt" in names  # the final cloner only
    assert regenerate.main(argv) == 0
    assert "table3: 1 runs (0 new, 1 cached), 0 failed" in capsys.readouterr().out  # never retrained


def test_train_only_exits_non_zero_when_a_run_fails(monkeypatch, tmp_path, capsys, no_locations):
    spec = RunSpec("mvtec", "leather")
    broken = RunResult(spec, None, None, "cloner diverged", "RunError")
    monkeypatch.setattr(train_only, "run_many", lambda specs, root, **kw: [broken for _ in specs])
    argv = ["--train-only", "--profile", "smoke", "--only", "table3", "--runs-dir", str(tmp_path)]
    assert regenerate.main(argv) == 1
    captured = capsys.readouterr()
    assert "table3: 1 runs (0 new, 0 cached), 1 failed" in captured.out
    assert "FAILED mvtec leather seed 0" in captured.err and "cloner diverged" in captured.err


def test_train_only_refuses_what_it_cannot_use(tmp_path, capsys, no_locations):
    base = ["--train-only", "--profile", "smoke", "--only", "table3", "--runs-dir", str(tmp_path)]
    assert regenerate.main([*base, "-p", "executor=processes"]) == 2
    assert regenerate.main([*base, "--data-root", str(tmp_path / "absent")]) == 2
    assert regenerate.main([*base, "--weights", str(tmp_path / "absent.pth")]) == 2
    err = capsys.readouterr().err
    assert "['executor'] are not used by --train-only" in err and "absent is not a folder" in err
    assert "absent.pth is not a file" in err
    assert not any(tmp_path.iterdir()), "refused before any run"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None, reason="needs bash and tar")
def test_the_gpu_script_in_smoke_mode_on_cpu(data, tmp_path):
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    (data / "mvtec").rename(shared / "data" / "mvtec_leather_sample")  # the shared folder's own naming
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop(WEIGHTS_ENV, None)
    env.pop("OUT", None)
    out = tmp_path / "out"
    cmd = ["bash", str(SCRIPT), "--shared", str(shared), "--device", "cpu", "--profile", "smoke",
           "--only", "table3", "--out", str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["regenerate_gpu.log", "runs.tar.gz"]
    log = (out / "regenerate_gpu.log").read_text()
    assert "mvtec [leather ]" in log and "torch " in log and "table3: 1 runs (" in log and "0 failed" in log
    assert "--render runs.tar.gz --profile smoke" in log
    with tarfile.open(out / "runs.tar.gz") as tar:
        assert any(n.endswith("/metrics.json") for n in tar.getnames())
    if not subprocess.run([sys.executable, "-c", "import torch; assert torch.cuda.is_available()"]).returncode == 0:
        cuda = subprocess.run(cmd[:4] + ["--device", "cuda", *cmd[6:]], env=env, capture_output=True, text=True,
                              timeout=300)
        assert cuda.returncode == 2 and "torch sees no CUDA GPU here" in cuda.stdout + cuda.stderr


def _archive(path: Path, runs: dict[str, dict[str, bytes]]) -> Path:
    """A runs.tar.gz as pack_records writes it: <key>/<file> members."""
    with tarfile.open(path, "w:gz") as tar:
        for key, files in runs.items():
            for name, data in files.items():
                info = tarfile.TarInfo(f"{key}/{name}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_unpacking_never_overwrites_a_record_here(tmp_path):
    """Issue 29 point 3: an archive's copy of a finished run never replaces the one in the cache; it is kept
    aside whole and said. Absent runs are added, identical ones left, missing files (the final cloner) added."""
    runs = tmp_path / "runs"
    for key, metrics in (("a" * 16, b'{"ours": 1}'), ("b" * 16, b'{"same": 1}'), ("c" * 16, b'{"c": 1}')):
        (runs / key).mkdir(parents=True)
        (runs / key / "metrics.json").write_bytes(metrics)
    archive = _archive(tmp_path / "runs.tar.gz", {
        "a" * 16: {"metrics.json": b'{"theirs": 1}', "checkpoints/cloner_e0601.pt": b"cloner a"},
        "b" * 16: {"metrics.json": b'{"same": 1}'},
        "c" * 16: {"metrics.json": b'{"c": 1}', "checkpoints/cloner_e0601.pt": b"cloner c"},
        "d" * 16: {"metrics.json": b'{"new": 1}'}})
    done = train_only.unpack_records(archive, runs)
    assert (runs / ("a" * 16) / "metrics.json").read_bytes() == b'{"ours": 1}'
    assert not (runs / ("a" * 16) / "checkpoints").exists(), "nothing of another training mixed in"
    aside, = done["aside"]
    assert (Path(aside) / "metrics.json").read_bytes() == b'{"theirs": 1}' and Path(aside).parent.parent == runs
    assert done["same"] == ["b" * 16] and done["completed"] == ["c" * 16] and done["added"] == ["d" * 16]
    assert (runs / ("c" * 16) / "checkpoints" / "cloner_e0601.pt").read_bytes() == b"cloner c"
    assert (runs / ("d" * 16) / "metrics.json").read_bytes() == b'{"new": 1}'
    assert sorted(p.name for p in runs.iterdir() if p.name.startswith(".unpack-")) == []


def test_unpacking_refuses_unsafe_members(tmp_path):
    from mkdlib.datasets.errors import ArchiveError

    archive = _archive(tmp_path / "evil.tar.gz", {"../outside": {"metrics.json": b"{}"}})
    with pytest.raises(ArchiveError, match="unsafe"):
        train_only.unpack_records(archive, tmp_path / "runs")
    assert not (tmp_path / "outside").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_the_render_step_keeps_a_finished_record(tmp_path):
    """The exact example: `regenerate_gpu.sh --render` with an archive holding another copy of a run already
    finished in the results' run cache leaves that run's metrics.json as it was."""
    results = tmp_path / "results"
    key = "e" * 16
    (results / "runs" / key).mkdir(parents=True)
    (results / "runs" / key / "metrics.json").write_bytes(b'{"finished": "here"}')
    archive = _archive(tmp_path / "runs.tar.gz", {key: {"metrics.json": b'{"from": "archive"}'}})
    shared = tmp_path / "shared"
    (shared / "data").mkdir(parents=True)
    env = {**os.environ, "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop(WEIGHTS_ENV, None)
    done = subprocess.run(["bash", str(SCRIPT), "--render", str(archive), "--shared", str(shared), "--profile",
                           "smoke", "--results", str(results), "--only", "table5"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert (results / "runs" / key / "metrics.json").read_bytes() == b'{"finished": "here"}'
    assert "differs from the finished record here, which is kept" in done.stderr, done.stdout + done.stderr
