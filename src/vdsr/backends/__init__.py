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
| ``int8``      | :mod:`.ort`         | cpu       | int8 body, fp32 ends       |
"""

from __future__ import annotations

import weakref
from typing import Protocol, runtime_checkable

import torch

from vdsr.constants import BACKENDS
from vdsr.errors import BackendUnavailable, InvalidArgument
from vdsr.model import VDSR
from vdsr.precision import resolve_precision

__all__ = ["Backend", "create_backend", "pick_backend", "shared_backend"]


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


def pick_backend(backend: str, device: torch.device, precision: str = "auto") -> str:
    """Resolve ``"auto"`` and check that ``backend`` can run on ``device``.

    ``auto`` is ONNX Runtime on a CPU when it is installed and the precision is fp32 (the fastest
    exact path measured on CPUs, BENCHMARKS.md), else PyTorch.
    """
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend in ("onnxruntime", "int8"):
        if device.type != "cpu":
            raise BackendUnavailable(backend, f"it runs on the CPU only, not {device}")
        if not _ort_available():
            raise BackendUnavailable(backend, "onnxruntime is not installed (pip install onnxruntime)")
        return backend
    if backend != "auto":
        return backend
    if device.type == "cpu" and precision in ("auto", "fp32") and _ort_available():
        return "onnxruntime"
    return "torch"


def create_backend(model: VDSR, backend: str = "auto", device: str | torch.device = "cpu",
                   precision: str = "auto", threads: int | None = None) -> Backend:
    """A new backend running ``model`` (its weights as they are now).

    Args:
        model: the network; the torch backends move it to ``device`` and use it as it is.
        backend: one of :data:`vdsr.constants.BACKENDS`.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: one of :data:`vdsr.constants.PRECISIONS`; ``"auto"`` per
            :func:`vdsr.precision.resolve_precision`.
        threads: CPU threads for ONNX Runtime (None: its default, all cores).
    """
    dev = torch.device(device)
    name = pick_backend(backend, dev, precision)
    resolved = resolve_precision(precision, dev, name)
    if name in ("onnxruntime", "int8"):
        from vdsr.backends.ort import OrtBackend

        return OrtBackend(model, int8=name == "int8", threads=threads)
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
