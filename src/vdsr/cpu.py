"""What the processor can do, detected at run time: which CPU inference paths are worth taking.

The development machines differ (an AMD EPYC with AVX512_BF16 and VNNI, an Intel Xeon with VNNI
and no BF16, machines with AVX2 only), so nothing is assumed at install time. :func:`cpu_features`
reads the kernel's flags (``/proc/cpuinfo``) where there are any and falls back to what PyTorch
detected (``torch.backends.cpu.get_cpu_capability()``), which knows AVX2/AVX-512 but not VNNI
or BF16: unknown features count as absent, the safe side.

``VDSR_CPU_FEATURES`` overrides the detection, so tests (and users with a misreporting VM) can
force a machine: ``none`` (a plain x86-64 or ARM core), or a comma-separated subset of
``avx2, avx512, vnni, bf16, amx``, e.g. ``avx2,vnni``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from vdsr.errors import InvalidArgument

__all__ = ["CPU_FEATURES_ENV", "CpuFeatures", "cpu_features", "cpu_name", "parse_features", "usable_cpus"]

# The classes of CPU that the inference recipes tell apart, from most capable to least.
FEATURE_CLASSES = ("amx", "avx512_bf16", "vnni", "avx2", "baseline")

CPU_FEATURES_ENV = "VDSR_CPU_FEATURES"
_CPUINFO = Path("/proc/cpuinfo")

# Kernel flag names (arch/x86/include/asm/cpufeatures.h) behind each feature.
_FLAGS: dict[str, tuple[str, ...]] = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni"),
    "bf16": ("avx512_bf16", "amx_bf16"),
    "amx": ("amx_tile",),
}


@dataclass(frozen=True)
class CpuFeatures:
    """The instruction-set features the CPU inference paths care about.

    ``vnni``: int8 dot products (AVX512_VNNI or AVX-VNNI), what makes int8 convolutions fast.
    ``bf16``: native bfloat16 dot products (AVX512_BF16 or AMX-BF16); without them bf16 is
    emulated and slower than fp32. ``source`` says where the answer came from:
    ``"cpuinfo"``, ``"torch"``, ``"env"`` (the override) or ``"none"`` (nothing known).
    """

    avx2: bool = False
    avx512: bool = False
    vnni: bool = False
    bf16: bool = False
    amx: bool = False
    source: str = "none"

    def names(self) -> list[str]:
        """The features present, e.g. ``["avx2", "avx512", "vnni"]``."""
        return [f.name for f in fields(self) if f.name != "source" and getattr(self, f.name)]

    def to_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @property
    def feature_class(self) -> str:
        """One of :data:`FEATURE_CLASSES`: ``amx`` (AMX with bf16), ``avx512_bf16`` (native bf16
        without AMX), ``vnni`` (int8 dot products, no bf16), ``avx2``, else ``baseline``."""
        if self.amx and self.bf16:
            return "amx"
        if self.bf16:
            return "avx512_bf16"
        if self.vnni:
            return "vnni"
        return "avx2" if self.avx2 else "baseline"


def parse_features(spec: str, source: str = "env") -> CpuFeatures:
    """Features from a comma-separated list (``"none"`` or ``""``: no features)."""
    known = set(_FLAGS)
    items = {part.strip().lower() for part in spec.split(",") if part.strip()}
    items.discard("none")
    unknown = sorted(items - known)
    if unknown:
        raise InvalidArgument(f"unknown CPU feature(s) {', '.join(unknown)} in {CPU_FEATURES_ENV}; "
                              f"use 'none' or some of {', '.join(_FLAGS)}")
    return CpuFeatures(**{name: name in items for name in _FLAGS}, source=source)


def _from_flags(flags: set[str]) -> CpuFeatures:
    found = {name: any(flag in flags for flag in names) for name, names in _FLAGS.items()}
    return CpuFeatures(**found, source="cpuinfo")


def _cpuinfo_flags() -> set[str] | None:
    """The first processor's flags, or None where the file or the line does not exist (non-Linux,
    ARM kernels that write ``Features``)."""
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


def _from_torch() -> CpuFeatures:
    try:
        import torch

        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # an old torch without the call, or no torch at all: know nothing
        return CpuFeatures()
    # "AVX512_BF16"/"AMX" are reported by some builds; VNNI is implied by neither name for sure,
    # except AMX machines (Sapphire Rapids and later), which all have AVX512_VNNI.
    avx512 = capability.startswith("AVX512") or capability == "AMX"
    amx = "AMX" in capability
    return CpuFeatures(avx2=avx512 or capability.startswith("AVX2"), avx512=avx512,
                       vnni=amx, bf16=amx or "BF16" in capability, amx=amx, source="torch")


def _detect() -> CpuFeatures:
    flags = _cpuinfo_flags()
    if flags is not None:
        return _from_flags(flags)
    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        return _from_torch()
    return CpuFeatures()


@lru_cache(maxsize=1)
def _detected() -> CpuFeatures:
    return _detect()


def cpu_features() -> CpuFeatures:
    """The CPU's features: ``$VDSR_CPU_FEATURES`` when set, else detected once per process."""
    override = os.environ.get(CPU_FEATURES_ENV)
    if override is not None:
        return parse_features(override)
    return _detected()


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    try:
        for line in _CPUINFO.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else all)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
