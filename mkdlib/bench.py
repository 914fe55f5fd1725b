"""Throughput benchmark: images/second of training, detection and localisation against a naive
baseline that does what the released code does (source parameters trainable, no no_grad, source
recomputed every batch, per-image localisation loop). Random data; each case in its own process
so that its peak memory is its own.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import time

import torch

from mkdlib import hardware
from mkdlib.features import autocast, to_input
from mkdlib.losses import MKDLoss
from mkdlib.models import SCORE_LAYERS, TRAIN_LAYERS, Cloner, Source

CASES = ("train", "train_uncached", "naive_train", "detect", "naive_detect", "localize", "naive_localize", "smoothgrad",
         "source")  # source: the VGG-16 forward alone (no_grad), this CPU's practical convolution rate


LOCALIZE_BATCH = 16  # images per localisation step (the naive loop takes one at a time)
SMOOTHGRAD_IMAGES = 2  # SmoothGrad: 50 noisy copies of each


def _localization_step(case: str, source: Source, cloner: Cloner, loss: MKDLoss, x: torch.Tensor):
    from mkdlib import localization as loc

    cloner.eval()
    if case == "localize":  # one batched backward pass per chunk, input gradients only
        return (lambda: loc.localize(x, source, cloner, loss)), len(x)
    if case == "smoothgrad":
        few = x[:SMOOTHGRAD_IMAGES]
        return (lambda: loc.localize(few, source, cloner, loss, method=loc.SMOOTHGRAD, n_samples=50)), len(few)
    source.requires_grad_(True)  # naive: the released code's per-image loop, gradients into VGG too
    return (lambda: loc.finish_maps(loc._grey(loc._naive_grads(x, source, cloner, loss)), loc.GRADIENTS)), len(x)


def conv_gflop(module: torch.nn.Module, size: int) -> float:
    """GFLOP of one image's forward pass through the module's convolutions (2 x multiply-adds), from the
    shapes alone: the module is copied to the meta device, nothing is computed."""
    total = 0

    def count(conv, _, out):
        nonlocal total
        total += 2 * conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1] * out.numel()

    meta = copy.deepcopy(module).to("meta")
    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        meta(torch.empty(1, 3, size, size, device="meta"))
    for h in hooks:
        h.remove()
    return total / 1e9


def roofline(size: int, row: dict) -> dict:
    """GFLOP/s of the cloner's training step (forward + backward ~ 3 forwards) and of the source's forward,
    from the measured img/s, and their ratio: how close the cloner step runs to this CPU's convolution rate."""
    out = {}
    if "train_img_s" in row:
        out["cloner_step_gflop_s"] = round(3 * conv_gflop(Cloner("small"), size) * row["train_img_s"], 1)
    if "source_img_s" in row:
        out["source_gflop_s"] = round(conv_gflop(Source(TRAIN_LAYERS, weights=None), size) * row["source_img_s"], 1)
    if len(out) == 2:
        out["cloner_vs_source"] = round(out["cloner_step_gflop_s"] / out["source_gflop_s"], 2)
    return out


def _timed(step, steps: int, device: torch.device) -> float:
    step()  # warm-up: allocator, oneDNN primitive cache
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def run_case(case: str, size: int, batch: int, steps: int, device: str, amp: bool, channels_last: bool) -> dict:
    dev = torch.device(device)
    if case.startswith("naive"):  # the released code's way: fp32, default memory format
        amp = channels_last = False
    torch.manual_seed(0)
    source = Source(TRAIN_LAYERS, weights=None).to(dev)
    cloner = Cloner("small").to(dev)
    if channels_last:
        cloner.to(memory_format=torch.channels_last)
        source.to(memory_format=torch.channels_last)
    x = to_input(torch.rand(batch, 3, size, size), dev, channels_last)
    train_loss, score_loss = MKDLoss(TRAIN_LAYERS), MKDLoss(SCORE_LAYERS)
    opt = torch.optim.Adam(cloner.parameters(), lr=1e-3)
    n_images = batch

    def cloner_step(target):
        with autocast(dev, amp):
            value = train_loss(cloner(x), target)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    if case == "train":
        with torch.inference_mode(), autocast(dev, amp):
            cached = {k: v.float().clone() for k, v in source(x).items()}
        step = lambda: cloner_step(cached)  # noqa: E731
    elif case == "train_uncached":
        def step():
            with torch.no_grad(), autocast(dev, amp):
                target = source(x)
            cloner_step(target)
    elif case == "naive_train":
        source.requires_grad_(True)  # the released code leaves S trainable and records its graph
        step = lambda: cloner_step(source(x))  # noqa: E731
    elif case == "source":
        def step():
            with torch.no_grad(), autocast(dev, amp):
                source(x)
    elif case in ("detect", "naive_detect"):
        cloner.eval()
        if case == "naive_detect":
            source.requires_grad_(True)

        def step():
            ctx = torch.inference_mode() if case == "detect" else torch.enable_grad()
            with ctx, autocast(dev, amp):
                score_loss(cloner(x), source(x), reduction="none").sum().item()
    else:
        step, n_images = _localization_step(case, source, cloner, score_loss, x[:LOCALIZE_BATCH])
    seconds = _timed(step, steps, dev)
    if dev.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"img_s": n_images / seconds, "peak_mb": peak_mb}


