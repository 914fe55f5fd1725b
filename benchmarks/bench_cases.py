"""The cases benchmarks/bench.py times (it runs each in its own process): one step of training,
detection, evaluation or localisation, ours and the released code's way, on random data; and the GFLOP
arithmetic that turns their img/s into GFLOP/s against the source's forward (the roofline).
"""

from __future__ import annotations

import copy
import os
import resource
import time

import torch

from mkdlib.config import Execution
from mkdlib.features import autocast, to_input
from mkdlib.losses import MKDLoss
from mkdlib.models import SCORE_LAYERS, TRAIN_LAYERS, Cloner, Source
from mkdlib.postprocess import grey

CASES = ("train", "train_uncached", "train_compiled", "naive_train", "detect", "naive_detect", "evaluate",
         "naive_evaluate", "localize", "naive_localize", "smoothgrad",
         "source")  # source: the VGG-16 forward alone (no_grad), this CPU's practical convolution rate
TRAINING_CASES = ("train", "train_uncached", "train_compiled", "naive_train")  # a cloner optimiser step each
PAIRS = (("train", "naive_train"), ("detect", "naive_detect"), ("evaluate", "naive_evaluate"),
         ("localize", "naive_localize"))  # (ours, the released code's way): their ratio is printed


LOCALIZE_BATCH = 16  # images per localisation step (the naive loop takes one at a time)
SMOOTHGRAD_IMAGES = 2  # SmoothGrad: 50 noisy copies of each
EVAL_CLONERS = 11  # the protocol scores the cloners sampled every 10 epochs in the last 100 (MVTec: 11)
PROFILE_ENV = "MKDLIB_BENCH_PROFILE"  # set by --profile: the case prints its top operators instead


def _localization_step(case: str, source: Source, cloner: Cloner, loss: MKDLoss, x: torch.Tensor):
    from mkdlib import localization as loc

    cloner.eval()
    if case == "localize":  # one batched backward pass per chunk, input gradients only
        return (lambda: loc.localize(x, source, cloner, loss)), len(x)
    if case == "smoothgrad":
        few = x[:SMOOTHGRAD_IMAGES]
        return (lambda: loc.localize(few, source, cloner, loss, method=loc.SMOOTHGRAD, n_samples=50)), len(few)
    source.requires_grad_(True)  # naive: the released code's per-image loop, gradients into VGG too
    return (lambda: loc.finish_maps(grey(naive_input_grads(x, source, cloner, loss).numpy()), loc.GRADIENTS)), len(x)


def naive_input_grads(images: torch.Tensor, source: Source, cloner: Cloner, loss: MKDLoss) -> torch.Tensor:
    """The released code's localisation loop: one image at a time, `.backward()` into every parameter."""
    grads = torch.zeros_like(images)
    for i in range(len(images)):
        x = images[i:i + 1].clone().requires_grad_(True)
        cloner.zero_grad()
        loss(cloner(x), source(x), reduction="mean").backward()
        grads[i] = x.grad[0]
    return grads


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


def _evaluation_step(case: str, source: Source, cloner: Cloner, loss: MKDLoss, x: torch.Tensor, dev, bf16, cl):
    """Score EVAL_CLONERS sampled cloners on one test set: ours computes the source's features once
    (FeatureStore) and runs only the cloners; the released code recomputes the source per checkpoint."""
    from mkdlib.features import FeatureStore
    from mkdlib.scoring import score

    states = [copy.deepcopy(cloner.state_dict()) for _ in range(EVAL_CLONERS)]
    if case == "evaluate":
        def step():
            features = FeatureStore.compute(source, x, loss.layers, batch_size=len(x), device=dev, amp=bf16,
                                            channels_last=cl)
            for state in states:
                cloner.load_state_dict(state)
                score(cloner, loss, x, features=features, batch_size=len(x), device=dev, amp=bf16, channels_last=cl)
        return step
    source.requires_grad_(True)
    cloner.eval()

    def naive():
        for state in states:
            cloner.load_state_dict(state)
            loss(cloner(x), source(x), reduction="none").sum().item()
    return naive


