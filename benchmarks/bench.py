"""Throughput benchmark: images/second of training, detection, evaluation and localisation against a
naive baseline that does what the released code does (fp32, default memory format, source parameters
trainable, no no_grad, source recomputed every batch and for every checkpoint, per-image localisation
loop). Random data; each case in its own process so that its peak memory is its own.

Ours runs with mkdlib's execution defaults (`config.Execution`: fp32, channels_last) unless --amp /
--bf16-inference / --channels-last say otherwise; bf16 only where the device computes it natively. `--profile`
prints where a case's time goes (torch.profiler); `--throughput` compares two one-thread processes side by side
with one two-thread one. A developer's tool, kept beside the package: `make bench`, or from a checkout
`python benchmarks/bench.py --sizes 128`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from mkdlib import hardware
from mkdlib.config import Execution

from bench_cases import CASES, PAIRS, PROFILE_ENV, roofline, run_case

SWITCH = {"auto": None, "on": True, "off": False}  # --channels-last values


def _case_command(case: str, size: int, batch: int, steps: int, device: str, amp: bool, channels_last,
                  bf16_inference) -> list[str]:
    flag = {None: "auto", True: "on", False: "off"}
    return [sys.executable, os.path.abspath(__file__), "--case", case, "--size", str(size), "--batch", str(batch),
            "--steps", str(steps), "--device", device, "--amp", flag[amp], "--channels-last", flag[channels_last],
            "--bf16-inference", flag[bf16_inference]]


def _run_case_process(cmd: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or os.environ.copy())
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case {cmd[cmd.index('--case') + 1]} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_all(sizes: list[int], batch: int, steps: int, device: str, amp: bool = False,
            channels_last: bool | None = None, bf16_inference: bool = False, cases=CASES) -> dict:
    results: dict = {"device": device, "batch": batch, "amp": amp, "bf16_inference": amp or bf16_inference,
                     "channels_last": Execution().channels_last if channels_last is None else channels_last,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": hardware.cpu_name(),
                     "isa": hardware.cpu_isa(), "native_bf16": hardware.native_bf16(),
                     "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
                     "kernel_limits": hardware.kernel_limits(), "sizes": {}}
    for size in sizes:
        row = {}
        for case in cases:
            try:
                out = _run_case_process(_case_command(case, size, batch, steps, device, amp, channels_last,
                                                      bf16_inference))
            except RuntimeError as err:
                if case != "train_compiled":
                    raise
                # torch.compile needs a C++ compiler on CPU: its absence is a figure missing, not a failed bench
                results.setdefault("notes", []).append(f"train_compiled at {size} px: {str(err).splitlines()[-1]}")
                continue
            row[f"{case}_img_s"] = round(out["img_s"], 2)
            row[f"{case}_peak_mb"] = round(out["peak_mb"], 1)
        for ours, naive in PAIRS:
            if f"{ours}_img_s" in row and f"{naive}_img_s" in row:
                row[f"{ours}_speedup"] = round(row[f"{ours}_img_s"] / row[f"{naive}_img_s"], 2)
        row.update(roofline(size, row))
        results["sizes"][str(size)] = row
    return results


def profile_cases(cases, size: int, batch: int, device: str, amp, channels_last, bf16_inference,
                  top: int = 12) -> str:
    """Each case's top operators by self CPU time (torch.profiler, one step after a warm-up)."""
    parts = []
    for case in cases:
        env = {**os.environ, PROFILE_ENV: str(top)}
        out = _run_case_process(_case_command(case, size, batch, 1, device, amp, channels_last, bf16_inference),
                                env)
        parts.append(f"== {case} at {size} px, batch {batch} ==\n{out['profile']}")
    return "\n".join(parts)