def run_all(sizes: list[int], batch: int, steps: int, device: str, amp: bool, channels_last: bool, cases=CASES) -> dict:
    results: dict = {"device": device, "batch": batch, "amp": amp, "channels_last": channels_last,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": hardware.cpu_name(),
                     "isa": hardware.cpu_isa(), "native_bf16": hardware.native_bf16(),
                     "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "sizes": {}}
    for size in sizes:
        row = {}
        for case in cases:
            cmd = [sys.executable, "-m", "mkdlib.bench", "--case", case, "--size", str(size), "--batch", str(batch),
                   "--steps", str(steps), "--device", device] + (["--amp"] if amp else []) + (
                   ["--channels-last"] if channels_last else [])
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode != 0:
                raise RuntimeError(f"benchmark case {case} at {size}px failed:\n{proc.stderr[-2000:]}")
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            row[f"{case}_img_s"] = round(out["img_s"], 2)
            row[f"{case}_peak_mb"] = round(out["peak_mb"], 1)
        for ours, naive in (("train", "naive_train"), ("detect", "naive_detect"), ("localize", "naive_localize")):
            if f"{ours}_img_s" in row and f"{naive}_img_s" in row:
                row[f"{ours}_speedup"] = round(row[f"{ours}_img_s"] / row[f"{naive}_img_s"], 2)
        row.update(roofline(size, row))
        results["sizes"][str(size)] = row
    return results


def format_table(results: dict) -> str:
    sizes = list(results["sizes"])
    keys = list(results["sizes"][sizes[0]])
    lines = [f"mkdlib bench: device={results['device']} batch={results['batch']} amp={results['amp']} "
             f"channels_last={results['channels_last']} torch={results['torch']} threads={results['threads']}",
             f"cpu: {results.get('cpu')} (ISA: {', '.join(results.get('isa') or []) or 'no AVX2'}; "
             f"native bf16: {'yes' if results.get('native_bf16') else 'no'}; torch kernels: "
             f"{results.get('torch_cpu_capability')})",
             f"{'figure':<28}" + "".join(f"{s + ' px':>14}" for s in sizes)]
    for k in keys:
        lines.append(f"{k:<28}" + "".join(f"{results['sizes'][s].get(k, float('nan')):>14}" for s in sizes))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="mkd bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 32], help="image sizes in px (default 128 32)")
    p.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per case after one warm-up (default 3)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast for ours (the naive baseline stays fp32)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format for ours")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # internal: one case, in this process
    p.add_argument("--size", type=int, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    bad = [f"--{name} must be >= {low}, got {value}" for name, low, value in
           [("sizes", 32, min(a.sizes)), ("batch", 1, a.batch), ("steps", 1, a.steps)] if value < low]
    if bad:  # 32 px: VGG-16's five 2x2 pools
        p.error("; ".join(bad))
    if a.amp and torch.device(a.device).type == "cpu" and not hardware.native_bf16():
        p.error(f"--amp: this CPU ({hardware.cpu_name()}) has no native bf16 (AVX-512 BF16 or AMX); torch would "
                "emulate it, slower than fp32")
    if a.case:
        print(json.dumps(run_case(a.case, a.size, a.batch, a.steps, a.device, a.amp, a.channels_last)))
        return 0
    results = run_all(a.sizes, a.batch, a.steps, a.device, a.amp, a.channels_last, a.cases)
    print(json.dumps(results) if a.json else format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
