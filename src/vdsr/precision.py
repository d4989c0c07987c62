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

__all__ = ["EXACT", "check_tf32_device", "torch_dtype"]

EXACT = ("fp32",)  # recipes whose output equals the fp32 network's (up to summation order)

# Training's own rule (``vdsr train --precision auto``) is vdsr.train.process.resolve_train_precision.


def check_tf32_device(precision: str, device: torch.device) -> None:
    """TF32 is a CUDA mode: :class:`~vdsr.errors.InvalidArgument` for ``tf32`` anywhere else."""
    from vdsr.errors import InvalidArgument

    if precision == "tf32" and device.type != "cuda":
        raise InvalidArgument("tf32 exists on CUDA devices only")


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype the reduced layers run in: float16, bfloat16, else float32 (fp32 and tf32)."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16, "bf16-edge": torch.bfloat16}.get(
        precision, torch.float32)