def _training_step(case: str, source: Source, cloner: Cloner, x: torch.Tensor, dev: torch.device, amp: bool,
                   bf16: bool):
    """One Adam step of the cloner against the source's features: cached once (train, train_compiled, the
    latter through torch.compile), recomputed without gradients (train_uncached), or the released code's
    way, through a trainable source whose graph is recorded (naive_train)."""
    loss = MKDLoss(TRAIN_LAYERS)
    opt = torch.optim.Adam(cloner.parameters(), lr=1e-3)

    def forward(target):
        with autocast(dev, amp):
            return loss(cloner(x), target)

    compiled = torch.compile(forward) if case == "train_compiled" else forward

    def cloner_step(target):
        value = compiled(target)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()

    if case in ("train", "train_compiled"):
        with torch.no_grad(), autocast(dev, bf16):  # not inference_mode: compiled autograd refuses its tensors
            cached = {k: v.float().clone() for k, v in source(x).items()}
        return lambda: cloner_step(cached)
    if case == "train_uncached":
        def step():
            with torch.no_grad(), autocast(dev, bf16):
                target = source(x)
            cloner_step(target)
        return step
    source.requires_grad_(True)  # the released code leaves S trainable and records its graph
    return lambda: cloner_step(source(x))


def _forward_step(case: str, source: Source, cloner: Cloner, loss: MKDLoss, x: torch.Tensor, dev: torch.device,
                  bf16: bool):
    """The source's forward alone (source), or detection: both networks and the score loss, under
    inference_mode (detect) or recording both graphs as the released code does (naive_detect)."""
    if case == "source":
        def step():
            with torch.no_grad(), autocast(dev, bf16):
                source(x)
        return step
    cloner.eval()
    if case == "naive_detect":
        source.requires_grad_(True)

    def detect():
        ctx = torch.inference_mode() if case == "detect" else torch.enable_grad()
        with ctx, autocast(dev, bf16):
            loss(cloner(x), source(x), reduction="none").sum().item()
    return detect


def _case_step(case: str, source: Source, cloner: Cloner, x: torch.Tensor, dev: torch.device, amp: bool,
               bf16: bool, channels_last: bool):
    """The step `case` times, and how many images one step processes."""
    if case in TRAINING_CASES:
        return _training_step(case, source, cloner, x, dev, amp, bf16), len(x)
    score_loss = MKDLoss(SCORE_LAYERS)
    if case in ("source", "detect", "naive_detect"):
        return _forward_step(case, source, cloner, score_loss, x, dev, bf16), len(x)
    if case in ("evaluate", "naive_evaluate"):  # image scorings: every test image by every sampled cloner
        step = _evaluation_step(case, source, cloner, score_loss, x, dev, bf16, channels_last)
        return step, len(x) * EVAL_CLONERS
    return _localization_step(case, source, cloner, score_loss, x[:LOCALIZE_BATCH])


def _models_and_batch(size: int, batch: int, dev: torch.device, channels_last: bool):
    """A randomly initialised source and cloner (seed 0) and a random batch, in the chosen memory format."""
    torch.manual_seed(0)
    source = Source(TRAIN_LAYERS, weights=None).to(dev)
    cloner = Cloner("small").to(dev)
    if channels_last:
        cloner.to(memory_format=torch.channels_last)
        source.to(memory_format=torch.channels_last)
    return source, cloner, to_input(torch.rand(batch, 3, size, size), dev, channels_last)


def _peak_mb(dev: torch.device) -> float:
    """This process's peak memory: the allocator's on CUDA, the resident set's elsewhere."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(case: str, size: int, batch: int, steps: int, device: str, amp: bool = False,
             channels_last: bool | None = None, bf16_inference: bool = False) -> dict:
    """img/s and peak memory of one case. amp: bf16 in the cloner's training step and everywhere else;
    bf16_inference: in the passes without gradients; channels_last None: mkdlib's default (Execution's)."""
    dev = torch.device(device)
    if case.startswith("naive"):  # the released code's way: fp32, default memory format
        amp = channels_last = bf16_inference = False
    bf16 = amp or bf16_inference
    channels_last = Execution().channels_last if channels_last is None else channels_last
    source, cloner, x = _models_and_batch(size, batch, dev, channels_last)
    step, n_images = _case_step(case, source, cloner, x, dev, amp, bf16, channels_last)
    if PROFILE_ENV in os.environ:
        return {"profile": _profiled(step, int(os.environ[PROFILE_ENV]))}
    seconds = _timed(step, steps, dev)
    return {"img_s": n_images / seconds, "peak_mb": _peak_mb(dev), "amp": amp, "bf16_inference": bf16,
            "channels_last": channels_last}


def _profiled(step, top: int) -> str:
    """torch.profiler's table of the operators taking most of one step's time (after a warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
