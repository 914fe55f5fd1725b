import json
import os
import subprocess
import sys

import pytest

from mkdlib.bench import CASES, format_table, run_case


@pytest.mark.parametrize("case", CASES)
def test_every_case_runs_and_reports(case):
    out = run_case(case, size=32, batch=2, steps=1, device="cpu", amp=False, channels_last=False)
    assert out["img_s"] > 0 and out["peak_mb"] > 0


def test_cli_prints_json_with_ratios():
    cmd = [sys.executable, "-m", "mkdlib.bench", "--json", "--sizes", "32", "--batch", "2", "--steps", "1",
           "--cases", "train", "naive_train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # each case runs in its own process
    result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    row = result["sizes"]["32"]
    assert row["train_speedup"] == pytest.approx(row["train_img_s"] / row["naive_train_img_s"], rel=0.01)
    assert "train_speedup" in format_table(result)
