"""Recipes: how the network's arithmetic is done, each an explicit choice recorded with every result.

| recipe      | what runs in reduced precision                               | where          |
|-------------|--------------------------------------------------------------|----------------|
| ``fp32``    | nothing: exact                                               | everywhere     |
| ``tf32``    | convolutions in TF32 (cuDNN)                                 | CUDA           |
| ``fp16``    | the 20 convolutions in fp16                                  | CUDA (CPU: emulated, slow) |
| ``bf16``    | the 20 convolutions in bf16                                  | CPUs with AVX512_BF16/AMX, CUDA |
| ``bf16-edge`` | the inner convolutions in bf16, the first and last in fp32 | the same       |
| ``mixed``   | int8 body, the first 3 and last 3 convolutions in fp32       | CPUs (VNNI: fast) |
| ``int8``    | int8 body, the first 3 and the last convolution in fp32      | CPUs (VNNI: fast) |

In every recipe the network's input and the global residual addition stay fp32, so flat areas
keep their exact values (``output = input + residual``). How much a recipe costs depends on the
weights (issue 22: all-bf16 costs the authors' weights 0.13 dB at x4 and the shipped ones
nothing), so ``auto`` is never a fixed rule: :mod:`vdsr.recipes` takes the fastest recipe that
passed a check for the weights in use, with ``fp32`` as the last resort.
"""

from __future__ import annotations

import torch

from vdsr.constants import PRECISIONS
from vdsr.errors import InvalidArgument

__all__ = ["AUTO_TRAIN_PRECISION", "EXACT", "resolve_train_precision", "torch_dtype"]

EXACT = ("fp32",)  # recipes whose output equals the fp32 network's (up to summation order)

# Training (``vdsr train --precision``): bf16 autocast on CUDA, as the shipped model was trained
# (its exponent range needs no loss scaling; the weights stay fp32, only the arithmetic is bf16).
# fp16 autocast is offered with a gradient scaler; fp32 elsewhere.
AUTO_TRAIN_PRECISION = {"cpu": "fp32", "cuda": "bf16"}


def resolve_train_precision(precision: str, device: torch.device) -> str:
    """The concrete training precision (never ``"auto"``) on ``device``; raises if unsupported.

    ``fp32``/``tf32``: no autocast (``tf32`` lets cuDNN and cuBLAS use TF32, CUDA only);
    ``fp16``/``bf16``: autocast to that dtype, weights and optimiser state stay fp32.
    """
    if precision not in PRECISIONS or precision in ("bf16-edge", "mixed", "int8"):
        raise InvalidArgument(f"unknown training precision {precision!r}; choose from "
                              "auto, fp32, tf32, fp16, bf16")
    if precision == "auto":
        return AUTO_TRAIN_PRECISION.get(device.type, "fp32")
    if precision == "tf32" and device.type != "cuda":
        raise InvalidArgument("tf32 exists on CUDA devices only")
    return precision


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype the reduced layers run in: float16, bfloat16, else float32 (fp32 and tf32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "bf16-edge": torch.bfloat16}.get(
        precision, torch.float32)
