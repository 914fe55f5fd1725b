"""hardware: CPU name and instruction sets from /proc/cpuinfo; bf16 counted native only with AVX-512 BF16 / AMX."""
from mkdlib import hardware

EPYC_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\n"
XEON_AMX = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
            "flags\t\t: avx avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")


def _fake(monkeypatch, text):
    for name in hardware.KERNEL_LIMITS:  # `make test-avx2` sets them; these tests fake the CPU alone
        monkeypatch.delenv(name, raising=False)
    hardware._cpuinfo.cache_clear()
    monkeypatch.setattr(hardware.Path, "read_text", lambda self: text)


def test_avx2_only_cpu_has_no_native_bf16(monkeypatch):
    _fake(monkeypatch, EPYC_AVX2)
    assert hardware.cpu_name() == "AMD EPYC 7B12" and hardware.cpu_isa() == ["AVX2"]
    assert not hardware.native_bf16() and "emulated" in hardware.describe_cpu()
    hardware._cpuinfo.cache_clear()


def test_amx_cpu_has_native_bf16(monkeypatch):
    _fake(monkeypatch, XEON_AMX)
    assert hardware.cpu_isa() == ["AVX2", "AVX-512", "AVX-512 BF16", "AMX"] and hardware.native_bf16()
    hardware._cpuinfo.cache_clear()


def test_this_machine_is_described():
    hardware._cpuinfo.cache_clear()
    assert hardware.cpu_name() and "bf16" in hardware.describe_cpu()


def test_kernel_caps_are_named_and_turn_native_bf16_off(monkeypatch):
    _fake(monkeypatch, XEON_AMX)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert hardware.kernel_limits() == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert not hardware.native_bf16()  # the CPU has AMX, but oneDNN may not use it
    assert "ONEDNN_MAX_CPU_ISA=AVX2" in hardware.describe_cpu() and "emulated" in hardware.describe_cpu()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert hardware.native_bf16()
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY")
    assert hardware.kernel_limits() == {} and hardware.native_bf16()
    hardware._cpuinfo.cache_clear()