def throughput(size: int, batch: int, steps: int, device: str, amp, channels_last, bf16_inference,
               case: str = "train") -> dict:
    """Machine throughput of `case` (img/s over every process): two one-thread processes side by side
    against one process with two threads, the choice between run_many(workers=2) and one run at a time."""
    cmd = _case_command(case, size, batch, steps, device, amp, channels_last, bf16_inference)
    one = lambda threads: {**os.environ, "OMP_NUM_THREADS": str(threads)}  # noqa: E731
    t0 = time.perf_counter()
    single = _run_case_process(cmd, one(2))["img_s"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=one(1))
             for _ in range(2)]
    outs = [p.communicate() for p in procs]
    if any(p.returncode for p in procs):
        raise RuntimeError(f"benchmark case {case} failed:\n{outs[0][1][-2000:]}{outs[1][1][-2000:]}")
    side_by_side = sum(json.loads(o.strip().splitlines()[-1])["img_s"] for o, _ in outs)
    return {"case": case, "size": size, "batch": batch, "one_process_2_threads_img_s": round(single, 2),
            "two_processes_1_thread_img_s": round(side_by_side, 2), "two_vs_one": round(side_by_side / single, 2),
            "cpu": hardware.cpu_name(), "seconds": round(time.perf_counter() - t0, 1)}


def format_table(results: dict) -> str:
    sizes = list(results["sizes"])
    keys = list(results["sizes"][sizes[0]])
    lines = [f"mkdlib bench: device={results['device']} batch={results['batch']} amp (training step)="
             f"{results['amp']} bf16_inference={results.get('bf16_inference')} channels_last="
             f"{results['channels_last']} torch={results['torch']} threads={results['threads']}",
             f"cpu: {results.get('cpu')} (ISA: {', '.join(results.get('isa') or []) or 'no AVX2'}; "
             f"native bf16: {'yes' if results.get('native_bf16') else 'no'}; torch kernels: "
             f"{results.get('torch_cpu_capability')}{hardware.limits_text(results.get('kernel_limits') or {})})",
             f"{'figure':<28}" + "".join(f"{s + ' px':>14}" for s in sizes)]
    for k in keys:
        lines.append(f"{k:<28}" + "".join(f"{results['sizes'][s].get(k, float('nan')):>14}" for s in sizes))
    lines += [f"note: {n}" for n in results.get("notes", [])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks/bench.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 32], help="image sizes in px (default 128 32)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case after one warm-up (default 3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("on", "off"), default="off",
                   help="bf16 autocast in ours' cloner training step too (config amp; default off); the naive "
                        "baseline stays fp32")
    p.add_argument("--bf16-inference", choices=("on", "off"), default="off",
                   help="bf16 for ours' passes without gradients (source features, scoring; config "
                        "bf16_inference; default off)")
    p.add_argument("--channels-last", choices=SWITCH, default="auto",
                   help="channels_last memory format for ours: auto (mkdlib's default: on), on, off")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--profile", action="store_true",
                   help="print each case's top operators (torch.profiler) at the first size instead of timing")
    p.add_argument("--throughput", action="store_true",
                   help="training img/s of two one-thread processes side by side against one two-thread process")
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: one case, in this process
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    bad = [f"--{name} must be >= {low}, got {value}" for name, low, value in
           [("sizes", 32, min(a.sizes)), ("batch", 1, a.batch), ("steps", 1, a.steps)] if value < low]
    if bad:  # 32 px: VGG-16's five 2x2 pools
        p.error("; ".join(bad))
    amp, channels_last, bf16_inference = a.amp == "on", SWITCH[a.channels_last], a.bf16_inference == "on"
    if (amp or bf16_inference) and torch.device(a.device).type == "cpu" and not hardware.native_bf16():
        p.error(f"--amp / --bf16-inference on: this CPU ({hardware.cpu_name()}) has no native bf16 (AVX-512 BF16 "
                "or AMX); torch would emulate it, slower than fp32")
    switches = (amp, channels_last, bf16_inference)
    if a.case:
        print(json.dumps(run_case(a.case, a.size, a.batch, a.steps, a.device, *switches)))
        return 0
    if a.profile:
        print(profile_cases(a.cases, a.sizes[0], a.batch, a.device, *switches))
        return 0
    if a.throughput:
        out = throughput(a.sizes[0], a.batch, a.steps, a.device, *switches)
        print(json.dumps(out) if a.json else "\n".join(f"{k:<32}{v}" for k, v in out.items()))
        return 0
    results = run_all(a.sizes, a.batch, a.steps, a.device, *switches, cases=a.cases)
    print(json.dumps(results) if a.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
