import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mkdlib.models import CLONER_CFGS, TRAIN_LAYERS, Cloner, Source

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"  # a developer's tool beside the package
sys.path.insert(0, str(BENCH.parent))
import bench  # noqa: E402
from bench import CASES, format_table, run_case  # noqa: E402
from bench_cases import conv_gflop  # noqa: E402


@pytest.mark.parametrize("case", CASES)
def test_every_case_runs_and_reports(case):
    if case == "train_compiled" and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("torch.compile's CPU backend needs a C++ compiler; the bench notes its absence")
    out = run_case(case, size=32, batch=2, steps=1, device="cpu", amp=False, channels_last=False)
    assert out["img_s"] > 0 and out["peak_mb"] > 0


def test_ours_takes_the_device_defaults_and_naive_stays_fp32():
    out = run_case("detect", size=32, batch=2, steps=1, device="cpu")
    assert (out["amp"], out["bf16_inference"], out["channels_last"]) == (False, False, True)
    naive = run_case("naive_detect", size=32, batch=2, steps=1, device="cpu", amp=True)
    assert (naive["amp"], naive["bf16_inference"], naive["channels_last"]) == (False, False, False)


def test_profile_and_throughput_modes_print_their_figures(capsys):
    env_threads = os.environ.get("OMP_NUM_THREADS")
    assert bench.main(["--profile", "--sizes", "32", "--batch", "2", "--cases", "detect"]) == 0
    assert "== detect at 32 px" in (text := capsys.readouterr().out) and "Self CPU" in text
    assert bench.main(["--throughput", "--json", "--sizes", "32", "--batch", "2", "--steps", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["two_vs_one"] == pytest.approx(out["two_processes_1_thread_img_s"] / out["one_process_2_threads_img_s"],
                                              rel=0.01)
    assert os.environ.get("OMP_NUM_THREADS") == env_threads  # the children's settings stay theirs


def test_cli_prints_json_with_ratios():
    cmd = [sys.executable, str(BENCH), "--json", "--sizes", "32", "--batch", "2", "--steps", "1",
           "--cases", "train", "naive_train", "source"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # each case runs in its own process
    result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    row = result["sizes"]["32"]
    assert row["train_speedup"] == pytest.approx(row["train_img_s"] / row["naive_train_img_s"], rel=0.01)
    assert "train_speedup" in format_table(result)
    assert row["cloner_step_gflop_s"] == pytest.approx(3 * conv_gflop(Cloner("small"), 32) * row["train_img_s"], rel=0.01)
    assert row["cloner_vs_source"] == pytest.approx(row["cloner_step_gflop_s"] / row["source_gflop_s"], abs=0.006)  # 2 decimals
    assert result["cpu"] and isinstance(result["isa"], list) and "cpu: " in format_table(result)


def _vgg_gflop(cfg, size):
    """2 x multiply-adds of 3x3 'same' convolutions over a VGG config, pool by pool."""
    total, cin = 0, 3
    for item in cfg:
        if item == "M":
            size //= 2
            continue
        total += 2 * cin * 9 * item * size * size
        cin = item
    return total / 1e9


def test_conv_gflop_restates_the_architectures():
    vgg16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    assert conv_gflop(Source(TRAIN_LAYERS, weights=None), 128) == pytest.approx(_vgg_gflop(vgg16, 128))
    assert conv_gflop(Cloner("small"), 128) == pytest.approx(_vgg_gflop(CLONER_CFGS["small"], 128))
    assert 10.0 < conv_gflop(Source(TRAIN_LAYERS, weights=None), 128) < 10.1  # the issue's ~10 GFLOP


@pytest.mark.parametrize("argv, words", [(["--sizes", "16"], "--sizes must be >= 32"),
                                         (["--batch", "0"], "--batch must be >= 1")])
def test_bad_arguments_are_refused(argv, words, capsys):
    with pytest.raises(SystemExit) as err:
        bench.main(argv)
    assert err.value.code == 2 and words in capsys.readouterr().err


def test_amp_is_refused_where_bf16_is_emulated(monkeypatch, capsys):
    monkeypatch.setattr(bench.hardware, "native_bf16", lambda: False)
    with pytest.raises(SystemExit):
        bench.main(["--amp", "on", "--device", "cpu"])
    assert "no native bf16" in capsys.readouterr().err


def test_a_missing_compiler_is_a_note_not_a_failed_bench(monkeypatch):
    real = bench._run_case_process

    def no_compiler(cmd, env=None):
        if "train_compiled" in cmd:
            raise RuntimeError("benchmark case train_compiled failed:\nInvalidCxxCompiler: No working C++ compiler found")
        return real(cmd, env)

    monkeypatch.setattr(bench, "_run_case_process", no_compiler)
    results = bench.run_all([32], 2, 1, "cpu", cases=["train", "train_compiled"])
    assert "train_img_s" in results["sizes"]["32"] and "train_compiled_img_s" not in results["sizes"]["32"]
    assert "No working C++ compiler" in format_table(results)


def test_any_other_failed_case_fails_the_bench(monkeypatch):
    def broken(cmd, env=None):
        raise RuntimeError("benchmark case naive_train failed")

    monkeypatch.setattr(bench, "_run_case_process", broken)
    with pytest.raises(RuntimeError, match="naive_train"):
        bench.run_all([32], 2, 1, "cpu", cases=["naive_train"])
