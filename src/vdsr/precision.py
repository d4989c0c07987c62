"""Numeric precision as an explicit choice: which precisions a device and backend can run, and
what ``"auto"`` means.

The rule for ``"auto"`` (``vdsr upscale``, ``evaluate``, ``serve`` and the benchmarks):

* CPU: ``fp32``. The fp32 ONNX Runtime path is the fastest exact one measured on CPUs here; bf16
  moved OpenVINO's output by up to 0.016 on the [0, 1] scale (issue 17) and costs more than 0.02 dB
  of Y-PSNR (docs/cpu_backends.md), so it stays opt-in, and the ``openvino`` backend runs it only
  on CPUs with native bf16 (AVX512_BF16 or AMX, :func:`vdsr.cpu.cpu_features`).
* CUDA: ``fp16``, the fastest precision that keeps both the shipped and the authors' official
  weights within 0.02 dB of fp32. It keeps 10 mantissa bits where bf16 keeps 7, at the same
  tensor-core speed: bf16 cost the official weights 0.15 dB at x4 on Set5 (0.23 dB on held-out
  crops on an H200, issue 16), while fp16 stayed within 0.002 dB of fp32 for both weights at
  x2/x3/x4 on Set5 and Set14 (docs/precision.md: ``python benchmarks/precision.py``, the GPU's
  16-bit rounding emulated on a CPU; ``benchmarks/gpu.sh`` measures it natively). The network's
  input and the global residual addition stay fp32 in every precision: only the body runs in
  16 bits (:meth:`VDSR.predict_residual`).

``tf32`` is CUDA-only (cuDNN's TF32 convolutions); ``fp32`` on CUDA turns TF32 off, which PyTorch
otherwise allows for convolutions by default.
"""

from __future__ import annotations

import torch

from vdsr.constants import PRECISIONS
from vdsr.errors import InvalidArgument

__all__ = ["AUTO_PRECISION", "resolve_precision", "torch_dtype"]

AUTO_PRECISION = {"cpu": "fp32", "cuda": "fp16"}

# Training's own rule (``vdsr train --precision auto``) is vdsr.train.process.resolve_train_precision.


def resolve_precision(precision: str, device: torch.device, backend: str) -> str:
    """The concrete precision (never ``"auto"``) for ``backend`` on ``device``; raises if unsupported.

    ``backend`` is a resolved backend name (not ``"auto"``). ONNX Runtime runs fp32 (``int8`` is
    its own backend and reports ``"int8"``).
    """
    if precision not in PRECISIONS:
        raise InvalidArgument(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if backend in ("int8", "mixed"):
        if precision not in ("auto", "fp32"):
            raise InvalidArgument(f"the {backend} backend has its own precision; {precision} is not possible")
        return backend
    if backend == "onnxruntime":
        if precision not in ("auto", "fp32"):
            raise InvalidArgument(f"the onnxruntime backend runs fp32 only; the torch backend runs {precision}")
        return "fp32"
    if backend == "openvino":
        return _openvino_precision(precision)
    if precision == "auto":
        return AUTO_PRECISION.get(device.type, "fp32")
    if precision == "tf32" and device.type != "cuda":
        raise InvalidArgument("tf32 exists on CUDA devices only")
    return precision


def _openvino_precision(precision: str) -> str:
    """fp32, or bf16 where the CPU computes it natively (emulated bf16 is slower than fp32)."""
    from vdsr.cpu import cpu_features

    if precision in ("auto", "fp32"):
        return "fp32"
    if precision != "bf16":
        raise InvalidArgument(f"the openvino backend runs fp32 or bf16, not {precision}")
    features = cpu_features()
    if not features.bf16:
        have = ", ".join(features.names()) or "none of avx2, avx512, vnni, bf16, amx"
        raise InvalidArgument("bf16 on the openvino backend needs a CPU with AVX512_BF16 or AMX "
                              f"(this one has {have}); use fp32")
    return "bf16"


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype the network body runs in: float16, bfloat16, else float32 (fp32 and tf32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
