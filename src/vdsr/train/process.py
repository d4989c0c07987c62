"""How this process trains: the device, the precision ``"auto"`` means, the memory format, and
the process-wide torch settings a run needs.

:func:`configure_process` is called once by whatever owns the process (``vdsr train``, a script
using the Python API), before the :class:`~vdsr.train.loop.Trainer` is built: thread count, the
global random seeds (or, resuming, the generators' saved states), and on CUDA the TF32 and cuDNN
autotuning switches. The trainer itself changes none of them, so building one (in a test, a
benchmark, a notebook) leaves the rest of the process as it was.
"""

from __future__ import annotations

import json
import random
from typing import Any

import torch

from vdsr.constants import TRAIN_PRECISIONS
from vdsr.cpu import cpu_features
from vdsr.errors import InvalidArgument, TrainingError
from vdsr.precision import check_tf32_device
from vdsr.train.config import TrainConfig

__all__ = ["configure_process", "memory_format", "pick_device", "resolve_train_precision"]


def pick_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...: the package's one
    resolver (:func:`vdsr.backends.resolve_device`), which raises :class:`DeviceUnavailable`."""
    from vdsr.backends import resolve_device

    return resolve_device(name)


def resolve_train_precision(precision: str, device: torch.device) -> str:
    """The concrete training precision (never ``"auto"``) on ``device``; raises if unsupported.

    ``fp32``/``tf32``: no autocast (``tf32`` lets cuDNN and cuBLAS use TF32, CUDA only);
    ``fp16``/``bf16``: autocast to that dtype, weights and optimiser state stay fp32.

    ``"auto"``: bf16 on CUDA, as the shipped model was trained (its exponent range needs no loss
    scaling). On a CPU, bf16 where it has native bf16 dot products (AVX512_BF16 or AMX,
    :func:`vdsr.cpu.cpu_features`), with channels_last (:func:`memory_format`): a
    default-size step at batch 16 ran 1.8-9.9x as fast as fp32 on an AVX512_BF16 CPU, with the
    loss curve of fp32 (docs/precision.md, "Training on a CPU"); fp32 elsewhere, where bf16 is
    emulated.
    """
    if precision not in TRAIN_PRECISIONS:
        raise InvalidArgument(f"unknown training precision {precision!r}; choose from "
                              f"{', '.join(TRAIN_PRECISIONS)}")
    check_tf32_device(precision, device)
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    features = cpu_features()
    return "bf16" if device.type == "cpu" and (features.bf16 or features.amx) else "fp32"


def memory_format(device: torch.device, precision: str) -> torch.memory_format:
    """The layout of the training tensors: channels_last on GPUs (tensor cores) and for bf16 on
    a CPU (oneDNN's bf16 convolutions are NHWC); NCHW for fp32 on a CPU, as before (the old
    measurement on an AVX2 CPU found channels_last no faster there)."""
    if device.type == "cuda" or precision == "bf16":
        return torch.channels_last
    return torch.contiguous_format


def configure_process(config: TrainConfig, state: dict[str, Any] | None = None) -> None:
    """Apply the process-wide settings of a training run; call once, before building the Trainer.

    * ``config.threads`` (when set): torch's CPU threads;
    * the global random generators (torch, Python's ``random``): seeded from ``config.seed``
      for a new run, set back to their saved states from a checkpoint ``state`` when resuming
      (the trainer builds its model from its own seeded generator and its patch sources keep
      their own generators, so a run is reproducible without this; it keeps anything else in
      the process that draws from them reproducible too);
    * on CUDA: TF32 only for ``precision="tf32"`` (PyTorch lets cuDNN use TF32 by default, but
      fp32 means fp32), and cuDNN autotuning (the patches have fixed shapes: tune once, reuse).
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    if state is None:
        torch.manual_seed(config.seed)
        random.seed(config.seed)
    else:
        try:
            torch.set_rng_state(state["torch_rng"])
            version, internal, gauss = json.loads(state["python_rng"])
            random.setstate((version, tuple(internal), gauss))
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            raise TrainingError(f"checkpoint does not fit this run (random generator states: {exc})") from None
    device = pick_device(config.device)
    if device.type == "cuda":
        tf32 = resolve_train_precision(config.precision, device) == "tf32"
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
