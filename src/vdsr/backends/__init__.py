"""Inference backends: one small protocol, one module each.

A backend runs the network on a batch of images that are already bicubic-upscaled:
``(N, C, H, W)`` float32 tensor in [0, 1] -> the same shape, float32, unclamped, on the
backend's device. Tiling, ensembles, colour and file handling live above it, in
:class:`vdsr.engine.Upscaler`; what a backend caches (an ONNX Runtime session, a quantised graph,
a compiled function) lives in the backend, never on the model.

| name          | module              | devices   | precisions                 |
|---------------|---------------------|-----------|----------------------------|
| ``torch``     | :mod:`.pytorch`     | cpu, cuda | fp32, tf32, fp16, bf16     |
| ``compile``   | :mod:`.pytorch`     | cpu, cuda | fp32, tf32, fp16, bf16     |
| ``onnxruntime`` | :mod:`.ort`       | cpu       | fp32                       |
| ``int8``      | :mod:`.ort`, :mod:`.openvino` | cpu | int8 body, 3+1 fp32 convs |
| ``mixed``     | :mod:`.ort`, :mod:`.openvino` | cpu | int8 body, 3+3 fp32 convs |
| ``openvino``  | :mod:`.openvino`    | cpu       | fp32; bf16 on bf16 CPUs    |

``auto`` is chosen from measurements (docs/cpu_backends.md) and the CPU's features
(:mod:`vdsr.cpu`), never assumed: see :func:`pick_backend`.
"""

from __future__ import annotations

import weakref
from typing import Protocol, runtime_checkable

import torch

from vdsr.constants import BACKENDS
from vdsr.cpu import CpuFeatures, cpu_features
from vdsr.errors import BackendUnavailable, InvalidArgument
from vdsr.model import VDSR
from vdsr.precision import resolve_precision

__all__ = ["Backend", "create_backend", "int8_runtime", "pick_backend", "shared_backend"]


@runtime_checkable
class Backend(Protocol):
    """Runs the network: ``(N, C, H, W)`` float32 in [0, 1] -> same shape, float32, unclamped."""

    name: str
    device: torch.device
    precision: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def _ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino_available() -> bool:
    from vdsr.backends.openvino import openvino_available

    return openvino_available()


# Whether ``auto`` (with ``auto`` precision) takes ``mixed`` on CPUs with VNNI. The evidence is for
# it (within 0.02 dB of fp32 on Set5/Set14 x2-x4 for both weights, ~3x eager: docs/cpu_backends.md),
# but it makes `vdsr evaluate` and every default run approximate and calibrate once per weights:
# a decision for the lead at merge time, so it is off.
CPU_AUTO_MIXED = False


def pick_backend(backend: str, device: torch.device, precision: str = "auto",
                 features: CpuFeatures | None = None) -> str:
    """Resolve ``"auto"`` and check that ``backend`` can run on ``device``.

    ``auto`` on a CPU (measured, docs/cpu_backends.md; ``features`` default to
    :func:`vdsr.cpu.cpu_features`, which ``$VDSR_CPU_FEATURES`` overrides):

    * ``auto`` precision, with :data:`CPU_AUTO_MIXED` on and a CPU with VNNI: ``mixed`` (int8
      body, within 0.02 dB of fp32 for the shipped and the official weights).
    * fp32 (and ``auto`` precision otherwise): ONNX Runtime fp32 when installed, else OpenVINO
      fp32 when installed, else PyTorch. OpenVINO fp32 was 1.1-1.3x ONNX Runtime's speed on an
      AVX512_VNNI Xeon but 0.94x on the AMD EPYC of issue 17: no clear winner, and ONNX Runtime
      is a dependency where OpenVINO is an extra. ``int8`` (within 0.05 dB, the fastest) is
      opt-in; both quantised graphs run on :func:`int8_runtime`.
    * bf16: OpenVINO where the CPU has native bf16 (AVX512_BF16 or AMX) and OpenVINO is
      installed, else PyTorch (which emulates bf16 on other CPUs).

    Everywhere else PyTorch, which runs on every machine.
    """
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend in ("onnxruntime", "int8", "mixed", "openvino"):
        if device.type != "cpu":
            raise BackendUnavailable(backend, f"it runs on the CPU only, not {device}")
        if backend == "openvino" and not _openvino_available():
            raise BackendUnavailable(backend, "openvino is not installed (pip install openvino)")
        if backend != "openvino" and not _ort_available():
            raise BackendUnavailable(backend, "onnxruntime is not installed (pip install onnxruntime)")
        return backend
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "torch"
    features = features if features is not None else cpu_features()
    if precision == "auto" and CPU_AUTO_MIXED and features.vnni and _ort_available():
        return "mixed"
    if precision in ("auto", "fp32"):
        if _ort_available():
            return "onnxruntime"
        if _openvino_available():
            return "openvino"
        return "torch"
    if precision == "bf16" and features.bf16 and _openvino_available():
        return "openvino"
    return "torch"


