"""vdsr.cpu: what the processor can do: the kernel's CPU flags read, and ``VDSR_CPU_FEATURES``
forcing a machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from vdsr import cpu
from vdsr.cpu import CPU_FEATURES_ENV, CpuFeatures, cpu_features
from vdsr.errors import InvalidArgument


def test_override_forces_a_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FEATURES_ENV, "none")
    assert cpu_features() == CpuFeatures(source="env")
    assert cpu_features().names() == []
    monkeypatch.setenv(CPU_FEATURES_ENV, " AVX2, vnni ")
    got = cpu_features()
    assert (got.avx2, got.vnni, got.avx512, got.bf16, got.amx) == (True, True, False, False, False)
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2,sse9")
    with pytest.raises(InvalidArgument, match="sse9"):
        cpu_features()


def test_detection_reads_kernel_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu, "_CPUINFO", info)
    # The AMD EPYC of issue 17 (abridged): AVX-512 with BF16 and VNNI, no AMX.
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\n"
                    "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu._detect() == CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True, source="cpuinfo")
    assert cpu.cpu_name() == "AMD EPYC 9R14"
    # A Sapphire Rapids-like core: AMX; an Alder Lake-like one: AVX-VNNI without AVX-512.
    info.write_text("flags : avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n")
    assert cpu._detect() == CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True, amx=True,
                                        source="cpuinfo")
    info.write_text("flags : avx2 avx_vnni\n")
    assert cpu._detect() == CpuFeatures(avx2=True, vnni=True, source="cpuinfo")
    # No flags line (ARM kernels write "Features"): the fallback, never an error.
    info.write_text("processor : 0\nFeatures : fp asimd\n")
    assert cpu._detect().source in ("torch", "none")
    assert not cpu._detect().bf16
    # No file at all (macOS, Windows).
    monkeypatch.setattr(cpu, "_CPUINFO", tmp_path / "missing")
    assert isinstance(cpu._detect(), CpuFeatures)
    assert cpu.cpu_name()
