"""What CPU this is: its name and the instruction sets that decide which kernels torch can use.

bf16 is fast only where the CPU computes it natively (AVX-512 BF16 or AMX); elsewhere torch emulates it
in fp32 and it is slower, so mkdlib uses bf16 only where `native_bf16()` says so.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache
from pathlib import Path

import torch

# /proc/cpuinfo flag -> the name printed, in order of appearance.
ISA_FLAGS = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX"}


@lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo ({} where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def cpu_name() -> str:
    """e.g. 'AMD EPYC' or 'Intel(R) Xeon(R) Platinum 8481C'; platform's answer where /proc has none."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_isa() -> list[str]:
    """The vector instruction sets of ISA_FLAGS this CPU has, e.g. ['AVX2', 'AVX-512', 'AMX']."""
    flags = set(_cpuinfo().get("flags", "").split())
    return [name for flag, name in ISA_FLAGS.items() if flag in flags]


# Environment variables that cap the kernels torch picks below what the CPU has (e.g. to try an AVX2-only
# machine's paths on an AVX-512 one). oneDNN's ISA names with native bf16 contain one of BF16_ISAS.
KERNEL_LIMITS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")
BF16_ISAS = ("BF16", "AMX", "FP16", "AVX10")


def kernel_limits() -> dict[str, str]:
    """The KERNEL_LIMITS set in this process's environment, e.g. {'ONEDNN_MAX_CPU_ISA': 'AVX2'}."""
    return {name: os.environ[name] for name in KERNEL_LIMITS if os.environ.get(name)}


def limits_text(limits: dict[str, str]) -> str:
    """'; kernels capped by ONEDNN_MAX_CPU_ISA=AVX2' for each kernel cap (kernel_limits()), '' for none."""
    return "".join(f"; kernels capped by {name}={value}" for name, value in limits.items())


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), and oneDNN is not capped below it."""
    cap = kernel_limits().get("ONEDNN_MAX_CPU_ISA", "").upper()
    if cap and cap != "ALL" and not any(isa in cap for isa in BF16_ISAS):
        return False
    return bool({"AVX-512 BF16", "AMX"} & set(cpu_isa()))


def describe_cpu() -> str:
    """One line for reports, e.g. 'AMD EPYC (AVX2; bf16 emulated, not native)', plus the kernel caps set."""
    isa = ", ".join(cpu_isa()) or "no AVX2"
    bf16 = "native" if native_bf16() else "emulated, not native"
    return f"{cpu_name()} ({isa}; bf16 {bf16}{limits_text(kernel_limits())})"


def bf16_native(device: str | torch.device = "cpu") -> bool:
    """Whether `device` computes bf16 natively: a CUDA GPU that supports it, or a CPU per `native_bf16`."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and native_bf16()


def host_info() -> dict[str, str]:
    """Platform, Python, CPU and torch's device of this process: what a results index and a run record."""
    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)}, {torch.cuda.device_count()} visible)"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    return {"platform": platform.platform(), "cpu": cpu_name(), "cpu_count": str(os.cpu_count()),
            "python": platform.python_version(), "torch": torch.__version__, "torch_device": device}


def describe_device(device: str | torch.device) -> str:
    """'this CPU (AMD EPYC (AVX2; bf16 emulated, not native))' or 'cuda:0 (NVIDIA H200)' for messages."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"this CPU ({describe_cpu()})" if device.type == "cpu" else str(device)