def int8_runtime(features: CpuFeatures | None = None) -> str:
    """Which runtime runs the ``int8`` and ``mixed`` graphs: ``"openvino"`` or ``"onnxruntime"``.

    OpenVINO where it is installed and the CPU has VNNI (int8 dot products): on the same graph it
    was 1.3x faster than ONNX Runtime on an AVX512_VNNI Xeon (docs/cpu_backends.md). Elsewhere
    ONNX Runtime, measured at 3.3x the eager baseline on an AVX2 EPYC (BENCHMARKS.md); OpenVINO's
    int8 without VNNI was not measured. ``features`` default to :func:`vdsr.cpu.cpu_features`.
    """
    features = features if features is not None else cpu_features()
    if features.vnni and _openvino_available():
        return "openvino"
    return "onnxruntime"


def create_backend(model: VDSR, backend: str = "auto", device: str | torch.device = "cpu",
                   precision: str = "auto", threads: int | None = None) -> Backend:
    """A new backend running ``model`` (its weights as they are now).

    Args:
        model: the network; the torch backends move it to ``device`` and use it as it is.
        backend: one of :data:`vdsr.constants.BACKENDS`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: one of :data:`vdsr.constants.PRECISIONS`; ``"auto"`` per
            :func:`vdsr.precision.resolve_precision`.
        threads: CPU threads for ONNX Runtime (None: its default, all cores) and OpenVINO
            (None: ``torch.get_num_threads()``).
    """
    dev = torch.device(device)
    name = pick_backend(backend, dev, precision)
    resolved = resolve_precision(precision, dev, name)
    if name in ("int8", "mixed") and int8_runtime() == "openvino":
        from vdsr.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(model, name, threads)
    if name in ("onnxruntime", "int8", "mixed"):
        from vdsr.backends.ort import OrtBackend

        return OrtBackend(model, threads=threads, kind="fp32" if name == "onnxruntime" else name)
    if name == "openvino":
        from vdsr.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(model, resolved, threads)
    from vdsr.backends.pytorch import TorchBackend

    return TorchBackend(model, dev, resolved, compile=name == "compile")


def _weights_key(model: VDSR) -> tuple[int, ...]:
    # In-place updates (optimiser steps, load_state_dict) bump each tensor's version counter.
    return tuple(p._version for p in model.parameters())


_SHARED: weakref.WeakKeyDictionary[VDSR, dict[tuple[str, str, str], tuple[tuple[int, ...], Backend]]]
_SHARED = weakref.WeakKeyDictionary()


def shared_backend(model: VDSR, backend: str = "auto", device: str | torch.device = "cpu",
                   precision: str = "auto") -> Backend:
    """:func:`create_backend`, reused across calls for the same model while its weights are unchanged.

    For callers that hand a model over and over (training validation, :func:`vdsr.inference.run_network`):
    building an ONNX Runtime session costs a graph export each time. The cache is keyed weakly on
    the model object, so it goes away with the model.
    """
    key = (backend, str(torch.device(device)), precision)
    entries = _SHARED.setdefault(model, {})
    version = _weights_key(model)
    hit = entries.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    made = create_backend(model, backend, device, precision)
    entries[key] = (version, made)
    return made
